"""The typer app every command registers on, the terminal console, and the options commands share.

Options that several commands take are declared once here as `Annotated` types, so `--db` means
the same thing (and has the same help) everywhere:

    @app.command()
    def leaderboard(db: Db = DEFAULT_DB, fmt: Format = "rich") -> None: ...

Every command registered on `app` runs inside `errors.guard`: an anticipated failure (a rejected
file, a database that cannot be opened, disk full, ...) prints one line and exits 1; `fail()` is
the same path for the checks a command makes itself. `--debug` (the top-level callback's option)
shows tracebacks.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, NoReturn, Optional

import typer
from rich.console import Console

from repro.cli.errors import DEBUG_ENV, guard, report


class GuardedTyper(typer.Typer):
    """typer.Typer whose commands and callbacks run inside `errors.guard` (the one error path)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return _guarded(super().command(*args, **kwargs))

    def callback(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return _guarded(super().callback(*args, **kwargs))


def _guarded(register: Callable[[Callable[..., Any]], Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        register(guard(fn))
        return fn

    return decorator


app = GuardedTyper(add_completion=False, no_args_is_help=False, pretty_exceptions_show_locals=False)
console = Console()

DEFAULT_DB = "results.db"
DATA_DIR_ENV = "LATENTREVISE_DATA_DIR"  # benchmarks.DATA_DIR_ENV; not imported, to keep `--help` light

Db = Annotated[str, typer.Option("--db", help="results database: an SQLite path or any SQLAlchemy URL")]
DataDir = Annotated[Optional[str], typer.Option(
    "--data-dir", envvar=DATA_DIR_ENV, help="local JSONL benchmark directory (default: the Hugging Face hub)")]
PresetName = Annotated[str, typer.Option("--preset", help="tiny (CPU default) | tiny-smoke | paper | paper-7b")]
Format = Annotated[str, typer.Option("--format", help="rich | csv | json | markdown")]
Backend = Annotated[str, typer.Option("--backend", help="auto (vLLM when installed) | vllm | hf")]
Debug = Annotated[bool, typer.Option("--debug", envvar=DEBUG_ENV, help="show tracebacks instead of one-line errors")]
MethodFiles = Annotated[list[str], typer.Option(
    "--method-file", help="a Python file (or module:attr) whose @register_method classes join the registry "
    "(repeatable); its path and content hash enter the run's config")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", help="engine and library logs on the terminal, not in the log file")]


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 1: the error path of every anticipated failure."""
    report(message)
    raise typer.Exit(code=1)


def load_method_files(specs: list[str]) -> list[str]:
    """Import each --method-file; the names of the methods they registered (a bad file is one line, exit 1)."""
    from methods.registry import MethodFileError, load_method_file

    names: list[str] = []
    for spec in specs:
        try:
            names += load_method_file(spec)
        except MethodFileError as e:
            fail(str(e))
    return names


def check_format(fmt: str) -> str:
    from repro.render import FORMATS

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt
