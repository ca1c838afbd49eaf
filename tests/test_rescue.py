"""Mining and rescue: zero-hit screening, Revision rows, planted rescues and leakage, matched-compute baselines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import Problem
from harness.generation import Completion, HFGenerator
from harness.method import RunContext
from harness.store import Revision, Rollout, TrainStep, get_or_create_run, open_db, session_scope
from methods.hint import HintConfig, rescue_hint
from methods.latentrevise.mining import LatentReviseConfig, mine, rescue_latentrevise, training_pairs
from methods.resample import MatchedRescueConfig, rescue_resample

PROBLEMS = [Problem(f"p{i}", f"Compute {a} + {b}.", str(a + b)) for i, (a, b) in enumerate([(12, 9), (40, 7), (3, 88)])]
SMALL = dict(mine_samples=2, mine_max_tokens=12, cont_samples=2, failed_per_prompt=1, fw_steps=2, prefix_frac=0.5)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (the conftest fixture)."""


@pytest.fixture(scope="module")
def grader():
    from harness.grading import Grader

    return Grader(workers=0)


def make_ctx(db_url, tmp_path, grader, make_generator, name="lr") -> RunContext:
    db = open_db(db_url)
    run, _ = get_or_create_run(db, method=name, model="tiny", preset="test", seed=0, config={"name": name})
    return RunContext(run_id=run.id, db=db, out_dir=Path(tmp_path), seed=0, template="tiny-boxed", grader=grader,
                      make_generator=make_generator, progress=False)


def test_mining_finds_zero_hit_prompts_and_logs_revisions(tiny_model_dir, db_url, tmp_path, grader):
    ctx = make_ctx(db_url, tmp_path, grader, lambda m: HFGenerator(m, None))
    res = mine(str(tiny_model_dir), PROBLEMS, LatentReviseConfig(**SMALL), ctx, rescue_latentrevise, "latentrevise")
    st = res.stats
    assert st["n_prompts"] == 3 and st["n_zero_hit"] == 3 and st["zero_hit_frac"] == 1.0  # a random model
    assert st["fte_per_zero_hit"] > 0 and st["source"] == "latentrevise"
    with session_scope(ctx.db) as s:
        revs = s.query(Revision).filter_by(run_id=ctx.run_id).all()
        assert len(revs) == 3  # one failed rollout per zero-hit prompt
        for r in revs:
            assert r.fw_steps == 2 and 1 <= r.prefix_len
            assert len(r.gold_loss) == len(r.away_loss) == 3  # K + 1 iterates
            assert len(r.top_tokens) == r.prefix_len
            for pos in r.top_tokens:
                assert 1 <= len(pos) <= 5 and sum(w for _, w in pos) <= 1 + 1e-4
            assert len(r.continuations) == 2 * 2  # two modes x cont_samples
            assert {c["mode"] for c in r.continuations} == {"latent", "discrete"}
            assert all(set(c) >= {"text", "mode", "correct", "leakage"} for c in r.continuations)
            assert r.rescued == any(c["correct"] for c in r.continuations)
            assert r.wall_s > 0 and r.peak_mem_mb > 0 and r.config["_stats"]["fte_revise"] > 0
        step = s.query(TrainStep).filter_by(run_id=ctx.run_id, phase="mining").one()
        assert step.zero_hit_frac == 1.0 and sorted(step.zero_hit_ids) == ["p0", "p1", "p2"]
        assert step.extra["rescue"]["n_zero_hit"] == 3
        rolls = s.query(Rollout).filter_by(run_id=ctx.run_id, source="policy").all()
        assert len(rolls) == 6 and all(r.zero_hit_group for r in rolls)
    latents = torch.load(Path(tmp_path) / "latent_prefixes_step0.pt")
    assert len(latents) == 3 and torch.allclose(latents[0]["vertex_weights"].sum(-1), torch.ones(1))


