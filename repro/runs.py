"""Run a method on a preset, and evaluate any run: the glue between methods/, evaluation and tables.

    base = base_run(db, preset)                       # the untrained model, as a run of method "base"
    run  = train_method(db, preset, "sft")            # reused when a finished run has the same config hash
    evaluate_run(db, run, preset)                     # resumable; finished evaluations are reused

A run's config is everything that decides its result (method config, base model identity, training
set, template, seed), so its hash decides reuse. Checkpoints go to `<runs dir>/<method>-<hash>/`
(`$LATENTREVISE_RUNS`, default ./runs).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from benchmarks import Problem, load_benchmark
from harness.generation import GeneratorFactory
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
                 fresh: bool = False, progress: bool = True, backend: str = "auto") -> Run:
    """Train `method` on the preset's base model and training prompts; reuse a finished identical run."""
    cls = get_method(method)
    cfg, config = run_config(preset, method, overrides)
    run, reused = get_or_create_run(factory, method=method, model=preset.base_model, preset=preset.name,
                                    seed=preset.seed, config=config, fresh=fresh)
    if reused:
        return run
    out_dir = runs_dir() / f"{method}-{run.config_hash}"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with grader_scope(grader) as grader:
            ctx = RunContext(
                run_id=run.id, db=factory, out_dir=out_dir, seed=preset.seed, device=preset.device,
                template=preset.eval.template, budget=Budget(), make_generator=generator_factory(preset, backend),
                grader=grader, progress=progress,
            )
            prompts = load_train_prompts(preset, data_dir)
            checkpoint = cls().train(resolve_base_model(preset, progress), prompts, cfg, ctx)
    except BaseException as e:
        finish_run(factory, run.id, status="failed", error="".join(traceback.format_exception_only(e)).strip())
        raise
    finish_run(factory, run.id, checkpoint=str(checkpoint))
    return _reload(factory, run.id)


def evaluate_run(factory: sessionmaker[Session], run: Run, preset: Preset, *, data_dir: str | None = None,
                 grader=None, progress: bool = True, backend: str = "auto") -> dict[str, dict]:
    """Evaluate a finished run's checkpoint on the preset's benchmarks under the preset's protocol."""
    from harness.evaluate import evaluate_model

    if run.checkpoint is None:
        raise ValueError(f"run {run.id} ({run.method}) has no checkpoint (status {run.status})")
    with grader_scope(grader) as grader:
        return evaluate_model(factory, run.id, run.checkpoint, list(preset.benchmarks), data_dir=data_dir,
                              protocol=preset.eval, make_generator=generator_factory(preset, backend), grader=grader,
                              limit=preset.eval_limit, progress=progress)


def _reload(factory: sessionmaker[Session], run_id: int) -> Run:
    with session_scope(factory) as s:
        return s.get(Run, run_id)
