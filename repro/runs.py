"""Run a method on a preset, and evaluate any run: the glue between methods/, evaluation and tables.

    base = base_run(db, preset)                       # the untrained model, as a run of method "base"
    run  = train_method(db, preset, "sft")            # reused when a finished run has the same config hash
    evaluate_run(db, run, preset)                     # resumable; finished evaluations are reused

A run's config is everything that decides its result (method config, base model identity, training
set, template, seed), so its hash (with the method, model, preset and seed: harness.store.run_hash)
decides reuse. Inputs are checked and the training prompts loaded BEFORE the run row is made, so a
bad input leaves no row behind. Checkpoints go to `<runs dir>/<method>-<hash>/` (`$LATENTREVISE_RUNS`,
default ./runs).

Engines: `EnginePool` hands one engine from step to step (repro/execute.py makes one per plan), so
a training run's evaluation uses the engine the run trained with instead of starting another one
(an engine start is ~25 s on CPU, minutes for a 7B model on a GPU). Handing it on loads the wanted
model's weights into it (`update_weights`), which is what a fresh engine on that model would hold.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy.orm import Session, sessionmaker

from benchmarks import Problem, load_benchmark
from harness.generation import Generator, GeneratorFactory
from harness.grading import grader_scope
from harness.method import Budget, RunContext
from harness.store import Run, finish_run, get_or_create_run, session_scope
from methods.registry import build_config, get_method, preset_fields, source_identity
from repro.presets import Preset

RUNS_ENV = "LATENTREVISE_RUNS"


def runs_dir() -> Path:
    return Path(os.environ.get(RUNS_ENV, "runs"))


def base_model_identity(preset: Preset) -> dict[str, Any]:
    """What identifies the base model in run configs (the tiny model is identified by its recipe)."""
    if preset.base_model == "tiny":
        from repro.tiny.pretrain import PretrainConfig

        return {"base_model": "tiny", "pretrain": asdict(PretrainConfig.from_overrides(preset.tiny_model))}
    if preset.base_model == "rehearsal":  # its recipe + what it memorizes (the preset's training prompts)
        from repro.tiny.rehearsal import RehearsalConfig

        return {"base_model": "rehearsal", "build": asdict(RehearsalConfig.from_overrides(preset.tiny_model)),
                "memorizes": {"train_set": preset.train_set, "train_filter": preset.train_filter,
                              "train_limit": preset.train_limit, "template": preset.eval.template}}
    return {"base_model": preset.base_model}


def resolve_base_model(preset: Preset, progress: bool = True, data_dir: str | None = None) -> str:
    """A loadable model reference: hub id, directory, or the tiny model (pretrained once, cached)."""
    if preset.base_model == "tiny":
        from repro.tiny.pretrain import PretrainConfig, ensure_tiny_base

        return str(ensure_tiny_base(PretrainConfig.from_overrides(preset.tiny_model), progress=progress))
    if preset.base_model == "rehearsal":
        from repro.tiny.rehearsal import RehearsalConfig, ensure_rehearsal_base

        return str(ensure_rehearsal_base(RehearsalConfig.from_overrides(preset.tiny_model), preset.eval.template,
                                         load_train_prompts(preset, data_dir)))
    return preset.base_model


def load_train_prompts(preset: Preset, data_dir: str | None = None) -> list[Problem]:
    problems = load_benchmark(preset.train_set, data_dir)
    for key, allowed in preset.train_filter.items():
        problems = [p for p in problems if p.meta.get(key) in allowed]
    return problems[: preset.train_limit] if preset.train_limit else problems


def generator_factory(preset: Preset, backend: str = "auto") -> GeneratorFactory:
    """The preset's engine: vLLM when installed (the real engine), else transformers."""
    return GeneratorFactory(backend, preset.vllm, seed=preset.seed, device=preset.device)


