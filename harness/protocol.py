"""An evaluation protocol: how a model is sampled and scored on a benchmark (template, sampling, n, pass@k).

Presets (one layer up) carry one; `harness.evaluate` runs it. Its fields enter every evaluation's
identity, so two numbers measured under different protocols are never mixed in a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalProtocol:
    template: str = "qwen25-math-cot"
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 3072
    n_default: int = 1
    n_per_benchmark: dict[str, int] = field(default_factory=dict)  # e.g. {"aime24": 32}
    pass_k: tuple[int, ...] = (1,)
    seed: int = 0

    def n_for(self, benchmark: str) -> int:
        return self.n_per_benchmark.get(benchmark, self.n_default)
