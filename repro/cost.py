"""The GPU-hour estimate of a plan (`--dry-run` on a GPU preset), per run, on one H100.

    hours = (generated_tokens / GEN_TOK_S[size] + trained_tokens * 6 * params / (MFU * H100_BF16_FLOPS)) / 3600

generated_tokens = prompts x samples x mean completion length (MEAN_COMPLETION_FRAC x max_tokens);
trained_tokens = tokens that get a forward and backward pass (policy updates, SFT examples,
Frank-Wolfe steps on a prefix, at 2/3: frozen weights). The per-method counts come from `estimate_tokens`, which reads
the run's BUILT config (the preset's composed method config plus the plan's overrides, as the
run will use it; one function per method family): lr-grpo's budget is grpo's plus the online
revisions of its zero-hit groups, lr-sft's is sft's plus the offline mining pass (every continuation arm
counted: `continuation_arms`), and the matched baselines spend lr-sft's revision FTE on sampling. Every assumption
is printed with the estimate (`assumptions`). Dataset sizes are counted in the local data directory
when there is one and taken from the published sizes otherwise, so the estimate needs no network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from repro.plan import Step
from repro.presets import Preset

H100_BF16_FLOPS = 989e12  # dense bf16 peak, H100 SXM
MFU = 0.35  # assumed model-FLOPs utilization of the trainer
GEN_TOK_S = {1.5: 20_000.0, 7.0: 6_000.0}  # assumed vLLM decode tokens/s, one H100, large batch, half the memory
MEAN_COMPLETION_FRAC = 0.25  # assumed mean completion length / max_tokens (base models stop early; clipped ones don't)
KNOWN_SIZES = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "olympiadbench": 675, "math_train": 5586}
PROMPT_TOKENS = 150  # assumed mean prompt length (tokens) of a MATH-style problem under the template
ZERO_HIT_FRAC = 0.25  # assumed share of training prompts on which every mining sample fails
GOLD_TOKENS = 16  # tokens of the teacher-forced gold answer statement in a revision


def params_b(model: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)B\b", model, re.I)
    return float(m.group(1)) if m else None


def dataset_size(name: str, data_dir: str | None, filt: dict | None = None,
                 limit: int | None = None) -> tuple[int, str]:
    """(problems, where the count comes from): the local file when there is one, never the hub."""
    from benchmarks.registry import load_benchmark, resolve_data_dir

    d = resolve_data_dir(data_dir)
    if d is not None and d.is_dir():
        try:
            probs = load_benchmark(name, d)
            for key, allowed in (filt or {}).items():
                probs = [p for p in probs if p.meta.get(key) in allowed]
            n = len(probs)
            return (min(n, limit) if limit else n), f"counted in {d}"
        except Exception:  # noqa: BLE001  (fall back to the published size)
            pass
    n = KNOWN_SIZES.get(name, 0)
    return (min(n, limit) if limit else n), "published size (assumed)"


@dataclass
class TokenCount:
    """Running totals of one training run's tokens; each method family adds its share in turn."""

    generated: float = 0.0
    trained: float = 0.0
    how: list[str] = field(default_factory=list)


def _grpo_tokens(cfg: Any, frac: float, count: TokenCount) -> None:
    """GRPO family: policy rollouts, one update over each, plus forward-only log-prob passes."""
    steps, batch = getattr(cfg, "steps", 100), getattr(cfg, "prompts_per_step", 64)
    group = getattr(cfg, "group_size", 8)
    length = frac * getattr(cfg, "max_tokens", 1024)
    rollouts = steps * batch * group * length
    forwards = 1 + (getattr(cfg, "kl_coef", 0.0) > 0)  # old-policy logprobs, + the reference model with a KL term
    count.generated += rollouts
    count.trained += rollouts * (1 + forwards / 3)
    count.how.append(f"{steps} steps x {batch} prompts x {group} rollouts x {length:.0f} tok")


def _sft_tokens(cfg: Any, n_train: int, frac: float, count: TokenCount) -> None:
    """SFT family: the reference solutions, or (RFT) the kept correct samples of a sampling pass."""
    rft = getattr(cfg, "data", "reference") != "reference"
    n_ex = n_train * (1 + (getattr(cfg, "rft_keep_per_prompt", 4) if rft else 0))
    if rft:
        count.generated += n_train * getattr(cfg, "rft_samples", 8) * frac * getattr(cfg, "rft_max_tokens", 1024)
        count.how.append(f"RFT {n_train} x {getattr(cfg, 'rft_samples', 8)} samples")
    seen = n_ex * getattr(cfg, "epochs", 1)
    if getattr(cfg, "max_steps", None) is not None:
        seen = min(seen, cfg.max_steps * getattr(cfg, "batch_size", 64))
    resp = frac * getattr(cfg, "max_len", 2048)
    count.trained += seen * (PROMPT_TOKENS + resp)
    count.how.append(f"{seen:,.0f} examples x {PROMPT_TOKENS + resp:.0f} tok")


