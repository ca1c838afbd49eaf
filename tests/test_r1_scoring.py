"""The `r1` template through `evaluate`: "</answer>" kept in the completion, only the <answer> tag graded (issue 11.2).

understand-r1-zero (evaluate_model.py) samples with stop=["</answer>"], include_stop_str_in_output=True and
scores with answer_tag_reward_fn; a fake generator (no engine) returns fixed completions so the verdicts are
known: a box in the thinking does not count, an unformatted completion is wrong.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from benchmarks.registry import Problem
from harness.evaluate import evaluate
from harness.generation import Completion
from harness.protocol import EvalProtocol
from harness.store import Evaluation, Sample, get_or_create_run, open_db, session_scope

COMPLETIONS = {  # problem id -> (completion, expected verdict)
    "p1": (" 2+3=5 </think> <answer> 5 </answer>", True),
    "p2": (" it is \\boxed{7} </think> <answer> 6 </answer>", False),  # the thinking's box is not scored
    "p3": (" surely \\boxed{9}", False),  # no answer tag: unformatted, wrong although the box is right
    "p4": (" so </think> <answer> \\boxed{\\frac{1}{2}} </answer>", True),
}
GOLD = {"p1": "5", "p2": "7", "p3": "9", "p4": "1/2"}


class FixedGenerator:
    tokenizer = None

    def __init__(self):
        self.samplings = []

    def generate(self, prompts, sampling, seeds=None, progress=False):
        self.samplings.append(sampling)
        out = []
        for p in prompts:
            pid = next(k for k in COMPLETIONS if f"[{k}]" in p)
            out.append([Completion(COMPLETIONS[pid][0], [1, 2, 3], "stop", 10)] * sampling.n)
        return out


@pytest.fixture(scope="module")
def grader():
    from harness.grading import Grader

    g = Grader(workers=1)
    yield g
    g.close()


def test_r1_grades_the_answer_tag_and_keeps_the_stop(tmp_path, grader):
    factory = open_db(f"sqlite:///{tmp_path / 'r.db'}")
    run = get_or_create_run(factory, method="base", model="m", preset="custom", seed=0, config={})[0]
    protocol = EvalProtocol(template="r1", temperature=0.0, top_p=1.0, max_tokens=8, n_default=1, pass_k=(1,), seed=0)
    problems = [Problem(k, f"[{k}] What is it?", GOLD[k]) for k in COMPLETIONS]
    gen = FixedGenerator()
    evaluate(factory, run.id, "math500", problems, protocol, gen, grader, progress=False)
    assert {s.stop for s in gen.samplings} == {("</answer>",)} and all(s.include_stop for s in gen.samplings)
    with session_scope(factory) as s:
        ev = s.scalars(select(Evaluation)).one()
        assert ev.sampling["stop"] == ["</answer>"] and ev.sampling["include_stop"] is True
        rows = {x.problem_id: x for x in s.scalars(select(Sample))}
        assert {k: r.correct for k, r in rows.items()} == {k: v[1] for k, v in COMPLETIONS.items()}
        assert {k: r.completion for k, r in rows.items()} == {k: v[0] for k, v in COMPLETIONS.items()}  # stored whole
        assert rows["p3"].extracted is None
