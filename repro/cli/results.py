"""Reading results.db: `leaderboard`, `runs`, `show`, `query` (read-only SQL).

    python reproduce.py leaderboard --format markdown
    python reproduce.py runs | show 3
    python reproduce.py query "SELECT method, status, wall_s FROM runs"

These commands only read: they open the database read-only (a mistyped --db is an error, never a
new empty file) and print stored text as text (`cell`), so a completion containing "[/INST]" or
"[red]12[/red]" shows as typed instead of being read as rich markup.
"""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from repro.cli.app import DEFAULT_DB, Db, Format, app, check_format, console, fail
from repro.render import format_value


def cell(value: Any) -> Text:
    """A stored value as literal terminal text: never parsed as rich markup."""
    return Text("NULL" if value is None else str(value))


def metrics_table(title: str, results: dict[str, dict[str, Any]]) -> Table:
    keys: list[str] = []
    for m in results.values():
        keys += [k for k, v in (m or {}).items() if isinstance(v, (int, float)) and k not in keys]
    table = Table(title=cell(title))
    table.add_column("benchmark")
    for k in keys:
        table.add_column(cell(k), justify="right")
    for b, m in results.items():
        table.add_row(cell(b), *[format_value((m or {}).get(k)) for k in keys])
    return table


@app.command()
def leaderboard(
    benchmarks: Optional[str] = typer.Option(None, "--benchmarks", help="comma-separated (default: all)"),
    fmt: Format = "rich",
    db: Db = DEFAULT_DB,
) -> None:
    """One row per model/method, one column per benchmark, the average and 95% CIs."""
    from harness.store import open_db
    from repro import render, tables

    check_format(fmt)
    names = [b.strip() for b in benchmarks.split(",")] if benchmarks else None
    typer.echo(render.render(tables.leaderboard(open_db(db, readonly=True), names), fmt))


@app.command()
def runs(db: Db = DEFAULT_DB) -> None:
    """All runs: id, method, model, preset, seed, status, config hash, wall time, #evaluations."""
    from sqlalchemy import func, select

    from harness.store import Evaluation, Run, display_url, open_db, session_scope

    with session_scope(open_db(db, readonly=True)) as s:
        counts = dict(s.execute(select(Evaluation.run_id, func.count()).group_by(Evaluation.run_id)).all())
        rows = s.scalars(select(Run).order_by(Run.id)).all()
    table = Table(title=cell(f"runs in {display_url(db)}"))
    for c in ("id", "method", "model", "preset", "seed", "status", "hash", "wall s", "#evals"):
        table.add_column(c, justify="right" if c in ("id", "seed", "wall s", "#evals") else "left")
    for r in rows:
        table.add_row(*map(cell, (r.id, r.method, r.model, r.preset, r.seed, r.status, r.config_hash,
                                  format_value(r.wall_s), counts.get(r.id, 0))))
    console.print(table)


@app.command()
def show(run_id: int = typer.Argument(...), db: Db = DEFAULT_DB,
         examples: int = typer.Option(2, "--examples", help="correct and incorrect samples shown per benchmark"),
         ) -> None:
    """A run's per-benchmark metrics and some correct and incorrect samples (extracted answer vs gold)."""
    from sqlalchemy import select

    from harness.store import Evaluation, Run, Sample, display_url, open_db, session_scope

    with session_scope(open_db(db, readonly=True)) as s:
        run = s.get(Run, run_id)
        if run is None:
            fail(f"no run {run_id} in {display_url(db)}")
        evals = s.scalars(select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.id)).all()
        picks = {}
        for ev in evals:
            picks[ev.id] = [
                s.scalars(select(Sample).where(Sample.evaluation_id == ev.id, Sample.correct == ok)
                          .order_by(Sample.problem_id, Sample.sample_index).limit(examples)).all()
                for ok in (True, False)
            ]
    console.print(Text.assemble((f"run {run.id}", "bold"), f" {run.method} | {run.model} | preset {run.preset} | "
                                f"seed {run.seed} | {run.status} | hash {run.config_hash} | code {run.code_version}"),
                  highlight=False)
    if run.error:
        console.print(Text.assemble(("error: ", "red"), run.error), highlight=False)
    console.print(metrics_table("metrics", {f"#{ev.id} {ev.benchmark} [{ev.template}, n={ev.sampling.get('n')}, "
                                             f"{ev.status}"
                                             + (f", re-grade of #{ev.regraded_from}" if ev.regraded_from else "")
                                             + "]": ev.metrics or {} for ev in evals}))
    table = Table(title="samples: some correct, some incorrect")
    for c in ("benchmark", "problem", "#", "ok", "extracted", "gold", "finish", "completion (end)"):
        table.add_column(c, overflow="fold")
    for ev in evals:
        for group in picks[ev.id]:
            for x in group:
                table.add_row(*map(cell, (ev.benchmark, x.problem_id, x.sample_index, "yes" if x.correct else "no",
                                          x.extracted, x.gold, x.finish_reason, x.completion[-160:])))
    console.print(table)


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
