"""results.db: every run, evaluation, sample, training step, rollout and revision (SQLAlchemy 2.x).

One database answers every question a researcher asks later, so everything a table prints is a
row here. Shape:

    runs ──< evaluations ──< samples
      ├──< train_steps
      │              └──< eval_claims (which process is generating which unfinished problem)
      ├──< rollouts        (GRPO/mining rollouts; zero-hit groups stay retrievable for LatentRevise)
      └──< revisions       (one LatentRevise revision of one failed rollout)

Default: SQLite with WAL at ./results.db; any SQLAlchemy URL works (`--db`; PostgreSQL through
psycopg, the `postgres` extra). Writes go through `session_scope`, one transaction each, so a
killed process loses at most the batch in flight. Identity: a run is keyed by (method, config
hash); an evaluation by (run, benchmark, eval hash).

Several processes may share one database from their first second: `open_db` creates the schema
under a lock and tolerates a lost race, every SQLite connection waits for a busy lock
(BUSY_TIMEOUT_S) instead of failing, and rows with an identity are made by `get_or_create`
(insert-then-select), so two processes asking for the same run get the same row; two processes
filling the same evaluation split its problems through `eval_claims` (harness.claims). Databases made
by older versions are migrated on open (missing columns are added, nullable). Failures to open or
write come out as one line (`StoreError`, `describe_db_error`), with any password masked.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (
    JSON,
    URL,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import NullPool

DEFAULT_DB = "sqlite:///results.db"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    """One method x model x preset x seed. `config` is the whole truth of the run."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("method", "config_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    method: Mapped[str] = mapped_column(String(64), index=True)  # "base", "sft", "grpo", "lr-sft", ...
    model: Mapped[str] = mapped_column(String(512))  # base model reference (hub id or directory)
    preset: Mapped[str] = mapped_column(String(64), default="custom")
    seed: Mapped[int] = mapped_column(Integer, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    code_version: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | finished | failed
    checkpoint: Mapped[str | None] = mapped_column(String(1024))  # trained model directory (HF format)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    wall_s: Mapped[float | None] = mapped_column(Float)
    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Evaluation(Base):
    """A run's model on one benchmark under one protocol (template, sampling, grader)."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("run_id", "benchmark", "eval_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    benchmark: Mapped[str] = mapped_column(String(64), index=True)
    template: Mapped[str] = mapped_column(String(64))
    sampling: Mapped[dict[str, Any]] = mapped_column(JSON)  # n, temperature, top_p, max_tokens, seed, ...
    grader: Mapped[dict[str, Any]] = mapped_column(JSON)  # grader name, version, settings
    eval_hash: Mapped[str] = mapped_column(String(64))  # hash of `identity` (harness.evaluate.identity_hash)
    # problem set, template text, sampling, engine (backend, dtype, context, versions, model revision), grader
    # policy: everything the hash covers, readable (NULL on rows written before identities were stored)
    identity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    regraded_from: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id"))  # harness.regrade
    n_problems: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    wall_s: Mapped[float | None] = mapped_column(Float)
    run: Mapped[Run] = relationship(back_populates="evaluations")


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("evaluation_id", "problem_id", "sample_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), index=True)
    problem_id: Mapped[str] = mapped_column(String(256))
    sample_index: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    completion: Mapped[str] = mapped_column(Text)
    gold: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str] = mapped_column(String(16))
    extracted: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool] = mapped_column(Boolean)
    grading_ms: Mapped[float] = mapped_column(Float)
    grading_error: Mapped[str | None] = mapped_column(String(256))


class EvalClaim(Base):
    """One process's claim on one unfinished problem of an evaluation (harness.claims): while it is
    held and its heartbeat is fresh, no other process generates that problem."""

    __tablename__ = "eval_claims"
    __table_args__ = (UniqueConstraint("evaluation_id", "problem_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), index=True)
    problem_id: Mapped[str] = mapped_column(String(256))
    owner: Mapped[str] = mapped_column(String(64), index=True)  # one token per evaluate call
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TrainStep(Base):
    """One optimizer step (or one GRPO iteration) of a method. Method-specific values go to `extra`."""

    __tablename__ = "train_steps"
    __table_args__ = (UniqueConstraint("run_id", "phase", "step"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    phase: Mapped[str] = mapped_column(String(32), default="train")  # e.g. "sft", "grpo", "pretrain"
    step: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    reward_mean: Mapped[float | None] = mapped_column(Float)
    zero_hit_frac: Mapped[float | None] = mapped_column(Float)
    all_correct_frac: Mapped[float | None] = mapped_column(Float)
    zero_hit_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # seconds per stage
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Rollout(Base):
    """A sampled training rollout with its reward; `source` tells where it came from."""

    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    problem_id: Mapped[str] = mapped_column(String(256), index=True)
    sample_index: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(32), default="policy")  # policy | revised | resample | hint
    prompt: Mapped[str] = mapped_column(Text)
    completion: Mapped[str] = mapped_column(Text)
    gold: Mapped[str] = mapped_column(Text)
    reward: Mapped[float] = mapped_column(Float)
    zero_hit_group: Mapped[bool] = mapped_column(Boolean, default=False)


class Revision(Base):
    """One LatentRevise revision of one failed rollout (see methods/latentrevise)."""

    __tablename__ = "revisions"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    problem_id: Mapped[str] = mapped_column(String(256), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    gold: Mapped[str] = mapped_column(Text)
    failed_rollout: Mapped[str] = mapped_column(Text)
    prefix_len: Mapped[int] = mapped_column(Integer)  # L
    fw_steps: Mapped[int] = mapped_column(Integer)  # K
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    gold_loss: Mapped[list[Any]] = mapped_column(JSON)  # per Frank-Wolfe step
    away_loss: Mapped[list[Any]] = mapped_column(JSON)
    top_tokens: Mapped[list[Any]] = mapped_column(JSON)  # per position: [[token, weight], ...]
    discrete_prefix: Mapped[str] = mapped_column(Text)  # p'
    continuations: Mapped[list[Any]] = mapped_column(JSON)  # [{"text", "mode": latent|discrete, "correct"}]
    rescued: Mapped[bool] = mapped_column(Boolean)
    leakage: Mapped[bool] = mapped_column(Boolean)
    wall_s: Mapped[float] = mapped_column(Float)
    peak_mem_mb: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


BUSY_TIMEOUT_S = 30.0  # a second process waits this long for the write lock instead of failing at once
SCHEMA_LOCK = 0x4C52_5245  # PostgreSQL advisory-lock key taken while creating or migrating the schema
SCHEMA_TRIES = 8
READ_OPTIONAL = frozenset({"eval_claims"})  # tables readers never use: an older database without them reads fine
RACE_MARKERS = ("already exists", "database is locked", "duplicate key", "duplicate column", "deadlock")


class StoreError(RuntimeError):
    """A database that cannot be opened or written, described in one line (what, where, what to do)."""


def normalize_url(db: str | os.PathLike | None) -> str:
    """A path or an SQLAlchemy URL -> an SQLAlchemy URL."""
    if db is None:
        return DEFAULT_DB
    db = str(db)
    return db if "://" in db else f"sqlite:///{db}"


def display_url(db: str | os.PathLike | URL | None) -> str:
    """The database as it may be printed: a path as given, a URL with its password masked."""
    if not isinstance(db, URL):
        raw = str(db if db is not None else DEFAULT_DB)
        if "://" not in raw:
            return raw
        try:
            db = make_url(raw)
        except ArgumentError:  # unparsable: hide everything between "//" and "@", where a password would be
            return re.sub(r"//[^/@]*@", "//***@", raw)
    path = sqlite_path(db)
    return str(path) if path is not None else db.render_as_string(hide_password=True)


def parse_url(db: str | os.PathLike | None) -> URL:
    """An SQLAlchemy URL whose dialect and driver are installed, else a StoreError saying what to do.

    `postgresql://` means psycopg2 to SQLAlchemy; when only psycopg (3, the `postgres` extra) is
    installed it is used instead, so the URL a user copies from psql works as is."""
    raw = normalize_url(db)
    try:
        url = make_url(raw)
    except ArgumentError:
        raise StoreError(f"database {display_url(raw)!r} is neither a file path nor a database URL "
                         "(e.g. results.db, sqlite:///results.db, postgresql+psycopg://user@host/db)") from None
    if url.drivername == "postgresql" and not _has_module("psycopg2") and _has_module("psycopg"):
        url = url.set(drivername="postgresql+psycopg")
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise StoreError(f"database {display_url(url)}: unknown dialect {url.drivername!r}; use a file path, "
                         "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        hint = f"install the driver module {e.name or url.get_driver_name()!r}"
        if url.get_backend_name() == "postgresql":
            hint += " (or `pip install -e '.[postgres]'` and a postgresql+psycopg:// URL)"
        raise StoreError(f"database {display_url(url)}: its driver {url.get_driver_name()!r} is not installed "
                         f"({e}); {hint}") from None
    return url


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def sqlite_path(url: URL) -> Path | None:
    """The file of an SQLite URL (None for other backends and for in-memory databases)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def describe_db_error(e: BaseException, db: str | os.PathLike | URL | None) -> str:
    """One line for a database error: what failed, on which database, what to do about it."""
    where = display_url(db)
    orig = getattr(e, "orig", None) or e
    msg = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    low = msg.lower()
    if "disk is full" in low or "no space left" in low or getattr(orig, "errno", None) == errno.ENOSPC:
        return (f"disk full while writing {where}: free space and rerun the same command "
                "(stored work is kept and resumed)")
    if "unable to open database file" in low:
        return (f"cannot open {where}: its directory does not exist or is not writable "
                "(pass --db with a writable path)")
    if "readonly database" in low or "read-only file system" in low:
        return f"{where} is read-only (file or directory permissions); pass --db with a writable path"
    if "database is locked" in low:
        return (f"{where} stayed locked by another process for more than {BUSY_TIMEOUT_S:.0f} s; "
                "rerun when it is done")
    if "connection" in low and ("failed" in low or "refused" in low):
        return f"cannot connect to {where}: {msg} (is the server running, is the URL right?)"
    if "not a database" in low or "malformed" in low:
        return f"{where} is not a usable SQLite database ({msg}); pass --db with a results database"
    return f"database error on {where}: {msg}"


def _engine(url: URL, readonly: bool) -> Engine:
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if readonly:  # sqlite3 opened with mode=ro: the file must exist and is never written
            uri = f"{path.resolve().as_uri()}?mode=ro"
            creator = lambda: sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            engine = create_engine("sqlite://", creator=creator, poolclass=NullPool)
        else:
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if readonly and url.get_backend_name() == "postgresql":  # every transaction of the session reads only
        return create_engine(url, poolclass=NullPool, connect_args={"options": "-c default_transaction_read_only=on"})
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """Per connection: the busy timeout (also for readers), foreign keys; WAL is set once in open_db."""
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def open_db(db: str | os.PathLike | None = None, *, readonly: bool = False) -> sessionmaker[Session]:
    """Open the database (creating or migrating its schema unless `readonly`); a session factory.

    Safe for processes that start at the same moment: the schema is created under a lock (SQLite:
    BEGIN IMMEDIATE, PostgreSQL: an advisory lock) with create_all(checkfirst) retried on a lost
    race, and the WAL switch tolerates a locked database. Columns that the ORM has and an older
    database lacks are added (nullable). `readonly` creates nothing: a missing SQLite file, or a
    database that needs a migration, is a StoreError."""
    url = parse_url(db)
    path = sqlite_path(url)
    if path is not None and path.is_dir():
        raise StoreError(f"{path} is a directory; pass --db with a database file path")
    if readonly and path is not None and not path.is_file():
        raise StoreError(f"no database at {path} (check --db; reading commands never create one)")
    engine = _engine(url, readonly)
    try:
        if readonly:
            _check_schema(engine, url)
        else:
            if path is not None:
                _use_wal(engine)
            _ensure_schema(engine)
    except DBAPIError as e:
        engine.dispose()
        raise StoreError(describe_db_error(e, url)) from e
    return sessionmaker(engine, expire_on_commit=False)


def _use_wal(engine: Engine) -> None:
    """WAL lets readers and one writer work at once; it persists in the file, so it is set once."""
    for attempt in range(SCHEMA_TRIES):
        try:
            with engine.connect() as conn:
                if str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower() != "wal":
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            return
        except OperationalError as e:
            if "locked" not in str(e.orig):
                raise
            time.sleep(0.05 * (attempt + 1))
    # still locked: another process holds the file (and is switching it); WAL is an optimization only


def _missing_schema(conn) -> list[str]:
    """ORM tables and columns that the database lacks: "table" or "table.column"."""
    insp = inspect(conn)
    have_tables = set(insp.get_table_names())
    missing = []
    for table in Base.metadata.sorted_tables:
        if table.name not in have_tables:
            missing.append(table.name)
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
    return missing


def _ensure_schema(engine: Engine) -> None:
    """create_all + additive migration, under a lock, retried when a second process won a race."""
    with engine.connect() as conn:
        if not _missing_schema(conn):
            return  # the common case (an existing database): no lock taken
    for attempt in range(SCHEMA_TRIES):
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits (busy timeout) for the other writer
                elif engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
                Base.metadata.create_all(conn, checkfirst=True)
                _add_missing_columns(conn)
            return
        except DBAPIError as e:
            if attempt == SCHEMA_TRIES - 1 or not any(m in str(e.orig).lower() for m in RACE_MARKERS):
                raise
            time.sleep(0.05 * (attempt + 1))


def _add_missing_columns(conn) -> None:
    """ALTER TABLE ... ADD COLUMN for every ORM column an older database lacks (nullable, no default)."""
    preparer = conn.dialect.identifier_preparer
    for name in _missing_schema(conn):
        if "." not in name:
            continue  # whole tables were just created by create_all
        table_name, column_name = name.split(".", 1)
        column = Base.metadata.tables[table_name].columns[column_name]
        conn.exec_driver_sql(f"ALTER TABLE {preparer.quote(table_name)} ADD COLUMN {preparer.quote(column_name)} "
                             f"{column.type.compile(dialect=conn.dialect)}")


def _check_schema(engine: Engine, url: URL) -> None:
    with engine.connect() as conn:
        missing = [m for m in _missing_schema(conn) if m.split(".")[0] not in READ_OPTIONAL]
    if set(missing) >= {t.name for t in Base.metadata.sorted_tables} - READ_OPTIONAL:
        raise StoreError(f"{display_url(url)} has no results tables (check --db)")
    if missing:
        raise StoreError(f"{display_url(url)} was made by an older version (it lacks {', '.join(missing[:4])}); "
                         "run any command that writes to it (eval, train, --table) once to add them")


def engine_of(factory: sessionmaker[Session]) -> Engine:
    return factory.kw["bind"]


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and tuples -> plain JSON values (sorted keys make hashes stable)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(obj: Any) -> str:
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def code_version() -> str:
    """git commit of the harness (with '+dirty' when the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def get_or_create(session: Session, model: type[Base], unique: dict[str, Any],
                  defaults: dict[str, Any] | None = None) -> tuple[Any, bool]:
    """The row of `model` with these `unique` values, inserted if missing: (row, created).

    Insert-then-select: the insert is `INSERT ... ON CONFLICT DO NOTHING` (SQLite, PostgreSQL;
    elsewhere a savepoint that swallows the IntegrityError), so when two processes ask at once one
    inserts, the other waits for its commit and selects the same row; neither fails. `unique` must
    be the columns of one of the model's unique constraints."""
    query = select(model).filter_by(**unique)
    row = session.scalars(query).first()
    if row is not None:  # the common case: no write, no lock
        return row, False
    created = insert_ignoring_conflicts(session, model, [{**(defaults or {}), **unique}]) == 1
    return session.scalars(query.execution_options(populate_existing=True)).one(), created


INSERT_CHUNK_VALUES = 900  # bound values per INSERT: under SQLite's old default limit of 999


def insert_ignoring_conflicts(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> int:
    """Insert `rows` of `model`, skipping each that would violate a unique constraint; how many went in.

    `INSERT ... ON CONFLICT DO NOTHING` on SQLite and PostgreSQL (atomic against a second process
    inserting the same keys at once); elsewhere one savepoint per row swallows the IntegrityError."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        inserted = 0
        for row in rows:
            try:
                with session.begin_nested():
                    session.add(model(**row))
                inserted += 1
            except IntegrityError:
                pass
        return inserted
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    step = max(1, INSERT_CHUNK_VALUES // len(rows[0]))
    return sum(session.execute(insert(model).values(rows[i:i + step]).on_conflict_do_nothing()).rowcount
               for i in range(0, len(rows), step))


def run_hash(method: str, model: str, preset: str, seed: int, config: Any) -> str:
    """The config hash of a run: every argument that changes it (seed and preset too, also when a
    caller passes them beside a config that lacks them)."""
    return config_hash({"method": method, "model": model, "preset": preset, "seed": seed,
                        "config": to_jsonable(config)})


def get_or_create_run(factory: sessionmaker[Session], *, method: str, model: str, preset: str, seed: int,
                      config: Any, fresh: bool = False) -> tuple[Run, bool]:
    """The run with this (method, config hash), created if missing. Returns (run, reused_finished).

    A finished run is reused unless `fresh`; a failed or interrupted one is restarted in place
    (its finished evaluations and steps stay; resumable code skips them). Two processes asking
    for the same run at once get the same row (`get_or_create`)."""
    cfg = to_jsonable(config)
    h = run_hash(method, model, preset, seed, cfg)
    with session_scope(factory) as s:
        if fresh:
            old = s.scalars(select(Run).where(Run.method == method, Run.config_hash == h)).first()
            if old is not None:
                _delete_run(s, old)
        run, created = get_or_create(s, Run, {"method": method, "config_hash": h},
                                     {"model": model, "preset": preset, "seed": seed, "config": cfg})
        if not created and run.status == "finished":
            return run, True
        run.status, run.error, run.code_version = "running", None, code_version()
        run.started_at = utcnow()
        s.flush()
        return run, False


def _delete_run(s: Session, run: Run) -> None:
    eval_ids = [e.id for e in run.evaluations]
    if eval_ids:
        s.execute(delete(Sample).where(Sample.evaluation_id.in_(eval_ids)))
        s.execute(delete(EvalClaim).where(EvalClaim.evaluation_id.in_(eval_ids)))
    for table in (TrainStep, Rollout, Revision):
        s.execute(delete(table).where(table.run_id == run.id))
    s.delete(run)
    s.flush()


def finish_run(factory: sessionmaker[Session], run_id: int, *, checkpoint: str | None = None,
               status: str = "finished", error: str | None = None) -> None:
    """Close this invocation of the run. `wall_s` adds this invocation's time to the earlier ones
    (a run resumed after a failure counts both; a process killed with SIGKILL never gets here, so
    its time is not counted: it left no end time)."""
    with session_scope(factory) as s:
        run = s.get(Run, run_id)
        run.status, run.error = status, error
        if checkpoint is not None:
            run.checkpoint = checkpoint
        run.finished_at = utcnow()
        run.wall_s = (run.wall_s or 0.0) + (run.finished_at - run.started_at).total_seconds()


def fail_run(factory: sessionmaker[Session], run_id: int, error: BaseException) -> None:
    """Mark the run failed with `error`, if the database lets us: a database that is full or gone
    must not turn one error into two (the caller re-raises the original)."""
    try:
        finish_run(factory, run_id, status="failed", error=f"{type(error).__name__}: {error}"[:2000])
    except (DBAPIError, StoreError, OSError):
        pass
