"""Tiny models made in-process: a byte-level BPE tokenizer and a small Qwen2 causal LM.

No hub is reachable in tests or CI, so the harness builds its own models: a tokenizer trained
with the `tokenizers` library (one token per digit, so arithmetic is learnable), saved as a
transformers fast tokenizer with a Qwen-style chat template, and a standard `Qwen2ForCausalLM`
so vLLM and transformers both load the same directory. Pretraining and caching of the tiny
preset's base model live in `repro/tiny/pretrain.py`; this module only builds and saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyModelConfig:
    vocab_size: int = 384
    hidden_size: int = 96
    intermediate_size: int = 256
    num_hidden_layers: int = 3
    num_attention_heads: int = 3  # head_dim 32: vLLM's CPU attention rejects head_dim 24
    num_key_value_heads: int = 1
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    seed: int = 0


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 384):
    """Byte-level BPE with digits split one per token; returns a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None, additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def init_model(cfg: TinyModelConfig, tokenizer):
    """A randomly initialized Qwen2ForCausalLM sized by `cfg` (deterministic from cfg.seed)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id, torch_dtype="float32",
    )
    return Qwen2ForCausalLM(config).float()


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    """Save in Hugging Face format (safetensors + tokenizer + generation config)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_random_model(out_dir: str | Path, corpus: Iterable[str], cfg: TinyModelConfig = TinyModelConfig()) -> Path:
    """Tokenizer + random-init model saved to `out_dir` (tests use this; it is no base model)."""
    tokenizer = train_tokenizer(corpus, cfg.vocab_size)
    return save_model(init_model(cfg, tokenizer), tokenizer, out_dir)
