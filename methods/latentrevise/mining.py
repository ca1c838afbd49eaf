"""Mining: find zero-hit prompts, rescue them, verify, and turn rescues into training data.

    screened = screen(problems, generator, tokenizer, cfg, ctx)          # n rollouts per prompt, graded
    outcomes = rescue_latentrevise(zero_hit, model, tokenizer, gen, cfg, ctx)   # revise + continue + verify
    stats    = rescue_stats("latentrevise", screened, outcomes); log_rescue(ctx, stats)

`mine(...)` does all of it for one method (LatentRevise, or the `resample`/`hint` baselines in
methods/resample.py, methods/hint.py, which plug in their own rescue function), so the three
produce the same `Trajectory` records and the same statistics.

Where things land in results.db (the tables read these):
- `rollouts`: every screening sample (source "policy", `zero_hit_group` set for zero-hit prompts)
  and every correct rescued trajectory (source "revised" | "resample" | "hint", reward 1).
- `revisions`: one row per LatentRevise revision (losses per FW step, top tokens per position,
  p', continuations with verdicts, rescued, leakage, wall time, peak memory). `config` is the
  revision config plus `config["_stats"]` = {fte_revise, fte_continue, n_vertices_mean, step}.
- `train_steps` phase "mining" (step = GRPO step for online mining, else 0): `zero_hit_frac`,
  `zero_hit_ids`, `timings`, and `extra["rescue"]` = the dict of `rescue_stats` (rescue rate,
  compute per rescued prompt, lengths and reflection markers before/after, leakage).

Compute unit: FTE, forward-token equivalents (see core.py): a sampled sequence costs its prompt
tokens plus its generated tokens; a revision costs what core.ReviseResult.fte counts. The shared
screening pass is reported apart (`screen_fte`) and not charged to any rescue method.

Leakage (our rule; the abstract names the risk, not a test). A correct trajectory is flagged when
(A) the revision wrote the answer into the prefix: p' contains "\\boxed" or the gold answer as a
standalone token (not inside a longer number or word) while the original prefix p did not; or
(B) it restates the answer without reasoning: the continuation before its last answer statement
has fewer than `leak_min_words` words and the gold answer appears nowhere before that answer
statement (neither in p' nor in the continuation's reasoning). Flagged
trajectories are stored and counted but left out of training data unless `include_leaky`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from benchmarks import Problem
from harness.generation import Completion, Sampling, stable_seed

from .core import ReviseConfig, ReviseItem, Reviser, ReviseResult, gold_text, prefix_length

MARKERS = {"wait": r"\bwait\b", "check": r"\bcheck\w*", "verify": r"\bverif\w*"}


@dataclass
class MiningConfig:
    mine_samples: int = 8  # rollouts per training prompt when screening for zero-hit prompts
    mine_temperature: float = 1.0
    mine_top_p: float = 1.0
    mine_max_tokens: int = 1024
    mine_prompts: int | None = None  # screen at most this many training prompts (None: all)
    mine_source: str = "sample"  # sample | rollouts (zero-hit groups stored by a GRPO run)
    mine_rollouts_run: int | None = None  # that run's id (mine_source="rollouts")
    failed_per_prompt: int = 2  # failed rollouts revised per zero-hit prompt (first ones with >= 2 tokens)
    cont_samples: int = 4  # m continuations per revised prefix and mode
    cont_temperature: float = 1.0
    cont_top_p: float = 1.0
    cont_max_tokens: int | None = None  # None: mine_max_tokens
    cont_modes: str = "both"  # latent | discrete | both: continue from Z, from p' as tokens, or both
    train_prefix: str = "both"  # which rescued continuations become training data: latent | discrete | both
    max_per_prompt: int = 4  # training trajectories kept per rescued prompt (distinct texts)
    include_leaky: bool = False
    leak_min_words: int = 3


@dataclass
class LatentReviseConfig(MiningConfig, ReviseConfig):
    """Flat: every mining and revision field at the top level (ablations vary them by name)."""


def sub_config(cls: type, cfg: Any) -> Any:
    """The `cls` dataclass filled from same-named fields of `cfg` (flat configs -> parts)."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)})


