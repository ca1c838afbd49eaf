"""The planted diagnostic: can the revision find a fix that is known to exist?

On the tiny preset's pretrained base model (repro/tiny/pretrain.ensure_tiny_base), take arith-train
problems whose reference solution has at least two steps, keep its first step as the prefix and
change ONE digit of that step's result (" 23 + 45 = 68." -> " 23 + 45 = 69."). The failed rollout
is the planted prefix plus a wrong continuation the model samples from it; the revision sees that
rollout with L = the planted prefix (every position revisable) and the gold answer. Measured:

    fixed     accuracy of free continuations from the CORRECT first step (the fix is worth this much)
    before    accuracy from the planted prefix (the K=0 arm)
    recovered share of cases whose revised discrete prefix p' carries the right digit at the planted
              position (max-weight: the heaviest vertex), with a Wilson 95% interval; chance is
              1/10 (a digit drawn at random), 0 for a revision that never touches the position
    after     accuracy of free continuations from p' (and from Z when Z is not a vertex), same seeds
              as `before`; the paired difference over cases with a sign-flip permutation p-value
    changed   mean share of prefix positions whose token changed

    PYTHONPATH=. python bench/planted.py --cases 120 --samples 16 [--configs NAME ...] [--out planted.json]

Configurations are named in CONFIGS (ReviseConfig overrides). `run_planted` is also what the fast
test (tests/test_planted.py) runs on a handful of cases.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

BASE = {"fw_steps": 3, "step_rule": "gap-topm", "flip_positions": 1, "away_weight": 0.5, "fluency_weight": 0.0}
CONFIGS: dict[str, dict[str, Any]] = {
    # the objectives with a step rule that can flip tokens (one position per step, K=3)
    "gold-after-prefix": {"objective": "gold-after-prefix"},
    "gold-in-rollout": {"objective": "gold-in-rollout"},
    "answer-away": {"objective": "gold-in-rollout", "loss_terms": "away"},
    "self-contrast": {"objective": "self-contrast"},
    "fluency": {"objective": "fluency", "fluency_weight": 1.0},
    "gold-after-prefix+fluency": {"objective": "gold-after-prefix", "fluency_weight": 1.0},
    "gold-in-rollout+fluency": {"objective": "gold-in-rollout", "fluency_weight": 1.0},
    "self-contrast+fluency": {"objective": "self-contrast", "fluency_weight": 1.0},
    # the step rule evaluated by the true objective
    "gold-in-rollout+fluency/gcg": {"objective": "gold-in-rollout", "fluency_weight": 1.0, "step_rule": "gcg"},
    "gold-after-prefix/gcg": {"objective": "gold-after-prefix", "step_rule": "gcg"},
    # the old settings: tiny (const 0.1, K=3: p' = p by construction) and the generic harmonic K=10
    "old-tiny": {"objective": "gold-after-prefix", "step_rule": "const", "step_const": 0.1},
    "old-generic": {"objective": "gold-after-prefix", "step_rule": "harmonic", "fw_steps": 10},
}


@dataclass
class Case:
    pid: str
    gold: str
    prompt_ids: list[int]
    planted_ids: list[int]
    fixed_ids: list[int]
    pos: int  # the planted token's index in the prefix
    right: int  # the right token there
    rollout_ids: list[int] = field(default_factory=list)  # planted prefix + a wrong continuation


def make_cases(tokenizer, n: int, seed: int = 0) -> list[Case]:
    """`n` planted cases from arith-train (first step's result, one digit changed; seeded)."""
    from benchmarks.arith import train_prompts
    from harness.prompts import render

    rng, out = random.Random(seed), []
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids
    for p in train_prompts():
        sentences = p.meta["solution"].split(". ")
        if len(sentences) < 3:  # at least two steps before the answer sentence
            continue
        first = " " + sentences[0] + "."
        m = re.search(r"= (\d+)\.$", first)
        result, j = m.group(1), rng.randrange(len(m.group(1)))
        digits = [d for d in "0123456789" if d != result[j] and not (j == 0 and d == "0" and len(result) > 1)]
        planted = first[: m.start(1) + j] + rng.choice(digits) + first[m.start(1) + j + 1:]
        fixed_ids, planted_ids = enc(first), enc(planted)
        diff = [i for i, (a, b) in enumerate(zip(fixed_ids, planted_ids)) if a != b]
        if len(fixed_ids) != len(planted_ids) or len(diff) != 1:
            continue  # the digit is not its own token here
        out.append(Case(p.id, p.answer, enc(render("tiny-boxed", p.problem, tokenizer)), planted_ids, fixed_ids,
                        diff[0], fixed_ids[diff[0]]))
        if len(out) == n:
            break
    return out


def _sample(gen, prompts, seeds, m: int, max_tokens: int = 96):
    from harness.generation import Sampling

    return gen.generate(prompts, Sampling(n=m, temperature=1.0, max_tokens=max_tokens), seeds=seeds)


def _correct(grader, prefix_texts: Sequence[str], outs, golds: Sequence[str]) -> list[list[bool]]:
    pairs = [(t + c.text, g) for t, cs, g in zip(prefix_texts, outs, golds) for c in cs]
    flat, it = [v.correct for v in grader.grade(pairs)], 0
    res = []
    for cs in outs:
        res.append(flat[it:it + len(cs)])
        it += len(cs)
    return res


def prepare(cases: list[Case], model, tokenizer, gen, grader, m: int, seed: int = 0,
            fixed: bool = True) -> dict[str, Any]:
    """The arms every configuration shares: samples from the planted prefix (and, with `fixed`, from the
    correct one); each case's failed rollout (its first wrong planted continuation); cases without one
    are dropped."""
    from harness.generation import stable_seed

    seeds = [stable_seed(seed, "planted", c.pid) for c in cases]
    dec = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    before = _sample(gen, [c.prompt_ids + c.planted_ids for c in cases], seeds, m)
    ok_fixed = [[]] * len(cases)
    if fixed:
        outs = _sample(gen, [c.prompt_ids + c.fixed_ids for c in cases], seeds, m)
        ok_fixed = _correct(grader, [dec(c.fixed_ids) for c in cases], outs, [c.gold for c in cases])
    ok_before = _correct(grader, [dec(c.planted_ids) for c in cases], before, [c.gold for c in cases])
    keep = []
    for i, c in enumerate(cases):
        wrong = [o for o, ok in zip(before[i], ok_before[i]) if not ok and o.token_ids]
        if wrong:
            c.rollout_ids = c.planted_ids + [t for t in wrong[0].token_ids if t not in tokenizer.all_special_ids]
            keep.append(i)
    return {"cases": [cases[i] for i in keep], "seeds": [seeds[i] for i in keep],
            "before": [before[i] for i in keep], "ok_before": [ok_before[i] for i in keep],
            "ok_fixed": [ok_fixed[i] for i in keep]}


def run_config(name: str, over: dict[str, Any], prep: dict[str, Any], model, tokenizer, gen, grader, m: int,
               continuations: bool = True) -> dict[str, Any]:
    """Revise every planted case under BASE + `over`; recovery, changed share, accuracy after (paired)."""
    from harness.metrics import bootstrap_ci, paired_test
    from methods.latentrevise.core import ReviseConfig, ReviseItem, Reviser

    cases = prep["cases"]
    cfg = ReviseConfig(**{**BASE, **over, "prefix_len": None})
    items = [ReviseItem(c.prompt_ids, c.rollout_ids, c.gold, seed=s,
                        contrast=[(list(o.token_ids), ok) for o, ok in zip(outs, oks)])
             for c, s, outs, oks in zip(cases, prep["seeds"], prep["before"], prep["ok_before"])]
    t0 = time.perf_counter()
    results = []
    for c, it in zip(cases, items):  # each case has its own L: one config per case keeps prefix_len exact
        reviser = Reviser(model, tokenizer, replace(cfg, prefix_len=len(c.planted_ids)), template="tiny-boxed")
        results += reviser.revise([it])
    revise_s = time.perf_counter() - t0
    recovered = [r.discrete_ids[c.pos] == c.right for c, r in zip(cases, results)]
    out = {"name": name, "config": over, "n": len(cases), "recovered": sum(recovered),
           "recovered_rate": sum(recovered) / len(cases), "recovered_ci": wilson(sum(recovered), len(cases)),
           "changed_frac": sum(r.changed_frac for r in results) / len(results),
           "p_changed": sum(r.discrete_ids != r.prefix_ids for r in results) / len(results),
           "objectives": sorted({r.objective for r in results}), "revise_s": round(revise_s, 2)}
    if not continuations:
        return out
    before = [sum(o) / len(o) for o in prep["ok_before"]]
    arms = {"discrete": [r.discrete_ids for r in results]}
    for arm, prefixes in arms.items():
        todo = [i for i, (p, r) in enumerate(zip(prefixes, results)) if p != r.prefix_ids]
        acc = list(before)  # p' = p: the same samples as before (dedupe)
        if todo:
            outs = _sample(gen, [cases[i].prompt_ids + prefixes[i] for i in todo], [prep["seeds"][i] for i in todo], m)
            oks = _correct(grader, [tokenizer.decode(prefixes[i], skip_special_tokens=True) for i in todo], outs,
                           [cases[i].gold for i in todo])
            for i, ok in zip(todo, oks):
                acc[i] = sum(ok) / len(ok)
        diff, p = paired_test(acc, before, method="permutation")
        d = [a - b for a, b in zip(acc, before)]
        out[f"acc_{arm}"] = sum(acc) / len(acc)
        out[f"diff_{arm}"], out[f"diff_{arm}_p"] = diff, p
        out[f"diff_{arm}_ci"] = bootstrap_ci(d)
        # accuracy after, among the cases whose planted digit the revision recovered
        rec = [a for a, ok in zip(acc, recovered) if ok]
        out[f"acc_{arm}_recovered"] = sum(rec) / len(rec) if rec else None
    out["acc_before"] = sum(before) / len(before)
    fixed = [sum(o) / len(o) for o in prep["ok_fixed"] if o]
    out["acc_fixed"] = sum(fixed) / len(fixed) if fixed else None
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / denom, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def load_tiny(threads: int = 1):
    """The tiny base model (float32, eval), its tokenizer, a transformers generator and an in-process grader."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.generation import HFGenerator
    from harness.grading import Grader
    from repro.tiny.pretrain import ensure_tiny_base

    torch.set_num_threads(threads)
    path = ensure_tiny_base()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.requires_grad_(False)
    return model, tok, HFGenerator(model, tok), Grader(workers=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=120)
    ap.add_argument("--samples", type=int, default=16, help="continuations per case and arm")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    model, tok, gen, grader = load_tiny()
    t0 = time.perf_counter()
    prep = prepare(make_cases(tok, a.cases, a.seed), model, tok, gen, grader, a.samples, a.seed)
    print(f"{len(prep['cases'])} planted cases, {a.samples} continuations each: accuracy from the fixed prefix "
          f"{100 * sum(sum(o) / len(o) for o in prep['ok_fixed']) / len(prep['cases']):.1f} %, from the planted one "
          f"{100 * sum(sum(o) / len(o) for o in prep['ok_before']) / len(prep['cases']):.1f} % "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print("| config | recovered [95% CI] | p' != p | changed | acc before | acc after (p') | diff [95% CI] | p |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in a.configs:
        r = run_config(name, CONFIGS[name], prep, model, tok, gen, grader, a.samples)
        rows.append(r)
        lo, hi = r["recovered_ci"]
        dlo, dhi = r["diff_discrete_ci"]
        print(f"| {name} | {r['recovered']}/{r['n']} = {100 * r['recovered_rate']:.0f} % "
              f"[{100 * lo:.0f}-{100 * hi:.0f}] | "
              f"{100 * r['p_changed']:.0f} % | {100 * r['changed_frac']:.1f} % | {100 * r['acc_before']:.1f} | "
              f"{100 * r['acc_discrete']:.1f} | {100 * r['diff_discrete']:+.1f} [{100 * dlo:+.1f}, {100 * dhi:+.1f}] | "
              f"{r['diff_discrete_p']:.2g} |", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"cases": len(prep["cases"]), "samples": a.samples, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
