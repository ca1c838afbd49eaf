"""GRPO: group-relative policy optimization with rollouts from a colocated vLLM engine.

One step (a "rollout batch"):

    rollout    `prompts_per_step` prompts x `group_size` samples through the harness generator
    grading    reward 1.0 if the harness grader says correct, else 0.0
    augment    `augment_groups(step, groups, ctx)` - identity here; LatentRevise's lr-grpo inserts
               rescued trajectories into zero-hit groups (marked `off_policy`, with a `weight`)
    advantage  per group: "grpo" (r - mean) / (std + eps) with sequence-mean loss [DeepSeekMath];
               "drgrpo" r - mean, token sums divided by the constant max_tokens [Dr. GRPO];
               "dapo" (r - mean) / (std + eps), token-mean over the whole batch, clip-higher [DAPO]
    update     old log-probs from the trainer model for every sample (sampler log-probs are not used,
               so off-policy insertions need nothing special), then `inner_updates` optimizer steps on
               mini-batches of the clipped surrogate (+ optional k3 KL to the base model)
    sync       the new weights go into the running engine (`generator.update_weights`); the engine is
               made once per run and never restarted

Samples with zero advantage contribute exactly nothing to the surrogate, so without a KL term they
are skipped in the forward/backward (they still count in every normalizer: the loss is identical).

Each step logs (phase "grpo") reward mean, zero-hit / all-correct fractions and ids, response length,
clip fraction, loss, grad norm, lr and timings of rollout / grading / update / sync. Rollouts of
zero-hit groups (`store_rollouts`) go to the `rollouts` table for LatentRevise. Trainer state is
saved every `save_every` steps in `ctx.out_dir`; a restarted run loads it, pushes the weights into
the fresh engine and continues at the next step (same prompts, same sampling seeds).

Multi-GPU (not exercised here: no GPU on the development machine): the trainer is prepared by
`accelerate`, every process takes its shard of each step's prompts and runs its own colocated engine:
    accelerate launch --multi_gpu --num_processes 8 reproduce.py --preset paper --method grpo
DDP averages the gradients; FSDP / DeepSpeed ZeRO via `accelerate launch --config_file <yaml>`. vLLM
must then run per rank (`VLLMSettings` with vLLM's `external_launcher` executor); logged step
statistics are the main process's shard.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch

from benchmarks import Problem
from harness.config import check_choices, require
from harness.generation import Sampling, stable_seed
from harness.method import RunContext, Timer

from .common import Trainer, TrainSettings, collate, encode_pair, progress_steps, render_prompts, token_logprobs
from .registry import register_method

VARIANTS = ("grpo", "drgrpo", "dapo")


@dataclass
class GRPOConfig:
    steps: int = 100  # rollout batches
    prompts_per_step: int = 64
    group_size: int = 8  # rollouts per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024  # per rollout; also Dr. GRPO's loss normalizer
    lr: float = 1e-6
    warmup_steps: int = 0  # optimizer steps
    min_lr_ratio: float = 1.0  # 1.0: constant lr after warm-up
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    advantage: Literal["grpo", "drgrpo", "dapo"] = "grpo"
    adv_eps: float = 1e-6
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float | None = None  # None: clip_low, or 0.28 under "dapo" (clip-higher)
    kl_coef: float = 0.0  # k3 KL to the base model; 0 = no reference model
    inner_updates: int = 1  # optimizer steps per rollout batch, each on 1/inner_updates of it
    micro_batch_size: int = 16  # sequences per forward/backward
    store_rollouts: Literal["zero_hit", "all", "none"] = "zero_hit"
    save_every: int = 10  # steps between trainer-state saves (0: never)
    gradient_checkpointing: bool = True  # GPU only

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.inner_updates >= 1 and self.group_size >= 1 and self.prompts_per_step >= 1,
                "grpo: inner_updates, group_size and prompts_per_step must be >= 1")
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # the other half of a combined config (lr-grpo)

    def clip_range(self) -> tuple[float, float]:
        high = self.clip_high if self.clip_high is not None else (0.28 if self.advantage == "dapo" else self.clip_low)
        return self.clip_low, high


@dataclass
class Sample:
    text: str
    token_ids: list[int] | None  # None: tokenized from `text` (+ eos) by the trainer
    reward: float = 0.0
    finish_reason: str = "stop"  # "length": no eos appended, the sample was cut
    weight: float = 1.0  # multiplies the sample's loss
    off_policy: bool = False  # not drawn from the current policy (e.g. a LatentRevise rescue)
    source: str = "policy"
    advantage: float = 0.0


@dataclass
class Group:
    problem: Problem
    prompt: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def rewards(self) -> list[float]:
        return [s.reward for s in self.samples]


def group_advantages(rewards: torch.Tensor, variant: str, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages; a group whose rewards are all equal gets zeros."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown advantage variant {variant!r}; known: {', '.join(VARIANTS)}")
    rewards = rewards.float()
    centred = rewards - rewards.mean()
    if variant == "drgrpo" or len(rewards) < 2:
        return centred
    return centred / (rewards.std() + eps)  # unbiased std, as DeepSeekMath / TRL


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                variant: str, clip: tuple[float, float], weights: torch.Tensor | None = None,
                ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0, n_seqs: int | None = None,
                n_tokens: float | None = None, max_tokens: int | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate over [B, T] token log-probs, aggregated per `variant`.

    `n_seqs` / `n_tokens` are the mini-batch's totals when this call sees one micro-batch of it
    (defaults: this batch), so gradient accumulation reproduces the whole-batch loss exactly."""
    mask = mask.float()
    adv = advantages.float().unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - clip[0], 1 + clip[1])
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    if weights is not None:
        per_token = per_token * weights.float().unsqueeze(1)
    kl = torch.zeros((), device=logp.device)
    if ref_logp is not None and kl_coef:
        log_r = ref_logp - logp
        k3 = torch.exp(log_r) - log_r - 1  # Schulman's k3, unbiased and >= 0
        per_token = per_token + kl_coef * k3
        kl = (k3 * mask).sum() / mask.sum().clamp(min=1)
    n_seqs = n_seqs or logp.shape[0]
    if variant == "grpo":  # mean over each sequence's tokens, then over sequences
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / n_seqs
    elif variant == "drgrpo":  # no length normalization: a constant divisor
        if not max_tokens:
            raise ValueError("drgrpo needs max_tokens")
        loss = (per_token * mask).sum() / (max_tokens * n_seqs)
    elif variant == "dapo":  # token-level: every token of the batch weighs the same
        loss = (per_token * mask).sum() / (n_tokens if n_tokens is not None else mask.sum().clamp(min=1))
    else:
        raise ValueError(f"unknown advantage variant {variant!r}; known: {', '.join(VARIANTS)}")
    was_clipped = ((ratio < 1 - clip[0]) & (adv < 0)) | ((ratio > 1 + clip[1]) & (adv > 0))
    stats = {"clip_tokens": float((was_clipped.float() * mask).sum()), "tokens": float(mask.sum()), "kl": float(kl)}
    return loss, stats


