"""harness.evaluate end to end through vLLM: rows, reuse, resume after a kill, partial problems."""

from __future__ import annotations

import pytest
from conftest import HAS_VLLM
from sqlalchemy import delete, func, select

from benchmarks import load_benchmark
from harness.evaluate import TOO_LONG, eval_identity, evaluate, evaluate_model
from harness.protocol import EvalProtocol
from harness.store import Evaluation, Sample, get_or_create_run, open_db, session_scope

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")]

BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "olympiadbench")
PROTOCOL = EvalProtocol(template="tiny-boxed", temperature=1.0, top_p=1.0, max_tokens=8, n_default=2,
                        pass_k=(1, 2), seed=0)


@pytest.fixture(scope="module")
def grader():
    from harness.grading import Grader

    g = Grader(workers=1)
    yield g
    g.close()


class Flaky:
    """Delegates to a generator; raises on call number `fail_on` (a kill in the middle of a run)."""

    def __init__(self, inner, fail_on: int | None = None):
        self.inner, self.fail_on, self.calls, self.prompts = inner, fail_on, 0, 0
        self.tokenizer, self.llm = inner.tokenizer, inner.llm

    def generate(self, prompts, sampling, seeds=None, progress=False):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("killed")
        self.prompts += len(prompts)
        return self.inner.generate(prompts, sampling, seeds=seeds)

    def close(self):  # the engine belongs to the session fixture
        pass


def _run(factory, model="tiny"):
    return get_or_create_run(factory, method="base", model=model, preset="custom", seed=0, config={"p": PROTOCOL})[0]


def _rows(factory, eval_id=None):
    with session_scope(factory) as s:
        q = select(Sample).order_by(Sample.id)
        if eval_id is not None:
            q = q.where(Sample.evaluation_id == eval_id)
        return s.scalars(q).all()


def test_five_benchmarks_rows_and_reuse(vllm_generator, tiny_model_dir, data_dir, db_url, grader):
    factory = open_db(db_url)
    run = _run(factory)
    made = []

    def make_generator(path):
        assert path == str(tiny_model_dir)
        made.append(path)
        return Flaky(vllm_generator)

    results = evaluate_model(factory, run.id, str(tiny_model_dir), BENCHMARKS, data_dir=data_dir, protocol=PROTOCOL,
                             make_generator=make_generator, grader=grader, limit=3, progress=False)
    assert len(made) == 1 and set(results) == set(BENCHMARKS)
    rows = _rows(factory)
    assert len(rows) == 3 * 5 * 2
    assert len({(r.evaluation_id, r.problem_id, r.sample_index) for r in rows}) == 30
    for r in rows:
        assert r.correct is not None and r.grading_ms >= 0 and r.gold
        if r.finish_reason == TOO_LONG:  # olympiadbench-1606 is longer than the tiny model's 512 tokens
            assert r.completion == "" and not r.correct and r.grading_error
        else:
            assert r.prompt.startswith("Problem: ") and r.prompt.endswith("\nSolution:")
            assert r.completion_tokens == 8 and r.finish_reason == "length" and r.grading_error is None
    assert {r.problem_id for r in rows if r.finish_reason == TOO_LONG} == {"olympiadbench-1606"}
    with session_scope(factory) as s:
        evals = s.scalars(select(Evaluation)).all()
    assert len(evals) == 5 and all(e.status == "finished" and e.template == "tiny-boxed" for e in evals)
    for e in evals:
        assert e.metrics["n"] == 2 and e.metrics["n_problems"] == 3 and e.grader == grader.settings()
        assert e.sampling["n"] == 2 and e.sampling["stop"] == [] and e.wall_s > 0
        assert results[e.benchmark] == e.metrics
        _assert_metrics_match_sql(factory, e)

    # same call again: reused, no engine, no new rows
    results2 = evaluate_model(factory, run.id, str(tiny_model_dir), BENCHMARKS, data_dir=data_dir, protocol=PROTOCOL,
                              make_generator=make_generator, grader=grader, limit=3, progress=False)
    assert len(made) == 1 and results2 == results
    assert [r.id for r in _rows(factory)] == [r.id for r in rows]
    out = evaluate(factory, run.id, "math500", load_benchmark("math500", data_dir, 3), PROTOCOL,
                   lambda: pytest.fail("a reused evaluation must not build a generator"), grader)
    assert out["reused"] and out["metrics"] == results["math500"]


