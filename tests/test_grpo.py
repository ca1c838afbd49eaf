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

from methods.grpo import GRPO, GRPOConfig, Sample, group_advantages, policy_loss

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


# ---------------------------------------------------------------------------------------------
# weight sync into the running vLLM engine
# ---------------------------------------------------------------------------------------------

@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_update_weights_changes_what_vllm_samples(vllm_generator, tiny_model_dir):
    """Teach a copy of the model to answer '7777777', sync it, and the engine's greedy output follows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.generation import HFGenerator, Sampling

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    prompt, greedy = "Problem: 1+2\nSolution:", Sampling(n=1, temperature=0.0, max_tokens=8)
    before = vllm_generator.generate([prompt], greedy)[0][0].token_ids
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    target = tok(" 7777777", add_special_tokens=False).input_ids
    x = torch.tensor([p_ids + target])
    labels = torch.tensor([[-100] * len(p_ids) + target])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        model(input_ids=x, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    expected = HFGenerator(model, tok).generate([prompt], greedy)[0][0].token_ids
    seven = tok.convert_tokens_to_ids("7")
    assert expected.count(seven) >= 6 and before.count(seven) < 6  # the trained copy prefers "7"
    from harness.weightsync import sampler_gap, sync_tensors

    seq = [p_ids + target]
    try:
        vllm_generator.update_weights(sync_tensors(model))
        after = vllm_generator.generate([prompt], greedy)[0][0].token_ids
        assert after == expected  # the engine now samples from the trained weights
        sampler_gap(vllm_generator, model, seq).check((1e-4, 1e-3))  # and by log-probs, not only greedy tokens
    finally:  # the engine is shared by the session: put the original weights back
        vllm_generator.update_weights(original.items())
    assert vllm_generator.generate([prompt], greedy)[0][0].token_ids == before
    model.load_state_dict(original)
    sampler_gap(vllm_generator, model, seq).check((1e-4, 1e-3))


# ---------------------------------------------------------------------------------------------
# short runs on the random tiny model (transformers generator: no engine start)
# ---------------------------------------------------------------------------------------------

class DigitGrader:
    """Test grader: a completion is "correct" when it contains the digit 1 (learnable, ~30-60% base rate)."""

    def grade(self, pairs):
        from harness.grading import Verdict

        return [Verdict(None, "1" in c, 0.0, None) for c, _ in pairs]


class Counting:
    """Generator factory that counts engines and weight syncs (`stale`: syncs do nothing)."""

    def __init__(self, stale: bool = False):
        self.made, self.syncs, self.stale, self.last = 0, 0, stale, None

    def __call__(self, path):
        from harness.generation import HFGenerator

        self.made += 1
        gen = self.last = HFGenerator(path, None)
        inner = gen.update_weights

        def update(named):
            self.syncs += 1
            if not self.stale:
                inner(named)

        gen.update_weights = update
        return gen


class Alternating:
    """Test grader: every other completion is correct, so every group has a non-zero advantage."""

    def grade(self, pairs):
        from harness.grading import Verdict

        return [Verdict(None, i % 2 == 0, 0.0, None) for i, _ in enumerate(pairs)]


def _ctx(tmp_path, db_url, factory, grader=None):
    from harness.method import RunContext
    from harness.store import get_or_create_run, open_db

    db = open_db(db_url)
    run, _ = get_or_create_run(db, method="grpo", model="tiny", preset="test", seed=0, config={"t": str(tmp_path)})
    return RunContext(run_id=run.id, db=db, out_dir=tmp_path, seed=0, template="tiny-boxed",
                      make_generator=factory, grader=grader or DigitGrader(), progress=False)


def _problems(n=6):
    from benchmarks import Problem

    return [Problem(f"p{i}", f"{i}+{i + 3}", str(2 * i + 3), {}) for i in range(n)]


def _rows(ctx, table, **filters):
    from harness.store import session_scope

    with session_scope(ctx.db) as s:
        q = s.query(table).filter_by(run_id=ctx.run_id, **filters)
        return q.order_by(table.id).all()


SMALL = dict(prompts_per_step=3, group_size=4, max_tokens=8, lr=3e-3, micro_batch_size=8)


def test_grpo_run_logs_steps_rollouts_and_resumes(tmp_path, db_url, tiny_model_dir):
    from harness.store import Rollout, TrainStep

    class Crash(GRPO):
        def augment_groups(self, step, groups, ctx):
            if step == 2:
                raise KeyboardInterrupt("simulated kill in step 3")
            return groups

    # uninterrupted reference run: 3 steps, every rollout stored
    ref_ctx = _ctx(tmp_path / "ref", db_url, Counting())
    cfg = GRPOConfig(steps=3, save_every=2, store_rollouts="all", **SMALL)
    ckpt = GRPO().train(str(tiny_model_dir), _problems(), cfg, ref_ctx)
    steps = _rows(ref_ctx, TrainStep, phase="grpo")
    assert [r.step for r in steps] == [1, 2, 3]
    assert ref_ctx.make_generator.made == 1 and ref_ctx.make_generator.syncs == 3  # one engine, a sync per step
    for r in steps:
        assert set(r.timings) >= {"rollout", "grading", "update", "sync"}
        assert 0 <= r.reward_mean <= 1 and r.extra["response_len_mean"] > 0
        rolls = [x for x in _rows(ref_ctx, Rollout) if x.step == r.step]
        assert len(rolls) == 3 * 4
        by_problem = {}
        for x in rolls:
            by_problem.setdefault(x.problem_id, []).append(x.reward)
        assert sorted(r.zero_hit_ids) == sorted(p for p, rs in by_problem.items() if not any(rs))
        assert r.zero_hit_frac == pytest.approx(len(r.zero_hit_ids) / 3)
        assert sorted(r.extra["all_correct_ids"]) == sorted(p for p, rs in by_problem.items() if all(rs))
        assert r.reward_mean == pytest.approx(sum(x.reward for x in rolls) / len(rolls))
    from transformers import AutoModelForCausalLM

    # the engine holds exactly the trained weights (strict sync, aliases included), which differ from the base
    trained = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    engine = ref_ctx.make_generator.last.model.state_dict()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    assert set(trained) == set(engine)
    assert all(torch.equal(trained[k], engine[k]) for k in trained)
    assert not torch.equal(trained["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert all(r.extra["sync_gap_max"] == 0.0 for r in steps)  # same backend, same weights: exactly 0

    # killed in step 3 after the step-2 save; the restart must redo step 3 exactly
    ctx = _ctx(tmp_path / "kill", db_url, Counting())
    with pytest.raises(KeyboardInterrupt):
        Crash().train(str(tiny_model_dir), _problems(), cfg, ctx)
    assert [r.step for r in _rows(ctx, TrainStep, phase="grpo")] == [1, 2]
    GRPO().train(str(tiny_model_dir), _problems(), cfg, ctx)
    assert [r.step for r in _rows(ctx, TrainStep, phase="grpo")] == [1, 2, 3]
    assert ctx.make_generator.syncs == 2 + 1 + 1  # steps 1-2, the resume load, step 3
    redo = [(x.problem_id, x.completion) for x in _rows(ctx, Rollout) if x.step == 3]
    want = [(x.problem_id, x.completion) for x in _rows(ref_ctx, Rollout) if x.step == 3]
    assert redo == want


def test_augment_groups_inserts_off_policy_samples(tmp_path, db_url, tiny_model_dir):
    """lr-grpo's path: a rescued sample (text only, no sampler log-probs) joins a zero-hit group."""
    from harness.store import Rollout, TrainStep

    seen = {}

    class Rescue(GRPO):
        def augment_groups(self, step, groups, ctx):
            for g in groups:
                if not any(g.rewards):
                    g.samples.append(Sample(text=" 1 1 1", token_ids=None, reward=1.0, weight=0.5,
                                            off_policy=True, source="revised"))
            seen[step] = [len(g.samples) for g in groups]
            return groups

    class Never:
        def grade(self, pairs):
            from harness.grading import Verdict

            return [Verdict(None, False, 0.0, None) for _ in pairs]

    ctx = _ctx(tmp_path, db_url, Counting(), Never())
    Rescue().train(str(tiny_model_dir), _problems(), GRPOConfig(steps=1, save_every=0, **SMALL), ctx)
    (row,) = _rows(ctx, TrainStep, phase="grpo")
    assert seen[0] == [5, 5, 5] and row.zero_hit_frac == 1.0 and row.reward_mean == 0.0
    assert row.extra["off_policy_samples"] == 3
    assert row.extra["trained_samples"] == 15  # every sample now has a non-zero advantage
    assert row.extra["clip_frac"] == 0.0  # one update: trainer-computed old log-probs give ratio 1
    revised = [x for x in _rows(ctx, Rollout) if x.source == "revised"]
    assert len(revised) == 3 and all(x.reward == 1.0 and x.zero_hit_group for x in revised)


