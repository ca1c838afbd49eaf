"""Reliability and security of results.db and the reading commands (issue 14).

- `query` cannot write: VACUUM INTO / ATTACH (SQLite), COMMIT; DELETE / ROLLBACK; UPDATE
  (PostgreSQL) are refused, no file appears, the row counts do not change;
- processes that start at the same moment share one database: 20 trials of two processes, on a
  fresh and on an existing database, give one run and one evaluation and no error;
- an older database gains the ORM's new columns on open; `runs.wall_s` adds up resumed invocations;
- stored text prints as typed (`[/INST]`, `[red]12[/red]`), passwords never print, reading
  commands never create a database; a benchmark file that is not UTF-8 names file, line and offset.

PostgreSQL tests start their own server (tests/pgserver.py) and are skipped, with the reason,
where initdb/pg_ctl or psycopg are missing (.ci/run installs both).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from datetime import timedelta

import pgserver
import pytest
from conftest import ROOT
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from benchmarks.registry import BenchmarkDataError, load_jsonl
from harness.readonly import ReadOnlyError, _server_query, _sqlite_query, readonly_query, statements
from harness.store import (
    Evaluation,
    Run,
    Sample,
    StoreError,
    display_url,
    finish_run,
    get_or_create_run,
    open_db,
    parse_url,
    session_scope,
    utcnow,
)

runner = CliRunner()
ENV = {"COLUMNS": "240"}
TABLES = ("runs", "evaluations", "samples")


def _app():
    from repro.cli import app

    return app


def filled_db(url: str) -> str:
    """One finished run, one evaluation, two samples whose text looks like rich markup."""
    factory = open_db(url)
    run, _ = get_or_create_run(factory, method="base", model="m", preset="p", seed=0, config={"x": 1})
    with session_scope(factory) as s:
        ev = Evaluation(run_id=run.id, benchmark="math500", template="qwen-boxed", sampling={"n": 2}, grader={},
                        eval_hash="h", n_problems=1, status="finished", metrics={"avg@n": 0.5})
        s.add(ev)
        s.flush()
        for j, (completion, ok) in enumerate((("so [/INST] the answer is 12", True), ("[red]12[/red]", False))):
            s.add(Sample(evaluation_id=ev.id, problem_id="p0", sample_index=j, prompt="[INST] 6+6 [/INST]",
                         completion=completion, gold="12", prompt_tokens=3, completion_tokens=4, finish_reason="stop",
                         extracted="12" if ok else "[bold]7[/bold]", correct=ok, grading_ms=1.0))
    finish_run(factory, run.id)
    return url


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        out = {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in TABLES}
    engine.dispose()
    return out


# --- read-only SQL -------------------------------------------------------------------------------

def test_statement_splitting_knows_quotes_comments_and_dollar_quotes():
    assert len(statements("SELECT 1; DELETE FROM runs")) == 2
    assert len(statements("SELECT ';' AS a, \"x;y\" FROM t -- ; not a statement\n")) == 1
    assert len(statements("SELECT 'it''s; fine' /* ; */ ;  ")) == 1
    assert len(statements("SELECT $q$ ; $q$; COMMIT")) == 2
    assert statements("  ;; -- nothing\n") == []


@pytest.mark.parametrize("sql", [
    "VACUUM INTO '{out}'",
    "ATTACH '{out}' AS x",
    "SELECT 1; ATTACH '{out}' AS x",
    "/* hidden */ VACUUM INTO '{out}'",
    "PRAGMA user_version = 7",
    "PRAGMA journal_mode = DELETE",
    "DETACH main",
    "COMMIT",
    "DELETE FROM samples",
])
def test_sqlite_query_refuses_writes_and_creates_no_file(tmp_path, sql):
    url = filled_db(f"sqlite:///{tmp_path / 'r.db'}")
    out = tmp_path / "copy.db"
    before = counts(url)
    with pytest.raises(ReadOnlyError):
        readonly_query(url, sql.format(out=out))
    assert not out.exists() and counts(url) == before
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0


@pytest.mark.parametrize("sql", ["VACUUM INTO '{out}'", "ATTACH '{out}' AS x", "PRAGMA user_version = 7",
                                 "UPDATE runs SET status = 'x'", "CREATE TEMP TABLE t(x)", "BEGIN"])
def test_sqlite_connection_guard_holds_without_the_text_check(tmp_path, sql):
    """The authorizer and mode=ro alone refuse what the keyword check would have stopped first."""
    url = filled_db(f"sqlite:///{tmp_path / 'r.db'}")
    out, before = tmp_path / "copy.db", counts(url)
    with pytest.raises(ReadOnlyError):
        _sqlite_query(tmp_path / "r.db", sql.format(out=out), 10)
    assert not out.exists() and counts(url) == before


def test_sqlite_query_reads(tmp_path):
    url = filled_db(f"sqlite:///{tmp_path / 'r.db'}")
    res = readonly_query(url, "SELECT problem_id, completion FROM samples ORDER BY sample_index", max_rows=1)
    assert res.columns == ["problem_id", "completion"] and res.rows == [("p0", "so [/INST] the answer is 12")]
    assert res.truncated
    assert ("status",) in [r[1:2] for r in readonly_query(url, "PRAGMA table_info(runs)").rows]
    assert readonly_query(url, "WITH x AS (SELECT 2 AS v) SELECT v FROM x").rows == [(2,)]


@pytest.fixture
def pg_url(pg_admin, request):
    return pgserver.create_database(pg_admin, "t_" + request.node.name.split("[")[0][-40:].lower())


@pytest.mark.parametrize("sql", [
    "COMMIT; DELETE FROM samples",
    "ROLLBACK; UPDATE runs SET status = 'x'",
    "COMMIT; SET default_transaction_read_only = off; DELETE FROM samples",
    "BEGIN READ WRITE; DELETE FROM samples; COMMIT",
    "DELETE FROM samples",
    "WITH d AS (DELETE FROM samples RETURNING 1) SELECT COUNT(*) FROM d",
    "SELECT nextval(pg_get_serial_sequence('runs', 'id'))",
])
def test_postgres_query_cannot_write(pg_url, sql):
    filled_db(pg_url)
    before = counts(pg_url)
    with pytest.raises(ReadOnlyError):
        readonly_query(pg_url, sql)
    with pytest.raises(ReadOnlyError):  # the server's guards alone: read-only session, one command
        _server_query(parse_url(pg_url), sql, 10)
    assert counts(pg_url) == before == {"runs": 1, "evaluations": 1, "samples": 2}
    assert readonly_query(pg_url, "SELECT status FROM runs").rows == [("finished",)]


def test_docs_queries_run_on_postgres(pg_url):
    """docs/results-db.md's example queries run unchanged on PostgreSQL, with the SQLite numbers."""
    factory = open_db(pg_url)
    with session_scope(factory) as s:
        run = Run(method="lr-sft", model="tiny", preset="tiny", seed=0, status="finished", config_hash="h",
                  config={"method_config": {"train_prefix": "latent"}})
        s.add(run)
        s.flush()
        for pid, ok, k in (("p0", True, 4), ("p1", False, 4), ("p1", True, 4), ("p2", False, 8)):
            s.add(_revision(run.id, pid, ok, k))
        ev = Evaluation(run_id=run.id, benchmark="arith-easy", template="t", sampling={}, grader={}, eval_hash="e",
                        n_problems=2, status="finished")
        s.add(ev)
        s.flush()
        s.add_all([Sample(evaluation_id=ev.id, problem_id=f"q{i // 2}", sample_index=i % 2, prompt="p", completion="c",
                          gold="1", prompt_tokens=1, completion_tokens=1, finish_reason="stop", correct=i == 0,
                          grading_ms=0.0) for i in range(4)])
    doc = (ROOT / "docs" / "results-db.md").read_text()
    by_k, by_len, acc = (readonly_query(pg_url, q.split("```", 1)[0]) for q in doc.split("```sql")[1:])
    assert [(r[0], r[1], float(r[3])) for r in by_k.rows] == [(4, 3, pytest.approx(2 / 3)), (8, 1, 0.0)]
    assert [(r[1], r[2], int(r[3])) for r in by_len.rows] == [(8, 3, 2)]
    assert [(r[1], r[2], float(r[3])) for r in acc.rows] == [("latent", "arith-easy", 0.25)]


