"""GRPO step-time breakdown on the tiny preset: rollout / grading / update / sync, and engine reuse.

    python bench/grpo_step.py [--steps 6] [--db results.db]

Runs the tiny preset's GRPO config for a few steps through the real stack (vLLM engine, harness
grader, accelerate trainer) and reports the median seconds of each stage over the steps after the
first (which pays for grader warm-up). Checks, and exits non-zero when violated:
  * the engine is made once and every weight sync goes into that same engine (no step restarts it);
  * a weight sync costs at most 10% of a step;
  * the sampler/trainer gap after every sync (engine vs trainer log-probs of 2 of the step's
    sequences, harness.weightsync) stays below the engine dtype's tolerance: printed per step as the
    curve issue 15.1 asks for (GRPO itself stops with SyncError past it).
The per-step rows are in `train_steps` (phase "grpo") of the bench run, the summary in phase
"bench_grpo"; the run is method "grpo" with preset "tiny-bench".
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import typer

from harness.generation import Generator
from harness.grading import Grader
from harness.method import Budget, RunContext
from harness.store import TrainStep, finish_run, get_or_create_run, open_db, session_scope
from methods.grpo import GRPO
from methods.registry import build_config
from repro.presets import TINY
from repro.runs import generator_factory, load_train_prompts, resolve_base_model

STAGES = ("rollout", "grading", "update", "sync", "sync_check")


class EngineWatch:
    """Wraps the generator factory: counts engines and checks every sync hits the first one."""

    def __init__(self, factory):
        self.factory, self.engines, self.syncs, self.foreign_syncs = factory, [], 0, 0

    def __call__(self, model: str) -> Generator:
        gen = self.factory(model)
        self.engines.append(id(getattr(gen, "llm", gen)))
        inner = gen.update_weights

        def update(named):
            self.syncs += 1
            self.foreign_syncs += id(getattr(gen, "llm", gen)) != self.engines[0]
            inner(named)

        gen.update_weights = update
        return gen


def main(steps: int = 6, db: str = "results.db", max_sync_frac: float = 0.10) -> None:
    factory = open_db(db)
    cfg = replace(build_config(GRPO, TINY.methods["grpo"]), steps=steps, save_every=0)
    run, _ = get_or_create_run(factory, method="grpo", model=TINY.base_model, preset="tiny-bench", seed=TINY.seed,
                               config={"bench": "grpo_step", "method_config": cfg}, fresh=True)
    watch = EngineWatch(generator_factory(TINY))
    with Grader() as grader, tempfile.TemporaryDirectory() as out:
        ctx = RunContext(run_id=run.id, db=factory, out_dir=Path(out), seed=TINY.seed, device=TINY.device,
                         template=TINY.eval.template, budget=Budget(), make_generator=watch, grader=grader)
        GRPO().train(resolve_base_model(TINY), load_train_prompts(TINY), cfg, ctx)
    finish_run(factory, run.id)
    with session_scope(factory) as s:
        rows = s.query(TrainStep).filter_by(run_id=run.id, phase="grpo").order_by(TrainStep.step).all()
        timings = [r.timings for r in rows]
        gaps = [(r.step, r.extra.get("sync_gap_mean"), r.extra.get("sync_gap_max"), r.reward_mean) for r in rows]
    steady = timings[1:] or timings
    med = {k: statistics.median(t[k] for t in steady) for k in (*STAGES, "total")}
    sync_frac = statistics.median(t["sync"] / t["total"] for t in steady)
    ok_engine = len(watch.engines) == 1 and watch.foreign_syncs == 0 and watch.syncs == len(rows)
    summary = {"steps": len(rows), "engines": len(watch.engines), "syncs": watch.syncs, "sync_frac": sync_frac}

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"GRPO step on the tiny preset (median of steps 2..{len(rows)}; seconds)")
    for col in (*STAGES, "total", "sync share"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{med[k]:.2f}" for k in (*STAGES, "total")), f"{100 * sync_frac:.1f}%")
    Console().print(table)
    Console().print(f"engines made: {len(watch.engines)}, weight syncs: {watch.syncs} for {len(rows)} steps")
    Console().print("sampler/trainer gap per step (nats/token; mean / max), training reward:")
    for step, mean, mx, reward in gaps:
        Console().print(f"  step {step:3d}  gap {mean if mean is None else f'{mean:.2e}'} / "
                        f"{mx if mx is None else f'{mx:.2e}'}  reward {reward:.3f}")
    summary["gap_max"] = max((g[2] for g in gaps if g[2] is not None), default=None)
    with session_scope(factory) as s:
        s.add(TrainStep(run_id=run.id, phase="bench_grpo", step=0, timings=med, extra=summary))
    if not ok_engine:
        sys.exit(f"engine restarted or sync went elsewhere: {summary}")
    if sync_frac > max_sync_frac:
        sys.exit(f"weight sync is {100 * sync_frac:.1f}% of a step (limit {100 * max_sync_frac:.0f}%)")


if __name__ == "__main__":
    typer.run(main)
