"""`compare RUN_A RUN_B`: the per-benchmark paired comparison of any two runs, from results.db alone.

    table = compare_runs(factory, 3, 5)            # A - B per benchmark and on the macro average

Each benchmark both runs were evaluated on gives one row: A's and B's accuracy over the problems
both evaluations hold (the count is shown), Δ = A - B and the same two-sided paired test over
problems as the main table's Δ (repro/scores.py: paired_p), so comparing a main-table row with
its baseline's run reproduces that row's Δ and p. Two evaluations under different protocols
(template, sampling, grader policy) measure different things: `ProtocolMismatch` names the
fields that differ unless `allow_mismatch`, and the table then says so in a note.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from harness.evaluate import RUNTIME_GRADER_KEYS
from harness.store import Evaluation, Run, session_scope
from repro.render import Cell, TableData, format_pct
from repro.scores import ALPHA, PAIRED_METHOD, BenchScores, macro_weighted, paired_p, run_scores

RUNTIME_KEYS = RUNTIME_GRADER_KEYS | {"timeout_clock"}  # the clock follows the worker count: how, not what


class ProtocolMismatch(ValueError):
    """Two runs evaluated under different protocols; the message names each differing field."""


def protocol_of(ev: Evaluation) -> dict[str, Any]:
    """The fields that make an evaluation's numbers comparable: template, sampling, grader policy (how the grader
    runs, e.g. its worker count, is not part of it: harness/evaluate.py RUNTIME_GRADER_KEYS)."""
    out: dict[str, Any] = {"template": ev.template}
    out |= {f"sampling.{k}": v for k, v in sorted((ev.sampling or {}).items())}
    out |= {f"grader.{k}": v for k, v in sorted((ev.grader or {}).items()) if k not in RUNTIME_KEYS}
    return out


def protocol_differences(a: Evaluation, b: Evaluation) -> list[str]:
    """`field: A's value vs B's` for every protocol field that differs."""
    pa, pb = protocol_of(a), protocol_of(b)
    return [f"{k}: {pa.get(k)!r} vs {pb.get(k)!r}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]


def paired_cell(a: dict[str, float], b: dict[str, float]) -> Cell:
    """Δ = mean(a) - mean(b) over the keys both hold, with the paired p-value (the main table's test)."""
    common = sorted(set(a) & set(b))
    xa, xb = [a[k] for k in common], [b[k] for k in common]
    delta, p = float(np.mean(xa) - np.mean(xb)), paired_p(xa, xb)
    text = (f"{round(100 * delta, 1) + 0.0:+.1f}{'*' if p < ALPHA else ''} "
            + (f"(p={p:.2g})" if p >= 1e-4 else "(p<1e-4)"))
    return Cell(text, {"delta": delta, "p": p, "n_paired": len(common)})


def _row(bench: str, a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    common = sorted(set(a) & set(b))
    mean_a, mean_b = float(np.mean([a[k] for k in common])), float(np.mean([b[k] for k in common]))
    return {"benchmark": bench, "problems": len(common), "A": Cell(format_pct(mean_a), {"avg": mean_a}),
            "B": Cell(format_pct(mean_b), {"avg": mean_b}), "Δ A-B": paired_cell(a, b)}


def compare_runs(factory: sessionmaker[Session], run_a: int, run_b: int, order: Sequence[str] | None = None,
                 allow_mismatch: bool = False) -> TableData:
    """One row per benchmark both runs were evaluated on (in `order`, then the rest), and the macro average."""
    notes: list[str] = []
    with session_scope(factory) as s:
        runs = [s.get(Run, i) for i in (run_a, run_b)]
        for i, r in zip((run_a, run_b), runs):
            if r is None:
                raise KeyError(f"no run {i}")
        sa, sb = (run_scores(s, r, None, None, notes) for r in runs)
        benches = sorted(set(sa) & set(sb), key=lambda b: (list(order or []).index(b) if b in (order or []) else
                                                         len(order or []), b))
        diffs = [f"{b}: {d}" for b in benches
                 for d in protocol_differences(s.get(Evaluation, sa[b].evaluation_id),
                                               s.get(Evaluation, sb[b].evaluation_id))]
        labels = [f"#{r.id} {r.method} ({r.preset})" for r in runs]
    if diffs and not allow_mismatch:
        raise ProtocolMismatch(f"runs {run_a} and {run_b} were evaluated under different protocols ("
                               + "; ".join(diffs) + "); pass --allow-protocol-mismatch to compare anyway")
    rows = [_row(b, sa[b].scores, sb[b].scores) for b in benches]
    if len(benches) > 1:
        rows.append(_average_row(benches, sa, sb))
    notes += [f"A = {labels[0]}, B = {labels[1]}; accuracy (avg@n, %) over the problems both evaluations hold",
              f"Δ A-B in points; two-sided paired {PAIRED_METHOD} test over problems; * p<{ALPHA}",
              "average: macro mean over the benchmarks shown (problems reweighted so each counts equally)"]
    notes += [f"protocols differ (compared anyway): {d}" for d in diffs]
    only = sorted(set(sa) ^ set(sb))
    notes += [f"evaluated for one run only, not compared: {', '.join(only)}"] if only else []
    return TableData(f"compare run {labels[0]} with run {labels[1]}", ["benchmark", "problems", "A", "B", "Δ A-B"],
                     rows, notes)


def _average_row(benches: Sequence[str], sa: dict[str, BenchScores], sb: dict[str, BenchScores]) -> dict[str, Any]:
    """The macro average over `benches`, paired over each benchmark's common problems."""
    def common(x: BenchScores, y: BenchScores) -> dict[str, float]:
        return {p: v for p, v in x.scores.items() if p in y.scores}

    wa = macro_weighted({b: common(sa[b], sb[b]) for b in benches})
    wb = macro_weighted({b: common(sb[b], sa[b]) for b in benches})
    row = _row("average", {f"{b}/{p}": v for (b, p), v in wa.items()}, {f"{b}/{p}": v for (b, p), v in wb.items()})
    return row
