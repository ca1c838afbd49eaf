"""What does the harness cost on top of vLLM? One engine, the same prompts and sampling, three figures.

    python bench/eval_overhead.py [--model DIR] [--limit 16] [--n 4] [--max-tokens 64] [--reps 3]

1. overhead ratio: time of `harness.evaluate_many` over all five benchmarks (render, generate,
   grade on a background thread, write every sample, summarize) divided by one bare
   `vllm.LLM.generate` call over the same prompts with the same per-problem seeds (target <= 1.05x),
   for the DEFAULT path (all problems in one engine call) and, for comparison, with
   --batch-size problems per call (the old default, 64). Each figure is the min over --reps
   repetitions with its spread ((max - min) / min), as WALL time and as CPU time (user + system of
   this process and all its live children: vLLM's engine core, grader workers), because on a
   loaded shared machine wall time mostly measures the other tenants.
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


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children (engine core, grader workers)."""
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def timed(fn) -> tuple[float, float, object]:
    """(wall s, cpu s, result) of fn()."""
    c, t = cpu_seconds(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t, cpu_seconds() - c, out


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / min(xs) if xs and min(xs) > 0 else 0.0


def fitting_problems(tok, ctx: int, limit: int, data_dir: str | None) -> dict:
    """The first `limit` problems of each benchmark whose prompt fits the context (bare vLLM rejects others)."""
    from benchmarks import load_benchmark
    from harness.prompts import render

    return {b: [p for p in load_benchmark(b, data_dir)
                if len(tok(render("tiny-boxed", p.problem), add_special_tokens=False).input_ids) + 8 < ctx][:limit]
            for b in BENCHMARKS}


def bare_call(gen, problems: dict, protocol, n: int, max_tokens: int):
    """One bare vllm.LLM.generate over every prompt, the harness's per-problem seeds: a thunk."""
    from vllm import SamplingParams

    from harness.generation import stable_seed
    from harness.prompts import render

    prompts = [{"prompt": render("tiny-boxed", p.problem)} for b in BENCHMARKS for p in problems[b]]
    params = [SamplingParams(n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens, logprobs=0,
                             seed=stable_seed(protocol.seed, b, p.id)) for b in BENCHMARKS for p in problems[b]]
    return lambda: gen.llm.generate(prompts, params, use_tqdm=False)


def harness_call(gen, grader, problems: dict, protocol, model: str, db: Path, batch_size: int | None):
    from harness.evaluate import evaluate_many
    from harness.store import get_or_create_run, open_db

    def go():
        factory = open_db(db)
        run = get_or_create_run(factory, method="base", model=model, preset="bench", seed=0, config=protocol)[0]
        return evaluate_many(factory, run.id, problems, protocol, gen, grader, batch_size=batch_size, progress=False)
    return go


def measure(gen, grader, problems, protocol, model, tmp, reps, batch_size, n, max_tokens) -> dict:
    """{name: {"wall": [...], "cpu": [...]}} for bare, harness default, harness batched; plus grading waits."""
    out = {k: {"wall": [], "cpu": []} for k in ("bare", "default", "batched")}
    waits, rss, tokens = [], [], 0
    for rep in range(reps):
        order = (("bare", 0), ("default", None), ("batched", batch_size))
        for key, batch in (order if rep % 2 == 0 else order[::-1]):  # alternate: no figure always runs first
            if key == "bare":
                w, c, outs = timed(bare_call(gen, problems, protocol, n, max_tokens))
                out["bare"]["wall"].append(w)
                out["bare"]["cpu"].append(c)
                tokens = sum(len(o.token_ids) for r in outs for o in r.outputs)
                continue
            with RssSampler() as mem:
                w, c, result = timed(harness_call(gen, grader, problems, protocol, model,
                                                  tmp / f"rep{rep}-{key}.db", batch))
            out[key]["wall"].append(w)
            out[key]["cpu"].append(c)
            if key == "default":
                waits.append(result["math500"]["metrics"]["timing"]["wait_for_grading_s"])
                rss.append((mem.start, mem.peak))
    return {"times": out, "waits": waits, "rss": rss, "tokens": tokens}


def main(model: str = typer.Option(None, "--model"), limit: int = typer.Option(16, "--limit"),
         n: int = typer.Option(4, "--n"), max_tokens: int = typer.Option(64, "--max-tokens"),
         reps: int = typer.Option(3, "--reps", min=1), batch_size: int = typer.Option(64, "--batch-size"),
         data_dir: str = typer.Option(None, "--data-dir", envvar="LATENTREVISE_DATA_DIR"),
         out: Path = typer.Option(ROOT / "bench" / "eval_overhead.json", "--out")) -> None:
    from harness.evaluate import context_limit
    from harness.generation import VLLMGenerator, VLLMSettings
    from harness.grading import Grader
    from harness.protocol import EvalProtocol

    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="eval-overhead-"))
    model = pick_model(model, tmp)
    protocol = EvalProtocol(template="tiny-boxed", temperature=1.0, top_p=1.0, max_tokens=max_tokens, n_default=n,
                            pass_k=(1, n), seed=0)
    gen = VLLMGenerator(model, VLLMSettings(dtype="float32", max_model_len=512))
    problems = fitting_problems(gen.tokenizer, context_limit(gen), limit, data_dir)
    grader = Grader()
    grader.grade([("\\boxed{1}", "1")])  # start the worker pool outside the timings
    bare_call(gen, problems, protocol, n, max_tokens)()  # warm the engine
    m = measure(gen, grader, problems, protocol, model, tmp, reps, batch_size, n, max_tokens)
    grader.close()
    gen.close()
    figures = summarize(m, model, problems, n, max_tokens, reps, batch_size)
    console.print(figures_table(figures))
    out.write_text(json.dumps(figures, indent=2))
    console.print(f"figures -> {out}")


