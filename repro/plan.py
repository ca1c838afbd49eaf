"""The plan of a table: which runs it needs and, per run, whether to reuse, evaluate, resume or run it.

    steps = plan_table("main", preset, factory)   # base + sft, grpo, lr-sft, lr-grpo: "reuse" | "evaluate" | "run"

Reuse is decided by the run's config hash (runs.run_config + the hash `get_or_create_run`
computes), so a second invocation starts no engine and trains nothing. Planning is offline: it
resolves no model and loads no benchmark from the hub, so `--preset paper --dry-run` works on a
machine without network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from harness.store import Evaluation, Run, session_scope
from harness.store import run_hash as stored_hash
from repro.catalog import (
    ABLATIONS,
    LATENTREVISE_METHOD,
    MAIN_METHODS,
    MINING_ONLY,
    RESCUE_METHODS,
    ablation,
    ablation_overrides,
    check_ablation,
)
from repro.presets import Preset
from repro.scores import matches


@dataclass
class Step:
    label: str  # row label, e.g. "lr-sft" or "lr-sft fw_steps=4"
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    evaluate: bool = True  # the table needs this run's evaluations
    config_hash: str = ""
    action: str = "run"  # reuse | evaluate | run | resume | error
    run_id: int | None = None
    detail: str = ""
    estimate: dict[str, Any] | None = None


def run_hash(preset: Preset, method: str, overrides: dict[str, Any] | None = None) -> str:
    """The config hash `get_or_create_run` will compute for this run (offline: nothing is resolved)."""
    from repro.runs import base_config, run_config

    config = base_config(preset) if method == "base" else run_config(preset, method, overrides)[1]
    return stored_hash(method, preset.base_model, preset.name, preset.seed, config)


def table_steps(table: str, preset: Preset) -> list[Step]:
    """The runs `table` needs, before looking at the database."""
    if table == "main":
        return [Step(m, m) for m in ("base", *MAIN_METHODS)]
    if table == "reference":  # our base-model numbers beside the published ones, where any are published
        from repro.reference import models_with_reference

        return [Step("base", "base")] if preset.base_model in models_with_reference() else []
    if table == "rescue":  # the main table's lr-sft run (its mining phase), the baselines mining only
        return [Step(m, m, {} if m == LATENTREVISE_METHOD else dict(MINING_ONLY), evaluate=False)
                for m in RESCUE_METHODS]
    if table.startswith("ablation-"):
        abl = ablation(table.removeprefix("ablation-"))
        check_ablation(abl)
        budget = ablation_overrides(abl, preset)
        steps = [Step(f"{LATENTREVISE_METHOD} {abl.field}={v!r}", LATENTREVISE_METHOD,
                      {**budget, abl.field: v}, evaluate=abl.trains) for v in abl.values]
        return ([Step("base", "base")] if abl.trains else []) + steps
    raise ValueError(f"unknown table {table!r}; use main, rescue, reference or ablation-<{'|'.join(ABLATIONS)}>")


def plan_table(table: str, preset: Preset, factory: sessionmaker[Session] | None, fresh: bool = False,
               extra: Sequence[tuple[str, dict[str, Any]]] = ()) -> list[Step]:
    """Steps with their action: what the database already has decides reuse. `extra`: (method, overrides) of
    runs added to the table's own (`--with`, e.g. a third-party method)."""
    steps = table_steps(table, preset)
    steps += [Step(m, m, dict(o)) for m, o in extra if m not in {st.method for st in steps}]
    for st in steps:
        try:
            st.config_hash = run_hash(preset, st.method, st.overrides)
        except Exception as e:  # an unknown method or a bad override: say so, run the rest
            st.action, st.detail = "error", f"{type(e).__name__}: {e}"
            continue
        if factory is None:
            continue
        with session_scope(factory) as s:
            run = s.scalars(select(Run).where(Run.method == st.method, Run.config_hash == st.config_hash)).first()
            if run is None:
                continue
            st.run_id = run.id
            if fresh:
                st.action, st.detail = "run", "fresh: the stored run is deleted and recomputed"
            elif run.status != "finished":
                st.action, st.detail = "resume", f"stored run #{run.id} is {run.status}"
            else:
                missing = missing_evaluations(s, run, preset) if st.evaluate else []
                st.action = "evaluate" if missing else "reuse"
                st.detail = f"run #{run.id}" + (f"; to evaluate: {', '.join(missing)}" if missing else "")
    return steps


def missing_evaluations(s: Session, run: Run, preset: Preset) -> list[str]:
    evs = s.scalars(select(Evaluation).where(Evaluation.run_id == run.id, Evaluation.status == "finished")).all()
    done = {e.benchmark for e in evs if matches(e, preset.eval)}
    return [b for b in preset.benchmarks if b not in done]


def planned_hashes(steps: list[Step]) -> dict[str, str]:
    """method -> the config hash the plan made for it (methods planned once; ablation variants are not)."""
    methods = [st.method for st in steps]
    return {st.method: st.config_hash for st in steps if st.config_hash and methods.count(st.method) == 1}
