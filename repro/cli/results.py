"""Reading results.db: `leaderboard`, `runs`, `show`, `query` (read-only SQL).

    python reproduce.py leaderboard --format markdown
    python reproduce.py runs | show 3
    python reproduce.py query "SELECT method, status, wall_s FROM runs"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from repro.cli.app import DEFAULT_DB, Db, Format, app, check_format, console, fail
from repro.render import format_value


def metrics_table(title: str, results: dict[str, dict[str, Any]]) -> Table:
    keys: list[str] = []
    for m in results.values():
        keys += [k for k, v in (m or {}).items() if isinstance(v, (int, float)) and k not in keys]
    table = Table(title=title)
    table.add_column("benchmark")
    for k in keys:
        table.add_column(k, justify="right")
    for b, m in results.items():
        table.add_row(b, *[format_value((m or {}).get(k)) for k in keys])
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
    typer.echo(render.render(tables.leaderboard(open_db(db), names), fmt))


@app.command()
def runs(db: Db = DEFAULT_DB) -> None:
    """All runs: id, method, model, preset, seed, status, config hash, wall time, #evaluations."""
    from sqlalchemy import func, select

    from harness.store import Evaluation, Run, open_db, session_scope

    with session_scope(open_db(db)) as s:
        counts = dict(s.execute(select(Evaluation.run_id, func.count()).group_by(Evaluation.run_id)).all())
        rows = s.scalars(select(Run).order_by(Run.id)).all()
    table = Table(title=f"runs in {db}")
    for c in ("id", "method", "model", "preset", "seed", "status", "hash", "wall s", "#evals"):
        table.add_column(c, justify="right" if c in ("id", "seed", "wall s", "#evals") else "left")
    for r in rows:
        table.add_row(str(r.id), r.method, r.model, r.preset, str(r.seed), r.status, r.config_hash,
                      format_value(r.wall_s), str(counts.get(r.id, 0)))
    console.print(table)


@app.command()
def show(run_id: int = typer.Argument(...), db: Db = DEFAULT_DB,
         examples: int = typer.Option(2, "--examples", help="correct and incorrect samples shown per benchmark")) -> None:
    """A run's per-benchmark metrics and some correct and incorrect samples (extracted answer vs gold)."""
    from sqlalchemy import select

    from harness.store import Evaluation, Run, Sample, open_db, session_scope

    with session_scope(open_db(db)) as s:
        run = s.get(Run, run_id)
        if run is None:
            fail(f"no run {run_id} in {db}")
        evals = s.scalars(select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.id)).all()
        picks = {}
        for ev in evals:
            picks[ev.id] = [
                s.scalars(select(Sample).where(Sample.evaluation_id == ev.id, Sample.correct == ok)
                          .order_by(Sample.problem_id, Sample.sample_index).limit(examples)).all()
                for ok in (True, False)
            ]
    console.print(f"[bold]run {run.id}[/] {run.method} | {run.model} | preset {run.preset} | seed {run.seed} | "
                  f"{run.status} | hash {run.config_hash} | code {run.code_version}", highlight=False)
    if run.error:
        console.print(f"[red]error:[/] {run.error}", highlight=False)
    console.print(metrics_table("metrics", {f"{ev.benchmark} [{ev.template}, n={ev.sampling.get('n')}, "
                                             f"{ev.status}]": ev.metrics or {} for ev in evals}))
    table = Table(title="samples: some correct, some incorrect")
    for c in ("benchmark", "problem", "#", "ok", "extracted", "gold", "finish", "completion (end)"):
        table.add_column(c, overflow="fold")
    for ev in evals:
        for group in picks[ev.id]:
            for x in group:
                table.add_row(ev.benchmark, x.problem_id, str(x.sample_index), "yes" if x.correct else "no",
                              str(x.extracted), x.gold, x.finish_reason, x.completion[-160:])
    console.print(table)


@app.command()
def query(sql: str = typer.Argument(..., help="SQL to run against results.db (read-only)"),
          db: Db = DEFAULT_DB,
          max_rows: int = typer.Option(200, "--max-rows")) -> None:
    """Run SQL on results.db, read-only: a statement that writes fails with a clear error."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from harness.store import engine_of, normalize_url, open_db

    url = normalize_url(db)
    if url.startswith("sqlite:///") and not Path(url.split("sqlite:///", 1)[1]).is_file():
        fail(f"no database at {url.split('sqlite:///', 1)[1]}")
    engine = engine_of(open_db(url, readonly=True))
    try:
        with engine.connect() as conn:
            if engine.dialect.name in ("postgresql", "mysql"):
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            result = conn.execute(text(sql))
            if not result.returns_rows:
                conn.rollback()
                fail("query is read-only: the statement returned no rows and was rolled back")
            columns, rows = list(result.keys()), result.fetchmany(max_rows + 1)
            conn.rollback()
    except DBAPIError as e:
        msg = str(e.orig)
        if "readonly" in msg.replace("-", "") or "read only" in msg or "read-only" in msg:
            fail(f"query is read-only; refused to write: {msg}")
        fail(f"SQL error: {msg}")
    finally:
        engine.dispose()
    table = Table(title=f"{min(len(rows), max_rows)} row(s)" + (" (truncated)" if len(rows) > max_rows else ""))
    for c in columns:
        table.add_column(str(c), overflow="fold")
    for r in rows[:max_rows]:
        table.add_row(*["NULL" if v is None else str(v) for v in r])
    console.print(table)
