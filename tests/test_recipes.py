"""Named GRPO recipes reproduce their sources: losses by hand from each source's formula, steps, truncation.

One hand-made group of 4 samples (rewards 1, 0, 0, 0; 2, 4, 3, 1 response tokens). Sample 0's tokens
have ratio 1.3 (so clip-higher is visible), the others ratio 1; the reference policy is 0.5x the
current one on every token (k3 = 0.5 - ln 0.5 - 1); every token's entropy is 2.0. Each expected
value below is written out from the source's own formula (methods/recipes.py cites them).
"""

from __future__ import annotations

import math

import pytest
import torch

from methods.grpo import GRPOConfig, group_advantages, policy_loss, shaped_reward
from methods.recipes import RECIPES, describe

REWARDS = [1.0, 0.0, 0.0, 0.0]
LENGTHS = [2, 4, 3, 1]
MAX_TOKENS = 8
K3 = 0.5 - math.log(0.5) - 1
N_TOK = sum(LENGTHS)


def _batch():
    mask = torch.zeros(4, 4)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
    old = torch.full((4, 4), -1.0)
    logp = old.clone()
    logp[0] += math.log(1.3)
    ref = logp + math.log(0.5)
    return logp, old, ref, mask, torch.full((4, 4), 2.0)


def recipe_loss(name: str) -> float:
    cfg = GRPOConfig(recipe=name, max_tokens=MAX_TOKENS)
    logp, old, ref, mask, ent = _batch()
    adv = group_advantages(torch.tensor(REWARDS), cfg.advantage, cfg.adv_eps)
    loss, _ = policy_loss(logp, old, adv, mask, variant=cfg.advantage, clip=cfg.clip_range(),
                          ref_logp=ref if cfg.kl_coef else None, kl_coef=cfg.kl_coef, max_tokens=cfg.max_tokens,
                          entropy=ent, entropy_coef=cfg.entropy_coef)
    return loss.item()


def _std_adv(eps):
    """(r - mean) / (std + eps), unbiased std 0.5 for rewards 1, 0, 0, 0."""
    return [(r - 0.25) / (0.5 + eps) for r in REWARDS]


def test_dr_grpo_loss_by_hand():
    # understand-r1-zero: A = r - mean (no std); oat: per-sequence masked_sum / generate_max_length, mean over
    # sequences; ratio 1.3 with A = 0.75 > 0 is clipped at 1.2 (cliprange 0.2)
    a = [r - 0.25 for r in REWARDS]
    seq = [-a[0] * 1.2 * 2, -a[1] * 4, -a[2] * 3, -a[3] * 1]
    assert recipe_loss("dr-grpo") == pytest.approx(sum(s / MAX_TOKENS for s in seq) / 4, abs=1e-7)  # float32 arithmetic


def test_simplerl_zoo_loss_by_hand():
    # verl (simpleRL fork): pg token mean, A = (r - mean) / (std + 1e-6), clip 0.2; + 1e-4 x low_var_kl token
    # mean; - 1e-3 x entropy token mean (dp_actor: policy_loss = pg_loss - entropy_loss * entropy_coeff + kl)
    a = _std_adv(1e-6)
    pg = (-a[0] * 1.2 * 2 - a[1] * 4 - a[2] * 3 - a[3] * 1) / N_TOK
    assert recipe_loss("simplerl-zoo") == pytest.approx(pg + 1e-4 * K3 - 1e-3 * 2.0, abs=1e-7)  # float32 arithmetic


def test_dapo_loss_by_hand():
    # verl docs/algo/dapo.md: token-mean over the batch, clip-higher 0.28: ratio 1.3 clipped at 1.28
    a = _std_adv(1e-6)
    pg = (-a[0] * 1.28 * 2 - a[1] * 4 - a[2] * 3 - a[3] * 1) / N_TOK
    assert recipe_loss("dapo") == pytest.approx(pg, abs=1e-7)  # float32 arithmetic


def test_trl_default_loss_by_hand():
    # TRL: loss_type "dapo" (token mean), scale_rewards "group" with std + 1e-4, epsilon 0.2 both sides, beta 0
    a = _std_adv(1e-4)
    pg = (-a[0] * 1.2 * 2 - a[1] * 4 - a[2] * 3 - a[3] * 1) / N_TOK
    assert recipe_loss("trl-default") == pytest.approx(pg, abs=1e-7)  # float32 arithmetic


@pytest.mark.parametrize("name,steps", [("dr-grpo", 8), ("simplerl-zoo", 4), ("dapo", 16), ("trl-default", 1)])
def test_optimizer_steps_per_rollout_batch(name, steps):
    cfg = GRPOConfig(recipe=name)
    assert cfg.inner_updates * cfg.epochs == steps


def test_recipe_fills_defaults_only_and_every_field_cites_a_source():
    cfg = GRPOConfig(recipe="simplerl-zoo", kl_coef=1e-3)  # the >14B setting, chosen explicitly
    assert cfg.kl_coef == 1e-3 and cfg.entropy_coef == 1e-3 and cfg.inner_updates == 4
    assert GRPOConfig(recipe="none") == GRPOConfig()
    for name in RECIPES:
        for field, _, source in describe(name):
            assert hasattr(cfg, field), (name, field)
            assert ": " in source and source.split(":")[0] in {
                "understand-r1-zero", "oat", "simpleRL-reason", "verl", "trl"}, (name, field, source)
    again = GRPOConfig(**{**vars(GRPOConfig(recipe="dapo"))})  # rebuilding a resolved config is idempotent
    assert again == GRPOConfig(recipe="dapo")
    with pytest.raises(ValueError, match="GRPOConfig.recipe must be one of none | dr-grpo"):
        GRPOConfig(recipe="ppo")


def test_truncation_rule_and_overlong_shaping():
    dr, trl = GRPOConfig(recipe="dr-grpo", max_tokens=100), GRPOConfig(recipe="trl-default", max_tokens=100)
    assert shaped_reward(True, "length", 100, dr) == 0.0  # no eos: reward 0 (train_zero_math.py)
    assert shaped_reward(True, "stop", 100, dr) == 1.0
    assert shaped_reward(True, "length", 100, trl) == 1.0  # mask_truncated_completions=False: kept
    dapo = GRPOConfig(recipe="dapo", max_tokens=100)  # buffer 20: penalty from 80 tokens, -1 at 100
    assert [shaped_reward(True, "stop", n, dapo) for n in (80, 90, 100)] == pytest.approx([1.0, 0.5, 0.0])
    assert shaped_reward(False, "stop", 95, dapo) == pytest.approx(-0.75)
