"""Carry out a plan: train and evaluate what it marks missing (run, resume, evaluate), reuse the rest.

    execute(steps, preset, factory, data_dir=None, fresh=False, console=console)

One grader serves every step (its worker processes start once), and one engine pool
(repro.runs.EnginePool): a training run's evaluation, and the next step, reuse the engine the
previous step used (its weights reloaded), so a plan starts one engine where it used to start one
per training phase and evaluation. A failing step is recorded, by
the runner marking its run failed and here in the returned list, and the other steps still run,
so one broken method leaves the rest of the table printable.
"""

from __future__ import annotations

import time
import traceback
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from sqlalchemy.orm import Session, sessionmaker

from harness.grading import Grader
from repro.plan import Step
from repro.presets import Preset


def execute(steps: list[Step], preset: Preset, factory: sessionmaker[Session], *, data_dir: str | None,
            fresh: bool, console: Console) -> list[str]:
    """Run what is missing; a failing step is recorded (runner marks the run failed) and the rest go on."""
    from repro import runs as runner

    failures: list[str] = []
    todo = [st for st in steps if st.action in ("run", "resume", "evaluate")]
    if not todo:
        return failures
    engines = runner.EnginePool(runner.generator_factory(preset))
    with Grader() as grader, _shutdown(engines):
        for st in todo:
            t0 = time.perf_counter()
            console.print(f"[bold]{st.action}[/bold] {escape(st.label)} ...")
            try:
                if st.method == "base":
                    run = runner.base_run(factory, preset, fresh=fresh)
                else:
                    run = runner.train_method(factory, preset, st.method, overrides=st.overrides, data_dir=data_dir,
                                              grader=grader, fresh=fresh, engines=engines)
                st.run_id = run.id
                if st.evaluate:
                    runner.evaluate_run(factory, run, preset, data_dir=data_dir, grader=grader, engines=engines)
            except Exception as e:  # noqa: BLE001  (the table notes the failed run; others still run)
                failures.append(f"{st.label}: {type(e).__name__}: {e}")
                why = escape("".join(traceback.format_exception_only(e)).strip())
                console.print(f"[red]{escape(st.label)} failed[/red]: {why}")
                continue
            console.print(f"{st.label}: done in {time.perf_counter() - t0:.1f} s (run #{st.run_id})")
    return failures


@contextmanager
def _shutdown(engines) -> Iterator[None]:
    try:
        yield
    finally:
        engines.shutdown()
