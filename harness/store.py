"""results.db: every run, evaluation, sample, training step, rollout and revision (SQLAlchemy 2.x).

One database answers every question a researcher asks later, so everything a table prints is a
row here. Shape:

    runs ──< evaluations ──< samples
      ├──< train_steps
      ├──< rollouts        (GRPO/mining rollouts; zero-hit groups stay retrievable for LatentRevise)
      └──< revisions       (one LatentRevise revision of one failed rollout)

Default: SQLite with WAL at ./results.db; any SQLAlchemy URL works (`--db`). Writes go through
`session_scope`, one transaction each, so a killed process loses at most the batch in flight.
Identity: a run is keyed by (method, config hash); an evaluation by (run, benchmark, eval hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (
    JSON,
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
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

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
    eval_hash: Mapped[str] = mapped_column(String(64))
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


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def normalize_url(db: str | os.PathLike | None) -> str:
    """A path or an SQLAlchemy URL -> an SQLAlchemy URL."""
    if db is None:
        return DEFAULT_DB
    db = str(db)
    return db if "://" in db else f"sqlite:///{db}"


def open_db(db: str | os.PathLike | None = None, *, readonly: bool = False) -> sessionmaker[Session]:
    """Create (if needed) and open the database; returns a session factory."""
    url = normalize_url(db)
    if url.startswith("sqlite") and readonly:
        path = url.split("sqlite:///", 1)[1]
        engine = create_engine(f"sqlite:///file:{Path(path).resolve()}?mode=ro&uri=true")
    else:
        engine = create_engine(url)
        if url.startswith("sqlite"):
            event.listen(engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


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


def get_or_create_run(factory: sessionmaker[Session], *, method: str, model: str, preset: str, seed: int,
                      config: Any, fresh: bool = False) -> tuple[Run, bool]:
    """The run with this (method, config hash), created if missing. Returns (run, reused_finished).

    A finished run is reused unless `fresh`; a failed or interrupted one is restarted in place
    (its finished evaluations and steps stay; resumable code skips them)."""
    cfg = to_jsonable(config)
    h = config_hash({"method": method, "model": model, "config": cfg})
    with session_scope(factory) as s:
        run = s.scalars(select(Run).where(Run.method == method, Run.config_hash == h)).first()
        if run is not None and run.status == "finished" and not fresh:
            return run, True
        if run is not None and fresh:
            _delete_run(s, run)
            run = None
        if run is None:
            run = Run(method=method, model=model, preset=preset, seed=seed, config=cfg, config_hash=h)
            s.add(run)
        run.status, run.error, run.code_version = "running", None, code_version()
        run.started_at = utcnow()
        s.flush()
        return run, False


def _delete_run(s: Session, run: Run) -> None:
    eval_ids = [e.id for e in run.evaluations]
    if eval_ids:
        s.execute(delete(Sample).where(Sample.evaluation_id.in_(eval_ids)))
    for table in (TrainStep, Rollout, Revision):
        s.execute(delete(table).where(table.run_id == run.id))
    s.delete(run)
    s.flush()


def finish_run(factory: sessionmaker[Session], run_id: int, *, checkpoint: str | None = None,
               status: str = "finished", error: str | None = None) -> None:
    with session_scope(factory) as s:
        run = s.get(Run, run_id)
        run.status, run.error = status, error
        if checkpoint is not None:
            run.checkpoint = checkpoint
        run.finished_at = utcnow()
        run.wall_s = (run.finished_at - run.started_at).total_seconds()
