"""reproduce.py subcommands: eval writes rows (and reuses them), query is read-only, runs/show/methods print."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import HAS_VLLM, ROOT
from typer.testing import CliRunner

runner = CliRunner()
ENV = {"COLUMNS": "240"}


def _app():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def _count(db, sql="SELECT COUNT(*) FROM samples"):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchone()[0]


def _eval_args(model, db, data_dir, *extra):
    return ["eval", str(model), "--benchmarks", "math500,amc23", "--template", "tiny-boxed", "--n", "2",
            "--temperature", "1.0", "--top-p", "1.0", "--max-tokens", "6", "--limit", "2", "--seed", "0",
            "--data-dir", str(data_dir), "--db", str(db), *extra]


def test_eval_query_runs_show(tiny_model_dir, data_dir, tmp_path):
    app, db = _app(), tmp_path / "results.db"
    res = runner.invoke(app, _eval_args(tiny_model_dir, db, data_dir, "--backend", "hf"), env=ENV)
    assert res.exit_code == 0, res.output
    assert _count(db) == 2 * 2 * 2
    assert _count(db, "SELECT COUNT(*) FROM samples WHERE completion_tokens = 6 AND prompt LIKE 'Problem: %'") == 8
    with sqlite3.connect(db) as conn:
        run = conn.execute("SELECT id, method, model, preset, status FROM runs").fetchall()
        evals = conn.execute("SELECT benchmark, template, status, n_problems FROM evaluations ORDER BY id").fetchall()
    assert run == [(1, "base", str(tiny_model_dir.resolve()), "custom", "finished")]
    assert evals == [("math500", "tiny-boxed", "finished", 2), ("amc23", "tiny-boxed", "finished", 2)]
    assert "avg@n" in res.output
    _check_identity(db, tiny_model_dir)

    again = runner.invoke(app, _eval_args(tiny_model_dir, db, data_dir, "--backend", "hf"), env=ENV)
    assert again.exit_code == 0, again.output
    assert _count(db) == 8 and _count(db, "SELECT MAX(id) FROM samples") == 8  # reused, nothing rewritten

    res = runner.invoke(app, ["query", "SELECT COUNT(*) AS n_rows FROM samples", "--db", str(db)], env=ENV)
    assert res.exit_code == 0 and "n_rows" in res.output and "8" in res.output
    for sql in ("DELETE FROM samples", "UPDATE runs SET status = 'x'", "DROP TABLE samples"):
        res = runner.invoke(app, ["query", sql, "--db", str(db)], env=ENV)
        assert res.exit_code == 1 and "read-only" in res.output, res.output
    assert _count(db) == 8 and _count(db, "SELECT COUNT(*) FROM runs WHERE status = 'finished'") == 1
    res = runner.invoke(app, ["query", "SELECT nope FROM samples", "--db", str(db)], env=ENV)
    assert res.exit_code == 1 and "SQL error" in res.output

    res = runner.invoke(app, ["runs", "--db", str(db)], env=ENV)
    assert res.exit_code == 0 and "base" in res.output and "finished" in res.output and "custom" in res.output
    res = runner.invoke(app, ["show", "1", "--db", str(db)], env=ENV)
    assert res.exit_code == 0, res.output
    assert "math500" in res.output and "amc23" in res.output and "amc2023-12A-01" in res.output
    assert "27" in res.output  # a gold answer is shown next to the extracted one
    res = runner.invoke(app, ["show", "99", "--db", str(db)], env=ENV)
    assert res.exit_code == 1 and "no run 99" in res.output


def _check_identity(db, model_dir):
    """The identity the eval command stored: the engine it built, the model's content, the problem set."""
    from harness.grading import GRADER_POLICY_VERSION
    from harness.identity import model_revision

    with sqlite3.connect(db) as conn:
        idents = [json.loads(r[0]) for r in conn.execute("SELECT identity FROM evaluations ORDER BY id")]
    for ident in idents:
        engine = ident["engine"]
        assert engine["backend"] == "hf" and engine["model"]["kind"] == "local"
        assert engine["model"]["hash"] == model_revision(model_dir)["hash"] and engine["versions"]["torch"]
        assert ident["problem_set"]["limit"] == 2 and ident["problem_set"]["n"] == 2
        assert ident["grader"]["policy_version"] == GRADER_POLICY_VERSION and "workers" not in ident["grader"]
        assert ident["template"]["literal"] == "Problem: {problem}\nSolution:"
    assert [i["benchmark"] for i in idents] == ["math500", "amc23"]


