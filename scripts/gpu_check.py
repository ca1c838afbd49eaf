"""One GPU check: the GPU tests, the Frank-Wolfe bench on the Qwen2.5-Math-1.5B shape, and a few SFT,
GRPO, lr-sft and lr-grpo steps through the torch paths, with every figure in ONE JSON file.

    bash scripts/gpu_check.sh [out.json]                          # a CUDA machine: < ~8 min
    python scripts/gpu_check.py --cpu --tiny --out check.json     # its CPU rehearsal, seconds (tests/test_gpu_check.py)

Needs torch, transformers and accelerate (pytest for the GPU tests): no vLLM, no results.db
(sqlalchemy), no math-verify, no data directory, no network. The parts:

  gpu_tests  `pytest -m gpu` on the test files that have GPU tests (a subprocess; its summary line)
  fw_bench   bench/latentrevise.py on the real Qwen2.5-Math-1.5B shape, random weights, bf16 (a subprocess;
             its JSON: ms per FW step, the floor, useful TFLOP/s and % of the device's dense bf16 peak)
  steps      the `paper` preset's sft, grpo, lr-sft and lr-grpo configs (MethodParts.cut to a few steps)
             trained by the methods' own `train` on the CUDA paths (bf16 autocast, gradient checkpointing,
             bf16 revision), with the transformers generator in place of vLLM, a random Qwen2 of
             `--steps-shape` with a tokenizer trained on the arithmetic problems (chat template, Qwen's
             special tokens), `qwen25-math-cot` prompts of arith-train problems, an in-memory RunContext
             instead of results.db, and a STAND-IN grader: a completion is "correct" when a hash of its
             text is 0 mod 4, so a random model still gets mixed GRPO groups (the update runs), zero-hit
             prompts (the revision runs) and rescues (the insertion runs). Figures: wall time, peak CUDA
             memory and the logged per-step timings of each method.

Each part's result (or its error) is written to the JSON as soon as it ends, so a run cut short by
the time limit still leaves the parts that finished; the exit status is 1 when any part failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

STEP_SHAPES = {  # decoder shapes for the method steps (the vocabulary is the tokenizer's)
    "tiny": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=3,
                 num_key_value_heads=1),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2),
    # Qwen/Qwen2.5-Math-1.5B's layers (bench/latentrevise.py SHAPES), with the small test vocabulary
    "qwen2.5-math-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2),
}
OPTIONAL = ("vllm", "sqlalchemy", "math_verify", "pytest", "accelerate")


def environment(device: str) -> dict[str, Any]:
    import importlib.util

    import transformers

    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__, "python": sys.version.split()[0],
            "importable": {m: importlib.util.find_spec(m) is not None for m in OPTIONAL}}


# ------------------------------------------------------------------------------------------------
# gpu_tests and fw_bench: subprocesses
# ------------------------------------------------------------------------------------------------

def gpu_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "mark.gpu" in p.read_text())


def gpu_tests(timeout_s: float) -> dict[str, Any]:
    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|deselected|error)", ln)),
                   lines[-1] if lines else "")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)}
    return {"files": files, "rc": proc.returncode, "summary": summary.strip("= "), "counts": counts,
            "wall_s": round(time.perf_counter() - t0, 1), "output_tail": proc.stdout[-2000:] + proc.stderr[-1000:]}


def fw_bench(device: str, tiny: bool, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        args = ["--device", device, "--shape", "tiny" if tiny else "qwen2.5-math-1.5b", "--out", str(out)]
        if tiny:
            args += ["--k1", "1", "--k2", "2", "--repeats", "1"]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "latentrevise.py"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"bench/latentrevise.py exited {proc.returncode}: {proc.stderr[-2000:]}")
        return {**json.loads(out.read_text()), "wall_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------------------------
# steps: the methods' own train() on the torch paths
# ------------------------------------------------------------------------------------------------

class StandInGrader:
    """Grader stand-in (no math-verify here; a random model never solves anything): "correct" iff a hash of the
    completion is 0 mod `every`, so rewards are mixed and deterministic given the completions."""

    def __init__(self, every: int = 4):
        self.every = every

    def grade(self, pairs):
        from harness.generation import stable_seed

        return [SimpleNamespace(extracted=None, correct=stable_seed(text) % self.every == 0, ms=0.0, error=None)
                for text, _ in pairs]

    def close(self) -> None:
        pass


def memory_context(out_dir: Path, device: str, make_generator: Callable, grader) -> Any:
    """A RunContext whose logs stay in memory (no results.db): steps, rollout counts and revision rows."""
    from harness.method import RunContext

    class MemoryContext(RunContext):
        def log_step(self, step: int, phase: str = "train", **values: Any) -> None:
            self.steps.append({"step": step, "phase": phase, **values})

        def log_rollouts(self, rows) -> None:
            self.rollouts += len(list(rows))

        def log_revisions(self, rows) -> None:
            self.revisions += [{k: r[k] for k in ("prefix_len", "fw_steps", "rescued", "wall_s", "peak_mem_mb")}
                               for r in rows]

    ctx = MemoryContext(run_id=0, db=None, out_dir=out_dir, seed=0, device=device, template="qwen25-math-cot",
                        make_generator=make_generator, grader=grader, progress=False)
    ctx.steps, ctx.rollouts, ctx.revisions = [], 0, []
    return ctx


def build_model(out_dir: Path, shape: str, problems) -> tuple[Path, int]:
    """A tokenizer trained on the problems' text (Qwen special tokens, chat template) + a random Qwen2 of `shape`;
    returns (its directory, its parameter count)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from repro.tiny.model import save_model, train_tokenizer

    tok = train_tokenizer([f"{p.problem}\n{p.meta['solution']}" for p in problems], 512)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), tie_word_embeddings=True, max_position_embeddings=4096,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **STEP_SHAPES[shape])
    model = Qwen2ForCausalLM(cfg).float()
    return save_model(model, tok, out_dir), sum(p.numel() for p in model.parameters())


