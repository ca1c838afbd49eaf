"""harness.evaluate: identity (what decides reuse and resume), sampling sanity, one engine call by default;
end to end through vLLM: rows, reuse, resume after a kill, partial problems."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import HAS_VLLM
from sqlalchemy import delete, func, select

from benchmarks import Problem, load_benchmark
from harness.evaluate import TOO_LONG, eval_identity, evaluate, evaluate_many, evaluate_model
from harness.generation import Completion
from harness.grading import GRADER_POLICY_VERSION
from harness.protocol import EvalProtocol
from harness.store import Evaluation, Sample, get_or_create_run, open_db, session_scope

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

    def identity(self):  # the same engine: the same evaluation identity (a resume continues the row)
        return self.inner.identity()

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


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
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
                   lambda: pytest.fail("a reused evaluation must not build a generator"), grader, limit=3)
    assert out["reused"] and out["metrics"] == results["math500"]


METRICS_SQL = {  # each stored metric recomputed from the evaluation's sample rows, independently of summarize()
    "avg@n": "SELECT AVG(s) FROM (SELECT AVG(CAST(correct AS FLOAT)) AS s FROM samples WHERE evaluation_id = :e "
             "GROUP BY problem_id)",
    "pass@1": "SELECT AVG(CAST(correct AS FLOAT)) FROM samples WHERE evaluation_id = :e",
    "pass@2": "SELECT AVG(s) FROM (SELECT MAX(CAST(correct AS FLOAT)) AS s FROM samples WHERE evaluation_id = :e "
              "GROUP BY problem_id)",  # n = 2: pass@2 is "any of the two"
    # cut at max_tokens or not sent at all (prompt longer than the context): both count as truncated
    "truncation_rate": "SELECT AVG(CASE WHEN finish_reason IN ('length', 'prompt_too_long') THEN 1.0 ELSE 0.0 END) "
                       "FROM samples "
                       "WHERE evaluation_id = :e",
    "n_problems": "SELECT COUNT(DISTINCT problem_id) FROM samples WHERE evaluation_id = :e",
}


def _assert_metrics_match_sql(factory, ev) -> None:
    from sqlalchemy import text

    with session_scope(factory) as s:
        for key, sql in METRICS_SQL.items():
            want = s.execute(text(sql), {"e": ev.id}).scalar()
            assert ev.metrics[key] == pytest.approx(want), (ev.benchmark, key, ev.metrics[key], want)


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
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


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
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


# ---------------------------------------------------------------------------------------------
# fast tests with stub engines: identity, resume across engines, prompt too long, one engine call
# ---------------------------------------------------------------------------------------------

class Tok:
    """Whitespace 'tokenizer': one token per word (enough for the context-limit check)."""

    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=text.split())


class StubEngine:
    """Answers every prompt with a box holding the prompt's first number; says what engine it is."""

    def __init__(self, backend="stub", context=10_000, fail_on=None):
        self.backend, self.fail_on, self.calls, self.prompts = backend, fail_on, 0, []
        self.tokenizer = Tok()
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=context))

    def identity(self):
        return {"backend": self.backend, "max_model_len": self.model.config.max_position_embeddings}

    def generate(self, prompts, sampling, seeds=None, progress=False):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("killed")
        self.prompts += prompts
        return [[Completion(f"{self.backend} \\boxed{{{j}}}", [1, 2], "stop", len(p.split()))
                 for j in range(sampling.n)] for p in prompts]

    def close(self):
        pass


class BoxGrader:
    """The real default grader's settings; verdict = the last box equals the gold (no worker processes)."""

    def __init__(self, **options):
        from harness.grading import Grader

        self._settings = Grader(**options).settings()

    def settings(self):
        return self._settings

    def grade(self, pairs):
        from benchmarks import last_boxed
        from harness.grading import Verdict

        return [Verdict(last_boxed(c), last_boxed(c) == g, 0.1) for c, g in pairs]


def _problems(n=3, prefix="p"):
    return [Problem(id=f"{prefix}{i}", problem=f"What is {i} plus zero ?", answer=str(i % 2), meta={})
            for i in range(n)]


