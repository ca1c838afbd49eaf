"""What does the harness cost on top of vLLM? One engine, the same prompts and sampling, three figures.

    python bench/eval_overhead.py [--model DIR] [--limit 16] [--n 4] [--max-tokens 64] [--reps 2]

1. overhead ratio: wall time of `harness.evaluate_many` over all five benchmarks (render, generate,
   grade on a background thread, write every sample, summarize) divided by one bare
   `vllm.LLM.generate` call over the same prompts with the same per-problem seeds (target <= 1.05x),
   once with the harness making one engine call too (the harness's own cost) and once with its
   default batching (--batch-size problems per call; smaller calls cost vLLM throughput). Also
   shown: bare vLLM called once per benchmark.
2. grading's share: the seconds the evaluation loop waited for grading/storage (the part that
   grading adds to wall time; the rest overlaps generation), and the grader's total busy time.
3. resident memory of this (the harness) process while evaluating, sampled every 50 ms with psutil;
   vLLM's engine core runs in its own process and is not counted (target < 1 GiB).

The model: --model, else the tiny preset's cached pretrained base (repro.tiny.pretrain), else a
random tiny model built in a temporary directory. Engine start is excluded from every figure.
Figures go to the console and, as JSON, to --out. On a shared 2-core CPU the timings are noisy:
take the min over --reps repetitions and say so when quoting them.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "olympiadbench")


def pick_model(model: str | None, tmp: Path) -> str:
    if model:
        return model
    try:
        from repro.tiny.pretrain import INFO_FILE, PretrainConfig, model_dir

        cached = model_dir(PretrainConfig())
        if (cached / INFO_FILE).is_file():
            return str(cached)
    except ImportError:
        pass
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_corpus

    from repro.tiny.model import build_random_model

    return str(build_random_model(tmp / "tiny-random", tiny_corpus()))


class RssSampler:
    """Peak resident set size of this process, sampled on a thread."""

    def __init__(self, every_s: float = 0.05):
        self.proc, self.every_s, self.peak, self._stop = psutil.Process(), every_s, 0, threading.Event()

    def __enter__(self):
        self.start = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every_s)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def main(model: str = typer.Option(None, "--model"), limit: int = typer.Option(16, "--limit"),
         n: int = typer.Option(4, "--n"), max_tokens: int = typer.Option(64, "--max-tokens"),
         reps: int = typer.Option(2, "--reps"), batch_size: int = typer.Option(64, "--batch-size"), data_dir: str = typer.Option(None, "--data-dir",
                                                                             envvar="LATENTREVISE_DATA_DIR"),
         out: Path = typer.Option(ROOT / "bench" / "eval_overhead.json", "--out")) -> None:
    from vllm import SamplingParams

    from benchmarks import load_benchmark
    from harness.evaluate import context_limit, evaluate_many, sampling_for
    from harness.generation import VLLMGenerator, VLLMSettings, stable_seed
    from harness.grading import Grader
    from harness.prompts import render
    from harness.protocol import EvalProtocol
    from harness.store import get_or_create_run, open_db

    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="eval-overhead-"))
    model = pick_model(model, tmp)
    protocol = EvalProtocol(template="tiny-boxed", temperature=1.0, top_p=1.0, max_tokens=max_tokens, n_default=n,
                            pass_k=(1, n), seed=0)
    gen = VLLMGenerator(model, VLLMSettings(dtype="float32", max_model_len=512))
    ctx = context_limit(gen)
    tok = gen.tokenizer
    problems = {}  # only prompts that fit the context: bare vLLM would reject the others
    for b in BENCHMARKS:
        fit = [p for p in load_benchmark(b, data_dir)
               if len(tok(render("tiny-boxed", p.problem), add_special_tokens=False).input_ids) + 8 < ctx]
        problems[b] = fit[:limit]
    n_prompts = sum(len(v) for v in problems.values())
    sampling = {b: sampling_for(b, protocol) for b in BENCHMARKS}

    def bare_inputs(b):
        prompts = [{"prompt": render("tiny-boxed", p.problem)} for p in problems[b]]
        params = [SamplingParams(n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens, logprobs=0,
                                 seed=stable_seed(protocol.seed, b, p.id)) for p in problems[b]]
        return prompts, params

    def bare_once():
        inputs = [bare_inputs(b) for b in BENCHMARKS]
        t = time.perf_counter()
        outs = gen.llm.generate([x for i in inputs for x in i[0]], [x for i in inputs for x in i[1]], use_tqdm=False)
        return time.perf_counter() - t, sum(len(o.token_ids) for r in outs for o in r.outputs)

    def bare_per_benchmark():
        t = time.perf_counter()
        for b in BENCHMARKS:
            gen.llm.generate(*bare_inputs(b), use_tqdm=False)
        return time.perf_counter() - t

    grader = Grader()
    grader.grade([("\\boxed{1}", "1")])  # start the worker pool outside the timings
    gen.generate(["Problem: 1+1\nSolution:"], sampling["math500"])  # warm the engine
    bare, bare_pb, harness, one_call, rss, waits, busy, tokens = [], [], [], [], [], [], [], 0
    for rep in range(reps):
        s, tokens = bare_once()
        bare.append(s)
        bare_pb.append(bare_per_benchmark())
        for batch, times in ((batch_size, harness), (n_prompts, one_call)):
            factory = open_db(tmp / f"rep{rep}-{batch}.db")
            run = get_or_create_run(factory, method="base", model=model, preset="bench", seed=0, config=protocol)[0]
            with RssSampler() as mem:
                t = time.perf_counter()
                result = evaluate_many(factory, run.id, problems, protocol, gen, grader, batch_size=batch,
                                       progress=False)
                times.append(time.perf_counter() - t)
            if batch == batch_size:
                timing = result["math500"]["metrics"]["timing"]  # one stream: the same figures on every benchmark
                rss.append((mem.start, mem.peak))
                waits.append(timing["wait_for_grading_s"])
                busy.append(timing["grade_store_s"])
    completions = n_prompts * n
    t = time.perf_counter()
    grader.grade([("so the answer is \\boxed{42}.", "42")] * completions)
    grade_alone = time.perf_counter() - t
    grader.close()
    gen.close()

    best = min(range(reps), key=lambda i: harness[i])
    figures = {
        "model": model, "prompts": n_prompts, "n": n, "max_tokens": max_tokens, "completion_tokens": tokens,
        "bare_vllm_s": min(bare), "bare_vllm_per_benchmark_s": min(bare_pb), "harness_s": min(harness),
        "batch_size": batch_size, "harness_one_call_s": min(one_call),
        "overhead_ratio": min(harness) / min(bare), "overhead_ratio_vs_per_benchmark": min(harness) / min(bare_pb),
        "overhead_ratio_same_batching": min(one_call) / min(bare),
        "grading_wait_s": waits[best], "grading_wait_share": waits[best] / harness[best],
        "grading_busy_s": busy[best], "grading_alone_s": grade_alone,
        "rss_before_mib": rss[best][0] / 2**20, "rss_peak_mib": max(p for _, p in rss) / 2**20,
        "reps": reps, "all_harness_s": harness, "all_bare_s": bare, "median_ratio": statistics.median(
            h / b for h, b in zip(harness, bare)),
    }
    table = Table(title=f"harness overhead: {n_prompts} prompts x n={n}, {max_tokens} max tokens, min of {reps}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target")
    rows = [
        ("bare vllm.LLM.generate (one call)", f"{figures['bare_vllm_s']:.2f} s", ""),
        ("bare vLLM, one call per benchmark", f"{figures['bare_vllm_per_benchmark_s']:.2f} s", ""),
        (f"harness evaluate_many, batch {batch_size} problems", f"{figures['harness_s']:.2f} s", ""),
        ("harness evaluate_many, one batch (= one engine call)", f"{figures['harness_one_call_s']:.2f} s", ""),
        ("overhead ratio, same batching (one call each)", f"{figures['overhead_ratio_same_batching']:.3f}x",
         "<= 1.05x"),
        (f"overhead ratio, batch {batch_size} vs one bare call", f"{figures['overhead_ratio']:.3f}x", ""),
        ("overhead ratio (vs per-benchmark calls)", f"{figures['overhead_ratio_vs_per_benchmark']:.3f}x", ""),
        ("grading wait (added to wall)", f"{figures['grading_wait_s']:.2f} s "
                                         f"({100 * figures['grading_wait_share']:.1f}%)", "<= 10%"),
        ("grading+storage busy (overlapped)", f"{figures['grading_busy_s']:.2f} s", ""),
        (f"grader alone, {completions} completions", f"{grade_alone:.2f} s", ""),
        ("harness RSS before / peak (engine excluded)",
         f"{figures['rss_before_mib']:.0f} / {figures['rss_peak_mib']:.0f} MiB", "< 1024 MiB"),
    ]
    for r in rows:
        table.add_row(*r)
    console.print(table)
    out.write_text(json.dumps(figures, indent=2))
    console.print(f"figures -> {out}")


if __name__ == "__main__":
    typer.run(main)
