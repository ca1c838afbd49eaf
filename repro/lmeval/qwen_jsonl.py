"""A peer's stored outputs, re-scored by our grader: Qwen2.5-Math evaluation's output JSON Lines.

QwenLM/Qwen2.5-Math `evaluation/math_eval.py` (commit a45202b) writes one record per problem with
`idx`, `question`, `gt` (its parsed gold), `code` (the n completions, stop words cut and stripped),
`pred` (its extracted answer per completion) and, after `evaluation/evaluate.py`, `score` (its
`math_equal` verdict per completion), plus copied fields such as `level` or `answer_type`. We grade
every `code[j]` against OUR gold for the same problem and compare with `score[j]`; the problem is
found by its question text (whitespace-insensitive), since Qwen's `idx` is the row number of its own
data file, whose order differs from ours for AIME 2024. A record whose `gt` differs from our gold
puts its disagreements in the category `gold` (e.g. OlympiadBench answers with several `$...$`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import BenchmarkDataError, Problem

REQUIRED = {"idx": (int,), "question": (str,), "gt": (str, int, float), "code": (list,), "pred": (list,),
            "score": (list,)}


def read_qwen_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a Qwen2.5-Math output file; a malformed line is a one-line error (file:line: field)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: file not found")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        records.append(_check(rec, f"{path}:{lineno}"))
    if not records:
        raise BenchmarkDataError(f"{path}: no records")
    return records


def _check(rec: Any, where: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise BenchmarkDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key, types in REQUIRED.items():
        if key not in rec:
            raise BenchmarkDataError(f"{where}: field {key!r} missing (a Qwen2.5-Math output has "
                                     f"{', '.join(REQUIRED)}; run its evaluate.py to add 'score')")
        if not isinstance(rec[key], types) or isinstance(rec[key], bool):
            raise BenchmarkDataError(f"{where}: field {key!r} must be {'/'.join(t.__name__ for t in types)}, "
                                     f"got {type(rec[key]).__name__}")
    if not len(rec["code"]) == len(rec["pred"]) == len(rec["score"]) > 0:
        raise BenchmarkDataError(f"{where}: fields 'code', 'pred', 'score' must be non-empty lists of one length, "
                                 f"got {len(rec['code'])}, {len(rec['pred'])}, {len(rec['score'])}")
    for key, types in (("code", (str,)), ("pred", (str, int, float, type(None))), ("score", (bool,))):
        bad = [i for i, v in enumerate(rec[key]) if not isinstance(v, types)]
        if bad:
            raise BenchmarkDataError(f"{where}: field {key!r}[{bad[0]}] must be "
                                     f"{'/'.join(t.__name__ for t in types)}, got {type(rec[key][bad[0]]).__name__}")
    return rec


def _key(text: str) -> str:
    return " ".join(text.split())


def match_records(records: list[dict[str, Any]], problems: list[Problem], source: str) -> list[tuple[dict, Problem]]:
    """(record, our problem) pairs, found by question text; an unknown question is an error naming the idx."""
    ours = {_key(p.problem): p for p in problems}
    pairs = []
    for rec in records:
        p = ours.get(_key(rec["question"]))
        if p is None:
            raise BenchmarkDataError(f"{source}: record idx {rec['idx']}: question not in the benchmark "
                                     f"({rec['question'][:60]!r}...)")
        pairs.append((rec, p))
    return pairs


def score_qwen_jsonl(path: str | Path, benchmark: str, problems: list[Problem], grader) -> dict[str, Any]:
    """Our verdict for every completion of the file next to Qwen's `score`; agreement and categories."""
    from repro.lmeval.scorers import compare, same_answer

    pairs = match_records(read_qwen_jsonl(path), problems, str(path))
    flat = [(rec, p, j) for rec, p in pairs for j in range(len(rec["code"]))]
    verdicts = grader.grade([(rec["code"][j], p.answer) for rec, p, j in flat])
    rows = [{"problem_id": p.id, "sample_index": j, "gold": p.answer, "ours": bool(v.correct),
             "ours_extracted": v.extracted, "qwen_score": rec["score"][j],
             "qwen_pred": None if rec["pred"][j] is None else str(rec["pred"][j]),
             "gold_differs": not same_answer(str(rec["gt"]), p.answer)} for (rec, p, j), v in zip(flat, verdicts)]
    report = compare(rows, {"qwen_score": ("qwen_pred", False)})
    return {"benchmark": benchmark, "source": str(path), "records": len(pairs),
            "gold_differs": sum(not same_answer(str(rec["gt"]), p.answer) for rec, p in pairs), **report}
