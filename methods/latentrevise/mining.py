"""Mining: find zero-hit prompts, rescue them, verify, and turn rescues into training data.

    screened = screen(problems, generator, tokenizer, cfg, ctx)          # n rollouts per prompt, graded
    outcomes = rescue_latentrevise(zero_hit, model, tokenizer, gen, cfg, ctx)   # revise + continue + verify
    stats    = rescue_stats("latentrevise", screened, outcomes); log_rescue(ctx, stats)

`mine(...)` does all of it for one method (LatentRevise, or the `resample`/`hint` baselines in
methods/resample.py, methods/hint.py, which plug in their own rescue function), so every method
produces the same `Trajectory` records and the same statistics.

One LatentRevise revision of a failed rollout y = p + c (p its first L tokens) has up to three ARMS
of `cont_samples` continuations each, all drawn with the SAME per-revision seeds (common random
numbers, so that arms are paired sample by sample):
    unrevised  from [x ; p] as tokens: the K=0 control (always sampled, before the revision; the
               self-contrast objective reads it)
    discrete   from [x ; p'] as tokens
    latent     from [x ; Z] as prompt embeddings
Dedupe: an arm whose conditioning equals an arm already sampled is not sampled again; it reuses
those continuations (same conditioning and seeds = the same samples): discrete when p' = p
(same_as "unrevised"), latent when Z is a vertex of the hull (Z = E[p'] exactly: same_as "discrete",
or "unrevised" when also p' = p). Their cost is counted as saved (`dedup_saved_fte`), not spent.

Honest training text (the rule). A trajectory is stored as the text it was generated from: an
unrevised or discrete continuation after p or p' (the tokens it conditioned on); a latent
continuation after p' only when Z = E[p'] (then p' IS its conditioning) or when re-scoring shows
the text is one the policy produces from p' about as readily as from Z: mean log p(c | x, p')
>= mean log p(c | x, Z) - `latent_text_margin` nats/token (`honest`; otherwise the continuation
is kept in `revisions` and in the arm counts, but never becomes training text).

Verification of every correct continuation (methods/latentrevise/verify.py): the leakage rules
(A, A' for latent prefixes, B, B' for latent continuations) and, for arithmetic problems
(`step_check` "auto": the problem's meta has "expr", benchmarks/arith.py), the step checker:
`valid_steps` is True/False (None when not checked). Training data (`training_pairs`) keeps correct,
non-leaky (unless `include_leaky`), honest trajectories with valid steps (unless not `step_filter`),
from the arms named by `train_prefix`.

Where things land in results.db (the tables read these; field names agreed with repro/scores.py):
- `rollouts`: every screening sample (source "policy", `zero_hit_group` set for zero-hit prompts)
  and every correct rescued trajectory kept as an outcome (source "revised" | "resample" | "hint").
- `revisions`: one row per revision. `gold_loss`/`away_loss`: the toward/away terms per iterate;
  `top_tokens`; `discrete_prefix` (p'); `continuations`: each distinct sample set once,
  {"text", "arm" (where it was sampled), "arms" (every arm that uses it), "correct", "extracted",
  "leakage", "valid_steps", "honest", "tokens", "finish_reason"[, "lp_text", "lp_latent"]}; `rescued`: a revised arm
  (discrete or latent, deduplicated ones included) has a correct continuation; `leakage`.
  `config` is the revision config plus `config["_stats"]`:
      arms             {"unrevised"|"discrete"|"latent": {"n": int, "correct": int, "usable": int,
                        "same_as": arm | None}}; usable = correct, clean, honest and valid (`usable`)
      changed_frac     share of the revised positions whose token changed (p'_i != p_i)
      p_changed        p' != p;   is_vertex: Z = E[p'];   changed: [[position, token of p, token of p'], ...]
      objective        the objective used (self-contrast may fall back); fluency_loss per iterate
      fte_revise, fte_control, fte_continue, dedup_saved_fte   (FTE, below)
      n_vertices_mean, step, best_step, gammas, moves, latent_leak (rule A')
- `train_steps` phase "mining" (step = GRPO step for online mining, else 0): `zero_hit_frac`,
  `zero_hit_ids`, `timings`, and `extra["rescue"]` = the dict of `rescue_stats`: rescue rate,
  compute per rescued prompt, lengths and reflection markers before/after, leakage, and
  `valid_step_rate` (share of rescued trajectories whose steps check, None when none was checked),
  `n_rescued_usable` (prompts with a correct, clean, honest, valid trajectory), the summed `arms`,
  `p_changed_frac`, `changed_frac_mean`, `n_revisions`, `fte_control`, `dedup_saved_fte`
  (the LatentRevise-only ones are {}/None/0 for the baselines: one shape for every method).

Compute unit: FTE, forward-token equivalents (core.py). A sampling request costs its prompt tokens
ONCE (vLLM's prefix cache shares them across the n samples; `sampling_fte`) plus every generated
token; a prompt's x is charged once per prompt for all its token-id requests (they share it as a
cached prefix), a prompt-embeddings request (latent arm) pays its whole [x ; Z] (no prefix cache
for embeddings). A revision costs what core.Reviser.batch_fte charges (padding included). The
control arm is charged to LatentRevise (the method samples it and its rescue uses it when p' = p).
The shared screening pass is reported apart (`screen_fte`) and not charged to any rescue method.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch

from benchmarks import Problem
from harness.generation import Completion, Sampling, stable_seed

from .core import ReviseConfig, ReviseItem, Reviser, ReviseResult, prefix_length
from .verify import (  # noqa: F401  (re-exported: the leakage rules' historical home)
    bare_restatement,
    check_steps,
    has_answer,
    is_arith,
    latent_leak,
    leak_check,
    prefix_leak,
    vertex_leak,
)

MARKERS = {"wait": r"\bwait\b", "check": r"\bcheck\w*", "verify": r"\bverif\w*"}
ARMS = ("unrevised", "discrete", "latent")
REVISED_ARMS = ("discrete", "latent")


@dataclass
class MiningConfig:
    mine_samples: int = 8  # rollouts per training prompt when screening for zero-hit prompts
    mine_temperature: float = 1.0
    mine_top_p: float = 1.0
    mine_max_tokens: int = 1024
    mine_prompts: int | None = None  # screen at most this many training prompts (None: all)
    mine_source: Literal["sample", "rollouts"] = "sample"  # rollouts: zero-hit groups stored by a GRPO run
    mine_rollouts_run: int | None = None  # that run's id (mine_source="rollouts")
    failed_per_prompt: int = 2  # failed rollouts revised per zero-hit prompt (first ones with >= 2 tokens)
    cont_samples: int = 4  # m continuations per arm (unrevised, discrete, latent), same seeds in every arm
    cont_temperature: float = 1.0
    cont_top_p: float = 1.0
    cont_max_tokens: int | None = None  # None: mine_max_tokens
    cont_modes: Literal["latent", "discrete", "both"] = "both"  # revised arms sampled besides the control
    train_prefix: Literal["latent", "discrete", "both", "all"] = "both"  # arms whose rescues become data
    # ("all": the unrevised control arm's too)
    max_per_prompt: int = 4  # training trajectories kept per rescued prompt (distinct texts)
    include_leaky: bool = False
    leak_min_words: int = 3
    leak_vertex_weight: float = 0.2  # rule A': a vertex this heavy counts as readable from Z
    latent_text_margin: float = 0.1  # nats/token: the honest-text rule for latent continuations
    step_check: Literal["auto", "on", "off"] = "auto"  # auto: arithmetic problems (meta has "expr")
    step_filter: bool = True  # checked trajectories with a false step are not training data


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
    mode: str  # latent | discrete | unrevised | sample | hint (LatentRevise: the first revised arm using it)
    correct: bool
    leakage: bool
    tokens: int
    latent: dict[str, Any] | None = field(default=None, repr=False)  # LatentRevise: sparse prefix weights
    valid_steps: bool | None = None  # the arithmetic step check (None: not checked)
    honest: bool = True  # the text is the conditioning it was generated from (module docstring)
    arms: tuple[str, ...] = ()  # LatentRevise: every arm that produced this continuation (dedupe)
    finish_reason: str = "stop"  # the continuation's: "length" = cut at max_tokens, no eos (lr-grpo)

    def usable(self, cfg: MiningConfig) -> bool:
        return usable(vars(self), cfg)


def usable(rec: dict[str, Any], cfg: MiningConfig) -> bool:
    """Training data under `cfg` (a Trajectory's or a stored continuation's fields): correct, clean (or
    include_leaky), honest, and valid steps (or not step_filter)."""
    return (rec["correct"] and rec["honest"] and (not rec["leakage"] or cfg.include_leaky)
            and (rec["valid_steps"] is not False or not cfg.step_filter))


@dataclass
class RescueOutcome:
    problem_id: str
    fte: float
    trajectories: list[Trajectory]  # correct ones only
    revisions: list[dict[str, Any]] = field(default_factory=list)  # LatentRevise: each revision's `_stats`
    n_samples: int = 0  # resample / hint / guided-prefix: samples drawn (LatentRevise: see `revisions`)
    n_correct: int = 0  # ... and how many of them were graded correct (free-sample accuracy, tables)

    @property
    def rescued(self) -> bool:
        return bool(self.trajectories)

    @property
    def rescued_clean(self) -> bool:
        return any(not t.leakage for t in self.trajectories)


def markers(texts: Sequence[str]) -> dict[str, float]:
    """Mean occurrences per text of each reflection marker (case-insensitive)."""
    if not texts:
        return {k: 0.0 for k in MARKERS}
    return {k: sum(len(re.findall(p, t, re.I)) for t in texts) / len(texts) for k, p in MARKERS.items()}


def sampling_fte(prompt_tokens: int, completions: Sequence[Completion]) -> float:
    """FTE of one sampling request: its (uncached) prompt tokens once, plus every generated token.

    The shared accounting of every rescue method (LatentRevise's arms, resample, hint, guided-prefix)."""
    return float(prompt_tokens + sum(len(c.token_ids) for c in completions))


def steps_checked(problem: Problem, cfg: MiningConfig) -> bool:
    return cfg.step_check == "on" or (cfg.step_check == "auto" and is_arith(problem.meta))


def step_verdict(text: str, problem: Problem, cfg: MiningConfig) -> bool | None:
    """`check_steps(text).valid` when the problem's steps are checked (module docstring), else None."""
    return check_steps(text, problem.problem).valid if steps_checked(problem, cfg) else None


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
                      gold=p.answer, reward=float(k), zero_hit_group=not any(ok))
                 for j, (c, k) in enumerate(zip(cs, ok))]
    ctx.log_rollouts(rows)
    return screened


