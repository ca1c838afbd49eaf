"""Training utilities shared by the SFT and GRPO methods (and the LatentRevise variants built on them).

What lives here is the part every post-training method does the same way, so the methods differ
only in what they train on:

    trainer = Trainer.create(model_dir, TrainSettings(...), total_steps)   # accelerate: device, bf16, DDP
    ids, mask = encode_pair(tok, prompt, response)                        # loss mask on response tokens
    batch = collate([...], pad_id)                                        # right padding
    logp = token_logprobs(trainer.model, batch)                           # log p(token | prefix) [B, T-1]
    trainer.backward(loss); trainer.step()                                # clip, optimizer, schedule
    trainer.save_state(dir, step) / trainer.load_state(dir)               # resume after a kill
    trainer.save_model(dir)                                               # HF format, vLLM loads it

The device, mixed precision and data parallelism come from `accelerate` (one process here; under
`accelerate launch` DDP/FSDP/DeepSpeed as configured there): float32 on CPU, bf16 autocast over
float32 master weights plus gradient checkpointing on GPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

STATE_DIR = "trainer_state"  # under a method's out_dir
STATE_FILE = "progress.json"


@dataclass(frozen=True)
class TrainSettings:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio at the last step
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True  # GPU only; on CPU it costs time and saves nothing we need
    device: str = "cpu"
    seed: int = 0
    # torch intra-op threads on CPU. 1, because the trainer shares the cores with the colocated vLLM
    # worker and the grader: with 2 threads on the busy 2-core dev box a tiny-model step was 40x slower
    cpu_threads: int | None = 1


def encode_pair(tokenizer, prompt: str, response: str | Sequence[int], max_len: int | None = None,
                add_eos: bool = True) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask): prompt and response tokenized separately, the loss on response tokens.

    Separate tokenization matches inference: the engine tokenizes the prompt alone and the model
    continues from its last token. A response may be text or token ids (rollouts); eos is
    appended unless it is already there, so the model learns to stop. Too long: the response is cut
    at `max_len` total tokens (the prompt is kept whole)."""
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    r = list(response) if not isinstance(response, str) else tokenizer(response, add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    if add_eos and (not r or r[-1] != eos):
        r = r + [eos]
    if max_len is not None:
        r = r[: max(0, max_len - len(p))]
    return p + r, [0] * len(p) + [1] * len(r)


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int,
            device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad (input_ids, loss_mask) pairs into a batch."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    loss = torch.zeros((len(examples), width), dtype=torch.float32)
    for i, (x, m) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        attn[i, : len(x)] = 1
        loss[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "loss_mask": loss.to(device)}


def token_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0, with_entropy: bool = False):
    """log p(x_t | x_<t) for t = 1..T-1, shape [B, T-1]; aligned with `batch["loss_mask"][:, 1:]`.

    `with_entropy`: also the entropy [B, T-1] of each position's (temperature-scaled) distribution, as
    verl computes it for its entropy bonus (logits divided by the temperature, then the entropy)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = batch["input_ids"][:, 1:]
    # logsumexp form: no [B, T, V] log-softmax tensor kept for backward
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logp
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # H = logsumexp - E_p[logit]
    return logp, entropy


def masked_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed negative log-likelihood over response tokens, number of response tokens)."""
    mask = batch["loss_mask"][:, 1:]
    return -(token_logprobs(model, batch) * mask).sum(), mask.sum()


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """A model, its AdamW optimizer and LR schedule, prepared by `accelerate`; saves and resumes."""

    def __init__(self, model, tokenizer, optimizer, scheduler, accelerator, settings: TrainSettings):
        self.model, self.tokenizer = model, tokenizer
        self.optimizer, self.scheduler, self.accelerator = optimizer, scheduler, accelerator
        self.settings = settings

    @classmethod
    def create(cls, model_dir: str, settings: TrainSettings, total_steps: int) -> Trainer:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        set_seed(settings.seed)
        on_gpu = settings.device.startswith("cuda") and torch.cuda.is_available()
        # step_scheduler_with_optimizer=False: a prepared scheduler otherwise steps once per process per
        # optimizer step, so 2 processes would run the LR schedule twice as fast (tests/test_multiprocess.py)
        accelerator = Accelerator(cpu=not on_gpu, mixed_precision="bf16" if on_gpu else "no",
                                  step_scheduler_with_optimizer=False)
        if not on_gpu and settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # float32 master weights everywhere; on GPU the forward runs under bf16 autocast (accelerate)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if on_gpu and settings.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=settings.betas,
                                      weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, settings.warmup_steps, total_steps, settings.min_lr_ratio))
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        model.train()
        return cls(model, tokenizer, optimizer, scheduler, accelerator, settings)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def sum_over_processes(self, value: float) -> float:
        """`value` summed over the data-parallel processes (itself with one): for logging whole-batch figures."""
        if self.accelerator.num_processes == 1:
            return value
        return float(self.accelerator.reduce(torch.tensor(value, device=self.device), reduction="sum"))

    def step(self) -> float:
        """Clip, step, schedule, zero; returns the pre-clip gradient norm."""
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def named_weights(self):
        """(name, tensor) for every checkpoint name, tied aliases included, for `Generator.update_weights`.

        Not `named_parameters()`: it yields a tied head once, as the embedding, and vLLM then kept
        its old head (issue 15.1; `harness.weightsync`)."""
        from harness.weightsync import sync_tensors

        return sync_tensors(self.unwrapped)

    def save_model(self, out_dir: str | Path) -> Path:
        """Hugging Face format (safetensors + tokenizer + generation config)."""
        out = Path(out_dir)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            model = self.unwrapped
            model.generation_config.eos_token_id = self.tokenizer.eos_token_id
            model.generation_config.pad_token_id = self.tokenizer.pad_token_id
            model.save_pretrained(out, safe_serialization=True,
                                  state_dict=self.accelerator.get_state_dict(self.model))
            self.tokenizer.save_pretrained(out)
        return out

    def save_state(self, out_dir: str | Path, step: int, extra: dict[str, Any] | None = None) -> None:
        """Model, optimizer, schedule, RNG (accelerate) + the next step; `progress.json` last = committed."""
        state = Path(out_dir) / STATE_DIR
        marker = state / STATE_FILE
        marker.unlink(missing_ok=True)  # a kill during the write leaves no marker, hence no resume from it
        self.accelerator.save_state(str(state))
        if self.accelerator.is_main_process:
            marker.write_text(json.dumps({"next_step": step, **(extra or {})}))

    def load_state(self, out_dir: str | Path) -> dict[str, Any] | None:
        """Restore a committed state; returns its progress record, or None when there is none."""
        state = Path(out_dir) / STATE_DIR
        if not (state / STATE_FILE).is_file():
            return None
        self.accelerator.load_state(str(state))
        return json.loads((state / STATE_FILE).read_text())


def render_prompts(template: str, problems: Sequence[Any], tokenizer) -> list[str]:
    from harness.prompts import render

    return [render(template, p.problem, tokenizer) for p in problems]


def progress_steps(show: bool, label: str, start: int, total: int):
    """range(start, total) with a rich progress bar (when `show`)."""
    if not show:
        yield from range(start, total)
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task(label, total=total, completed=start)
        for step in range(start, total):
            yield step
            bar.advance(task)