def test_stale_engine_fails_the_gap_check(tmp_path, db_url, tiny_model_dir):
    """An engine that ignores syncs (the tied-head bug's effect) stops the run at step 1, gap logged."""
    from harness.store import TrainStep
    from harness.weightsync import SyncError

    ctx = _ctx(tmp_path, db_url, Counting(stale=True), Alternating())
    with pytest.raises(SyncError, match="sampler/trainer gap mean .* exceeds the tolerance 0.0001 / 0.001"):
        GRPO().train(str(tiny_model_dir), _problems(), GRPOConfig(steps=3, save_every=0, **SMALL), ctx)
    (row,) = _rows(ctx, TrainStep, phase="grpo")
    assert row.step == 1 and row.extra["sync_gap_max"] > 1e-3
    # the same run with a working sync passes the check: the gap is exactly 0 on one backend
    ok = _ctx(tmp_path / "ok", db_url, Counting(), Alternating())
    GRPO().train(str(tiny_model_dir), _problems(), GRPOConfig(steps=1, save_every=0, **SMALL), ok)
    assert _rows(ok, TrainStep, phase="grpo")[0].extra["sync_gap_max"] == 0.0


def test_grpo_rejects_bad_config_before_any_work():
    with pytest.raises(ValueError, match="GRPOConfig.advantage must be one of grpo | drgrpo | dapo, got 'ppo'"):
        GRPOConfig(advantage="ppo")
    with pytest.raises(ValueError, match="store_rollouts must be one of zero_hit"):
        GRPOConfig(store_rollouts="some")
    with pytest.raises(ValueError, match="inner_updates"):
        GRPOConfig(inner_updates=0)


