"""SFT: supervised fine-tuning on (prompt, response) pairs, the loss on response tokens only.

The baseline every RL method is compared against. Data (config `data`):

    reference  the training set's worked solutions (`problem.meta["solution"]`)
    rft        rejection-sampling fine-tuning: `rft_samples` rollouts of the base model per prompt
               through the harness generator, graded by the harness grader, correct ones kept
               (at most `rft_keep_per_prompt` distinct ones per problem)
    both       the union
plus whatever `extra_examples()` returns (nothing here; LatentRevise's `lr-sft` adds its rescued
trajectories through it). Prompts are rendered with the evaluation template, so training and
evaluation see the same text.

A fraction of problems (`heldout_frac`, at least one) is held out after every data source is in
(`split_heldout`: extra examples of held-out problems are dropped); the token-mean loss on their
reference / RFT responses is logged at the start and the end (phase "sft_heldout", steps 0 and
final) with what it covers (`heldout_problems`, `heldout_sources`, `extra_dropped`). Every
optimizer step logs loss, lr, grad norm and tokens/s (phase "sft"). Trainer state is saved every
`save_every` steps in `ctx.out_dir`, and a restarted run continues from it (RFT samples are cached
there too, so a restart does not sample again).

Multi-GPU: the trainer is `accelerate`-prepared, so data-parallel training is
`accelerate launch --num_processes 8 reproduce.py ...` (DDP; or `--config_file` with an FSDP /
DeepSpeed config). Each process sees the whole example list and takes its shard of every batch.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch

from benchmarks import Problem
from harness.config import check_choices, require
from harness.generation import Sampling, stable_seed
from harness.method import RunContext

from .common import Trainer, TrainSettings, collate, encode_pair, masked_nll, progress_steps, render_prompts
from .registry import register_method


@dataclass
class SFTConfig:
    data: Literal["reference", "rft", "both"] = "reference"
    epochs: int = 3
    max_steps: int | None = None  # cap on optimizer steps (None: `epochs` over the data)
    batch_size: int = 64  # examples per optimizer step
    micro_batch_size: int = 8  # examples per forward/backward (gradient accumulation in between)
    lr: float = 1e-5
    warmup_ratio: float = 0.03  # of the optimizer steps
    min_lr_ratio: float = 0.0  # cosine decay floor, as a fraction of lr
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_len: int = 2048  # prompt + response tokens; longer responses are cut
    response_prefix: str = ""  # put before a reference solution (" " for the tiny "Solution:" template)
    heldout_frac: float = 0.05  # of problems, for the held-out loss
    heldout_max: int = 256  # cap on held-out examples (the loss is evaluated twice)
    rft_samples: int = 8  # rollouts per prompt for `rft`
    rft_temperature: float = 1.0
    rft_top_p: float = 1.0
    rft_max_tokens: int = 1024
    rft_keep_per_prompt: int = 4  # distinct correct rollouts kept per problem
    gradient_checkpointing: bool = True  # GPU only
    save_every: int = 0  # optimizer steps between trainer-state saves (0: never)

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.batch_size % self.micro_batch_size == 0, f"sft: batch_size {self.batch_size} is not a multiple "
                f"of micro_batch_size {self.micro_batch_size}")
        require(0 <= self.heldout_frac < 1, f"sft: heldout_frac must be in [0, 1), got {self.heldout_frac}")
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # the other half of a combined config (lr-sft, resample, hint)


Example = tuple[str, str, "str | list[int]"]  # (problem id, prompt text, response text or token ids)


def split_heldout(prompts: Sequence[Problem], texts: Sequence[str], examples: list[Example],
                  extra: list[tuple[str, str]], cfg: SFTConfig, seed: int) -> tuple[list[Example], list[Example], dict]:
    """(training examples, held-out examples, what the held-out loss covers), split by PROBLEM.

    The split is taken after every data source is in: `extra` pairs (rescued trajectories of lr-sft,
    resample, hint) are matched to their problem by prompt text, and those of held-out problems are
    dropped, so no held-out problem is trained on (issue 15.6: they used to be added after the split
    and 15 held-out problems leaked on tiny). The held-out loss covers the reference / RFT examples of
    the held-out problems (at most `heldout_max`)."""
    ids = sorted({p.id for p in prompts})
    random.Random(f"sft-heldout/{seed}").shuffle(ids)
    held = set(ids[: max(1, round(cfg.heldout_frac * len(ids)))]) if cfg.heldout_frac > 0 else set()
    by_text = {t: p.id for p, t in zip(prompts, texts)}
    extra_ex = [(by_text.get(prompt, "extra"), prompt, resp) for prompt, resp in extra]
    train_ex = [e for e in examples + extra_ex if e[0] not in held]
    held_ex = [e for e in examples if e[0] in held][: cfg.heldout_max]
    coverage = {"heldout_problems": sorted({e[0] for e in held_ex}), "heldout_sources": cfg.data,
                "extra_dropped": sum(e[0] in held for e in extra_ex), "extra_unmatched": sum(e[0] == "extra"
                                                                                           for e in extra_ex)}
    return train_ex, held_ex, coverage


@register_method
class SFT:
    name = "sft"
    config_cls = SFTConfig

    # ---- hooks -----------------------------------------------------------------------------
    def extra_examples(self, base_model: str, prompts: Sequence[Problem], cfg: SFTConfig,
                       ctx: RunContext) -> list[tuple[str, str]]:
        """More (prompt text, response text) training pairs; LatentRevise's lr-sft overrides this."""
        return []

    # ---- data ------------------------------------------------------------------------------
    def reference_examples(self, prompts: Sequence[Problem], texts: Sequence[str], cfg: SFTConfig) -> list[Example]:
        out = []
        for p, text in zip(prompts, texts):
            sol = p.meta.get("solution")
            if not sol:
                raise ValueError(f"sft data='reference': problem {p.id!r} has no meta['solution']")
            out.append((p.id, text, cfg.response_prefix + sol))
        return out

    def rft_examples(self, base_model: str, prompts: Sequence[Problem], texts: Sequence[str],
                     cfg: SFTConfig, ctx: RunContext) -> list[Example]:
        """Correct base-model rollouts, cached in out_dir/rft.jsonl (a restart does not resample)."""
        cache = Path(ctx.out_dir) / "rft.jsonl"
        if cache.is_file():
            return [tuple(json.loads(line)) for line in cache.read_text().splitlines()]
        from harness.prompts import stop_sequences

        gen = ctx.make_generator(base_model)
        try:
            sampling = Sampling(n=cfg.rft_samples, temperature=cfg.rft_temperature, top_p=cfg.rft_top_p,
                                max_tokens=cfg.rft_max_tokens, seed=ctx.seed, stop=stop_sequences(ctx.template))
            outs = gen.generate(list(texts), sampling, seeds=[stable_seed(ctx.seed, "rft", p.id) for p in prompts],
                                progress=ctx.progress)
        finally:
            gen.close()
        verdicts = iter(ctx.grader.grade([(c.text, p.answer) for p, cs in zip(prompts, outs) for c in cs]))
        out: list[Example] = []
        for p, text, cs in zip(prompts, texts, outs):
            seen: set[str] = set()
            for c in cs:
                ok = next(verdicts).correct
                if ok and c.text not in seen and len(seen) < cfg.rft_keep_per_prompt:
                    seen.add(c.text)
                    out.append((p.id, text, c.token_ids))
        cache.write_text("".join(json.dumps(e) + "\n" for e in out))
        n_total = sum(len(cs) for cs in outs)
        ctx.log_step(0, phase="sft_data", rft_samples=n_total, rft_kept=len(out),
                     rft_solved_frac=len({e[0] for e in out}) / max(1, len(prompts)))
        return out

    # ---- training --------------------------------------------------------------------------
    def train(self, base_model: str, prompts: Sequence[Problem], config: SFTConfig, ctx: RunContext) -> str:
        cfg = config
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_model)
        texts = render_prompts(ctx.template, prompts, tokenizer)
        examples: list[Example] = []
        if cfg.data in ("reference", "both"):
            examples += self.reference_examples(prompts, texts, cfg)
        if cfg.data in ("rft", "both"):
            examples += self.rft_examples(base_model, prompts, texts, cfg, ctx)

        extra = self.extra_examples(base_model, prompts, cfg, ctx)
        train_ex, held_ex, coverage = split_heldout(prompts, texts, examples, extra, cfg, ctx.seed)
        if not train_ex:
            raise ValueError("sft: no training examples (RFT found no correct rollout?)")
        encode = lambda e: encode_pair(tokenizer, e[1], e[2], cfg.max_len)  # noqa: E731
        train_enc, held_enc = [encode(e) for e in train_ex], [encode(e) for e in held_ex]

        steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else cfg.max_steps
        trainer = Trainer.create(base_model, TrainSettings(
            lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=round(cfg.warmup_ratio * total),
            min_lr_ratio=cfg.min_lr_ratio, max_grad_norm=cfg.max_grad_norm,
            gradient_checkpointing=cfg.gradient_checkpointing, device=ctx.device, seed=ctx.seed), total)
        progress = trainer.load_state(ctx.out_dir)
        start = progress["next_step"] if progress else 0
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        if start == 0 and held_enc:
            ctx.log_step(0, phase="sft_heldout", loss=self.heldout_loss(trainer, held_enc, cfg, pad),
                         n_examples=len(held_enc), **coverage)
        world, rank = trainer.accelerator.num_processes, trainer.accelerator.process_index
        t_start, done = time.perf_counter(), total
        for step in progress_steps(ctx.progress, "sft", start, total):
            stop = ctx.budget.stop_reason(step, 0, time.perf_counter() - t_start)  # SFT samples nothing here
            if stop:  # harness.method.Budget
                ctx.log_step(step, phase="budget", stopped_by=stop)
                done = step
                break
            t0 = time.perf_counter()
            full = self._batch(train_enc, step, steps_per_epoch, cfg, ctx.seed)
            n_tok = sum(sum(m) for _, m in full)
            batch = full[rank::world]  # this process's share; DDP averages the gradients, hence `* world`
            loss_sum = 0.0
            for i in range(0, len(batch), cfg.micro_batch_size):
                mb = collate(batch[i: i + cfg.micro_batch_size], pad, trainer.device)
                nll, _ = masked_nll(trainer.model, mb)
                trainer.backward(nll * world / max(1, n_tok))  # token mean over the whole optimizer batch
                loss_sum += float(nll.detach())
            lr = trainer.lr
            grad_norm = trainer.step()
            dt = time.perf_counter() - t0
            loss_sum = trainer.sum_over_processes(loss_sum)  # the whole optimizer batch's, like one process
            ctx.log_step(step + 1, phase="sft", loss=loss_sum / max(1, n_tok), lr=lr, grad_norm=grad_norm,
                         tokens_per_s=sum(len(x) for x, _ in batch) / dt, step_s=dt)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                trainer.save_state(ctx.out_dir, step + 1)

        if held_enc:
            ctx.log_step(done, phase="sft_heldout", loss=self.heldout_loss(trainer, held_enc, cfg, pad),
                         n_examples=len(held_enc), **coverage)
        return str(trainer.save_model(Path(ctx.out_dir) / "final"))

    @staticmethod
    def _batch(encoded: list, step: int, steps_per_epoch: int, cfg: SFTConfig, seed: int) -> list:
        """The examples of optimizer step `step`: a fresh seeded shuffle each epoch (resumable)."""
        epoch, k = divmod(step, steps_per_epoch)
        order = list(range(len(encoded)))
        random.Random(f"sft/{seed}/{epoch}").shuffle(order)
        return [encoded[i] for i in order[k * cfg.batch_size: (k + 1) * cfg.batch_size]]

    @staticmethod
    @torch.no_grad()
    def heldout_loss(trainer: Trainer, encoded: list, cfg: SFTConfig, pad: int) -> float:
        trainer.model.eval()
        total, count = 0.0, 0.0
        for i in range(0, len(encoded), cfg.micro_batch_size):
            nll, n = masked_nll(trainer.model, collate(encoded[i: i + cfg.micro_batch_size], pad, trainer.device))
            total, count = total + float(nll), count + float(n)
        trainer.model.train()
        return total / max(1.0, count)