def screened_from_rollouts(run_id: int, problems: Sequence[Problem], tokenizer, ctx) -> list[Screened]:
    """Zero-hit groups stored by another run (e.g. GRPO) instead of sampling anew: one per problem.

    A problem that was zero-hit at several steps is one zero-hit prompt, not several: outcomes, rescue
    rates and FTE per zero-hit prompt are keyed by problem (as LatentRevise's own screening is), so its
    earliest zero-hit group stands for it (the one sampled closest to the base model that is revised)."""
    from harness.store import Rollout, session_scope

    by_id = {p.id: p for p in problems}
    with session_scope(ctx.db) as s:
        rows = s.query(Rollout).filter_by(run_id=run_id, source="policy", zero_hit_group=True) \
            .order_by(Rollout.step, Rollout.problem_id, Rollout.sample_index).all()
        groups: dict[str, list[Rollout]] = {}
        for r in rows:  # step order: the first step seen for a problem is its earliest
            if r.problem_id not in groups or groups[r.problem_id][0].step == r.step:
                groups.setdefault(r.problem_id, []).append(r)
        out = []
        for pid, rs in groups.items():
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


def _latent_can_differ(rcfg: ReviseConfig) -> bool:
    """Whether the step rule can leave Z off a vertex (else the latent arm is always a duplicate)."""
    vertex_rule = rcfg.step_rule == "gcg" or (rcfg.step_rule == "gap-topm" and rcfg.flip_gamma == 1)
    return rcfg.fw_steps > 0 and not vertex_rule


