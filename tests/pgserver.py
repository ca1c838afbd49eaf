"""A throwaway PostgreSQL server for tests and bench/concurrency.py: initdb + pg_ctl, loopback only.

    with temp_server() as admin_url:          # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
        url = create_database(admin_url, "t1")

The server lives in a fresh temp directory, listens on 127.0.0.1 on a free port, trusts local
connections (any password is accepted, which lets tests check that a password is never printed),
runs without fsync (a test server), and is stopped (immediate mode) and removed on exit.
PostgreSQL refuses to run as root, so as root it runs as the unprivileged user `nobody`.
`unavailable()` says why a server cannot be started here (no initdb/pg_ctl, no psycopg).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

RUN_AS = "nobody"


def _binary(name: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian keeps them off PATH
    return shutil.which(name) or (candidates[-1] if candidates else None)


def unavailable() -> str | None:
    """None when a server can be started, else the reason (for pytest.skip)."""
    missing = [b for b in ("initdb", "pg_ctl") if _binary(b) is None]
    if missing:
        return f"PostgreSQL binaries {', '.join(missing)} not found (apt-get install postgresql; .ci/run does)"
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as an unprivileged user"
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def temp_server(max_connections: int = 60) -> Iterator[str]:
    """Start a server; yields the admin URL (database `postgres`, user `postgres`)."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    root = Path(tempfile.mkdtemp(prefix="latentrevise-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, RUN_AS)
    data, port = root / "data", _free_port()
    run = lambda cmd: subprocess.run(_as_server_user(cmd), check=True, capture_output=True, text=True, timeout=120)
    try:
        run([_binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                f"-c full_page_writes=off -c max_connections={max_connections}")
        run([_binary("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start"])
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(_as_server_user([_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def create_database(admin_url: str, name: str) -> str:
    """A new empty database on the server (dropped first if it exists); its URL."""
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