# ---------------------------------------------------------------------------------------------
# the tiny preset: a few dozen GRPO steps on the pretrained base model raise the training reward
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_grpo_on_tiny_base_raises_training_reward(tmp_path, db_url):
    from harness.grading import Grader
    from harness.store import TrainStep
    from repro.presets import TINY
    from repro.runs import generator_factory, load_train_prompts, resolve_base_model

    with Grader() as grader:
        ctx = _ctx(tmp_path, db_url, generator_factory(TINY), grader)
        cfg = GRPOConfig(**TINY.methods["grpo"])
        GRPO().train(resolve_base_model(TINY, progress=False), load_train_prompts(TINY), cfg, ctx)
    import numpy as np

    rewards = np.array([r.reward_mean for r in _rows(ctx, TrainStep, phase="grpo")])
    k = max(2, len(rewards) // 4)
    first, last = rewards[:k], rewards[-k:]
    se = float(np.sqrt(first.var(ddof=1) / k + last.var(ddof=1) / k))  # steps are different prompts: unpaired
    print(f"mean reward, first {k} steps {first.mean():.3f} -> last {k} steps {last.mean():.3f} (se {se:.3f})")
    assert last.mean() - first.mean() > 2 * se, (first.mean(), last.mean(), se)  # not noise: 2 standard errors


# ---------------------------------------------------------------------------------------------
# truncated importance sampling, dynamic sampling, ablation paths (issue 15.4, 15.3, 17.4)
# ---------------------------------------------------------------------------------------------

def test_tis_weights_on_a_constructed_mismatch():
    from methods.grpo import tis_weights

    # trainer probs 0.6 / 0.1 / 0.3 vs sampler 0.2 / 0.2 / 0.1: ratios 3, 0.5, 3
    old = torch.log(torch.tensor([[0.6, 0.1], [0.3, 0.3]]))
    sampler = torch.log(torch.tensor([[0.2, 0.2], [0.1, 0.1]]))
    mask = torch.ones(2, 2)
    w, st = tis_weights(old, sampler, mask, "token_truncate", 2.0)  # oat: min(ratio, tis_c)
    assert w.flatten().tolist() == pytest.approx([2.0, 0.5, 2.0, 2.0])
    assert st["tis_ratio_mean"] == pytest.approx((3 + 0.5 + 3 + 3) / 4) and st["tis_clipped_frac"] == 0.75
    w, st = tis_weights(old, sampler, mask, "sequence_mask", 3.0)  # TRL: sequence ratio 1.5 kept, 9 masked
    assert w.flatten().tolist() == pytest.approx([1.5, 1.5, 0.0, 0.0])
    assert st["tis_ratio_mean"] == pytest.approx((1.5 + 9) / 2) and st["tis_clipped_frac"] == 0.5
    # the weight multiplies the clipped policy term only
    logp = torch.zeros(1, 2)
    loss, _ = policy_loss(logp, logp, torch.ones(1), torch.ones(1, 2), variant="dapo", clip=(0.2, 0.2),
                          tis=torch.tensor([[2.0, 0.5]]))
    assert loss.item() == pytest.approx(-(2.0 + 0.5) / 2)


class Shifted(Counting):
    """HF engine whose reported log-probs are 1 nat lower than its true ones: ratio e on every token."""

    def __call__(self, path):
        gen = super().__call__(path)
        inner = gen.generate

        def generate(*a, **k):
            outs = inner(*a, **k)
            for cs in outs:
                for c in cs:
                    c.logprobs = [x - 1.0 for x in c.logprobs]
            return outs

        gen.generate = generate
        return gen


def test_tis_corrects_a_sampler_mismatch_end_to_end(tmp_path, db_url, tiny_model_dir):
    from harness.store import TrainStep

    ctx = _ctx(tmp_path, db_url, Shifted(), Alternating())
    GRPO().train(str(tiny_model_dir), _problems(), GRPOConfig(steps=1, save_every=0, **SMALL), ctx)
    (row,) = _rows(ctx, TrainStep, phase="grpo")
    assert row.extra["tis_ratio_mean"] == pytest.approx(math.e, rel=1e-3)  # measured against the sampler
    assert row.extra["tis_clipped_frac"] == 1.0  # e > cap 2.0 everywhere
    off = _ctx(tmp_path / "off", db_url, Counting(), Alternating())
    GRPO().train(str(tiny_model_dir), _problems(), GRPOConfig(steps=1, save_every=0, tis_mode="off", **SMALL), off)
    assert _rows(off, TrainStep, phase="grpo")[0].extra["tis_ratio_mean"] is None
    with pytest.raises(ValueError, match="needs sampler log-probs after temperature"):
        GRPO().train(str(tiny_model_dir), _problems(), GRPOConfig(steps=1, temperature=0.7, **SMALL),
                     _ctx(tmp_path / "t", db_url, Counting(), Alternating()))


class ByAnswer:
    """Test grader: problems whose gold answer is odd are always right, the rest alternate (varied groups)."""

    def grade(self, pairs):
        from harness.grading import Verdict

        return [Verdict(None, int(gold) % 2 == 1 or i % 2 == 0, 0.0, None) for i, (_, gold) in enumerate(pairs)]


def test_dapo_dynamic_sampling_drops_uniform_groups_and_refills(tmp_path, db_url, tiny_model_dir):
    from benchmarks import Problem
    from harness.store import TrainStep

    # gold answers alternate odd/even: every odd-answer group is all-correct and must be dropped
    problems = [Problem(f"p{i}", f"{i}+{i}", str(i), {}) for i in range(8)]
    ctx = _ctx(tmp_path, db_url, Counting(), ByAnswer())
    cfg = GRPOConfig(recipe="dapo", steps=1, save_every=0, inner_updates=2, max_gen_batches=4,
                     **{**SMALL, "prompts_per_step": 4})
    GRPO().train(str(tiny_model_dir), problems, cfg, ctx)
    (row,) = _rows(ctx, TrainStep, phase="grpo")
    assert row.extra["gen_batches"] > 1 and row.extra["trained_groups"] == 4  # refilled to a full batch
    assert row.extra["optimizer_steps"] == 2 and row.extra["trained_samples"] == 16
    assert row.extra["all_correct_ids"] and all(int(p[1:]) % 2 == 1 for p in row.extra["all_correct_ids"])


def test_ablation_paths_kl_entropy_epochs_and_clipping(tmp_path, db_url, tiny_model_dir):
    """kl_coef > 0, entropy_coef > 0 and 2 epochs x 2 mini-batches at a high lr: clipping acts, KL is positive."""
    from harness.store import TrainStep

    ctx = _ctx(tmp_path, db_url, Counting(), Alternating())
    cfg = GRPOConfig(steps=2, save_every=0, kl_coef=0.1, entropy_coef=1e-3, inner_updates=2, epochs=2,
                     sync_tolerance=(1e-4, 1e-3), **{**SMALL, "lr": 3e-2})
    GRPO().train(str(tiny_model_dir), _problems(), cfg, ctx)
    rows = _rows(ctx, TrainStep, phase="grpo")
    assert [r.extra["optimizer_steps"] for r in rows] == [4, 4]
    assert rows[0].extra["kl"] > 0 and rows[0].extra["entropy"] > 0
    assert max(r.extra["clip_frac"] for r in rows) > 0  # later mini-batches see ratios past 1 +- 0.2
    assert all(r.extra["sync_gap_max"] == 0.0 for r in rows)
