"""The five evaluation benchmarks of the paper and the MATH training split.

Hub ids are the ones the community evaluates on; the local file names are those of
`../shared/data` (see its SOURCES.md for provenance and normalization). Hub rows are normalized
the same way as the local files: `answer` is a plain string without `$` delimiters.
"""

from __future__ import annotations

from .registry import BenchmarkSpec, register

MATH500 = register(BenchmarkSpec(
    name="math500", local_file="math500.jsonl", hub_id="HuggingFaceH4/MATH-500",
    fields={"unique_id": "id", "problem": "problem", "answer": "answer"},
    description="MATH-500 subset of the MATH test split (Lightman et al. 2023)",
))
AIME24 = register(BenchmarkSpec(
    name="aime24", local_file="aime24.jsonl", hub_id="HuggingFaceH4/aime_2024", hub_split="train",
    fields={"id": "id", "problem": "problem", "answer": "answer"},
    description="AIME 2024 I+II (30)",
))
AIME25 = register(BenchmarkSpec(
    name="aime25", local_file="aime25.jsonl", hub_id="math-ai/aime25",
    fields={"id": "id", "problem": "problem", "answer": "answer"},
    description="AIME 2025 I+II (30)",
))
AMC23 = register(BenchmarkSpec(
    name="amc23", local_file="amc23.jsonl", hub_id="math-ai/amc23",
    fields={"id": "id", "question": "problem", "answer": "answer"},
    description="AMC 2023 12A+12B, numeric answers (40)",
))
OLYMPIADBENCH = register(BenchmarkSpec(
    name="olympiadbench", local_file="olympiadbench.jsonl", hub_id="Hothan/OlympiadBench",
    hub_config="OE_TO_maths_en_COMP", hub_split="train",
    fields={"id": "id", "question": "problem", "final_answer": "answer"},
    description="OlympiadBench OE_TO_maths_en_COMP (675)",
))
MATH_TRAIN = register(BenchmarkSpec(
    name="math_train", local_file="math_train.jsonl", hub_id="DigitalLearningGmbH/MATH-lighteval",
    hub_split="train", fields={"problem": "problem", "solution": "answer"}, answer_from_boxed=True,
    description="MATH training split (7,500); hub answers are the last \\boxed{} of the solution",
))

PAPER_BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "olympiadbench")
