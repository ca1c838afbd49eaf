"""The benchmark registry on the local data: sizes, strict loading, gold self-consistency."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks import DATA_DIR_ENV, BenchmarkDataError, last_boxed, list_benchmarks, load_benchmark
from benchmarks.math_sets import PAPER_BENCHMARKS
from harness.grading import Grader

SIZES = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "olympiadbench": 675, "math_train": 7500}


@pytest.mark.parametrize("name", list(SIZES))
def test_local_sizes_and_fields(data_dir, name):
    problems = load_benchmark(name, data_dir)
    assert len(problems) == SIZES[name]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.problem.strip() and p.answer.strip() for p in problems)
    assert "id" not in problems[0].meta and "answer" not in problems[0].meta
    assert set(PAPER_BENCHMARKS) | {"math_train"} <= set(list_benchmarks())


def test_limit_and_env_var(data_dir, monkeypatch):
    first = load_benchmark("aime24", data_dir, limit=3)
    assert [p.id for p in first] == [p.id for p in load_benchmark("aime24", data_dir)[:3]]
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert load_benchmark("aime24", limit=3) == first  # no data_dir: the variable decides
    monkeypatch.setenv(DATA_DIR_ENV, "/nonexistent")
    with pytest.raises(BenchmarkDataError, match="/nonexistent/aime24.jsonl: file not found"):
        load_benchmark("aime24")


def test_unknown_benchmark_lists_known_names():
    with pytest.raises(KeyError, match="unknown benchmark 'math5000'.*aime24.*math500.*olympiadbench"):
        load_benchmark("math5000")


def _corrupt(data_dir, tmp_path, line: int, edit) -> str:
    """A copy of math500.jsonl (first 5 rows) whose `line` (1-based) went through `edit`."""
    lines = (data_dir / "math500.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    lines[line - 1] = edit(lines[line - 1], lines)
    (tmp_path / "math500.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return re.escape(str(tmp_path / "math500.jsonl"))


def _drop(field):
    return lambda line, _: json.dumps({k: v for k, v in json.loads(line).items() if k != field})


def _set(field, value):
    return lambda line, _: json.dumps({**json.loads(line), field: value})


@pytest.mark.parametrize("line,edit,message", [
    (3, lambda line, _: line[:-5], r":3: invalid JSON"),
    (2, _drop("answer"), r":2: field 'answer' must be a non-empty string, got None"),
    (4, _set("answer", "  "), r":4: field 'answer' must be a non-empty string"),
    (5, _set("problem", 12), r":5: field 'problem' must be a non-empty string, got 12"),
    (4, lambda line, lines: json.dumps({**json.loads(line), "id": json.loads(lines[0])["id"]}),
     r":4: field 'id' duplicates line 1"),
])
def test_corrupted_copy_names_file_line_and_field(data_dir, tmp_path, line, edit, message):
    path = _corrupt(data_dir, tmp_path, line, edit)
    with pytest.raises(BenchmarkDataError, match=path + message):
        load_benchmark("math500", tmp_path)


def test_math500_gold_self_consistency(data_dir):
    """The last box of each reference solution must grade correct against the `answer` field."""
    problems = load_benchmark("math500", data_dir)
    pairs = [(p.meta["solution"], p.answer) for p in problems]
    with Grader(workers=0, timeout_s=5.0) as grader:
        verdicts = grader.grade(pairs)
        # Negative control (the check above cannot pass by a grader that says yes to everything):
        # each solution against the NEXT problem's answer.
        shifted = grader.grade([(s, problems[(i + 1) % 100].answer) for i, (s, _) in enumerate(pairs[:100])])
    exceptions = [(p.id, p.answer, v.extracted, v.error) for p, v in zip(problems, verdicts) if not v.correct]
    print(f"MATH500 gold self-consistency: {500 - len(exceptions)}/500; exceptions: {exceptions}")
    # The bar is >= 99% (<= 5 exceptions); measured 500/500 with math-verify 0.9.0, so the known
    # exception list is empty: a new exception means the grader or math-verify changed.
    assert exceptions == []
    # The answer field IS the last box of the solution for every MATH500 row, so this mostly checks
    # that the grader parses every gold form; the control shows it is not lenient.
    assert sum(last_boxed(s).strip() == a.strip() for s, a in pairs) == 500
    false_hits = [(problems[i].id, problems[(i + 1) % 100].answer) for i, v in enumerate(shifted) if v.correct]
    print(f"negative control: {len(false_hits)}/100 false hits {false_hits}")
    assert len(false_hits) <= 2, false_hits
