"""Pretrain the tiny preset's base model on the synthetic arithmetic corpus, and cache it.

The tiny preset needs a real base model - one that solves some problems and not others - and no
hub is reachable, so the harness makes one: a byte-level BPE tokenizer (one token per digit)
and a ~0.36M-parameter Qwen2 trained with plain torch on `benchmarks.arith.pretrain_corpus`
documents, which have exactly the evaluation format (`Problem: ...\\nSolution: ...<|im_end|>`); a
share `reflect_frac` of them slip once and correct themselves ("Wait, let me check: ...").

The budget is a fixed number of steps, so on one machine the model is a function of the config
alone (same seed, same weights; 1 and 2 threads gave byte-identical weights on an AMD EPYC box).
Another CPU may not: its float kernels differ, and the same config built a different model there
(final loss 0.329 on the earlier session's machine, 0.377 on the EPYC one), so tiny-preset figures
are per machine (README). The result is saved in Hugging
Face format under `<cache>/tiny-base-<config hash>/` (atomic: a temporary directory renamed
into place) with `pretrain.json` beside the weights; later calls reuse it in well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.store import config_hash, to_jsonable
from repro.tiny.model import TinyModelConfig, init_model, save_model, train_tokenizer

CACHE_ENV = "LATENTREVISE_CACHE"
INFO_FILE = "pretrain.json"


@dataclass(frozen=True)
class PretrainConfig:
    # model.seed is replaced by `seed`; 3 KV heads (full multi-head attention) instead of the
    # random test model's 1: copying operands from the prompt is most of what the model must learn
    model: TinyModelConfig = field(default_factory=lambda: TinyModelConfig(num_key_value_heads=3))
    corpus_docs: int = 60_000  # documents drawn from the arith corpus split (repeats allowed)
    # tier -> relative weight: the medium tier (2-digit chains) is where the base model's skill grows
    corpus_mix: tuple[tuple[str, float], ...] = (("easy", 1.0), ("medium", 2.0), ("hard", 1.0))
    # share of reflection documents (a slip, "Wait, let me check: ...", the step redone right; benchmarks/arith.py):
    # the base model owns a rarely sampled self-correction behaviour that revision can bring out (issue 13.6)
    reflect_frac: float = 0.05
    tokenizer_docs: int = 5_000  # first documents of the corpus that the BPE tokenizer is trained on
    steps: int = 2500  # the budget: fixed, so the result does not depend on machine speed (~180 s, idle 2 cores)
    batch_size: int = 32  # documents per step, right-padded to the longest in the batch
    lr: float = 4e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2  # torch intra-op threads: 2 is 43% faster than 1 on an idle 2-core box, 3x slower on a busy one
    data_version: int = 6  # bump when benchmarks/arith.py changes the documents: invalidates caches

    def __post_init__(self) -> None:
        if not 0.0 <= self.reflect_frac <= 1.0:
            raise ValueError(f"PretrainConfig.reflect_frac must be in [0, 1], got {self.reflect_frac}")

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None = None) -> PretrainConfig:
        """A config from a preset's `tiny_model` dict; `model` may itself be a dict of overrides."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown PretrainConfig field(s): {', '.join(sorted(unknown))}")
        if isinstance(overrides.get("model"), dict):
            overrides["model"] = TinyModelConfig(**overrides["model"])
        for key in ("corpus_mix", "betas"):
            if key in overrides:
                value = overrides[key]
                overrides[key] = tuple(value.items()) if isinstance(value, dict) else tuple(map(
                    lambda v: tuple(v) if isinstance(v, list) else v, value))
        return cls(**overrides)

    def hash(self) -> str:
        """Cache key. `threads` is left out: it changes float summation order only, so a model
        pretrained with 1 thread on a busy machine is the same model for every purpose here."""
        return config_hash({k: v for k, v in to_jsonable(self).items() if k != "threads"})


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "latentrevise")


