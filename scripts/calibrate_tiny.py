"""Calibrate the tiny preset: pretrain the base model per seed, then measure what the paper needs.

    python scripts/calibrate_tiny.py --seeds 0 1 2 [--threads 1] [--out calibration_tiny.json]

For each seed: pretraining wall time and tokens/s (from pretrain.json), base accuracy avg@n on
arith-easy/-medium/-hard (the preset's eval protocol: temperature 1.0, top-p 1.0, through vLLM),
the fraction of arith-train prompts that are zero-hit at n (every sample wrong), and the fraction of
those that a larger n finds an answer for (rare but possible, i.e. not impossible), and the share of
samples that reflect ("Wait", the reflection documents of benchmarks/arith.py) with their mean length.
Scoring uses `harness.grading.Grader` (disagreements with `last_boxed` equality are counted), or with
`--scorer last_boxed` exact equality of the last box with the integer gold. Prints a Markdown table and
writes everything to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path


def _grade(grader, completions, golds) -> tuple[list[bool], int]:
    """Verdicts (Grader, or last_boxed equality when grader is None) and disagreements between the two."""
    from benchmarks import last_boxed

    boxed = [(last_boxed(c) or "").strip() == g for c, g in zip(completions, golds)]
    if grader is None:
        return boxed, 0
    ok = [v.correct for v in grader.grade(list(zip(completions, golds)))]
    return ok, sum(o != b for o, b in zip(ok, boxed))


def calibrate_seed(seed: int, args) -> dict:
    from benchmarks import load_benchmark
    from benchmarks.arith import REFLECT_PHRASE, format_prompt
    from harness.generation import Sampling, VLLMGenerator, stable_seed
    from harness.grading import Grader
    from repro.presets import TINY
    from repro.tiny.pretrain import PretrainConfig, ensure_tiny_base, pretrain_info

    cfg = PretrainConfig.from_overrides({**TINY.tiny_model, "seed": seed, "threads": args.threads})
    t0 = time.perf_counter()
    path = ensure_tiny_base(cfg, cache_dir=args.cache_dir)
    info = pretrain_info(path)
    result = {"seed": seed, "model": str(path), "pretrain": {k: v for k, v in info.items() if k != "config"},
              "ensure_s": round(time.perf_counter() - t0, 1)}
    gen = VLLMGenerator(str(path), TINY.vllm, seed=seed)
    grader = Grader(workers=2) if args.scorer == "grader" else None
    protocol = TINY.eval
    disagreements = 0

    def sample(problems, n, tag):
        sampling = Sampling(n=n, temperature=protocol.temperature, top_p=protocol.top_p,
                            max_tokens=protocol.max_tokens, seed=protocol.seed)
        seeds = [stable_seed(seed, tag, p.id) for p in problems]
        t = time.perf_counter()
        outs = gen.generate([format_prompt(p.problem) for p in problems], sampling, seeds=seeds)
        gen_s = time.perf_counter() - t
        texts = [c.text for out in outs for c in out]
        golds = [p.answer for p in problems for _ in range(n)]
        ok, bad = _grade(grader, texts, golds)
        nonlocal disagreements
        disagreements += bad
        n_tokens = sum(len(c.token_ids) for out in outs for c in out)
        truncated = sum(c.finish_reason == "length" for out in outs for c in out)
        per_problem = [sum(ok[i * n:(i + 1) * n]) for i in range(len(problems))]
        reflecting = [REFLECT_PHRASE.split(",")[0] in t for t in texts]  # "Wait": the self-correction behaviour
        print(f"seed {seed} {tag}: {len(problems)} prompts x {n} in {gen_s:.0f} s, avg {sum(ok) / len(ok):.3f}",
              file=sys.stderr, flush=True)
        return per_problem, {"gen_s": round(gen_s, 1), "tokens_per_s": round(n_tokens / gen_s, 1),
                             "max_tokens_seen": max(len(c.token_ids) for out in outs for c in out),
                             "truncated": truncated, "reflect_frac": sum(reflecting) / len(texts),
                             "reflect_correct": sum(r and o for r, o in zip(reflecting, ok)),
                             "mean_tokens": n_tokens / len(texts)}

    n = protocol.n_default
    result["eval"] = {}
    for bench in TINY.benchmarks:
        problems = load_benchmark(bench)
        hits, stats = sample(problems, n, bench)
        by_kind = defaultdict(list)
        for p, h in zip(problems, hits):
            by_kind[p.meta["kind"]].append(h / n)
        result["eval"][bench] = {
            "avg@n": sum(hits) / (n * len(problems)), "pass@n": sum(h > 0 for h in hits) / len(problems),
            "zero_hit": sum(h == 0 for h in hits) / len(problems), "n": n, "problems": len(problems),
            "by_kind": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_kind.items())}, **stats,
        }
    train = load_benchmark(TINY.train_set)[: args.train_limit]
    hits, stats = sample(train, n, "train")
    zero = [p for p, h in zip(train, hits) if h == 0]
    hits_large, _ = sample(zero, args.n_large, "train-large") if zero else ([], {})
    zero_by_tier = defaultdict(int)
    for p in zero:
        zero_by_tier[p.meta["tier"]] += 1
    result["train"] = {
        "prompts": len(train), "n": n, "avg@n": sum(hits) / (n * len(train)),
        "zero_hit": len(zero) / len(train), "zero_hit_by_tier": dict(zero_by_tier),
        "n_large": args.n_large, "zero_hit_solved_at_n_large": (sum(h > 0 for h in hits_large) / len(zero)
                                                               if zero else None), **stats,
    }
    result["grader_vs_last_boxed_disagreements"] = disagreements
    result["scorer"] = args.scorer
    if grader is not None:
        grader.close()
    gen.close()
    return result


def markdown(results: list[dict]) -> str:
    def cell(values, pct=True):
        values = [v for v in values if v is not None]
        mean = statistics.mean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * mean:.1f} ± {100 * sd:.1f}" if pct else f"{mean:.0f} ± {sd:.0f}"

    rows = [("pretraining wall time (s)", cell([r["pretrain"]["wall_s"] for r in results], pct=False)),
            ("pretraining CPU time (s)", cell([r["pretrain"].get("cpu_s", 0.0) for r in results], pct=False)),
            ("pretraining tokens/s", cell([r["pretrain"]["tokens_per_s"] for r in results], pct=False)),
            ("final pretraining loss", " / ".join(f"{r['pretrain']['final_loss']:.3f}" for r in results))]
    for bench in results[0]["eval"]:
        rows.append((f"{bench} avg@8 (%)", cell([r["eval"][bench]["avg@n"] for r in results])))
    all_avg = [statistics.mean(r["eval"][b]["avg@n"] for b in r["eval"]) for r in results]
    rows.append(("eval tiers together avg@8 (%)", cell(all_avg)))
    rows.append(("arith-train samples with a reflection (\"Wait\") (%)",
                 cell([r["train"].get("reflect_frac", 0.0) for r in results])))
    rows.append(("arith-train zero-hit at n=8 (%)", cell([r["train"]["zero_hit"] for r in results])))
    rows.append((f"... of which solved at n={results[0]['train']['n_large']} (%)",
                 cell([r["train"]["zero_hit_solved_at_n_large"] for r in results])))
    seeds = ", ".join(str(r["seed"]) for r in results)
    lines = [f"| tiny preset, seeds {seeds} (mean ± sd) | value |", "|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} |" for a, b in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for pretraining (1 on a busy box)")
    parser.add_argument("--n-large", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--scorer", choices=("grader", "last_boxed"), default="grader",
                        help="harness.grading.Grader, or exact last_boxed == gold (integer answers)")
    parser.add_argument("--out", default="calibration_tiny.json")
    args = parser.parse_args(argv)
    results = []
    for seed in args.seeds:
        results.append(calibrate_seed(seed, args))
        print(json.dumps(results[-1], indent=1), file=sys.stderr, flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
