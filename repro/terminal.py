"""A quiet terminal: engine and library logs go to a log file per invocation, the terminal keeps ours.

    with quiet("train-sft", verbose=False, consoles=[console]) as log_path:   # prints the path once
        ...start engines, train, evaluate...

Inside the block, file descriptors 1 and 2 point at the log file, so everything a library prints,
Python logging, warnings, tqdm bars, and the output of child processes (vLLM's engine core runs in
a subprocess that inherits the descriptors), lands there, whatever the library's logging set-up.
What we print stays on the terminal: the given rich consoles write to a duplicate of the
descriptor they wrote to, and rich's global console (which every progress bar of the harness
uses) to a duplicate of the terminal's stderr, for the block. `verbose=True` keeps the logs on
the terminal (on stderr: stdout still carries only the table).

Before any engine is imported, `silence_at_source` turns off what a user cannot act on: vLLM's
usage-stats notice and tokenizer fork warnings (environment variables read at import) and a few
deprecation warnings raised inside torch/transformers (warnings filters). It does not lower log
levels: the log file keeps INFO lines, which is where to look when a run fails.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from rich.console import Console

LOG_DIR_ENV = "LATENTREVISE_LOGS"  # default: <runs dir>/logs
# Read by the libraries at import: set before vLLM/transformers load (setdefault: a user's own setting wins).
QUIET_ENV = {
    "VLLM_NO_USAGE_STATS": "1",  # the usage-statistics notice at every engine start
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",  # "the current process just got forked ..." at every engine start
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
# Warnings raised inside libraries about their own internals: nothing a user of the harness can change.
UNACTIONABLE = (
    r".*TypedStorage is deprecated.*",
    r".*`torch_dtype` is deprecated.*",
    r".*torch\.cuda\.amp.*is deprecated.*",
    r".*pynvml package is deprecated.*",
    r".*The given NumPy array is not writable.*",
)


def silence_at_source() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for pattern in UNACTIONABLE:
        warnings.filterwarnings("ignore", message=pattern)


def log_path(name: str) -> Path:
    """A new log file for this invocation: <LATENTREVISE_LOGS or runs/logs>/<UTC time>-<name>.log."""
    root = Path(os.environ.get(LOG_DIR_ENV) or Path(os.environ.get("LATENTREVISE_RUNS", "runs")) / "logs")
    root.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return root / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{safe}.log"


@contextmanager
def quiet(name: str, verbose: bool = False, consoles: Sequence[Console] = (),
          active: bool = True) -> Iterator[Path | None]:
    """Descriptors 1 and 2 -> a new log file for the block (yields its path; None when `verbose`, or when not
    `active`: nothing will run, so no log file is made)."""
    silence_at_source()
    if verbose or not active:
        with stdout_to_stderr():
            yield None
        return
    path = log_path(name)
    for c in consoles[:1]:
        c.print(f"logs: {path} (--verbose shows them here)", highlight=False, markup=False, soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no real descriptors (an embedded runner): nothing to redirect
        yield path
        return
    terminal = {fd: os.fdopen(os.dup(s), "w", buffering=1) for fd, s in zip((1, 2), saved)}
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        restore = _retarget(consoles, terminal)
        try:
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            restore()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for f in terminal.values():
                f.close()


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 -> 2 for the block, inherited by child processes (engines), then restored: with
    --verbose the logs show on the terminal and stdout still carries only the table (`--format csv` pipes)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (some embedded runners): nothing to protect
        yield
        return
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _std_fd(f: IO[str]) -> int | None:
    """1 or 2 when `f` writes to that descriptor, else None."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream (a test runner's): it stays as it is
        return None
    return fd if fd in (1, 2) else None


def _retarget(consoles: Sequence[Console], terminal: dict[int, IO[str]]) -> Callable[[], None]:
    """Point each console that writes to descriptor 1 or 2 at the terminal's copy of that descriptor, and rich's
    global console (every progress bar) at the terminal's stderr (stdout may carry a table); returns the undo."""
    import rich

    old_global = rich.get_console()
    moved = [(c, c._file, _std_fd(c.file)) for c in consoles]  # _file None = "sys.stdout at print time"
    moved = [(c, f, fd) for c, f, fd in moved if fd is not None]
    for c, _, fd in moved:
        c.file = terminal[fd]
    if _std_fd(old_global.file) is not None:
        rich._console = Console(file=terminal[2])

    def restore() -> None:
        for c, f, _ in moved:
            c._file = f
        rich._console = old_global

    return restore