def model_dir(cfg: PretrainConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"tiny-base-{cfg.hash()}"


def pretrain_info(path: str | os.PathLike) -> dict[str, Any]:
    """The `pretrain.json` written beside a pretrained model (config, wall time, loss, tokens/s)."""
    return json.loads((Path(path) / INFO_FILE).read_text())


def ensure_tiny_base(cfg: PretrainConfig = PretrainConfig(), cache_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> Path:
    """Directory of the pretrained tiny base model for `cfg`: cached if present, else trained now."""
    final = model_dir(cfg, cache_dir)
    if (final / INFO_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        info = _train(cfg, tmp, progress)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: its result is equivalent, keep it
            if not (final / INFO_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _batches(token_ids: list[list[int]], cfg: PretrainConfig, pad_id: int):
    """Deterministic epochs of shuffled documents, right-padded; padding is masked out of the loss.

    Batches are NOT bucketed by length: length tracks the problem kind here, and batches of one
    kind made training at lr 4e-3 oscillate (loss rose at the end) and the model never learned
    1-digit addition. Random batches cost ~40% padding and learn.
    """
    rng = random.Random(cfg.seed)
    order: list[int] = []
    while True:
        if len(order) < cfg.batch_size:
            epoch = list(range(len(token_ids)))
            rng.shuffle(epoch)
            order += epoch
        docs, order = [token_ids[i] for i in order[: cfg.batch_size]], order[cfg.batch_size:]
        width = max(map(len, docs))
        ids = torch.full((len(docs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(docs), width), dtype=torch.long)
        for row, doc in enumerate(docs):
            ids[row, : len(doc)] = torch.tensor(doc)
            mask[row, : len(doc)] = 1
        yield ids, mask, ids.masked_fill(mask == 0, -100)


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _train(cfg: PretrainConfig, out_dir: Path, progress: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from benchmarks.arith import REFLECT_PHRASE, pretrain_corpus

    torch.set_num_threads(cfg.threads)
    start, cpu_start = time.perf_counter(), time.process_time()  # CPU time too: the machine may be shared
    docs = pretrain_corpus(cfg.corpus_docs, seed=cfg.seed, mix=cfg.corpus_mix, reflect_frac=cfg.reflect_frac)
    tokenizer = train_tokenizer(docs[: cfg.tokenizer_docs], cfg.model.vocab_size)
    token_ids = tokenizer(docs, add_special_tokens=False).input_ids
    longest = max(map(len, token_ids))
    if longest > cfg.model.max_position_embeddings:
        raise ValueError(f"a corpus document has {longest} tokens > max_position_embeddings "
                         f"{cfg.model.max_position_embeddings}")
    model = init_model(dataclasses.replace(cfg.model, seed=cfg.seed), tokenizer)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    batches = _batches(token_ids, cfg, tokenizer.pad_token_id)
    setup_s = time.perf_counter() - start
    tokens, losses = 0, []
    train_start = time.perf_counter()
    columns = (TextColumn("pretrain tiny base"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("pretrain", total=cfg.steps, loss=float("nan"))
        for step in range(cfg.steps):
            ids, mask, labels = next(batches)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            tokens += int(mask.sum())
            losses.append(loss.item())
            bar.update(task, advance=1, loss=sum(losses[-20:]) / len(losses[-20:]))
    train_s = time.perf_counter() - train_start
    model.eval()
    save_model(model, tokenizer, out_dir)
    tail = losses[-max(1, min(50, len(losses))):]
    return {
        "config": to_jsonable(cfg), "config_hash": cfg.hash(),
        "n_params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
        "corpus_docs": len(docs), "longest_doc_tokens": longest,
        "steps": cfg.steps, "tokens": tokens, "final_loss": sum(tail) / len(tail), "first_loss": losses[0],
        "loss_curve": [round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 4) for i in range(0, len(losses), 50)],
        "setup_s": round(setup_s, 2), "train_s": round(train_s, 2),
        "wall_s": round(time.perf_counter() - start, 2), "cpu_s": round(time.process_time() - cpu_start, 2),
        "reflect_docs": sum(REFLECT_PHRASE in d for d in docs), "step_s": round(train_s / cfg.steps, 4),
        "tokens_per_s": round(tokens / train_s, 1), "torch": torch.__version__, "threads": cfg.threads,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
