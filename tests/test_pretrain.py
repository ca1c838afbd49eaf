"""The tiny base model: trained, cached, deterministic, and the same model in transformers and vLLM."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import HAS_VLLM

from repro.tiny import pretrain
from repro.tiny.pretrain import PretrainConfig, ensure_tiny_base, model_dir, pretrain_info

SMALL = PretrainConfig(corpus_docs=1500, tokenizer_docs=1500, steps=30, batch_size=16, warmup_steps=5, threads=1)
PROMPTS = ["Problem: Compute 3 + 4.\nSolution:", "Problem: What is 25 + 13 - 7?\nSolution:",
           "Problem: Compute (12 + 5) * 3.\nSolution:"]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiny-cache")
    return ensure_tiny_base(SMALL, cache_dir=cache, progress=False), cache


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_pretraining_records_its_run_and_learns(small_model):
    path, cache = small_model
    assert path == model_dir(SMALL, cache) and path.name == f"tiny-base-{SMALL.hash()}"
    info = pretrain_info(path)
    assert info["steps"] == 30 and info["config_hash"] == SMALL.hash()
    assert info["wall_s"] > 0 and info["tokens_per_s"] > 0 and info["tokens"] > 30 * 16 * 20
    assert info["final_loss"] < info["first_loss"] - 1.0  # 30 steps already cut the loss a lot
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_tokenizer_splits_digits_and_ends_documents_with_eos(small_model):
    _, tok = _load(small_model[0])
    assert tok.eos_token == "<|im_end|>"
    ids = tok("Problem: Compute 123 + 45.\nSolution: 168<|im_end|>", add_special_tokens=False).input_ids
    assert ids[-1] == tok.eos_token_id
    pieces = [tok.decode([i]) for i in ids]
    assert [p for p in pieces if p.strip().isdigit()] == ["1", "2", "3", "4", "5", "1", "6", "8"]


def test_second_call_reuses_the_cache_without_training(small_model, monkeypatch):
    path, cache = small_model
    before = (path / "pretrain.json").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("ensure_tiny_base trained again instead of reusing the cache")

    monkeypatch.setattr(pretrain, "_train", no_training)
    assert ensure_tiny_base(SMALL, cache_dir=cache, progress=False) == path
    assert (path / "pretrain.json").read_text() == before
    # a different recipe is a different model: it would train (and here, fail loudly)
    with pytest.raises(AssertionError, match="trained again"):
        ensure_tiny_base(dataclasses.replace(SMALL, seed=1), cache_dir=cache, progress=False)
    # threads only reorder float sums: same cache entry
    assert ensure_tiny_base(dataclasses.replace(SMALL, threads=2), cache_dir=cache) == path


def test_same_seed_same_weights(tmp_path):
    short = dataclasses.replace(SMALL, corpus_docs=600, tokenizer_docs=600, steps=8)
    a, b = (ensure_tiny_base(short, cache_dir=tmp_path / d, progress=False) for d in ("a", "b"))
    (ma, _), (mb, _) = _load(a), _load(b)
    for (name, x), (_, y) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.equal(x, y), name
    assert pretrain_info(a)["final_loss"] == pretrain_info(b)["final_loss"]
    other_seed = ensure_tiny_base(dataclasses.replace(short, seed=1), cache_dir=tmp_path / "c", progress=False)
    assert pretrain_info(other_seed)["final_loss"] != pretrain_info(a)["final_loss"]


def test_save_load_round_trip_keeps_logits(small_model, tmp_path):
    from repro.tiny.model import save_model

    model, tok = _load(small_model[0])
    ids = torch.tensor([tok(PROMPTS[1], add_special_tokens=False).input_ids])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        after = _load(save_model(model, tok, tmp_path / "copy"))[0](input_ids=ids).logits
    assert torch.equal(before, after)
    assert before.std() > 0.1  # a trained model, not a constant


def test_overrides_from_a_preset_dict():
    cfg = PretrainConfig.from_overrides({"steps": 7, "model": {"hidden_size": 64, "num_attention_heads": 2},
                                         "corpus_mix": [["easy", 1.0], ["hard", 3.0]]})
    assert cfg.steps == 7 and cfg.model.hidden_size == 64 and cfg.corpus_mix == (("easy", 1.0), ("hard", 3.0))
    assert cfg.hash() != PretrainConfig().hash()
    with pytest.raises(ValueError, match="unknown PretrainConfig field"):
        PretrainConfig.from_overrides({"stpes": 7})


def test_reflection_share_is_part_of_the_model_identity():
    """13.6: the default corpus has reflection documents; the share is in the cache key and validated."""
    assert PretrainConfig().reflect_frac > 0 and PretrainConfig().data_version >= 6
    assert PretrainConfig(reflect_frac=0.0).hash() != PretrainConfig().hash()
    with pytest.raises(ValueError, match="reflect_frac"):
        PretrainConfig(reflect_frac=-0.1)


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_vllm_and_transformers_greedy_agree(small_model):
    from harness.generation import HFGenerator, Sampling, VLLMGenerator, VLLMSettings

    path = str(small_model[0])
    greedy = Sampling(n=1, temperature=0.0, max_tokens=24)
    hf = HFGenerator(path, None).generate(PROMPTS, greedy)
    engine = VLLMGenerator(path, VLLMSettings(dtype="float32", max_model_len=512))
    try:
        vl = engine.generate(PROMPTS, greedy)
    finally:
        engine.close()
    for h, v in zip(hf, vl):  # both keep the eos they stopped at as the last token id
        assert h[0].token_ids == v[0].token_ids
        assert h[0].text == v[0].text and h[0].finish_reason == v[0].finish_reason
    assert any(len(h[0].token_ids) > 3 for h in hf)
