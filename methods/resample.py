"""Rescue baseline `resample`: spend LatentRevise's compute on more samples of each zero-hit prompt.

The question it answers: is revising a failed rollout better than simply sampling more? For each
zero-hit prompt the budget is what LatentRevise would spend on it (mining.predicted_lr_fte: same
FTE formula, same failed rollouts, their lengths standing in for continuation lengths) unless
`budget_fte_per_prompt` fixes it. A sample costs its prompt plus its generated tokens, estimated
beforehand from the prompt's screening rollouts, so n = max(1, budget // estimated cost); the FTE
actually spent is what gets reported. Correct samples become SFT data through the same
Trajectory/statistics path as LatentRevise (mining.mine), with the same leakage rule B.

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
    return [predicted_lr_fte(sc, reviser, cfg, tokenizer, template) for sc in zero_hit]


def n_samples(budget: float, prompt_len: int, sc: Screened) -> int:
    mean_len = sum(len(c.token_ids) for c in sc.rollouts) / max(1, len(sc.rollouts))
    return max(1, int(budget // (prompt_len + mean_len)))


def sample_and_verify(zero_hit: Sequence[Screened], prompts: Sequence[str], counts: Sequence[int], generator,
                      tokenizer, cfg: MatchedRescueConfig, ctx, source: str, step: int) -> list[RescueOutcome]:
    """counts[i] samples of prompts[i] (grouped by count: one generate call each), graded against gold."""
    by_n: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(counts):
        by_n[n].append(i)
    outs: dict[int, list] = {}
    for n, idx in by_n.items():
        sampling = Sampling(n=n, temperature=cfg.mine_temperature, top_p=cfg.mine_top_p,
                            max_tokens=cfg.cont_max_tokens or cfg.mine_max_tokens, seed=ctx.seed,
                            stop=_stops(ctx.template))
        seeds = [stable_seed(ctx.seed, source, step, zero_hit[i].problem.id) for i in idx]
        for i, cs in zip(idx, generator.generate([prompts[i] for i in idx], sampling, seeds=seeds,
                                                 progress=ctx.progress)):
            outs[i] = cs
    pairs = [(c.text, zero_hit[i].problem.answer) for i in range(len(zero_hit)) for c in outs[i]]
    verdicts = iter(ctx.grader.grade(pairs) if pairs else [])
    outcomes = []
    for i, sc in enumerate(zero_hit):
        x = len(tokenizer(prompts[i], add_special_tokens=False).input_ids)
        o = RescueOutcome(sc.problem.id, 0.0, [])
        for c in outs[i]:
            o.fte += x + len(c.token_ids)
            if next(verdicts).correct:
                leak = bare_restatement("", c.text, sc.problem.answer, cfg.leak_min_words) or \
                    (source == "hint" and "hint" in c.text.lower())
                o.trajectories.append(Trajectory(sc.problem.id, sc.prompt_text, c.text, sc.problem.answer, source,
                                                 "sample" if source == "resample" else "hint", True, leak,
                                                 len(c.token_ids)))
        outcomes.append(o)
    return outcomes


def rescue_resample(zero_hit: Sequence[Screened], model, tokenizer, generator, cfg: MatchedRescueConfig, ctx,
                    step: int = 0) -> list[RescueOutcome]:
    """The `mining.Rescuer` of this baseline."""
    counts = [n_samples(b, len(sc.prompt_ids), sc)
              for b, sc in zip(budgets(zero_hit, model, tokenizer, cfg, ctx.template), zero_hit)]
    return sample_and_verify(zero_hit, [sc.prompt_text for sc in zero_hit], counts, generator, tokenizer, cfg,
                             ctx, "resample", step)


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
