"""`python reproduce.py --table main`: reproduce the paper's tables from results.db (typer CLI).

Thin on purpose: parse arguments, hand them to the harness, print. Subcommands (eval, leaderboard,
runs, show, query, methods, crosscheck) live in repro/cli.py; the table pipeline (plan, run or
reuse, print) lives in repro/pipeline.py.
"""

from __future__ import annotations

from typing import Optional

import typer

from repro.cli import app


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    table: Optional[str] = typer.Option(None, "--table", help="main | rescue | reference | ablation-<name>"),
    preset: str = typer.Option("tiny", "--preset", help="tiny (CPU default) | paper | paper-7b"),
    plot: Optional[str] = typer.Option(None, "--plot", help="write PNG figures to this directory"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, run nothing"),
    fresh: bool = typer.Option(False, "--fresh", help="recompute runs instead of reusing them"),
    fmt: str = typer.Option("rich", "--format", help="rich | csv | json | markdown"),
    db: str = typer.Option("results.db", "--db", help="SQLite path or any SQLAlchemy URL"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", envvar="LATENTREVISE_DATA_DIR",
                                           help="local JSONL benchmark directory (default: the hub)"),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if table is None and plot is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()
    from repro.pipeline import reproduce

    reproduce(table=table, preset=preset, plot_dir=plot, dry_run=dry_run, fresh=fresh, fmt=fmt,
              db=db, data_dir=data_dir)


if __name__ == "__main__":
    app()
