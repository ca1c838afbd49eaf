"""Stops and prompt tokens, alike in both backends (issue 11.1, 11.3).

* A special end-of-turn token given as a stop string (`<|endoftext|>` here, `<|im_end|>` for Qwen chat) is
  stopped on by token id: a tiny model whose lm_head row for that token is set so that it becomes the greedy
  argmax at step 5 stops right there on vLLM and on transformers, with the same token ids. Before the fix vLLM
  ran on to max_tokens (the stop string never matches text with special tokens left out).
* Other stop strings stay strings; `include_stop` keeps the matched string (understand-r1-zero's "</answer>").
* A prompt gets exactly one BOS, also when its chat template writes `{{ bos_token }}` itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import HAS_VLLM

from harness.generation import HFGenerator, Sampling, VLLMGenerator, encode_prompt, split_stops
from harness.prompts import render

PROMPT = "Problem: 12+7\nSolution:"
STOP_AT = 4  # 0-based step at which the planted model emits the special token
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")


def _tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_special_stops_become_token_ids_other_stops_stay_strings(tiny_model_dir):
    tok = _tok(tiny_model_dir)  # Qwen-style specials: <|endoftext|>, <|im_start|>, <|im_end|>
    strings, ids = split_stops(tok, ("</s>", "<|im_end|>", "<|endoftext|>", "</answer>", "<|im_end|>"))
    assert strings == ("</s>", "</answer>")  # "</s>" is no token of this vocabulary: a string
    assert ids == (tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>"))
    assert split_stops(tok, ()) == ((), ())


def _planted_state(tiny_model_dir, token: str, step: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    """State dict of the tiny model with `token`'s lm_head row solved so that greedy decoding of PROMPT emits the
    same tokens as before for `step` steps and then `token` (a margin of 4 logits either way); + those tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = _tok(tiny_model_dir)
    base = HFGenerator(model, tok).generate([PROMPT], Sampling(max_tokens=step))[0][0].token_ids
    ids = encode_prompt(tok, PROMPT) + base
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -(step + 1):]  # after final norm
        top = model.lm_head(hidden).max(-1).values
        target = torch.cat([top[:step] - 4.0, top[step:] + 4.0]).unsqueeze(1)
        model.lm_head.weight[tok.convert_tokens_to_ids(token)] = torch.linalg.lstsq(hidden, target).solution[:, 0]
    return model.state_dict(), base


@pytest.fixture(scope="module")
def planted(tiny_model_dir):
    """(HF generator on the planted model, its state dict, the tokens before the stop, the stop token id)."""
    state, before = _planted_state(tiny_model_dir, "<|endoftext|>", STOP_AT)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.load_state_dict(state)
    tok = _tok(tiny_model_dir)
    assert tok.eos_token == "<|im_end|>"  # the planted token is not eos: only the stop can end the sample there
    return HFGenerator(model, tok), state, before, tok.convert_tokens_to_ids("<|endoftext|>")


def _check_stop(out, before, stop_id):
    assert out.finish_reason == "stop"
    assert out.token_ids == before + [stop_id]  # the stopping token is the last id, as vLLM reports it
    assert "<|endoftext|>" not in out.text and len(out.logprobs) == len(out.token_ids)


def test_transformers_stops_on_the_special_stop_token(planted):
    hf, _, before, stop_id = planted
    assert len(before) == STOP_AT
    out = hf.generate([PROMPT], Sampling(max_tokens=24, stop=("<|endoftext|>",)))[0][0]
    _check_stop(out, before, stop_id)
    free = hf.generate([PROMPT], Sampling(max_tokens=24))[0][0]  # the planted token is really emitted there
    assert free.token_ids[: STOP_AT + 1] == before + [stop_id] and free.finish_reason == "length"


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow  # its own engine on the planted model (~1-2 min on this CPU); weight sync is not what is tested
def test_vllm_stops_on_the_special_stop_token_like_transformers(planted, tmp_path):
    from harness.generation import VLLMSettings

    hf, _, before, stop_id = planted
    hf.model.save_pretrained(tmp_path)
    hf.tokenizer.save_pretrained(tmp_path)
    sampling = Sampling(max_tokens=24, stop=("<|endoftext|>",))
    gen = VLLMGenerator(str(tmp_path), VLLMSettings(dtype="float32", max_model_len=512))
    try:
        v = gen.generate([PROMPT], sampling)[0][0]
        free = gen.generate([PROMPT], Sampling(max_tokens=24))[0][0]
    finally:
        gen.close()
    h = hf.generate([PROMPT], sampling)[0][0]
    _check_stop(v, before, stop_id)
    assert (v.token_ids, v.text, v.finish_reason) == (h.token_ids, h.text, h.finish_reason)
    assert free.token_ids[: STOP_AT + 1] == before + [stop_id]  # the engine really samples the planted model