def predicted_lr_fte(zero_hit: Sequence[Screened], reviser: Reviser, cfg: LatentReviseConfig, tokenizer,
                     template: str) -> list[float]:
    """Per zero-hit prompt, what LatentRevise will spend on it under the same accounting (the matched budget
    of resample/hint): the revision as `Reviser.predict_fte` charges it (same batches, padding), the
    control arm, and the revised arms assuming p' != p (an upper bound: when p' = p, or Z is a vertex,
    those continuations are deduplicated, not spent); the failed continuation's length stands in for
    each sampled continuation's. Self-contrast is predicted with its fallback objective's rows."""
    rcfg = reviser.cfg
    jobs = [(i, ids) for i, sc in enumerate(zero_hit) for ids in pick_failed(sc, cfg, tokenizer)
            if prefix_length(len(ids), rcfg) > 0]
    revise = reviser.predict_fte([ReviseItem(zero_hit[i].prompt_ids, ids, zero_hit[i].problem.answer)
                                  for i, ids in jobs])
    n_token_arms = 1 + (cfg.cont_modes in ("discrete", "both"))
    latent = cfg.cont_modes in ("latent", "both") and _latent_can_differ(rcfg)
    revised = {i for i, _ in jobs}  # x once per prompt that has a revision (a cached prefix of all its requests)
    total = [float(len(sc.prompt_ids)) if i in revised else 0.0 for i, sc in enumerate(zero_hit)]
    for (i, ids), f in zip(jobs, revise):
        L, x = prefix_length(len(ids), rcfg), len(zero_hit[i].prompt_ids)
        arm = L + cfg.cont_samples * (len(ids) - L)
        total[i] += f + n_token_arms * arm + (x + arm if latent else 0.0)
    return total