@dataclass
class Screened:
    problem: Problem
    prompt_text: str
    prompt_ids: list[int]
    rollouts: list[Completion]
    correct: list[bool]

    @property
    def zero_hit(self) -> bool:
        return not any(self.correct)


@dataclass
class Trajectory:
    problem_id: str
    prompt: str  # the training prompt (never the hint)
    response: str
    gold: str
    source: str  # latentrevise | resample | hint
    mode: str  # latent | discrete | sample | hint
    correct: bool
    leakage: bool
    tokens: int
    latent: dict[str, Any] | None = field(default=None, repr=False)  # LatentRevise: sparse prefix weights


@dataclass
class RescueOutcome:
    problem_id: str
    fte: float
    trajectories: list[Trajectory]  # correct ones only

    @property
    def rescued(self) -> bool:
        return bool(self.trajectories)

    @property
    def rescued_clean(self) -> bool:
        return any(not t.leakage for t in self.trajectories)


# ------------------------------------------------------------------------------------------------
# leakage and text statistics
# ------------------------------------------------------------------------------------------------

def _has_answer(text: str, gold: str) -> bool:
    g = gold.strip()
    return bool(g) and re.search(r"(?<![\w.])" + re.escape(g) + r"(?![\w]|\.\d)", text) is not None


def prefix_leak(prefix_text: str, original_prefix: str, gold: str) -> bool:
    """Rule A: the revision wrote the answer (or a \\boxed) into the prefix."""
    return ("\\boxed" in prefix_text and "\\boxed" not in original_prefix) or \
        (_has_answer(prefix_text, gold) and not _has_answer(original_prefix, gold))


def bare_restatement(prefix_text: str, continuation: str, gold: str, min_words: int) -> bool:
    """Rule B: < `min_words` words before the answer sentence, and the answer is derived nowhere before it."""
    cut = continuation.rfind("\\boxed")
    reasoning = continuation[:cut] if cut >= 0 else continuation
    sentence = max(reasoning.rfind(". "), reasoning.rfind("\n"))  # drop the answer sentence's lead-in
    reasoning = reasoning[: sentence + 1] if sentence >= 0 else ""
    return len(reasoning.split()) < min_words and not _has_answer(prefix_text + reasoning, gold)


def leak_check(prefix_text: str, original_prefix: str, continuation: str, gold: str, min_words: int) -> bool:
    """Rule A or rule B of the module docstring."""
    return prefix_leak(prefix_text, original_prefix, gold) or \
        bare_restatement(prefix_text, continuation, gold, min_words)


def markers(texts: Sequence[str]) -> dict[str, float]:
    """Mean occurrences per text of each reflection marker (case-insensitive)."""
    if not texts:
        return {k: 0.0 for k in MARKERS}
    return {k: sum(len(re.findall(p, t, re.I)) for t in texts) / len(texts) for k, p in MARKERS.items()}


# ------------------------------------------------------------------------------------------------
# screening
# ------------------------------------------------------------------------------------------------

def render_prompt(problem_text: str, template: str, tokenizer) -> str:
    from harness.prompts import render

    return render(template, problem_text, tokenizer)


def _stops(template: str) -> tuple[str, ...]:
    from harness.prompts import stop_sequences

    return stop_sequences(template)


