r"""The grader: our extraction policy, our fixes to math-verify's leniencies, time limits, the pool.

Each leniency test first pins what math-verify 0.9 does by default (`_mv_default`), then the verdict
our policy wants and why. If a math-verify upgrade changes a default, the first assert says so.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from harness.grading import (
    GRADER_POLICY_VERSION,
    AnswerSpec,
    Grader,
    Verdict,
    _grade_batch,
    answer_parts,
    answers_equivalent,
    extract_answer,
    final_statement_boxes,
    find_boxes,
    is_correct,
    normalize_answer,
)
from harness.metrics import maj_at_k


def _mv_default(completion: str, gold: str) -> bool:
    """math-verify out of the box: parse(completion) against parse("$gold$")."""
    from math_verify import parse, verify

    return verify(parse("$" + gold + "$"), parse(completion))


def _mv_anchored(text: str) -> str | None:
    """What policy version 1 took as the answer: math-verify's extraction without its unanchored patterns."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    found = parse(text, extraction_config=(LatexExtractionConfig(try_extract_without_anchor=False),
                                           ExprExtractionConfig(try_extract_without_anchor=False)),
                  fallback_mode="first_match", extraction_mode="first_match", parsing_timeout=None)
    return found[-1] if found and isinstance(found[-1], str) else None


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=0, timeout_s=5.0) as g:
        yield g


@pytest.fixture(scope="module")
def pool():
    with Grader(workers=2, timeout_s=1.0, batch_size=4, hard_grace_s=5.0) as g:
        yield g


def verdict(grader: Grader, completion: str, gold: str) -> Verdict:
    return grader.grade([(completion, gold)])[0]


# --- extraction policy ------------------------------------------------------------------------------

def test_last_box_wins_over_earlier_boxes(grader):
    text = r"First try: \boxed{3}. That was wrong; redo. So the answer is \boxed{\frac{14}{3}}."
    v = verdict(grader, text, r"\frac{14}{3}")
    assert v.extracted == r"\frac{14}{3}" and v.correct and v.error is None
    assert not verdict(grader, text, "3").correct


def test_several_boxes_single_part_gold_last_box_only(grader):
    text = r"\boxed{1}, \boxed{2}"
    # math-verify merges adjacent boxes into the set {1, 2}: gold "1,2" passes, gold "2" fails.
    assert _mv_default(text, "1,2") and not _mv_default(text, "2")
    # Ours (rule 3): for a single-part problem one answer, one box, the last box is the answer.
    assert verdict(grader, text, "2").correct and verdict(grader, text, "2").extracted == "2"
    assert not verdict(grader, text, "1").correct
    assert verdict(grader, r"\boxed{1, 2}", "1,2").correct


def test_box_with_space_before_brace_and_fbox(grader):
    # rule 1: "\boxed {5}" renders as a box; before, it was no box and the anchored fallback saw nothing
    v = verdict(grader, r"Adding up, the total is \boxed {5}.", "5")
    assert v.extracted == "5" and v.correct
    assert verdict(grader, r"so \fbox{12}", "12").extracted == "12"
    assert verdict(grader, r"\boxed{\boxed{7}}", "7").extracted == "7"  # a box that is one box
    assert find_boxes(r"a \boxed{x^{2}} b \boxed {3") == [(2, 15, "x^{2}"), (18, 27, None)]
    # a stray unclosed box earlier does not hide the final one
    assert find_boxes(r"\boxed{x \in \{1, so \boxed{4}")[-1] == (21, 30, "4")
    assert verdict(grader, r"\boxed{x \in \{1, so \boxed{4}", "4").correct