def _ident(problems, protocol=PROTOCOL, settings=None, engine=None, limit=None, benchmark="math500"):
    from harness.grading import Grader

    return eval_identity(benchmark, problems, protocol, settings or Grader().settings(),
                         engine or {"backend": "vllm", "max_model_len": 512}, limit)


def test_identity_covers_what_changes_samples_or_verdicts(monkeypatch):
    from dataclasses import replace

    from harness import prompts
    from harness.grading import Grader

    problems = _problems()
    _, base, identity = _ident(problems)
    assert _ident(problems)[1] == base
    # the number of grader workers is not part of an identity (issue 17: real graders, timeout_clock differs)
    assert Grader(workers=0).settings() != Grader(workers=2).settings()
    assert _ident(problems, settings=Grader(workers=0).settings())[1] == base
    assert _ident(problems, settings=Grader(workers=2).settings())[1] == base
    changed = {
        "problems": _ident(problems[:2]),
        "problem text": _ident([replace(problems[0], problem="other"), *problems[1:]]),
        "gold": _ident([replace(problems[0], answer="9"), *problems[1:]]),
        "limit": _ident(problems, limit=3),
        "seed": _ident(problems, EvalProtocol(**{**PROTOCOL.__dict__, "seed": 1})),
        "template name": _ident(problems, EvalProtocol(**{**PROTOCOL.__dict__, "template": "plain"})),
        "grader option": _ident(problems, settings=Grader(fallback="none").settings()),
        "grader timeout": _ident(problems, settings=Grader(timeout_s=1.0).settings()),
        "backend": _ident(problems, engine={"backend": "hf", "max_model_len": 512}),
        "max_model_len": _ident(problems, engine={"backend": "vllm", "max_model_len": 1024}),
    }
    monkeypatch.setitem(prompts.TEMPLATES, "tiny-boxed", replace(prompts.TEMPLATES["tiny-boxed"],
                                                                 literal="Q: {problem}\nA:"))
    changed["template text (same name)"] = _ident(problems)
    monkeypatch.undo()
    # the version the grader reports (Grader.settings) is the one its verdicts were made under
    changed["grader policy version"] = _ident(problems, settings={**Grader().settings(),
                                                                  "policy_version": GRADER_POLICY_VERSION + 1})
    assert {k for k, v in changed.items() if v[1] == base} == set()
    assert identity["template"]["literal"] == "Problem: {problem}\nSolution:"
    assert identity["grader"]["policy_version"] == GRADER_POLICY_VERSION and "workers" not in identity["grader"]
    assert identity["problem_set"]["n"] == 3 and identity["engine"]["backend"] == "vllm"


