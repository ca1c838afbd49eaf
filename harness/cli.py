"""Subcommands of reproduce.py: eval, leaderboard, runs, show, query, methods, crosscheck."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_show_locals=False)
