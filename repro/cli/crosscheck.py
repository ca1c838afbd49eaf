"""`crosscheck`: our verdicts against lm-eval's own scorers, or against a peer's stored outputs.

    python reproduce.py crosscheck math500,aime24 --model ./my-model --limit 10   # generate, score both ways
    python reproduce.py crosscheck math500 --from-jsonl qwen_out.jsonl            # Qwen2.5-Math outputs
    python reproduce.py crosscheck math500 --reference --limit 500                # the reference solutions

With --model, each benchmark's first --limit problems are generated greedily into a stored
evaluation, and the same completions are scored by lm-eval's minerva_math (exact_match, math_verify)
and aime (exact_match) scorers in a process with antlr4 4.11 (repro/lmeval/lm_eval_worker.py). With
--from-jsonl, the completions (`code`) of a Qwen2.5-Math `math_eval.py` output file are graded by our
grader and compared with its `score`. With --reference, each problem's own reference solution is
the completion (a scorer check on known-correct text, no model). All print per-sample agreement and
every disagreement by direction and category (repro/lmeval/scorers.py); --json writes the whole report.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from repro.cli.app import DEFAULT_DB, Backend, DataDir, Db, app, console, fail
from repro.cli.evaluate import check_benchmarks, check_model


@app.command()
def crosscheck(
    benchmarks: str = typer.Argument(..., help="comma-separated: math500, aime24, aime25, amc23, olympiadbench"),
    model: Optional[str] = typer.Option(None, "--model", help="local model directory or hub id (generate)"),
    from_jsonl: Optional[Path] = typer.Option(None, "--from-jsonl", help="Qwen2.5-Math output file to re-score"),
    reference: bool = typer.Option(False, "--reference", help="score each problem's own reference solution (no model)"),
    limit: int = typer.Option(10, "--limit", min=1),
    template: str = typer.Option("qwen25-math-cot", "--template"),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1),
    data_dir: DataDir = None,
    db: Db = DEFAULT_DB,
    backend: Backend = "vllm",
    dtype: str = typer.Option("auto", "--dtype"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len"),
    antlr: Optional[str] = typer.Option(None, "--antlr411", envvar="LATENTREVISE_ANTLR411",
                                        help="directory with antlr4-python3-runtime 4.11 for lm-eval's minerva scorer"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full report(s) here"),
) -> None:
    """Per-sample agreement of our grader with lm-eval's scorers (--model) or a peer's verdicts (--from-jsonl)."""
    from repro.lmeval.bridge import TASKS

    names = check_benchmarks(benchmarks)
    if unknown := [b for b in names if b not in TASKS]:
        fail(f"crosscheck supports {', '.join(TASKS)}; got {', '.join(unknown)}")
    if (model is not None) + (from_jsonl is not None) + reference != 1:
        fail("give exactly one of --model (generate and score), --from-jsonl FILE (re-score a peer's outputs) "
             "or --reference (score the reference solutions)")
    if reference:
        reports = [_reference(b, data_dir, limit, antlr) for b in names]
    elif from_jsonl is not None:
        if len(names) != 1:
            fail(f"--from-jsonl scores one benchmark's file; got {len(names)} benchmarks")
        reports = [_from_jsonl(from_jsonl, names[0], data_dir)]
    else:
        if importlib.util.find_spec("lm_eval") is None:
            fail("lm-eval is not installed (pip install lm-eval)")
        reports = _generate(names, check_model(model), limit=limit, template=template, max_tokens=max_tokens,
                            data_dir=data_dir, db=db, backend=backend, dtype=dtype, max_model_len=max_model_len,
                            antlr=antlr)
    for report in reports:
        print_report(report)
    if json_out is not None:
        json_out.write_text(json.dumps(reports, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _from_jsonl(path: Path, benchmark: str, data_dir: str | None) -> dict[str, Any]:
    from benchmarks import load_benchmark
    from harness.grading import Grader
    from repro.lmeval.qwen_jsonl import score_qwen_jsonl

    with Grader() as grader:
        return score_qwen_jsonl(path, benchmark, load_benchmark(benchmark, data_dir), grader)


def _reference(benchmark: str, data_dir: str | None, limit: int, antlr: str | None) -> dict[str, Any]:
    from benchmarks import load_benchmark
    from harness.grading import Grader
    from repro.lmeval.bridge import reference_crosscheck

    with Grader() as grader:
        try:
            return reference_crosscheck(benchmark, load_benchmark(benchmark, data_dir, limit), grader, antlr)
        except ValueError as e:
            fail(str(e))


def _generate(names: list[str], model: str, **kw: Any) -> list[dict[str, Any]]:
    """One engine and one grader for all benchmarks."""
    from harness.generation import GeneratorFactory, VLLMSettings
    from harness.grading import Grader
    from repro.lmeval.bridge import crosscheck as run_crosscheck

    generator = GeneratorFactory(kw["backend"], VLLMSettings(dtype=kw["dtype"], max_model_len=kw["max_model_len"]))(
        model)
    try:
        with Grader() as grader:
            return [run_crosscheck(b, model, generator=generator, grader=grader, **kw) for b in names]
    finally:
        generator.close()


def print_report(report: dict[str, Any]) -> None:
    where = f"evaluation {report['evaluation_id']}" if "evaluation_id" in report else report.get("source", "")
    table = Table(title=f"crosscheck {report['benchmark']}: {report['n']} samples ({where})")
    for c in ("scorer", "their accuracy", "harness accuracy", "agreement"):
        table.add_column(c)
    for name, s in report["scorers"].items():
        table.add_row(name, f"{s['accuracy']:.3f}", f"{report['harness_accuracy']:.3f}", f"{s['agreement']:.3f}")
    console.print(table)
    if report.get("minerva_error"):
        console.print(f"minerva scorers not run: {report['minerva_error']}", highlight=False, markup=False)
    for name, counts in report["categories"].items():
        for key, count in counts.items():
            console.print(f"  {name}: {key}: {count}", highlight=False, markup=False)
    for d in report["disagreements"]:
        console.print(f"  {d['scorer']} {d['problem_id']}#{d['sample_index']} {d['direction']} ({d['category']}): "
                      f"gold {d['gold']!r}, ours {_short(d['ours'])}, theirs {_short(d['theirs'])}", highlight=False,
                      markup=False)


def _short(answer: Any, width: int = 80) -> str:
    """An extracted answer for the terminal: aime's extraction can be a whole `$...$` span (--json has it all)."""
    text = repr(answer)
    return text if len(text) <= width else text[:width - 5] + "...'"
