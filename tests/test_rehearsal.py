"""`--table main --preset paper-rehearsal` end to end on the CPU: the paper preset's pipeline (MATH L3-5 prompts,
the five benchmarks from the local directory, qwen25-math-cot (ChatML), vLLM with weight sync, mining and
revision, the real grader) with budgets cut. Its accuracy is ~0 and the table says so; what is checked here is that
every stage ran and left what the paper run will leave in results.db. `.ci/run` runs this test after the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from harness.grading import GRADER_NAME
from harness.store import Evaluation, Revision, Rollout, Run, Sample, TrainStep, open_db, session_scope
from repro.presets import PAPER_REHEARSAL as P

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, data_dir):
    pytest.importorskip("vllm")
    tmp = tmp_path_factory.mktemp("rehearsal")
    db = f"sqlite:///{tmp / 'results.db'}"
    env = {**os.environ, "LATENTREVISE_RUNS": str(tmp / "runs"), "LATENTREVISE_DATA_DIR": str(data_dir),
           "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
    # a subprocess with a limit: an engine that dies mid-request can leave vLLM's client waiting forever
    proc = subprocess.run([sys.executable, "reproduce.py", "--table", "main", "--preset", P.name, "--db", db,
                           "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), open_db(db), proc.stderr


def test_every_method_has_a_row_on_every_benchmark_labelled_a_pipeline_check(rehearsal):
    table, _, err = rehearsal
    assert "pipeline check, not a result" in table["title"] and "pipeline check, not a result" in table["notes"][0]
    assert [r["method"] for r in table["rows"]] == ["base", "sft", "grpo", "lr-sft", "lr-grpo"]
    for row in table["rows"]:
        for b in P.benchmarks:
            assert row[f"{b} (n=2)"]["n_problems"] == P.eval_limit, (row["method"], b)
    assert not [n for n in table["notes"] if n.startswith(("failed this invocation", "not planned"))], table["notes"]
    assert f"{P.name}: {P.label}" in err  # the plan said it too


def test_evaluations_use_the_paper_protocol_on_real_benchmark_answers(rehearsal, data_dir):
    _, factory, _ = rehearsal
    from benchmarks import load_benchmark

    with session_scope(factory) as s:
        evs = s.scalars(select(Evaluation)).all()
        assert len(evs) == 5 * len(P.benchmarks) and {e.template for e in evs} == {"qwen25-math-cot"}
        for ev in evs:
            gold = {p.id: p.answer for p in load_benchmark(ev.benchmark, data_dir, P.eval_limit)}
            samples = s.scalars(select(Sample).where(Sample.evaluation_id == ev.id)).all()
            assert len(samples) == P.eval_limit * 2 and {x.problem_id for x in samples} == set(gold)
            assert all(x.gold == gold[x.problem_id] for x in samples)  # the benchmark's own answers
            # the Qwen2.5-Math system prompt: qwen25-math-cot's ChatML text
            assert all(x.prompt.startswith("<|im_start|>system\nPlease reason step by step") for x in samples)
            assert ev.grader["grader"] == GRADER_NAME  # the real grader, math-verify
            assert ev.sampling["max_tokens"] == P.eval.max_tokens and ev.sampling["temperature"] == 0.6


def test_training_ran_every_paper_stage(rehearsal, data_dir):
    _, factory, _ = rehearsal
    from repro.runs import load_train_prompts

    train_ids = {p.id for p in load_train_prompts(P, str(data_dir))}
    assert len(train_ids) == P.train_limit
    with session_scope(factory) as s:
        runs = {r.method: r for r in s.scalars(select(Run))}
        assert {r.status for r in runs.values()} == {"finished"}

        def steps(method, phase):
            return s.scalars(select(TrainStep).where(TrainStep.run_id == runs[method].id, TrainStep.phase == phase)
                             .order_by(TrainStep.step)).all()

        assert len(steps("sft", "sft")) == 2 and len(steps("sft", "sft_heldout")) == 2
        for m in ("grpo", "lr-grpo"):
            grpo = steps(m, "grpo")
            assert len(grpo) == 2 and all("sync" in st.timings for st in grpo)  # weights synced into vLLM
            # the half-memorized answers make some groups mixed: the policy update really ran
            assert sum(st.extra["trained_samples"] for st in grpo) > 0, m
        mining = steps("lr-sft", "mining")[0].extra["rescue"]
        assert mining["n_prompts"] == P.train_limit and mining["n_zero_hit"] > 0
        for m in ("lr-sft", "lr-grpo"):
            revs = s.scalars(select(Revision).where(Revision.run_id == runs[m].id)).all()
            assert revs and all(r.fw_steps == 10 for r in revs), m  # the paper's K
        mined = s.scalars(select(Rollout.problem_id).where(Rollout.run_id == runs["lr-sft"].id)).all()
        assert set(mined) <= train_ids  # mining screens MATH L3-5 training prompts


def test_the_rehearsal_model_looks_like_the_papers_where_the_pipeline_can_tell(rehearsal):
    _, factory, _ = rehearsal
    from transformers import AutoConfig, AutoTokenizer

    with session_scope(factory) as s:
        base = s.scalars(select(Run).where(Run.method == "base")).one().checkpoint
    tok, cfg = AutoTokenizer.from_pretrained(base), AutoConfig.from_pretrained(base)
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= set(tok.get_vocab()) and tok.chat_template
    assert cfg.max_position_embeddings == 4096
