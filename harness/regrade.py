"""Re-grade stored samples under the current (or a chosen) grader policy, without regenerating.

    regrade(factory, evaluation_id, grader)   -> {"evaluation_id", "metrics", "reused", "changed"}
    regrade_run(factory, run_id, grader)      -> {old evaluation id: that result}

A re-grade is a NEW evaluation row of the same run and benchmark, linked to the one it re-grades
(`evaluations.regraded_from`), with the same samples (prompt, completion, tokens, finish reason)
and fresh verdicts (extracted, correct, grading_ms, grading_error). Its identity is the old one
with the grader part replaced and `regraded_from` added, so re-grading twice under one policy
reuses the first re-grade, and the original is never overwritten: `show` and the tables can put
both side by side (repro.scores prefers an original over a re-grade with the same policy, and never
shows a re-grade under another policy as the protocol's number). No engine is started: completions
come from results.db. Samples whose prompt did not fit the context stay incorrect, ungraded.
"""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from .evaluate import TOO_LONG, grader_identity, identity_hash, store_samples, summarize_rows
from .store import Evaluation, Sample, session_scope, utcnow

SAMPLE_COPY = ("problem_id", "sample_index", "prompt", "completion", "gold", "prompt_tokens", "completion_tokens",
               "finish_reason")


class RegradeError(ValueError):
    """An evaluation that cannot be re-graded (missing, unfinished), in one line."""


def regrade_identity(ev: Evaluation, settings: dict[str, Any]) -> dict[str, Any]:
    """The old identity (rows from before identities: their hash and sampling), new grader, the link."""
    old = dict(ev.identity or {"legacy_eval_hash": ev.eval_hash, "benchmark": ev.benchmark,
                               "template": ev.template, "sampling": ev.sampling})
    return {**old, "grader": grader_identity(settings), "regraded_from": ev.id}


def _pass_ks(metrics: dict[str, Any] | None) -> tuple[int, ...]:
    """The pass@k values the original evaluation reported (so both rows have the same columns)."""
    ks = sorted({int(m.group(1)) for k in (metrics or {}) if (m := re.fullmatch(r"pass@(\d+)", k))})
    return tuple(ks) or (1,)


def regrade(factory: sessionmaker[Session], evaluation_id: int, grader) -> dict[str, Any]:
    """Re-grade one finished evaluation's samples into a new (or the matching earlier) re-grade row."""
    t0 = time.perf_counter()
    settings = grader.settings()
    with session_scope(factory) as s:
        old = s.get(Evaluation, evaluation_id)
        if old is None:
            raise RegradeError(f"no evaluation {evaluation_id} in this database")
        if old.status != "finished":
            raise RegradeError(f"evaluation {evaluation_id} is {old.status}; finish it (rerun the same eval) first")
        identity = regrade_identity(old, settings)
        eval_hash = identity_hash(identity)
        ev = s.scalars(select(Evaluation).where(Evaluation.run_id == old.run_id, Evaluation.benchmark == old.benchmark,
                                                Evaluation.eval_hash == eval_hash)).first()
        if ev is not None and ev.status == "finished":
            return {"evaluation_id": ev.id, "metrics": ev.metrics, "reused": True, "changed": None}
        if ev is None:
            ev = Evaluation(run_id=old.run_id, benchmark=old.benchmark, template=old.template, sampling=old.sampling,
                            grader=settings, eval_hash=eval_hash, n_problems=old.n_problems, identity=identity,
                            regraded_from=old.id)
            s.add(ev)
        ev.status, ev.started_at = "running", utcnow()
        s.flush()
        new_id, ks = ev.id, _pass_ks(old.metrics)
        s.execute(delete(Sample).where(Sample.evaluation_id == new_id))  # an interrupted re-grade starts over
        rows = s.scalars(select(Sample).where(Sample.evaluation_id == evaluation_id)
                         .order_by(Sample.problem_id, Sample.sample_index)).all()
        stored = [({k: getattr(r, k) for k in SAMPLE_COPY}, bool(r.correct)) for r in rows]
    samples, changed = _regraded_samples(new_id, stored, grader)
    store_samples(factory, samples)
    metrics = summarize_rows([{"problem_id": x.problem_id, "sample_index": x.sample_index, "correct": x.correct,
                               "extracted": x.extracted, "completion_tokens": x.completion_tokens,
                               "finish_reason": x.finish_reason} for x in samples], ks=ks,
                           vote_labels_of=getattr(grader, "vote_labels", None))
    metrics["regrade"] = {"from": evaluation_id, "changed": changed, "samples": len(samples),
                          "wall_s": round(time.perf_counter() - t0, 4)}
    with session_scope(factory) as s:
        ev = s.get(Evaluation, new_id)
        ev.metrics, ev.status, ev.finished_at = metrics, "finished", utcnow()
        ev.wall_s = time.perf_counter() - t0
    return {"evaluation_id": new_id, "metrics": metrics, "reused": False, "changed": changed}


def _regraded_samples(eval_id: int, stored: list[tuple[dict[str, Any], bool]], grader) -> tuple[list[Sample], int]:
    """New sample rows with fresh verdicts, and how many verdicts differ from the stored ones."""
    graded = [i for i, (row, _) in enumerate(stored) if row["finish_reason"] != TOO_LONG]
    verdicts = dict(zip(graded, grader.grade([(stored[i][0]["completion"], stored[i][0]["gold"]) for i in graded])
                        if graded else []))
    samples, changed = [], 0
    for i, (row, was) in enumerate(stored):
        v = verdicts.get(i)
        correct = bool(v.correct) if v else False
        changed += correct != was
        samples.append(Sample(evaluation_id=eval_id, **row, extracted=v.extracted if v else None, correct=correct,
                              grading_ms=float(v.ms) if v else 0.0,
                              grading_error=(v.error[:256] if v.error else None) if v
                              else "prompt exceeds the model's context"))
    return samples, changed


def regrade_run(factory: sessionmaker[Session], run_id: int, grader) -> dict[int, dict[str, Any]]:
    """Re-grade every finished original (not itself a re-grade) evaluation of a run: {old id: result}."""
    with session_scope(factory) as s:
        ids = list(s.scalars(select(Evaluation.id).where(Evaluation.run_id == run_id, Evaluation.status == "finished",
                                                         Evaluation.regraded_from.is_(None)).order_by(Evaluation.id)))
    if not ids:
        raise RegradeError(f"run {run_id} has no finished evaluation to re-grade")
    return {i: regrade(factory, i, grader) for i in ids}