def continuation_arms(cfg: Any) -> int:
    """Continuation arms one revision samples (methods/latentrevise/mining.py): the K=0 control always; the
    discrete arm (cont_modes discrete|both); the latent arm (latent|both) unless the step rule keeps Z a vertex,
    when it repeats the discrete arm and is deduplicated (mining._latent_can_differ). At K=0 only the control is
    sampled. An upper bound otherwise: a discrete arm whose p' = p is deduplicated too, a share known only after
    the run (`p_changed_frac`)."""
    from methods.latentrevise.mining import _latent_can_differ

    if getattr(cfg, "fw_steps", 10) == 0:
        return 1
    modes = getattr(cfg, "cont_modes", "both")
    return 1 + (modes in ("discrete", "both")) + (modes in ("latent", "both") and _latent_can_differ(cfg))


def _revision_tokens(cfg: Any, revisions: float, length: float, count: TokenCount) -> None:
    """Frank-Wolfe revisions of failed rollouts of mean length `length`, and the continuations that verify them
    (each as long as the rest of the rollout it replaces), in every arm (`continuation_arms`).

    A Frank-Wolfe step is a forward plus an input-gradient backward with frozen weights (4P FLOPs a token, core.py's
    2 FTE) = 2/3 of a trained token (6P). The matched-compute baselines (resample, hint, guided-prefix: configs with
    `budget_fte_per_prompt`) spend the same FTE on sampling instead: the continuations plus 2 generated tokens per
    Frank-Wolfe row token, and train nothing here."""
    prefix = min(getattr(cfg, "prefix_max_tokens", 256) or length, getattr(cfg, "prefix_frac", 0.5) * length)
    away = min(getattr(cfg, "away_max_tokens", 128) or length, length - prefix)
    rows = 2 if getattr(cfg, "loss_terms", "both") == "both" else 1  # toward and away rows, each with Z
    fw = revisions * getattr(cfg, "fw_steps", 10) * rows * (prefix + GOLD_TOKENS + away)
    continuations = revisions * continuation_arms(cfg) * getattr(cfg, "cont_samples", 4) * (length - prefix)
    if hasattr(cfg, "budget_fte_per_prompt"):
        count.generated += continuations + 2 * fw
    else:
        count.trained += fw * 2 / 3
        count.generated += continuations


def _mining_tokens(cfg: Any, n_train: int, frac: float, count: TokenCount) -> None:
    """LatentRevise mining (and the matched rescue baselines): screening samples, Frank-Wolfe revisions of the
    zero-hit prompts' failed rollouts, and the continuations that verify them."""
    n_mine = min(n_train, getattr(cfg, "mine_prompts", None) or n_train)
    length = frac * getattr(cfg, "mine_max_tokens", 1024)
    count.generated += n_mine * getattr(cfg, "mine_samples", 8) * length
    revisions = n_mine * ZERO_HIT_FRAC * getattr(cfg, "failed_per_prompt", 2)
    _revision_tokens(cfg, revisions, length, count)
    what = "matched sampling budget of" if hasattr(cfg, "budget_fte_per_prompt") else ""
    count.how.append(f"mining {n_mine} x {getattr(cfg, 'mine_samples', 8)} samples; {what} {revisions:,.0f} revisions"
                     f" x K={getattr(cfg, 'fw_steps', 10)}, {continuation_arms(cfg)} continuation arms (zero-hit share "
                     f"{ZERO_HIT_FRAC} assumed)".replace("  ", " "))


