"""The command line of reproduce.py, one module per group of commands (each registers on `app`).

    table.py     --table main | rescue | reference | ablation-<name> (the headline command)
    evaluate.py  eval
    crosscheck.py  crosscheck (our grader vs lm-eval's scorers or a peer's outputs)
    training.py  train, methods
    results.py   leaderboard, runs, show, query
    regrade.py   regrade (re-score stored samples, no engine)
    app.py       the typer app, the console, the options commands share (--db, --data-dir, ...)
"""

# importing registers the commands
from repro.cli import crosscheck, evaluate, regrade, results, table, training  # noqa: F401
from repro.cli.app import app

__all__ = ["app"]
