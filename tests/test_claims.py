"""Claims on an evaluation's unfinished problems (harness.claims, issue 14): two identical
evaluations started at once generate each sample once, and split the work batch by batch.

- two processes, one barrier, one database (SQLite, and PostgreSQL where a server can be started):
  every problem reaches an engine exactly once, the rows are complete and unique, both processes
  return the same evaluation and metrics; with the default single call the waiting process never
  builds an engine, with `batch_size` both processes generate;
- claims are disjoint; a holder whose process is gone (same host) is taken over at once, one that
  is silent past the lease (any host) after it, a live one never; a failed evaluation releases its
  claims; a database made before `eval_claims` existed still opens for reading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pgserver
import pytest
from conftest import ROOT
from sqlalchemy import func, select, text

from harness.claims import Claimant, ClaimPolicy
from harness.evaluate import evaluate
from harness.store import EvalClaim, Evaluation, Sample, get_or_create_run, open_db, session_scope, utcnow

N_PROBLEMS, N_SAMPLES = 16, 2
COMMON = textwrap.dedent("""
    import json, sys, time
    from benchmarks import Problem
    from harness.generation import Completion
    from harness.protocol import EvalProtocol

    PROTOCOL = EvalProtocol(template="tiny-boxed", temperature=1.0, top_p=1.0, max_tokens=8, n_default=2,
                            pass_k=(1,), seed=0)
    PROBLEMS = [Problem(id=f"p{i}", problem=f"What is {i} plus zero ?", answer=str(i % 3), meta={})
                for i in range(16)]


    class Engine:
        '''Answers \\\\boxed{j} for sample j; records every prompt it is sent; each call takes `delay` s.'''

        def __init__(self, delay=0.0):
            self.delay, self.prompts, self.calls = delay, [], 0

        def identity(self):
            return {"backend": "stub"}

        def generate(self, prompts, sampling, seeds=None, progress=False):
            self.calls += 1
            self.prompts += prompts
            time.sleep(self.delay)
            return [[Completion("\\\\boxed{%d}" % j, [1], "stop", 3) for j in range(sampling.n)] for _ in prompts]

        def close(self):
            pass


    class Grader:
        def settings(self):
            return {"name": "box"}

        def grade(self, pairs):
            from benchmarks import last_boxed
            from harness.grading import Verdict

            return [Verdict(last_boxed(c), last_boxed(c) == g, 0.1) for c, g in pairs]
