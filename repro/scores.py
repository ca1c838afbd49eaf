"""Scores and statistics from results.db: which runs a table shows, per-problem accuracy, rescue counts.

Every number a table prints starts here, recomputed from stored rows (per-problem accuracy from
`samples`, rescue statistics from the `train_steps` rows of the mining phase), so a table is a
pure function of the database. The table builders (repro/tables.py), the reference table and
the figures all read runs and scores through these functions.

    pick_runs(s, preset, prefer, notes)        method -> the run shown for it
    run_scores(s, run, benchmarks, protocol)   benchmark -> per-problem (n, correct) of its latest evaluation
    pass_at, ci95, paired_p, macro_weighted    the statistics of a score cell
    mining_stats, aggregate_rescue             zero-hit and rescue counts of a run's mining rounds
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session, sessionmaker

from harness.protocol import EvalProtocol
from harness.store import Evaluation, Revision, Run, Sample, TrainStep, config_hash, session_scope
from repro.catalog import ROW_ORDER
from repro.presets import Preset

ALPHA = 0.05  # a delta is marked `*` when the paired test's p-value is below this
PAIRED_METHOD = "permutation"  # sign-flip test over problems (exact up to 16 problems), harness.metrics.paired_test


# ---------------------------------------------------------------------------------------------
# per-problem scores
# ---------------------------------------------------------------------------------------------

@dataclass
class BenchScores:
    """One evaluation reduced to per-problem (n samples, c correct)."""

    evaluation_id: int
    counts: dict[str, tuple[int, int]]  # problem id -> (n, c)

    @property
    def scores(self) -> dict[str, float]:
        return {pid: c / n for pid, (n, c) in self.counts.items()}

    @property
    def n(self) -> int:
        return min(n for n, _ in self.counts.values())


def problem_counts(s: Session, evaluation_id: int) -> dict[str, tuple[int, int]]:
    q = (select(Sample.problem_id, func.count(), func.sum(cast(Sample.correct, Integer)))
         .where(Sample.evaluation_id == evaluation_id).group_by(Sample.problem_id))
    return {pid: (int(n), int(c or 0)) for pid, n, c in s.execute(q)}


ANY_LIMIT = object()  # run_scores/matches: any problem-set limit (the largest problem set is preferred)


@lru_cache(maxsize=1)
def current_grader() -> dict[str, Any]:
    """The identity of the protocol's grader: the default Grader under this code's policy version."""
    from harness.evaluate import grader_identity
    from harness.grading import Grader

    return grader_identity(Grader().settings())


def matches(ev: Evaluation, protocol: EvalProtocol | None, limit: Any = ANY_LIMIT) -> bool:
    """Same template, sampling, grader policy (and problem-set limit, when given) as the protocol.

    Keys an older evaluation did not store are not checked (rows without `identity` match on
    template and sampling only). A re-grade under another grader option, or an evaluation graded
    under an older GRADER_POLICY_VERSION, does not match: a table never mixes verdict policies."""
    if protocol is None:
        return True
    want = {"n": protocol.n_for(ev.benchmark), "temperature": protocol.temperature, "top_p": protocol.top_p,
            "max_tokens": protocol.max_tokens, "seed": protocol.seed}
    got = ev.sampling or {}
    if ev.template != protocol.template or any(got[k] != v for k, v in want.items() if k in got):
        return False
    ident = ev.identity or {}
    if "grader" in ident and ident["grader"] != current_grader():
        return False
    return limit is ANY_LIMIT or "problem_set" not in ident or ident["problem_set"].get("limit") == limit


def evaluated_runs(s: Session) -> set[int]:
    return set(s.scalars(select(Evaluation.run_id).where(Evaluation.status == "finished")))


def _preference(ev: Evaluation) -> tuple:
    """Which of several matching evaluations a table shows: the larger problem set, an original over
    a re-grade (same verdict policy: same numbers), then the latest."""
    return (ev.n_problems or 0, ev.regraded_from is None, ev.finished_at or ev.started_at, ev.id)


def run_scores(s: Session, run: Run, benchmarks: Sequence[str] | None, protocol: EvalProtocol | None,
               notes: list[str], limit: Any = ANY_LIMIT) -> dict[str, BenchScores]:
    """benchmark -> scores of the run's preferred finished evaluation under `protocol` (see `_preference`).

    Skipped evaluations with another problem set, and scores taken from a re-grade, go to `notes`."""
    evs = s.scalars(select(Evaluation).where(Evaluation.run_id == run.id, Evaluation.status == "finished")
                    .order_by(Evaluation.id)).all()
    chosen: dict[str, Evaluation] = {}
    for ev in evs:
        if (benchmarks is None or ev.benchmark in benchmarks) and matches(ev, protocol, limit):
            if ev.benchmark not in chosen or _preference(ev) > _preference(chosen[ev.benchmark]):
                chosen[ev.benchmark] = ev
    out: dict[str, BenchScores] = {}
    for b, ev in chosen.items():
        smaller = [o.id for o in evs if o.benchmark == b and o is not ev and matches(o, protocol, limit)
                   and (o.n_problems or 0) < (ev.n_problems or 0)]
        if smaller:
            notes.append(f"run #{run.id} {b}: showing evaluation #{ev.id} ({ev.n_problems} problems); "
                         f"smaller problem sets not shown: " + ", ".join(f"#{i}" for i in smaller))
        if ev.regraded_from is not None:
            notes.append(f"run #{run.id} {b}: scores from re-grade #{ev.id} of evaluation #{ev.regraded_from}")
        counts = problem_counts(s, ev.id)
        if counts:
            out[b] = BenchScores(ev.id, counts)
    return out


def pass_at(counts: dict[str, tuple[int, int]], k: int) -> float | None:
    from harness.metrics import pass_at_k

    if any(n < k for n, _ in counts.values()):
        return None
    return float(np.mean([pass_at_k(n, c, k) for n, c in counts.values()]))


def ci95(scores: Sequence[float]) -> tuple[float, float]:
    from harness.metrics import bootstrap_ci

    lo, hi = bootstrap_ci(list(scores))
    return float(lo), float(hi)


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    from harness.metrics import paired_test

    return float(paired_test(list(a), list(b), method=PAIRED_METHOD)[1])


def macro_weighted(per_bench: dict[str, dict[str, float]]) -> dict[tuple[str, str], float]:
    """Per-problem scores rescaled so that their plain mean is the macro average over benchmarks.

    Score x of a problem in benchmark b becomes x * N / (B * n_b); the bootstrap CI and the paired
    test of the average column then run on one vector, with each benchmark weighted equally."""
    total, nb = sum(len(v) for v in per_bench.values()), len(per_bench)
    return {(b, pid): x * total / (nb * len(v)) for b, v in per_bench.items() for pid, x in v.items()}


# ---------------------------------------------------------------------------------------------
# which runs
# ---------------------------------------------------------------------------------------------

def pick_runs(s: Session, preset: str, prefer: dict[str, str] | None, notes: list[str],
              usable: set[int] | None = None) -> dict[str, Run]:
    """method -> the run shown for it: the preferred config hash if finished, else the latest finished.

    `usable`: ids of the runs that have what the table needs (evaluations, mining rows); others are skipped."""
    runs = s.scalars(select(Run).where(Run.preset == preset).order_by(Run.finished_at, Run.id)).all()
    if usable is not None:
        runs = [r for r in runs if r.id in usable or r.status != "finished"]
    chosen: dict[str, Run] = {}
    for method in sorted({r.method for r in runs}, key=method_key):
        mine = [r for r in runs if r.method == method]
        done = [r for r in mine if r.status == "finished"]
        bad = [r for r in mine if r.status != "finished"]
        if bad:
            notes.append(f"{method}: excluded {len(bad)} run(s) not finished: " + "; ".join(
                f"#{r.id} {r.status}" + (f" ({_short(r.error)})" if r.error else "") for r in bad))
        if not done:
            continue
        want = (prefer or {}).get(method)
        hit = [r for r in done if r.config_hash == want]
        chosen[method] = hit[-1] if hit else done[-1]
        if len(done) > 1:
            why = "the preset's config" if hit else "the latest finished"
            notes.append(f"{method}: {len(done)} finished runs with different configs; showing run "
                         f"#{chosen[method].id} ({why}), others: "
                         + ", ".join(f"#{r.id}" for r in done if r is not chosen[method]))
    return chosen


def method_key(method: str) -> tuple[int, str]:
    return (ROW_ORDER.index(method) if method in ROW_ORDER else len(ROW_ORDER), method)


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------------------------------
# rescue: zero-hit prompts and what each method recovers from them
# ---------------------------------------------------------------------------------------------

MINING_PHASE = "mining"  # train_steps rows written by methods/latentrevise/mining.py:log_rescue
RESCUE_KEY = "rescue"  # train_steps.extra[RESCUE_KEY] = mining.rescue_stats(...) of that mining round
RESCUE_FIELDS = ("source", "n_prompts", "n_zero_hit", "n_rescued", "n_rescued_clean", "fte_total", "n_trajectories",
                 "len_before", "len_after", "markers_before", "markers_after", "wall_s")


def mining_stats(s: Session, run: Run) -> list[dict[str, Any]]:
    """The rescue statistics of each mining round of `run`; a loud error when a method did not log them."""
    rows = s.scalars(select(TrainStep).where(TrainStep.run_id == run.id, TrainStep.phase == MINING_PHASE)
                     .order_by(TrainStep.step)).all()
    if not rows:
        raise KeyError(f"run #{run.id} ({run.method}) has no train_steps rows with phase={MINING_PHASE!r}: the rescue "
                       f"table needs ctx.log_step(step, phase={MINING_PHASE!r}, zero_hit_ids=..., {RESCUE_KEY}="
                       "rescue_stats(...)) (methods/latentrevise/mining.py:log_rescue)")
    out = []
    for r in rows:
        stats = (r.extra or {}).get(RESCUE_KEY)
        missing = [k for k in RESCUE_FIELDS if k not in (stats or {})]
        if missing:
            raise KeyError(f"run #{run.id} ({run.method}) mining step {r.step}: train_steps.extra[{RESCUE_KEY!r}] "
                           f"lacks {', '.join(missing)} (written by methods/latentrevise/mining.py:rescue_stats)")
        out.append(stats)
    return out


def aggregate_rescue(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mining rounds (one per GRPO step for online mining) -> one set of numbers; means weighted by counts."""
    def wmean(key: str, weight: str) -> float | None:
        w = sum(r[weight] for r in rounds)
        return sum(r[key] * r[weight] for r in rounds) / w if w else None

    def markers(key: str, weight: str) -> float | None:
        w = sum(r[weight] for r in rounds)
        return sum(sum(r[key].values()) * r[weight] for r in rounds) / w if w else None

    zh, res = sum(r["n_zero_hit"] for r in rounds), sum(r["n_rescued"] for r in rounds)
    fte = sum(r["fte_total"] for r in rounds)
    return {"source": rounds[0]["source"], "rounds": len(rounds), "prompts": sum(r["n_prompts"] for r in rounds),
            "zero_hit": zh, "rescued": res, "rescued_clean": sum(r["n_rescued_clean"] for r in rounds),
            "rate": res / zh if zh else None, "fte": fte, "fte_per_rescued": fte / res if res else None,
            "fte_per_zero_hit": fte / zh if zh else None, "wall_s": sum(r["wall_s"] for r in rounds),
            "len_before": wmean("len_before", "n_zero_hit"), "len_after": wmean("len_after", "n_trajectories"),
            "markers_before": markers("markers_before", "n_zero_hit"),
            "markers_after": markers("markers_after", "n_trajectories")}