def continuation_logprob(model, prefix_embeds: torch.Tensor, cont_ids: list[int]) -> float:
    """Mean log p(cont | prefix) per token under `model`, the prefix given as input embeddings [T, H]."""
    if not cont_ids:
        return 0.0
    E = model.get_input_embeddings().weight
    ids = torch.tensor(cont_ids, device=E.device)
    emb = torch.cat([prefix_embeds.to(E.device, E.dtype), E[ids]], dim=0)[None]
    was_training = model.training
    model.eval()  # lr-grpo passes the policy in training mode
    try:
        with torch.no_grad():
            logits = model(inputs_embeds=emb).logits[0, prefix_embeds.shape[0] - 1:-1].float()
    finally:
        model.train(was_training)
    return float(torch.log_softmax(logits, -1).gather(-1, ids[:, None]).mean())


@dataclass
class _Job:
    """One failed rollout under revision: its prompt, ids, prefix length and the seeds of every arm."""

    sc: Screened
    j: int
    ids: list[int]
    L: int
    seed: int


def _arm_source(r: ReviseResult, mode: str, modes: Sequence[str]) -> str | None:
    """The already sampled arm whose continuations `mode` would repeat exactly (the dedupe rule), or None."""
    same_p = r.discrete_ids == r.prefix_ids
    if mode == "discrete":
        return "unrevised" if same_p else None
    if r.is_vertex:
        return "unrevised" if same_p else ("discrete" if "discrete" in modes else None)
    return None