class PlantedGenerator:
    """Screening: a wrong answer. From the latent prefix: a reasoned correct answer. From p': a bare one."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompts, sampling, seeds=None, progress=False):
        out = []
        for p in prompts:
            if isinstance(p, str):
                text = " 1 + 1 = 3. The answer is \\boxed{3}."
            elif isinstance(p, torch.Tensor):
                text = " so 2 + 2 = 4. The answer is \\boxed{4}."
            else:
                text = " The answer is \\boxed{4}."
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            out.append([Completion(text, ids, "stop", 0) for _ in range(sampling.n)])
        return out

    def close(self):
        pass


def test_planted_rescue_becomes_training_data_and_leak_is_excluded(tiny_model_dir, db_url, tmp_path, grader):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ctx = make_ctx(db_url, tmp_path, grader, lambda m: PlantedGenerator(tok))
    problems = [Problem("q0", "Compute 2 + 2.", "4")]
    res = mine(str(tiny_model_dir), problems, LatentReviseConfig(**SMALL), ctx, rescue_latentrevise, "latentrevise")
    st = res.stats
    assert st["n_zero_hit"] == 1 and st["rescue_rate"] == 1.0 and st["clean_rescue_rate"] == 1.0
    assert st["leak_frac"] == pytest.approx(0.5)  # the bare discrete continuations are flagged
    modes = {(t.mode, t.leakage) for o in res.outcomes for t in o.trajectories}
    assert modes == {("latent", False), ("discrete", True)}
    assert len(res.pairs) == 1 and res.pairs[0][1].endswith("so 2 + 2 = 4. The answer is \\boxed{4}.")
    cfg_leaky = LatentReviseConfig(**SMALL, include_leaky=True)
    assert len(training_pairs(res.outcomes, cfg_leaky)) == 2
    assert training_pairs(res.outcomes, LatentReviseConfig(**SMALL, train_prefix="discrete")) == []
    with session_scope(ctx.db) as s:
        rev = s.query(Revision).filter_by(run_id=ctx.run_id).one()
        assert rev.rescued and rev.leakage
        revised = s.query(Rollout).filter_by(run_id=ctx.run_id, source="revised").all()
        assert len(revised) == 4 and all(r.reward == 1.0 for r in revised)


def test_resample_and_hint_match_latentrevise_compute(tiny_model_dir, db_url, tmp_path, grader):
    stats = {}
    for name, cfg, rescuer in (("latentrevise", LatentReviseConfig(**SMALL), rescue_latentrevise),
                               ("resample", MatchedRescueConfig(**SMALL), rescue_resample),
                               ("hint", HintConfig(**SMALL), rescue_hint)):
        ctx = make_ctx(db_url, tmp_path / name, grader, lambda m: HFGenerator(m, None), name=name)
        (tmp_path / name).mkdir(exist_ok=True)
        stats[name] = mine(str(tiny_model_dir), PROBLEMS, cfg, ctx, rescuer, name).stats
    keys = set(stats["latentrevise"])
    assert all(set(s) == keys for s in stats.values())  # one statistics shape for the rescue table
    assert {s["n_zero_hit"] for s in stats.values()} == {3}  # same screening (same seeds)
    lr = stats["latentrevise"]["fte_per_zero_hit"]
    per_sample = len(PROBLEMS[0].problem) + SMALL["mine_max_tokens"] + 20  # generous bound on one sample's cost
    for name in ("resample", "hint"):
        spent = stats[name]["fte_per_zero_hit"]
        assert spent > 0
        assert abs(spent - lr) < max(0.5 * lr, per_sample), (name, spent, lr)
    # the hint baseline trains on the prompt WITHOUT the hint
    with session_scope(open_db(db_url)) as s:
        assert all("Hint" not in r.prompt for r in s.query(Rollout).all())


class PlantedEngine(PlantedGenerator):
    """PlantedGenerator with the engine interface GRPO needs (weight sync is a no-op)."""

    def update_weights(self, named):
        pass


def test_lr_grpo_end_to_end_inserts_rescued_samples(tiny_model_dir, db_url, tmp_path, grader):
    """lr-grpo with the real revision core: every group is zero-hit, the latent continuation is correct, so
    each group gets exactly one (deduplicated, non-leaky) rescued sample and the update is not a no-op."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from methods.latentrevise.methods import LRGRPO, LRGRPOConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ctx = make_ctx(db_url, tmp_path, grader, lambda m: PlantedEngine(tok), name="lr-grpo")
    problems = [Problem(f"q{i}", f"Compute 2 + 2. ({i})", "4") for i in range(3)]
    cfg = LRGRPOConfig(steps=2, prompts_per_step=3, group_size=4, max_tokens=12, lr=3e-3, micro_batch_size=8,
                       save_every=0, store_rollouts="all", insert_per_group=2, **SMALL)
    ckpt = LRGRPO().train(str(tiny_model_dir), problems, cfg, ctx)
    with session_scope(ctx.db) as s:
        steps = s.query(TrainStep).filter_by(run_id=ctx.run_id, phase="grpo").order_by(TrainStep.step).all()
        assert [r.step for r in steps] == [1, 2]
        for r in steps:
            assert r.zero_hit_frac == 1.0 and r.reward_mean == 0.0  # policy samples are all wrong
            assert r.extra["off_policy_samples"] == 3  # one distinct clean rescue per group (discrete ones leak)
            assert r.extra["trained_samples"] == 3 * 5  # advantages are no longer all zero
        mining = s.query(TrainStep).filter_by(run_id=ctx.run_id, phase="mining").order_by(TrainStep.step).all()
        assert [m.step for m in mining] == [1, 2] and all(m.extra["rescue"]["rescue_rate"] == 1.0 for m in mining)
        assert s.query(Revision).filter_by(run_id=ctx.run_id).count() == 2 * 3
        revised = s.query(Rollout).filter_by(run_id=ctx.run_id, source="revised").all()
        assert len(revised) == 2 * 3 and all(r.completion.endswith("so 2 + 2 = 4. The answer is \\boxed{4}.")
                                             for r in revised)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