def rescue_runs(s: Session, preset: str, methods: Sequence[str] | None, notes: list[str],
                prefer: dict[str, str] | None = None) -> dict[str, Run]:
    """method -> its run: every method that did mining on the preset, plus `methods` (which must have)."""
    mined = set(s.scalars(select(TrainStep.run_id).where(TrainStep.phase == MINING_PHASE)))
    chosen = pick_runs(s, preset, prefer, notes, mined)
    for m, r in pick_runs(s, preset, prefer, [], None).items():
        if m in (methods or ()) and m not in chosen:
            chosen[m] = r  # a method that should have mined but did not: mining_stats says so, loudly
    return dict(sorted(chosen.items(), key=lambda kv: method_key(kv[0])))


def rescue_points(factory: sessionmaker[Session], preset: Preset) -> list[dict[str, Any]]:
    """One point per finished mining run on the preset: compute per zero-hit prompt vs rescue rate (plots)."""
    out = []
    with session_scope(factory) as s:
        mined = set(s.scalars(select(TrainStep.run_id).where(TrainStep.phase == MINING_PHASE)))
        runs = s.scalars(select(Run).where(Run.preset == preset.name, Run.status == "finished",
                                           Run.id.in_(mined))).all()
        for r in runs:
            a = aggregate_rescue(mining_stats(s, r))
            if a["rate"] is not None:
                cfg = dict(r.config.get("method_config") or {})
                k = cfg.pop("fw_steps", None)
                out.append({"method": r.method, "source": a["source"], "run": r.id, "fte": a["fte_per_zero_hit"],
                            "rate": a["rate"], "fw_steps": k, "family": config_hash(cfg)})  # same config but K
    return out


# ---------------------------------------------------------------------------------------------
# the runs and revision statistics of the leaderboard and the ablation tables
# ---------------------------------------------------------------------------------------------

def latest_runs(s: Session) -> dict[tuple[str, str, str], Run]:
    """(method, model, preset) -> its latest finished run that has a finished evaluation."""
    runs = s.scalars(select(Run).where(Run.status == "finished", Run.id.in_(evaluated_runs(s)))
                     .order_by(Run.finished_at, Run.id)).all()
    latest: dict[tuple[str, str, str], Run] = {}
    for r in runs:
        latest[(r.method, r.model, r.preset)] = r
    return latest


def finished_run(s: Session, method: str, wanted_hash: str) -> Run | None:
    return s.scalars(select(Run).where(Run.method == method, Run.config_hash == wanted_hash,
                                       Run.status == "finished")).first()


def revision_means(s: Session, run: Run) -> tuple[float | None, float | None]:
    """(mean prefix length L, share of revisions flagged as leaking the answer) over the run's revisions."""
    mean_len, leak = s.execute(select(func.avg(Revision.prefix_len), func.avg(cast(Revision.leakage, Integer)))
                               .where(Revision.run_id == run.id)).one()
    return mean_len, leak