""")
WORKER = COMMON + textwrap.dedent("""
    from pathlib import Path
    from harness.evaluate import evaluate
    from harness.store import get_or_create_run, open_db

    sync, me, url, batch = Path(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    factory = open_db(url)
    run, _ = get_or_create_run(factory, method="base", model="m", preset="p", seed=0, config={})
    engines = []

    def build():
        engines.append(Engine(delay=0.4))
        return engines[-1]

    (sync / me).touch()  # barrier: both processes start evaluating within a millisecond
    while len(list(sync.iterdir())) < 2:
        time.sleep(0.0002)
    out = evaluate(factory, run.id, "math500", PROBLEMS, PROTOCOL, build, Grader(), batch_size=batch,
                   progress=False, engine={"backend": "stub"})
    print(json.dumps({"evaluation_id": out["evaluation_id"], "accuracy": out["metrics"]["pass@1"],
                      "built": len(engines), "prompts": [p for e in engines for p in e.prompts]}))
""")
namespace: dict = {}
exec(compile(COMMON, "claims-common", "exec"), namespace)  # the same engine and grader in-process
Engine, Grader, PROBLEMS, PROTOCOL = (namespace[k] for k in ("Engine", "Grader", "PROBLEMS", "PROTOCOL"))


def two_at_once(tmp_path, url: str, batch: int | None) -> list[dict]:
    script, sync = tmp_path / "worker.py", tmp_path / "sync"
    sync.mkdir(parents=True)
    script.write_text(WORKER)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, str(script), str(sync), me, url, json.dumps(batch)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in "ab"]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def check_once(outs: list[dict], url: str, batch: int | None) -> None:
    sent = [p for o in outs for p in o["prompts"]]
    assert len(sent) == len(set(sent)) == N_PROBLEMS  # every problem reached an engine exactly once
    assert outs[0]["evaluation_id"] == outs[1]["evaluation_id"] and outs[0]["accuracy"] == outs[1]["accuracy"]
    factory = open_db(url, readonly=True)
    with session_scope(factory) as s:
        rows = s.execute(select(Sample.problem_id, Sample.sample_index)).all()
        assert s.scalar(select(func.count()).select_from(EvalClaim)) == 0  # both released theirs
        assert [e.status for e in s.scalars(select(Evaluation))] == ["finished"]
    assert len(rows) == len(set(rows)) == N_PROBLEMS * N_SAMPLES
    built = [o["built"] for o in outs]
    if batch is None:  # the first claims everything in one call; the other waits and never starts an engine
        assert sorted(built) == [0, 1]
    else:  # they take turns batch by batch
        assert built == [1, 1] and all(o["prompts"] for o in outs), [len(o["prompts"]) for o in outs]


@pytest.mark.parametrize("batch", [None, 4], ids=["one-call", "batch-4"])
def test_two_identical_evaluations_at_once_generate_each_sample_once(tmp_path, batch):
    for trial in range(3):
        url = f"sqlite:///{tmp_path / f'r{trial}.db'}"
        check_once(two_at_once(tmp_path / f"t{trial}", url, batch), url, batch)


def test_two_identical_evaluations_at_once_postgres(pg_admin, tmp_path):
    url = pgserver.create_database(pg_admin, "claims_race")
    check_once(two_at_once(tmp_path, url, 4), url, 4)


# --- claims in one process ------------------------------------------------------------------------

@pytest.fixture
def evaluation(db_url):
    factory = open_db(db_url)
    run, _ = get_or_create_run(factory, method="base", model="m", preset="p", seed=0, config={})
    with session_scope(factory) as s:
        ev = Evaluation(run_id=run.id, benchmark="b", template="t", sampling={}, grader={}, eval_hash="h",
                        n_problems=10)
        s.add(ev)
        s.flush()
        return factory, ev.id


IDS = [f"p{i}" for i in range(10)]


def _plant(factory, eval_id, problem_ids, *, host, pid, age_s=0.0):
    with session_scope(factory) as s:
        s.add_all([EvalClaim(evaluation_id=eval_id, problem_id=p, owner=f"other-{host}-{pid}", host=host, pid=pid,
                             heartbeat_at=utcnow() - timedelta(seconds=age_s)) for p in problem_ids])


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claims_are_disjoint_and_limited(evaluation):
    factory, eid = evaluation
    a, b = Claimant(factory), Claimant(factory)
    assert a.claim(eid, IDS, limit=3) == {"p0", "p1", "p2"}
    assert b.claim(eid, IDS) == set(IDS[3:])
    assert a.claim(eid, IDS, limit=5) == {"p0", "p1", "p2"}  # nothing is free; a's own count toward the limit
    assert a.others(eid, IDS) == {p: f"{b.host} pid {b.pid}" for p in IDS[3:]}
    b.release()
    assert a.claim(eid, IDS, limit=5) == {"p0", "p1", "p2", "p3", "p4"}


def test_a_gone_holder_is_taken_over_and_a_live_one_is_not(evaluation):
    factory, eid = evaluation
    me = Claimant(factory, ClaimPolicy(lease_s=60, heartbeat_s=1))
    _plant(factory, eid, ["p0"], host=me.host, pid=dead_pid())  # killed -9 a moment ago: fresh heartbeat
    _plant(factory, eid, ["p1"], host=me.host, pid=os.getppid())  # alive on this host
    _plant(factory, eid, ["p2"], host="elsewhere", pid=1)  # another host, fresh heartbeat
    _plant(factory, eid, ["p3"], host="elsewhere", pid=2, age_s=61)  # another host, silent past the lease
    assert me.claim(eid, IDS[:4]) == {"p0", "p3"}
    assert set(me.others(eid, IDS[:4])) == {"p1", "p2"}


def test_heartbeat_keeps_claims_fresh(evaluation):
    factory, eid = evaluation
    holder = Claimant(factory, ClaimPolicy(lease_s=0.6, heartbeat_s=0.1))
    other = Claimant(factory, ClaimPolicy(lease_s=0.6, heartbeat_s=0.1))
    other.host = "elsewhere"  # pids of another host are never probed: only the lease can free them
    with holder.alive():
        holder.claim(eid, IDS[:2])
        time.sleep(1.0)  # longer than the lease: only the heartbeat keeps the claims
        assert other.claim(eid, IDS[:2]) == set()
    time.sleep(1.0)  # holder silent now
    assert other.claim(eid, IDS[:2]) == {"p0", "p1"}


def test_an_evaluation_waits_for_a_live_holder_then_takes_over(db_url):
    """A holder on another host that goes silent: the evaluation waits out the lease, then does it."""
    factory = open_db(db_url)
    run, _ = get_or_create_run(factory, method="base", model="m", preset="p", seed=0, config={})
    first = Engine()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(factory, run.id, "math500", PROBLEMS, PROTOCOL, _failing(first), Grader(), progress=False)
    with session_scope(factory) as s:  # the failed evaluation released its claims
        assert s.scalar(select(func.count()).select_from(EvalClaim)) == 0
        eid = s.scalar(select(Evaluation.id))
    _plant(factory, eid, [p.id for p in PROBLEMS[:5]], host="elsewhere", pid=1)
    engine, t0 = Engine(), time.perf_counter()
    out = evaluate(factory, run.id, "math500", PROBLEMS, PROTOCOL, engine, Grader(), progress=False,
                   claims=ClaimPolicy(lease_s=1.5, heartbeat_s=0.5, poll_s=0.1))
    waited = time.perf_counter() - t0
    m = out["metrics"]
    assert out["evaluation_id"] == eid and (m["n_problems"], m["n"]) == (N_PROBLEMS, N_SAMPLES)
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).select_from(Sample)) == N_PROBLEMS * N_SAMPLES
    assert engine.calls == 2 and waited >= 1.4  # the free 11 first, the 5 held ones after the lease
    assert sorted(engine.prompts) == sorted(set(engine.prompts)) and len(engine.prompts) == N_PROBLEMS


def _failing(engine):
    def generate(prompts, sampling, seeds=None, progress=False):
        raise RuntimeError("boom")

    engine.generate = generate
    return engine


def test_a_database_without_the_claims_table_opens_for_reading(db_url):
    factory = open_db(db_url)
    get_or_create_run(factory, method="base", model="m", preset="p", seed=0, config={})
    with factory.kw["bind"].begin() as conn:
        conn.execute(text("DROP TABLE eval_claims"))
    with session_scope(open_db(db_url, readonly=True)) as s:
        assert s.scalar(text("SELECT count(*) FROM runs")) == 1
    open_db(db_url)  # a writer adds it back
    with session_scope(open_db(db_url, readonly=True)) as s:
        assert s.scalar(text("SELECT count(*) FROM eval_claims")) == 0