@pytest.mark.parametrize("text,parts", [
    (r"x = \boxed{2} and y = \boxed{3}.", ["2", "3"]),
    (r"$\boxed{1}$, $\boxed{2}$; $\boxed{4}$", ["1", "2", "4"]),
    ("\\boxed{1}\n\\boxed{2}", ["1", "2"]),  # one newline joins
    ("\\boxed{1}\n\n\\boxed{2}", ["2"]),  # a blank line separates
    (r"\boxed{1}. \boxed{2}", ["2"]),  # a sentence end separates
    (r"\boxed{1}? \boxed{2}", ["2"]),
    (r"\boxed{1} " + "x" * 61 + r" \boxed{2}", ["2"]),  # more than 60 characters between them
    (r"\boxed{1} " + "x" * 58 + r" \boxed{2}", ["1", "2"]),  # 60 exactly
    (r"\boxed{1}, actually \boxed{2}", ["2"]),  # a word of self-correction
    (r"\boxed{1} but \boxed{2}", ["2"]),
    (r"\boxed{1}, hmm, \boxed{2}", ["2"]),
    (r"\boxed{1 , 2} then \boxed{3", []),  # the last box never closed: no box
])
def test_final_statement_rules(text, parts):
    assert final_statement_boxes(text) == parts


# --- multi-part answers (rule 3) ---------------------------------------------------------------------

OLY_MULTI = {"is_multiple_answer": True, "unit": None, "answer_type": "Tuple", "error": None}


@pytest.mark.parametrize("text,gold,meta,extracted,ok", [
    # separate boxes that together give every part, in one final statement
    (r"So $x = \boxed{1}$ and $y = \boxed{-2}$.", "1,-2", None, "1, -2", True),
    (r"The solutions are \boxed{(6,3)}, \boxed{(9,3)}", "(6,3),(9,3)", OLY_MULTI, "(6,3), (9,3)", True),
    ("The roots are\n\\boxed{3}\n\\boxed{5}\n\\boxed{7}", "3, 5, 7", None, "3, 5, 7", True),
    # the meta flag decides when the gold is not a comma list (a set): without it, the last box only
    (r"\boxed{1} and \boxed{2}", r"\{1,2\}", OLY_MULTI, "1, 2", True),
    (r"\boxed{1} and \boxed{2}", r"\{1,2\}", None, "2", False),
    # self-correction: an earlier statement then a different final one: only the final one counts
    (r"\boxed{1}, \boxed{2}. Wait, that is wrong. The answers are \boxed{1}, \boxed{-2}", "1,-2", None,
     "1, -2", True),
    (r"\boxed{1}, \boxed{2}. Wait, that is wrong. The answers are \boxed{1}, \boxed{-2}", "1,2", None, "1, -2", False),
    (r"\boxed{1}, no, \boxed{-2}", "1,-2", None, "-2", False),  # a correction word splits statements
    # a missing part is wrong, also when the parts sit in separate sentences (two statements)
    (r"So $x = \boxed{1}$.", "1,-2", None, "1", False),
    (r"So $x = \boxed{1}$. Also $y = \boxed{-2}$.", "1,-2", None, "-2", False),
    (r"The answers are \boxed{69}, \boxed{84} and \boxed{99}", "69,84", OLY_MULTI, "69, 84, 99", False),
    # a tuple gold is one part: its parts belong in one box
    (r"\boxed{15}, \boxed{-29}", "(15,-29)", None, "-29", False),
    (r"\boxed{(15, -29)}", "(15,-29)", None, "(15, -29)", True),
])
def test_multi_part_answers(grader, text, gold, meta, extracted, ok):
    v = grader.grade([(text, gold, meta)])[0]
    assert (v.extracted, v.correct, v.error) == (extracted, ok, None)


