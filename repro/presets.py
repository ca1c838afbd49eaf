"""Presets: the whole truth of a reproduction in one config object.

`tiny` runs the paper end to end on a 2-core CPU in minutes with a model the harness pretrains
itself (repro/tiny/pretrain.py) on the synthetic arithmetic family (benchmarks/arith.py). `paper`
and `paper-7b` mirror it field for field with the published setting; every value carries its
source in a comment, or "our choice" where the paper is silent. `paper-rehearsal` is the paper
preset with its budgets cut (and a small model built offline, repro/tiny/rehearsal.py), so that
its whole pipeline runs on a CPU in minutes; its numbers mean nothing. A run's config hash is
computed from these objects, so changing any field makes new runs and leaves old ones in results.db.

Method configs are COMPOSED, never copied (`MethodParts.compose`): the LatentRevise variants and
the rescue baselines start from their baseline's settings (`CONFIG_BASE`: lr-sft, resample, hint
and guided-prefix from the preset's `sft`, lr-grpo from its `grpo`), add the shared LatentRevise
fields, and stop their mining rollouts and continuations at the preset's generation budget
(`gen_tokens`: the GRPO rollouts' and the evaluation's max tokens), so a truncated mining rollout
is never counted as a zero-hit failure that a longer budget would have solved. Derived presets
(`derive`) cut fields of these parts and compose again, so they keep the same structure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from harness.generation import VLLMSettings
from harness.protocol import EvalProtocol

# Which baseline each composed method starts from (its config must equal the baseline's on every shared field).
SFT_BASED = ("lr-sft", "resample", "hint", "guided-prefix")
GRPO_BASED = ("lr-grpo",)
CONFIG_BASE: dict[str, str] = {**{m: "sft" for m in SFT_BASED}, **{m: "grpo" for m in GRPO_BASED}}
# The budget fields a reader compares across rows of one table (printed by `--dry-run`); the rest of the
# shared fields are checked too (tests/test_presets.py), these are the ones that decide compute.
BUDGET_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": ("data", "epochs", "max_steps", "batch_size", "lr", "max_len"),
    "grpo": ("steps", "prompts_per_step", "group_size", "max_tokens", "temperature", "lr"),
}
GEN_FIELDS = ("mine_max_tokens", "cont_max_tokens")  # follow the generation budget


@dataclass(frozen=True)
class MethodParts:
    """What a preset's method configs are composed from: each part is a dict of config fields."""

    sft: dict[str, Any]  # the sft baseline
    grpo: dict[str, Any]  # the grpo baseline
    latentrevise: dict[str, Any]  # revision + mining fields shared by every LatentRevise variant and rescue baseline
    rescue: dict[str, Any]  # the SFT-side rescue methods' mining budget (one screening for all of them)
    lr_grpo: dict[str, Any]  # lr-grpo's own fields
    gen_tokens: int  # generation budget: mining rollouts and continuations stop here
    own: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> fields of its own (none built in)

    def compose(self) -> dict[str, dict[str, Any]]:
        """method -> config overrides: the baselines as given, every other method on top of its baseline."""
        shared = {**self.latentrevise, **dict.fromkeys(GEN_FIELDS, self.gen_tokens)}
        extra = {m: {**shared, **self.rescue} for m in SFT_BASED} | {m: {**shared, **self.lr_grpo} for m in GRPO_BASED}
        out = {"sft": dict(self.sft), "grpo": dict(self.grpo)}
        for method, base in CONFIG_BASE.items():
            fields = {**extra[method], **self.own.get(method, {})}
            clash = sorted(set(fields) & set(out[base]))
            if clash:  # a variant must not quietly train with other baseline settings than its baseline
                raise ValueError(f"{method}: {', '.join(clash)} would override its baseline {base}'s settings")
            out[method] = {**out[base], **fields}
        return out

    def cut(self, gen_tokens: int | None = None, **parts: dict[str, Any]) -> MethodParts:
        """These parts with fields replaced, e.g. `cut(128, grpo={"steps": 2})` (part name -> fields)."""
        unknown = set(parts) - {f.name for f in dataclasses.fields(self)} - {"gen_tokens", "own"}
        if unknown:
            raise ValueError(f"unknown method part(s) {sorted(unknown)}")
        merged = {name: {**getattr(self, name), **fields} for name, fields in parts.items()}
        return dataclasses.replace(self, gen_tokens=gen_tokens or self.gen_tokens, **merged)


