"""The `paper-rehearsal` preset's base model: a tiny chat-format Qwen2 built offline, cached.

The rehearsal runs the paper preset's pipeline on a CPU, so its model must look like the paper's
where the pipeline can tell: a byte-level BPE tokenizer trained on MATH train text with Qwen's
special tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`) and a chat template, so the
`qwen25-math-cot` template is the same text as its chat template renders for Qwen2.5-Math, and a
context of 4096 positions, enough for every benchmark prompt under that template (the longest,
an OlympiadBench problem, is ~1840 tokens with a 2048-token vocabulary).

A random model would make every GRPO group zero-hit, so GRPO's update (zero advantages are
skipped) and lr-grpo's insertion would never run. So the model half-memorizes the answers of the
preset's training prompts: teacher-forced on `<prompt> The final answer is \\boxed{a}.<eos>`
until the mean NLL of that response falls to `target_nll` nats (a spread of per-prompt success
rates at T=1: some groups mixed, some zero-hit, some all correct). Benchmark problems are never
seen, so evaluation accuracy stays ~0: the rehearsal is a pipeline check, not a result.

Cached under `<cache>/rehearsal-base-<hash>/` (`$LATENTREVISE_CACHE`, as the tiny base model),
keyed by the config, the template and the memorized problems; built atomically (temporary
directory renamed into place): 59 s on the shared 2-core box at load average ~10.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks import Problem
from harness.store import config_hash, to_jsonable
from repro.tiny.model import TinyModelConfig, init_model, save_model, train_tokenizer
from repro.tiny.pretrain import default_cache_dir

INFO_FILE = "rehearsal.json"
RESPONSE = " The final answer is \\boxed{{answer}}."  # the gold statement LatentRevise teacher-forces, too


@dataclass(frozen=True)
class RehearsalConfig:
    # head_dim 32 (vLLM's CPU attention needs a supported head size); 4096 positions (rotary: no parameters)
    model: TinyModelConfig = field(default_factory=lambda: TinyModelConfig(
        vocab_size=2048, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=4096))
    tokenizer_set: str = "math_train"  # the tokenizer is trained on this set's problems and solutions
    tokenizer_docs: int = 1000  # its first N problems
    # measured with these defaults on the paper preset's 8 prompts: mean response NLL 1.40 nats/sequence after 60
    # full-batch steps (where the build stops), < 0.2 after ~80 (fully memorized: every group all-correct)
    lr: float = 1e-2
    target_nll: float = 1.5  # stop when the mean response NLL (nats per sequence) is at most this
    max_steps: int = 300
    seed: int = 0
    threads: int = 1
    version: int = 1  # bump when this builder changes what it makes

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None = None) -> RehearsalConfig:
        overrides = dict(overrides or {})
        if isinstance(overrides.get("model"), dict):
            overrides["model"] = dataclasses.replace(cls().model, **overrides["model"])
        return cls(**overrides)


def cache_key(cfg: RehearsalConfig, template: str, problems: Sequence[Problem]) -> str:
    return config_hash({"config": to_jsonable(cfg), "template": template,
                        "memorize": [[p.id, p.answer] for p in problems]})


def ensure_rehearsal_base(cfg: RehearsalConfig, template: str, problems: Sequence[Problem],
                          cache_dir: str | Path | None = None) -> Path:
    """Directory of the rehearsal model that half-memorizes `problems` under `template`: cached or built now."""
    final = Path(cache_dir or default_cache_dir()) / f"rehearsal-base-{cache_key(cfg, template, problems)}"
    if (final / INFO_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        info = build(cfg, template, problems, tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: its result is equivalent, keep it
            if not (final / INFO_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build(cfg: RehearsalConfig, template: str, problems: Sequence[Problem], out_dir: Path) -> dict[str, Any]:
    """Train the tokenizer, half-memorize the answers, save in Hugging Face format; returns the build record."""
    from benchmarks import load_benchmark
    from harness.prompts import render

    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        texts = [f"{p.problem}\n{p.meta.get('solution', '')}" for p in load_benchmark(cfg.tokenizer_set)]
        tokenizer = train_tokenizer(texts[: cfg.tokenizer_docs], cfg.model.vocab_size)
        pairs = [(tokenizer(render(template, p.problem, tokenizer), add_special_tokens=False).input_ids,
                  tokenizer(RESPONSE.replace("{answer}", p.answer), add_special_tokens=False).input_ids
                  + [tokenizer.eos_token_id]) for p in problems]
        model = init_model(dataclasses.replace(cfg.model, seed=cfg.seed), tokenizer)
        curve = _memorize(model, pairs, tokenizer.pad_token_id, cfg)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    save_model(model, tokenizer, out_dir)
    return {"config": to_jsonable(cfg), "template": template, "memorized": [p.id for p in problems],
            "n_params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
            "steps": len(curve), "nll_curve": curve[::10] + curve[-1:], "final_nll": curve[-1],
            "wall_s": round(time.perf_counter() - start, 2), "torch": torch.__version__}


def _memorize(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, cfg: RehearsalConfig) -> list[float]:
    """Full-batch AdamW on the response tokens only (logits at those positions only) until the mean
    per-sequence NLL is <= target_nll; returns that NLL per step."""
    width = max(len(x) + len(y) for x, y in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    targets = torch.full_like(ids, -100)  # targets[t] is the token at t + 1
    for i, (x, y) in enumerate(pairs):
        ids[i, : len(x) + len(y)] = torch.tensor(x + y)
        mask[i, : len(x) + len(y)] = 1
        targets[i, len(x) - 1: len(x) + len(y) - 1] = torch.tensor(y)
    keep = targets != -100
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    model.train()
    curve: list[float] = []
    for _ in range(cfg.max_steps):
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[keep]
        nll = torch.nn.functional.cross_entropy(model.lm_head(hidden), targets[keep], reduction="sum")
        curve.append(round(float(nll.detach()) / len(pairs), 4))
        if curve[-1] <= cfg.target_nll:
            break
        opt.zero_grad(set_to_none=True)
        (nll / keep.sum()).backward()
        opt.step()
    return curve