def screen(problems: Sequence[Problem], generator, tokenizer, cfg: MiningConfig, ctx, step: int = 0) -> list[Screened]:
    """`mine_samples` rollouts per prompt, graded; all of them logged to `rollouts`."""
    problems = list(problems)[: cfg.mine_prompts] if cfg.mine_prompts else list(problems)
    texts = [render_prompt(p.problem, ctx.template, tokenizer) for p in problems]
    sampling = Sampling(n=cfg.mine_samples, temperature=cfg.mine_temperature, top_p=cfg.mine_top_p,
                        max_tokens=cfg.mine_max_tokens, seed=ctx.seed, stop=_stops(ctx.template))
    seeds = [stable_seed(ctx.seed, "mine", step, p.id) for p in problems]
    outs = generator.generate(texts, sampling, seeds=seeds, progress=ctx.progress)
    verdicts = ctx.grader.grade([(c.text, p.answer) for p, cs in zip(problems, outs) for c in cs])
    screened, rows, i = [], [], 0
    for p, text, cs in zip(problems, texts, outs):
        ok = [v.correct for v in verdicts[i:i + len(cs)]]
        i += len(cs)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        screened.append(Screened(p, text, ids, cs, ok))
        rows += [dict(step=step, problem_id=p.id, sample_index=j, source="policy", prompt=text, completion=c.text,
                      gold=p.answer, reward=float(k), zero_hit_group=not any(ok)) for j, (c, k) in enumerate(zip(cs, ok))]
    ctx.log_rollouts(rows)
    return screened


def screened_from_rollouts(run_id: int, problems: Sequence[Problem], tokenizer, ctx) -> list[Screened]:
    """Zero-hit groups stored by another run (e.g. GRPO) instead of sampling anew."""
    from harness.store import Rollout, session_scope

    by_id = {p.id: p for p in problems}
    with session_scope(ctx.db) as s:
        rows = s.query(Rollout).filter_by(run_id=run_id, source="policy", zero_hit_group=True) \
            .order_by(Rollout.step, Rollout.problem_id, Rollout.sample_index).all()
        groups: dict[tuple[int, str], list[Rollout]] = {}
        for r in rows:
            groups.setdefault((r.step, r.problem_id), []).append(r)
        out = []
        for (_, pid), rs in groups.items():
            p = by_id.get(pid) or Problem(pid, "", rs[0].gold)
            comps = [Completion(r.completion, tokenizer(r.completion, add_special_tokens=False).input_ids, "stop", 0)
                     for r in rs]
            out.append(Screened(p, rs[0].prompt, tokenizer(rs[0].prompt, add_special_tokens=False).input_ids,
                                comps, [False] * len(rs)))
    if not out:
        raise ValueError(f"run {run_id} has no zero-hit rollouts in results.db (table rollouts)")
    return out


# ------------------------------------------------------------------------------------------------
# LatentRevise rescue
# ------------------------------------------------------------------------------------------------

def _clean_ids(ids: list[int], tokenizer) -> list[int]:
    special = set(tokenizer.all_special_ids)
    while ids and ids[-1] in special:
        ids = ids[:-1]
    return ids


def pick_failed(sc: Screened, cfg: MiningConfig, tokenizer) -> list[list[int]]:
    """The failed rollouts a zero-hit prompt gets revised: the first `failed_per_prompt` with >= 2 tokens."""
    picked = [_clean_ids(list(c.token_ids), tokenizer) for c in sc.rollouts]
    return [ids for ids in picked if len(ids) >= 2][: cfg.failed_per_prompt]


def predicted_lr_fte(sc: Screened, reviser: Reviser, cfg: LatentReviseConfig, tokenizer, template: str) -> float:
    """What LatentRevise would spend on this prompt (same FTE formula), with its failed continuations'
    lengths standing in for the lengths of the continuations it would sample: the matched budget."""
    rcfg = reviser.cfg
    gold_len = len(tokenizer(gold_text(sc.problem.answer, rcfg, template), add_special_tokens=False).input_ids)
    use_away = rcfg.loss_terms == "away" or (rcfg.loss_terms == "both" and rcfg.away_weight > 0)
    n_modes = 2 if cfg.cont_modes == "both" else 1
    n_ls = rcfg.fw_steps * len(rcfg.line_search_grid) if rcfg.step_rule == "line-search" else 0
    total = 0.0
    for ids in pick_failed(sc, cfg, tokenizer):
        n, x = len(ids), len(sc.prompt_ids)
        L = prefix_length(n, rcfg)
        start = 0 if rcfg.revise_last is None else max(0, L - rcfg.revise_last)
        away = min(n - L, rcfg.away_max_tokens or n)
        rows = (L + gold_len) + ((L + away) if use_away else 0)
        total += reviser.fte(x, L - start, rows, 2 if use_away else 1, n_ls)
        total += n_modes * cfg.cont_samples * (x + n)  # prompt + prefix + a continuation as long as the failed one
    return total