class PooledEngine:
    """A pool's engine lent to one user: `close()` gives it back instead of shutting it down."""

    def __init__(self, pool: EnginePool, inner: Generator, model: str):
        self.pool, self.inner, self.holds, self.busy = pool, inner, model, True

    def __getattr__(self, name: str) -> Any:  # tokenizer, llm, model, ...: the engine's own
        return getattr(self.inner, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.generate(*args, **kwargs)

    def update_weights(self, named_tensors: Any) -> None:
        self.inner.update_weights(named_tensors)
        self.holds = None  # trained weights: no model directory holds exactly these

    def identity(self) -> dict[str, Any]:
        ident = self.pool.identity(self.holds or "unknown")
        return ident if self.holds else {**ident, "model": {"kind": "weights updated in place"}}

    def lend(self, model: str) -> None:
        if self.holds != model:
            self.inner.update_weights(_model_weights(model))
            self.holds = model
        self.busy = True

    def close(self) -> None:
        self.busy = False


class EnginePool:
    """model path -> an idle engine loaded with that model's weights, or a new one when all are lent.

    A drop-in for `GeneratorFactory` (call it, `.identity(model)`); `shutdown()` closes every engine.
    `started` counts engine constructions (what a plan costs in engine starts)."""

    def __init__(self, factory: GeneratorFactory | Any):
        self.factory, self.engines, self.started = factory, [], 0

    def identity(self, model: str) -> dict[str, Any]:
        return self.factory.identity(model)

    def __call__(self, model: str) -> PooledEngine:
        for engine in self.engines:
            if not engine.busy:
                engine.lend(model)
                return engine
        engine = PooledEngine(self, self.factory(model), model)
        self.started += 1
        self.engines.append(engine)
        return engine

    def shutdown(self) -> None:
        for engine in self.engines:
            engine.inner.close()
        self.engines.clear()


def _model_weights(model: str) -> Iterable[tuple[str, Any]]:
    """A model directory's weights by their Hugging Face names (what update_weights takes)."""
    from transformers import AutoModelForCausalLM

    return list(AutoModelForCausalLM.from_pretrained(model, torch_dtype="auto").state_dict().items())


def base_config(preset: Preset) -> dict[str, Any]:
    """The config (and so the hash) of a preset's base-model run."""
    return {**base_model_identity(preset), "preset": preset.name}


def base_run(factory: sessionmaker[Session], preset: Preset, progress: bool = True, fresh: bool = False) -> Run:
    """The base model as a finished run of method "base" (its evaluations hang off it).

    `fresh` deletes the stored base run and its evaluations first."""
    run, reused = get_or_create_run(factory, method="base", model=preset.base_model, preset=preset.name,
                                    seed=preset.seed, config=base_config(preset), fresh=fresh)
    if not reused:
        finish_run(factory, run.id, checkpoint=resolve_base_model(preset, progress))
    return _reload(factory, run.id)


def run_config(preset: Preset, method: str, overrides: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """(method config object, the run config whose hash decides reuse)."""
    cls = get_method(method)
    cfg = build_config(cls, {**preset_fields(cls, preset.name, preset.methods), **(overrides or {})})
    config = {
        **base_model_identity(preset), "method_config": asdict(cfg), "train_set": preset.train_set,
        "train_filter": preset.train_filter, "train_limit": preset.train_limit,
        "template": preset.eval.template, "seed": preset.seed,
        **source_identity(cls),  # a --method-file's path and content hash: an edited file makes a new run
    }
    return cfg, config


def train_method(factory: sessionmaker[Session], preset: Preset, method: str, *,
                 overrides: dict[str, Any] | None = None, data_dir: str | None = None, grader=None,
                 fresh: bool = False, progress: bool = True, backend: str = "auto",
                 engines: EnginePool | None = None) -> Run:
    """Train `method` on the preset's base model and training prompts; reuse a finished identical run.

    `engines`: a pool to take the method's engines from (and give them back to), else a new one."""
    cls = get_method(method)
    cfg, config = run_config(preset, method, overrides)  # a bad method, field or value fails here ...
    prompts = load_train_prompts(preset, data_dir)  # ... and bad training data here: no run row yet
    if not prompts:
        raise ValueError(f"preset {preset.name!r}: no training prompts in {preset.train_set!r} "
                         f"after filter {preset.train_filter} and limit {preset.train_limit}")
    run, reused = get_or_create_run(factory, method=method, model=preset.base_model, preset=preset.name,
                                    seed=preset.seed, config=config, fresh=fresh)
    if reused:
        return run
    out_dir = runs_dir() / f"{method}-{run.config_hash}"
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = engines or EnginePool(generator_factory(preset, backend))
    try:
        with grader_scope(grader) as grader:
            ctx = RunContext(
                run_id=run.id, db=factory, out_dir=out_dir, seed=preset.seed, device=preset.device,
                template=preset.eval.template, budget=Budget(), make_generator=pool, grader=grader,
                progress=progress,
            )
            checkpoint = cls().train(resolve_base_model(preset, progress), prompts, cfg, ctx)
    except BaseException as e:
        finish_run(factory, run.id, status="failed", error="".join(traceback.format_exception_only(e)).strip())
        raise
    finally:
        if engines is None:
            pool.shutdown()
    finish_run(factory, run.id, checkpoint=str(checkpoint))
    return _reload(factory, run.id)


def evaluate_run(factory: sessionmaker[Session], run: Run, preset: Preset, *, data_dir: str | None = None,
                 grader=None, progress: bool = True, backend: str = "auto",
                 engines: EnginePool | None = None) -> dict[str, dict]:
    """Evaluate a finished run's checkpoint on the preset's benchmarks under the preset's protocol.

    `engines`: the pool the run trained with (its engine is reused), else a new engine if needed."""
    from harness.evaluate import evaluate_model

    if run.checkpoint is None:
        raise ValueError(f"run {run.id} ({run.method}) has no checkpoint (status {run.status})")
    pool = engines or EnginePool(generator_factory(preset, backend))
    try:
        with grader_scope(grader) as grader:
            return evaluate_model(factory, run.id, run.checkpoint, list(preset.benchmarks), data_dir=data_dir,
                                  protocol=preset.eval, make_generator=pool, grader=grader,
                                  limit=preset.eval_limit, progress=progress)
    finally:
        if engines is None:
            pool.shutdown()


def _reload(factory: sessionmaker[Session], run_id: int) -> Run:
    with session_scope(factory) as s:
        return s.get(Run, run_id)