@dataclass(frozen=True)
class Preset:
    name: str
    base_model: str  # hub id, local directory, "tiny" or "rehearsal" (built on demand, cached)
    train_set: str  # benchmark registry name of the training prompts
    train_filter: dict[str, Any]  # meta field -> allowed values (e.g. {"level": [...]})
    train_limit: int | None
    benchmarks: tuple[str, ...]
    eval: EvalProtocol
    methods: dict[str, dict[str, Any]]  # method name -> config overrides for this preset (MethodParts.compose)
    seed: int = 0
    device: str = "cpu"
    vllm: VLLMSettings = VLLMSettings()
    # overrides for the locally built base model's config: repro.tiny.pretrain.PretrainConfig ("tiny"),
    # repro.tiny.rehearsal.RehearsalConfig ("rehearsal")
    tiny_model: dict[str, Any] = field(default_factory=dict)
    parts: MethodParts | None = None  # what `methods` was composed from (derived presets cut these)
    eval_limit: int | None = None  # evaluate the first N problems of each benchmark (None: all)
    label: str = ""  # said in every table's title and notes (e.g. "pipeline check, not a result")

    def with_overrides(self, **changes: Any) -> Preset:
        return dataclasses.replace(self, **changes)


def derive(base: Preset, name: str, parts: MethodParts | None = None, **changes: Any) -> Preset:
    """A preset made from `base`: `parts` (usually `base.parts.cut(...)`) composed into its methods."""
    parts = parts or base.parts
    if parts is None:
        raise ValueError(f"preset {base.name!r} has no method parts to derive from")
    return dataclasses.replace(base, name=name, parts=parts, methods=parts.compose(), **changes)


# ---------------------------------------------------------------------------------------------
# tiny: CPU, offline, minutes. Calibration numbers are in the README.
# ---------------------------------------------------------------------------------------------
TINY_PARTS = MethodParts(
    # sized so that `--table main` (base + sft, grpo, lr-sft, lr-grpo) fits ~15 min on an idle 2-core CPU; our choices
    # SFT lr measured on the tiny model (README): 1e-3 raised the held-out loss (0.0546 -> 0.0624 nats/token),
    # 3e-4 lowers it (-> 0.049) and raises accuracy more
    sft={"data": "reference", "epochs": 4, "batch_size": 32, "micro_batch_size": 32, "lr": 3e-4,
         "warmup_ratio": 0.05, "min_lr_ratio": 0.1, "response_prefix": " ", "max_len": 256, "heldout_frac": 0.05},
    # GRPO lr measured on the tiny model (a 2500-step base without story phrasings; README): 1e-3 collapses
    # the training reward within a few steps (Adam's first steps move every weight by ~lr), 2e-4 for 24 steps
    # leaves it flat, 3e-4 with a short warm-up for 64 steps of 32 prompts raises it
    # recipe "none" (std-normalized advantages, sequence-mean loss, one step per rollout batch): the settings the
    # lr above was measured with; 8x the optimizer steps (dr-grpo) at that lr is not calibrated on this model
    grpo={"recipe": "none", "steps": 64, "prompts_per_step": 32, "group_size": 8, "temperature": 1.0,
          "max_tokens": 96, "lr": 3e-4, "warmup_steps": 4, "micro_batch_size": 32, "save_every": 16},
    # LatentRevise on the tiny model, chosen by measurement (issue 13; scripts/revise_measure.py and bench/planted.py
    # on the 2500-step base, loaded 2-core CPU): 1024 arith-train prompts screened at n=8 -> 235 zero-hit, one failed
    # rollout each, 8 continuations per arm with the same seeds. USABLE accuracy (correct, no leak, true arithmetic
    # steps) of free continuations from p' minus from p, paired over the 235 prompts (sign-flip p; MDE ~0.6 points):
    #   objective "fluency" (no gold term; the prefix's own likelihood), 30 % prefix: +0.3 points (2.7 -> 3.0 %,
    #     p=0.5), p' != p in 11 % of revisions; bench/planted.py (200 cases, one digit of the first result changed):
    #     the right digit back in 84 % [78-88] (chance 10 %), accuracy 2.4 -> 39.0 % (the true prefix gives 48.3 %)
    #   every gold-based objective alone is WORSE: gold-after-prefix -2.6, gold-in-rollout -2.1, answer-away -2.2,
    #     self-contrast -0.9 points (all p < 0.001), planted recovery 0-6 %; added to the fluency term they tie
    #     with it (+0.1 to +0.4, n.s.) and recover the planted digit 46-78 % (88 % with the gcg step rule)
    #   prefix 0.6 / 0.8: gold terms raise RAW accuracy (+4 to +15 points) by writing answer digits into the prefix
    #     or breaking the arithmetic: usable accuracy does not rise (leak 52-94 %, valid steps 22-82 %)
    #   prefix 0.45 (chosen): +0.3 (3.2 -> 3.5 %, p=0.25), p' != p in 29 %, 42 prompts with a usable rescue
    #     (0.3: 37; within noise of each other); K = 1, 3, 5, 10 give the same p' (keep_best stops improving)
    #   step rule "gap-topm", M=1: one token (the largest Frank-Wolfe gap) flips per step, at most K=3 in all; the old
    #     const 0.1 x 3 steps kept the original at weight 0.9^3 = 0.73, so p' = p in 235/235 revisions
    latentrevise={"prefix_frac": 0.45, "objective": "fluency", "fluency_weight": 1.0, "step_rule": "gap-topm",
                  "flip_positions": 1, "fw_steps": 3, "failed_per_prompt": 1, "cont_samples": 8},
    # lr-sft, resample and hint (and guided-prefix) mine the first 256 training prompts (same screening, same
    # zero-hit prompts, matched compute), so --table rescue compares like with like
    rescue={"mine_prompts": 256, "mine_samples": 8},
    lr_grpo={"revise_max_groups": 4, "insert_per_group": 2},  # revise up to 4 zero-hit groups per step
    gen_tokens=96,  # = the evaluation's and GRPO's max tokens
)

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
    methods=TINY_PARTS.compose(),
    parts=TINY_PARTS,
    vllm=VLLMSettings(dtype="float32", cpu_kvcache_gib=1),
    tiny_model={},  # PretrainConfig() defaults are the tiny base model (calibrated: README)
)