def test_greedy_with_several_samples_is_one_line_error(tiny_model_dir, data_dir, tmp_path):
    args = _eval_args(tiny_model_dir, tmp_path / "r.db", data_dir, "--backend", "hf")
    args[args.index("--temperature") + 1] = "0"
    res = runner.invoke(_app(), args, env=ENV)
    assert res.exit_code == 1 and "greedy decoding (temperature 0) with n=2" in res.output, res.output
    assert not (tmp_path / "r.db").exists()  # refused before any row


def test_bad_inputs_are_clear_errors(tiny_model_dir, data_dir, tmp_path):
    app, db = _app(), tmp_path / "results.db"
    res = runner.invoke(app, _eval_args(tmp_path / "missing-model", db, data_dir), env=ENV)
    assert res.exit_code == 1 and "not found" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, _eval_args(tmp_path / "empty", db, data_dir), env=ENV)
    assert res.exit_code == 1 and "config.json" in res.output
    res = runner.invoke(app, ["eval", str(tiny_model_dir), "--benchmarks", "math500,nope", "--db", str(db)], env=ENV)
    assert res.exit_code == 1 and "unknown benchmark(s) nope" in res.output
    res = runner.invoke(app, ["eval", str(tiny_model_dir), "--template", "nope", "--db", str(db)], env=ENV)
    assert res.exit_code == 1 and "unknown template" in res.output
    res = runner.invoke(app, ["query", "SELECT 1", "--db", str(tmp_path / "none.db")], env=ENV)
    assert res.exit_code == 1 and "no database" in res.output


def test_methods_lists_the_registry():
    from methods.registry import available_methods

    res = runner.invoke(_app(), ["methods"], env=ENV)
    assert res.exit_code == 0, res.output
    for name in available_methods():
        assert name in res.output


