"""The five evaluation benchmarks of the paper and the MATH training split.

Hub ids are the ones the community evaluates on; the local file names are those of
`../shared/data` (see its SOURCES.md for provenance and normalization). Each spec carries the hub
dataset's column layout (names and types, from its dataset card) and a `normalize` function that
applies SOURCES.md's rules to a hub row, so a problem has the same id, text and answer from the hub
as from the local file (tests/test_hub_loading.py checks every local row against it).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .registry import BenchmarkSpec, content_id, register

STR, INT, NONE = (str,), (int,), type(None)


def _integer(value: Any, field: str) -> str:
    """An integral answer (int, integral float such as AMC's 27.0, or digit string '025') as '27'."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"field {field!r} must be an integer, got {value!r:.60}") from None
    if not number.is_integer():
        raise ValueError(f"field {field!r} must be an integer, got {value!r:.60}")
    return str(int(number))


def _from_url(url: str, pattern: str, field: str = "url") -> re.Match:
    match = re.search(pattern, url)
    if match is None:
        raise ValueError(f"field {field!r} does not name a problem ({pattern}), got {url!r:.100}")
    return match


def _math500(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return row["unique_id"], row["problem"], row["answer"]  # SOURCES.md: id = unique_id


def _aime24(row: Mapping[str, Any]) -> tuple[str, str, str]:
    m = _from_url(row["url"], r"2024_AIME_(I|II)_Problems/Problem_(\d+)")
    return f"aime2024-{m[1]}-{int(m[2]):02d}", row["problem"], _integer(row["answer"], "answer")


def _aime25(row: Mapping[str, Any]) -> tuple[str, str, str]:
    # SOURCES.md: source ids 0-14 are AIME I #1-15, 15-29 are AIME II #1-15
    n = int(_integer(row["id"], "id"))
    if not 0 <= n < 30:
        raise ValueError(f"field 'id' must be 0..29, got {row['id']!r}")
    return f"aime2025-{'I' if n < 15 else 'II'}-{n % 15 + 1:02d}", row["problem"], _integer(row["answer"], "answer")


def _amc23(row: Mapping[str, Any]) -> tuple[str, str, str]:
    m = _from_url(row["url"], r"2023_AMC_(12A|12B)_Problems/Problem_(\d+)")
    return f"amc2023-{m[1]}-{int(m[2]):02d}", row["question"], _integer(row["answer"], "answer")


def strip_math_delimiters(answer: str) -> str:
    """OlympiadBench's final_answer[0] without `$`: only an outer pair is Qwen2.5-Math's `.strip("$")`;
    several `$...$` groups (`$69$,$84$`) lose every unescaped `$` (SOURCES.md, olympiadbench)."""
    if answer.count("$") - answer.count("\\$") <= 2 and answer.startswith("$") and answer.endswith("$"):
        return answer.strip("$")
    return re.sub(r"(?<!\\)\$", "", answer)


def _olympiadbench(row: Mapping[str, Any]) -> tuple[str, str, str]:
    final = row["final_answer"]
    if not final or not isinstance(final[0], str):
        raise ValueError(f"field 'final_answer' must be a non-empty list of strings, got {final!r:.60}")
    return f"olympiadbench-{row['id']}", row["question"], strip_math_delimiters(final[0])


def hendrycks_answer(solution: str) -> str | None:
    """The last `\\boxed{...}`, `\\boxed x` or `\\fbox{...}` of a MATH solution, unwrapped: the rule that
    made math_train.jsonl's `answer` (SOURCES.md: hendrycks/math `last_boxed_only_string` + `remove_boxed`,
    with `\\boxed {17}` read as a braced box). Reproduces all 7,498 boxed local answers."""
    idx = max(solution.rfind("\\boxed"), solution.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = solution[idx:]
    if rest.startswith("\\boxed ") and not rest[len("\\boxed "):].lstrip().startswith("{"):
        return rest[len("\\boxed "):].split("$")[0]
    start = solution.find("{", idx)
    depth = 0
    for i in range(start, len(solution)) if start >= 0 else ():
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        if depth == 0:
            return solution[start + 1:i]
    return None


# SOURCES.md (math_train): two solutions box nothing (`\boxed{}`); the local file's answer "0" was set by
# hand (choice (A) 0). Keyed by content id, so the hub row of the same problem gets the same answer.
MATH_TRAIN_HAND_ANSWERS = {"math_train-34d3b36d1c41": "0", "math_train-641a7ef94229": "0"}


def _math_train(row: Mapping[str, Any]) -> tuple[str, str, str]:
    pid = content_id("math_train", row["problem"])
    answer = MATH_TRAIN_HAND_ANSWERS.get(pid) or hendrycks_answer(row["solution"])
    if not answer:
        raise ValueError("field 'solution' has no \\boxed{} answer")
    return pid, row["problem"], answer


MATH500 = register(BenchmarkSpec(
    name="math500", local_file="math500.jsonl", hub_id="HuggingFaceH4/MATH-500", size=500,
    columns={"problem": STR, "solution": STR, "answer": STR, "subject": STR, "level": INT, "unique_id": STR},
    normalize=_math500, description="MATH-500 subset of the MATH test split (Lightman et al. 2023)",
))
AIME24 = register(BenchmarkSpec(
    name="aime24", local_file="aime24.jsonl", hub_id="HuggingFaceH4/aime_2024", hub_split="train", size=30,
    columns={"id": INT, "problem": STR, "solution": STR, "answer": STR, "url": STR},
    normalize=_aime24, description="AIME 2024 I+II (30)",
))
AIME25 = register(BenchmarkSpec(
    name="aime25", local_file="aime25.jsonl", hub_id="math-ai/aime25", size=30,
    columns={"problem": STR, "answer": (str, int), "id": (str, int)},
    normalize=_aime25, description="AIME 2025 I+II (30)",
))
AMC23 = register(BenchmarkSpec(
    name="amc23", local_file="amc23.jsonl", hub_id="math-ai/amc23", size=40,
    columns={"id": (int, str), "question": STR, "answer": (float, int, str), "url": STR},  # the url names it
    normalize=_amc23, description="AMC 2023 12A+12B, numeric answers (40)",
))
OLYMPIADBENCH = register(BenchmarkSpec(
    name="olympiadbench", local_file="olympiadbench.jsonl", hub_id="Hothan/OlympiadBench",
    hub_config="OE_TO_maths_en_COMP", hub_split="train", size=675,
    columns={"id": INT, "question": STR, "solution": (list,), "final_answer": (list,), "is_multiple_answer": (bool,),
             "unit": (str, NONE), "answer_type": (str, NONE), "error": (str, NONE)},
    normalize=_olympiadbench, description="OlympiadBench OE_TO_maths_en_COMP (675)",
))
MATH_TRAIN = register(BenchmarkSpec(
    name="math_train", local_file="math_train.jsonl", hub_id="DigitalLearningGmbH/MATH-lighteval",
    hub_split="train", size=7500, content_ids=True,
    columns={"problem": STR, "level": STR, "type": STR, "solution": STR},
    normalize=_math_train,
    description="MATH training split (7,500); answers are the last \\boxed{} of the solution",
))

PAPER_BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "olympiadbench")
