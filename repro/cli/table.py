"""`python reproduce.py --table main`: the headline command (plan, run or reuse, print; repro/pipeline.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from repro.cli.app import DEFAULT_DB, DataDir, Db, Debug, Format, PresetName, app, check_format, fail


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    table: Annotated[Optional[str], typer.Option("--table", help="main | rescue | reference | ablation-<name>")] = None,
    preset: PresetName = "tiny",
    plot: Annotated[Optional[str], typer.Option("--plot", help="write PNG figures to this directory")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, run nothing")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="recompute runs instead of reusing them")] = False,
    fmt: Format = "rich",
    db: Db = DEFAULT_DB,
    data_dir: DataDir = None,
    debug: Debug = False,  # read by the error path (repro/cli/errors.py), for every command
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if table is None and plot is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()
    from repro.pipeline import reproduce
    from repro.presets import PRESETS

    check_format(fmt)
    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    reproduce(table=table, preset=preset, plot_dir=plot, dry_run=dry_run, fresh=fresh, fmt=fmt, db=db,
              data_dir=data_dir)
