"""SFT: loss masking, a short run on the random tiny model (held-out loss falls, rows logged, resume
is exact), the RFT data path and the `extra_examples` hook. The accuracy check on the pretrained tiny
base model is `slow`."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import HAS_VLLM

from methods.common import collate, encode_pair, lr_lambda, masked_nll, render_prompts
from methods.sft import SFT, SFTConfig, split_heldout


def _problems(n=40):
    from benchmarks import Problem

    return [Problem(f"p{i}", f"{a}+{b}", str(a + b), {"solution": f"{a}+{b}={a + b}. The final answer is "
                                                                  f"\\boxed{{{a + b}}}."})
            for i, (a, b) in enumerate((a, b) for a in range(0, 60, 6) for b in range(0, 40, 10))][:n]


def _ctx(tmp_path, db_url, factory=None, grader=None, ctx_cls=None):
    from harness.method import RunContext
    from harness.store import get_or_create_run, open_db

    db = open_db(db_url)
    run, _ = get_or_create_run(db, method="sft", model="tiny", preset="test", seed=0, config={"t": str(tmp_path)})
    return (ctx_cls or RunContext)(run_id=run.id, db=db, out_dir=tmp_path, seed=0, template="tiny-boxed",
                                   make_generator=factory, grader=grader, progress=False)


def _steps(ctx, phase):
    from harness.store import TrainStep, session_scope

    with session_scope(ctx.db) as s:
        return s.query(TrainStep).filter_by(run_id=ctx.run_id, phase=phase).order_by(TrainStep.step).all()


QUICK = dict(epochs=4, batch_size=8, micro_batch_size=4, lr=3e-3, warmup_ratio=0.1, response_prefix=" ",
             heldout_frac=0.1, max_len=64)


def test_encode_pair_masks_the_prompt_and_appends_eos(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, mask = encode_pair(tok, "Problem: 1+2\nSolution:", " 1+2=3.")
    p = tok("Problem: 1+2\nSolution:", add_special_tokens=False).input_ids
    r = tok(" 1+2=3.", add_special_tokens=False).input_ids
    assert ids == p + r + [tok.eos_token_id] and mask == [0] * len(p) + [1] * (len(r) + 1)
    assert encode_pair(tok, "a", [5, tok.eos_token_id])[0][-2:] == [5, tok.eos_token_id]  # no second eos
    assert encode_pair(tok, "a", [5, 6], add_eos=False)[0][-2:] == [5, 6]  # a cut-off rollout stays cut
    assert len(encode_pair(tok, "Problem: 1+2\nSolution:", " 1+2=3.", max_len=len(p) + 2)[0]) == len(p) + 2
    batch = collate([encode_pair(tok, "a", [5]), encode_pair(tok, "a b", [5, 6])], pad_id=0)
    assert batch["attention_mask"].sum(1).tolist() == [len(encode_pair(tok, "a", [5])[0]),
                                                       len(encode_pair(tok, "a b", [5, 6])[0])]


def test_lr_schedule_warms_up_then_decays():
    values = [lr_lambda(s, warmup=2, total=10, min_ratio=0.1) for s in range(11)]
    assert values[:2] == [0.5, 1.0] and values[2] == pytest.approx(1.0)
    assert values[10] == pytest.approx(0.1) and all(a >= b for a, b in zip(values[2:], values[3:]))


def test_sft_lowers_heldout_loss_and_logs_steps(tmp_path, db_url, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctx = _ctx(tmp_path, db_url)
    ckpt = SFT().train(str(tiny_model_dir), _problems(), SFTConfig(**QUICK), ctx)
    steps, held = _steps(ctx, "sft"), _steps(ctx, "sft_heldout")
    assert len(steps) == 4 * 5  # 36 training problems / batch 8 -> 5 steps per epoch
    assert [h.step for h in held] == [0, 20]
    assert held[1].loss < 0.8 * held[0].loss, (held[0].loss, held[1].loss)
    assert steps[-1].loss < steps[0].loss
    assert steps[0].lr < steps[2].lr and steps[-1].lr < steps[2].lr  # warm-up, then cosine decay
    assert all(s.grad_norm > 0 and s.tokens_per_s > 0 for s in steps)
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.eos_token == "<|im_end|>"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert all(not torch.equal(base[k], v) for k, v in model.state_dict().items() if k.endswith("proj.weight"))
    # the logged final held-out loss is the checkpoint's: recomputed from the saved weights
    cfg = SFTConfig(**QUICK)
    texts = render_prompts("tiny-boxed", _problems(), tok)
    _, held_ex, cover = split_heldout(_problems(), texts, SFT().reference_examples(_problems(), texts, cfg), [], cfg, 0)
    assert held[1].extra["heldout_problems"] == cover["heldout_problems"] and len(cover["heldout_problems"]) == 4
    enc = [encode_pair(tok, e[1], e[2], cfg.max_len) for e in held_ex]
    with torch.no_grad():
        nll, n = masked_nll(model.eval(), collate(enc, tok.pad_token_id))
    assert held[1].loss == pytest.approx(float(nll) / float(n), rel=1e-5)


def test_heldout_split_drops_extra_examples_of_heldout_problems(tiny_model_dir):
    """Rescued (extra) pairs of held-out problems must not be trained on (issue 15.6: they leaked)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = SFTConfig(**QUICK)
    problems = _problems()
    texts = render_prompts("tiny-boxed", problems, tok)
    extra = [(t, " rescued") for t in texts] + [("an unrelated prompt", " x")]  # one per problem + one unmatched
    train, held, cover = split_heldout(problems, texts, SFT().reference_examples(problems, texts, cfg), extra, cfg, 0)
    held_ids = {e[0] for e in held}
    assert len(held_ids) == 4 and not held_ids & {e[0] for e in train}
    assert sum(e[2] == " rescued" for e in train) == 36  # every training problem keeps its rescue
    assert cover["extra_dropped"] == 4 and cover["extra_unmatched"] == 1


