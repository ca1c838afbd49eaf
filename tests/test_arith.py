"""The synthetic arithmetic family: deterministic, disjoint splits, correct worked solutions."""

from __future__ import annotations

import re

import pytest

from benchmarks import last_boxed, load_benchmark
from benchmarks.arith import (
    EOS,
    EVAL_SIZE,
    REFLECT_PHRASE,
    TIERS,
    TRAIN_SIZE,
    format_document,
    generate,
    pretrain_corpus,
    split_of,
    train_prompts,
)

NAMES = [f"arith-{t}" for t in TIERS] + ["arith-train"]


@pytest.fixture(scope="module")
def sets() -> dict[str, list]:
    return {name: load_benchmark(name) for name in NAMES}


def test_registered_sizes_and_meta(sets):
    for tier in TIERS:
        problems = sets[f"arith-{tier}"]
        assert len(problems) == EVAL_SIZE
        assert {p.meta["tier"] for p in problems} == {tier}
        assert len({p.id for p in problems}) == len({p.problem for p in problems}) == EVAL_SIZE
    train = sets["arith-train"]
    assert len(train) == TRAIN_SIZE
    assert {p.meta["tier"] for p in train} == set(TIERS)
    for p in train[:50]:
        assert {"solution", "tier", "kind", "expr", "ops", "operands", "parens", "carries"} <= set(p.meta)
        assert len(p.meta["ops"]) == len(p.meta["operands"]) - 1


def test_same_seed_same_problems_other_seed_other_problems():
    a, b = generate("eval", ("medium",), 40, 3, "x"), generate("eval", ("medium",), 40, 3, "x")
    assert [(p.id, p.problem, p.answer, p.meta) for p in a] == [(p.id, p.problem, p.answer, p.meta) for p in b]
    c = generate("eval", ("medium",), 40, 4, "x")
    assert len({p.problem for p in a} & {p.problem for p in c}) < 10
    assert pretrain_corpus(200, seed=1) == pretrain_corpus(200, seed=1) != pretrain_corpus(200, seed=2)


def test_splits_are_disjoint_by_expression_and_text(sets):
    eval_problems = [p for t in TIERS for p in sets[f"arith-{t}"]]
    train = sets["arith-train"]
    assert all(split_of(p.meta["expr"]) == "eval" for p in eval_problems)
    assert all(split_of(p.meta["expr"]) == "train" for p in train)
    eval_exprs, train_exprs = {p.meta["expr"] for p in eval_problems}, {p.meta["expr"] for p in train}
    assert not eval_exprs & train_exprs
    assert not {p.problem for p in eval_problems} & {p.problem for p in train}
    corpus = pretrain_corpus(20_000, seed=0)
    corpus_texts = {d.split("\n", 1)[0].removeprefix("Problem: ") for d in corpus}
    assert not corpus_texts & {p.problem for p in eval_problems + train}
    # the whole expression as written may not appear in the corpus either (any phrasing)
    shown = {re.sub(r"^(Compute|What is|Evaluate|Find the value of) ", "", t).rstrip(".?") for t in corpus_texts}
    assert not shown & {p.problem.split(" ", 1)[1].rstrip(".?") for p in eval_problems if not p.meta["word"]}


def _check_steps(solution: str) -> None:
    """Every `x = y = z.` chain in the worked solution is arithmetically true."""
    body = solution[: solution.index(" The answer is")]
    for step in body.split(". "):
        parts = [s.strip().rstrip(".") for s in step.split(" = ")]
        assert len(parts) >= 2, step
        values = [eval(part, {"__builtins__": {}}) for part in parts]  # digits and + - * only
        assert len(set(values)) == 1, f"wrong step {step!r} in {solution!r}"


def test_reference_solutions_are_right(sets):
    from harness.grading import Grader

    problems = [p for name in NAMES for p in sets[name]]
    for p in problems:
        assert re.fullmatch(r"[\d +\-*=().]+ The answer is \\boxed\{\d+\}\.", p.meta["solution"]), p.meta["solution"]
        assert last_boxed(p.meta["solution"]) == p.answer
        _check_steps(p.meta["solution"])
    with Grader(workers=0) as grader:
        verdicts = grader.grade([(p.meta["solution"], p.answer) for p in problems])
    assert all(v.correct for v in verdicts)
    off_by_one = [(p.meta["solution"].replace(f"{{{p.answer}}}", f"{{{int(p.answer) + 1}}}"), p.answer)
                  for p in problems[:20]]  # the check can fail: a wrong box is graded wrong
    with Grader(workers=0) as grader:
        assert not any(v.correct for v in grader.grade(off_by_one))


