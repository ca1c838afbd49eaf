"""The `Method` interface every post-training method implements, and the run context it receives.

A method is a name, a config dataclass and one entry point:

    method.train(base_model, prompts, config, ctx) -> checkpoint directory (Hugging Face format)

`ctx` (a `RunContext`) hands the method the shared services so that every method runs on equal
terms: generator factory, grader, prompt template, the run's database row for logging steps,
rollouts and revisions, an output directory, the seed, the device and a budget. The registry of
methods by name lives one layer up, in `methods/registry.py`: this module knows no method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Protocol, Sequence, runtime_checkable

from benchmarks import Problem

from .generation import Generator

if TYPE_CHECKING:  # the store (sqlalchemy) is imported where rows are written: methods import without it
    from sqlalchemy.orm import Session, sessionmaker


@dataclass
class Budget:
    """Upper bounds a method must respect; matched-compute comparisons read `max_generated_tokens`.

    Enforced by the training loops (GRPO, SFT): before each optimizer step they ask `stop_reason`,
    and stop (saving the model as trained so far) when it names a bound. The token bound is checked
    against the next step's worst case (every sample to max_tokens), so a run never generates more
    than `max_generated_tokens`; it stops less than one step's worst case short of it.
    """

    max_steps: int | None = None  # optimizer steps
    max_generated_tokens: int | None = None  # sampled tokens (GRPO rollouts)
    max_wall_s: float | None = None  # seconds of the training loop (this process: a resume restarts the clock)

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_generated_tokens", "max_wall_s"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"Budget.{name} must be >= 0 or None, got {v!r}")

    def stop_reason(self, steps_done: int, generated: int = 0, wall_s: float = 0.0,
                    next_step_tokens: int = 0) -> str | None:
        """Why the next step may not run ("max_steps", "max_generated_tokens", "max_wall_s"), or None."""
        if self.max_steps is not None and steps_done >= self.max_steps:
            return "max_steps"
        if self.max_generated_tokens is not None and generated + next_step_tokens > self.max_generated_tokens:
            return "max_generated_tokens"
        if self.max_wall_s is not None and wall_s >= self.max_wall_s:
            return "max_wall_s"
        return None


@dataclass
class RunContext:
    run_id: int
    db: sessionmaker[Session]
    out_dir: Path
    seed: int = 0
    device: str = "cpu"
    template: str = "qwen25-math-cot"
    budget: Budget = field(default_factory=Budget)
    make_generator: Callable[[str], Generator] | None = None  # model dir -> generator (vLLM or HF)
    grader: Any = None  # harness.grading.Grader
    progress: bool = True

    def log_step(self, step: int, phase: str = "train", **values: Any) -> None:
        """One training step to `train_steps`; unknown keys go to `extra`."""
        from .store import TrainStep, session_scope

        cols = {c.name for c in TrainStep.__table__.columns}
        known = {k: v for k, v in values.items() if k in cols}
        extra = {k: v for k, v in values.items() if k not in cols}
        with session_scope(self.db) as s:
            existing = s.query(TrainStep).filter_by(run_id=self.run_id, phase=phase, step=step).first()
            row = existing or TrainStep(run_id=self.run_id, phase=phase, step=step)
            for k, v in known.items():
                setattr(row, k, v)
            row.extra = {**(row.extra or {}), **extra} or None
            s.add(row)

    def log_rollouts(self, rows: Iterable[dict[str, Any]]) -> None:
        from .store import Rollout, session_scope

        with session_scope(self.db) as s:
            s.add_all(Rollout(run_id=self.run_id, **r) for r in rows)

    def log_revisions(self, rows: Iterable[dict[str, Any]]) -> None:
        from .store import Revision, session_scope

        with session_scope(self.db) as s:
            s.add_all(Revision(run_id=self.run_id, **r) for r in rows)


@runtime_checkable
class Method(Protocol):
    name: ClassVar[str]
    config_cls: ClassVar[type]

    def train(self, base_model: str, prompts: Sequence[Problem], config: Any, ctx: RunContext) -> str: ...


class Timer:
    """`with Timer() as t: ...; t.s` — wall seconds of a block (for step timings)."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0