def test_answer_parts_and_spec_from_meta():
    assert answer_parts("1,-2") == ["1", "-2"] and answer_parts("3, 5, 7") == ["3", "5", "7"]
    for one in ["(15,-29)", "(3,4]", r"\{1\pm\sqrt{5},-2\}", "58,500", r"10,\!080", r"11,\! 111,\! 111,\! 100",
                r"x \in [-2,7]"]:
        assert answer_parts(one) == [one], one
    assert AnswerSpec.from_meta(None, "1,-2").multiple and not AnswerSpec.from_meta({}, "58,500").multiple
    spec = AnswerSpec.from_meta({"is_multiple_answer": False, "unit": "%", "answer_type": "Numerical",
                                 "error": "1e-1"}, "4.2")
    assert spec == AnswerSpec(multiple=False, tolerance=0.1, unit="%", answer_type="Numerical")
    with pytest.raises(ValueError, match=r"meta\['error'\].*'about 0.1'"):
        AnswerSpec.from_meta({"error": "about 0.1"}, "4.2")
    with pytest.raises(ValueError, match=r"meta\['is_multiple_answer'\]"):
        AnswerSpec.from_meta({"is_multiple_answer": "yes"}, "4.2")


def test_olympiadbench_tolerance_and_units(grader):
    # OlympiadBench-2780-style: gold 4.2 (unit %), error 1e-1: within 0.101 is right, only with the meta
    meta = {"is_multiple_answer": False, "unit": "%", "answer_type": "Numerical", "error": "1e-1"}
    got = [v.correct for v in grader.grade([(r"\boxed{4.25}", "4.2", meta), (r"\boxed{4.3}", "4.2", meta),
                                            (r"\boxed{4.35}", "4.2", meta), (r"\boxed{4.25}", "4.2")])]
    assert got == [True, True, False, False]
    # unit text in the answer is dropped by math-verify; the unit field changes nothing
    km = {"unit": "km/h", "is_multiple_answer": False}
    assert [v.correct for v in grader.grade([(r"\boxed{30 \text{ km/h}}", "30", km), (r"\boxed{90^\circ}", "90"),
                                             (r"\boxed{31 \text{ km/h}}", "30", km)])] == [True, True, False]


def test_meta_reaches_the_worker_pool_and_evaluate_passes_it(pool):
    from harness.evaluate import _grade

    items = [(r"\boxed{1} and \boxed{2}", r"\{1,2\}", OLY_MULTI), (r"\boxed{4.25}", "4.2", {"error": 0.1})]
    assert [v.correct for v in pool.grade(items)] == [True, True]
    assert [v.correct for v in _grade(pool, items)] == [True, True]

    class PairsOnly:  # a duck-typed grader (bench/concurrency.py's) still gets (completion, gold) pairs
        def grade(self, pairs):
            return [len(p) for p in pairs]

    assert _grade(PairsOnly(), items) == [2, 2]


def test_no_last_number_fallback_without_a_box(grader):
    text = "The sum is 3 and then 7 apples"
    # math-verify's default takes the last number in the text anywhere.
    assert _mv_default(text, "7")
    # Ours: without a box only ANCHORED answers count; a stray number is not an answer (crediting it
    # inflates pass@k at large k: some of many rambling samples end in the right integer).
    v = verdict(grader, text, "7")
    assert v.extracted is None and not v.correct and v.error is None
    assert extract_answer(text, fallback="any") == "7"  # the opt-in, math-verify's default
    assert Grader(workers=0, fallback="any").grade([(text, "7")])[0].correct


