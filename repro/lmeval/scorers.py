"""Our verdicts next to lm-eval's own: per-sample agreement and every disagreement, by category.

    lm_eval_verdicts(items, antlr_dir)   lm-eval's scorers on (completion, gold) pairs (lm_eval_worker.py)
    compare(rows, scorers)               agreement per scorer + the disagreements, categorized

A disagreement is one sample where our grader and a peer scorer give different verdicts. Its
direction is `ours-correct/theirs-wrong` or `ours-wrong/theirs-correct`; its category says why:
    gold        the peer graded against a different gold answer (peer files carry their own `gt`)
    extraction  the two sides looked at different answers (different box, "Final Answer:" line vs
                last box, or one side found none)
    formatting  same answer, but a string-matching scorer (aime exact_match) did not see through
                its surface form (`\\frac12` vs `0.5`, `x=3`, a unit)
    equivalence same answer, and both sides compared mathematically but decided differently
Two extracted answers are "the same" when they are equal after removing whitespace, `$`, `\\left`,
`\\right`, `\\!`, `\\,`, a trailing period and d/t-frac variants (a deliberately light rule: anything
heavier is what the scorers themselves disagree on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

ANTLR411_ENV = "LATENTREVISE_ANTLR411"
DEFAULT_ANTLR411 = Path("~/.cache/latentrevise/antlr4-4.11").expanduser()
INSTALL_HINT = "pip install --no-deps --target {dir} antlr4-python3-runtime==4.11.0"
ROOT = Path(__file__).resolve().parents[2]
# scorer -> (what it compares with, is it string matching)
SCORERS = {
    "minerva_exact_match": ("minerva_extracted", False),  # normalize_final_answer + sympy is_equiv
    "minerva_math_verify": ("math_verify_extracted", False),
    "aime_exact_match": ("aime_extracted", True),  # strip_string equality
}


def antlr_dir(value: str | os.PathLike | None = None) -> Path:
    return Path(value or os.environ.get(ANTLR411_ENV) or DEFAULT_ANTLR411).expanduser()


def lm_eval_verdicts(items: list[dict[str, Any]], antlr: str | os.PathLike | None = None,
                     timeout_s: float = 600.0) -> dict[str, Any]:
    """lm-eval's verdicts for `items` ({completion, gold, solution, ours_extracted}), from a child process
    whose PYTHONPATH starts with antlr4 4.11 (module docstring of lm_eval_worker.py)."""
    path = antlr_dir(antlr)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(path) if path.is_dir() else "", str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-m", "repro.lmeval.lm_eval_worker"], input=json.dumps({"items": items}),
                          capture_output=True, text=True, env=env, timeout=timeout_s, cwd=str(ROOT))
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        raise RuntimeError(f"lm-eval scorer process failed (exit {proc.returncode}): {tail}")
    out = json.loads(proc.stdout)
    if out["minerva_error"]:
        out["minerva_error"] += f" (antlr4 4.11 missing from {path}: {INSTALL_HINT.format(dir=path)})"
    return out


def same_answer(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and _light(a) == _light(b) and _light(a) != ""


def _light(s: str) -> str:
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("$", ""), ("dfrac", "frac"),
                     ("tfrac", "frac")):
        s = s.replace(old, new)
    return "".join(s.split()).rstrip(".")


def category(ours: str | None, theirs: str | None, string_match: bool, gold_differs: bool = False) -> str:
    if gold_differs:
        return "gold"
    if not same_answer(ours, theirs):
        return "extraction"
    return "formatting" if string_match else "equivalence"


def compare(rows: Iterable[dict[str, Any]], scorers: dict[str, tuple[str, bool]]) -> dict[str, Any]:
    """rows: {problem_id, sample_index, gold, ours, ours_extracted, <scorer>: bool, <extracted key>: str,
    optional gold_differs}. Returns accuracies, per-scorer agreement, category counts, disagreements."""
    rows = list(rows)
    n = len(rows)
    report: dict[str, Any] = {"n": n, "harness_accuracy": _mean(r["ours"] for r in rows), "scorers": {},
                              "categories": {}, "disagreements": []}
    for scorer, (extracted_key, string_match) in scorers.items():
        counts: Counter[str] = Counter()
        for r in rows:
            if r[scorer] == r["ours"]:
                continue
            direction = "ours-correct/theirs-wrong" if r["ours"] else "ours-wrong/theirs-correct"
            cat = category(r["ours_extracted"], r.get(extracted_key), string_match, r.get("gold_differs", False))
            counts[f"{direction} / {cat}"] += 1
            report["disagreements"].append({
                "problem_id": r["problem_id"], "sample_index": r["sample_index"], "scorer": scorer,
                "direction": direction, "category": cat, "gold": r["gold"], "ours": r["ours_extracted"],
                "theirs": r.get(extracted_key)})
        report["scorers"][scorer] = {"accuracy": _mean(r[scorer] for r in rows),
                                     "agreement": _mean(r[scorer] == r["ours"] for r in rows)}
        report["categories"][scorer] = dict(sorted(counts.items()))
    return report


def _mean(values: Iterable[bool]) -> float:
    values = [bool(v) for v in values]
    return sum(values) / len(values) if values else 0.0