def summarize(m: dict, model, problems, n, max_tokens, reps, batch_size) -> dict:
    t = m["times"]
    best = {k: {c: min(v[c]) for c in ("wall", "cpu")} for k, v in t.items()}
    return {
        "model": model, "prompts": sum(len(v) for v in problems.values()), "n": n, "max_tokens": max_tokens,
        "completion_tokens": m["tokens"], "reps": reps, "batch_size": batch_size,
        "min": best, "spread": {k: {c: spread(v[c]) for c in ("wall", "cpu")} for k, v in t.items()}, "all": t,
        "ratio_default": {c: best["default"][c] / best["bare"][c] for c in ("wall", "cpu")},
        "ratio_batched": {c: best["batched"][c] / best["bare"][c] for c in ("wall", "cpu")},
        "grading_wait_s": min(m["waits"]), "rss_peak_mib": max(p for _, p in m["rss"]) / 2**20,
        "median_ratio_default_wall": statistics.median(h / b for h, b in zip(t["default"]["wall"], t["bare"]["wall"])),
    }


def figures_table(f: dict) -> Table:
    table = Table(title=f"harness overhead: {f['prompts']} prompts x n={f['n']}, {f['max_tokens']} max tokens, "
                        f"min of {f['reps']} (spread = (max-min)/min)")
    for c in ("figure", "wall s", "wall spread", "cpu s", "cpu spread"):
        table.add_column(c, justify="right" if c != "figure" else "left")
    names = {"bare": "bare vllm.LLM.generate, one call", "default": "harness evaluate_many, default (one call)",
             "batched": f"harness evaluate_many, {f['batch_size']} problems per call"}
    for k, label in names.items():
        table.add_row(label, f"{f['min'][k]['wall']:.2f}", f"{100 * f['spread'][k]['wall']:.0f}%",
                      f"{f['min'][k]['cpu']:.2f}", f"{100 * f['spread'][k]['cpu']:.0f}%")
    for k in ("default", "batched"):
        r = f[f"ratio_{k}"]
        table.add_row(f"ratio {k} / bare (target <= 1.05x for default)", f"{r['wall']:.3f}x", "",
                      f"{r['cpu']:.3f}x", "")
    table.add_row("grading wait added to wall (default)", f"{f['grading_wait_s']:.2f}", "", "", "")
    table.add_row("harness RSS peak (engine excluded), MiB", f"{f['rss_peak_mib']:.0f}", "", "", "")
    return table


if __name__ == "__main__":
    typer.run(main)