def rescue_latentrevise(zero_hit: Sequence[Screened], model, tokenizer, generator, cfg: LatentReviseConfig,
                        ctx, step: int = 0) -> list[RescueOutcome]:
    """Sample the control arm, revise up to `failed_per_prompt` failed rollouts per zero-hit prompt, sample
    the revised arms (deduplicated), verify, log (module docstring)."""
    rcfg = sub_config(ReviseConfig, cfg)
    reviser = Reviser(model, tokenizer, rcfg, template=ctx.template)
    jobs = [_Job(sc, j, ids, prefix_length(len(ids), rcfg), stable_seed(ctx.seed, "lr", step, sc.problem.id, j))
            for sc in zero_hit for j, ids in enumerate(pick_failed(sc, cfg, tokenizer))]
    jobs = [jb for jb in jobs if jb.L > 0]
    modes = list(REVISED_ARMS) if cfg.cont_modes == "both" else [cfg.cont_modes]
    sampling = Sampling(n=cfg.cont_samples, temperature=cfg.cont_temperature, top_p=cfg.cont_top_p,
                        max_tokens=cfg.cont_max_tokens or cfg.mine_max_tokens, seed=ctx.seed, stop=_stops(ctx.template))
    seeds = [jb.seed for jb in jobs]
    control = generator.generate([jb.sc.prompt_ids + jb.ids[:jb.L] for jb in jobs], sampling, seeds=seeds,
                                 progress=ctx.progress)
    p_texts = [tokenizer.decode(jb.ids[:jb.L], skip_special_tokens=True) for jb in jobs]
    control_ok = _grade(ctx, [(p + c.text, jb.sc.problem.answer)
                              for jb, p, cs in zip(jobs, p_texts, control) for c in cs], [len(cs) for cs in control])
    items = [ReviseItem(jb.sc.prompt_ids, jb.ids, jb.sc.problem.answer, key=jb, seed=jb.seed,
                        contrast=[(_clean_ids(list(c.token_ids), tokenizer), v.correct) for c, v in zip(cs, vs)])
             for jb, cs, vs in zip(jobs, control, control_ok)]
    results = _revise_with_progress(reviser, items, rcfg.revise_batch, ctx.progress)

    arms: list[dict[str, list[tuple[Completion, Any]]]] = [{"unrevised": list(zip(cs, vs))} for cs, vs in
                                                           zip(control, control_ok)]
    sources: list[dict[str, str | None]] = [{} for _ in jobs]
    for mode in modes:  # discrete before latent: a vertex latent prefix reuses the discrete arm
        todo = []
        for ri, r in enumerate(results):
            sources[ri][mode] = _arm_source(r, mode, modes)
            if sources[ri][mode] is None:
                todo.append(ri)
        prompts = [results[ri].prompt_embeds if mode == "latent" and not results[ri].is_vertex
                   else jobs[ri].sc.prompt_ids + results[ri].discrete_ids for ri in todo]
        outs = generator.generate(prompts, sampling, seeds=[seeds[ri] for ri in todo], progress=ctx.progress) \
            if todo else []
        texts = [tokenizer.decode(results[ri].discrete_ids, skip_special_tokens=True) for ri in todo]
        verdicts = _grade(ctx, [(t + c.text, jobs[ri].sc.problem.answer) for ri, t, cs in zip(todo, texts, outs)
                                for c in cs], [len(cs) for cs in outs])
        for ri, cs, vs in zip(todo, outs, verdicts):
            arms[ri][mode] = list(zip(cs, vs))
        for ri in range(len(results)):
            if sources[ri][mode] is not None:
                arms[ri][mode] = arms[ri][sources[ri][mode]]
    return _record(zero_hit, jobs, results, arms, sources, modes, model, tokenizer, cfg, rcfg, ctx, step)


def _grade(ctx, pairs: list[tuple[str, str]], sizes: list[int]) -> list[list[Any]]:
    """Verdicts of `pairs`, regrouped into lists of `sizes`."""
    verdicts, out, i = (ctx.grader.grade(pairs) if pairs else []), [], 0
    for n in sizes:
        out.append(verdicts[i:i + n])
        i += n
    return out


