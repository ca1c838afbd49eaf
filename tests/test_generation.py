"""Generation backends agree: vLLM vs transformers (greedy), text vs embeddings, seeds, n, length stops,
nucleus sampling (top_p), and the context limit (prompt + max_tokens over max_model_len)."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_VLLM

from harness.generation import HFGenerator, Sampling, _sample_top_p, stable_seed

PROMPTS = ["Problem: 12+7\nSolution:", "Problem: 3+45\nSolution: 3+45="]
GREEDY = Sampling(n=1, temperature=0.0, max_tokens=24)
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")


def _ids(gen, text):
    return gen.tokenizer(text, add_special_tokens=False).input_ids


def _embeds(hf_generator, ids):
    with torch.no_grad():
        return hf_generator.model.get_input_embeddings()(torch.tensor(ids)).float()


@needs_vllm
@pytest.mark.vllm
def test_vllm_and_transformers_same_greedy_tokens(vllm_generator, hf_generator):
    v = vllm_generator.generate(PROMPTS, GREEDY)
    h = hf_generator.generate(PROMPTS, GREEDY)
    for a, b in zip(v, h):
        assert len(a) == len(b) == 1
        assert a[0].token_ids == b[0].token_ids
        assert len(a[0].token_ids) > 0
        assert a[0].prompt_tokens == b[0].prompt_tokens


@needs_vllm
@pytest.mark.vllm
def test_embeddings_give_the_same_tokens_as_text(vllm_generator, hf_generator):
    embeds = [_embeds(hf_generator, _ids(hf_generator, p)) for p in PROMPTS]
    for gen in (vllm_generator, hf_generator):
        from_text = gen.generate(PROMPTS, GREEDY)
        from_ids = gen.generate([_ids(hf_generator, p) for p in PROMPTS], GREEDY)
        from_embeds = gen.generate(embeds, GREEDY)
        for t, i, e, emb in zip(from_text, from_ids, from_embeds, embeds):
            assert t[0].token_ids == i[0].token_ids == e[0].token_ids
            assert e[0].prompt_tokens == emb.shape[0]


@needs_vllm
@pytest.mark.vllm
def test_vllm_seeds_reproduce_and_do_not_depend_on_the_batch(vllm_generator):
    s = Sampling(n=2, temperature=1.0, max_tokens=16)
    a = vllm_generator.generate([PROMPTS[0]], s, seeds=[11])
    b = vllm_generator.generate([PROMPTS[1], PROMPTS[0]], s, seeds=[5, 11])  # other batch, same seed
    c = vllm_generator.generate([PROMPTS[0]], s, seeds=[12])
    assert [x.token_ids for x in a[0]] == [x.token_ids for x in b[1]]
    assert [x.token_ids for x in a[0]] != [x.token_ids for x in c[0]]


def test_hf_seeds_reproduce(hf_generator):
    s = Sampling(n=2, temperature=1.0, max_tokens=16)
    a = hf_generator.generate([PROMPTS[0]], s, seeds=[stable_seed(0, "b", "p")])
    b = hf_generator.generate([PROMPTS[0]], s, seeds=[stable_seed(0, "b", "p")])
    c = hf_generator.generate([PROMPTS[0]], s, seeds=[stable_seed(1, "b", "p")])
    assert [x.token_ids for x in a[0]] == [x.token_ids for x in b[0]]
    assert [x.token_ids for x in a[0]] != [x.token_ids for x in c[0]]


@needs_vllm
@pytest.mark.vllm
def test_n_completions_and_length_finish(vllm_generator, hf_generator):
    s = Sampling(n=3, temperature=1.0, max_tokens=5)
    for gen in (vllm_generator, hf_generator):
        out = gen.generate(PROMPTS, s, seeds=[1, 2])
        assert [len(o) for o in out] == [3, 3]
        for o in out:
            assert len({tuple(c.token_ids) for c in o}) > 1  # samples differ
            for c in o:
                # the random model does not emit eos this early: every sample hits max_tokens
                assert c.finish_reason == "length" and len(c.token_ids) == 5
                assert c.logprobs is not None and len(c.logprobs) == 5


def test_stable_seed():
    assert stable_seed(0, "math500", "p1") == stable_seed(0, "math500", "p1")
    assert stable_seed(0, "math500", "p1") != stable_seed(0, "math500", "p2")
    assert 0 <= stable_seed("x") < 2 ** 31


# ---------------------------------------------------------------------------------------------
# nucleus sampling (the paper protocol samples with top_p = 0.95)
# ---------------------------------------------------------------------------------------------

PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05


def _frequencies(top_p: float, draws: int = 40000) -> torch.Tensor:
    logits = PROBS.log().expand(draws, -1)
    picks = _sample_top_p(logits, top_p, torch.Generator().manual_seed(0))
    return torch.bincount(picks, minlength=len(PROBS)).float() / draws


@pytest.mark.parametrize("top_p, nucleus", [
    (0.85, [1, 3, 2]),  # 0.5 + 0.3 < 0.85: the third token completes the nucleus, the fourth is out
    (0.5, [1]),  # the top token alone already holds 0.5
    (0.51, [1, 3]),
    (1.0, [1, 3, 2, 0]),  # off: the full distribution
])
def test_nucleus_sampling_draws_from_the_renormalized_nucleus_only(top_p, nucleus):
    freq = _frequencies(top_p)
    want = torch.zeros_like(PROBS)
    want[nucleus] = PROBS[nucleus] / PROBS[nucleus].sum()
    assert torch.all(freq[want == 0] == 0), freq  # nothing outside the nucleus, ever
    assert torch.allclose(freq, want, atol=0.01), (freq, want)  # 40000 draws: the standard error is < 0.0025


def test_hf_top_p_is_applied_in_generate(hf_generator):
    """A vanishing nucleus is the top token: sampling at temperature 1 then equals greedy decoding."""
    greedy = hf_generator.generate(PROMPTS, GREEDY)
    tiny_p = hf_generator.generate(PROMPTS, Sampling(n=2, temperature=1.0, top_p=1e-6, max_tokens=24), seeds=[3, 4])
    full = hf_generator.generate(PROMPTS, Sampling(n=2, temperature=1.0, max_tokens=24), seeds=[3, 4])
    for g, t, f in zip(greedy, tiny_p, full):
        assert all(c.token_ids == g[0].token_ids for c in t)
        assert any(c.token_ids != g[0].token_ids for c in f)  # without the nucleus the random model wanders


@needs_vllm
@pytest.mark.vllm
def test_vllm_top_p_matches_the_same_limit(vllm_generator, hf_generator):
    greedy = hf_generator.generate(PROMPTS, GREEDY)
    tiny_p = vllm_generator.generate(PROMPTS, Sampling(n=2, temperature=1.0, top_p=1e-6, max_tokens=24), seeds=[3, 4])
    eos = vllm_generator.tokenizer.eos_token_id
    for g, t in zip(greedy, tiny_p):
        assert all([x for x in c.token_ids if x != eos] == g[0].token_ids for c in t)


# ---------------------------------------------------------------------------------------------
# the context limit: prompt + max_tokens over max_model_len
# ---------------------------------------------------------------------------------------------

def _long_prompt(gen, n_tokens: int) -> list[int]:
    ids = _ids(gen, PROMPTS[0])
    return (ids * (n_tokens // len(ids) + 1))[:n_tokens]


def test_hf_context_limit_cuts_max_tokens_and_refuses_a_longer_prompt(tiny_model_dir):
    gen = HFGenerator(str(tiny_model_dir), None, max_model_len=40)
    s = Sampling(n=2, temperature=1.0, max_tokens=24)
    (out,) = gen.generate([_long_prompt(gen, 30)], s, seeds=[0])
    assert [(len(c.token_ids), c.finish_reason, c.prompt_tokens) for c in out] == [(10, "length", 30)] * 2
    (last,) = gen.generate([_long_prompt(gen, 39)], Sampling(max_tokens=5))
    assert len(last[0].token_ids) == 1 and last[0].finish_reason == "length"  # one token fits
    for n, msg in ((40, r"\(length 40\) plus the number of requested output tokens \(at least 1\) is longer"),
                   (41, r"maximum context length is 40 tokens. However, your prompt contains 41 input tokens")):
        with pytest.raises(ValueError, match=msg):
            gen.generate([_long_prompt(gen, n)], s)
    assert HFGenerator(str(tiny_model_dir), None).max_model_len == 512  # default: the config's, as vLLM


@needs_vllm
@pytest.mark.vllm
def test_context_limit_is_the_same_on_both_backends(vllm_generator, hf_generator):
    """Both at max_model_len 512 (the session engine's, the tiny config's): a 500-token prompt gets 12 of its 24
    tokens, "length"; a prompt of 512 or more is refused with the same error."""
    s = Sampling(n=1, temperature=0.0, max_tokens=24)
    eos = vllm_generator.tokenizer.eos_token_id
    (v,), (h,) = vllm_generator.generate([_long_prompt(hf_generator, 500)], s), \
        hf_generator.generate([_long_prompt(hf_generator, 500)], s)
    assert [x for x in v[0].token_ids if x != eos] == h[0].token_ids
    assert (len(v[0].token_ids), v[0].finish_reason) == (len(h[0].token_ids), h[0].finish_reason) == (12, "length")
    for n in (512, 520):  # vLLM raises its VLLMValidationError, the transformers backend a ValueError
        for gen in (vllm_generator, hf_generator):
            with pytest.raises(Exception, match=r"maximum (model|context) length (of|is) 512") as err:
                gen.generate([_long_prompt(hf_generator, n)], s)
            assert isinstance(err.value, ValueError) or type(err.value).__name__ == "VLLMValidationError"