# ---------------------------------------------------------------------------------------------
# paper: Qwen2.5-Math-1.5B on MATH train levels 3-5, the five benchmarks.
# ---------------------------------------------------------------------------------------------
PAPER_GEN_TOKENS = 3072  # Qwen2.5-Math's 4096 context minus the prompt: GRPO rollouts, mining and evaluation

PAPER_PARTS = MethodParts(
    sft={
        "data": "reference",  # MATH train worked solutions; "rft" = rejection sampling (RFT, Yuan et al. 2023)
        "lr": 1e-5,  # common full-parameter SFT lr for 1.5B models; our choice
        "epochs": 3, "batch_size": 64, "micro_batch_size": 8,  # our choice
        "warmup_ratio": 0.03, "min_lr_ratio": 0.0, "weight_decay": 0.0,  # our choice (cosine to 0)
        "max_len": 4096,  # Qwen2.5-Math-1.5B's context length
        "heldout_frac": 0.02,  # our choice
    },
    grpo={
        # Dr. GRPO (understand-r1-zero), the recipe for Qwen2.5-Math-1.5B at this scale: r - mean advantages,
        # token sums / max_tokens, truncated responses reward 0, 8 mini-batch steps per 128 x 8 rollout batch,
        # no KL, TIS cap 2 (methods/recipes.py cites each field). Why: its base model, MATH prompts and batch
        # shape are the paper's; SimpleRL-Zoo (KL 1e-4, entropy 1e-3, 4 steps of 1024 prompts) needs a larger node.
        "recipe": "dr-grpo",
        "group_size": 8,  # rollouts per prompt: SimpleRL-Zoo, Dr. GRPO
        "temperature": 1.0, "top_p": 1.0,  # SimpleRL-Zoo, Dr. GRPO
        "lr": 1e-6,  # SimpleRL-Zoo, Dr. GRPO (constant)
        "warmup_steps": 0, "min_lr_ratio": 1.0,  # constant lr: Dr. GRPO; our choice for warm-up 0
        "prompts_per_step": 128,  # Dr. GRPO's rollout_batch_size (SimpleRL-Zoo uses 1024)
        "steps": 100,  # our choice: ~1.5 epochs of MATH L3-5 at 128 prompts/step
        "max_tokens": PAPER_GEN_TOKENS,  # same as the eval protocol
        "micro_batch_size": 8,  # memory: our choice
        "save_every": 10, "store_rollouts": "zero_hit",
    },
    latentrevise={},  # the generic ReviseConfig / MiningConfig defaults (methods/latentrevise)
    # our choice: screen every training prompt with as many samples as a GRPO group, so "zero-hit" means
    # what it means in a GRPO group of the same run
    rescue={"mine_prompts": None, "mine_samples": 8},
    lr_grpo={"revise_max_groups": None, "insert_per_group": 2},  # every zero-hit group of a step; our choice
    gen_tokens=PAPER_GEN_TOKENS,
)