def test_difficulty_grows_with_tier(sets):
    def mean(values):
        return sum(values) / len(values)

    size = {t: mean([len(p.meta["solution"]) for p in sets[f"arith-{t}"]]) for t in TIERS}
    digits = {t: mean([max(map(len, map(str, p.meta["operands"]))) for p in sets[f"arith-{t}"]]) for t in TIERS}
    assert size["easy"] < size["medium"] < size["hard"]
    assert digits["easy"] < digits["hard"]
    assert not any(p.meta["parens"] or "*" in p.meta["ops"] for p in sets["arith-easy"])
    assert sum(p.meta["parens"] for p in sets["arith-hard"]) > 20


def test_document_format_is_the_tiny_boxed_contract():
    p = train_prompts()[0]
    doc = format_document(p)
    assert doc == f"Problem: {p.problem}\nSolution: {p.meta['solution']}{EOS}"
    assert all(d.startswith("Problem: ") and d.endswith("}." + EOS) and d.count(EOS) == 1
               for d in pretrain_corpus(500, seed=0))


def test_word_problems_in_medium_and_hard_tell_the_same_sum(sets):
    """Story phrasings: none in easy, some in medium and hard; every operand is in the story, the
    solution is the symbolic one, and the answer is the expression's value."""
    words = {t: [p for p in sets[f"arith-{t}"] if p.meta["word"]] for t in TIERS}
    assert not words["easy"] and len(words["medium"]) >= 10 and len(words["hard"]) >= 10
    for p in words["medium"] + words["hard"]:
        assert "Compute" not in p.problem and p.problem.endswith("?")
        assert all(re.search(rf"\b{x}\b", p.problem) for x in p.meta["operands"])
        assert last_boxed(p.meta["solution"]) == p.answer == str(eval(p.meta["expr"]))  # noqa: S307 (our own ints)


def test_reflection_documents_have_the_stated_share_and_a_right_corrected_answer():
    """13.6: ~reflect_frac of the corpus slips once, says REFLECT_PHRASE, redoes the step right; the step
    checker counts the slip as retracted (valid steps) and the boxed answer is the problem's true value."""
    from methods.latentrevise.verify import _eval, check_steps

    docs = pretrain_corpus(4000, seed=0, reflect_frac=0.05)
    reflecting = [d for d in docs if REFLECT_PHRASE in d]
    assert 0.04 * len(docs) <= len(reflecting) <= 0.06 * len(docs)  # binomial sd ~0.35 % at n=4000
    assert all(d.count(REFLECT_PHRASE) == 1 for d in reflecting)
    for doc in reflecting:
        problem, solution = doc.removesuffix(EOS).split("\nSolution:")
        check = check_steps(solution, problem)
        assert check.valid and check.n_retracted == 1 and check.n_false == 0, doc
        slip, redo = solution.split(REFLECT_PHRASE)
        wrong_lhs, wrong = slip.rstrip(". ").rsplit(" = ", 1)
        right = redo.split(". ")[0].rsplit(" = ", 1)[1]
        assert wrong != right and int(wrong) >= 0  # the slip is a real, non-negative mistake...
        assert redo.startswith(wrong_lhs.split(". ")[-1].strip())  # ...of the very step that is redone
        expr = problem.removeprefix("Problem: Compute ").rstrip(".")
        if "Compute" in problem:  # symbolic phrasing: the boxed answer is the expression's value
            assert last_boxed(solution) == str(_eval(expr))
    # the rest of the corpus is unchanged by the option (own random stream)
    plain = pretrain_corpus(4000, seed=0)
    assert [a for a, b in zip(docs, plain) if a != b] == reflecting
    with pytest.raises(ValueError, match="reflect_frac"):
        pretrain_corpus(10, reflect_frac=1.5)