def _revision(run_id, pid, rescued, fw_steps):
    from harness.store import Revision

    return Revision(run_id=run_id, problem_id=pid, prompt="x", gold="1", failed_rollout="r", prefix_len=8,
                    fw_steps=fw_steps, config={}, gold_loss=[], away_loss=[], top_tokens=[], discrete_prefix="d",
                    continuations=[], rescued=rescued, leakage=False, wall_s=1.0)


# --- concurrency ---------------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from harness.store import Evaluation, engine_of, get_or_create, get_or_create_run, open_db, session_scope

    sync, me, urls = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    other = "b" if me == "a" else "a"
    out = []
    for t, url in enumerate(urls):
        (sync / f"{t}-{me}").touch()  # barrier: both processes start each trial within a millisecond
        while not (sync / f"{t}-{other}").exists():
            time.sleep(0.0002)
        try:
            factory = open_db(url)
            run, _ = get_or_create_run(factory, method="base", model="m", preset="p", seed=0, config={"c": 1})
            with session_scope(factory) as s:
                ev, _ = get_or_create(s, Evaluation, {"run_id": run.id, "benchmark": "b", "eval_hash": "h"},
                                      {"template": "t", "sampling": {}, "grader": {}, "n_problems": 1})
            out.append([run.id, ev.id])
            engine_of(factory).dispose()
        except Exception as e:
            out.append(f"{type(e).__name__}: {e}"[:300])
    print(json.dumps(out))