def rescue_latentrevise(zero_hit: Sequence[Screened], model, tokenizer, generator, cfg: LatentReviseConfig,
                        ctx, step: int = 0) -> list[RescueOutcome]:
    """Revise up to `failed_per_prompt` failed rollouts per zero-hit prompt, continue, verify, log."""
    rcfg = sub_config(ReviseConfig, cfg)
    reviser = Reviser(model, tokenizer, rcfg, template=ctx.template)
    items = [ReviseItem(sc.prompt_ids, ids, sc.problem.answer, key=(sc, j))
             for sc in zero_hit for j, ids in enumerate(pick_failed(sc, cfg, tokenizer))]
    results = [r for r in _revise_with_progress(reviser, items, rcfg.revise_batch, ctx.progress) if r is not None]

    modes = ["latent", "discrete"] if cfg.cont_modes == "both" else [cfg.cont_modes]
    sampling = Sampling(n=cfg.cont_samples, temperature=cfg.cont_temperature, top_p=cfg.cont_top_p,
                        max_tokens=cfg.cont_max_tokens or cfg.mine_max_tokens, seed=ctx.seed, stop=_stops(ctx.template))
    conts: dict[str, list[list[Completion]]] = {}
    for mode in modes:
        prompts = [r.prompt_embeds if mode == "latent" else r.item.prompt_ids + r.discrete_ids for r in results]
        seeds = [stable_seed(ctx.seed, "lr", step, r.item.key[0].problem.id, r.item.key[1], mode) for r in results]
        conts[mode] = generator.generate(prompts, sampling, seeds=seeds, progress=ctx.progress)
    pairs, index = [], []
    for ri, r in enumerate(results):
        p_text = tokenizer.decode(r.discrete_ids, skip_special_tokens=True)
        for mode in modes:
            for c in conts[mode][ri]:
                pairs.append((p_text + c.text, r.item.gold))
                index.append((ri, mode, c))
    verdicts = ctx.grader.grade(pairs) if pairs else []

    per_result: dict[int, list[tuple[str, Completion, Any]]] = {}
    for (ri, mode, c), v in zip(index, verdicts):
        per_result.setdefault(ri, []).append((mode, c, v))
    outcomes = {sc.problem.id: RescueOutcome(sc.problem.id, 0.0, []) for sc in zero_hit}
    rev_rows, traj_rows, latents = [], [], []
    for ri, r in enumerate(results):
        sc: Screened = r.item.key[0]
        pid, gold = sc.problem.id, sc.problem.answer
        p_text = tokenizer.decode(r.discrete_ids, skip_special_tokens=True)
        orig_text = tokenizer.decode(r.prefix_ids, skip_special_tokens=True)
        leak_a = prefix_leak(p_text, orig_text, gold)
        cont_fte = sum(len(r.item.prompt_ids) + r.prefix_len + len(c.token_ids) for _, c, _ in per_result.get(ri, []))
        latent = {"problem_id": pid, "prompt_ids": r.item.prompt_ids, "prefix_ids": r.prefix_ids,
                  "vertex_ids": r.vertex_ids, "vertex_weights": r.vertex_weights, "revise_start": r.revise_start}
        latents.append(latent)
        conts_json, any_leak = [], leak_a
        for mode, c, v in per_result.get(ri, []):
            leak = v.correct and leak_check(p_text, orig_text, c.text, gold, cfg.leak_min_words)
            any_leak |= leak
            conts_json.append({"text": c.text, "mode": mode, "correct": bool(v.correct), "extracted": v.extracted,
                               "leakage": bool(leak), "tokens": len(c.token_ids)})
            if v.correct:
                outcomes[pid].trajectories.append(Trajectory(
                    pid, sc.prompt_text, p_text + c.text, gold, "latentrevise", mode, True, bool(leak),
                    r.prefix_len + len(c.token_ids), latent={"index": len(latents) - 1}))
        outcomes[pid].fte += r.fte + cont_fte
        n_vert = (r.vertex_weights > 0).sum(-1).float().mean().item()
        rev_rows.append(dict(
            problem_id=pid, prompt=sc.prompt_text, gold=gold,
            failed_rollout=tokenizer.decode(r.item.rollout_ids, skip_special_tokens=True),
            prefix_len=r.prefix_len, fw_steps=rcfg.fw_steps,
            config={**dataclasses.asdict(rcfg), "_stats": {"fte_revise": r.fte, "fte_continue": cont_fte,
                                                         "n_vertices_mean": n_vert, "step": step,
                                                         "best_step": r.best_step, "gammas": r.gammas}},
            gold_loss=r.gold_loss, away_loss=r.away_loss, top_tokens=r.top_tokens(tokenizer, rcfg.record_top),
            discrete_prefix=p_text, continuations=conts_json,
            rescued=any(c["correct"] for c in conts_json), leakage=bool(any_leak),
            wall_s=r.wall_s, peak_mem_mb=r.peak_mem_mb))
    if rev_rows:
        ctx.log_revisions(rev_rows)
        path = ctx.out_dir / f"latent_prefixes_step{step}.pt"
        torch.save(latents, path)
    return list(outcomes.values())


