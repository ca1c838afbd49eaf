"""Reading results.db: `leaderboard`, `runs`, `show`, `query` (read-only SQL).

    python reproduce.py leaderboard --format markdown
    python reproduce.py runs | show 3
    python reproduce.py query "SELECT method, status, wall_s FROM runs"

These commands only read: they open the database read-only (a mistyped --db is an error, never a
new empty file) and print stored text as text (`cell`), so a completion containing "[/INST]" or
"[red]12[/red]" shows as typed instead of being read as rich markup. Their rich tables go through
repro/render.py's 80-column layout (benchmark names abbreviated, wide tables wrapped, never a cell
cut); every share (accuracy, pass@k, maj@k, truncation) is printed in %, like the main table.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

import typer
from rich.table import Table
from rich.text import Text

from repro.cli.app import DEFAULT_DB, Db, Format, MethodFiles, app, check_format, console, fail, load_method_files
from repro.render import TableData, format_pct, format_value, render

SHARE_METRIC = re.compile(r"^(avg@n|pass@\d+|maj@\d+|truncation_rate)$")  # fractions in [0, 1]: shown in %


def cell(value: Any) -> Text:
    """A stored value as literal terminal text: never parsed as rich markup."""
    return Text("NULL" if value is None else str(value))


def metric_text(key: str, value: Any) -> str:
    """One metric as the tables print it: shares (SHARE_METRIC) and the ci95 pair in %, the rest as numbers."""
    if key == "ci95" and isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{format_pct(value[0])}–{format_pct(value[1])}"
    if SHARE_METRIC.match(key) and isinstance(value, (int, float)):
        return format_pct(float(value))
    return format_value(value)


def metrics_data(title: str, results: dict[str, dict[str, Any]]) -> TableData:
    """One row per metric, one column per benchmark (a handful of benchmarks fit 80 columns; 15 metrics do not)."""
    keys: list[str] = []
    for m in results.values():
        keys += [k for k, v in (m or {}).items() if k not in keys and (isinstance(v, (int, float)) or k == "ci95")]
    rows = [{"metric": f"{k} %" if SHARE_METRIC.match(k) or k == "ci95" else k,
             **{b: metric_text(k, (m or {}).get(k)) for b, m in results.items()}} for k in keys]
    return TableData(title, ["metric", *results], rows, ["shares (avg@n, ci95, pass@k, maj@k, truncation) in %"])


def metrics_table(title: str, results: dict[str, dict[str, Any]]) -> Text:
    """`metrics_data` as rich text at the console's width."""
    return Text(render(metrics_data(title, results), "rich", console.width))


def bench_order(names: Iterable[str]) -> list[str]:
    """Benchmarks in the order the presets list them (tiny: easy, medium, hard; paper: math500 ... olympiadbench),
    then any others alphabetically: never plain alphabetical (easy, hard, medium)."""
    from repro.presets import PRESETS

    order = list(dict.fromkeys(b for p in PRESETS.values() for b in p.benchmarks))
    return sorted(set(names), key=lambda b: (order.index(b) if b in order else len(order), b))


@app.command()
def leaderboard(
    benchmarks: Optional[str] = typer.Option(None, "--benchmarks", help="comma-separated (default: all)"),
    fmt: Format = "rich",
    db: Db = DEFAULT_DB,
    method_files: MethodFiles = [],  # noqa: B006  (typer reads the default)
) -> None:
    """One row per model/method, one column per benchmark (in the presets' order), the average and 95% CIs."""
    from sqlalchemy import select

    from harness.store import Evaluation, open_db, session_scope
    from repro import tables

    check_format(fmt)
    load_method_files(method_files)
    factory = open_db(db, readonly=True)
    if benchmarks:
        names = [b.strip() for b in benchmarks.split(",")]
    else:
        with session_scope(factory) as s:
            names = bench_order(s.scalars(select(Evaluation.benchmark).where(Evaluation.status == "finished")))
    typer.echo(render(tables.leaderboard(factory, names), fmt, console.width))


def runs_data(db: str) -> TableData:
    """All runs: id, method, model, preset, seed, status, config hash, wall time, #evaluations."""
    from sqlalchemy import func, select

    from harness.store import Evaluation, Run, display_url, open_db, session_scope

    with session_scope(open_db(db, readonly=True)) as s:
        counts = dict(s.execute(select(Evaluation.run_id, func.count()).group_by(Evaluation.run_id)).all())
        rows = [{"id": r.id, "method": r.method, "model": r.model, "preset": r.preset, "seed": r.seed,
                 "status": r.status, "hash": r.config_hash, "wall s": r.wall_s, "#evals": counts.get(r.id, 0)}
                for r in s.scalars(select(Run).order_by(Run.id))]
    return TableData(f"runs in {display_url(db)}", ["id", "method", "model", "preset", "seed", "status", "hash",
                                                    "wall s", "#evals"], rows)


@app.command()
def runs(db: Db = DEFAULT_DB, fmt: Format = "rich") -> None:
    """All runs: id, method, model, preset, seed, status, config hash, wall time, #evaluations."""
    check_format(fmt)
    typer.echo(render(runs_data(db), fmt, console.width), nl=False)