@pytest.mark.parametrize("text,gold", [
    ("The answer is 7.", "7"),
    ("Final answer: the value is 12", "12"),
    (r"The final answer is $\frac{1}{2}$", r"\frac12"),
    ("Answer: 3/4", r"\frac{3}{4}"),
    ("We add them up.\nThe final answer is 17", "17"),
    ("Answer: 17", "17"),
    ("**Answer:** 17", "17"),
    ("so the answer is $17$", "17"),
    ("Thus the answer to the question is 17 apples.", "17"),
    ("Final Answer: The final answer is $17$. I hope it is correct.", "17"),
    (r"The answer is 3\sqrt{2}.", r"3\sqrt{2}"),
    ("First the answer is 5, we think. Checking again, the answer is 6.", "6"),  # the rightmost statement
    ("So the final answer = 17", "17"),
    # MATH500 test/algebra/567's solution without its box (policy 1 took "x={1}" too)
    ("the final answer is the larger of the two: $x={1}$.", "x={1}"),
    ("Answer = 17", "17"),
    ("Our answer is 17.", "17"),
    ("My answer is: $$17$$", "17"),
    (r"The answer is \(17\).", "17"),
    (r"The final answer is \[17\]", "17"),
    ("The answer is x = 5.", "x = 5"),
    ("The answer is $100.", "100"),  # a price: "$" without its closing "$" is not LaTeX
    (r"The answer is 5. \boxed{5", "5"),  # the last box never closed (truncated): the fallback decides
])
def test_anchored_fallback_accepts_answer_statements(grader, text, gold):
    v = verdict(grader, text, gold)
    assert v.correct and v.extracted == gold.replace(r"\frac12", r"\frac{1}{2}").replace(r"\frac{3}{4}", "3/4")
    assert Grader(workers=0, fallback="none").grade([(text, gold)])[0].extracted is None


@pytest.mark.parametrize("text", [
    "To answer this we first try n = 17. It fails.",  # the decoy: math-verify's "anchored" took 17
    "To answer this question, 17 apples are counted",
    "In answer to part (a), x = 17, which we then use",
    "Before the final answer, note that n = 17",
    "The answer depends on whether n = 17",
    "Our answer must be larger than 17",
    "the answer is not 17",
    "Answering requires n = 17 steps",
    # MATH500 test/algebra/972's solution without its box: policy 1 graded this check as the answer
    r"Plugging this value of $x$ back into the original equation to check our answer, we get that $17$",
])
def test_anchored_fallback_rejects_decoys(grader, text):
    # each decoy has "answer" within 50 characters of 17: math-verify's anchored patterns accept them
    assert _mv_anchored(text) == "17"
    v = verdict(grader, text, "17")
    assert v.extracted is None and not v.correct and v.error is None


def test_fallback_none_accepts_boxes_only():
    g = Grader(workers=0, fallback="none")
    assert g.grade([("The answer is 7.", "7"), (r"\boxed{7}", "7")])[0].extracted is None
    assert [v.correct for v in g.grade([("The answer is 7.", "7"), (r"\boxed{7}", "7")])] == [False, True]


def test_unclosed_or_empty_box_is_no_answer(grader):
    assert verdict(grader, r"so \boxed{5", "5").extracted is None  # truncated generation
    v = verdict(grader, r"The answer is \boxed{}", "5")
    assert v.extracted == "" and not v.correct


# --- normalization: our fixes ----------------------------------------------------------------------

def test_percent_is_a_sign_not_a_division(grader):
    # math-verify treats 50\%, 50 and 0.5 as one value.
    assert _mv_default(r"\boxed{50\%}", "0.5") and _mv_default(r"\boxed{0.5}", "50\\%")
    # Ours: MATH writes percent answers with and without "\%", so 50\% == 50 both ways; but 0.5 is a
    # wrong answer to "what percent ...?" and 50\% is a wrong answer when the gold is the number 0.5.
    assert verdict(grader, r"\boxed{50\%}", "50").correct
    assert verdict(grader, r"\boxed{50}", r"50\%").correct
    assert verdict(grader, r"\boxed{50\%}", r"50\%").correct
    assert verdict(grader, "The answer is 50%", "50").correct
    assert not verdict(grader, r"\boxed{50\%}", "0.5").correct
    assert not verdict(grader, r"\boxed{0.5}", r"50\%").correct
    assert normalize_answer(r"12.5\text{\%}") == normalize_answer("12.5%") == "12.5"


