"""The CLI's one error path: an anticipated failure is ONE line on stderr and a non-zero exit.

Every command and the `--table` callback run inside `guard` (repro/cli/app.py registers them so),
which turns the failures a user can act on into `error: what, where; what to do`:

    StoreError            a database that cannot be opened or written (URL, driver, path, disk)
    BenchmarkDataError    a rejected benchmark file (file:line: field), a missing data directory
    DBAPIError            a database error mid-run (disk full, locked), described by the store
    OSError               disk full, permission denied, read-only file system (with the file name)
    KeyboardInterrupt     "interrupted" (exit 130); the run resumes when the command is rerun

Anything else is a bug and keeps its traceback. `--debug` (or LATENTREVISE_DEBUG=1) shows the
traceback for the anticipated failures too. Messages are printed as plain text (never rich markup)
and any database password in them is masked.
"""

from __future__ import annotations

import errno
import functools
import os
from typing import Any, Callable

import typer
from rich.console import Console
from rich.text import Text

DEBUG_ENV = "LATENTREVISE_DEBUG"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)

err_console = Console(stderr=True)


def report(message: str) -> None:
    """`error: <message>` on stderr, the message as plain text (stored text may contain "[red]")."""
    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with the one error path around it (the signature is kept for typer)."""

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as e:  # typer.Exit, usage errors and bugs are not explained: re-raised as they are
            message = explain(e, _param("db"))
            if message is None or debug_requested():
                raise
            report(mask_password(message, _param("db")))
            raise typer.Exit(130 if isinstance(e, KeyboardInterrupt) else 1) from None

    return guarded


def explain(e: BaseException, db: str | None) -> str | None:
    """One line for an anticipated failure; None for anything else (a bug: keep the traceback)."""
    from sqlalchemy.exc import DBAPIError

    from benchmarks.registry import BenchmarkDataError
    from harness.store import StoreError, describe_db_error

    if isinstance(e, (StoreError, BenchmarkDataError)):
        return str(e)
    if isinstance(e, DBAPIError):
        return describe_db_error(e, db)
    if isinstance(e, KeyboardInterrupt):
        return "interrupted; rerun the same command to resume (finished work is kept)"
    if isinstance(e, OSError) and e.errno in DISK_FULL:
        return (f"disk full while writing {e.filename or 'a file'}: free space and rerun the same command "
                "(stored work is kept and resumed)")
    if isinstance(e, OSError) and e.errno in NOT_WRITABLE:
        return f"cannot write {e.filename or 'a file'}: {e.strerror}; check its permissions or choose another path"
    return None


def mask_password(message: str, db: str | None) -> str:
    """The message with the database URL's password (if any) replaced by ***."""
    if not db or "://" not in str(db):
        return message
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(str(db)).password
    except ArgumentError:
        return message
    return message.replace(str(password), "***") if password else message


def debug_requested() -> bool:
    ctx = _current_context()
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and root.params.get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _param(name: str) -> Any:
    """A parameter of the running command (e.g. --db), else of the top-level callback."""
    ctx = _current_context()
    while ctx is not None:
        if ctx.params.get(name) is not None:
            return ctx.params[name]
        ctx = ctx.parent
    return None


def _current_context() -> Any:
    try:  # typer >= 0.2x runs on its own copy of click; older ones on click itself
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
    return get_current_context(silent=True)