def _verify_set(arm: str, comps: list[tuple[Completion, Any]], r: ReviseResult, jb: _Job, model, tokenizer,
                cfg: LatentReviseConfig, latent_leak_a: bool) -> list[dict[str, Any]]:
    """The stored record of one distinct sample set (sampled in `arm`): verdicts, leakage, steps, honesty."""
    gold, problem = jb.sc.problem.answer, jb.sc.problem
    orig = tokenizer.decode(r.prefix_ids, skip_special_tokens=True)
    prefix = orig if arm == "unrevised" else tokenizer.decode(r.discrete_ids, skip_special_tokens=True)
    latent = arm == "latent" and not r.is_vertex
    out = []
    for c, v in comps:
        rec = {"text": c.text, "arm": arm, "correct": bool(v.correct), "extracted": v.extracted,
               "tokens": len(c.token_ids), "leakage": False, "valid_steps": None, "honest": True,
               "finish_reason": c.finish_reason}
        if v.correct:
            if latent:
                rec["leakage"] = latent_leak_a or prefix_leak(prefix, orig, gold) or \
                    latent_leak(c.text, gold, cfg.leak_min_words)
                ids = _clean_ids(list(c.token_ids), tokenizer)
                E = model.get_input_embeddings().weight
                text_embeds = E[torch.tensor(jb.sc.prompt_ids + r.discrete_ids, device=E.device)].float()
                rec["lp_text"] = continuation_logprob(model, text_embeds, ids)
                rec["lp_latent"] = continuation_logprob(model, r.prompt_embeds, ids)
                rec["honest"] = rec["lp_text"] >= rec["lp_latent"] - cfg.latent_text_margin
            else:
                rec["leakage"] = leak_check(prefix, orig, c.text, gold, cfg.leak_min_words)
            rec["valid_steps"] = step_verdict(prefix + c.text, problem, cfg)
        out.append(rec)
    return out


def _revision_stats(r: ReviseResult, arms: dict, sources: dict, modes: Sequence[str], generated: dict[str, float],
                    saved: float, step: int, tokenizer) -> dict[str, Any]:
    arm_counts = {a: {"n": len(arms[a]), "correct": sum(bool(v.correct) for _, v in arms[a]),
                      "same_as": sources.get(a)} for a in ["unrevised", *modes]}
    changed = [[i, tokenizer.decode([a]), tokenizer.decode([b])]
               for i, (a, b) in enumerate(zip(r.prefix_ids, r.discrete_ids)) if a != b]
    return {"arms": arm_counts, "changed_frac": r.changed_frac, "p_changed": r.discrete_ids != r.prefix_ids,
            "changed": changed,
            "is_vertex": r.is_vertex, "objective": r.objective, "fluency_loss": r.fluency_loss,
            "fte_revise": r.fte, "fte_control": generated["unrevised"],
            "fte_continue": sum(v for a, v in generated.items() if a != "unrevised"), "dedup_saved_fte": saved,
            "n_vertices_mean": (r.vertex_weights > 0).sum(-1).float().mean().item(), "step": step,
            "best_step": r.best_step, "gammas": r.gammas, "moves": r.moves}


