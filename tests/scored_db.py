"""Synthetic results.db content for table, CLI and comparison tests: finished runs with per-sample verdicts.

    run_id = add_run(factory, preset, "sft", verdicts(seed=1, benches, problems=12, n=8, p=0.4))

A run is stored with the config hash the planner computes for it (repro/runs.py: run_config), so
`--table main` reuses it instead of training; its evaluations carry the preset's sampling, so the
main table shows them. Verdicts are drawn from a seeded generator: every test sees the same rows.
"""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from benchmarks import load_benchmark
from harness.protocol import EvalProtocol
from harness.store import Evaluation, Sample, finish_run, get_or_create_run, session_scope
from repro import presets
from repro.presets import Preset


def verdicts(seed: int, benches: list[str], problems: int, n: int, p: float) -> dict[str, dict[str, list[bool]]]:
    rng = random.Random(seed)
    return {b: {f"{b}-{i:03d}": [rng.random() < p for _ in range(n)] for i in range(problems)} for b in benches}


def sampling(preset: Preset, bench: str, **changes: Any) -> dict[str, Any]:
    """The sampling an evaluation under the preset's protocol stores (harness/evaluate.py), with `changes`."""
    from harness.evaluate import eval_identity

    return {**eval_identity(bench, [], preset.eval, {})[0], **changes}


def grader_settings() -> dict[str, Any]:
    """What a real evaluation stores as its grader (compare checks it like any protocol field)."""
    from harness.grading import Grader

    with Grader(workers=0) as g:
        return g.settings()


def add_run(factory: sessionmaker[Session], preset: Preset, method: str, rows: dict[str, dict[str, list[bool]]],
            config: dict[str, Any] | None = None, **sampling_changes: Any) -> int:
    """A finished run of `method` on `preset` with one finished evaluation per benchmark of `rows`."""
    from repro.runs import base_config, run_config

    if config is None:
        config = base_config(preset) if method == "base" else run_config(preset, method)[1]
    run, _ = get_or_create_run(factory, method=method, model=preset.base_model, preset=preset.name,
                               seed=preset.seed, config=config)
    with session_scope(factory) as s:
        for bench, problems in rows.items():
            ev = Evaluation(run_id=run.id, benchmark=bench, template=preset.eval.template,
                            sampling=sampling(preset, bench, **sampling_changes), grader=grader_settings(),
                            eval_hash=f"{bench}-{sampling_changes}", n_problems=len(problems), status="finished",
                            metrics={"avg@n": sum(map(sum, problems.values())) / sum(map(len, problems.values()))})
            s.add(ev)
            s.flush()
            s.add_all(Sample(evaluation_id=ev.id, problem_id=pid, sample_index=j, prompt="q", completion="a",
                             gold="1", prompt_tokens=1, completion_tokens=1, finish_reason="stop",
                             extracted="1" if ok else "2", correct=ok, grading_ms=0.0)
                      for pid, oks in problems.items() for j, ok in enumerate(oks))
    finish_run(factory, run.id, checkpoint=f"/nonexistent/{method}")
    return run.id


def byom_preset(model_dir: str) -> Preset:
    """A preset with tiny budgets on a tiny random model (test_byom.py's subprocesses make it too: PRESET_SITE)."""
    return presets.TINY.with_overrides(
        name="test-byom", base_model=model_dir, train_limit=8, benchmarks=("arith-easy",), eval_limit=6,
        eval=EvalProtocol(template="tiny-boxed", temperature=1.0, max_tokens=4, n_default=2, pass_k=(1,)))


def seed_main_runs(factory, preset) -> None:
    """base, sft, grpo, lr-sft, lr-grpo as finished runs (the planner's hashes) over the preset's problems."""
    ids = [p.id for p in load_benchmark("arith-easy", limit=preset.eval_limit)]
    for k, m in enumerate(("base", "sft", "grpo", "lr-sft", "lr-grpo")):
        add_run(factory, preset, m, {"arith-easy": {pid: [(i + k) % 3 == 0, (i * k) % 2 == 0]
                                                    for i, pid in enumerate(ids)}})