def _revise_with_progress(reviser: Reviser, items: list[ReviseItem], batch: int, progress: bool) -> list[ReviseResult | None]:
    from rich.progress import Progress

    out: list[ReviseResult | None] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("revising failed rollouts", total=len(items))
        for start in range(0, len(items), batch):
            out += reviser.revise(items[start:start + batch])
            bar.advance(task, len(items[start:start + batch]))
    return out


# ------------------------------------------------------------------------------------------------
# statistics, training data, the whole pipeline
# ------------------------------------------------------------------------------------------------

def rescue_stats(source: str, screened: Sequence[Screened], outcomes: Sequence[RescueOutcome],
                 wall_s: float = 0.0) -> dict[str, Any]:
    """The same statistics for every rescue method (see the module docstring for where they go)."""
    zero = [s for s in screened if s.zero_hit]
    n_res = sum(o.rescued for o in outcomes)
    n_clean = sum(o.rescued_clean for o in outcomes)
    fte = sum(o.fte for o in outcomes)
    before = [c for s in zero for c in s.rollouts]
    after = [t for o in outcomes for t in o.trajectories]
    return {
        "source": source, "unit": "FTE (forward-token equivalents)",
        "n_prompts": len(screened), "n_zero_hit": len(zero),
        "zero_hit_frac": len(zero) / len(screened) if screened else 0.0,
        "n_rescued": n_res, "n_rescued_clean": n_clean,
        "rescue_rate": n_res / len(zero) if zero else 0.0,
        "clean_rescue_rate": n_clean / len(zero) if zero else 0.0,
        "fte_total": fte, "fte_per_zero_hit": fte / len(zero) if zero else 0.0,
        "fte_per_rescued": fte / n_res if n_res else None,
        "screen_fte": float(sum(len(s.prompt_ids) * len(s.rollouts) + sum(len(c.token_ids) for c in s.rollouts)
                                for s in screened)),
        "n_trajectories": len(after), "leak_frac": sum(t.leakage for t in after) / len(after) if after else 0.0,
        "len_before": sum(len(c.token_ids) for c in before) / len(before) if before else 0.0,
        "len_after": sum(t.tokens for t in after) / len(after) if after else 0.0,
        "markers_before": markers([c.text for c in before]),
        "markers_after": markers([t.response for t in after]),
        "wall_s": wall_s,
    }


