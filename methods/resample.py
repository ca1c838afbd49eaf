"""Rescue baseline `resample`: spend LatentRevise's compute on more samples of each zero-hit prompt.

The question it answers: is revising a failed rollout better than simply sampling more? For each
zero-hit prompt the budget is what LatentRevise would spend on it (mining.predicted_lr_fte: the same
FTE accounting, same failed rollouts, their lengths standing in for continuation lengths) unless
`budget_fte_per_prompt` fixes it. The accounting is mining.sampling_fte, shared by every rescue
method: a prompt pays its tokens once (vLLM's prefix cache shares them across its samples and
requests) plus every generated token. Samples are drawn in rounds so that the spend lands in
[budget - one sample, budget]: each round draws as many samples as fit the remaining budget if
every one ran to max_tokens (so it never overshoots; at least one sample per prompt), and rounds
repeat while another worst-case sample still fits (samples that stop early leave room; at most
`MAX_ROUNDS`). The FTE actually spent is what gets reported. Correct
samples become SFT data through the same Trajectory/statistics path as LatentRevise (mining.mine),
with the same leakage rule B and the same arithmetic step check.

Registered as the SFT method `resample`: SFT on its base data + these trajectories (RescueSFT).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from harness.generation import Sampling, stable_seed

from .latentrevise.core import ReviseConfig, Reviser
from .latentrevise.methods import RescueSFT
from .latentrevise.mining import (
    LatentReviseConfig,
    RescueOutcome,
    Screened,
    Trajectory,
    _stops,
    bare_restatement,
    predicted_lr_fte,
    sampling_fte,
    step_verdict,
    sub_config,
)
from .registry import register_method
from .sft import SFTConfig


@dataclass
class MatchedRescueConfig(LatentReviseConfig):
    """Mining fields + the LatentRevise fields whose cost is matched (same names, same defaults)."""

    budget_fte_per_prompt: float | None = None  # None: matched to LatentRevise per prompt


def budgets(zero_hit: Sequence[Screened], model, tokenizer, cfg: MatchedRescueConfig, template: str) -> list[float]:
    if cfg.budget_fte_per_prompt is not None:
        return [float(cfg.budget_fte_per_prompt)] * len(zero_hit)
    reviser = Reviser(model, tokenizer, sub_config(ReviseConfig, cfg), template=template)
    return predicted_lr_fte(zero_hit, reviser, cfg, tokenizer, template)


MODES = {"resample": "sample", "hint": "hint", "guided-prefix": "guided"}  # source -> Trajectory.mode
MAX_ROUNDS = 8  # top-up rounds per rescue call (module docstring); each one is one generate call per count


def sample_cap(cfg: MatchedRescueConfig) -> int:
    """The most a sample can cost: every generated token up to the continuation length."""
    return cfg.cont_max_tokens or cfg.mine_max_tokens


def n_samples(budget: float, prompt_len: int, max_tokens: int) -> int:
    """First-round samples of one prompt that fit `budget` even if each runs to `max_tokens` (at least one)."""
    return max(1, int((budget - prompt_len) // max(1, max_tokens)))


def _draw(zero_hit: Sequence[Screened], prompts: Sequence[str], counts: dict[int, int], generator, cfg, ctx,
          source: str, step: int, rnd: int) -> dict[int, list]:
    """counts[i] samples of prompts[i], grouped by count (one generate call each); round 0 keeps the seeds of
    a single request, later rounds get their own."""
    by_n: dict[int, list[int]] = defaultdict(list)
    for i, n in counts.items():
        by_n[n].append(i)
    outs: dict[int, list] = {}
    for n, idx in by_n.items():
        sampling = Sampling(n=n, temperature=cfg.mine_temperature, top_p=cfg.mine_top_p, max_tokens=sample_cap(cfg),
                            seed=ctx.seed, stop=_stops(ctx.template))
        seeds = [stable_seed(ctx.seed, source, step, zero_hit[i].problem.id, *((rnd,) if rnd else ())) for i in idx]
        for i, cs in zip(idx, generator.generate([prompts[i] for i in idx], sampling, seeds=seeds,
                                                 progress=ctx.progress)):
            outs[i] = list(cs)
    return outs


def _top_up(outs: dict[int, list], budgets: Sequence[float], xs: Sequence[int], draw, cap: int) -> None:
    """More rounds while another worst-case sample fits a prompt's remaining budget (module docstring)."""
    for rnd in range(1, MAX_ROUNDS + 1):
        more = {i: int((b - sampling_fte(xs[i], outs[i])) // cap) for i, b in enumerate(budgets)}
        more = {i: k for i, k in more.items() if k > 0}
        if not more:
            return
        for i, cs in draw(more, rnd).items():
            outs[i] += cs


def sample_and_verify(zero_hit: Sequence[Screened], prompts: Sequence[str], counts: Sequence[int], generator,
                      tokenizer, cfg: MatchedRescueConfig, ctx, source: str, step: int,
                      budgets: Sequence[float] | None = None, heads: Sequence[str] | None = None
                      ) -> list[RescueOutcome]:
    """counts[i] samples of prompts[i], topped up to budgets[i] when given, graded against gold.

    heads[i]: text that prompts[i] ends with and that belongs to the response (guided-prefix's solution
    prefix): it is graded, checked and trained on together with each sample (default: none)."""
    heads = list(heads) if heads is not None else [""] * len(zero_hit)
    draw = lambda cs, rnd: _draw(zero_hit, prompts, cs, generator, cfg, ctx, source, step, rnd)
    outs = draw(dict(enumerate(counts)), 0)
    xs = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    if budgets is not None:
        _top_up(outs, budgets, xs, draw, sample_cap(cfg))
    pairs = [(heads[i] + c.text, zero_hit[i].problem.answer) for i in range(len(zero_hit)) for c in outs[i]]
    verdicts = iter(ctx.grader.grade(pairs) if pairs else [])
    given = [len(tokenizer(h, add_special_tokens=False).input_ids) if h else 0 for h in heads]  # once per prompt
    outcomes = []
    for i, sc in enumerate(zero_hit):
        o = RescueOutcome(sc.problem.id, sampling_fte(xs[i], outs[i]), [], n_samples=len(outs[i]))
        for c in outs[i]:
            if next(verdicts).correct:
                o.n_correct += 1
                text = heads[i] + c.text
                leak = bare_restatement(heads[i], c.text, sc.problem.answer, cfg.leak_min_words) or \
                    (source == "hint" and "hint" in c.text.lower())
                o.trajectories.append(Trajectory(sc.problem.id, sc.prompt_text, text, sc.problem.answer, source,
                                                 MODES.get(source, source), True, leak, given[i] + len(c.token_ids),
                                                 valid_steps=step_verdict(text, sc.problem, cfg)))
        outcomes.append(o)
    return outcomes


def rescue_resample(zero_hit: Sequence[Screened], model, tokenizer, generator, cfg: MatchedRescueConfig, ctx,
                    step: int = 0) -> list[RescueOutcome]:
    """The `mining.Rescuer` of this baseline."""
    bs = budgets(zero_hit, model, tokenizer, cfg, ctx.template)
    counts = [n_samples(b, len(sc.prompt_ids), sample_cap(cfg)) for b, sc in zip(bs, zero_hit)]
    return sample_and_verify(zero_hit, [sc.prompt_text for sc in zero_hit], counts, generator, tokenizer, cfg,
                             ctx, "resample", step, budgets=bs)


# ------------------------------------------------------------------------------------------------
# the method: SFT on the standard data + the resampled rescues (the `resample` row of --table rescue)
# ------------------------------------------------------------------------------------------------


@dataclass
class ResampleSFTConfig(SFTConfig, MatchedRescueConfig):
    """SFT fields + mining fields + the LatentRevise fields whose compute is matched."""


@register_method
class ResampleSFT(RescueSFT):
    name = "resample"
    config_cls = ResampleSFTConfig
    source = "resample"
    rescue = staticmethod(rescue_resample)
