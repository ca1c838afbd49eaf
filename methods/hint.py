"""Rescue baseline `hint`: rationalization as in STaR (Zelikman et al., 2022).

For a zero-hit prompt, generate with the gold answer given as a hint in the problem text
(`hint_template`, "{answer}" replaced), keep the samples that reach the gold answer, and train on
them WITHOUT the hint (the Trajectory's prompt is the original prompt). Compute is matched to
LatentRevise exactly as for `resample` (methods/resample.py): same budget per prompt, same
accounting (mining.sampling_fte: the hinted prompt once, plus every generated token).
A correct sample that mentions the hint ("hint" in its text) or restates the answer without
reasoning (mining leakage rule B) is flagged as leakage and, by default, not trained on; the
arithmetic step check applies as for every rescue method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .latentrevise.methods import RescueSFT
from .latentrevise.mining import RescueOutcome, Screened, render_prompt
from .registry import register_method
from .resample import MatchedRescueConfig, budgets, n_samples, sample_and_verify, sample_cap
from .sft import SFTConfig


@dataclass
class HintConfig(MatchedRescueConfig):
    hint_template: str = " (Hint: the final answer is {answer}.)"  # appended to the problem text


def hinted_problem(problem_text: str, answer: str, cfg: HintConfig) -> str:
    return problem_text + cfg.hint_template.replace("{answer}", answer)


def rescue_hint(zero_hit: Sequence[Screened], model, tokenizer, generator, cfg: HintConfig, ctx,
                step: int = 0) -> list[RescueOutcome]:
    """The `mining.Rescuer` of this baseline."""
    prompts = [render_prompt(hinted_problem(sc.problem.problem, sc.problem.answer, cfg), ctx.template, tokenizer)
               for sc in zero_hit]
    bs = budgets(zero_hit, model, tokenizer, cfg, ctx.template)
    counts = [n_samples(b, len(tokenizer(p, add_special_tokens=False).input_ids), sample_cap(cfg))
              for b, p in zip(bs, prompts)]
    return sample_and_verify(zero_hit, prompts, counts, generator, tokenizer, cfg, ctx, "hint", step, budgets=bs)


# ------------------------------------------------------------------------------------------------
# the method: SFT on the standard data + the rationalized rescues, trained without the hint
# ------------------------------------------------------------------------------------------------


@dataclass
class HintSFTConfig(SFTConfig, HintConfig):
    """SFT fields + mining fields + the LatentRevise fields whose compute is matched + the hint."""


@register_method
class HintSFT(RescueSFT):
    name = "hint"
    config_cls = HintSFTConfig
    source = "hint"
    rescue = staticmethod(rescue_hint)