@register_method
class GRPO:
    name = "grpo"
    config_cls = GRPOConfig

    # set during train() so that subclasses' hooks can use them
    trainer: Trainer
    generator: object
    cfg: GRPOConfig

    def augment_groups(self, step: int, groups: list[Group], ctx: RunContext) -> list[Group]:
        """Change groups after grading, before advantages (LatentRevise's lr-grpo overrides this)."""
        return groups

    def train(self, base_model: str, prompts: Sequence[Problem], config: GRPOConfig, ctx: RunContext) -> str:
        cfg = self.cfg = config
        total_updates = cfg.steps * cfg.inner_updates
        self.trainer = trainer = Trainer.create(base_model, TrainSettings(
            lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
            max_grad_norm=cfg.max_grad_norm, gradient_checkpointing=cfg.gradient_checkpointing,
            device=ctx.device, seed=ctx.seed), total_updates)
        tok = trainer.tokenizer
        ref = None
        if cfg.kl_coef:
            from transformers import AutoModelForCausalLM

            ref = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32).to(trainer.device).eval()
        progress = trainer.load_state(ctx.out_dir) or {"next_step": 0, "generated_tokens": 0}
        start, generated = progress["next_step"], progress["generated_tokens"]
        from harness.prompts import stop_sequences

        self.generator = gen = ctx.make_generator(base_model)
        try:
            if start:  # the fresh engine holds the base weights
                gen.update_weights(trainer.named_weights())
            texts = dict(zip((p.id for p in prompts), render_prompts(ctx.template, prompts, tok)))
            sampling = Sampling(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_tokens, seed=ctx.seed, stop=stop_sequences(ctx.template))
            t_start = time.perf_counter()
            for step in progress_steps(ctx.progress, "grpo", start, cfg.steps):
                batch = self._prompts_for(step, prompts, cfg, ctx.seed)
                batch = batch[trainer.accelerator.process_index::trainer.accelerator.num_processes]
                worst = len(batch) * cfg.group_size * cfg.max_tokens  # every sample to max_tokens
                stop = ctx.budget.stop_reason(step, generated, time.perf_counter() - t_start, worst)
                if stop:  # harness.method.Budget: the next step could exceed a bound
                    ctx.log_step(step, phase="budget", stopped_by=stop, generated_tokens=generated)
                    break
                stats = self._step(step, batch, texts, sampling, ref, ctx)
                generated += stats.pop("generated_tokens")
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                    trainer.save_state(ctx.out_dir, step + 1, {"generated_tokens": generated})
        finally:
            gen.close()
        return str(trainer.save_model(Path(ctx.out_dir) / "final"))

    # ------------------------------------------------------------------------------------------
    def _step(self, step: int, batch: list[Problem], texts: dict[str, str], sampling: Sampling, ref,
              ctx: RunContext) -> dict:
        cfg, trainer, gen = self.cfg, self.trainer, self.generator
        t0 = time.perf_counter()
        with Timer() as t_roll:
            outs = gen.generate([texts[p.id] for p in batch], sampling,
                                seeds=[stable_seed(ctx.seed, "grpo", step, p.id) for p in batch])
        with Timer() as t_grade:
            verdicts = ctx.grader.grade([(c.text, p.answer) for p, cs in zip(batch, outs) for c in cs])
        it = iter(verdicts)
        groups = [Group(p, texts[p.id], [Sample(c.text, list(c.token_ids), float(next(it).correct), c.finish_reason)
                                         for c in cs]) for p, cs in zip(batch, outs)]
        zero_hit = [g.problem.id for g in groups if not any(g.rewards)]
        all_correct = [g.problem.id for g in groups if all(g.rewards)]
        rewards = [r for g in groups for r in g.rewards]
        lengths = [len(s.token_ids) for g in groups for s in g.samples]
        with Timer() as t_aug:
            groups = self.augment_groups(step, groups, ctx)
        for g in groups:
            adv = group_advantages(torch.tensor(g.rewards), cfg.advantage, cfg.adv_eps)
            for s, a in zip(g.samples, adv.tolist()):
                s.advantage = a
        self._store_rollouts(step, groups, set(zero_hit), ctx)
        with Timer() as t_upd:
            upd = self._update(step, groups, ref)
        with Timer() as t_sync:
            gen.update_weights(trainer.named_weights())
        total = time.perf_counter() - t0
        ctx.log_step(
            step + 1, phase="grpo", loss=upd["loss"], lr=upd["lr"], grad_norm=upd["grad_norm"],
            tokens_per_s=upd["tokens"] / max(t_upd.s, 1e-9), reward_mean=sum(rewards) / len(rewards),
            zero_hit_frac=len(zero_hit) / len(groups), all_correct_frac=len(all_correct) / len(groups),
            zero_hit_ids=zero_hit, all_correct_ids=all_correct, response_len_mean=sum(lengths) / len(lengths),
            clip_frac=upd["clip_frac"], kl=upd["kl"], trained_samples=upd["trained"],
            off_policy_samples=sum(s.off_policy for g in groups for s in g.samples),
            timings={"rollout": t_roll.s, "grading": t_grade.s, "augment": t_aug.s, "update": t_upd.s,
                     "old_logprobs": upd["old_logprobs_s"], "sync": t_sync.s, "total": total},
        )
        return {"generated_tokens": sum(lengths)}

    def _update(self, step: int, groups: list[Group], ref) -> dict:
        """Old log-probs for all samples, then `inner_updates` optimizer steps on mini-batches."""
        cfg, trainer = self.cfg, self.trainer
        tok = trainer.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        items = []  # (encoded, advantage, weight)
        for g in groups:
            for s in g.samples:
                response = s.token_ids if s.token_ids is not None else s.text
                enc = encode_pair(tok, g.prompt, response, add_eos=s.finish_reason != "length")
                items.append((enc, s.advantage, s.weight))
        order = list(range(len(items)))
        random.Random(f"grpo-mb/{step}").shuffle(order)
        minis = [order[k::cfg.inner_updates] for k in range(cfg.inner_updates)]
        # zero-advantage samples add exactly 0 to the surrogate (without KL): no forward for them
        # (single process only: DDP needs the same number of backward passes on every rank)
        skip_ok = not cfg.kl_coef and trainer.accelerator.num_processes == 1
        active = [i for i in order if items[i][1] != 0.0 or not skip_ok]
        t0 = time.perf_counter()
        old, ref_lp = {}, {}
        with torch.no_grad():
            trainer.model.eval()
            for chunk in _chunks(active, cfg.micro_batch_size):
                b = collate([items[i][0] for i in chunk], pad, trainer.device)
                lp = token_logprobs(trainer.model, b, cfg.temperature)
                rp = token_logprobs(ref, b, cfg.temperature) if ref is not None else None
                for j, i in enumerate(chunk):
                    n = len(items[i][0][0]) - 1  # drop the padding: rows are re-batched differently below
                    old[i] = lp[j, :n]
                    if rp is not None:
                        ref_lp[i] = rp[j, :n]
            trainer.model.train()
        old_s = time.perf_counter() - t0
        loss_sum, norms, lr, clip_tok, tok_n, kls = 0.0, [], trainer.lr, 0.0, 0.0, []
        for mini in minis:
            n_seqs = len(mini)
            n_tokens = float(sum(sum(items[i][0][1]) for i in mini))
            todo = [i for i in mini if i in old]
            for chunk in _chunks(todo, cfg.micro_batch_size):
                b = collate([items[i][0] for i in chunk], pad, trainer.device)
                width = b["input_ids"].shape[1] - 1
                logp = token_logprobs(trainer.model, b, cfg.temperature)
                loss, st = policy_loss(
                    logp, _stack([old[i] for i in chunk], width), torch.tensor([items[i][1] for i in chunk]),
                    b["loss_mask"][:, 1:], variant=cfg.advantage, clip=cfg.clip_range(),
                    weights=torch.tensor([items[i][2] for i in chunk]),
                    ref_logp=_stack([ref_lp[i] for i in chunk], width) if ref is not None else None,
                    kl_coef=cfg.kl_coef, n_seqs=n_seqs, n_tokens=n_tokens, max_tokens=cfg.max_tokens)
                trainer.backward(loss)
                loss_sum += float(loss.detach())
                clip_tok, tok_n = clip_tok + st["clip_tokens"], tok_n + st["tokens"]
                kls.append(st["kl"])
            norms.append(trainer.step())
        return {"loss": loss_sum / len(minis), "grad_norm": sum(norms) / len(norms), "lr": lr,
                "clip_frac": clip_tok / tok_n if tok_n else 0.0, "kl": sum(kls) / len(kls) if kls else 0.0,
                "trained": len(active), "tokens": tok_n, "old_logprobs_s": old_s}

    def _store_rollouts(self, step: int, groups: list[Group], zero_hit: set[str], ctx: RunContext) -> None:
        if self.cfg.store_rollouts == "none" or not self.trainer.accelerator.is_main_process:
            return
        keep = [g for g in groups if self.cfg.store_rollouts == "all" or g.problem.id in zero_hit]
        if keep:
            ctx.log_rollouts(
                {"step": step + 1, "problem_id": g.problem.id, "sample_index": k, "source": s.source,
                 "prompt": g.prompt, "completion": s.text, "gold": g.problem.answer, "reward": s.reward,
                 "zero_hit_group": g.problem.id in zero_hit}
                for g in keep for k, s in enumerate(g.samples))

    @staticmethod
    def _prompts_for(step: int, prompts: Sequence[Problem], cfg: GRPOConfig, seed: int) -> list[Problem]:
        """Step `step`'s prompts: consecutive slices of a seeded shuffle, reshuffled every epoch."""
        n, orders = len(prompts), {}
        out = []
        for k in range(step * cfg.prompts_per_step, (step + 1) * cfg.prompts_per_step):
            epoch, i = divmod(k, n)
            if epoch not in orders:
                orders[epoch] = list(range(n))
                random.Random(f"grpo/{seed}/{epoch}").shuffle(orders[epoch])
            out.append(prompts[orders[epoch][i]])
        return out


def _chunks(xs: list, size: int):
    for i in range(0, len(xs), size):
        yield xs[i: i + size]


def _stack(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """Per-sample log-prob rows (different lengths) -> [B, width], zero-padded on the right."""
    out = torch.zeros(len(rows), width, device=rows[0].device)
    for j, r in enumerate(rows):
        out[j, : r.shape[0]] = r
    return out
