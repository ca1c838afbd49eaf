"""Rescue baseline `guided-prefix`: continue zero-hit prompts from the first part of the reference solution.

The question it answers (issue 13.7): is a REVISED failed prefix better than a CORRECT prefix given
for free? The idea is the one of QuestA (Li et al., 2025: partial solutions added to hard problems)
and Prefix-RFT (Huang et al., 2025: rollouts continued from a sampled prefix of a demonstration); we
take its simplest reading, not either paper's recipe (no prefix-length schedule, no RL objective):

    guide      the first round(`guide_frac` x |solution tokens|) tokens of the problem's reference
               solution (`meta[guide_field]`, the worked steps of benchmarks/arith.py), cut back to whole
               sentences (steps) that do not contain the gold answer as a standalone number (the guide
               gives part of the derivation, never the answer); a problem without a reference solution gets an empty
               guide (then this is `resample` for that prompt; counted in `Trajectory.mode` "sample")
    sampling   [x ; guide] as text, n samples where n fits the SAME budget per zero-hit prompt as
               `resample` and `hint` (methods/resample.py: matched to LatentRevise's predicted FTE, or
               `budget_fte_per_prompt`), each sample's length estimated as the screening rollouts' mean
               less the guide; cost: mining.sampling_fte (the guided prompt once, every generated token)
    training   a correct sample's response is guide + continuation and its training prompt is the
               UNGUIDED prompt (like `hint`, which trains without the hint): SFT learns to produce the
               whole solution from the problem alone. Leakage rule B (with the guide as reasoning) and the
               arithmetic step check (over guide + continuation) apply as for every rescue method.

Registered as the SFT method `guided-prefix`: SFT on its base data + these trajectories (RescueSFT), trained
exactly like lr-sft, resample and hint, so --table rescue compares like with like.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from harness.config import require

from .latentrevise.methods import RescueSFT
from .latentrevise.mining import RescueOutcome, Screened, has_answer
from .registry import register_method
from .resample import MatchedRescueConfig, budgets, n_samples, sample_and_verify, sample_cap
from .sft import SFTConfig


@dataclass
class GuidedPrefixConfig(MatchedRescueConfig):
    guide_frac: float = 0.5  # share of the reference solution's tokens given as the prefix (QuestA's 50 % hint)
    guide_field: str = "solution"  # the Problem.meta key holding the reference solution

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        require(0.0 <= self.guide_frac < 1.0, f"guide_frac must be in [0, 1), got {self.guide_frac}")
        require(bool(self.guide_field), "guide_field must name a Problem.meta key")


def guide_text(solution: str | None, gold: str, tokenizer, frac: float) -> str:
    """The guide of the module docstring: a leading space (the documents' "Solution: " form), the first `frac`
    of the solution's tokens, cut back to the last whole sentence (a "." not inside a number) that does not
    contain the gold answer: whole steps only, so the guide never ends in the answer's first digits."""
    if not solution or frac <= 0:
        return ""
    ids = tokenizer(" " + solution.strip(), add_special_tokens=False).input_ids
    text = tokenizer.decode(ids[: round(frac * len(ids))], skip_special_tokens=True)
    ends = [m.end() for m in re.finditer(r"\.(?!\d)", text)]
    return next((text[:e] for e in reversed(ends) if not has_answer(text[:e], gold)), "")


def rescue_guided_prefix(zero_hit: Sequence[Screened], model, tokenizer, generator, cfg: GuidedPrefixConfig, ctx,
                         step: int = 0) -> list[RescueOutcome]:
    """The `mining.Rescuer` of this baseline."""
    guides = [guide_text(sc.problem.meta.get(cfg.guide_field), sc.problem.answer, tokenizer, cfg.guide_frac)
              for sc in zero_hit]
    prompts = [sc.prompt_text + g for sc, g in zip(zero_hit, guides)]
    # the guide is part of the prompt: its prefill is counted once with it; each sample may run to the cap
    bs = budgets(zero_hit, model, tokenizer, cfg, ctx.template)
    counts = [n_samples(b, len(tokenizer(p, add_special_tokens=False).input_ids), sample_cap(cfg))
              for b, p in zip(bs, prompts)]
    outcomes = sample_and_verify(zero_hit, prompts, counts, generator, tokenizer, cfg, ctx, "guided-prefix", step,
                                 budgets=bs, heads=guides)
    for o, g in zip(outcomes, guides):
        for t in o.trajectories:
            t.mode = "guided" if g else "sample"  # an empty guide is plain resampling
    return outcomes


# ------------------------------------------------------------------------------------------------
# the method: SFT on the standard data + the guided rescues, trained on the unguided prompt
# ------------------------------------------------------------------------------------------------


@dataclass
class GuidedPrefixSFTConfig(SFTConfig, GuidedPrefixConfig):
    """SFT fields + mining fields + the LatentRevise fields whose compute is matched + the guide."""


@register_method
class GuidedPrefixSFT(RescueSFT):
    name = "guided-prefix"
    config_cls = GuidedPrefixSFTConfig
    source = "guided-prefix"
    rescue = staticmethod(rescue_guided_prefix)
