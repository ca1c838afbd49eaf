r"""Evaluation metrics: pure functions over graded samples (numpy only, no database, no grader).

Notation: a benchmark has P problems, each sampled n times; c of a problem's n samples are correct.

- avg@n    = mean over problems of c/n (the expected accuracy of one sample; avg@1 with n=1).
- pass@k   = mean over problems of 1 - C(n-c, k) / C(n, k), the unbiased estimator of Chen et al.
             2021 ("Evaluating Large Language Models Trained on Code", eq. 1), k <= n, computed as
             1 - prod_{i=n-c+1}^{n} (1 - k/i) to avoid huge binomials.
- maj@k    = mean over problems of [the majority cluster of samples 0..k-1 is correct]. Votes go to
             clusters of equivalent answers (`vote_labels`): every sample graded correct is in one
             cluster (each equals the gold under the grader); an incorrect answer joins the cluster of
             the first earlier incorrect answer it is equivalent to, else opens a new one. Equivalence
             is the grader's own (`Grader.vote_labels`, in its worker processes, under its time limit)
             or, without a grader, equal `answer_key`s (a light string normalization). A correct and an
             incorrect answer never share a cluster, so the winner's verdict is unambiguous. Samples
             without an answer do not vote; ties go to the cluster whose first sample comes first.
             Labels of samples 0..k-1 depend on those samples only, so maj@k of a prefix is exact.
- ci95     = percentile bootstrap over problems of the per-problem c/n (resampling problems, not
             samples: problems are the unit the benchmark samples from).
- paired_test(a, b): per-problem paired scores of two models on the same problems; two-sided
             p-value of "mean difference = 0", by a centered paired bootstrap or a sign-flip
             permutation test (exact over all 2^P sign vectors when P <= 16).

Mistakes seen in peer harnesses that we must not copy:
- reporting only the first sample when n > 1 (avg@n must average all n samples of every problem);
- seeding from the wall clock (bootstrap and permutation draws take an explicit seed, default 0,
  so that every printed number is reproducible);
- a "best@N" that draws k of the n samples WITH replacement and reports whether any is correct: that
  estimator of pass@k is biased (it repeats samples), the combinatorial estimator above is not.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct out of n samples: 1 - C(n-c,k)/C(n,k)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def avg_at_n(correct_matrix: Sequence[Sequence[bool]]) -> float:
    """Mean over problems of each problem's fraction of correct samples (rows may differ in length)."""
    rows = [np.asarray(r, dtype=float) for r in correct_matrix]
    if not rows or any(r.size == 0 for r in rows):
        raise ValueError("avg_at_n needs at least one problem and one sample per problem")
    return float(np.mean([r.mean() for r in rows]))


def answer_key(answer: str | None) -> str | None:
    r"""A string key for voting: drops spacing, `$`, `\left`/`\right`, `\!`, `\,`, a trailing period,
    and maps `\dfrac`/`\tfrac` to `\frac`; None or empty means "no answer"."""
    if answer is None:
        return None
    s = re.sub(r"\\left|\\right|\\[!,;: ]|\\quad|\$|\s+", "", answer)
    s = re.sub(r"\\[dt]frac", r"\\frac", s).rstrip(".")
    return s or None


def vote_labels(answers: Sequence[str | None], golds_ok: Sequence[bool],
                same: Callable[[str, str], bool] | None = None) -> list[int | None]:
    """A cluster label per sample for voting (see the module docstring); None: no answer, no vote.

    `same(a, b)`: are two incorrect answers equivalent (default: equal `answer_key`s). Labels are
    numbered in order of first appearance; every correct sample gets the label of the first one."""
    if len(answers) != len(golds_ok):
        raise ValueError(f"vote_labels needs one verdict per answer, got {len(answers)} answers, "
                         f"{len(golds_ok)} verdicts")
    labels: list[int | None] = []
    correct_label: int | None = None
    leaders: list[tuple[int, str]] = []  # (label, answer) of each incorrect cluster's first sample
    n_labels = 0
    for answer, ok in zip(answers, golds_ok):
        key = answer_key(answer)
        if key is None:
            labels.append(None)
            continue
        if ok:
            if correct_label is None:
                correct_label, n_labels = n_labels, n_labels + 1
            labels.append(correct_label)
            continue
        match = next((lab for lab, lead in leaders
                      if answer_key(lead) == key or (same is not None and same(lead, answer))), None)
        if match is None:
            match, n_labels = n_labels, n_labels + 1
            leaders.append((match, answer))  # type: ignore[arg-type]
        labels.append(match)
    return labels