def test_leaderboard_command(tiny_model_dir, data_dir, tmp_path):
    app, db = _app(), tmp_path / "results.db"
    assert runner.invoke(app, _eval_args(tiny_model_dir, db, data_dir, "--backend", "hf"), env=ENV).exit_code == 0
    for fmt in ("rich", "csv", "json", "markdown"):
        res = runner.invoke(app, ["leaderboard", "--db", str(db), "--format", fmt], env=ENV)
        assert res.exit_code == 0, res.output
        assert "math500" in res.output and "amc23" in res.output
    res = runner.invoke(app, ["leaderboard", "--db", str(db), "--format", "xml"], env=ENV)
    assert res.exit_code == 1


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_subprocess_kill_and_resume(tiny_model_dir, data_dir, tmp_path):
    """A real `reproduce.py eval` killed (SIGKILL) mid-run, then rerun: no duplicates, nothing redone."""
    db = tmp_path / "results.db"
    args = [sys.executable, str(ROOT / "reproduce.py"), "eval", str(tiny_model_dir), "--benchmarks", "math500",
            "--template", "tiny-boxed", "--n", "2", "--temperature", "1.0", "--max-tokens", "48", "--limit", "40",
            "--batch-size", "1", "--data-dir", str(data_dir), "--db", str(db), "--dtype", "float32",
            "--max-model-len", "512"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if db.exists() and _count(db) >= 4:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the evaluation finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the engine core is in the same (new) session
        proc.wait()
    with sqlite3.connect(db) as conn:
        first = conn.execute("SELECT id, problem_id, sample_index FROM samples ORDER BY id").fetchall()
    assert 4 <= len(first) < 80
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, problem_id, sample_index FROM samples ORDER BY id").fetchall()
        assert conn.execute("SELECT status FROM evaluations").fetchall() == [("finished",)]
    assert len(rows) == 80 and len({(p, i) for _, p, i in rows}) == 80
    assert rows[:len(first)] == first


def test_exported_lm_eval_tasks_load_offline(data_dir, monkeypatch):
    """`lm_eval --include_path repro/lmeval/tasks`, run from the data directory, sees our data and prompts."""
    from lm_eval.tasks import TaskManager

    from benchmarks import load_benchmark
    from harness.prompts import render
    from repro.lmeval.bridge import TASK_DIR, TASKS

    monkeypatch.chdir(data_dir)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = TaskManager(include_path=str(TASK_DIR), include_defaults=False).load(["latentrevise_math"])["tasks"]
    assert set(tasks) == set(TASKS.values())
    for benchmark, name in TASKS.items():
        docs, ours = list(tasks[name].test_docs()), load_benchmark(benchmark, data_dir)
        assert [d["id"] for d in docs] == [p.id for p in ours]
        assert tasks[name].doc_to_text(docs[1]) == render("qwen25-math-cot", ours[1].problem)
        assert tasks[name].doc_to_target(docs[1]) == ours[1].answer
        right = tasks[name].process_results(docs[1], [f"so \\boxed{{{ours[1].answer}}}"])
        wrong = tasks[name].process_results(docs[1], ["so \\boxed{-987654}"])
        assert right == {"math_verify": 1.0, "exact_match": 1.0} and wrong == {"math_verify": 0.0, "exact_match": 0.0}



def _broken_data(tmp_path, data_dir):
    """A copy of the data directory whose math500.jsonl has a malformed second line."""
    import shutil

    bad = tmp_path / "bad-data"
    shutil.copytree(data_dir, bad)
    lines = (bad / "math500.jsonl").read_text().splitlines(keepends=True)
    (bad / "math500.jsonl").write_text(lines[0] + '{"id": "x", "problem": \n' + "".join(lines[2:]))
    return bad


@pytest.fixture
def disk_full():
    """Every INSERT fails as SQLite does when the disk is full (SQLITE_FULL), until the test ends."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def full(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT"):
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(Engine, "before_cursor_execute", full)
    yield
    event.remove(Engine, "before_cursor_execute", full)


def _no_space_left(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device", "/data/results.db-journal")


# case -> (what the line says, after "error: ")
ERROR_CASES = {
    "rejected benchmark file": "/math500.jsonl:2: invalid JSON",
    "missing --data-dir": "file not found: the data directory",
    "unwritable --db": "cannot open",
    "--db is a directory": "is a directory",
    "disk full (SQLite)": "disk full while writing",
    "disk full (OSError)": "disk full while writing /data/results.db-journal",
    "missing driver": "database postgresql+pg8000://u:***@localhost/db: its driver 'pg8000' is not installed",
    "unknown dialect": "database nosuchdb://u:***@localhost/db: unknown dialect 'nosuchdb'",
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_eval_failures_are_one_line_and_write_no_row(tiny_model_dir, data_dir, tmp_path, monkeypatch, request, case):
    """Each anticipated failure: one line (no traceback), exit status 1, and no run row left behind."""
    data, db = data_dir, tmp_path / "r.db"
    if case == "rejected benchmark file":
        data = _broken_data(tmp_path, data_dir)
    elif case == "missing --data-dir":
        data = tmp_path / "no-such-dir"
    elif case == "unwritable --db":
        db = tmp_path / "no-such-dir" / "r.db"
    elif case == "--db is a directory":
        db = tmp_path
    elif case == "disk full (SQLite)":
        request.getfixturevalue("disk_full")
    elif case == "disk full (OSError)":
        monkeypatch.setattr("harness.store.get_or_create_run", _no_space_left)
    elif case == "missing driver":
        db = "postgresql+pg8000://u:pw@localhost/db"
    else:
        db = "nosuchdb://u:pw@localhost/db"
    res = runner.invoke(_app(), _eval_args(tiny_model_dir, db, data, "--backend", "hf"), env=ENV)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and ERROR_CASES[case] in lines[0], res.output
    assert "Traceback" not in res.output and "pw@" not in res.output
    assert isinstance(res.exception, SystemExit)  # ended by the error path, not by an escaping exception
    db_file = tmp_path / "r.db"
    assert not db_file.exists() or _count(db_file, "SELECT COUNT(*) FROM runs") == 0