def _online_revision_tokens(cfg: Any, frac: float, count: TokenCount) -> None:
    """lr-grpo: every `revise_every` steps, the failed rollouts of up to `revise_max_groups` zero-hit groups."""
    every = getattr(cfg, "revise_every", 1)
    if every <= 0:
        return
    groups = cfg.prompts_per_step * ZERO_HIT_FRAC
    if getattr(cfg, "revise_max_groups", None) is not None:
        groups = min(groups, cfg.revise_max_groups)
    revisions = (cfg.steps // every) * groups * getattr(cfg, "failed_per_prompt", 2)
    _revision_tokens(cfg, revisions, frac * cfg.max_tokens, count)
    count.how.append(f"{revisions:,.0f} online revisions x K={getattr(cfg, 'fw_steps', 10)} "
                     f"(zero-hit share {ZERO_HIT_FRAC} assumed)")


def estimate_tokens(method: str, cfg: Any, n_train: int, frac: float) -> tuple[float, float, str]:
    """(generated tokens, trained tokens, formula) of training `method` with its built config `cfg`.

    trained tokens count one forward + backward; a forward-only pass counts as a third of one."""
    count = TokenCount()
    if hasattr(cfg, "prompts_per_step"):  # the GRPO family
        _grpo_tokens(cfg, frac, count)
        if hasattr(cfg, "revise_every"):
            _online_revision_tokens(cfg, frac, count)
    elif hasattr(cfg, "epochs"):  # the SFT family
        _sft_tokens(cfg, n_train, frac, count)
        if hasattr(cfg, "mine_samples"):
            _mining_tokens(cfg, n_train, frac, count)
    return count.generated, count.trained, "; ".join(count.how) or "no training"


def estimate_step(st: Step, preset: Preset, data_dir: str | None) -> dict[str, Any] | None:
    size = params_b(preset.base_model)
    if preset.device != "cuda" or size is None or st.action == "error":
        return None
    completion = MEAN_COMPLETION_FRAC * preset.eval.max_tokens
    gen_s = GEN_TOK_S.get(size, GEN_TOK_S[7.0] * 7.0 / size)  # other sizes: decode scales ~ 1 / params
    eval_tokens = 0.0
    if st.evaluate:
        for b in preset.benchmarks:
            eval_tokens += dataset_size(b, data_dir, limit=preset.eval_limit)[0] * preset.eval.n_for(b) * completion
    n_train, _ = dataset_size(preset.train_set, data_dir, preset.train_filter, preset.train_limit)
    if st.method == "base":
        gen, trained, how = 0.0, 0.0, "no training"
    else:
        from repro.runs import run_config

        gen, trained, how = estimate_tokens(st.method, run_config(preset, st.method, st.overrides)[0], n_train,
                                            MEAN_COMPLETION_FRAC)
    flops_s = MFU * H100_BF16_FLOPS
    hours = ((gen + eval_tokens) / gen_s + trained * 6 * size * 1e9 / flops_s) / 3600
    return {"gpu_hours": hours, "generated": gen, "eval_generated": eval_tokens, "trained": trained, "how": how}


def assumptions(preset: Preset, data_dir: str | None) -> list[str]:
    size = params_b(preset.base_model) or 0
    counted = {b: dataset_size(b, data_dir, limit=preset.eval_limit) for b in preset.benchmarks}
    counted[preset.train_set] = dataset_size(preset.train_set, data_dir, preset.train_filter, preset.train_limit)
    sizes = ", ".join(f"{b}={n} ({where})" for b, (n, where) in counted.items())
    return [
        "GPU hours on one H100 = (generated tokens / decode tok/s + trained tokens x 6 x params / (MFU x peak)) / 3600",
        f"decode {GEN_TOK_S.get(size, GEN_TOK_S[7.0] * 7.0 / max(size, 1e-9)):,.0f} tok/s for a {size}B model "
        f"(vLLM, large batch); MFU {MFU}; peak {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16",
        f"mean completion = {MEAN_COMPLETION_FRAC} x the run's max tokens (evaluation: "
        f"{MEAN_COMPLETION_FRAC * preset.eval.max_tokens:.0f}); prompt prefill ignored in generation; SFT examples "
        f"{PROMPT_TOKENS} prompt tokens + {MEAN_COMPLETION_FRAC} x max_len; zero-hit share {ZERO_HIT_FRAC}",
        "each run's tokens from its built config (the preset's composed method config + the plan's overrides); "
        f"a Frank-Wolfe step counts as a forward + input-gradient backward (2/3 of a trained token) over the gold and "
        f"the away row, each with the prefix (+{GOLD_TOKENS} gold tokens), i.e. as computed, not as useful; "
        "continuations in every arm sampled (K=0 control, discrete, latent unless Z stays a vertex); the matched "
        "baselines (resample, hint, guided-prefix) spend the same FTE on sampling",
        f"dataset sizes: {sizes}",
    ]
