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
    sync       the new weights go into the running engine (`generator.update_weights`, every name, tied
               aliases included, in the engine's dtype, in buckets); the engine is made once per run
    check      the engine's log-probs of `sync_check_samples` of the step's sequences vs the trainer's:
               logged as sync_gap_mean / sync_gap_max (nats/token); past the tolerance (by engine dtype,
               harness.weightsync) the run stops with SyncError instead of training on stale samples

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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Sequence

import torch

from benchmarks import Problem
from harness.config import check_choices, require
from harness.generation import Sampling, stable_seed
from harness.method import RunContext, Timer
from harness.weightsync import Gap, can_score, default_tolerance, engine_dtype, sampler_gap

from .common import Trainer, TrainSettings, collate, encode_pair, progress_steps, render_prompts, token_logprobs
from .recipes import apply_recipe
from .registry import register_method

VARIANTS = ("grpo", "drgrpo", "dapo")


@dataclass
class GRPOConfig:
    # a named recipe (methods/recipes.py) sets the structural fields below that still hold their defaults
    recipe: Literal["none", "dr-grpo", "simplerl-zoo", "dapo", "trl-default"] = "none"
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
    inner_updates: int = 1  # optimizer steps per pass over the rollout batch, each on 1/inner_updates of it
    epochs: int = 1  # passes over each rollout batch (oat num_ppo_epochs, verl ppo_epochs, TRL num_iterations)
    entropy_coef: float = 0.0  # loss -= entropy_coef x token entropy, aggregated like the loss (verl dp_actor)
    truncated_reward: Literal["keep", "zero"] = "keep"  # "zero": a response cut without eos gets reward 0
    dynamic_sampling: bool = False  # DAPO: drop groups whose correctness is all equal, refill with more prompts
    max_gen_batches: int = 10  # dynamic sampling: generation batches per step at most
    overlong_buffer_frac: float = 0.0  # DAPO shaping: last frac x max_tokens tokens cost up to the penalty; 0 off
    overlong_penalty: float = 1.0
    # truncated importance sampling against the sampler's own log-probs: "token_truncate" (oat: per-token
    # ratio capped at tis_cap), "sequence_mask" (TRL: sequence ratio, zero weight past tis_cap), "off"
    tis_mode: Literal["off", "token_truncate", "sequence_mask"] = "token_truncate"
    tis_cap: float = 2.0  # oat's tis_c default (oat/algorithms/ppo.py)
    micro_batch_size: int = 16  # sequences per forward/backward
    store_rollouts: Literal["zero_hit", "all", "none"] = "zero_hit"
    save_every: int = 10  # steps between trainer-state saves (0: never)
    gradient_checkpointing: bool = True  # GPU only
    # after every sync: engine vs trainer log-probs of this many of the step's sequences (0: off)
    sync_check_samples: int = 2
    # (mean, max) nats/token the gap may reach; None: by engine dtype (harness.weightsync.TOLERANCE)
    sync_tolerance: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check_choices(self)
        apply_recipe(self, {f.name: f.default for f in fields(GRPOConfig)})
        require(self.inner_updates >= 1 and self.group_size >= 1 and self.prompts_per_step >= 1,
                "grpo: inner_updates, group_size and prompts_per_step must be >= 1")
        require(self.epochs >= 1 and self.max_gen_batches >= 1, "grpo: epochs and max_gen_batches must be >= 1")
        require(0.0 <= self.overlong_buffer_frac < 1.0, "grpo: overlong_buffer_frac must be in [0, 1)")
        require(self.tis_cap > 0 and self.entropy_coef >= 0, "grpo: tis_cap must be > 0, entropy_coef >= 0")
        require(self.sync_check_samples >= 0, "grpo: sync_check_samples must be >= 0")
        if self.sync_tolerance is not None:
            self.sync_tolerance = tuple(self.sync_tolerance)  # JSON configs give a list
            require(len(self.sync_tolerance) == 2 and min(self.sync_tolerance) > 0,
                    "grpo: sync_tolerance must be (mean, max) nats/token, both > 0")
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
    correct: bool | None = None  # the grader's verdict (rewards may be shaped); None: use reward > 0
    sampler_logprobs: list[float] | None = None  # per response token, from the engine (TIS); None: ratio 1


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
                n_tokens: float | None = None, max_tokens: int | None = None, tis: torch.Tensor | None = None,
                entropy: torch.Tensor | None = None, entropy_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate over [B, T] token log-probs, aggregated per `variant`.

    `tis` [B, T] (no gradient) multiplies the clipped policy term, as oat's `pg_loss_max *= tis` and
    TRL's `per_token_loss * importance_sampling_ratio`; `entropy` [B, T] enters as `- entropy_coef x
    entropy` (verl dp_actor: `pg_loss - entropy_loss * entropy_coeff`). `n_seqs` / `n_tokens` are the
    mini-batch's totals when this call sees one micro-batch of it (defaults: this batch), so gradient
    accumulation reproduces the whole-batch loss exactly."""
    mask = mask.float()
    adv = advantages.float().unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - clip[0], 1 + clip[1])
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    if tis is not None:
        per_token = per_token * tis.detach().float()
    if weights is not None:
        per_token = per_token * weights.float().unsqueeze(1)
    kl = torch.zeros((), device=logp.device)
    if ref_logp is not None and kl_coef:
        log_r = ref_logp - logp
        # Schulman's k3, unbiased and >= 0; clamped at 10 as verl's low_var_kl (core_algos.kl_penalty)
        k3 = (torch.exp(log_r) - log_r - 1).clamp(max=10.0)
        per_token = per_token + kl_coef * k3
        kl = (k3 * mask).sum() / mask.sum().clamp(min=1)
    ent = torch.zeros((), device=logp.device)
    if entropy is not None and entropy_coef:
        per_token = per_token - entropy_coef * entropy
        ent = (entropy.detach() * mask).sum() / mask.sum().clamp(min=1)
    n_seqs = n_seqs or logp.shape[0]
    sums = (per_token * mask).sum(1)  # per sequence; the loss is the sum of each sequence's term
    if variant == "grpo":  # mean over each sequence's tokens, then over sequences
        per_seq = sums / mask.sum(1).clamp(min=1) / n_seqs
    elif variant == "drgrpo":  # no length normalization: a constant divisor
        if not max_tokens:
            raise ValueError("drgrpo needs max_tokens")
        per_seq = sums / (max_tokens * n_seqs)
    elif variant == "dapo":  # token-level: every token of the batch weighs the same
        per_seq = sums / (n_tokens if n_tokens is not None else mask.sum().clamp(min=1))
    else:
        raise ValueError(f"unknown advantage variant {variant!r}; known: {', '.join(VARIANTS)}")
    was_clipped = ((ratio < 1 - clip[0]) & (adv < 0)) | ((ratio > 1 + clip[1]) & (adv > 0))
    stats = {"clip_tokens": float((was_clipped.float() * mask).sum()), "tokens": float(mask.sum()), "kl": float(kl),
             "entropy": float(ent), "per_seq": per_seq.detach()}
    return per_seq.sum(), stats


def tis_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                cap: float) -> tuple[torch.Tensor, dict]:
    """Truncated importance weights [B, T] for samples drawn by the engine and trained by the trainer.

    ratio = pi_trainer / pi_sampler from the trainer's old log-probs and the engine's log-probs of
    the sampled tokens (both at the sampling temperature). "token_truncate" (oat ppo.py):
    min(ratio_t, cap) per token. "sequence_mask" (TRL grpo_trainer.py): one ratio per sequence,
    exp(sum_t log ratio_t), the sequence's weight, 0 when above `cap`. Stats: mean ratio before the
    cap and the share of tokens (sequences) the cap changed."""
    mask = mask.float()
    diff = (old_logp - sampler_logp) * mask
    if mode == "token_truncate":
        ratio = torch.exp(diff)
        hit = (ratio > cap).float() * mask
        w = ratio.clamp(max=cap)
        stats = {"tis_ratio_mean": float((ratio * mask).sum() / mask.sum().clamp(min=1)),
                 "tis_clipped_frac": float(hit.sum() / mask.sum().clamp(min=1))}
    elif mode == "sequence_mask":
        seq = torch.exp(diff.sum(1, keepdim=True))
        hit = (seq > cap).float()
        w = seq.masked_fill(seq > cap, 0.0).expand_as(diff)
        stats = {"tis_ratio_mean": float(seq.mean()), "tis_clipped_frac": float(hit.mean())}
    else:
        raise ValueError(f"unknown tis_mode {mode!r}; known: token_truncate, sequence_mask")
    return w * mask + (1 - mask), stats


def shaped_reward(correct: bool, finish_reason: str, length: int, cfg: GRPOConfig) -> float:
    """The training reward of one sample: correctness, then the recipe's truncation rule and overlong shaping.

    truncated_reward "zero": cut without eos -> 0 (understand-r1-zero train_zero_math.py). Overlong
    (verl docs/algo/dapo.md): with buffer = frac x max_tokens, reward += min(-(length - (max_tokens -
    buffer)) / buffer x penalty, 0)."""
    reward = 1.0 if correct else 0.0
    if cfg.truncated_reward == "zero" and finish_reason == "length":
        reward = 0.0
    if cfg.overlong_buffer_frac:
        buffer = max(1, int(cfg.overlong_buffer_frac * cfg.max_tokens))
        exceed = length - (cfg.max_tokens - buffer)
        reward += min(-exceed / buffer * cfg.overlong_penalty, 0.0)
    return reward


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
        total_updates = cfg.steps * cfg.inner_updates * cfg.epochs
        self.prompts = prompts
        self.trainer = trainer = Trainer.create(base_model, TrainSettings(
            lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
            max_grad_norm=cfg.max_grad_norm, gradient_checkpointing=cfg.gradient_checkpointing,
            device=ctx.device, seed=ctx.seed), total_updates)
        tok = trainer.tokenizer
        ref = None
        if cfg.kl_coef:
            from transformers import AutoModelForCausalLM

            # the policy's forward runs in bf16 autocast on GPU: a bf16 reference, not a second fp32 model
            ref_dtype = torch.bfloat16 if trainer.device.type == "cuda" else torch.float32
            ref = AutoModelForCausalLM.from_pretrained(base_model, dtype=ref_dtype).to(trainer.device).eval()
        progress = trainer.load_state(ctx.out_dir) or {"next_step": 0, "generated_tokens": 0}
        start, generated = progress["next_step"], progress["generated_tokens"]
        from harness.prompts import stop_sequences

        self.generator = gen = ctx.make_generator(base_model)
        try:
            self._check_tis_source(gen)
            texts = dict(zip((p.id for p in prompts), render_prompts(ctx.template, prompts, tok)))
            if start:  # the fresh engine holds the base weights
                gen.update_weights(trainer.named_weights())
                self._check_sync([tok(texts[p.id], add_special_tokens=False).input_ids for p in prompts[:2]])
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
        tm = {"rollout": 0.0, "grading": 0.0, "augment": 0.0}
        groups, seen, gen_batches = self._collect(step, batch, texts, sampling, ctx, tm)
        zero_hit = [g.problem.id for g in seen if not any(s.correct for s in g.samples if not s.off_policy)]
        all_correct = [g.problem.id for g in seen if all(s.correct for s in g.samples if not s.off_policy)]
        rewards = [s.reward for g in seen for s in g.samples if not s.off_policy]
        lengths = [len(s.token_ids) for g in seen for s in g.samples if not s.off_policy]
        for g in groups:
            adv = group_advantages(torch.tensor(g.rewards), cfg.advantage, cfg.adv_eps)
            for s, a in zip(g.samples, adv.tolist()):
                s.advantage = a
        self._store_rollouts(step, seen, set(zero_hit), ctx)
        with Timer() as t_upd:
            upd = self._update(step, groups, ref)
        with Timer() as t_sync:
            gen.update_weights(trainer.named_weights())
        with Timer() as t_check:
            gap = self._check_sync(self._check_sequences(step, groups or seen), raise_=False)
        total = time.perf_counter() - t0
        ctx.log_step(
            step + 1, phase="grpo", loss=upd["loss"], lr=upd["lr"], grad_norm=upd["grad_norm"],
            tokens_per_s=upd["tokens"] / max(t_upd.s, 1e-9), reward_mean=sum(rewards) / len(rewards),
            zero_hit_frac=len(zero_hit) / len(seen), all_correct_frac=len(all_correct) / len(seen),
            zero_hit_ids=zero_hit, all_correct_ids=all_correct, response_len_mean=sum(lengths) / len(lengths),
            clip_frac=upd["clip_frac"], kl=upd["kl"], entropy=upd["entropy"], trained_samples=upd["trained"],
            off_policy_samples=sum(s.off_policy for g in groups for s in g.samples),
            off_policy_loss_share=upd["off_policy_loss_share"],
            off_policy_truncated=sum(s.off_policy and s.finish_reason == "length" for g in groups for s in g.samples),
            off_policy_weight_mean=_mean([s.weight for g in groups for s in g.samples if s.off_policy]),
            truncated_frac=sum(s.finish_reason == "length" for g in seen for s in g.samples) / len(lengths),
            gen_batches=gen_batches, trained_groups=len(groups), optimizer_steps=upd["optimizer_steps"],
            tis_ratio_mean=upd["tis_ratio_mean"], tis_clipped_frac=upd["tis_clipped_frac"],
            sync_gap_mean=gap.mean if gap else None, sync_gap_max=gap.max if gap else None,
            timings={**tm, "update": t_upd.s, "old_logprobs": upd["old_logprobs_s"], "sync": t_sync.s,
                     "sync_check": t_check.s, "total": total},
        )
        if gap:  # logged first, so the failing step's gap is in the database
            gap.check(self._tolerance())
        return {"generated_tokens": sum(len(s.token_ids) for g in seen for s in g.samples if not s.off_policy)}

    def _collect(self, step: int, batch: list[Problem], texts: dict[str, str], sampling: Sampling,
                 ctx: RunContext, tm: dict) -> tuple[list[Group], list[Group], int]:
        """(groups to train on, every group generated, generation batches used) for one step.

        Without dynamic sampling both lists are the step's groups. With it (DAPO, verl `filter_groups`),
        groups whose correctness is all equal are dropped and further prompts are drawn until
        `prompts_per_step` groups remain or `max_gen_batches` batches were generated (then it trains on
        what it has; verl raises instead)."""
        seen = self._rollout(step, 0, batch, texts, sampling, ctx, tm)
        if not self.cfg.dynamic_sampling:
            return seen, seen, 1
        kept = [g for g in seen if _varied(g)]
        k = 1
        while len(kept) < len(batch) and k < self.cfg.max_gen_batches:
            more = self._refill_prompts(step, k, len(batch), ctx.seed)
            new = self._rollout(step, k, more, texts, sampling, ctx, tm)
            seen, kept, k = seen + new, kept + [g for g in new if _varied(g)], k + 1
        return kept[: len(batch)], seen, k

    def _rollout(self, step: int, k: int, batch: list[Problem], texts: dict[str, str], sampling: Sampling,
                 ctx: RunContext, tm: dict) -> list[Group]:
        """Generate, grade, shape rewards and augment one generation batch (k = 0: the step's own prompts)."""
        t0 = time.perf_counter()
        outs = self.generator.generate(
            [texts[p.id] for p in batch], sampling,
            seeds=[stable_seed(ctx.seed, "grpo", step, p.id, *((k,) if k else ())) for p in batch])
        t1 = time.perf_counter()
        verdicts = ctx.grader.grade([(c.text, p.answer) for p, cs in zip(batch, outs) for c in cs])
        t2 = time.perf_counter()
        it = iter(verdicts)
        groups = []
        for p, cs in zip(batch, outs):
            samples = []
            for c in cs:
                ok = bool(next(it).correct)
                samples.append(Sample(c.text, list(c.token_ids), shaped_reward(ok, c.finish_reason, len(c.token_ids),
                                                                               self.cfg),
                                      c.finish_reason, correct=ok, sampler_logprobs=c.logprobs))
            groups.append(Group(p, texts[p.id], samples))
        groups = self.augment_groups(step, groups, ctx)
        tm["rollout"] += t1 - t0
        tm["grading"] += t2 - t1
        tm["augment"] += time.perf_counter() - t2
        return groups

    def _refill_prompts(self, step: int, k: int, n: int, seed: int) -> list[Problem]:
        """Dynamic sampling's k-th extra batch of step `step`: n prompts from a seeded draw."""
        return random.Random(f"grpo-refill/{seed}/{step}/{k}").sample(list(self.prompts), min(n, len(self.prompts)))

    def _check_tis_source(self, gen) -> None:
        """TIS needs the sampler's log-probs at the sampling temperature: raw ones only when T = 1, top_p = 1."""
        cfg = self.cfg
        processed = getattr(gen, "logprobs_mode", "raw_logprobs") == "processed_logprobs"
        if cfg.tis_mode != "off" and not processed and (cfg.temperature != 1.0 or cfg.top_p != 1.0):
            raise ValueError(f"grpo: tis_mode={cfg.tis_mode!r} needs sampler log-probs after temperature/top_p, "
                             f"but {type(gen).__name__} returns raw log-probs; set temperature=1, top_p=1 or "
                             "tis_mode='off'")

    # ------------------------------------------------------------------------------------------
    def _tolerance(self) -> tuple[float, float]:
        return self.cfg.sync_tolerance or default_tolerance(engine_dtype(self.generator))

    def _check_sequences(self, step: int, groups: list[Group]) -> list[list[int]]:
        """`sync_check_samples` of this step's policy sequences (prompt + response ids), seeded by step."""
        tok = self.trainer.tokenizer
        pool = [(g.prompt, s.token_ids) for g in groups for s in g.samples if s.token_ids and not s.off_policy]
        picks = random.Random(f"grpo-sync/{step}").sample(pool, min(self.cfg.sync_check_samples, len(pool)))
        return [tok(p, add_special_tokens=False).input_ids + list(r) for p, r in picks]

    def _check_sync(self, sequences: list[list[int]], raise_: bool = True) -> Gap | None:
        """The engine's log-probs of `sequences` vs the trainer's (harness.weightsync): None when off."""
        if not self.cfg.sync_check_samples or not sequences or not can_score(self.generator):
            return None  # off, or a stub engine that cannot score tokens (tests)
        gap = sampler_gap(self.generator, self.trainer.unwrapped, sequences)
        return gap.check(self._tolerance()) if raise_ else gap

    def _update(self, step: int, groups: list[Group], ref) -> dict:
        """Old log-probs (+ TIS weights) for all samples, then `epochs` x `inner_updates` optimizer steps."""
        cfg, trainer = self.cfg, self.trainer
        items = self._encode(groups)
        order = list(range(len(items)))
        # zero-advantage samples add exactly 0 to the surrogate (without KL / entropy): no forward for them
        # (single process only: DDP needs the same number of backward passes on every rank)
        skip_ok = not cfg.kl_coef and not cfg.entropy_coef and trainer.accelerator.num_processes == 1
        active = [i for i in order if items[i][1] != 0.0 or not skip_ok]
        t0 = time.perf_counter()
        old, ref_lp, tis, tis_stats = self._old_logprobs(items, active, ref)
        old_s = time.perf_counter() - t0
        acc = {"loss": 0.0, "clip": 0.0, "tokens": 0.0, "kl": [], "entropy": [], "norms": [], "abs": 0.0, "off": 0.0}
        lr = trainer.lr
        for epoch in range(cfg.epochs):
            shuffled = list(order)
            random.Random(f"grpo-mb/{step}" + (f"/{epoch}" if epoch else "")).shuffle(shuffled)
            for mini in (shuffled[k::cfg.inner_updates] for k in range(cfg.inner_updates)):
                if items:
                    self._mini_batch_backward(items, mini, old, ref_lp, tis, acc)
                acc["norms"].append(trainer.step())
        n_minis = cfg.epochs * cfg.inner_updates
        return {"loss": acc["loss"] / n_minis, "grad_norm": sum(acc["norms"]) / n_minis, "lr": lr,
                "clip_frac": acc["clip"] / acc["tokens"] if acc["tokens"] else 0.0,
                "kl": _mean(acc["kl"]), "entropy": _mean(acc["entropy"]), "trained": len(active),
                "tokens": acc["tokens"], "old_logprobs_s": old_s, "optimizer_steps": n_minis,
                "off_policy_loss_share": acc["off"] / acc["abs"] if acc["abs"] else 0.0, **tis_stats}

    def _encode(self, groups: list[Group]) -> list[tuple]:
        """(encoded, advantage, weight, sampler log-probs or None, off_policy) per sample."""
        tok = self.trainer.tokenizer
        items = []
        for g in groups:
            for s in g.samples:
                response = s.token_ids if s.token_ids is not None else s.text
                enc = encode_pair(tok, g.prompt, response, add_eos=s.finish_reason != "length")
                items.append((enc, s.advantage, s.weight, None if s.off_policy else s.sampler_logprobs, s.off_policy))
        return items

    def _old_logprobs(self, items: list[tuple], active: list[int], ref) -> tuple[dict, dict, dict, dict]:
        """Trainer (and reference) log-probs of every active sample, and its TIS weights (per response token)."""
        cfg, trainer = self.cfg, self.trainer
        old, ref_lp, tis = {}, {}, {}
        ratios, clipped, n = 0.0, 0.0, 0
        with torch.no_grad():
            trainer.model.eval()
            for chunk in _chunks(active, cfg.micro_batch_size):
                b = collate([items[i][0] for i in chunk], self._pad, trainer.device)
                lp = token_logprobs(trainer.model, b, cfg.temperature)
                rp = token_logprobs(ref, b, cfg.temperature) if ref is not None else None
                for j, i in enumerate(chunk):
                    width = len(items[i][0][0]) - 1  # drop the padding: rows are re-batched differently below
                    old[i] = lp[j, :width]
                    if rp is not None:
                        ref_lp[i] = rp[j, :width]
                    w, st = self._tis_row(items[i], old[i])
                    if w is not None:
                        tis[i] = w
                        ratios, clipped, n = ratios + st["tis_ratio_mean"], clipped + st["tis_clipped_frac"], n + 1
            trainer.model.train()
        return old, ref_lp, tis, {"tis_ratio_mean": ratios / n if n else None,
                                  "tis_clipped_frac": clipped / n if n else None}

    def _tis_row(self, item: tuple, old_row: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        """One sample's TIS weights over its log-prob row; None without sampler log-probs or with TIS off."""
        (ids, mask), _, _, sampler, _ = item
        if self.cfg.tis_mode == "off" or not sampler:
            return None, {}
        start = mask.index(1) - 1  # log-prob index of the first response token
        m = min(len(sampler), len(old_row) - start)  # an appended eos has no sampler log-prob: weight 1
        sub_old = old_row[start: start + m].unsqueeze(0)
        sampler_t = torch.tensor(sampler[:m], dtype=torch.float32, device=old_row.device).unsqueeze(0)
        w, st = tis_weights(sub_old, sampler_t, torch.ones_like(sub_old), self.cfg.tis_mode, self.cfg.tis_cap)
        row = torch.ones_like(old_row)
        row[start: start + m] = w[0]
        if self.cfg.tis_mode == "sequence_mask":  # one weight for the whole sequence, eos included
            row[start:] = w[0, 0] if m else 1.0
        return row, st

    def _mini_batch_backward(self, items: list[tuple], mini: list[int], old: dict, ref_lp: dict, tis: dict,
                             acc: dict) -> None:
        """Gradient of one mini-batch's loss, accumulated over micro-batches (normalizers of the whole mini-batch)."""
        cfg, trainer = self.cfg, self.trainer
        n_seqs = self._per_rank_share(float(len(mini)))
        n_tokens = self._per_rank_share(float(sum(sum(items[i][0][1]) for i in mini)))
        todo = [i for i in mini if i in old]
        for chunk in _chunks(todo, cfg.micro_batch_size):
            b = collate([items[i][0] for i in chunk], self._pad, trainer.device)
            width = b["input_ids"].shape[1] - 1
            if cfg.entropy_coef:
                logp, ent = token_logprobs(trainer.model, b, cfg.temperature, with_entropy=True)
            else:
                logp, ent = token_logprobs(trainer.model, b, cfg.temperature), None
            loss, st = policy_loss(
                logp, _stack([old[i] for i in chunk], width), torch.tensor([items[i][1] for i in chunk]),
                b["loss_mask"][:, 1:], variant=cfg.advantage, clip=cfg.clip_range(),
                weights=torch.tensor([items[i][2] for i in chunk]),
                ref_logp=_stack([ref_lp[i] for i in chunk], width) if ref_lp else None,
                kl_coef=cfg.kl_coef, n_seqs=n_seqs, n_tokens=n_tokens, max_tokens=cfg.max_tokens,
                tis=_stack([tis.get(i, torch.ones_like(old[i])) for i in chunk], width) if tis else None,
                entropy=ent, entropy_coef=cfg.entropy_coef)
            trainer.backward(loss)
            acc["loss"] += float(loss.detach())
            acc["clip"], acc["tokens"] = acc["clip"] + st["clip_tokens"], acc["tokens"] + st["tokens"]
            acc["kl"].append(st["kl"])
            acc["entropy"].append(st["entropy"])
            contrib = st["per_seq"].abs()  # proxy for each sample's share of the gradient (lr-grpo docstring)
            acc["abs"] += float(contrib.sum())
            acc["off"] += float(sum(c for c, i in zip(contrib.tolist(), chunk) if items[i][4]))

    def _per_rank_share(self, count: float) -> float:
        """A normalizer as the whole batch's: DDP averages the ranks' gradients, so each rank divides by
        (sum of the count over ranks) / ranks; the per-rank count made `dapo`'s token mean per rank (15.6)."""
        acc = self.trainer.accelerator
        if acc.num_processes == 1:
            return count
        return float(acc.reduce(torch.tensor(count, device=acc.device), reduction="sum")) / acc.num_processes

    @property
    def _pad(self) -> int:
        tok = self.trainer.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

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


def _varied(g: Group) -> bool:
    """Dynamic sampling's filter: the group's correctness (verl metric "acc") is not all equal."""
    return len({s.correct if s.correct is not None else s.reward > 0 for s in g.samples}) > 1


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _chunks(xs: list, size: int):
    for i in range(0, len(xs), size):
        yield xs[i: i + size]


def _stack(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """Per-sample log-prob rows (different lengths) -> [B, width], zero-padded on the right."""
    out = torch.zeros(len(rows), width, device=rows[0].device)
    for j, r in enumerate(rows):
        out[j, : r.shape[0]] = r
    return out
