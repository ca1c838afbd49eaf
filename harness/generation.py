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

Multi-GPU: `VLLMGenerator` forwards vLLM's own `tensor_parallel_size` and `data_parallel_size`;
there is no scheduler of ours.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
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

        self.model_path = model
        self.llm = LLM(
            model=model, dtype=settings.dtype, seed=seed, enable_prompt_embeds=True,
            tensor_parallel_size=settings.tensor_parallel_size,
            data_parallel_size=settings.data_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len, enforce_eager=settings.enforce_eager,
            enable_chunked_prefill=(settings.enable_chunked_prefill if settings.enable_chunked_prefill is not None
                                    else (None if torch.cuda.is_available() else False)),
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[PromptInput], sampling: Sampling,
                 seeds: Sequence[int] | None = None, progress: bool = False) -> list[list[Completion]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        inputs = []
        for p in prompts:
            if isinstance(p, str):
                inputs.append({"prompt": p})
            elif isinstance(p, torch.Tensor):
                inputs.append({"prompt_embeds": p.detach().to("cpu", torch.float32)})
            else:
                inputs.append({"prompt_token_ids": list(p)})
        params = [
            SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                           max_tokens=sampling.max_tokens, seed=s, stop=list(sampling.stop) or None,
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
        """
        from safetensors.torch import save

        # one safetensors blob: plain bytes cross both process hops (client -> engine core ->
        # worker); tensors do not, the core receives them as memoryviews that cannot be re-pickled
        tensors, seen = {}, set()
        for name, t in named_tensors:
            if t.data_ptr() in seen:  # tied weights (lm_head = embed_tokens): vLLM loads the first name
                continue
            seen.add(t.data_ptr())
            tensors[name] = t.detach().to("cpu").contiguous()
        blob = save(tensors)
        self.llm.collective_rpc(_reload_weights_from_blob, args=(blob,))
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown:
            shutdown()
        del self.llm


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

    def _generate_one(self, prompt: PromptInput, sampling: Sampling, seed: int) -> list[Completion]:
        embed = self.model.get_input_embeddings()
        if isinstance(prompt, torch.Tensor):
            prompt_embeds = prompt.to(self.device, embed.weight.dtype)
        else:
            ids = self.tokenizer(prompt, add_special_tokens=False).input_ids if isinstance(prompt, str) else prompt
            prompt_embeds = embed(torch.tensor(ids, device=self.device))
        n = sampling.n
        max_new = self._max_new_tokens(prompt_embeds.shape[0], sampling.max_tokens)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        eos = self.tokenizer.eos_token_id
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
                if t == eos:
                    done[i], reasons[i] = True, "stop"
                    continue
                tokens[i].append(t)
                logps[i].append(float(logprobs[i, t]))
                if sampling.stop and any(s in self.tokenizer.decode(tokens[i][-16:]) for s in sampling.stop):
                    done[i], reasons[i] = True, "stop"
            if all(done):
                break
            out = self.model(input_ids=nxt.unsqueeze(1), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1, :]
        completions = []
        for i in range(n):
            text = self.tokenizer.decode(tokens[i], skip_special_tokens=True)
            for s in sampling.stop:  # vLLM drops the stop string from the text; so do we
                if s in text:
                    text = text[: text.index(s)]
            completions.append(Completion(text, tokens[i], reasons[i], prompt_embeds.shape[0], logps[i]))
        return completions

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
        self.model.load_state_dict(dict(named_tensors), strict=False)

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

    def __call__(self, model: str) -> Generator:
        if self.backend == "vllm":
            return VLLMGenerator(model, self.settings, seed=self.seed)
        return HFGenerator(model, None, device=self.device, max_model_len=self.settings.max_model_len)

