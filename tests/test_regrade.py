"""harness.regrade and `reproduce.py regrade`: stored samples re-scored into a linked evaluation, no engine."""

from __future__ import annotations

import json
import sqlite3

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from benchmarks import Problem
from harness.evaluate import evaluate
from harness.generation import Completion
from harness.protocol import EvalProtocol
from harness.regrade import RegradeError, regrade, regrade_run
from harness.store import Evaluation, Sample, get_or_create_run, open_db, session_scope
from repro.scores import run_scores

PROTOCOL = EvalProtocol(template="tiny-boxed", temperature=1.0, top_p=1.0, max_tokens=8, n_default=2, pass_k=(1, 2))
# completion, gold: right under every policy / right only through the anchored fallback / wrong
CASES = {"box": ("so \\boxed{1}", "1"), "anchored": ("The final answer is 2", "2"), "wrong": ("\\boxed{5}", "3")}


class Canned:
    tokenizer = None

    def generate(self, prompts, sampling, seeds=None, progress=False):
        return [[Completion(CASES[p.split()[1]][0], [1], "stop", 3)] * sampling.n for p in prompts]

    def close(self):
        pass


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A finished evaluation (graded by worker processes), its run, and its database."""
    from harness.grading import Grader

    db = tmp_path_factory.mktemp("regrade") / "results.db"
    factory = open_db(db)
    run = get_or_create_run(factory, method="base", model="m", preset="custom", seed=0, config={})[0]
    problems = [Problem(id=k, problem=f"{k} problem", answer=g, meta={}) for k, (_, g) in CASES.items()]
    with Grader(workers=1) as grader:
        out = evaluate(factory, run.id, "math500", problems, PROTOCOL, Canned(), grader, progress=False)
    return db, run.id, out["evaluation_id"]


@pytest.fixture
def no_engine(monkeypatch):
    from harness import generation

    def refuse(*a, **k):
        raise AssertionError("a re-grade must not build a generator")

    for cls in (generation.VLLMGenerator, generation.HFGenerator):
        monkeypatch.setattr(cls, "__init__", refuse)
    monkeypatch.setattr(generation.GeneratorFactory, "__call__", refuse)


def _verdicts(factory, eval_id):
    with session_scope(factory) as s:
        return {(r.problem_id, r.sample_index): (r.extracted, r.correct, r.completion) for r in s.scalars(
            select(Sample).where(Sample.evaluation_id == eval_id))}


def test_same_policy_same_verdicts_changed_option_changes_them(stored, no_engine):
    from harness.grading import Grader

    db, run_id, eval_id = stored
    factory = open_db(db)
    before = _verdicts(factory, eval_id)
    assert [before[(k, 0)][1] for k in CASES] == [True, True, False]
    with Grader(workers=0) as same:
        out = regrade(factory, eval_id, same)
        assert regrade(factory, eval_id, same) == {**out, "reused": True, "changed": None} | {"metrics": out["metrics"]}
    assert out["changed"] == 0 and _verdicts(factory, out["evaluation_id"]) == before
    with session_scope(factory) as s:
        new, old = s.get(Evaluation, out["evaluation_id"]), s.get(Evaluation, eval_id)
        assert new.regraded_from == eval_id and new.status == "finished" and new.run_id == run_id
        assert new.identity["regraded_from"] == eval_id and new.eval_hash != old.eval_hash
        assert {k: v for k, v in new.identity.items() if k not in ("regraded_from", "grader")} == \
            {k: v for k, v in old.identity.items() if k != "grader"}
    assert out["metrics"]["avg@n"] == pytest.approx(2 / 3) and out["metrics"]["pass@2"] == pytest.approx(2 / 3)

    with Grader(workers=0, fallback="none") as boxed_only:
        strict = regrade(factory, eval_id, boxed_only)
    after = _verdicts(factory, strict["evaluation_id"])
    assert strict["changed"] == 2  # the two samples whose answer is stated without a box
    assert {k for k in after if after[k][1] != before[k][1]} == {("anchored", 0), ("anchored", 1)}
    assert strict["metrics"]["avg@n"] == pytest.approx(1 / 3)
    # the table keeps the protocol's verdicts: the original, not a re-grade under another option
    notes: list[str] = []
    with session_scope(factory) as s:
        from harness.store import Run

        scores = run_scores(s, s.get(Run, run_id), ["math500"], PROTOCOL, notes)
    assert scores["math500"].evaluation_id == eval_id


def test_regrade_errors_are_one_line(stored, tmp_path):
    from harness.grading import Grader

    factory = open_db(tmp_path / "empty.db")
    with Grader(workers=0) as g:
        with pytest.raises(RegradeError, match="no evaluation 7 in this database"):
            regrade(factory, 7, g)
        with pytest.raises(RegradeError, match="run 1 has no finished evaluation"):
            regrade_run(factory, 1, g)


def test_limited_evaluation_never_replaces_the_full_one(tmp_path):
    from harness.evaluate import eval_identity
    from harness.grading import Grader
    from harness.store import Run

    factory = open_db(tmp_path / "t.db")
    run = get_or_create_run(factory, method="base", model="m", preset="custom", seed=0, config={})[0]
    problems = [Problem(id=f"q{i}", problem="x", answer="1", meta={}) for i in range(3)]
    settings = Grader().settings()
    with session_scope(factory) as s:
        for n, limit, correct in ((3, None, True), (2, 2, False)):  # the limited one is written later
            sampling, h, ident = eval_identity("math500", problems[:n], PROTOCOL, settings, None, limit)
            ev = Evaluation(run_id=run.id, benchmark="math500", template="tiny-boxed", sampling=sampling,
                            grader=settings, eval_hash=h, n_problems=n, identity=ident, status="finished")
            s.add(ev)
            s.flush()
            s.add_all([Sample(evaluation_id=ev.id, problem_id=p.id, sample_index=j, prompt="", completion="", gold="1",
                              prompt_tokens=1, completion_tokens=1, finish_reason="stop", correct=correct,
                              grading_ms=0.0) for p in problems[:n] for j in range(2)])
    notes: list[str] = []
    with session_scope(factory) as s:
        full = run_scores(s, s.get(Run, run.id), ["math500"], PROTOCOL, notes)["math500"]
        limited = run_scores(s, s.get(Run, run.id), ["math500"], PROTOCOL, [], limit=2)["math500"]
    assert len(full.counts) == 3 and all(c == 2 for _, c in full.counts.values())
    assert len(limited.counts) == 2 and notes and "smaller problem sets not shown" in notes[0]


def _app():
    from reproduce import app

    return app


def test_regrade_cli_and_show(stored, no_engine):
    db, run_id, eval_id = stored
    cli = CliRunner()
    res = cli.invoke(_app(), ["regrade", "--run", str(run_id), "--grader-option", "fallback=none", "--db", str(db)],
                     env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, regraded_from, grader, metrics FROM evaluations WHERE regraded_from = ? "
                            "ORDER BY id", (eval_id,)).fetchall()
    strict = [r for r in rows if json.loads(r[2])["fallback"] == "none"]
    assert len(strict) == 1 and json.loads(strict[0][3])["regrade"]["changed"] == 2
    show = cli.invoke(_app(), ["show", str(run_id), "--db", str(db)], env={"COLUMNS": "240"})
    assert show.exit_code == 0 and f"re-grade of #{eval_id}" in show.output, show.output
    bad = cli.invoke(_app(), ["regrade", str(eval_id), "--grader-option", "workers=3", "--db", str(db)])
    assert bad.exit_code == 1 and "not a grader setting" in bad.output
    both = cli.invoke(_app(), ["regrade", str(eval_id), "--run", str(run_id), "--db", str(db)])
    assert both.exit_code == 1 and "one of them" in both.output


def test_docs_regrade_query_lists_the_changed_verdicts(stored):
    from pathlib import Path

    from sqlalchemy import text

    from harness.grading import Grader

    db, _, eval_id = stored
    factory = open_db(db)
    with Grader(workers=0, fallback="none") as g:
        regrade(factory, eval_id, g)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "results-db.md").read_text()
    query = doc.split("runs this query):\n\n```\n", 1)[1].split("```", 1)[0]
    with session_scope(factory) as s:
        rows = s.execute(text(query)).all()
    assert [(r.problem_id, r.sample_index, r.old_answer, bool(r.old_correct), r.new_answer, bool(r.new_correct))
            for r in rows] == [("anchored", 0, "2", True, None, False), ("anchored", 1, "2", True, None, False)]
