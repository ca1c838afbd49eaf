"""`lr-sft` and `lr-grpo`: LatentRevise's rescued trajectories as training data for SFT and GRPO.

lr-sft   SFT (methods/sft.py) whose `extra_examples` hook adds the trajectories mined from the base
         model (mining.mine: screen the training prompts, revise failed rollouts of zero-hit ones,
         keep verified, non-leaky continuations). The mined pairs are cached in out_dir, so a
         restarted run neither mines nor logs twice.
lr-grpo  GRPO (methods/grpo.py) whose `augment_groups` hook revises, every `revise_every` steps,
         the failed rollouts of this step's zero-hit groups with the CURRENT policy (frozen for the
         revision) and its engine, and inserts up to `insert_per_group` rescued trajectories into
         each such group (reward 1), so the group's advantages are no longer all zero.

Off-policy weighting (the abstract is silent; our choice, a config field). Inserted samples carry
`off_policy=True` and a loss weight. GRPO computes old log-probs with the trainer model for every
sample, so the PPO ratio starts at 1 and no behaviour probability is needed (the latent prefix has
none). `off_policy_weighting`:
    const        weight = off_policy_weight (default 1.0: a rescued sample counts like a policy sample)
    policy-prob  weight = off_policy_weight * exp(mean_t log pi(y_t | x, y_<t)), the policy's per-token
                 geometric-mean probability of the trajectory, in (0, 1]: trajectories the policy
                 finds unlikely move it less (in the spirit of LUFFY's regularized importance sampling).
`off_policy_weight_max` clips that weight from above (None: no clip).
`insert_mode`: append (group grows by the inserted samples, default) | replace (the last failed
samples are replaced, group size and update cost stay fixed).

Inserted samples carry their true finish reason (the continuation's) and the policy samples' length
cap: a prefix + continuation longer than `max_tokens` is cut there and gets no eos. GRPO logs per step
`off_policy_loss_share`: the inserted samples' share of the absolute per-sample loss contributions,
sum |l_i| over inserted / sum |l_i| over all, l_i being sample i's term of the aggregated loss. It is
a proxy for their share of the gradient norm (exact when all per-sample gradients are parallel), one
that costs no extra backward pass.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch

from benchmarks import Problem
from harness.generation import Completion
from harness.method import RunContext

from ..grpo import GRPO, Group, GRPOConfig, Sample, shaped_reward
from ..registry import register_method
from ..sft import SFT, SFTConfig
from .mining import LatentReviseConfig, Screened, log_rescue, mine, rescue_latentrevise, rescue_stats, training_pairs

MINED_FILE = "mined_pairs.json"


def cached_pairs(ctx: RunContext, make) -> list[tuple[str, str]]:
    """Mined pairs from out_dir if a previous attempt of this run finished mining, else `make()`."""
    path = Path(ctx.out_dir) / MINED_FILE
    if path.is_file():
        return [tuple(p) for p in json.loads(path.read_text())]
    pairs = make()
    path.write_text(json.dumps(pairs))
    return pairs


@dataclass
class LRSFTConfig(SFTConfig, LatentReviseConfig):
    """SFT fields + every LatentRevise mining/revision field (flat)."""


class RescueSFT(SFT):
    """SFT on the standard data plus the trajectories a rescue procedure mines from zero-hit prompts.

    Subclasses name the procedure (`rescue`, a `mining.mine` rescue function) and its `source` label;
    lr-sft, resample and hint differ only there, so --table rescue compares like with like."""

    source: str = ""
    rescue = None  # staticmethod(rescue function) in subclasses

    def extra_examples(self, base_model: str, prompts: Sequence[Problem], cfg,
                       ctx: RunContext) -> list[tuple[str, str]]:
        return cached_pairs(ctx, lambda: mine(base_model, prompts, cfg, ctx, type(self).rescue, self.source).pairs)


@register_method
class LRSFT(RescueSFT):
    name = "lr-sft"
    config_cls = LRSFTConfig
    source = "latentrevise"
    rescue = staticmethod(rescue_latentrevise)


@dataclass
class LRGRPOConfig(GRPOConfig, LatentReviseConfig):
    revise_every: int = 1  # steps between revisions (0: never, i.e. plain GRPO)
    revise_max_groups: int | None = None  # zero-hit groups revised per step (None: all)
    insert_per_group: int = 2  # r: rescued trajectories inserted per zero-hit group
    insert_mode: Literal["append", "replace"] = "append"
    off_policy_weighting: Literal["const", "policy-prob"] = "const"
    off_policy_weight: float = 1.0
    # clip: an inserted sample's loss weight is at most this (after policy-prob weighting); None: no clip
    off_policy_weight_max: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.off_policy_weight_max is not None and self.off_policy_weight_max <= 0:
            raise ValueError(f"lr-grpo: off_policy_weight_max must be > 0 or None, got {self.off_policy_weight_max}")


@register_method
class LRGRPO(GRPO):
    name = "lr-grpo"
    config_cls = LRGRPOConfig

    def augment_groups(self, step: int, groups: list[Group], ctx: RunContext) -> list[Group]:
        cfg: LRGRPOConfig = self.cfg
        if cfg.revise_every <= 0 or step % cfg.revise_every:
            return groups
        tok = self.trainer.tokenizer
        screened = [Screened(g.problem, g.prompt, tok(g.prompt, add_special_tokens=False).input_ids,
                             [Completion(s.text, list(s.token_ids) if s.token_ids is not None else
                                         tok(s.text, add_special_tokens=False).input_ids, s.finish_reason, 0)
                              for s in g.samples], [s.reward > 0 for s in g.samples]) for g in groups]
        zero = [s for s in screened if s.zero_hit][: cfg.revise_max_groups]
        if not zero:
            return groups
        mcfg = dataclasses.replace(cfg, cont_max_tokens=cfg.cont_max_tokens or cfg.max_tokens)
        t0 = time.perf_counter()
        outcomes = rescue_latentrevise(zero, self.trainer.unwrapped, tok, self.generator, mcfg, ctx, step=step + 1)
        stats = rescue_stats("latentrevise", screened, outcomes, wall_s=time.perf_counter() - t0)
        # inserted samples reach `rollouts` through GRPO's own storing, so only the statistics here
        log_rescue(ctx, stats, screened, outcomes, step=step + 1, trajectories=False)
        by_id = {o.problem_id: o for o in outcomes}
        pick_cfg = dataclasses.replace(cfg, max_per_prompt=cfg.insert_per_group)
        for g in groups:
            o = by_id.get(g.problem.id)
            picks = training_pairs([o], pick_cfg) if o is not None else []
            if not picks:
                continue
            finish = {t.response: t.finish_reason for t in o.trajectories}
            new = [self._inserted(g.prompt, resp, finish[resp]) for _, resp in picks]
            g.samples = (g.samples[: len(g.samples) - len(new)] if cfg.insert_mode == "replace" else g.samples) + new
        return groups

    def _inserted(self, prompt: str, response: str, finish_reason: str) -> Sample:
        """A rescued trajectory as a GRPO sample, under the same length cap as policy samples.

        prefix + continuation can exceed `max_tokens` (the continuation alone may use up to
        `cont_max_tokens`): such a response is cut at `max_tokens` and, like a cut policy sample, gets no
        eos ("length"); the reward follows the recipe's truncation rule (`shaped_reward`)."""
        cfg: LRGRPOConfig = self.cfg
        ids = self.trainer.tokenizer(response, add_special_tokens=False).input_ids
        eos = self.trainer.tokenizer.eos_token_id
        ids = [t for t in ids if t != eos]
        if len(ids) > cfg.max_tokens:
            ids, finish_reason = ids[: cfg.max_tokens], "length"
        text = self.trainer.tokenizer.decode(ids, skip_special_tokens=True)
        weight = self._weight(prompt, ids)
        if cfg.off_policy_weight_max is not None:
            weight = min(weight, cfg.off_policy_weight_max)
        return Sample(text, ids, shaped_reward(True, finish_reason, len(ids), cfg), finish_reason, weight,
                      off_policy=True, source="revised", correct=True)

    @torch.no_grad()
    def _weight(self, prompt: str, response: str | list[int]) -> float:
        cfg = self.cfg
        if cfg.off_policy_weighting == "const":
            return cfg.off_policy_weight
        from ..common import collate, encode_pair, token_logprobs

        tok = self.trainer.tokenizer
        batch = collate([encode_pair(tok, prompt, response)], tok.pad_token_id or 0, self.trainer.device)
        was = self.trainer.model.training
        self.trainer.model.eval()
        lp = token_logprobs(self.trainer.model, batch)
        self.trainer.model.train(was)
        mask = batch["loss_mask"][:, 1:]
        return cfg.off_policy_weight * float(torch.exp((lp * mask).sum() / mask.sum().clamp(min=1)))
