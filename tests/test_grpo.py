"""GRPO: advantages and losses against hand-computed values, weight sync into vLLM, a short run.

Unit tests need no model. The run tests use the random tiny model with a transformers generator (no
engine start) and a rule-based test grader; the weight-sync test uses the session vLLM engine
and restores its weights. Longer runs on the pretrained tiny model are `slow`.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import HAS_VLLM
from methods.grpo import GRPO, GRPOConfig, Group, Sample, group_advantages, policy_loss

VARIANTS = ("grpo", "drgrpo", "dapo")


# ---------------------------------------------------------------------------------------------
# advantages
# ---------------------------------------------------------------------------------------------

def test_advantages_one_correct_of_four():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    assert group_advantages(r, "grpo", eps=0).tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert group_advantages(r, "dapo", eps=0).tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert group_advantages(r, "drgrpo").tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    # eps keeps the std normalization finite and slightly shrinks it
    assert group_advantages(r, "grpo", eps=1e-3)[0].item() == pytest.approx(0.75 / (0.5 + 1e-3), rel=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_advantages_of_uniform_group_are_zero(variant, value):
    adv = group_advantages(torch.full((8,), value), variant)
    assert adv.tolist() == [0.0] * 8


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown advantage variant 'ppo'"):
        group_advantages(torch.zeros(2), "ppo")


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------

def _two_sequences():
    """Sequence 0 has 2 response tokens, sequence 1 has 4; ratio 1 everywhere."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    logp = torch.full((2, 4), -1.0)
    return logp, logp.clone(), torch.tensor([1.0, -1.0]), mask


@pytest.mark.parametrize("variant,expected", [
    ("grpo", 0.0),  # per-sequence means -1 and +1, averaged
    ("drgrpo", 0.125),  # token sum (-2 + 4) / (max_tokens 8 * 2 sequences)
    ("dapo", 1 / 3),  # token sum (-2 + 4) / 6 tokens
])
def test_loss_aggregation(variant, expected):
    logp, old, adv, mask = _two_sequences()
    loss, stats = policy_loss(logp, old, adv, mask, variant=variant, clip=(0.2, 0.2), max_tokens=8)
    assert loss.item() == pytest.approx(expected)
    assert stats["clip_tokens"] == 0 and stats["tokens"] == 6


@pytest.mark.parametrize("ratio,adv,clip,expected_loss,clipped", [
    (1.5, 1.0, (0.2, 0.2), -1.2, True),  # ratio capped at 1 + 0.2
    (1.5, 1.0, (0.2, 0.28), -1.28, True),  # DAPO clip-higher
    (0.5, -1.0, (0.2, 0.28), 0.8, True),  # capped at 1 - 0.2 for a negative advantage
    (0.5, 1.0, (0.2, 0.2), -0.5, False),  # pessimistic bound: the unclipped term is smaller
    (1.1, 1.0, (0.2, 0.2), -1.1, False),  # inside the trust region
])
def test_ratio_clipping(ratio, adv, clip, expected_loss, clipped):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1),
                              variant="grpo", clip=clip)
    assert loss.item() == pytest.approx(expected_loss)
    assert stats["clip_tokens"] == (1.0 if clipped else 0.0)
    loss.backward()
    # a clipped token passes no gradient; otherwise d(-ratio * A)/d logp = -ratio * A
    assert logp.grad.item() == pytest.approx(0.0 if clipped else -ratio * adv)


def test_kl_k3_and_weights():
    logp, ref = torch.zeros(1, 2), torch.full((1, 2), math.log(0.5))
    mask, adv = torch.ones(1, 2), torch.zeros(1)
    loss, stats = policy_loss(logp, logp, adv, mask, variant="grpo", clip=(0.2, 0.2), ref_logp=ref, kl_coef=0.1)
    k3 = 0.5 - math.log(0.5) - 1  # exp(log r) - log r - 1 with r = 0.5
    assert stats["kl"] == pytest.approx(k3)
    assert loss.item() == pytest.approx(0.1 * k3)
    base, _ = policy_loss(logp, logp, torch.ones(1), mask, variant="dapo", clip=(0.2, 0.2))
    half, _ = policy_loss(logp, logp, torch.ones(1), mask, variant="dapo", clip=(0.2, 0.2),
                          weights=torch.tensor([0.5]))
    assert base.item() == pytest.approx(-1.0) and half.item() == pytest.approx(-0.5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_micro_batches_sum_to_the_whole_batch_loss(variant):
    g = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(5, 7, generator=g), -torch.rand(5, 7, generator=g)
    adv = torch.randn(5, generator=g)
    mask = (torch.rand(5, 7, generator=g) > 0.3).float()
    kw = dict(variant=variant, clip=(0.2, 0.28), max_tokens=7)
    whole, _ = policy_loss(logp, old, adv, mask, **kw)
    parts = sum(policy_loss(logp[s], old[s], adv[s], mask[s], n_seqs=5, n_tokens=float(mask.sum()), **kw)[0]
                for s in (slice(0, 2), slice(2, 5)))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


def test_config_clip_range_defaults():
    assert GRPOConfig().clip_range() == (0.2, 0.2)
    assert GRPOConfig(advantage="dapo").clip_range() == (0.2, 0.28)
    assert GRPOConfig(advantage="dapo", clip_high=0.3).clip_range() == (0.2, 0.3)
