"""The reference table compares like with like (issue 11.10): problem sets, templates, graders, n, comparability."""

from __future__ import annotations

import csv
import io

import pytest

from harness.protocol import EvalProtocol
from repro.presets import PAPER
from repro.reference import PROBLEM_SETS, PUBLISHED, Published, published_row, reference_table
from repro.render import render

FACTS = ("template", "grader", "n", "problem sets", "comparable")


def _rows(model: str, source_word: str) -> list[dict]:
    return [r for r in reference_table().rows if r["model"] == model and source_word in r["source"]]


def test_amc22_23_figures_never_sit_in_the_amc23_column():
    (deepscaler,) = _rows("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "DeepScaleR")
    assert "amc23" not in deepscaler and deepscaler["amc22+23"].values == {"value": 62.9, "n_problems": 83}
    conciser = {r["model"]: r for r in reference_table().rows if "ConciseR" in r["source"]}
    assert {m: r["amc22+23"].values["value"] for m, r in conciser.items()} == {
        "Qwen/Qwen2.5-Math-7B": 56.2, "Qwen/Qwen2.5-Math-1.5B": 44.0, "sail/Qwen2.5-Math-7B-Oat-Zero": 66.2}
    assert not any("amc23" in r for r in conciser.values())
    simplerl = _rows("Qwen/Qwen2.5-Math-7B", "SimpleRL")[0]  # Qwen2.5-Math eval data: the 40-problem set
    assert simplerl["amc23"].values == {"value": 42.5, "n_problems": 40} and "amc22+23" not in simplerl
    assert (PROBLEM_SETS["amc23"].n_problems, PROBLEM_SETS["amc22+23"].n_problems) == (40, 83)


def test_every_published_row_states_its_protocol_facts():
    t = reference_table()
    assert t.columns[:3] == ["model", "source", "protocol"] and all(c in t.columns for c in FACTS)
    assert t.columns[-6:] == ["math500", "aime24", "aime25", "amc23", "amc22+23", "olympiadbench"]
    for row in t.rows:
        assert all(str(row[c]) for c in FACTS), row["model"]
    simplerl = _rows("Qwen/Qwen2.5-Math-7B", "SimpleRL")[0]
    assert (simplerl["template"], simplerl["n"], simplerl["problem sets"]) == (
        "qwen-boxed", "1", "math500: 500; aime24: 30; amc23: 40; olympiadbench: 675")
    assert "math_equal" in simplerl["grader"]


def test_rows_not_like_our_protocol_are_marked_with_the_reasons():
    t = reference_table()
    marks = {(r["model"], r["source"][:10]): r["comparable"] for r in t.rows}
    assert all(not m.values["comparable"] for m in marks.values())  # none is measured like the paper preset
    greedy = _rows("Qwen/Qwen2.5-Math-7B", "SimpleRL")[0]["comparable"]
    assert greedy.values["differences"] == ["template qwen-boxed (ours qwen25-math-cot)",
                                            "decoding greedy (ours T=0.6, top-p 0.95)"]
    deepscaler = _rows("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "DeepScaleR")[0]["comparable"]
    assert deepscaler.values["differences"][0] == "problem set amc22+23 (83 problems) is not ours"
    assert str(deepscaler).startswith("NOT comparable: problem set amc22+23")


def test_a_row_measured_like_ours_is_comparable():
    ours_like = Published("m", "src", "avg@4", {"math500": 50.0, "amc23": 40.0}, template=PAPER.eval.template,
                          grader="another", n="4", temperature=PAPER.eval.temperature, top_p=PAPER.eval.top_p)
    row = published_row(ours_like, PAPER.eval, {"math500", "amc23"})
    assert str(row["comparable"]) == "yes" and row["comparable"].values["comparable"] is True
    greedy_boxed = EvalProtocol(template="qwen-boxed", temperature=0.0, top_p=1.0, max_tokens=3000, n_default=1,
                                pass_k=(1,), seed=0)
    simplerl_base = PUBLISHED[0]
    assert published_row(simplerl_base, greedy_boxed, set(PROBLEM_SETS) - {"amc22+23"})["comparable"].values[
        "comparable"] is True


def test_rendered_table_carries_the_marks_and_columns():
    rows = list(csv.DictReader(io.StringIO(render(reference_table(), "csv"))))
    ds = next(r for r in rows if r["model"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    assert ds["amc22+23"] == "62.9" and ds["amc23"] == "" and ds["comparable"].startswith("NOT comparable")
    md = render(reference_table(), "markdown")
    assert "amc22+23" in md and "NOT comparable" in md


def test_unknown_problem_set_is_refused():
    with pytest.raises(ValueError, match=r"Published\('m', 'src'\): unknown problem set\(s\) \['amc'\]"):
        Published("m", "src", "p", {"amc": 1.0}, template="qwen-boxed", grader="g", n="1", temperature=0.0)