def training_pairs(outcomes: Sequence[RescueOutcome], cfg: MiningConfig) -> list[tuple[str, str]]:
    """(prompt, response) pairs: correct, non-leaky (unless include_leaky), mode-filtered, deduplicated."""
    keep_modes = {"latent", "discrete"} if cfg.train_prefix == "both" else {cfg.train_prefix}
    pairs = []
    for o in outcomes:
        seen: set[str] = set()
        for t in o.trajectories:
            if (t.leakage and not cfg.include_leaky) or t.response in seen:
                continue
            if t.source == "latentrevise" and t.mode not in keep_modes:
                continue
            seen.add(t.response)
            pairs.append((t.prompt, t.response))
            if len(seen) >= cfg.max_per_prompt:
                break
    return pairs


def log_rescue(ctx, stats: dict[str, Any], screened: Sequence[Screened], outcomes: Sequence[RescueOutcome],
               step: int = 0, trajectories: bool = True) -> None:
    """The statistics to `train_steps` (phase "mining") and, if `trajectories`, the rescues to `rollouts`."""
    zero_ids = [s.problem.id for s in screened if s.zero_hit]
    ctx.log_step(step, phase="mining", zero_hit_frac=stats["zero_hit_frac"], zero_hit_ids=zero_ids,
                 timings={"rescue_s": stats["wall_s"]}, rescue=stats)
    if not trajectories:
        return
    source = {"latentrevise": "revised"}.get(stats["source"], stats["source"])
    ctx.log_rollouts(dict(step=step, problem_id=t.problem_id, sample_index=i, source=source, prompt=t.prompt,
                          completion=t.response, gold=t.gold, reward=1.0, zero_hit_group=True)
                     for o in outcomes for i, t in enumerate(o.trajectories))


Rescuer = Callable[..., list[RescueOutcome]]  # (zero_hit, model, tokenizer, generator, cfg, ctx, step) -> outcomes


@dataclass
class MiningResult:
    screened: list[Screened]
    outcomes: list[RescueOutcome]
    stats: dict[str, Any]
    pairs: list[tuple[str, str]]


def load_frozen_model(path: str, device: str):
    """The policy for revision: bf16 on CUDA, float32 on CPU, every parameter frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(path)


def mine(base_model: str, problems: Sequence[Problem], cfg: MiningConfig, ctx, rescuer: Rescuer,
         source: str, step: int = 0) -> MiningResult:
    """Screen, rescue the zero-hit prompts with `rescuer`, log rows and statistics, return training pairs."""
    model, tokenizer = load_frozen_model(base_model, ctx.device)
    generator = ctx.make_generator(base_model)
    try:
        t0 = time.perf_counter()
        if cfg.mine_source == "rollouts":
            if cfg.mine_rollouts_run is None:
                raise ValueError("mine_source='rollouts' needs mine_rollouts_run (a run id in results.db)")
            screened = screened_from_rollouts(cfg.mine_rollouts_run, problems, tokenizer, ctx)
        elif cfg.mine_source == "sample":
            screened = screen(problems, generator, tokenizer, cfg, ctx, step)
        else:
            raise ValueError(f"mine_source must be 'sample' or 'rollouts', got {cfg.mine_source!r}")
        zero_hit = [s for s in screened if s.zero_hit]
        t1 = time.perf_counter()
        outcomes = rescuer(zero_hit, model, tokenizer, generator, cfg, ctx, step) if zero_hit else []
        stats = rescue_stats(source, screened, outcomes, wall_s=time.perf_counter() - t1)
        stats["screen_s"] = t1 - t0
        log_rescue(ctx, stats, screened, outcomes, step)
        return MiningResult(screened, outcomes, stats, training_pairs(outcomes, cfg))
    finally:
        generator.close()
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