@app.command()
def show(run_id: int = typer.Argument(...), db: Db = DEFAULT_DB,
         examples: int = typer.Option(2, "--examples", help="correct and incorrect samples shown per benchmark"),
         fmt: Format = "rich",  # csv | json | markdown: the metrics table only
         ) -> None:
    """A run's per-benchmark metrics (shares in %) and some correct and incorrect samples (extracted vs gold)."""
    from sqlalchemy import select

    from harness.store import Evaluation, Run, Sample, display_url, open_db, session_scope

    check_format(fmt)
    with session_scope(open_db(db, readonly=True)) as s:
        run = s.get(Run, run_id)
        if run is None:
            fail(f"no run {run_id} in {display_url(db)}")
        evals = s.scalars(select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.id)).all()
        order = bench_order(ev.benchmark for ev in evals)  # the presets' order, not the order they were run
        evals = sorted(evals, key=lambda ev: (order.index(ev.benchmark), ev.id))
        picks = {ev.id: [s.scalars(select(Sample).where(Sample.evaluation_id == ev.id, Sample.correct == ok)
                                   .order_by(Sample.problem_id, Sample.sample_index).limit(examples)).all()
                         for ok in (True, False)] for ev in evals}
    metrics = metrics_data(f"run {run.id}: metrics", {_eval_label(ev): {"n": ev.sampling.get("n"), **(ev.metrics or {})}
                                                       for ev in evals})
    metrics.notes.append("; ".join(f"{_eval_label(ev)}: #{ev.id}, template {ev.template}, {ev.status}"
                                   + (f", re-grade of #{ev.regraded_from}" if ev.regraded_from else "")
                                   for ev in evals))
    if fmt != "rich":
        typer.echo(render(metrics, fmt), nl=False)
        return
    console.print(Text.assemble((f"run {run.id}", "bold"), f" {run.method} | {run.model} | preset {run.preset} | "
                                f"seed {run.seed} | {run.status} | hash {run.config_hash} | code {run.code_version}"),
                  highlight=False)
    if run.error:
        console.print(Text.assemble(("error: ", "red"), run.error), highlight=False)
    console.print(Text(render(metrics, "rich", console.width)))
    console.print(samples_table([(ev.benchmark, x) for ev in evals for group in picks[ev.id] for x in group]))


def _eval_label(ev) -> str:
    """A benchmark's column; a re-grade gets its own beside the evaluation it re-scored."""
    return f"{ev.benchmark} rg{ev.id}" if ev.regraded_from else ev.benchmark


def samples_table(samples: list[tuple[str, Any]]) -> Table:
    """Samples stacked, one block each (a header line, then the completion's end), so 80 columns show them whole."""
    table = Table(title="samples: some correct, some incorrect", show_header=False, show_lines=True)
    table.add_column(overflow="fold")
    for bench, x in samples:
        head = (f"{bench} {x.problem_id} #{x.sample_index} {'correct' if x.correct else 'wrong'} | extracted "
                f"{'NULL' if x.extracted is None else x.extracted} | gold {x.gold} | finish {x.finish_reason}")
        table.add_row(Text.assemble(head, "\n", ("completion (end): ", "dim"), x.completion[-160:]))
    return table


@app.command()
def compare(run_a: int = typer.Argument(..., help="run id A (see `runs`)"),
            run_b: int = typer.Argument(..., help="run id B: the reference; Δ = A - B"),
            allow_protocol_mismatch: bool = typer.Option(
                False, "--allow-protocol-mismatch", help="compare evaluations made under different protocols"),
            fmt: Format = "rich", db: Db = DEFAULT_DB) -> None:
    """Per-benchmark paired comparison of two runs over the problems both were evaluated on (Δ, p, count)."""
    from harness.store import open_db
    from repro.compare import ProtocolMismatch, compare_runs
    from repro.presets import PRESETS

    check_format(fmt)
    order = bench_order(b for p in PRESETS.values() for b in p.benchmarks)
    try:
        table = compare_runs(open_db(db, readonly=True), run_a, run_b, order, allow_protocol_mismatch)
    except (KeyError, ProtocolMismatch) as e:
        fail(str(e.args[0]))
    typer.echo(render(table, fmt, console.width), nl=False)


@app.command()
def query(sql: str = typer.Argument(..., help="SQL to run against results.db (read-only)"),
          db: Db = DEFAULT_DB,
          max_rows: int = typer.Option(200, "--max-rows")) -> None:
    """Run one SQL statement on results.db, read-only: anything that could write is refused, on any backend."""
    from harness.readonly import readonly_query

    result = readonly_query(db, sql, max_rows)  # refusals and SQL errors are one line (errors.py)
    table = Table(title=f"{len(result.rows)} row(s)" + (" (truncated)" if result.truncated else ""))
    for c in result.columns:
        table.add_column(cell(c), overflow="fold")
    for r in result.rows:
        table.add_row(*map(cell, r))
    console.print(table)