def test_scientific_notation_is_a_number(grader):
    # math-verify reads 3e5 as 3*e*5 (Euler's number): wrong against 300000, "right" against 15e.
    assert not _mv_default(r"\boxed{3e5}", "300000") and _mv_default(r"\boxed{3e5}", "15e")
    # Ours: a whole answer of the form <decimal>e<int> is scientific notation.
    assert verdict(grader, r"\boxed{3e5}", "300000").correct
    assert verdict(grader, r"\boxed{1.5E-3}", "0.0015").correct
    assert not verdict(grader, r"\boxed{3e5}", "15e").correct
    assert normalize_answer("3e5") == r"3\times10^{5}" and normalize_answer("e5") == "e5"


def test_trailing_period_inside_the_box(grader):
    # math-verify cannot parse "5." and then compares the strings "5." and "5": incorrect.
    assert not _mv_default(r"\boxed{5.}", "5")
    # Ours: a sentence-ending period inside the box is punctuation, not part of the answer.
    assert verdict(grader, r"\boxed{5.}", "5").correct
    assert verdict(grader, r"\boxed{5}", "5.").correct
    assert verdict(grader, r"\boxed{2.5}", "2.5").correct and not verdict(grader, r"\boxed{2.5}", "25").correct


@pytest.mark.parametrize("text,gold,ok", [
    (r"\boxed{\dfrac{14}{3}}", r"\frac{14}{3}", True),  # LaTeX gold
    (r"\boxed{14/3}", r"\frac{14}{3}", True),
    (r"\boxed{4.6667}", r"\frac{14}{3}", False),  # rounded decimals are not exact answers
    (r"\boxed{27}", "27", True),  # plain gold
    (r"\boxed{28}", "27", False),
    (r"\boxed{x=5}", "5", True),  # an assignment's value (verify(gold, pred) is not symmetric)
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{(3, \pi)}", r"\left( 3, \frac{\pi}{2} \right)", False),
    (r"\boxed{\text{(C)}}", r"\text{(C)}", True),
])
def test_gold_forms(grader, text, gold, ok):
    assert verdict(grader, text, gold).correct is ok


# --- maj@k clusters: the grader's equivalence -------------------------------------------------------

VOTES = [  # (extracted answers, verdicts) of three problems
    (["0.5", "7", r"\frac{1}{2}", "7", "1/2"], [False, True, False, True, False]),  # three wrong: one value
    ([r"\dfrac{3}{4}", "0.75", "5", "5", "3/4"], [True, True, False, False, True]),
    ([None, "x=2", "2", "3"], [False, False, False, False]),  # x=2 and 2: either direction accepts
]


def test_vote_labels_cluster_by_the_graders_equivalence(grader, pool):
    expected = [[0, 1, 0, 1, 0], [0, 0, 1, 1, 0], [None, 0, 0, 1]]
    assert grader.vote_labels(VOTES) == expected
    assert pool.vote_labels(VOTES) == expected
    assert [maj_at_k(a, ok, 5, lab) for (a, ok), lab in zip(VOTES[:2], expected)] == [0.0, 1.0]
    assert maj_at_k(*VOTES[0], 5) == 1.0  # string keys: "7" (2 votes) wins against three 1-vote keys
    assert answers_equivalent("x=2", "2") and answers_equivalent("2", "x=2") and not answers_equivalent("2", "3")


def test_plain_numbers_are_compared_by_value_without_math_verify(monkeypatch):
    import harness.grading as grading

    monkeypatch.setattr(grading, "_matches", lambda *a: pytest.fail("math-verify called for plain numbers"))
    assert answers_equivalent("12", "12.0") and answers_equivalent("-0.5", "-.50") and answers_equivalent("7.", "7")
    assert not answers_equivalent("12", "13") and not answers_equivalent("0.5", "-0.5")
    labels = Grader(workers=0).vote_labels([([str(i % 40) for i in range(400)], [False] * 400)])
    assert labels == [[i % 40 for i in range(400)]]


def test_vote_labels_time_limit_means_not_equivalent():
    g = Grader(workers=0, timeout_s=0.5)
    g.vote_labels([(["1", "2"], [False, False])])  # imports outside the clock
    t0 = time.perf_counter()
    # each comparison with the tower times out (0.5 s): "not equivalent", and "1.0" still joins "1"
    labels = g.vote_labels([([PATHOLOGICAL[0][7:-1], "1", "1.0"], [False, False, False])])
    assert 0.9 < time.perf_counter() - t0 < 4
    assert labels == [[0, 1, 1]]