def step_configs() -> dict[str, dict[str, Any]]:
    """The paper preset's method configs, composed from its parts with every budget cut to a few steps."""
    from repro.presets import PAPER

    parts = PAPER.parts.cut(
        32,
        sft={"epochs": 1, "max_steps": 3, "batch_size": 8, "micro_batch_size": 4, "max_len": 512, "heldout_frac": 0.1},
        grpo={"steps": 2, "prompts_per_step": 4, "max_tokens": 32, "save_every": 0},
        rescue={"mine_prompts": 16, "mine_samples": 4},
        latentrevise={"fw_steps": 3, "cont_samples": 2, "failed_per_prompt": 1},
        lr_grpo={"revise_max_groups": 2},
    )
    return {m: parts.compose()[m] for m in ("sft", "grpo", "lr-sft", "lr-grpo")}


def summarize_method(ctx, wall_s: float, peak_gib: float | None) -> dict[str, Any]:
    by_phase: dict[str, list[dict]] = {}
    for row in ctx.steps:
        by_phase.setdefault(row["phase"], []).append(row)
    out: dict[str, Any] = {"wall_s": round(wall_s, 2), "peak_mem_gib": peak_gib, "rollouts_logged": ctx.rollouts,
                           "revisions": len(ctx.revisions),
                           "rescued_revisions": sum(r["rescued"] for r in ctx.revisions)}
    if "sft" in by_phase:
        rows = by_phase["sft"]
        out |= {"sft_steps": len(rows), "sft_step_s": [round(r["step_s"], 4) for r in rows],
                "sft_tokens_per_s": [round(r["tokens_per_s"], 1) for r in rows]}
    if "grpo" in by_phase:
        rows = by_phase["grpo"]
        out |= {"grpo_steps": len(rows),
                "grpo_timings_s": [{k: round(v, 4) for k, v in r["timings"].items()} for r in rows],
                "grpo_trained_samples": [r["trained_samples"] for r in rows],
                "grpo_reward_mean": [r["reward_mean"] for r in rows],
                "grpo_off_policy_samples": [r["off_policy_samples"] for r in rows]}
    if "mining" in by_phase:
        out["mining"] = [{k: r["rescue"][k] for k in ("n_prompts", "n_zero_hit", "n_rescued", "wall_s")}
                         for r in by_phase["mining"]]
    if ctx.revisions:
        out["revision_wall_s"] = [round(r["wall_s"], 4) for r in ctx.revisions]
    return out


