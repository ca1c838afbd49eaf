"""The `Method` interface every post-training method implements, and the run context it receives.

A method is a name, a config dataclass and one entry point:

    method.train(base_model, prompts, config, ctx) -> checkpoint directory (Hugging Face format)

`ctx` (a `RunContext`) hands the method the shared services so that every method runs on equal
terms: generator factory, grader, prompt template, the run's database row for logging steps,
rollouts and revisions, an output directory, the seed, the device and a budget. Methods register
in `methods/__init__.py` (ours) or through the `latentrevise.methods` entry-point group (anyone's):

    [project.entry-points."latentrevise.methods"]
    my-method = "my_pkg.my_module:MyMethod"
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Protocol, Sequence, runtime_checkable

from sqlalchemy.orm import Session, sessionmaker

from benchmarks import Problem

from .generation import Generator
from .store import Revision, Rollout, TrainStep, session_scope

ENTRY_POINT_GROUP = "latentrevise.methods"


@dataclass
class Budget:
    """Upper bounds a method must respect; matched-compute comparisons read `max_generated_tokens`."""

    max_steps: int | None = None
    max_generated_tokens: int | None = None
    max_wall_s: float | None = None


@dataclass
class RunContext:
    run_id: int
    db: sessionmaker[Session]
    out_dir: Path
    seed: int = 0
    device: str = "cpu"
    template: str = "qwen-boxed"
    budget: Budget = field(default_factory=Budget)
    make_generator: Callable[[str], Generator] | None = None  # model dir -> generator (vLLM or HF)
    grader: Any = None  # harness.grading.Grader
    progress: bool = True

    def log_step(self, step: int, phase: str = "train", **values: Any) -> None:
        """One training step to `train_steps`; unknown keys go to `extra`."""
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
        with session_scope(self.db) as s:
            s.add_all(Rollout(run_id=self.run_id, **r) for r in rows)

    def log_revisions(self, rows: Iterable[dict[str, Any]]) -> None:
        with session_scope(self.db) as s:
            s.add_all(Revision(run_id=self.run_id, **r) for r in rows)


@runtime_checkable
class Method(Protocol):
    name: ClassVar[str]
    config_cls: ClassVar[type]

    def train(self, base_model: str, prompts: Sequence[Problem], config: Any, ctx: RunContext) -> str: ...


_REGISTRY: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: make a method runnable by name."""
    if not getattr(cls, "name", None) or not dataclasses.is_dataclass(getattr(cls, "config_cls", None)):
        raise TypeError(f"{cls.__name__} needs a `name` and a dataclass `config_cls`")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> dict[str, type]:
    """Our methods plus every method published under the entry-point group."""
    import methods  # noqa: F401  (registers the built-in methods)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            register_method(ep.load())
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type:
    found = available_methods()
    if name not in found:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(found)}")
    return found[name]


def build_config(cls: type, overrides: dict[str, Any] | None = None) -> Any:
    """The method's config dataclass with `overrides` applied; unknown keys are an error."""
    cfg = cls.config_cls()
    if not overrides:
        return cfg
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"{cls.name}: unknown config field(s) {sorted(unknown)}; known: {sorted(names)}")
    return dataclasses.replace(cfg, **overrides)


class Timer:
    """`with Timer() as t: ...; t.s` — wall seconds of a block (for step timings)."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0