def _record(zero_hit: Sequence[Screened], jobs: list[_Job], results: list[ReviseResult], arms: list[dict],
            sources: list[dict], modes: Sequence[str], model, tokenizer, cfg: LatentReviseConfig, rcfg: ReviseConfig,
            ctx, step: int) -> list[RescueOutcome]:
    """Verify every distinct sample set, charge compute, build trajectories and the `revisions` rows."""
    outcomes: dict[str, RescueOutcome] = {}
    rev_rows, latents = [], []
    keep_arms = set(ARMS) if cfg.train_prefix == "all" else \
        (set(REVISED_ARMS) if cfg.train_prefix == "both" else {cfg.train_prefix})
    for ri, (jb, r) in enumerate(zip(jobs, results)):
        pid, gold, x = jb.sc.problem.id, jb.sc.problem.answer, len(jb.sc.prompt_ids)
        o = outcomes.setdefault(pid, RescueOutcome(pid, float(x), []))  # x once per prompt (a cached prefix)
        top = r.top_tokens(tokenizer, rcfg.record_top)
        orig_tokens = [tokenizer.decode([t]) for t in r.prefix_ids[r.revise_start:]]
        leak_a = "latent" in modes and not r.is_vertex and vertex_leak(top, orig_tokens, gold, cfg.leak_vertex_weight)
        p_text = tokenizer.decode(r.discrete_ids, skip_special_tokens=True)
        latents.append({"problem_id": pid, "prompt_ids": r.item.prompt_ids, "prefix_ids": r.prefix_ids,
                        "vertex_ids": r.vertex_ids, "vertex_weights": r.vertex_weights, "revise_start": r.revise_start})
        generated, saved, conts = {}, 0.0, []
        for arm in ["unrevised", *modes]:
            comps = arms[ri][arm]
            own = arm == "latent" and not r.is_vertex  # an embeddings request pays its whole [x ; Z]
            cost = sampling_fte(r.prefix_len + (x if own else 0), [c for c, _ in comps])
            if sources[ri].get(arm) is not None:
                saved += cost
                continue
            generated[arm] = cost
            users = tuple(a for a in ["unrevised", *modes] if a == arm or _root(sources[ri], a) == arm)
            for rec in _verify_set(arm, comps, r, jb, model, tokenizer, cfg, leak_a):
                rec["arms"] = list(users)
                conts.append(rec)
                if rec["correct"] and keep_arms & set(users):
                    text = (tokenizer.decode(r.prefix_ids, skip_special_tokens=True) if arm == "unrevised" else p_text)
                    mode = next((a for a in REVISED_ARMS if a in users), "unrevised")
                    o.trajectories.append(Trajectory(
                        pid, jb.sc.prompt_text, text + rec["text"], gold, "latentrevise", mode, True,
                        rec["leakage"], r.prefix_len + rec["tokens"], latent={"index": len(latents) - 1},
                        valid_steps=rec["valid_steps"], honest=rec["honest"], arms=users,
                        finish_reason=rec["finish_reason"]))
        stats = _revision_stats(r, arms[ri], sources[ri], modes, generated, saved, step, tokenizer)
        stats["latent_leak"] = bool(leak_a)
        for a, counts in stats["arms"].items():  # correct AND usable as training data (clean, honest, valid)
            counts["usable"] = sum(usable(c, cfg) for c in conts if a in c["arms"])
        o.fte += r.fte + sum(generated.values())
        o.revisions.append(stats)
        rev_rows.append(dict(
            problem_id=pid, prompt=jb.sc.prompt_text, gold=gold,
            failed_rollout=tokenizer.decode(jb.ids, skip_special_tokens=True),
            prefix_len=r.prefix_len, fw_steps=rcfg.fw_steps, config={**dataclasses.asdict(rcfg), "_stats": stats},
            gold_loss=r.gold_loss, away_loss=r.away_loss, top_tokens=top, discrete_prefix=p_text, continuations=conts,
            rescued=any(c["correct"] and set(c["arms"]) & set(REVISED_ARMS) for c in conts),
            leakage=bool(leak_a) or any(c["leakage"] for c in conts), wall_s=r.wall_s, peak_mem_mb=r.peak_mem_mb))
    if rev_rows:
        ctx.log_revisions(rev_rows)
        torch.save(latents, ctx.out_dir / f"latent_prefixes_step{step}.pt")
    return [outcomes.get(sc.problem.id) or RescueOutcome(sc.problem.id, 0.0, []) for sc in zero_hit]


def _root(sources: dict[str, str | None], arm: str) -> str:
    """The arm whose samples `arm` uses (following same_as links)."""
    while sources.get(arm) is not None:
        arm = sources[arm]
    return arm


def _revise_with_progress(reviser: Reviser, items: list[ReviseItem], batch: int, progress: bool) -> list[ReviseResult]:
    from rich.progress import Progress

    out: list[ReviseResult] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("revising failed rollouts", total=len(items))
        for start in range(0, len(items), batch):
            out += reviser.revise(items[start:start + batch])
            bar.advance(task, len(items[start:start + batch]))
    return out


