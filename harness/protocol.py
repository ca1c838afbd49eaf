"""An evaluation protocol: how a model is sampled and scored on a benchmark (template, sampling, n, pass@k).

Presets (one layer up) carry one; `harness.evaluate` runs it. Its fields enter every evaluation's
identity, so two numbers measured under different protocols are never mixed in a table. Checked on
construction: greedy decoding (temperature 0) draws the same completion n times, so n > 1 with
temperature 0 is refused rather than reported as pass@n.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import require


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

    def __post_init__(self) -> None:
        require(self.temperature >= 0, f"EvalProtocol.temperature must be >= 0, got {self.temperature}")
        require(0 < self.top_p <= 1, f"EvalProtocol.top_p must be in (0, 1], got {self.top_p}")
        require(self.max_tokens >= 1, f"EvalProtocol.max_tokens must be >= 1, got {self.max_tokens}")
        for name, n in {"n_default": self.n_default, **self.n_per_benchmark}.items():
            require(n >= 1, f"EvalProtocol: n for {name} must be >= 1, got {n}")
            require(self.temperature > 0 or n == 1,
                    f"EvalProtocol: greedy decoding (temperature 0) with n={n} for {name} repeats one completion "
                    f"{n} times; use n=1 or a temperature > 0")

    def n_for(self, benchmark: str) -> int:
        return self.n_per_benchmark.get(benchmark, self.n_default)