def method_steps(device: str, shape: str) -> dict[str, Any]:
    from benchmarks import load_benchmark
    from harness.generation import GeneratorFactory
    from methods.registry import build_config, get_method

    problems = load_benchmark("arith-train")[:64]
    results: dict[str, Any] = {"shape": shape, "grader": "stand-in: hash(text) % 4 == 0", "generator": "transformers"}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, results["n_params"] = build_model(Path(tmp) / "base", shape, problems)
        factory = GeneratorFactory("hf", device=device)
        for method, overrides in step_configs().items():
            cls = get_method(method)
            ctx = memory_context(Path(tmp) / method, device, factory, StandInGrader())
            ctx.out_dir.mkdir()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            try:
                cls().train(str(model_dir), problems, build_config(cls, overrides), ctx)
            except Exception as e:  # noqa: BLE001  (record it; the other methods still run)
                results[method] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
                continue
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
            results[method] = summarize_method(ctx, time.perf_counter() - t0, peak)
    return results


# ------------------------------------------------------------------------------------------------

def write(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (the script's own test)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes everywhere (seconds)")
    ap.add_argument("--steps-shape", default=None, choices=list(STEP_SHAPES),
                    help="decoder shape of the method steps (default: small on CUDA, tiny with --tiny)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: gpu_tests, fw_bench, steps")
    ap.add_argument("--part-timeout", type=float, default=300.0, help="seconds for each subprocess part")
    a = ap.parse_args(argv)
    device = "cpu" if a.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (use --cpu for the CPU rehearsal)")
    if device == "cpu":
        torch.set_num_threads(1)
    out = Path(a.out)
    skip = {s for s in a.skip.split(",") if s}
    report: dict[str, Any] = {"env": environment(device), "args": vars(a), "errors": {}}
    started = time.perf_counter()
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "gpu_tests": lambda: gpu_tests(a.part_timeout),
        "fw_bench": lambda: fw_bench(device, a.tiny, a.part_timeout),
        "steps": lambda: method_steps(device, a.steps_shape or ("tiny" if a.tiny else "small")),
    }
    for name, run in parts.items():
        if name in skip:
            report[name] = {"skipped": True}
            continue
        print(f"[gpu_check] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            report[name] = run()
        except Exception as e:  # noqa: BLE001  (one failing part must not lose the others' figures)
            report[name] = None
            report["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
        print(f"[gpu_check] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        report["wall_s"] = round(time.perf_counter() - started, 1)
        write(out, report)
    failed = dict(report["errors"])
    if isinstance(report.get("gpu_tests"), dict) and report["gpu_tests"].get("rc", 0) not in (0, 5):
        failed["gpu_tests"] = report["gpu_tests"]["summary"]  # 5: no test collected (all skipped is 0)
    failed |= {f"steps.{m}": r["error"] for m, r in (report.get("steps") or {}).items()
               if isinstance(r, dict) and "error" in r}
    report["ok"], report["wall_s"] = not failed, round(time.perf_counter() - started, 1)
    write(out, report)
    verdict = "ok" if not failed else f"FAILED: {', '.join(failed)}"
    print(f"[gpu_check] wrote {out} in {report['wall_s']} s; {verdict}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