METRICS_SQL = {  # each stored metric recomputed from the evaluation's sample rows, independently of summarize()
    "avg@n": "SELECT AVG(s) FROM (SELECT AVG(CAST(correct AS FLOAT)) AS s FROM samples WHERE evaluation_id = :e "
             "GROUP BY problem_id)",
    "pass@1": "SELECT AVG(CAST(correct AS FLOAT)) FROM samples WHERE evaluation_id = :e",
    "pass@2": "SELECT AVG(s) FROM (SELECT MAX(CAST(correct AS FLOAT)) AS s FROM samples WHERE evaluation_id = :e "
              "GROUP BY problem_id)",  # n = 2: pass@2 is "any of the two"
    "truncation_rate": "SELECT AVG(CASE WHEN finish_reason = 'length' THEN 1.0 ELSE 0.0 END) FROM samples "
                       "WHERE evaluation_id = :e",
    "n_problems": "SELECT COUNT(DISTINCT problem_id) FROM samples WHERE evaluation_id = :e",
}


def _assert_metrics_match_sql(factory, ev) -> None:
    from sqlalchemy import text

    with session_scope(factory) as s:
        for key, sql in METRICS_SQL.items():
            want = s.execute(text(sql), {"e": ev.id}).scalar()
            assert ev.metrics[key] == pytest.approx(want), (ev.benchmark, key, ev.metrics[key], want)


def test_identity_changes_with_protocol_and_problems(data_dir, grader):
    problems = load_benchmark("math500", data_dir, 3)
    base = eval_identity("math500", problems, PROTOCOL, grader.settings())[1]
    assert eval_identity("math500", problems, PROTOCOL, grader.settings())[1] == base
    assert eval_identity("math500", problems[:2], PROTOCOL, grader.settings())[1] != base
    assert eval_identity("math500", problems, EvalProtocol(**{**PROTOCOL.__dict__, "seed": 1}), grader.settings())[1] != base
    assert eval_identity("math500", problems, EvalProtocol(**{**PROTOCOL.__dict__, "template": "plain"}),
                         grader.settings())[1] != base
    assert eval_identity("math500", problems, PROTOCOL, {**grader.settings(), "timeout_s": 1.0})[1] != base
    assert eval_identity("math500", problems, PROTOCOL, {**grader.settings(), "workers": 7})[1] == base


def test_kill_midway_then_resume(vllm_generator, data_dir, tmp_path, grader):
    problems = load_benchmark("math500", data_dir, 3)
    ref_db, db = open_db(tmp_path / "ref.db"), open_db(tmp_path / "kill.db")
    ref = evaluate(ref_db, _run(ref_db).id, "math500", problems, PROTOCOL, vllm_generator, grader, progress=False)
    reference = {(r.problem_id, r.sample_index): r.completion for r in _rows(ref_db, ref["evaluation_id"])}

    run = _run(db)
    flaky = Flaky(vllm_generator, fail_on=2)
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(db, run.id, "math500", problems, PROTOCOL, flaky, grader, batch_size=1, progress=False)
    first = _rows(db)
    assert [(r.problem_id, r.sample_index) for r in first] == [(problems[0].id, 0), (problems[0].id, 1)]
    with session_scope(db) as s:
        assert s.scalars(select(Evaluation)).one().status == "running"

    again = Flaky(vllm_generator)
    out = evaluate(db, run.id, "math500", problems, PROTOCOL, again, grader, batch_size=1, progress=False)
    assert not out["reused"] and again.prompts == 2  # the finished problem was not generated again
    rows = _rows(db)
    assert len(rows) == 6 and [r.id for r in rows[:2]] == [r.id for r in first]
    assert {(r.problem_id, r.sample_index): r.completion for r in rows} == reference  # seeds: batching-free


def test_partial_problem_regenerates_only_missing_indices(vllm_generator, data_dir, db_url, grader):
    problems = load_benchmark("aime24", data_dir, 2)
    db = open_db(db_url)
    run = _run(db)
    out = evaluate(db, run.id, "aime24", problems, PROTOCOL, vllm_generator, grader, progress=False)
    before = {(r.problem_id, r.sample_index): (r.id, r.completion) for r in _rows(db)}
    with session_scope(db) as s:  # a crash that left problem 0 with one of its two samples
        s.execute(delete(Sample).where(Sample.problem_id == problems[0].id, Sample.sample_index == 1))
        s.get(Evaluation, out["evaluation_id"]).status = "running"
    gen = Flaky(vllm_generator)
    evaluate(db, run.id, "aime24", problems, PROTOCOL, gen, grader, progress=False)
    after = {(r.problem_id, r.sample_index): (r.id, r.completion) for r in _rows(db)}
    assert gen.prompts == 1 and set(after) == set(before)
    changed = {k for k in after if after[k][0] != before[k][0]}
    assert changed == {(problems[0].id, 1)}  # only the missing sample was inserted ...
    assert after[(problems[0].id, 1)][1] == before[(problems[0].id, 1)][1]  # ... and it is the same sample
    with session_scope(db) as s:
        assert s.scalar(select(func.count()).select_from(Sample)) == 4
