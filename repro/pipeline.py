"""`reproduce.py --table X`: plan the runs a table needs, run or reuse them, print the table.

    steps = plan_table("main", preset, factory)   # repro/plan.py: "reuse" | "evaluate" | "run" per run
    execute(steps, preset, factory)               # repro/execute.py: train and evaluate what is missing
    print(render(build_table("main", ...), fmt))  # repro/tables.py + repro/render.py: a pure function of results.db

A dry run prints the plan, the like-for-like budget of every run beside its baseline's (`budgets`:
the fields that must match, and whether every shared field does) and, on a GPU preset, the GPU-hour
estimate of repro/cost.py, and touches nothing: it opens no database that does not exist yet and
loads nothing from the hub. `--dry-run --format json` prints the same plan as one JSON object
(`plan_json`). Otherwise the plan goes to stderr and stdout carries only the table, so `--format csv`
pipes. A preset with a `label` (the rehearsal: "pipeline check, not a result") says it in the
table's title and first note.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from harness.store import display_url, normalize_url, open_db
from repro.catalog import LATENTREVISE_METHOD, MINING_ONLY, RESCUE_METHODS, ablation, ablation_overrides
from repro.cost import assumptions, dataset_size, estimate_step, params_b
from repro.execute import execute
from repro.plan import Step, plan_table, planned_hashes
from repro.presets import BUDGET_FIELDS, CONFIG_BASE, GEN_FIELDS, Preset, get_preset
from repro.render import TableData, render
from repro.tables import ablation_table, main_table, rescue_table
from repro.terminal import quiet


def build_table(table: str, preset: Preset, factory: sessionmaker[Session], steps: list[Step],
                baselines: dict[str, str] | None = None) -> TableData:
    prefer = planned_hashes(steps)
    if table == "main":
        return main_table(factory, preset, prefer=prefer, baselines=baselines)
    if table == "reference":
        from repro.reference import reference_table

        return reference_table(factory)
    if table == "rescue":
        result = rescue_table(factory, preset, methods=RESCUE_METHODS, prefer=prefer)
        result.notes.append(f"{', '.join(m for m in RESCUE_METHODS if m != LATENTREVISE_METHOD)}: mining only "
                            f"({', '.join(f'{k}={v}' for k, v in MINING_ONLY.items())}); {LATENTREVISE_METHOD}: "
                            "the main table's run (its mining phase)")
        return result
    abl = ablation(table.removeprefix("ablation-"))
    variants = [(st.overrides[abl.field], st.config_hash) for st in steps if abl.field in st.overrides]
    table = ablation_table(factory, preset, abl.name, abl.field, variants, abl.what,
                           budget=ablation_overrides(abl, preset))
    if not abl.trains:
        table.notes.append(f"mining only ({', '.join(f'{k}={v}' for k, v in MINING_ONLY.items())}): each variant "
                           "screens, revises and verifies, then trains nothing; no downstream accuracy")
    return table


def budgets(st: Step, preset: Preset) -> dict[str, Any] | None:
    """A run's compute budget next to its baseline's: {baseline, fields: {name: value}, differs: [shared fields
    whose value is not the baseline's, the step's own overrides excepted]} (None for base or an unbuildable run)."""
    from repro.runs import run_config

    if st.method == "base" or st.action == "error":
        return None
    cfg = run_config(preset, st.method, st.overrides)[0]
    base = CONFIG_BASE.get(st.method)
    names = [n for n in (*BUDGET_FIELDS.get(base or st.method, ()), *GEN_FIELDS) if hasattr(cfg, n)]
    out: dict[str, Any] = {"baseline": base, "fields": {n: getattr(cfg, n) for n in names}, "differs": []}
    if base:
        ref = run_config(preset, base)[0]
        shared = [f.name for f in dataclasses.fields(ref) if hasattr(cfg, f.name) and f.name not in st.overrides]
        out["differs"] = [n for n in shared if getattr(cfg, n) != getattr(ref, n)]
        out["n_shared"] = len(shared)
    return out


def _budget_table(steps: list[Step], preset: Preset) -> Table:
    t = Table(title="budgets: each LatentRevise variant and rescue baseline vs its baseline (like for like)")
    for c in ("run", "baseline", "budget", "shared fields = baseline's"):
        t.add_column(c, overflow="fold")
    for st in steps:
        b = budgets(st, preset)
        if b is None:
            continue
        same = ("" if b["baseline"] is None else
                f"yes ({b['n_shared']} fields)" if not b["differs"] else f"NO: {', '.join(b['differs'])}")
        t.add_row(st.label, b["baseline"] or "", ", ".join(f"{k}={v!r}" for k, v in b["fields"].items()), same)
    return t


def print_plan(steps: list[Step], preset: Preset, table: str, console: Console, data_dir: str | None,
               estimate: bool) -> None:
    if preset.label:
        console.print(f"[bold]{preset.name}: {preset.label}[/bold]", highlight=False)
    if not estimate and steps and all(st.action == "reuse" for st in steps):  # nothing runs: one line will do
        console.print(f"plan: --table {table} --preset {preset.name}: every run reused ("
                      + ", ".join(f"{st.label} {st.detail}" for st in steps) + "); budgets: --dry-run",
                      highlight=False)
        return
    t = Table(title=f"plan: --table {table} --preset {preset.name} ({preset.base_model})")
    cost_cols = ("GPU h", "tokens") if estimate else ()
    for c in ("run", "method", "overrides", "config hash", "action", "detail") + cost_cols:
        t.add_column(c, overflow="fold")
    total = 0.0
    for st in steps:
        cells = [st.label, st.method, ", ".join(f"{k}={v!r}" for k, v in st.overrides.items()),
                 st.config_hash[:12], st.action, st.detail]
        if estimate:
            est = st.estimate = estimate_step(st, preset, data_dir)
            if est:
                total += est["gpu_hours"]
                cells += [f"{est['gpu_hours']:.1f}", f"gen {est['generated'] / 1e6:.1f}M + eval "
                          f"{est['eval_generated'] / 1e6:.1f}M, train {est['trained'] / 1e6:.1f}M ({est['how']})"]
            else:
                cells += ["", ""]
        t.add_row(*cells)
    console.print(t)
    console.print(_budget_table(steps, preset))
    limit = f" (first {preset.eval_limit} problems of each)" if preset.eval_limit else ""
    console.print(f"benchmarks{limit}: {', '.join(preset.benchmarks)}; protocol: template {preset.eval.template}, "
                  f"T={preset.eval.temperature}, top-p {preset.eval.top_p}, max {preset.eval.max_tokens} tokens, n="
                  + ", ".join(f"{b}:{preset.eval.n_for(b)}" for b in preset.benchmarks), highlight=False)
    if estimate:
        console.print(f"estimate: {total:.1f} GPU hours in total (one H100), runs marked reuse included",
                      highlight=False)
        for line in assumptions(preset, data_dir):
            console.print(f"  - {line}", highlight=False)


def plan_json(steps: list[Step], preset: Preset, table: str, data_dir: str | None, estimate: bool) -> dict[str, Any]:
    """The plan as data: methods, overrides, config hashes, benchmarks, n per benchmark, token budgets, estimate."""
    from repro.runs import run_config

    runs, total = [], 0.0
    for st in steps:
        est = st.estimate = estimate_step(st, preset, data_dir) if estimate else None
        total += est["gpu_hours"] if est else 0.0
        built = run_config(preset, st.method, st.overrides)[0] if st.method != "base" and st.action != "error" else None
        runs.append({"label": st.label, "method": st.method, "overrides": st.overrides, "config_hash": st.config_hash,
                     "action": st.action, "detail": st.detail, "evaluate": st.evaluate,
                     "config": dataclasses.asdict(built) if built is not None else None,
                     "budget": budgets(st, preset), "estimate": est})
    e = preset.eval
    n_train, counted = dataset_size(preset.train_set, data_dir, preset.train_filter, preset.train_limit)
    return {
        "table": table, "preset": preset.name, "base_model": preset.base_model, "label": preset.label,
        "device": preset.device, "seed": preset.seed,
        "train": {"set": preset.train_set, "filter": preset.train_filter, "limit": preset.train_limit,
                  "problems": n_train, "counted": counted},
        "benchmarks": list(preset.benchmarks), "eval_limit": preset.eval_limit,
        "n_per_benchmark": {b: e.n_for(b) for b in preset.benchmarks},
        "protocol": {"template": e.template, "temperature": e.temperature, "top_p": e.top_p,
                     "max_tokens": e.max_tokens, "pass_k": list(e.pass_k), "seed": e.seed},
        "token_budgets": {"eval_max_tokens": e.max_tokens,
                          "gen_tokens": preset.parts.gen_tokens if preset.parts else None},
        "runs": runs,
        "estimate": ({"gpu_hours": total, "device": "one H100", "assumptions": assumptions(preset, data_dir)}
                     if estimate else None),
    }


def reproduce(table: str | None = "main", preset: str = "tiny", plot_dir: str | None = None, dry_run: bool = False,
              fresh: bool = False, fmt: str = "rich", db: str = "results.db", data_dir: str | None = None,
              extra: Sequence[tuple[str, dict[str, Any]]] = (), baselines: dict[str, str] | None = None,
              verbose: bool = False) -> TableData | None:
    """Plan, run or reuse, print. Returns the table (None for a dry run). `extra`: (method, overrides) added to
    the plan (`--with`); `baselines`: method -> the row its deltas are measured against (`--compare-to`);
    `verbose`: library logs on the terminal instead of the log file (repro/terminal.py)."""
    p = get_preset(preset)
    table = table or "main"
    if fmt not in ("rich", "csv", "json", "markdown"):
        raise ValueError(f"unknown format {fmt!r}; use rich, csv, json or markdown")
    if data_dir:
        os.environ.setdefault("LATENTREVISE_DATA_DIR", str(data_dir))
    url = normalize_url(db)
    exists = not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).exists()
    # The plan goes to stdout for a dry run (it is the output), to stderr otherwise (stdout is the table).
    console = Console(file=sys.stdout if dry_run else sys.stderr, width=160)
    factory = open_db(url) if (exists or not dry_run) else None
    steps = plan_table(table, p, factory, fresh, extra)
    gpu = p.device.startswith("cuda") and params_b(p.base_model) is not None
    if dry_run and fmt == "json":
        print(json.dumps(plan_json(steps, p, table, data_dir, estimate=gpu), indent=1, default=str))
        return None
    print_plan(steps, p, table, console, data_dir, estimate=dry_run and gpu)
    if dry_run and not gpu:
        console.print(f"{p.name} is a CPU preset: no GPU-hour estimate", highlight=False)
    if dry_run:
        return None
    t0 = time.perf_counter()
    work = any(st.action in ("run", "resume", "evaluate") for st in steps)
    with quiet(f"table-{table}", verbose, [console], active=work):  # engine and library logs -> a log file
        failures = execute(steps, p, factory, data_dir=data_dir, fresh=fresh, console=console)
    result = build_table(table, p, factory, steps, baselines)
    if p.label:
        result.title += f" [{p.label}]"
        result.notes.insert(0, f"{p.name}: {p.label}")
    result.notes += [f"not planned: {st.label}: {st.detail}" for st in steps if st.action == "error"]
    result.notes += [f"failed this invocation: {f}" for f in failures]
    console.print(f"runs and evaluations: {time.perf_counter() - t0:.1f} s; table from {display_url(url)}",
                  highlight=False, markup=False)
    print(render(result, fmt), end="")
    if plot_dir:
        from repro.plots import write_figures

        for path in write_figures(factory, p, plot_dir, planned_hashes(steps)):
            console.print(f"wrote {path}")
    return result