# --- time limits, the pool ---------------------------------------------------------------------------

PATHOLOGICAL = [r"\boxed{10^{10^{10^{10}}}}", r"\boxed{2^{2^{2^{2^{2^{2}}}}}}", r"\boxed{10!!!!!!}"]


def test_pathological_answer_times_out_in_process():
    g = Grader(workers=0, timeout_s=0.5)
    t0 = time.perf_counter()
    v = g.grade([(PATHOLOGICAL[0], "1"), (r"\boxed{1}", "1")])
    assert time.perf_counter() - t0 < 3.0
    assert v[0].error == "timeout" and not v[0].correct and v[0].extracted == "10^{10^{10^{10}}}"
    assert 400 < v[0].ms < 2500
    assert v[1].correct and v[1].error is None  # the next pair is unharmed


def test_pool_times_out_pathological_pairs_and_keeps_order(pool):
    pairs = [(rf"so \boxed{{{i}}}", str(i if i % 3 else i + 1)) for i in range(30)]
    for j, text in zip((4, 13, 22), PATHOLOGICAL):
        pairs[j] = (text, "1")
    t0 = time.perf_counter()
    verdicts = pool.grade(pairs)
    assert time.perf_counter() - t0 < 30  # three 1 s CPU limits (+ worker start, load), not a hang
    for i, v in enumerate(verdicts):
        if i in (4, 13, 22):
            assert v.error == "timeout" and not v.correct
        else:
            assert v.error is None and v.extracted == str(i) and v.correct == (i % 3 != 0), (i, v)
    # the pool survived and still grades
    assert [v.correct for v in pool.grade([(r"\boxed{2}", "2"), (r"\boxed{2}", "3")])] == [True, False]


def _stalling_batch(pairs, timeout_s, fallback):
    """Stands for a C-level loop that no signal interrupts: our timer's signals are blocked, and it
    spins (burning CPU, so that the worker's CPU-time timer would fire if it could)."""
    if any("STALL" in p[0] for p in pairs):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGPROF})
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pass
    return _grade_batch(pairs, timeout_s, fallback)


class _StallingGrader(Grader):
    def _schedule(self, pairs):
        return self._ensure_pool().schedule(_stalling_batch, args=(pairs, self.timeout_s, self.fallback),
                                            timeout=self.timeout_s * len(pairs) + self.hard_grace_s)


def test_hard_limit_kills_a_stuck_worker_and_regrades_its_batch():
    with _StallingGrader(workers=2, timeout_s=0.5, batch_size=2, hard_grace_s=0.5) as g:
        t0 = time.perf_counter()
        v = g.grade([(r"\boxed{1}", "1"), (r"\boxed{9} STALL", "1"), (r"\boxed{3}", "3"), (r"\boxed{4}", "5")])
        assert time.perf_counter() - t0 < 30
    assert v[1].error == "timeout" and not v[1].correct and v[1].extracted == "9"  # killed twice
    assert [(x.extracted, x.correct, x.error) for i, x in enumerate(v) if i != 1] == [
        ("1", True, None), ("3", True, None), ("4", False, None)]  # its batch-mate was re-graded


def test_memory_limit_fails_a_runaway_answer_fast():
    # 2^(10^9) is a 125 MB integer: with 64 MB of headroom the worker's allocation fails at once
    # (math-verify swallows the MemoryError: incorrect, no error) instead of computing for seconds.
    with Grader(workers=1, timeout_s=10.0, memory_limit_mb=64) as g:
        v = g.grade([(r"\boxed{2^{10^{9}}}", "1"), (r"\boxed{2^{3}}", "8")])
    assert not v[0].correct and v[0].error != "timeout" and v[0].extracted == "2^{10^{9}}"
    assert v[1].correct and v[1].error is None


