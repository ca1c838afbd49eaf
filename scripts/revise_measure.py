"""Free-continuation accuracy of revised vs unrevised prefixes on the tiny preset's zero-hit prompts.

    PYTHONPATH=. python scripts/revise_measure.py [--prompts 1024] [--samples 8] [--configs NAME ...] \\
        [--baselines] [--out measure.json]

Screens the first `--prompts` arith-train prompts with the tiny base model (n=8, T=1, as the tiny
preset mines), keeps the zero-hit ones, and runs the real LatentRevise rescue
(mining.rescue_latentrevise: control arm, revision, deduplicated revised arms, verification) under
every named configuration (LatentReviseConfig overrides on top of BASE). Per configuration, over
zero-hit prompts (one failed rollout each, `--samples` continuations per arm, the same seeds in
every arm): accuracy of free continuations from p (unrevised), p' (discrete) and Z (latent), the
paired difference revised - unrevised with a bootstrap 95% CI, a sign-flip permutation p-value and
the minimum detectable effect (80% power, two-sided 5%: 2.8 x sd(differences) / sqrt(prompts)); the
same for USABLE accuracy (correct, not leaking, honest text, true arithmetic steps); the
share of prompts with >= 1 correct continuation per arm; the share of revisions with p' != p and of
positions changed; the valid-step rate of the revised arms' correct trajectories; FTE spent and
saved by dedupe. With --baselines, resample and guided-prefix on the same zero-hit prompts at the
budget matched to LatentRevise under BASE: their samples' accuracy, rescue rate, FTE, and the paired
conditioning comparison (K=0 arm minus the baseline's samples). Three example revisions (p, p', top
vertices) of `--examples-from`.

Uses the transformers generator (deterministic per seed; no vLLM engine) and a throw-away database.
Rerun it after the tiny world changes (a new base model): every number here comes from this run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

BASE = {"mine_samples": 8, "mine_max_tokens": 96, "failed_per_prompt": 1, "cont_samples": 8, "prefix_frac": 0.3,
        "fw_steps": 3, "step_rule": "gap-topm", "flip_positions": 1, "fluency_weight": 0.0,
        "objective": "gold-in-rollout"}  # each config adds its own (fluency needs fluency_weight > 0: not the base)
CONFIGS: dict[str, dict[str, Any]] = {
    "K0": {"fw_steps": 0},
    "old-tiny": {"objective": "gold-after-prefix", "step_rule": "const", "step_const": 0.1},
    "old-generic": {"objective": "gold-after-prefix", "step_rule": "harmonic", "fw_steps": 10, "prefix_frac": 0.5},
    "gold-after-prefix": {"objective": "gold-after-prefix"},
    "gold-in-rollout": {"objective": "gold-in-rollout"},
    "answer-away": {"objective": "gold-in-rollout", "loss_terms": "away"},
    "self-contrast": {"objective": "self-contrast"},
    "fluency": {"objective": "fluency", "fluency_weight": 1.0},
    "gold-in-rollout+fluency": {"objective": "gold-in-rollout", "fluency_weight": 1.0},
    "self-contrast+fluency": {"objective": "self-contrast", "fluency_weight": 1.0},
    "gold-in-rollout+fluency/gcg": {"objective": "gold-in-rollout", "fluency_weight": 1.0, "step_rule": "gcg"},
    "gold-in-rollout/gcg": {"objective": "gold-in-rollout", "step_rule": "gcg"},
    "self-contrast+fluency/gcg": {"objective": "self-contrast", "fluency_weight": 1.0, "step_rule": "gcg"},
}


class CachedGenerator:
    """A generator wrapper that memoizes (prompt, seed, sampling) -> samples: the control arm and
    unchanged prefixes are sampled once for all configurations (the transformers generator is
    deterministic per seed, so the cache returns exactly what sampling again would)."""

    def __init__(self, gen):
        self.gen, self.tokenizer, self.cache = gen, gen.tokenizer, {}

    @staticmethod
    def _key(p, s, sampling) -> str:
        raw = p.detach().cpu().numpy().tobytes() if hasattr(p, "detach") else json.dumps(p).encode()
        return hashlib.sha256(raw + repr((s, sampling)).encode()).hexdigest()

    def generate(self, prompts, sampling, seeds=None, progress=False):
        seeds = list(seeds) if seeds is not None else [sampling.seed + i for i in range(len(prompts))]
        keys = [self._key(p, s, sampling) for p, s in zip(prompts, seeds)]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        outs = self.gen.generate([prompts[i] for i in todo], sampling, seeds=[seeds[i] for i in todo])
        for i, out in zip(todo, outs):
            self.cache[keys[i]] = out
        return [self.cache[k] for k in keys]

    def close(self):
        pass


def paired_summary(a: list[float], b: list[float]) -> dict[str, Any]:
    """mean(a - b), bootstrap CI, permutation p, minimum detectable effect (80 % power, two-sided 5 %)."""
    import numpy as np

    from harness.metrics import bootstrap_ci, paired_test

    d = [x - y for x, y in zip(a, b)]
    diff, p = paired_test(a, b, method="permutation")
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    return {"diff": diff, "ci": bootstrap_ci(d), "p": p, "mde": 2.8 * sd / math.sqrt(len(d)) if d else None}


def summarize(name: str, outcomes, stats: dict[str, Any], wall: float) -> dict[str, Any]:
    revs = [(o.problem_id, r) for o in outcomes for r in o.revisions]
    acc = {arm: [r["arms"][arm]["correct"] / r["arms"][arm]["n"] for _, r in revs if arm in r["arms"]]
           for arm in ("unrevised", "discrete", "latent")}
    good = {arm: [r["arms"][arm]["usable"] / r["arms"][arm]["n"] for _, r in revs if arm in r["arms"]] for arm in acc}
    hit = {arm: [float(r["arms"][arm]["correct"] > 0) for _, r in revs if arm in r["arms"]] for arm in acc}
    trajs = [t for o in outcomes for t in o.trajectories]
    checked = [t.valid_steps for t in trajs if t.valid_steps is not None]
    out = {"name": name, "n_revisions": len(revs), "wall_s": round(wall, 1),
           "p_changed": stats["p_changed_frac"], "changed_frac": stats["changed_frac_mean"],
           "objectives": sorted({r["objective"] for _, r in revs}),
           "acc": {k: (sum(v) / len(v) if v else None) for k, v in acc.items()},
           "acc_usable": {k: (sum(v) / len(v) if v else None) for k, v in good.items()},
           "any_correct": {k: (sum(v) / len(v) if v else None) for k, v in hit.items()},
           "rescue_rate": stats["rescue_rate"], "n_rescued": stats["n_rescued"],
           "n_rescued_usable": stats["n_rescued_usable"], "valid_step_rate": stats["valid_step_rate"],
           "n_checked": len(checked), "leak_frac": stats["leak_frac"],
           "fte_per_zero_hit": stats["fte_per_zero_hit"], "fte_per_rescued": stats["fte_per_rescued"],
           "dedup_saved_fte": stats["dedup_saved_fte"], "fte_total": stats["fte_total"]}
    for arm in ("discrete", "latent"):
        if acc[arm] and len(acc[arm]) == len(acc["unrevised"]):
            out[f"paired_{arm}"] = paired_summary(acc[arm], acc["unrevised"])
            out[f"paired_{arm}_any"] = paired_summary(hit[arm], hit["unrevised"])
            out[f"paired_{arm}_usable"] = paired_summary(good[arm], good["unrevised"])
    return out


def arm_texts(db, run_id: int) -> dict[str, dict[str, float]]:
    """Per arm, over ALL its continuations (right or wrong): mean length in tokens, share with a reflection
    ("Wait", the reflection documents of benchmarks/arith.py), mean reflection markers (mining.markers)."""
    from harness.store import Revision, session_scope
    from methods.latentrevise.mining import ARMS, markers

    by_arm: dict[str, list[dict]] = {a: [] for a in ARMS}
    with session_scope(db) as s:
        for r in s.query(Revision).filter_by(run_id=run_id):
            for c in r.continuations:  # a deduplicated arm is listed in the "arms" of the set it reuses
                for a in c["arms"]:
                    by_arm[a].append(c)
    out = {}
    for a, cs in by_arm.items():
        if cs:
            texts = [c["text"] for c in cs]
            out[a] = {"n": len(cs), "mean_tokens": sum(c["tokens"] for c in cs) / len(cs),
                      "reflect_frac": sum("wait" in t.lower() for t in texts) / len(texts),
                      "markers": sum(markers(texts).values())}
    return out


def control_accuracy(outcomes) -> dict[str, float]:
    """problem id -> accuracy of the K=0 arm (continuations of the unrevised prefix p), mean over its revisions."""
    out = {}
    for o in outcomes:
        accs = [r["arms"]["unrevised"]["correct"] / r["arms"]["unrevised"]["n"] for r in o.revisions
                if r["arms"]["unrevised"]["n"]]
        if accs:
            out[o.problem_id] = sum(accs) / len(accs)
    return out


def baseline_rows(zero, model, tok, gen, base: dict[str, Any], ctx, control: dict[str, float]) -> list[dict]:
    """resample and guided-prefix on the same zero-hit prompts at the budget matched to LatentRevise under `base`:
    accuracy of their own samples, rescue rate, FTE, and the conditioning comparison K=0 arm vs resample."""
    from methods.guided_prefix import GuidedPrefixConfig, rescue_guided_prefix
    from methods.resample import MatchedRescueConfig, rescue_resample

    rows = []
    for name, cls, rescue in (("resample", MatchedRescueConfig, rescue_resample),
                              ("guided-prefix", GuidedPrefixConfig, rescue_guided_prefix)):
        t = time.perf_counter()
        outs = rescue(zero, model, tok, gen, cls(**base), ctx)
        acc = {o.problem_id: o.n_correct / o.n_samples for o in outs if o.n_samples}
        common = sorted(set(acc) & set(control))
        row = {"name": name, "n_prompts": len(outs), "acc": sum(acc.values()) / max(1, len(acc)),
               "samples_per_prompt": sum(o.n_samples for o in outs) / max(1, len(outs)),
               "rescue_rate": sum(o.rescued for o in outs) / max(1, len(outs)),
               "fte_per_zero_hit": sum(o.fte for o in outs) / max(1, len(outs)),
               "fte_per_rescued": sum(o.fte for o in outs) / max(1, sum(o.rescued for o in outs)),
               "wall_s": round(time.perf_counter() - t, 1),
               "valid_step_rate": _rate([t.valid_steps for o in outs for t in o.trajectories]),
               "len_after": _rate([t.tokens for o in outs for t in o.trajectories]),
               "reflect_after": _rate(["wait" in t.response.lower() for o in outs for t in o.trajectories])}
        if common:  # the K=0 arm minus this baseline's samples, per prompt: what conditioning on p does
            row["paired_control_minus_this"] = paired_summary([control[p] for p in common], [acc[p] for p in common])
        rows.append(row)
    return rows


def _rate(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def examples(db, run_id: int, k: int = 3) -> list[dict[str, Any]]:
    """The first k revisions with p' != p: the failed rollout, p, p', top vertices at changed positions."""
    from harness.store import Revision, session_scope

    out = []
    with session_scope(db) as s:
        for r in s.query(Revision).filter_by(run_id=run_id).order_by(Revision.id):
            if not r.config["_stats"]["p_changed"]:
                continue
            changed = r.config["_stats"]["changed"]
            start = r.prefix_len - len(r.top_tokens)  # top_tokens covers the revised positions
            out.append({"problem": r.prompt.split("\n")[0], "gold": r.gold, "failed_rollout": r.failed_rollout,
                        "p_prime": r.discrete_prefix, "changed": changed,
                        "top_vertices": {i: r.top_tokens[i - start] for i, _, _ in changed},
                        "arms": r.config["_stats"]["arms"]})
            if len(out) == k:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=8, help="continuations per arm")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--set", action="append", default=[], help="NAME=JSON: an extra configuration")
    ap.add_argument("--examples-from", default=None, help="configuration whose example revisions are printed")
    ap.add_argument("--out", default=None)
    ap.add_argument("--screen-cache", default=None, help="pickle of the screening: reused when it exists")
    ap.add_argument("--baselines", action="store_true", help="also resample and guided-prefix at the matched budget")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.generation import HFGenerator
    from harness.grading import Grader
    from harness.method import RunContext
    from harness.store import get_or_create_run, open_db
    from methods.latentrevise.mining import LatentReviseConfig, rescue_latentrevise, rescue_stats, screen
    from repro.presets import TINY
    from repro.runs import load_train_prompts
    from repro.tiny.pretrain import ensure_tiny_base

    torch.set_num_threads(1)
    path = ensure_tiny_base()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
    gen = CachedGenerator(HFGenerator(model, tok))
    extra = {n: json.loads(js) for n, js in (s.split("=", 1) for s in a.set)}
    configs = {**{n: CONFIGS[n] for n in a.configs}, **extra}
    out_dir = Path(tempfile.mkdtemp(prefix="revise-measure-"))
    db = open_db(out_dir / "measure.db")
    base = {**BASE, "cont_samples": a.samples}
    grader = Grader(workers=0)
    run, _ = get_or_create_run(db, method="screen", model=str(path), preset="tiny", seed=0, config=base)
    ctx = RunContext(run_id=run.id, db=db, out_dir=out_dir, template=TINY.eval.template, grader=grader, progress=False)
    t0 = time.perf_counter()
    cache = Path(a.screen_cache) if a.screen_cache else None
    if cache and cache.is_file():
        screened = pickle.loads(cache.read_bytes())[: a.prompts]
    else:
        screened = screen(load_train_prompts(TINY)[: a.prompts], gen, tok, LatentReviseConfig(**base), ctx)
        if cache:
            cache.write_bytes(pickle.dumps(screened))
    zero = [s for s in screened if s.zero_hit]
    print(f"{len(screened)} prompts screened at n={base['mine_samples']}: {len(zero)} zero-hit "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    rows, example_rows, control = [], None, {}
    for name, over in configs.items():
        cfg = LatentReviseConfig(**{**base, **over})
        run, _ = get_or_create_run(db, method=name, model=str(path), preset="tiny", seed=0, config={**base, **over})
        ctx.run_id = run.id
        t1 = time.perf_counter()
        outcomes = rescue_latentrevise(zero, model, tok, gen, cfg, ctx)
        stats = rescue_stats("latentrevise", screened, outcomes, cfg=cfg)
        row = summarize(name, outcomes, stats, time.perf_counter() - t1)
        row["arm_texts"] = arm_texts(db, run.id)
        control = control or control_accuracy(outcomes)  # the same seeds in every configuration: one control
        rows.append(row)
        print(json.dumps(row), flush=True)
        if name == (a.examples_from or name):
            example_rows = examples(db, run.id)
    print(table(rows))
    matched = {**base, **configs[next(iter(configs))]}  # budgets matched to the first configuration's LatentRevise
    base_rows = baseline_rows(zero, model, tok, gen, matched, ctx, control) if a.baselines else []
    for r in base_rows:
        print(json.dumps(r), flush=True)
    if example_rows:
        print(json.dumps(example_rows, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps({"screened": len(screened), "zero_hit": len(zero), "samples": a.samples,
                                           "base": base, "rows": rows, "baselines": base_rows,
                                           "examples": example_rows}, indent=1))


def _per_arm(row: dict[str, Any], key: str, scale: float) -> str:
    texts = row.get("arm_texts", {})
    return " / ".join(f"{scale * texts[a][key]:.1f}" if a in texts else "-"
                      for a in ("unrevised", "discrete", "latent"))


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of the report."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
    ci = lambda s: "-" if s is None else f"{100 * s['diff']:+.1f} [{100 * s['ci'][0]:+.1f}, {100 * s['ci'][1]:+.1f}]"
    pval = lambda s: "-" if s is None else f"{s['p']:.2g}"
    mde = lambda s: "-" if s is None else f"{100 * s['mde']:.1f}"
    lines = ["| config | revisions | p' != p | pos. changed | acc p | acc p' | diff p'-p [95% CI] | p | MDE | "
             "acc Z | diff Z-p [95% CI] | p | usable acc p / p' | diff usable p'-p [95% CI] | p | "
             ">=1 correct p / p' / Z | valid steps | FTE / zero-hit | dedupe saved | tokens p / p' / Z | "
             "reflect % p / p' / Z |",
             "|" + "---|" * 21]
    for r in rows:
        d, z, acc, hit = r.get("paired_discrete"), r.get("paired_latent"), r["acc"], r["any_correct"]
        u, good = r.get("paired_discrete_usable"), r["acc_usable"]
        lines.append(
            f"| {r['name']} | {r['n_revisions']} | {pct(r['p_changed'])} % | {pct(r['changed_frac'])} % | "
            f"{pct(acc['unrevised'])} | {pct(acc['discrete'])} | {ci(d)} | {pval(d)} | {mde(d)} | "
            f"{pct(acc['latent'])} | {ci(z)} | {pval(z)} | {pct(good['unrevised'])} / {pct(good['discrete'])} | "
            f"{ci(u)} | {pval(u)} | {pct(hit['unrevised'])} / {pct(hit['discrete'])} / "
            f"{pct(hit['latent'])} | {pct(r['valid_step_rate'])} % (n={r['n_checked']}) | "
            f"{r['fte_per_zero_hit']:.0f} | {r['dedup_saved_fte']:.0f} | {_per_arm(r, 'mean_tokens', 1)} | "
            f"{_per_arm(r, 'reflect_frac', 100)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