PAPER = Preset(
    name="paper",
    base_model="Qwen/Qwen2.5-Math-1.5B",  # the abstract's smallest model; hub id
    train_set="math_train",
    train_filter={"level": ["Level 3", "Level 4", "Level 5"]},  # SimpleRL-Zoo's MATH L3-5 recipe
    train_limit=None,
    benchmarks=("math500", "aime24", "aime25", "amc23", "olympiadbench"),
    # temperature 0.6 / top-p 0.95, n=32 on the 30-40 problem sets: the DeepSeek-R1 / DeepScaleR protocol
    eval=EvalProtocol(template="qwen25-math-cot", temperature=0.6, top_p=0.95, max_tokens=PAPER_GEN_TOKENS, n_default=4,
                      n_per_benchmark={"aime24": 32, "aime25": 32, "amc23": 32}, pass_k=(1, 8, 32), seed=0),
    methods=PAPER_PARTS.compose(),
    parts=PAPER_PARTS,
    device="cuda",
    vllm=VLLMSettings(dtype="bfloat16", gpu_memory_utilization=0.5),  # half the card: the trainer is colocated
)

# LatentRevise on `paper`: ReviseConfig's defaults (methods/latentrevise/core.py), measured on the tiny model only
# (see _TINY_REVISE): objective "fluency", step rule "gap-topm" with M=1, K=10: at most 10 tokens of p' (out of
# L <= 256) flip, one per step, to the vertex with the largest Frank-Wolfe gap. The previous generic rule
# (harmonic 2/(k+3) at every position) left the original token 1.5 % of the weight after K=10: 90 % of the
# positions of p' changed on the tiny model and free-continuation accuracy fell from 3.2 to 0.5 % (p=0.0001).
PAPER_7B = PAPER.with_overrides(name="paper-7b", base_model="Qwen/Qwen2.5-Math-7B")

# ---------------------------------------------------------------------------------------------
# paper-rehearsal: the paper preset's pipeline on a CPU in minutes (`--table main --preset paper-rehearsal`).
# Same training set and filter, the five benchmarks, the qwen25-math-cot ChatML prompt, the real grader, mining
# over MATH prompts, vLLM with weight sync; a ~0.2M-parameter model built offline (repro/tiny/rehearsal.py);
# every budget cut. Its accuracy is ~0: a pipeline check, not a result.
# ---------------------------------------------------------------------------------------------
REHEARSAL_GEN_TOKENS = 256  # our choice: cut from 3072 so each engine call takes seconds on a CPU
PAPER_REHEARSAL = derive(
    PAPER, "paper-rehearsal",
    PAPER_PARTS.cut(
        REHEARSAL_GEN_TOKENS,
        sft={"epochs": 1, "batch_size": 4, "micro_batch_size": 2},  # 2 optimizer steps on the 7 training problems
        # all 8 training prompts in each step: with 4 the rebuilt model's groups were all mixed, so lr-grpo
        # had no zero-hit group to revise and the insertion path went unexercised
        grpo={"steps": 2, "prompts_per_step": 8, "max_tokens": REHEARSAL_GEN_TOKENS, "save_every": 1},
    ),
    base_model="rehearsal",
    train_limit=8,  # the first 8 MATH L3-5 problems (the rehearsal model half-memorizes their answers)
    eval=dataclasses.replace(PAPER.eval, max_tokens=REHEARSAL_GEN_TOKENS, n_default=2, pass_k=(1, 2),
                             n_per_benchmark={b: 2 for b in PAPER.eval.n_per_benchmark}),
    eval_limit=2,  # the first 2 problems of each benchmark
    device="cpu",
    vllm=VLLMSettings(dtype="float32", cpu_kvcache_gib=1),
    label="pipeline check, not a result: a ~0.2M-parameter model built offline, every budget cut",
)

# ---------------------------------------------------------------------------------------------
# tiny-smoke: the tiny preset with every method cut to a few steps, to check the whole pipeline
# (`reproduce.py --table main --preset tiny-smoke`) in minutes. Its numbers mean nothing.
# ---------------------------------------------------------------------------------------------
TINY_SMOKE = derive(
    TINY, "tiny-smoke",
    TINY_PARTS.cut(
        sft={"epochs": 1, "lr": 5e-4},
        grpo={"steps": 2, "prompts_per_step": 16, "group_size": 4},
        rescue={"mine_prompts": None, "mine_samples": 4},
        latentrevise={"cont_samples": 2},
    ),
    train_limit=64,
    label="smoke test, not a result",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (TINY, TINY_SMOKE, PAPER, PAPER_7B, PAPER_REHEARSAL)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
