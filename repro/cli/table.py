"""`python reproduce.py --table main`: the headline command (plan, run or reuse, print; repro/pipeline.py).

    python reproduce.py --table main --method-file my_method.py --with best-of-n [--compare-to lr-sft]

`--with` adds a method (ours or one from `--method-file`) to the table's plan: it runs or is reused
like the built-ins, with the preset's budgets (methods/registry.py: preset_fields) and `--set`
overrides. Its row's deltas are measured against `--compare-to`, by default the LatentRevise
variant of the family the method declares (else base), with the same paired test as every row.
Engine and library logs go to a log file (its path printed once) unless `--verbose`.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from repro.cli.app import (
    DEFAULT_DB,
    DataDir,
    Db,
    Debug,
    Format,
    MethodFiles,
    PresetName,
    Verbose,
    app,
    check_format,
    fail,
    load_method_files,
)


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
    method_files: MethodFiles = [],  # noqa: B006  (typer reads the default)
    with_methods: Annotated[list[str], typer.Option(
        "--with", help="add this method to the table's plan (repeatable; e.g. one from --method-file)")] = [],  # noqa: B006
    compare_to: Annotated[Optional[str], typer.Option(
        "--compare-to", help="the row the --with methods' deltas are measured against (default: the "
        "LatentRevise variant of the method's family, else base)")] = None,
    overrides: Annotated[list[str], typer.Option(
        "--set", help="config override key=value for the --with methods (repeatable)")] = [],  # noqa: B006
    verbose: Verbose = False,
    debug: Debug = False,  # read by the error path (repro/cli/errors.py), for every command
) -> None:
    if ctx.invoked_subcommand is not None:
        if method_files or with_methods:
            fail("--method-file/--with before a command belong to --table; give --method-file after the command")
        return
    if table is None and plot is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()
    from methods.registry import available_methods
    from repro.cli.training import parse_overrides
    from repro.pipeline import reproduce
    from repro.presets import PRESETS

    check_format(fmt)
    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    load_method_files(method_files)
    known = available_methods()
    for m in [*with_methods, *([compare_to] if compare_to else [])]:
        if m != "base" and m not in known:
            fail(f"unknown method {m!r}; available: {', '.join(known)} (a method in a file: --method-file FILE)")
    if (with_methods or overrides) and (table or "main") != "main":
        fail("--with/--set/--compare-to add rows to the main table only (--table main)")
    fields = parse_overrides(overrides)
    extra = [(m, fields) for m in with_methods]
    extra += [(compare_to, {})] if compare_to and compare_to not in with_methods else []
    baselines = {m: compare_to for m in with_methods} if compare_to else None
    reproduce(table=table, preset=preset, plot_dir=plot, dry_run=dry_run, fresh=fresh, fmt=fmt, db=db,
              data_dir=data_dir, extra=extra, baselines=baselines, verbose=verbose)
