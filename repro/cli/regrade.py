"""`regrade`: re-score stored samples under the current (or a chosen) grader policy, no engine started.

    python reproduce.py regrade 12                                  # evaluation 12, current policy
    python reproduce.py regrade --run 3 --grader-option fallback=none

Each re-graded evaluation becomes a new row linked to the old one (`regraded_from`); `show RUN`
lists both. Options are `harness.grading.Grader` keyword arguments (values read as JSON when they
parse: 5, 0.5, true, "x"); how many workers grade is not part of a verdict and not an option here.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import typer
from rich.table import Table

from repro.cli.app import DEFAULT_DB, Db, app, console, fail
from repro.cli.results import cell
from repro.cli.training import parse_overrides

RUNTIME_OPTIONS = ("workers", "start_method")  # how grading runs, not what it decides


def grader_options(pairs: list[str]) -> dict[str, Any]:
    """`key=value` -> Grader keyword arguments; an unknown key or a bare word is a one-line error."""
    from harness.grading import Grader

    allowed = [p for p in inspect.signature(Grader.__init__).parameters if p != "self" and p not in RUNTIME_OPTIONS]
    out = parse_overrides(pairs, "--grader-option")
    for key in out:
        if key not in allowed:
            fail(f"--grader-option {key!r} is not a grader setting; known: {', '.join(allowed)}")
    return out


@app.command()
def regrade(
    evaluation_id: Optional[int] = typer.Argument(None, help="the evaluation to re-grade (see `show RUN`)"),
    run: Optional[int] = typer.Option(None, "--run", help="re-grade every finished evaluation of this run"),
    options: list[str] = typer.Option([], "--grader-option", help="grader setting key=value (repeatable)"),
    db: Db = DEFAULT_DB,
) -> None:
    """Re-grade stored samples into new evaluation rows linked to the old ones (no generation)."""
    from harness.grading import Grader
    from harness.regrade import RegradeError, regrade_run
    from harness.regrade import regrade as regrade_one
    from harness.store import open_db

    if (evaluation_id is None) == (run is None):
        fail("give an evaluation id or --run RUN_ID (one of them)")
    kwargs = grader_options(options)
    factory = open_db(db)
    try:
        with Grader(**kwargs) as grader:
            results = (regrade_run(factory, run, grader) if run is not None
                       else {evaluation_id: regrade_one(factory, evaluation_id, grader)})
    except (RegradeError, ValueError) as e:
        fail(str(e))
    table = Table(title="re-graded (old -> new evaluation)")
    for c in ("old", "new", "reused", "verdicts changed", "avg@n"):
        table.add_column(c, justify="right")
    for old, r in results.items():
        table.add_row(*map(cell, (old, r["evaluation_id"], "yes" if r["reused"] else "no",
                                  "-" if r["changed"] is None else r["changed"],
                                  f"{r['metrics'].get('avg@n', float('nan')):.4f}")))
    console.print(table)