def maj_at_k(answers: Sequence[str | None], golds_ok: Sequence[bool], k: int,
             labels: Sequence[int | None] | None = None) -> float:
    """1.0 if the majority cluster among the first k samples of one problem is correct, else 0.0.

    labels: the samples' clusters (`vote_labels`, or a grader's); default: `vote_labels(answers, golds_ok)`."""
    if not 1 <= k <= len(answers) or len(answers) != len(golds_ok):
        raise ValueError(f"maj_at_k needs 1 <= k <= len(answers) == len(golds_ok), got k={k}, "
                         f"{len(answers)} answers, {len(golds_ok)} verdicts")
    labels = list(labels) if labels is not None else vote_labels(answers, golds_ok)
    if len(labels) != len(answers):
        raise ValueError(f"maj_at_k needs one label per answer, got {len(labels)} labels, {len(answers)} answers")
    counts: dict[int, int] = {}
    first_ok: dict[int, bool] = {}
    for label, ok in zip(labels[:k], golds_ok[:k]):
        if label is None:
            continue
        counts[label] = counts.get(label, 0) + 1
        first_ok.setdefault(label, bool(ok))
    if not counts:
        return 0.0
    winner = max(counts, key=counts.get)  # max keeps the first of equal counts: first-appearance order
    return float(first_ok[winner])