def _string_stop_case(gen):
    base = gen.generate([PROMPT], Sampling(max_tokens=12))[0][0].text
    stop = base[len(base) // 3: len(base) // 3 + 3]
    cut = gen.generate([PROMPT], Sampling(max_tokens=12, stop=(stop,)))[0][0]
    kept = gen.generate([PROMPT], Sampling(max_tokens=12, stop=(stop,), include_stop=True))[0][0]
    return base, stop, cut, kept


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=[needs_vllm, pytest.mark.vllm])])
def test_plain_stop_strings_cut_the_text_and_include_stop_keeps_them(backend, request):
    gen = request.getfixturevalue(f"{backend}_generator")
    base, stop, cut, kept = _string_stop_case(gen)
    at = base.index(stop)
    assert cut.text == base[:at] and cut.finish_reason == "stop" and len(cut.token_ids) < 12
    assert kept.text == base[: at + len(stop)] and kept.token_ids == cut.token_ids


@needs_vllm
@pytest.mark.vllm
def test_string_stops_agree_between_backends(vllm_generator, hf_generator):
    v, h = _string_stop_case(vllm_generator), _string_stop_case(hf_generator)
    assert v[1] == h[1]
    assert [(c.text, c.token_ids) for c in v[2:]] == [(c.text, c.token_ids) for c in h[2:]]


# ---------------------------------------------------------------------------------------------------------------
# one BOS
# ---------------------------------------------------------------------------------------------------------------

BOS_CHAT = ("{{ bos_token }}{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def bos_tokenizer():
    """A Llama-like word-level tokenizer built here: it adds <s> in front, and its chat template writes <s> too."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<s>", "</s>", "<|user|>", "<|assistant|>", "Problem:", "Solution:", "What", "is", "2+2?"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
                                   additional_special_tokens=["<|user|>", "<|assistant|>"])
    fast.chat_template = BOS_CHAT
    return fast


def test_bos_tokenizer_really_doubles_bos_the_old_way(bos_tokenizer):
    text = render("chat-template", "What is 2+2?", bos_tokenizer)
    assert text.startswith("<s>")
    assert bos_tokenizer(text).input_ids[:2] == [1, 1]  # tokenized with special tokens added: two BOS


@pytest.mark.parametrize("template", ["chat-template", "plain"])
def test_encode_prompt_gives_exactly_one_bos(bos_tokenizer, template):
    ids = encode_prompt(bos_tokenizer, render(template, "What is 2+2?", bos_tokenizer))
    assert ids[0] == 1 and ids.count(1) == 1 and len(ids) > 3


def test_encode_prompt_adds_no_bos_where_the_tokenizer_has_none(tiny_model_dir):
    tok = _tok(tiny_model_dir)
    text = render("qwen25-math-cot", "What is 2+2?")
    assert tok.bos_token_id is None and encode_prompt(tok, text) == tok(text).input_ids


class _FakeLLM:
    """Stands in for vllm.LLM: records what the generator submits."""

    def __init__(self):
        self.inputs, self.params = None, None

    def generate(self, inputs, params, use_tqdm=False):
        self.inputs, self.params = inputs, params
        done = SimpleNamespace(text="", token_ids=[], finish_reason="stop", logprobs=None)
        return [SimpleNamespace(prompt_token_ids=i.get("prompt_token_ids"), outputs=[done]) for i in inputs]


@needs_vllm
def test_vllm_generator_submits_token_ids_with_one_bos_and_stop_ids(bos_tokenizer):
    gen = VLLMGenerator.__new__(VLLMGenerator)  # no engine: only what would be submitted is checked
    gen.tokenizer, gen.llm = bos_tokenizer, _FakeLLM()
    text = render("chat-template", "What is 2+2?", bos_tokenizer)
    out = gen.generate([text], Sampling(stop=("</s>", "Problem:", "<|user|>"), include_stop=True))
    (submitted,) = gen.llm.inputs
    assert submitted == {"prompt_token_ids": encode_prompt(bos_tokenizer, text)}
    assert submitted["prompt_token_ids"].count(1) == 1 and out[0][0].prompt_tokens == len(submitted["prompt_token_ids"])
    (params,) = gen.llm.params
    assert params.stop == ["Problem:"] and sorted(params.stop_token_ids) == [2, 3] and params.include_stop_str_in_output


def test_transformers_prompt_has_one_bos(bos_tokenizer, tiny_model_dir, one_thread):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)  # ids 0-9 exist in its vocab
    text = render("chat-template", "What is 2+2?", bos_tokenizer)
    out = HFGenerator(model, bos_tokenizer).generate([text], Sampling(max_tokens=2))[0][0]
    assert out.prompt_tokens == len(encode_prompt(bos_tokenizer, text)) == len(bos_tokenizer(text).input_ids) - 1
