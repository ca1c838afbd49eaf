"""crosscheck: our verdicts vs lm-eval's own scorers (same completions), and vs a peer's stored Qwen2.5-Math outputs.

lm-eval's minerva scorer needs antlr4-python3-runtime 4.11 (repro/lmeval/lm_eval_worker.py); the
tests that use it skip, naming the install command, when that directory is absent. The aime scorer
and the --from-jsonl path need nothing extra.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import ROOT
from typer.testing import CliRunner

from benchmarks import BenchmarkDataError, load_benchmark
from repro.lmeval.scorers import INSTALL_HINT, SCORERS, antlr_dir, compare, lm_eval_verdicts

pytest.importorskip("lm_eval")
HAS_ANTLR411 = (antlr_dir() / "antlr4").is_dir()
needs_antlr411 = pytest.mark.skipif(not HAS_ANTLR411, reason=f"no antlr4 4.11: {INSTALL_HINT.format(dir=antlr_dir())}")

# (gold, completion): what each scorer must say is argued per case below
CASES = [
    ("25", "So the answer is \\boxed{25}."),  # 0: everyone right except minerva exact_match (no "Final Answer:")
    ("\\frac{3}{4}", "So the answer is \\boxed{0.75}."),  # 1: aime compares strings: 0.75 != \frac{3}{4}
    ("10", "First \\boxed{7}.\nFinal Answer: The final answer is $10$. I hope it is correct."),  # 2: box vs line
    ("6", "I could not solve it."),  # 3: nobody finds an answer
]


def _items(cases):
    from harness.grading import Grader

    with Grader(workers=0) as grader:
        verdicts = grader.grade([(c, g) for g, c in cases])
    items = [{"completion": c, "gold": g, "solution": f"$\\boxed{{{g}}}$", "ours_extracted": v.extracted}
             for (g, c), v in zip(cases, verdicts)]
    return items, verdicts


def _rows(items, verdicts, theirs):
    return [{"problem_id": f"p{i}", "sample_index": 0, "gold": it["gold"], "ours": v.correct,
             "ours_extracted": v.extracted, **t} for i, (it, v, t) in enumerate(zip(items, verdicts, theirs["rows"]))]


def test_aime_exact_match_is_lm_evals_and_formatting_disagreements_are_named():
    items, verdicts = _items(CASES)
    assert [v.correct for v in verdicts] == [True, True, False, False]  # ours: the last box, by equivalence
    theirs = lm_eval_verdicts(items, antlr="/nonexistent")  # without antlr4 4.11 only aime runs
    assert theirs["minerva_error"] and "antlr4-python3-runtime==4.11.0" in theirs["minerva_error"]
    assert [r["aime_exact_match"] for r in theirs["rows"]] == [True, False, False, False]
    assert [r["aime_extracted"] for r in theirs["rows"]][:3] == ["25", "0.75", "7"]
    report = compare(_rows(items, verdicts, theirs), {"aime_exact_match": SCORERS["aime_exact_match"]})
    assert report["harness_accuracy"] == 0.5 and report["scorers"]["aime_exact_match"] == {
        "accuracy": 0.25, "agreement": 0.75}
    assert report["categories"] == {"aime_exact_match": {"ours-correct/theirs-wrong / formatting": 1}}
    assert [(d["problem_id"], d["ours"], d["theirs"]) for d in report["disagreements"]] == [("p1", "0.75", "0.75")]


@needs_antlr411
def test_minerva_scorers_are_lm_evals_own():
    items, verdicts = _items(CASES)
    theirs = lm_eval_verdicts(items)
    assert theirs["minerva_error"] is None and theirs["antlr"].startswith("4.11")
    rows = theirs["rows"]
    # exact_match reads only the "Final Answer: The final answer is X. I hope it is correct." line
    assert [r["minerva_exact_match"] for r in rows] == [False, False, True, False]
    assert [r["minerva_extracted"] for r in rows] == ["[invalidanswer]", "[invalidanswer]", "10", "[invalidanswer]"]
    assert [r["minerva_math_verify"] for r in rows][:2] == [True, True]
    report = compare(_rows(items, verdicts, theirs), SCORERS)
    cats = report["categories"]
    assert cats["minerva_exact_match"] == {"ours-correct/theirs-wrong / extraction": 2,
                                           "ours-wrong/theirs-correct / extraction": 1}
    assert report["scorers"]["minerva_exact_match"] == {"accuracy": 0.25, "agreement": 0.25}


class AnswerKey:
    """A stand-in generator that answers every other problem correctly (boxed gold), the rest wrongly."""

    tokenizer = None

    def __init__(self, problems):
        self.answers = {p.problem: (i, p.answer) for i, p in enumerate(problems)}
        self.calls = 0

    def generate(self, prompts, sampling, seeds=None, progress=False):
        from harness.generation import Completion

        self.calls += 1
        out = []
        for prompt in prompts:
            i, gold = self.answers[prompt.removeprefix("Problem: ").removesuffix("\nSolution:")]
            text = f" so the answer is \\boxed{{{gold}}}." if i % 2 == 0 else " so the answer is \\boxed{-12345}."
            out.append([Completion(text, [1] * 5, "stop", 10)] * sampling.n)
        return out

    def close(self):
        pass


def test_crosscheck_scores_the_stored_completions_with_lm_eval(data_dir, tmp_path):
    from harness.grading import Grader
    from repro.lmeval.bridge import crosscheck

    problems = load_benchmark("amc23", data_dir, 4)
    gen = AnswerKey(problems)
    with Grader(workers=1) as grader:
        report = crosscheck("amc23", "stub-model", limit=4, template="tiny-boxed", max_tokens=32, data_dir=data_dir,
                            db=tmp_path / "r.db", generator=gen, grader=grader)
    assert gen.calls == 1  # one generation, scored twice
    with sqlite3.connect(tmp_path / "r.db") as conn:
        correct = [bool(c) for (c,) in conn.execute("SELECT correct FROM samples ORDER BY id")]
        stored = json.loads(conn.execute("SELECT metrics FROM evaluations").fetchone()[0])["crosscheck"]
    assert correct == [True, False, True, False]
    assert report["harness_accuracy"] == sum(correct) / 4 == 0.5
    assert report["scorers"]["aime_exact_match"] == {"accuracy": 0.5, "agreement": 1.0}
    if HAS_ANTLR411:  # no "Final Answer:" line: minerva's exact_match finds nothing, its math_verify agrees
        assert report["scorers"]["minerva_exact_match"] == {"accuracy": 0.0, "agreement": 0.5}
        assert report["scorers"]["minerva_math_verify"] == {"accuracy": 0.5, "agreement": 1.0}
        assert report["categories"]["minerva_exact_match"] == {"ours-correct/theirs-wrong / extraction": 2}
    assert stored == json.loads(json.dumps(report))


def _qwen_file(tmp_path, data_dir):
    """A Qwen2.5-Math output file for four AIME 2024 problems, in Qwen's own row order (idx)."""
    p = {x.id: x for x in load_benchmark("aime24", data_dir)}
    recs = [
        (p["aime2024-I-01"], "204", ["so \\boxed{204}", "so \\boxed{17}"], ["204", "17"], [True, False]),
        (p["aime2024-I-02"], "025", ["so \\boxed{25}"], ["25"], [True]),  # Qwen's gt keeps the leading zero
        (p["aime2024-I-03"], "809", ["the answer is 809, i.e. \\boxed{80}"], ["809"], [True]),
        (p["aime2024-I-04"], "116", ["so \\boxed{116.0}"], ["116.0"], [False]),
    ]
    lines = [json.dumps({"idx": i, "question": q.problem, "gt_cot": "", "gt": gt, "code": code, "pred": pred,
                         "report": [None] * len(code), "score": score, "solution": q.meta["solution"]})
             for i, (q, gt, code, pred, score) in enumerate(recs)]
    path = tmp_path / "aime24_qwen.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_from_jsonl_compares_our_verdicts_with_qwens(data_dir, tmp_path):
    from harness.grading import Grader
    from repro.lmeval.qwen_jsonl import score_qwen_jsonl

    path = _qwen_file(tmp_path, data_dir)
    with Grader(workers=0) as grader:
        report = score_qwen_jsonl(path, "aime24", load_benchmark("aime24", data_dir), grader)
    assert (report["records"], report["n"], report["gold_differs"]) == (4, 5, 1)
    assert report["harness_accuracy"] == 3 / 5  # 204, 25 and 116.0 (= 116) are right; 17 and the box 80 wrong
    assert report["scorers"]["qwen_score"] == {"accuracy": 3 / 5, "agreement": 3 / 5}
    assert report["categories"]["qwen_score"] == {"ours-correct/theirs-wrong / equivalence": 1,
                                                  "ours-wrong/theirs-correct / extraction": 1}
    got = {(d["problem_id"], d["category"], d["ours"], d["theirs"]) for d in report["disagreements"]}
    assert got == {("aime2024-I-03", "extraction", "80", "809"), ("aime2024-I-04", "equivalence", "116.0", "116.0")}