def test_engine_identity_versions_and_model_revision(tmp_path):
    import shutil

    from harness.generation import GeneratorFactory, VLLMSettings
    from harness.identity import model_revision

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    rev = model_revision(model)
    assert rev["kind"] == "local" and rev["files"] == 2
    shutil.copytree(model, tmp_path / "copy")
    assert model_revision(tmp_path / "copy")["hash"] == rev["hash"]  # content, not path
    (model / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")  # one byte of the weights
    assert model_revision(model)["hash"] != rev["hash"]
    assert model_revision("org/never-downloaded") == {"ref": "org/never-downloaded", "kind": "hub", "commit": None}

    hf = GeneratorFactory("hf").identity(str(model))
    assert hf["backend"] == "hf" and set(hf["versions"]) == {"vllm", "torch", "transformers"}
    assert hf["versions"]["torch"] and hf["model"]["hash"] == model_revision(model)["hash"]
    settings = VLLMSettings(dtype="float32", max_model_len=512, tensor_parallel_size=1)
    if HAS_VLLM:
        v = GeneratorFactory("vllm", settings).identity(str(model))
        assert (v["backend"], v["dtype"], v["max_model_len"], v["tensor_parallel_size"], v["data_parallel_size"]) \
            == ("vllm", "float32", 512, 1, 1)
        assert "gpu_memory_utilization" not in v  # memory settings change speed, not samples


def test_resume_never_mixes_samples_of_two_backends(db_url):
    factory = open_db(db_url)
    run, problems = _run(factory), _problems()
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(factory, run.id, "math500", problems, PROTOCOL, StubEngine("hf", fail_on=2), BoxGrader(),
                 batch_size=1, progress=False)
    vllm = StubEngine("vllm")
    out = evaluate(factory, run.id, "math500", problems, PROTOCOL, vllm, BoxGrader(), batch_size=1, progress=False)
    assert len(vllm.prompts) == 3  # nothing of the hf evaluation was resumed
    with session_scope(factory) as s:
        rows = s.execute(select(Sample.evaluation_id, Sample.completion)).all()
        evs = {e.id: (e.status, e.identity["engine"]["backend"]) for e in s.scalars(select(Evaluation))}
    assert evs == {out["evaluation_id"]: ("finished", "vllm"), out["evaluation_id"] - 1: ("running", "hf")}
    by_eval = {}
    for eid, text in rows:
        by_eval.setdefault(eid, set()).add(text.split()[0])
    assert by_eval == {out["evaluation_id"] - 1: {"hf"}, out["evaluation_id"]: {"vllm"}}
    again = evaluate(factory, run.id, "math500", problems, PROTOCOL, StubEngine("hf"), BoxGrader(), progress=False)
    assert not again["reused"] and again["evaluation_id"] == out["evaluation_id"] - 1  # hf resumed its own row


def test_prompt_too_long_is_counted_and_a_longer_context_does_not_reuse_it(db_url):
    factory = open_db(db_url)
    run = _run(factory)
    problems = [*_problems(2), Problem(id="long", problem="word " * 40, answer="1", meta={})]
    short = StubEngine("vllm", context=20)
    out = evaluate(factory, run.id, "math500", problems, PROTOCOL, short, BoxGrader(), progress=False)
    m = out["metrics"]
    assert short.calls == 1 and len(short.prompts) == 2  # the long prompt never reached the engine
    assert (m["prompt_too_long"], m["prompt_too_long_problems"], m["truncated"]) == (2, 1, 0)
    assert m["truncation_rate"] == pytest.approx(2 / 6)
    longer = StubEngine("vllm", context=100)
    out2 = evaluate(factory, run.id, "math500", problems, PROTOCOL, longer, BoxGrader(), progress=False)
    assert not out2["reused"] and out2["evaluation_id"] != out["evaluation_id"] and len(longer.prompts) == 3
    assert out2["metrics"]["prompt_too_long"] == 0 and out2["metrics"]["truncation_rate"] == 0.0
    with session_scope(factory) as s:
        graded = s.scalar(select(func.count()).select_from(Sample).where(
            Sample.evaluation_id == out2["evaluation_id"], Sample.problem_id == "long", Sample.extracted.is_not(None)))
    assert graded == 2


def test_default_path_sends_all_benchmarks_in_one_engine_call(db_url):
    factory = open_db(db_url)
    gen = StubEngine()
    sets = {"math500": _problems(70, "m"), "amc23": _problems(5, "a")}
    out = evaluate_many(factory, _run(factory).id, sets, PROTOCOL, gen, BoxGrader(), progress=False)
    assert gen.calls == 1 and len(gen.prompts) == 75
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).select_from(Sample)) == 75 * 2
    assert out["math500"]["metrics"]["n_problems"] == 70
    capped = StubEngine()
    factory2 = open_db(str(db_url).replace(".db", "-2.db"))
    evaluate_many(factory2, _run(factory2).id, sets, PROTOCOL, capped, BoxGrader(), batch_size=32, progress=False)
    assert capped.calls == 3  # 75 problems, at most 32 per call when asked


@pytest.mark.parametrize("kwargs", [{"n_default": 4}, {"n_per_benchmark": {"aime24": 8}}])
def test_greedy_with_several_samples_is_refused(kwargs):
    with pytest.raises(ValueError, match=r"greedy decoding \(temperature 0\) with n=\d+ .* use n=1 or a temperature"):
        EvalProtocol(temperature=0.0, **kwargs)
    EvalProtocol(temperature=0.0, n_default=1)  # greedy with one sample is fine
