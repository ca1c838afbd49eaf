"""Rescue baseline `resample`: spend LatentRevise's compute on more samples of each zero-hit prompt.

The question it answers: is revising a failed rollout better than simply sampling more? For each
zero-hit prompt the budget is what LatentRevise would spend on it (mining.predicted_lr_fte: the same
FTE accounting, same failed rollouts, their lengths standing in for continuation lengths) unless
`budget_fte_per_prompt` fixes it. The accounting is mining.sampling_fte, shared by every rescue
method: a request pays its prompt once (vLLM's prefix cache shares it across the n samples) plus
every generated token, so n = max(1, (budget - prompt tokens) // mean generated length), the mean
taken from the prompt's screening rollouts; the FTE actually spent is what gets reported. Correct
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


def n_samples(budget: float, prompt_len: int, sc: Screened, given: int = 0) -> int:
    """Samples of one request that fit `budget`: the prompt once, then the screening rollouts' mean length each
    (less the `given` tokens of a solution prefix that the prompt already holds: guided-prefix)."""
    mean_len = max(1.0, sum(len(c.token_ids) for c in sc.rollouts) / max(1, len(sc.rollouts)) - given)
    return max(1, int((budget - prompt_len) // mean_len))


MODES = {"resample": "sample", "hint": "hint", "guided-prefix": "guided"}  # source -> Trajectory.mode


def sample_and_verify(zero_hit: Sequence[Screened], prompts: Sequence[str], counts: Sequence[int], generator,
                      tokenizer, cfg: MatchedRescueConfig, ctx, source: str, step: int,
                      heads: Sequence[str] | None = None) -> list[RescueOutcome]:
    """counts[i] samples of prompts[i] (grouped by count: one generate call each), graded against gold.

    heads[i]: text that prompts[i] ends with and that belongs to the response (guided-prefix's solution
    prefix): it is graded, checked and trained on together with each sample (default: none)."""
    heads = list(heads) if heads is not None else [""] * len(zero_hit)
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
    pairs = [(heads[i] + c.text, zero_hit[i].problem.answer) for i in range(len(zero_hit)) for c in outs[i]]
    verdicts = iter(ctx.grader.grade(pairs) if pairs else [])
    outcomes = []
    for i, sc in enumerate(zero_hit):
        x = len(tokenizer(prompts[i], add_special_tokens=False).input_ids)
        o = RescueOutcome(sc.problem.id, sampling_fte(x, outs[i]), [], n_samples=len(outs[i]))
        for c in outs[i]:
            if next(verdicts).correct:
                o.n_correct += 1
                text = heads[i] + c.text
                leak = bare_restatement(heads[i], c.text, sc.problem.answer, cfg.leak_min_words) or \
                    (source == "hint" and "hint" in c.text.lower())
                given = len(tokenizer(heads[i], add_special_tokens=False).input_ids) if heads[i] else 0
                o.trajectories.append(Trajectory(sc.problem.id, sc.prompt_text, text, sc.problem.answer, source,
                                                 MODES.get(source, source), True, leak, given + len(c.token_ids),
                                                 valid_steps=step_verdict(text, sc.problem, cfg)))
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
