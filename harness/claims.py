"""Claims on an evaluation's unfinished problems, so processes filling one evaluation split the work.

    claimant = Claimant(factory)                       # one per evaluate call: owner token, host, pid
    with claimant.alive():                             # a heartbeat thread keeps its claims fresh
        mine = claimant.claim(eval_id, problem_ids, limit=64)   # the ids this process now generates
    claimant.release()                                 # at the end, also after a failure

Two identical evaluations started at once (two `--table` commands sharing a base run, two shells)
used to generate every sample twice; the unique constraint on samples kept the rows right but the
engine time was spent twice. Now a process generates only the problems it holds a claim on
(`eval_claims`, one row per evaluation x problem, unique), and waits for the problems others hold.

A claim is taken over when its holder is gone: its heartbeat is older than `lease_s` (any host),
or its process no longer exists on this host (a `kill -9` is noticed at once, so a rerun does not
wait out the lease). Limits: the lease is judged on each process's own clock, so hosts sharing a
PostgreSQL server need clocks within a few seconds of each other; two containers with the same
hostname and separate pid namespaces may take each other's claims, which costs double work again,
never a duplicate row (the samples' unique constraint still holds).

Claims are taken with INSERT ... ON CONFLICT DO NOTHING and taken over with a compare-and-set
UPDATE on (owner, heartbeat), so two processes claiming at once never both win a problem.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterator, Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from .store import EvalClaim, insert_ignoring_conflicts, session_scope, utcnow

log = logging.getLogger(__name__)
ID_CHUNK = 500  # problem ids per IN (...) list: well under every backend's bound-parameter limit


@dataclass(frozen=True)
class ClaimPolicy:
    """How long a silent claim is honoured, and how often holders and waiters check in."""

    lease_s: float = field(default=120.0, metadata={"help": "a claim whose heartbeat is older is taken over"})
    heartbeat_s: float = field(default=10.0, metadata={"help": "how often a holder refreshes its claims"})
    poll_s: float = field(default=1.0, metadata={"help": "how often a waiting process looks again"})

    def __post_init__(self):
        if not 0 < self.heartbeat_s < self.lease_s:
            raise ValueError(f"ClaimPolicy: need 0 < heartbeat_s ({self.heartbeat_s}) < lease_s ({self.lease_s})")
        if self.poll_s <= 0:
            raise ValueError(f"ClaimPolicy: poll_s must be > 0, got {self.poll_s}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


class Claimant:
    """One evaluate call as a claim holder (owner token, host, pid) on one database."""

    def __init__(self, factory: sessionmaker[Session], policy: ClaimPolicy | None = None):
        self.factory, self.policy = factory, policy or ClaimPolicy()
        self.owner, self.host, self.pid = uuid.uuid4().hex, socket.gethostname(), os.getpid()

    def is_stale(self, claim: EvalClaim, now: datetime) -> bool:
        """The holder is gone: silent past the lease, or a process of this host that no longer exists."""
        if claim.heartbeat_at < now - timedelta(seconds=self.policy.lease_s):
            return True
        return claim.host == self.host and claim.pid != self.pid and not pid_alive(claim.pid)

    def claim(self, eval_id: int, problem_ids: Sequence[str], limit: int | None = None) -> set[str]:
        """Claim up to `limit` (None: all) of `problem_ids` that nobody live holds; the ids held now.

        Claims this owner already has come first and count toward the limit; free problems next,
        then problems whose holder is gone, in the order given."""
        with session_scope(self.factory) as s:
            held = self._claims(s, eval_id, problem_ids)
            now = utcnow()
            mine = [p for p in problem_ids if p in held and held[p].owner == self.owner]
            free = [p for p in problem_ids if p not in held]
            stale = [p for p in problem_ids
                     if p in held and held[p].owner != self.owner and self.is_stale(held[p], now)]
            room = len(problem_ids) if limit is None else max(0, limit - len(mine))
            wanted = (free + stale)[:room]
            insert_ignoring_conflicts(s, EvalClaim, [
                {"evaluation_id": eval_id, "problem_id": p, "owner": self.owner, "host": self.host, "pid": self.pid,
                 "heartbeat_at": now} for p in wanted if p not in held])
            for p in wanted:
                if p in held:
                    self._take_over(s, held[p], now)
            got = self._claims(s, eval_id, problem_ids, owner=self.owner)
        if stale and set(stale) & set(got):
            log.info("evaluation %d: took over %d problems whose holder is gone", eval_id, len(set(stale) & set(got)))
        return set(got)

    def others(self, eval_id: int, problem_ids: Sequence[str]) -> dict[str, str]:
        """{problem id: 'host pid'} for the problems another live process holds."""
        with session_scope(self.factory) as s:
            held = self._claims(s, eval_id, problem_ids)
        now = utcnow()
        return {p: f"{c.host} pid {c.pid}" for p, c in held.items()
                if c.owner != self.owner and not self.is_stale(c, now)}

    def release(self) -> None:
        """Drop every claim of this owner (done or not): waiting processes take the rest at once."""
        try:
            with session_scope(self.factory) as s:
                s.execute(delete(EvalClaim).where(EvalClaim.owner == self.owner))
        except DBAPIError as e:  # a database that is gone must not hide the caller's error; the lease ends them
            log.warning("could not release evaluation claims: %s", e)

    @contextmanager
    def alive(self) -> Iterator[None]:
        """A heartbeat thread refreshes this owner's claims every heartbeat_s until the block ends."""
        stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(stop,), name="claim-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.policy.heartbeat_s):
            try:
                with session_scope(self.factory) as s:
                    s.execute(update(EvalClaim).where(EvalClaim.owner == self.owner).values(heartbeat_at=utcnow()))
            except DBAPIError as e:  # a missed beat or two is harmless; the lease is many beats long
                log.warning("claim heartbeat failed: %s", e)

    def _claims(self, s: Session, eval_id: int, problem_ids: Sequence[str], owner: str | None = None):
        out: dict[str, EvalClaim] = {}
        ids = list(problem_ids)
        for i in range(0, len(ids), ID_CHUNK):
            q = select(EvalClaim).where(EvalClaim.evaluation_id == eval_id,
                                        EvalClaim.problem_id.in_(ids[i:i + ID_CHUNK]))
            if owner is not None:
                q = q.where(EvalClaim.owner == owner)
            out.update({c.problem_id: c for c in s.scalars(q.execution_options(populate_existing=True))})
        return out

    def _take_over(self, s: Session, claim: EvalClaim, now: datetime) -> None:
        """Compare-and-set: only if the claim still has the holder and heartbeat that were judged stale."""
        s.execute(update(EvalClaim)
                  .where(EvalClaim.id == claim.id, EvalClaim.owner == claim.owner,
                         EvalClaim.heartbeat_at == claim.heartbeat_at)
                  .values(owner=self.owner, host=self.host, pid=self.pid, heartbeat_at=now))
