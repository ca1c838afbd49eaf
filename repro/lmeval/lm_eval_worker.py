"""Runs lm-eval's own scorers on completions (JSON on stdin -> JSON on stdout), in a process of its own.

Why a process: lm-eval's `minerva_math/utils.py` needs sympy's LaTeX parser, which is generated for
antlr4-python3-runtime 4.11 (the module refuses to import otherwise, and `is_equiv` re-raises the
parser's ImportError), while the harness's grader (math-verify's latex2sympy2_extended) is installed
with 4.13.2. The caller puts a directory holding antlr4 4.11 first on this process's PYTHONPATH, so
lm-eval scores in the environment `lm-eval[math]` pins, and ours in ours. Both math-verify and
latex2sympy2_extended pick their parser by the antlr runtime, so minerva's math_verify metric runs
unmodified here too.

Scorers (the installed lm_eval package; nothing here re-implements a verdict):
    minerva_exact_match, minerva_math_verify   lm_eval/tasks/minerva_math/utils.py process_results
    aime_exact_match                           lm_eval/tasks/aime/utils.py process_results
The `*_extracted` fields are for the report only (which answer each scorer looked at).

Input: {"items": [{"completion", "gold", "solution", "ours_extracted"}]}.
Output: {"minerva_error": str|null, "antlr": version, "rows": [...]} in the input order.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from typing import Any


def _aime_extracted(aime, response: str) -> str:
    """The answer lm-eval's aime process_results compares (its own steps, repeated for display)."""
    dollars = [i for i, c in enumerate(response) if c == "$"]
    answer = response if len(dollars) <= 1 else response[dollars[0] + 1:dollars[-1]]
    boxed = aime.last_boxed_only_string(response)
    if boxed is not None:
        try:
            answer = aime.remove_boxed(boxed)
        except (AssertionError, IndexError):
            pass
    return answer


def _minerva_row(minerva, item: dict[str, Any]) -> dict[str, Any]:
    from math_verify import parse

    gold_answer = minerva.normalize_final_answer(
        minerva.remove_boxed(minerva.last_boxed_only_string(item["solution"])))
    doc = {"problem": "", "solution": item["solution"], "answer": gold_answer}
    scores = minerva.process_results(doc, [item["completion"]])
    target = parse(item["completion"])
    return {"minerva_exact_match": bool(scores["exact_match"]), "minerva_math_verify": bool(scores["math_verify"]),
            "minerva_extracted": minerva.normalize_final_answer(minerva.get_unnormalized_answer(item["completion"])),
            "minerva_gold": gold_answer,
            "math_verify_extracted": str(target[-1]) if target else None,
            "minerva_ours_normalized": minerva.normalize_final_answer(item["ours_extracted"] or "")}


def task_utils(task: str):
    """lm-eval's `lm_eval/tasks/<task>/utils.py`, loaded from the installed package by path: the file is
    lm-eval's, but the package's __init__ (task registry, models, torch) is skipped, which takes ~15 s."""
    import importlib.util
    from pathlib import Path

    root = importlib.util.find_spec("lm_eval")
    if root is None or not root.submodule_search_locations:
        raise ImportError("lm-eval is not installed (pip install lm-eval)")
    path = Path(list(root.submodule_search_locations)[0]) / "tasks" / task / "utils.py"
    spec = importlib.util.spec_from_file_location(f"lm_eval_task_{task}_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    aime = task_utils("aime")
    try:
        minerva = task_utils("minerva_math")
        error = None
    except (ImportError, AssertionError) as e:  # antlr4 4.11 not first on the path
        minerva, error = None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    items = json.load(sys.stdin)["items"]
    rows = []
    for item in items:
        row = {"aime_exact_match": bool(aime.process_results({"answer": item["gold"]}, [item["completion"]])
                                        ["exact_match"]),
               "aime_extracted": _aime_extracted(aime, item["completion"])}
        if minerva is not None:
            row.update(_minerva_row(minerva, item))
        rows.append(row)
    json.dump({"minerva_error": error, "antlr": version("antlr4-python3-runtime"), "rows": rows}, sys.stdout)


if __name__ == "__main__":
    main()