""")


def race(tmp_path, urls: list[str]) -> list[tuple]:
    """Two processes run the WORKER trials in lockstep; [(a's result, b's result), ...] per trial."""
    script, sync = tmp_path / "worker.py", tmp_path / "sync"
    script.write_text(WORKER)
    sync.mkdir()
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, str(script), str(sync), me, json.dumps(urls)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in "ab"]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout))
    return list(zip(*outs))


def check_race(results, urls):
    errors = [r for pair in results for r in pair if isinstance(r, str)]
    assert errors == [], errors[:3]
    assert all(a == b for a, b in results)  # both processes got the same run and the same evaluation
    for url in urls:
        assert counts(url) == {"runs": 1, "evaluations": 1, "samples": 0}


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
def test_two_processes_at_once_sqlite(tmp_path, existing):
    urls = [f"sqlite:///{tmp_path / f'r{t}.db'}" for t in range(20)]
    if existing:
        for url in urls:
            open_db(url)
    check_race(race(tmp_path, urls), urls)


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
def test_two_processes_at_once_postgres(pg_admin, tmp_path, existing):
    urls = [pgserver.create_database(pg_admin, f"race{t}") for t in range(20)]
    if existing:
        for url in urls:
            open_db(url)
    check_race(race(tmp_path, urls), urls)


# --- schema migration, wall time ------------------------------------------------------------------

def test_older_database_gains_new_columns(tmp_path):
    db = tmp_path / "old.db"
    filled_db(f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE samples DROP COLUMN grading_error")
        conn.execute("ALTER TABLE runs DROP COLUMN error")
    with pytest.raises(StoreError, match="older version.*runs.error"):
        open_db(db, readonly=True)  # a reading command does not migrate: it says what to do
    with sqlite3.connect(db) as conn:
        assert "error" not in [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
    factory = open_db(db)
    with sqlite3.connect(db) as conn:
        assert "error" in [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
        assert "grading_error" in [r[1] for r in conn.execute("PRAGMA table_info(samples)")]
    with session_scope(factory) as s:  # old rows read back, with NULL in the new column
        assert [(x.completion, x.grading_error) for x in s.query(Sample).order_by(Sample.id)][0] == (
            "so [/INST] the answer is 12", None)
    run, reused = get_or_create_run(factory, method="base", model="m", preset="p", seed=0, config={"x": 1})
    assert reused and run.id == 1


def test_wall_s_counts_every_invocation(db_url):
    factory = open_db(db_url)

    def invocation(seconds: float, status: str) -> Run:
        run, _ = get_or_create_run(factory, method="sft", model="m", preset="p", seed=0, config={})
        with session_scope(factory) as s:  # this invocation "started" `seconds` ago
            s.get(Run, run.id).started_at = utcnow() - timedelta(seconds=seconds)
        finish_run(factory, run.id, status=status)
        with session_scope(factory) as s:
            return s.get(Run, run.id)

    assert invocation(100, "failed").wall_s == pytest.approx(100, abs=1)
    resumed = invocation(30, "finished")
    assert resumed.status == "finished" and resumed.wall_s == pytest.approx(130, abs=1)


# --- what the terminal shows ----------------------------------------------------------------------

def test_stored_markup_prints_as_typed(tmp_path):
    db = tmp_path / "r.db"
    filled_db(f"sqlite:///{db}")
    res = runner.invoke(_app(), ["show", "1", "--db", str(db)], env=ENV)
    assert res.exit_code == 0, res.output
    assert "[/INST]" in res.output and "[red]12[/red]" in res.output and "[bold]7[/bold]" in res.output
    res = runner.invoke(_app(), ["query", "SELECT completion FROM samples ORDER BY id", "--db", str(db)], env=ENV)
    assert res.exit_code == 0, res.output
    assert "so [/INST] the answer is 12" in res.output and "[red]12[/red]" in res.output


@pytest.mark.parametrize("command", [["runs"], ["show", "1"], ["leaderboard"], ["query", "SELECT 1"]])
def test_reading_commands_never_create_a_database(tmp_path, command):
    db = tmp_path / "mistyped.db"
    res = runner.invoke(_app(), [*command, "--db", str(db)], env=ENV)
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [f"error: no database at {db} (check --db; reading commands never "
                                               "create one)"]
    assert list(tmp_path.iterdir()) == []


def test_passwords_are_masked(pg_admin):
    url = pgserver.create_database(pg_admin, "secrets").replace("postgres@", "postgres:hunter2@")
    filled_db(url)  # trust authentication: the password is accepted and ignored
    assert display_url(url) == url.replace("hunter2", "***")
    for args in (["runs"], ["show", "99"], ["query", "SELECT nope"], ["query", "DELETE FROM runs"]):
        res = runner.invoke(_app(), [*args, "--db", url], env=ENV)
        assert "hunter2" not in res.output, res.output
    assert "postgres:***@" in runner.invoke(_app(), ["runs", "--db", url], env=ENV).output
    for bad in ("postgresql+pg8000://u:hunter2@h/db", "foo://u:hunter2@h/db", "postgresql://u:hunter2@127.0.0.1:1/x"):
        res = runner.invoke(_app(), ["runs", "--db", bad], env=ENV)
        assert res.exit_code == 1 and "hunter2" not in res.output and "u:***@" in res.output, res.output


def test_errors_are_one_line_in_a_real_terminal_run(tmp_path):
    """As a user sees it (no CliRunner): one line on stderr, exit 1; --debug brings the traceback back."""
    cmd = [sys.executable, str(ROOT / "reproduce.py"), "runs", "--db", "foo://u:pw@h/x"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: database foo://u:***@h/x: unknown dialect 'foo'; use a file path, sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST/DB"]
    debug = subprocess.run(cmd[:2] + ["--debug"] + cmd[2:], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "StoreError" in debug.stderr


# --- benchmark files ------------------------------------------------------------------------------

def test_non_utf8_benchmark_file_names_line_and_offset(tmp_path):
    path = tmp_path / "bench.jsonl"
    first, second = b'{"id": "a", "problem": "1+1", "answer": "2"}\n', b'{"id": "b", "problem": "caf\xe9"}\n'
    path.write_bytes(first + second)
    with pytest.raises(BenchmarkDataError) as err:
        load_jsonl(path)
    column = second.index(b"\xe9")
    assert str(err.value) == (f"{path}:2: not UTF-8 (byte 0xe9 at byte offset {len(first) + column} of the file, "
                              f"column {column + 1} of the line); re-save the file as UTF-8")


def test_blank_lines_are_skipped_and_still_counted(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text('\ufeff{"id": "a", "problem": "1+1", "answer": "2"}\n\n   \n{"id": "a", "problem": "x", '
                    '"answer": "3"}\n', encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match=r"bench.jsonl:4: field 'id' duplicates line 1"):
        load_jsonl(path)  # the BOM is not part of line 1; the blank lines 2-3 count in the line number
    path.write_text('{"id": "a", "problem": "1+1", "answer": "2"}\n\n{"id": "b", "problem": "x", "answer": "3"}\n\n')
    assert [p.id for p in load_jsonl(path)] == ["a", "b"]