@pytest.mark.parametrize("edit,message", [
    (lambda r: {k: v for k, v in r.items() if k != "score"}, r":2: field 'score' missing"),
    (lambda r: {**r, "pred": r["pred"] + ["1"]}, r":2: fields 'code', 'pred', 'score' must be non-empty lists"),
    (lambda r: {**r, "score": [1] * len(r["code"])}, r":2: field 'score'\[0\] must be bool, got int"),
    (lambda r: {**r, "question": "What is 1+1?"}, r"record idx 1: question not in the benchmark"),
])
def test_from_jsonl_rejects_malformed_records(data_dir, tmp_path, edit, message):
    from harness.grading import Grader
    from repro.lmeval.qwen_jsonl import score_qwen_jsonl

    path = _qwen_file(tmp_path, data_dir)
    lines = path.read_text().splitlines()
    lines[1] = json.dumps(edit(json.loads(lines[1])))
    path.write_text("\n".join(lines) + "\n")
    with Grader(workers=0) as grader, pytest.raises(BenchmarkDataError, match=message):
        score_qwen_jsonl(path, "aime24", load_benchmark("aime24", data_dir), grader)


def test_cli_from_jsonl_prints_and_writes_the_report(data_dir, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "report.json"
    args = ["crosscheck", "aime24", "--from-jsonl", str(_qwen_file(tmp_path, data_dir)), "--data-dir", str(data_dir),
            "--json", str(out)]
    result = CliRunner().invoke(module.app, args, env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    (report,) = json.loads(out.read_text())
    assert report["scorers"]["qwen_score"]["agreement"] == 0.6 and len(report["disagreements"]) == 2
    assert "qwen_score aime2024-I-03#0 ours-wrong/theirs-correct (extraction)" in result.output
    bad = CliRunner().invoke(module.app, ["crosscheck", "aime24", "--data-dir", str(data_dir)])
    assert bad.exit_code == 1 and "give exactly one of --model" in bad.output


def test_reference_solutions_as_completions():
    from benchmarks import Problem
    from harness.grading import Grader
    from repro.lmeval.bridge import reference_crosscheck

    problems = [Problem("a", "q1", "\\frac{3}{4}", {"solution": "So it is $\\boxed{0.75}$."}),
                Problem("b", "q2", "5", {"solution": ["First part.", "Thus \\boxed{5}."]}),  # OlympiadBench: a list
                Problem("c", "q3", "1", {})]  # no solution: not scored
    with Grader(workers=0) as grader:
        report = reference_crosscheck("olympiadbench", problems, grader, antlr="/nonexistent")
    assert report["n"] == 2 and report["harness_accuracy"] == 1.0
    assert report["scorers"]["aime_exact_match"] == {"accuracy": 0.5, "agreement": 0.5}
    assert [(d["problem_id"], d["category"]) for d in report["disagreements"]] == [("a", "formatting")]
    with Grader(workers=0) as grader, pytest.raises(ValueError, match="aime25: its problems carry no reference"):
        reference_crosscheck("aime25", problems[2:], grader)