# ------------------------------------------------------------------------------------------------
# statistics, training data, the whole pipeline
# ------------------------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def rescue_stats(source: str, screened: Sequence[Screened], outcomes: Sequence[RescueOutcome],
                 wall_s: float = 0.0, cfg: MiningConfig | None = None) -> dict[str, Any]:
    """The same statistics for every rescue method (see the module docstring for where they go)."""
    cfg = cfg or MiningConfig()
    zero = [s for s in screened if s.zero_hit]
    n_res = sum(o.rescued for o in outcomes)
    n_clean = sum(o.rescued_clean for o in outcomes)
    fte = sum(o.fte for o in outcomes)
    before = [c for s in zero for c in s.rollouts]
    after = [t for o in outcomes for t in o.trajectories]
    checked = [t.valid_steps for t in after if t.valid_steps is not None]
    revs = [r for o in outcomes for r in o.revisions]
    arms: dict[str, dict[str, int]] = {}
    for r in revs:
        for a, c in r["arms"].items():
            arms.setdefault(a, {"n": 0, "correct": 0})
            arms[a]["n"] += c["n"]
            arms[a]["correct"] += c["correct"]
    return {
        "source": source, "unit": "FTE (forward-token equivalents)",
        "n_prompts": len(screened), "n_zero_hit": len(zero),
        "zero_hit_frac": len(zero) / len(screened) if screened else 0.0,
        "n_rescued": n_res, "n_rescued_clean": n_clean,
        "n_rescued_usable": sum(any(t.usable(cfg) for t in o.trajectories) for o in outcomes),
        "rescue_rate": n_res / len(zero) if zero else 0.0,
        "clean_rescue_rate": n_clean / len(zero) if zero else 0.0,
        "fte_total": fte, "fte_per_zero_hit": fte / len(zero) if zero else 0.0,
        "fte_per_rescued": fte / n_res if n_res else None,
        "screen_fte": float(sum(sampling_fte(len(s.prompt_ids), s.rollouts) for s in screened)),
        "n_trajectories": len(after), "leak_frac": sum(t.leakage for t in after) / len(after) if after else 0.0,
        "valid_step_rate": _mean([float(v) for v in checked]),
        "len_before": sum(len(c.token_ids) for c in before) / len(before) if before else 0.0,
        "len_after": sum(t.tokens for t in after) / len(after) if after else 0.0,
        "markers_before": markers([c.text for c in before]),
        "markers_after": markers([t.response for t in after]),
        "n_revisions": len(revs), "arms": arms,
        "p_changed_frac": _mean([float(r["p_changed"]) for r in revs]),
        "changed_frac_mean": _mean([r["changed_frac"] for r in revs]),
        "fte_control": sum(r["fte_control"] for r in revs), "dedup_saved_fte": sum(r["dedup_saved_fte"] for r in revs),
        "wall_s": wall_s,
        # per zero-hit prompt, for the paired tables (repro/tables.py): samples, correct, FTE, rescued
        "per_prompt": {o.problem_id: {"n": o.n_samples, "correct": o.n_correct, "fte": o.fte, "rescued": o.rescued}
                       for o in outcomes},
    }


def training_pairs(outcomes: Sequence[RescueOutcome], cfg: MiningConfig) -> list[tuple[str, str]]:
    """(prompt, response) pairs: usable (`Trajectory.usable`), arm-filtered, deduplicated."""
    keep = set(ARMS) if cfg.train_prefix == "all" else \
        (set(REVISED_ARMS) if cfg.train_prefix == "both" else {cfg.train_prefix})
    pairs = []
    for o in outcomes:
        seen: set[str] = set()
        for t in o.trajectories:
            if not t.usable(cfg) or t.response in seen:
                continue
            if t.source == "latentrevise" and not keep & set(t.arms or (t.mode,)):
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
        stats = rescue_stats(source, screened, outcomes, wall_s=time.perf_counter() - t1, cfg=cfg)
        stats["screen_s"] = t1 - t0
        log_rescue(ctx, stats, screened, outcomes, step)
        return MiningResult(screened, outcomes, stats, training_pairs(outcomes, cfg))
    finally:
        generator.close()
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