def test_grade_async_matches_grade(pool):
    pairs = [(rf"\boxed{{{i}}}", str(i % 4)) for i in range(12)]
    future = pool.grade_async(pairs)
    in_between = pool.grade(pairs[:2])  # the caller keeps working while the future runs
    got = future.result(timeout=60)
    assert [(v.extracted, v.correct, v.error) for v in got] == [
        (v.extracted, v.correct, v.error) for v in pool.grade(pairs)]
    assert [v.correct for v in got] == [i < 4 for i in range(12)]
    assert [v.correct for v in in_between] == [True, True]


def test_in_process_grader_refuses_other_threads():
    g = Grader(workers=0)
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, g.grade, [("1", "1")])))
    t.start()
    t.join()
    assert errors and "main thread" in str(errors[0].value)
    assert g.grade_async([(r"\boxed{1}", "1")]).result()[0].correct  # workers=0: done at once


def test_settings_and_is_correct():
    s = Grader(workers=3, timeout_s=2.5).settings()
    assert s["grader"] == "math-verify/last-boxed" and s["math_verify"].count(".") >= 1
    assert GRADER_POLICY_VERSION == 2 and s["policy_version"] == 2  # bumped: this policy changes verdicts
    assert s["timeout_s"] == 2.5 and s["workers"] == 3 and s["fallback"] == "anchored"
    assert is_correct(r"so \boxed{\frac{1}{2}}", "0.5") and not is_correct(r"\boxed{2}", "0.5")
    with pytest.raises(ValueError, match="fallback"):
        Grader(fallback="last")


# --- through evaluate: the problem's meta reaches the grader, maj@k uses its clusters -----------------

class _ScriptedGenerator:
    """Stands for an engine: each problem's completions are scripted by the problem text."""

    tokenizer = None

    def __init__(self, script: dict[str, list[str]]):
        self.script = script

    def generate(self, prompts, sampling, seeds=None):
        from harness.generation import Completion

        return [[Completion(text, [1] * 3, "stop", 5) for text in next(v for k, v in self.script.items() if k in p)]
                for p in prompts]

    def close(self) -> None:
        pass


def test_evaluate_grades_with_meta_and_votes_with_the_graders_clusters(tmp_path, pool):
    from benchmarks import Problem
    from harness.evaluate import evaluate
    from harness.protocol import EvalProtocol
    from harness.store import Sample, get_or_create_run, open_db, session_scope

    problems = [Problem("multi", "Find all x. MULTI", r"\{1,2\}", {"is_multiple_answer": True}),
                Problem("votes", "Compute it. VOTES", "7", {})]
    script = {"MULTI": [r"So \boxed{1} and \boxed{2}."] * 5,
              "VOTES": [rf"\boxed{{{a}}}" for a in ["0.5", "7", r"\frac{1}{2}", "7", "1/2"]]}
    db = open_db(str(tmp_path / "r.db"))
    run = get_or_create_run(db, method="base", model="stub", preset="custom", seed=0, config={})[0]
    protocol = EvalProtocol(n_default=5, pass_k=(1, 5))
    out = evaluate(db, run.id, "olympiadbench", problems, protocol, _ScriptedGenerator(script), pool, progress=False)
    with session_scope(db) as s:
        rows = {(r.problem_id, r.sample_index): (r.extracted, r.correct) for r in s.query(Sample)}
    assert all(rows[("multi", j)] == ("1, 2", True) for j in range(5))  # meta: both boxes are the answer
    assert [rows[("votes", j)][1] for j in range(5)] == [False, True, False, True, False]
    # three wrong spellings of 1/2 outvote two 7s under the grader's equivalence (string keys: 7 wins)
    assert out["metrics"]["maj@5"] == 0.5 and out["metrics"]["avg@n"] == pytest.approx((1 + 0.4) / 2)
