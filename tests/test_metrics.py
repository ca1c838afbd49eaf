"""Metrics against brute force and hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from harness.metrics import (
    answer_key,
    avg_at_n,
    bootstrap_ci,
    default_ks,
    macro_average,
    maj_at_k,
    mean_completion_length,
    paired_test,
    pass_at_k,
    per_problem_scores,
    summarize,
    truncation_rate,
    vote_labels,
)


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (c of them correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_enumeration_over_k_subsets():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(1, 13))
        c, k = int(rng.integers(0, n + 1)), int(rng.integers(1, n + 1))
        assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 3, 8) == 1.0
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)
    # large n stays finite and matches the exact rational 1 - C(n-c,k)/C(n,k)
    assert pass_at_k(1024, 3, 256) == pytest.approx(1 - math.comb(1021, 256) / math.comb(1024, 256), rel=1e-12)
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_avg_at_n_averages_every_sample_of_every_problem():
    # 1 of 4 and 3 of 4 correct: 0.5, not the first sample's 1.0 (a peer bug: first sample only)
    assert avg_at_n([[True, False, False, False], [False, True, True, True]]) == 0.5
    assert avg_at_n([[1, 1], [0, 0, 0, 1]]) == pytest.approx((1 + 0.25) / 2)  # per-problem, then mean
    with pytest.raises(ValueError):
        avg_at_n([])


def test_maj_at_k_votes_ties_and_missing_answers():
    answers = ["7", r"\dfrac{1}{2}", "\\frac{1}{2}", "7", None, "7"]
    ok = [False, True, True, False, False, False]
    assert vote_labels(answers, ok) == [0, 1, 1, 0, None, 0]
    assert maj_at_k(answers, ok, 1) == 0.0  # "7"
    assert maj_at_k(answers, ok, 2) == 0.0  # tie 7 vs 1/2: first seen (7) wins
    assert maj_at_k(answers, ok, 3) == 1.0  # \dfrac and \frac are one key: 2 votes to 1
    assert maj_at_k(answers, ok, 4) == 0.0  # 2 vs 2: 7 was seen first
    assert maj_at_k(answers, ok, 6) == 0.0  # 3 votes for 7; None does not vote
    assert maj_at_k([None, None, "3"], [False, False, True], 3) == 1.0  # missing answers never win
    assert maj_at_k([None, ""], [False, False], 2) == 0.0
    assert answer_key(r" \left( 1, 2 \right) .") == "(1,2)" and answer_key("  ") is None
    with pytest.raises(ValueError):
        maj_at_k(["1"], [True], 2)


def test_bootstrap_ci_cases():
    assert bootstrap_ci([1.0] * 20) == (1.0, 1.0)  # no variance, no width
    scores = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_ci(scores, n_boot=2000, seed=0)
    se = math.sqrt(0.3 * 0.7 / 100)  # the normal approximation: 0.3 +- 1.96 se
    assert lo == pytest.approx(0.3 - 1.96 * se, abs=0.02) and hi == pytest.approx(0.3 + 1.96 * se, abs=0.02)
    assert bootstrap_ci(scores, seed=1) == bootstrap_ci(scores, seed=1) != bootstrap_ci(scores, seed=2)
    lo90, hi90 = bootstrap_ci(scores, n_boot=2000, seed=0, alpha=0.1)
    assert lo < lo90 < hi90 < hi


def test_paired_test_exact_sign_flip_by_hand():
    # d = a - b = [3, -1, 1, 1], mean 1. Under the null, each sign is flipped independently: the
    # 16 sums of +-3 +-1 +-1 +-1 are +-6 (1 each), +-4 (3 each), +-2 (3 each), 0 (2).
    # |sum| >= 4 in 1+3+3+1 = 8 of 16 cases: p = 0.5.
    a, b = [3.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]
    assert paired_test(a, b, method="permutation") == (1.0, 0.5)
    # d = [1, 1, 1, 1]: only all-plus and all-minus reach |mean| 1: p = 2/16
    assert paired_test([1, 1, 1, 1], [0, 0, 0, 0], method="permutation") == (1.0, 0.125)
    # d = [1, 1, 1, 0]: the zero's sign does not matter, 2 of 8 sign vectors of the rest: p = 0.25
    assert paired_test([1, 1, 1, 1], [0, 0, 0, 1], method="permutation")[1] == pytest.approx(0.25)


def test_paired_test_identical_inputs_and_clear_differences():
    x = np.random.default_rng(0).random(40)
    for method in ("bootstrap", "permutation"):
        assert paired_test(x, x, method=method) == (0.0, 1.0)
    better = np.r_[np.ones(30), np.zeros(10)]
    worse = np.r_[np.zeros(30), np.zeros(10)]
    for method in ("bootstrap", "permutation"):
        diff, p = paired_test(better, worse, method=method, n_resamples=2000)
        assert diff == 0.75 and p < 0.01
    # noise only: the permutation p-value is not small and is reproducible by seed
    y = x + np.random.default_rng(1).normal(0, 0.01, 40)
    p1 = paired_test(x, y, method="permutation", seed=3)[1]
    assert p1 == paired_test(x, y, method="permutation", seed=3)[1] and p1 > 0.01
    with pytest.raises(ValueError):
        paired_test([1, 2], [1], method="bootstrap")
    with pytest.raises(ValueError):
        paired_test([1], [1], method="t")


def test_small_helpers():
    assert macro_average({"math500": 0.5, "aime24": 0.1}) == pytest.approx(0.3)
    assert truncation_rate(["stop", "length", "stop", "stop"]) == 0.25
    assert mean_completion_length([10, 20, 30]) == 20.0
    assert default_ks(1) == [1] and default_ks(8) == [1, 2, 4, 8] and default_ks(12) == [1, 2, 4, 8, 12]


def _rows(table):
    """table: problem_id -> list of (correct, extracted, finish_reason, tokens)."""
    return [dict(problem_id=pid, sample_index=i, correct=c, extracted=e, finish_reason=f, completion_tokens=t)
            for pid, samples in table.items() for i, (c, e, f, t) in enumerate(samples)]


def test_summarize_hand_made_evaluation():
    rows = _rows({
        "p1": [(True, "5", "stop", 10), (False, "4", "stop", 20), (True, "5", "stop", 30), (False, "4", "length", 40)],
        "p2": [(False, "1", "stop", 10), (False, None, "length", 50), (False, "2", "stop", 10),
               (False, "2", "stop", 10)],
        "p3": [(True, "9", "stop", 5), (True, "9", "stop", 5), (True, "9", "stop", 5), (True, "9", "stop", 5)],
    })
    s = summarize(rows[::-1], ks=[1, 2, 4, 8])  # row order must not matter; k=8 > n is dropped
    assert list(s) == ["n_problems", "n", "avg@n", "ci95", "pass@1", "pass@2", "pass@4", "maj@1", "maj@2",
                       "maj@4", "truncation_rate", "mean_tokens"]
    assert s["n_problems"] == 3 and s["n"] == 4
    assert s["avg@n"] == pytest.approx((0.5 + 0 + 1) / 3) == s["pass@1"]
    assert s["pass@2"] == pytest.approx((1 - 1 / 6 + 0 + 1) / 3)  # p1: 1 - C(2,2)/C(4,2)
    assert s["pass@4"] == pytest.approx(2 / 3)
    assert s["maj@4"] == pytest.approx(2 / 3)  # p1: tie 5 vs 4, "5" first; p2: "2"; p3: "9"
    assert s["truncation_rate"] == pytest.approx(2 / 12) and s["mean_tokens"] == pytest.approx(200 / 12)
    lo, hi = s["ci95"]
    assert 0 <= lo <= s["avg@n"] <= hi <= 1
    assert per_problem_scores(rows) == {"p1": 0.5, "p2": 0.0, "p3": 1.0}


def test_summarize_rejects_uneven_or_gappy_samples():
    rows = _rows({"p1": [(True, "1", "stop", 1)] * 2, "p2": [(True, "1", "stop", 1)] * 3})
    with pytest.raises(ValueError, match="'p1' has 2 samples|'p2' has 3 samples"):
        summarize(rows)
    rows = _rows({"p1": [(True, "1", "stop", 1)] * 3})
    rows[1]["sample_index"] = 5
    with pytest.raises(ValueError, match="'p1'.*sample_index"):
        summarize(rows)


def test_maj_at_k_three_equivalent_correct_answers_beat_two_identical_wrong_ones():
    # the case: by string, "1/2" (1 vote) ... lose to "7" (2 votes); all three equal the gold
    answers = ["7", r"\frac{1}{2}", "7", "0.5", "1/2"]
    ok = [False, True, False, True, True]
    assert vote_labels(answers, ok) == [0, 1, 0, 1, 1]
    assert maj_at_k(answers, ok, 5) == 1.0
    assert [maj_at_k(answers, ok, k) for k in (1, 2, 3, 4)] == [0.0, 0.0, 0.0, 0.0]  # 1:0, tie 1:1, 2:1, 2:2
    # the old string keys: 7 has 2 votes, every other key 1: wrong (planted: labels by answer_key alone)
    by_key = [{"7": 0, r"\frac{1}{2}": 1, "0.5": 2, "1/2": 3}[a] for a in answers]
    assert maj_at_k(answers, ok, 5, by_key) == 0.0


def test_maj_at_k_tie_goes_to_the_cluster_seen_first():
    assert maj_at_k(["3", "4"], [True, False], 2) == 1.0 and maj_at_k(["4", "3"], [False, True], 2) == 0.0
    # 2:2 between the correct cluster (first at index 1) and a wrong one (first at index 0): the wrong one
    assert maj_at_k(["9", "1", "9.0", "1.0"], [False, True, False, True], 4, [0, 1, 0, 1]) == 0.0


def test_vote_labels_with_an_equivalence_merges_wrong_answers():
    # two wrong answers written differently are one cluster under the grader's equivalence
    answers, ok = ["0.5", "7", r"\frac12", "7"], [False, True, False, True]
    same = lambda a, b: {a, b} == {"0.5", r"\frac12"}  # noqa: E731
    assert vote_labels(answers, ok) == [0, 1, 2, 1]
    assert vote_labels(answers, ok, same) == [0, 1, 0, 1]
    assert maj_at_k(answers + ["0.5"], ok + [False], 5, vote_labels(answers + ["0.5"], ok + [False], same)) == 0.0
    assert maj_at_k(answers + ["0.5"], ok + [False], 5) == 0.0  # 0.5 has 2 votes, 7 has 2: 0.5 first
    with pytest.raises(ValueError, match="one verdict per answer"):
        vote_labels(["1"], [True, False])
    with pytest.raises(ValueError, match="one label per answer"):
        maj_at_k(["1", "2"], [True, False], 1, [0])


def test_summarize_uses_the_clusterer_it_is_given():
    answers = ["0.5", "7", "7.0", r"\frac12", "1/2"]
    rows = _rows({"p1": [(a == "7" or a == "7.0", a, "stop", 1) for a in answers]})
    assert summarize(rows, ks=[5])["maj@5"] == 1.0  # keys: the correct cluster has 2 votes, each wrong key 1
    seen = []

    def clusterer(problems):  # stands for Grader.vote_labels: the three wrong answers are one value
        seen.append(problems)
        return [[0, 1, 1, 0, 0]]

    assert summarize(rows, ks=[5], vote_labels_of=clusterer)["maj@5"] == 0.0
    assert seen == [[(answers, [False, True, True, False, False])]]
