"""Budgets are enforced, not a convention: GRPO and SFT stop at harness.method.Budget's bounds.

GRPO checks the next step's worst case (every sample to max_tokens) against max_generated_tokens, so a
run never generates more than its budget and stops less than one step's worst case short of it; the
stop and its reason are a `train_steps` row (phase "budget"). SFT honours max_steps and max_wall_s.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import Problem
from harness.method import Budget, RunContext
from harness.store import TrainStep, get_or_create_run, open_db, session_scope

SFT_PROBLEMS = [Problem(f"p{i}", f"{a}+{b}", str(a + b), {"solution": f"{a}+{b}={a + b}. The final answer is "
                                                                      f"\\boxed{{{a + b}}}."})
                for i, (a, b) in enumerate((a, b) for a in range(0, 60, 6) for b in range(0, 40, 10))]
GRPO_PROBLEMS = [Problem(f"p{i}", f"{i}+{i + 3}", str(2 * i + 3), {}) for i in range(6)]
GRPO_SMALL = dict(prompts_per_step=3, group_size=4, max_tokens=8, lr=3e-3, micro_batch_size=8, save_every=0)
SFT_QUICK = dict(epochs=4, batch_size=8, micro_batch_size=4, lr=3e-3, warmup_ratio=0.1, response_prefix=" ",
                 heldout_frac=0.1, max_len=64)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (the conftest fixture)."""


class OnesGrader:
    """Test grader: "correct" when the completion contains the digit 1 (mixed groups, so updates run)."""

    def grade(self, pairs):
        from harness.grading import Verdict

        return [Verdict(None, "1" in c, 0.0, None) for c, _ in pairs]


def _ctx(tmp_path: Path, db_url: str, budget: Budget, method: str) -> RunContext:
    from harness.generation import HFGenerator

    db = open_db(db_url)
    run, _ = get_or_create_run(db, method=method, model="tiny", preset="test", seed=0, config={"t": str(tmp_path)})
    return RunContext(run_id=run.id, db=db, out_dir=tmp_path, seed=0, template="tiny-boxed", budget=budget,
                      make_generator=lambda m: HFGenerator(m, None), grader=OnesGrader(), progress=False)


def _rows(ctx: RunContext, phase: str) -> list[TrainStep]:
    with session_scope(ctx.db) as s:
        return s.query(TrainStep).filter_by(run_id=ctx.run_id, phase=phase).order_by(TrainStep.step).all()


def _same_weights(a: str, b: str) -> bool:
    from transformers import AutoModelForCausalLM

    x, y = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (a, b))
    return all(torch.equal(x[k], y[k]) for k in x)


def test_budget_rejects_negative_bounds_naming_the_field():
    with pytest.raises(ValueError, match="Budget.max_generated_tokens must be >= 0"):
        Budget(max_generated_tokens=-1)
    b = Budget(max_steps=2, max_generated_tokens=100, max_wall_s=5.0)
    assert b.stop_reason(1, 50, 1.0, 50) is None
    assert b.stop_reason(2, 0) == "max_steps"
    assert b.stop_reason(1, 50, 1.0, 51) == "max_generated_tokens"  # the next step's worst case would not fit
    assert b.stop_reason(1, 0, 5.0) == "max_wall_s"
    assert Budget().stop_reason(10 ** 9, 10 ** 12, 1e9, 10 ** 9) is None


def test_grpo_stops_within_its_generated_token_budget(tmp_path, db_url, tiny_model_dir):
    from methods.grpo import GRPO, GRPOConfig

    budget, worst_step = 250, 3 * 4 * 8  # prompts x group x max_tokens
    ctx = _ctx(tmp_path, db_url, Budget(max_generated_tokens=budget), "grpo")
    GRPO().train(str(tiny_model_dir), GRPO_PROBLEMS, GRPOConfig(steps=10, **GRPO_SMALL), ctx)
    steps = _rows(ctx, "grpo")
    spent = round(sum(r.extra["response_len_mean"] * 3 * 4 for r in steps))  # every sample of every step
    (stop,) = _rows(ctx, "budget")
    assert 1 <= len(steps) < 10 and stop.step == len(steps)
    assert stop.extra == {"stopped_by": "max_generated_tokens", "generated_tokens": spent}
    assert spent <= budget and budget - spent < worst_step, (spent, budget)


def test_grpo_honours_max_steps_and_wall_time(tmp_path, db_url, tiny_model_dir):
    from methods.grpo import GRPO, GRPOConfig

    ctx = _ctx(tmp_path / "steps", db_url, Budget(max_steps=2), "grpo")
    GRPO().train(str(tiny_model_dir), GRPO_PROBLEMS, GRPOConfig(steps=5, **GRPO_SMALL), ctx)
    assert [r.step for r in _rows(ctx, "grpo")] == [1, 2]
    assert [(r.step, r.extra["stopped_by"]) for r in _rows(ctx, "budget")] == [(2, "max_steps")]
    ctx = _ctx(tmp_path / "wall", db_url, Budget(max_wall_s=0.0), "grpo-wall")
    ckpt = GRPO().train(str(tiny_model_dir), GRPO_PROBLEMS, GRPOConfig(steps=5, **GRPO_SMALL), ctx)
    assert _rows(ctx, "grpo") == [] and _rows(ctx, "budget")[0].extra["stopped_by"] == "max_wall_s"
    assert _same_weights(str(tiny_model_dir), ckpt)  # no step ran: the base weights


def test_sft_stops_at_its_step_and_wall_budget(tmp_path, db_url, tiny_model_dir):
    from methods.sft import SFT, SFTConfig

    ctx = _ctx(tmp_path / "steps", db_url, Budget(max_steps=3), "sft")
    SFT().train(str(tiny_model_dir), SFT_PROBLEMS, SFTConfig(**SFT_QUICK), ctx)  # 20 steps without a budget
    assert [r.step for r in _rows(ctx, "sft")] == [1, 2, 3]
    assert [r.step for r in _rows(ctx, "sft_heldout")] == [0, 3]  # the held-out loss of what was trained
    assert [(r.step, r.extra["stopped_by"]) for r in _rows(ctx, "budget")] == [(3, "max_steps")]
    ctx = _ctx(tmp_path / "wall", db_url, Budget(max_wall_s=0.0), "sft-wall")
    ckpt = SFT().train(str(tiny_model_dir), SFT_PROBLEMS, SFTConfig(**SFT_QUICK), ctx)
    assert _rows(ctx, "sft") == [] and _rows(ctx, "budget")[0].extra["stopped_by"] == "max_wall_s"
    assert _same_weights(str(tiny_model_dir), ckpt)
