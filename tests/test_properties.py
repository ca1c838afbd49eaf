r"""Property-based tests (Hypothesis) of the metrics and the grading policy (issue 17, "Properties").

Each property holds for every input, not only for the hand-made cases in test_metrics.py and
test_grading.py: pass@k is monotone in k and pass@1 = c/n; maj@k does not move when answers are
rewritten into equivalent forms; answer normalization is idempotent; the paired test is symmetric;
box extraction returns the content of the last box however its braces nest. Examples are few
(`max_examples` modest, no deadline: the machine is shared) so that the whole file stays fast.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import last_boxed
from harness.grading import Grader, final_statement_boxes, find_boxes, normalize_answer
from harness.metrics import answer_key, maj_at_k, paired_test, pass_at_k, vote_labels

FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# --- pass@k ---------------------------------------------------------------------------------------

@FAST
@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_pass_at_k_monotone_in_k_and_pass1_is_c_over_n(nc):
    n, c = nc
    values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
    assert values[0] == pytest.approx(c / n, abs=1e-12)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values[-1] == (1.0 if c else 0.0)


# --- maj@k under equivalent rewrites --------------------------------------------------------------

def _spellings(value: int) -> list[str]:
    r"""Spellings of one value: the first four share a voting key (spacing, $, a trailing period are
    dropped by `answer_key`), the last two share another (\dfrac is \frac)."""
    return [str(value), f" {value} ", f"${value}$", f"{value}.", rf"\dfrac{{{value}}}{{1}}", rf"\frac{{{value}}}{{1}}"]


# (value or None for "no answer", spelling index) per sample
_SAMPLES = st.lists(st.tuples(st.integers(0, 3) | st.none(), st.integers(0, 5)), min_size=1, max_size=12)


def _problem(samples, gold: int, shift: int) -> tuple[list[str | None], list[bool], dict[str, int]]:
    """(answers, verdicts, value of each spelling) with every spelling index moved by `shift`."""
    answers: list[str | None] = []
    value_of: dict[str, int] = {}
    for value, spelling in samples:
        if value is None:
            answers.append(None)
            continue
        answers.append(_spellings(value)[(spelling + shift) % 6])
        value_of[answers[-1]] = value
    return answers, [v == gold for v, _ in samples], value_of


@FAST
@given(_SAMPLES, st.integers(0, 3), st.integers(1, 5))
def test_maj_at_k_invariant_under_equivalent_rewrites(samples, gold, shift):
    a1, ok, values1 = _problem(samples, gold, 0)
    a2, _, values2 = _problem(samples, gold, shift)
    values = values1 | values2

    def same(x: str, y: str) -> bool:  # stands for the grader's equivalence: equal values
        return values[x] == values[y]

    for k in range(1, len(samples) + 1):
        assert maj_at_k(a2, ok, k, vote_labels(a2, ok, same)) == maj_at_k(a1, ok, k, vote_labels(a1, ok, same))
        # with string keys alone, rewriting only the CORRECT answers never changes the vote
        a3 = [a2[i] if ok[i] else a1[i] for i in range(len(a1))]
        assert maj_at_k(a3, ok, k) == maj_at_k(a1, ok, k)


@FAST
@given(_SAMPLES)
def test_vote_labels_of_a_prefix_are_the_prefix_of_the_labels(samples):
    answers, ok, _ = _problem(samples, 1, 0)
    full = vote_labels(answers, ok)
    assert all(vote_labels(answers[:k], ok[:k]) == full[:k] for k in range(1, len(answers) + 1))


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=0, timeout_s=5.0) as g:
        yield g


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 2), min_size=2, max_size=6), st.integers(0, 2), st.randoms(use_true_random=False))
def test_maj_at_k_invariant_under_rewrites_the_grader_judges_equal(grader, values, gold, rnd):
    """The real grader's equivalence: v, v/1-as-a-fraction, v.0, 2v/2 are one answer."""
    forms = [lambda v: str(v), lambda v: rf"\frac{{{2 * v}}}{{2}}", lambda v: f"{v}.0", lambda v: f"{v}/1"]
    plain = [str(v) for v in values]
    rewritten = [forms[rnd.randrange(len(forms))](v) for v in values]
    ok = [v == gold for v in values]
    before, after = grader.vote_labels([(plain, ok), (rewritten, ok)])
    assert before == after
    assert [maj_at_k(plain, ok, k, before) for k in range(1, len(values) + 1)] == [
        maj_at_k(rewritten, ok, k, after) for k in range(1, len(values) + 1)]


# --- normalization ----------------------------------------------------------------------------------

_TOKENS = list("0123456789.,-+eE%$ {}()^_/x") + ["\\%", "\\,", "\\!", "\\quad", "\\frac", "\\text{%}",
                                                  "\\dfrac", "\\left", "\\right", "\n"]
_LATEXISH = st.lists(st.sampled_from(_TOKENS), max_size=12).map("".join)
# answers as models write them: a number, then punctuation, spaces and percent signs
_ANSWERISH = st.tuples(st.from_regex(r"[-+]?[0-9]{1,3}(\.[0-9]{1,2})?([eE][-+]?[0-9])?", fullmatch=True),
                       st.lists(st.sampled_from([".", " ", "%", "\\%", "\\,", "\\quad", "\\!"]), max_size=4)
                       ).map(lambda t: t[0] + "".join(t[1]))


@settings(FAST, max_examples=200)  # pure string work: more examples, little cost
@given(_LATEXISH | _ANSWERISH)
def test_answer_normalization_is_idempotent(s):
    once = normalize_answer(s)
    assert normalize_answer(once) == once
    key = answer_key(s)
    assert key is None or answer_key(key) == key


# --- paired test ------------------------------------------------------------------------------------

_SCORES = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=24)


@FAST
@given(_SCORES, st.sampled_from(["bootstrap", "permutation"]), st.integers(0, 3))
def test_paired_test_is_symmetric(pairs, method, seed):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    d_ab, p_ab = paired_test(a, b, method=method, n_resamples=200, seed=seed)
    d_ba, p_ba = paired_test(b, a, method=method, n_resamples=200, seed=seed)
    assert d_ab == -d_ba and p_ab == p_ba
    assert 0.0 < p_ab <= 1.0
    assert d_ab == pytest.approx(float(np.mean(np.subtract(a, b))), abs=1e-12)


# --- boxes on nested braces -------------------------------------------------------------------------

_BRACED = st.recursive(st.text(alphabet="abc123+-=^_ ", max_size=5),
                       lambda inner: st.lists(inner, min_size=1, max_size=3).map(lambda xs: "{" + "".join(xs) + "}")
                       | st.tuples(inner, inner).map("".join), max_leaves=8)
_PLAIN = st.text(alphabet="xyz 0123456789.,=", max_size=20)


@FAST
@given(st.lists(_BRACED, min_size=1, max_size=3), _PLAIN, _PLAIN)
def test_last_boxed_on_nested_braces(contents, prefix, suffix):
    text = prefix + " so ".join(rf"\boxed{{{c}}}" for c in contents) + suffix
    assert last_boxed(text) == contents[-1]
    assert [c for _, _, c in find_boxes(text)] == contents
    assert final_statement_boxes(text)[-1] == contents[-1].strip()
    # a box left open at the end (a truncated generation) is no box
    assert final_statement_boxes(text + r" \boxed{" + contents[-1]) == []