def test_sft_resume_after_kill_is_exact(tmp_path, db_url, tiny_model_dir):
    from safetensors.torch import load_file

    from harness.method import RunContext

    class KillAt7(RunContext):
        def log_step(self, step, phase="train", **values):
            if phase == "sft" and step == 7:
                raise KeyboardInterrupt("simulated kill")
            super().log_step(step, phase, **values)

    cfg = SFTConfig(**{**QUICK, "epochs": 2, "save_every": 5})
    full = SFT().train(str(tiny_model_dir), _problems(), cfg, _ctx(tmp_path / "a", db_url))
    with pytest.raises(KeyboardInterrupt):
        SFT().train(str(tiny_model_dir), _problems(), cfg, _ctx(tmp_path / "b", db_url, ctx_cls=KillAt7))
    ctx = _ctx(tmp_path / "b", db_url)
    resumed = SFT().train(str(tiny_model_dir), _problems(), cfg, ctx)
    assert [s.step for s in _steps(ctx, "sft")] == list(range(1, 11))
    a, b = load_file(os.path.join(full, "model.safetensors")), load_file(os.path.join(resumed, "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rft_keeps_correct_rollouts_and_extra_examples(tmp_path, db_url, tiny_model_dir):
    from harness.generation import HFGenerator
    from harness.grading import Verdict

    class EvenLength:  # test grader: "correct" when the completion has an even number of characters
        def grade(self, pairs):
            return [Verdict(None, len(c) % 2 == 0, 0.0, None) for c, _ in pairs]

    extra_calls = []

    class WithExtra(SFT):
        def extra_examples(self, base_model, prompts, cfg, ctx):
            extra_calls.append(len(prompts))
            return [("Problem: 2+2\nSolution:", " 2+2=4. The final answer is \\boxed{4}.")]

    made = []
    ctx = _ctx(tmp_path, db_url, factory=lambda p: made.append(p) or HFGenerator(p, None), grader=EvenLength())
    cfg = SFTConfig(**{**QUICK, "data": "rft", "epochs": 1, "rft_samples": 4, "rft_max_tokens": 6,
                       "rft_keep_per_prompt": 2})
    WithExtra().train(str(tiny_model_dir), _problems(8), cfg, ctx)
    kept = [line for line in (tmp_path / "rft.jsonl").read_text().splitlines()]
    (data,) = _steps(ctx, "sft_data")
    assert len(made) == 1 and extra_calls == [8]
    assert data.extra["rft_samples"] == 32 and data.extra["rft_kept"] == len(kept) <= 16
    tok = HFGenerator(str(tiny_model_dir), None).tokenizer
    assert kept and all(len(tok.decode(json.loads(k)[2], skip_special_tokens=True)) % 2 == 0 for k in kept)
    # a restart reuses the cached rollouts: no new engine
    SFT().train(str(tiny_model_dir), _problems(8), cfg, _ctx(tmp_path, db_url, factory=lambda p: made.append(p)))
    assert len(made) == 1


def test_sft_errors_name_the_problem(tmp_path, db_url, tiny_model_dir):
    from benchmarks import Problem

    with pytest.raises(ValueError, match="problem 'x1' has no meta\\['solution'\\]"):
        SFT().train(str(tiny_model_dir), [Problem("x1", "1+1", "2", {})], SFTConfig(), _ctx(tmp_path, db_url))
    with pytest.raises(ValueError, match="SFTConfig.data must be one of reference"):
        SFTConfig(data="web")
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size"):
        SFTConfig(batch_size=10, micro_batch_size=4)


# ---------------------------------------------------------------------------------------------
# the tiny preset: SFT on the pretrained base model beats it
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_sft_on_tiny_base_lowers_heldout_loss_and_raises_accuracy(tmp_path, db_url):
    from safetensors.torch import load_file

    from benchmarks import load_benchmark
    from harness.generation import Sampling, VLLMGenerator
    from harness.grading import Grader
    from harness.prompts import render
    from harness.weightsync import with_tied_head
    from repro.presets import TINY
    from repro.runs import load_train_prompts, resolve_base_model

    base = resolve_base_model(TINY, progress=False)
    ctx = _ctx(tmp_path, db_url)
    ckpt = SFT().train(base, load_train_prompts(TINY), SFTConfig(**TINY.methods["sft"]), ctx)
    held = _steps(ctx, "sft_heldout")
    assert held[-1].loss < held[0].loss
    problems = load_benchmark("arith-easy") + load_benchmark("arith-medium")
    prompts = [render("tiny-boxed", p.problem) for p in problems]
    gen, grader = VLLMGenerator(base, TINY.vllm), Grader(workers=0)
    try:
        per_problem = []  # per model, each problem's share of its 4 samples graded correct
        for weights in (None, load_file(os.path.join(ckpt, "model.safetensors"))):
            if weights is not None:  # a saved tied checkpoint has no lm_head.weight: send the alias too
                gen.update_weights(with_tied_head(weights, True).items())
            outs = gen.generate(prompts, Sampling(n=4, temperature=1.0, max_tokens=96, seed=0))
            verdicts = iter(grader.grade([(c.text, p.answer) for p, cs in zip(problems, outs) for c in cs]))
            per_problem.append([sum(next(verdicts).correct for _ in cs) / len(cs) for cs in outs])
    finally:
        gen.close()
    from repro.scores import paired_p

    before, after = per_problem
    gain, p = sum(after) / len(after) - sum(before) / len(before), paired_p(after, before)
    print(f"held-out loss {held[0].loss:.4f} -> {held[-1].loss:.4f}; accuracy gain {gain:+.3f} (paired p {p:.4f})")
    assert gain > 0 and p < 0.05, (gain, p)  # the repo's paired test over problems, not a bare `>`
