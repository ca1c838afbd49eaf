"""Presets: the whole truth of a reproduction in one config object.

`tiny` runs the paper end to end on a 2-core CPU in minutes with a model the harness pretrains
itself (harness/pretrain.py) on the synthetic arithmetic family (benchmarks/arith.py). `paper`
and `paper-7b` mirror it field for field with the published setting; every value carries its
source in a comment, or "our choice" where the paper is silent. A run's config hash is computed
from these objects, so changing any field makes new runs and leaves old ones in results.db.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .generation import VLLMSettings


@dataclass(frozen=True)
class EvalProtocol:
    template: str = "qwen-boxed"
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 3072
    n_default: int = 1
    n_per_benchmark: dict[str, int] = field(default_factory=dict)  # e.g. {"aime24": 32}
    pass_k: tuple[int, ...] = (1,)
    seed: int = 0

    def n_for(self, benchmark: str) -> int:
        return self.n_per_benchmark.get(benchmark, self.n_default)


@dataclass(frozen=True)
class Preset:
    name: str
    base_model: str  # hub id, local directory, or "tiny" (pretrained on demand, cached)
    train_set: str  # benchmark registry name of the training prompts
    train_filter: dict[str, Any]  # meta field -> allowed values (e.g. {"level": [...]})
    train_limit: int | None
    benchmarks: tuple[str, ...]
    eval: EvalProtocol
    methods: dict[str, dict[str, Any]]  # method name -> config overrides for this preset
    seed: int = 0
    device: str = "cpu"
    vllm: VLLMSettings = VLLMSettings()
    tiny_model: dict[str, Any] = field(default_factory=dict)  # overrides for harness.pretrain.PretrainConfig

    def with_overrides(self, **changes: Any) -> Preset:
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# tiny: CPU, offline, minutes. Calibration numbers are in the README.
# ---------------------------------------------------------------------------------------------
TINY = Preset(
    name="tiny",
    base_model="tiny",
    train_set="arith-train",
    train_filter={},
    train_limit=None,
    benchmarks=("arith-easy", "arith-medium", "arith-hard"),
    # the longest reference solution is 75 tokens with eos (a 3-digit multiplication by place value)
    eval=EvalProtocol(template="tiny-boxed", temperature=1.0, top_p=1.0, max_tokens=96, n_default=8,
                      pass_k=(1, 4, 8), seed=0),
    methods={},
    vllm=VLLMSettings(dtype="float32", cpu_kvcache_gib=1),
    tiny_model={},  # PretrainConfig() defaults are the tiny base model (calibrated: README)
)

# ---------------------------------------------------------------------------------------------
# paper: Qwen2.5-Math-1.5B on MATH train levels 3-5, the five benchmarks.
# ---------------------------------------------------------------------------------------------
PAPER = Preset(
    name="paper",
    base_model="Qwen/Qwen2.5-Math-1.5B",  # the abstract's smallest model; hub id
    train_set="math_train",
    train_filter={"level": ["Level 3", "Level 4", "Level 5"]},  # SimpleRL-Zoo's MATH L3-5 recipe
    train_limit=None,
    benchmarks=("math500", "aime24", "aime25", "amc23", "olympiadbench"),
    # temperature 0.6 / top-p 0.95, n=32 on the 30-40 problem sets: the DeepSeek-R1 / DeepScaleR protocol
    eval=EvalProtocol(template="qwen-boxed", temperature=0.6, top_p=0.95, max_tokens=3072, n_default=4,
                      n_per_benchmark={"aime24": 32, "aime25": 32, "amc23": 32}, pass_k=(1, 8, 32), seed=0),
    methods={},
    device="cuda",
    vllm=VLLMSettings(dtype="bfloat16", gpu_memory_utilization=0.5),  # half the card: the trainer is colocated
)

PAPER_7B = PAPER.with_overrides(name="paper-7b", base_model="Qwen/Qwen2.5-Math-7B")

PRESETS: dict[str, Preset] = {p.name: p for p in (TINY, PAPER, PAPER_7B)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
