"""lm-eval hooks for the LatentRevise tasks: the harness's prompt and grader, called in-process.

`doc_to_text` renders the harness template named by $LATENTREVISE_TEMPLATE (default qwen25-math-cot, the
literal Qwen chat format: lm-eval has no tokenizer here); repro/lmeval/bridge.py replaces it with
the tokenizer-aware rendering the harness itself uses. `process_results` reports two metrics:
  math_verify  the harness grader (last \\boxed{}, math-verify; harness/grading.py), our number;
  exact_match  the last \\boxed{} compared as a whitespace-normalized string, a grader-free floor.
Rows may come from the local JSONL files (id/problem/answer) or from the hub datasets, whose field
names differ (amc23 `question`, OlympiadBench `question` + `final_answer` list); both are accepted.
"""

from __future__ import annotations

import os

from benchmarks import last_boxed
from harness.prompts import render


def _problem(doc: dict) -> str:
    return str(doc.get("problem") or doc.get("question") or doc.get("Problem") or "")


def doc_to_target(doc: dict) -> str:
    answer = doc.get("answer", doc.get("final_answer", doc.get("Answer", "")))
    if isinstance(answer, list):
        answer = answer[0] if answer else ""
    return str(answer).strip().strip("$")


def doc_to_text(doc: dict) -> str:
    return render(os.environ.get("LATENTREVISE_TEMPLATE", "qwen25-math-cot"), _problem(doc))


def _squash(s: str | None) -> str:
    return "".join((s or "").split())


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    from harness.grading import Grader

    completion, gold = results[0], doc_to_target(doc)
    with Grader(workers=0) as grader:  # in-process, with the grader's own per-item time limit
        verdict = grader.grade([(completion, gold)])[0]
    boxed = last_boxed(completion)
    return {"math_verify": float(verdict.correct),
            "exact_match": float(boxed is not None and _squash(boxed) == _squash(gold))}