def bootstrap_ci(per_problem_scores: Sequence[float], n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the mean, resampling problems."""
    x = np.asarray(per_problem_scores, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one score")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def macro_average(scores: Mapping[str, float]) -> float:
    """Unweighted mean over benchmarks (each benchmark counts once, whatever its size)."""
    if not scores:
        raise ValueError("macro_average needs at least one score")
    return float(np.mean(list(scores.values())))


def truncation_rate(finish_reasons: Sequence[str]) -> float:
    """Fraction of samples that stopped at the token limit (finish_reason == "length")."""
    return float(np.mean([r == "length" for r in finish_reasons])) if finish_reasons else 0.0


def mean_completion_length(completion_tokens: Sequence[int]) -> float:
    return float(np.mean(completion_tokens)) if completion_tokens else 0.0


def paired_test(a: Sequence[float], b: Sequence[float], method: str = "bootstrap",
                n_resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """(mean(a - b), two-sided p-value of a zero mean difference) for per-problem paired scores.

    bootstrap: resample problems from the differences re-centred to mean 0 (the null), p = share of
      resampled means at least as far from 0 as the observed one, (count + 1) / (n_resamples + 1).
    permutation: sign-flip test (under the null each difference is as likely negated); exact over all
      2^P sign vectors when P <= 16, else n_resamples random sign vectors with the +1 correction.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.ndim != 1 or d.size == 0 or len(a) != len(b):
        raise ValueError(f"paired_test needs two equal-length, non-empty score lists ({len(a)} vs {len(b)})")
    observed = float(d.mean())
    tol = 1e-12 * max(1.0, abs(observed))
    rng = np.random.default_rng(seed)
    if method == "bootstrap":
        centred = d - observed
        means = centred[rng.integers(0, d.size, size=(n_resamples, d.size))].mean(axis=1)
        p = (np.sum(np.abs(means) >= abs(observed) - tol) + 1) / (n_resamples + 1)
    elif method == "permutation":
        if d.size <= 16:
            signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
            p = np.mean(np.abs(signs @ d / d.size) >= abs(observed) - tol)
        else:
            signs = rng.choice((1.0, -1.0), size=(n_resamples, d.size))
            p = (np.sum(np.abs(signs @ d / d.size) >= abs(observed) - tol) + 1) / (n_resamples + 1)
    else:
        raise ValueError(f"method must be 'bootstrap' or 'permutation', got {method!r}")
    return observed, float(min(1.0, p))


def _get(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def group_samples(samples: Iterable[Any]) -> dict[str, list[Any]]:
    """Rows (dicts or ORM objects) by problem_id, each list in sample_index order; every problem
    must have the same sample indices 0..n-1."""
    by_problem: dict[str, list[Any]] = defaultdict(list)
    for row in samples:
        by_problem[str(_get(row, "problem_id"))].append(row)
    if not by_problem:
        raise ValueError("no samples")
    n = None
    for pid, rows in by_problem.items():
        rows.sort(key=lambda r: _get(r, "sample_index"))
        indices = [_get(r, "sample_index") for r in rows]
        if indices != list(range(len(rows))):
            raise ValueError(f"problem {pid!r}: sample_index must be 0..n-1 without gaps or repeats, "
                             f"got {indices[:10]}")
        if n is not None and len(rows) != n:
            raise ValueError(f"problem {pid!r} has {len(rows)} samples, others have {n}")
        n = len(rows)
    return dict(by_problem)


def per_problem_scores(samples: Iterable[Any]) -> dict[str, float]:
    """problem_id -> fraction of its samples graded correct (the input of paired_test)."""
    return {pid: float(np.mean([bool(_get(r, "correct")) for r in rows]))
            for pid, rows in group_samples(samples).items()}


def default_ks(n: int) -> list[int]:
    """Powers of two up to n, and n itself."""
    return sorted({2**i for i in range(int(math.log2(n)) + 1)} | {n})


VoteClusterer = Callable[[Sequence[tuple[Sequence[str | None], Sequence[bool]]]], list[list[int | None]]]


def summarize(samples: Iterable[Any], ks: Sequence[int] | None = None, n_boot: int = 1000,
              seed: int = 0, vote_labels_of: VoteClusterer | None = None) -> dict[str, Any]:
    """Metrics of one evaluation from its sample rows (problem_id, sample_index, correct, extracted,
    finish_reason, completion_tokens). Keys are stable (tables read them): n_problems, n, avg@n,
    ci95 [lo, hi], pass@{k} and maj@{k} for every k in ks with k <= n, truncation_rate, mean_tokens.

    vote_labels_of: [(answers, verdicts)] per problem -> cluster labels per problem (a grader's
    `vote_labels`, its equivalence); default: `vote_labels` by answer key."""
    groups = group_samples(samples)
    n = len(next(iter(groups.values())))
    ks = [k for k in (ks or default_ks(n)) if 1 <= k <= n]
    correct = {pid: [bool(_get(r, "correct")) for r in rows] for pid, rows in groups.items()}
    scores = [float(np.mean(c)) for c in correct.values()]
    rows = [r for rs in groups.values() for r in rs]
    out: dict[str, Any] = {
        "n_problems": len(groups),
        "n": n,
        "avg@n": float(np.mean(scores)),
        "ci95": list(bootstrap_ci(scores, n_boot=n_boot, seed=seed)),
    }
    for k in ks:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, sum(c), k) for c in correct.values()]))
    answers = {pid: [_get(r, "extracted") for r in groups[pid]] for pid in correct}
    inputs = [(answers[pid], c) for pid, c in correct.items()]
    labels = vote_labels_of(inputs) if vote_labels_of is not None else [vote_labels(a, c) for a, c in inputs]
    for k in ks:
        out[f"maj@{k}"] = float(np.mean([maj_at_k(a, c, k, lab) for (a, c), lab in zip(inputs, labels)]))
    out["truncation_rate"] = truncation_rate([_get(r, "finish_reason") for r in rows])
    out["mean_tokens"] = mean_completion_length([_get(r, "completion_tokens") for r in rows])
    return out
