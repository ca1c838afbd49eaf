"""Named GRPO recipes: the structural settings of a published training run, each field with its source.

Why: the paper preset's `inner_updates=1` took one optimizer step per 128 x 8 rollout batch, ~8x fewer
than Dr. GRPO's recipe, and its objective differed from the cited recipes without saying so (issue
15.2-3). A recipe fixes what makes a run "the same algorithm": optimizer steps per rollout batch
(mini-batches x epochs), advantage and loss normalization, the truncation rule, KL / entropy terms,
importance-sampling correction, dynamic sampling, overlong shaping. Scale (prompts per step, group
size, max_tokens, lr, steps) stays with the preset.

    GRPOConfig(recipe="dr-grpo", prompts_per_step=128, group_size=8, max_tokens=3000)

`GRPOConfig.__post_init__` applies the recipe to every field that still holds its class default; a
field the caller set to another value wins (and is visible in the run's config, hence its hash).

Sources (snapshots read for this file; paths are inside each repository):
  dr-grpo       sail-sg/understand-r1-zero: README.md + examples/qwen2.5-math-1.5b.sh (train_zero_math.py
                flags), train_zero_math.py (reward 0 when no eos; `masked_sum(..., constant_normalizer=
                generate_max_length)`; advantage `rewards - values` without std), and sail-sg/oat
                oat/algorithms/ppo.py (cliprange 0.2, `tis_c` default 2.0, token-level truncated IS).
  simplerl-zoo  hkust-nlp/simpleRL-reason: README.md (Qwen-2.5 0.5B-14B: `--train_batch_size 1024
                --rollout_n 8 --kl_loss_coef 0.0001 --entropy_coeffient 0.001`), train_grpo_math_tune_ray.sh
                (PPO_MINI_BATCH_SIZE=256, CLIP_RATIO=0.2, KL_LOSS_TYPE="low_var_kl"),
                verl/trainer/ppo/core_algos.py (GRPO advantage `(score - mean) / (std + 1e-6)`, torch.std),
                verl/workers/actor/dp_actor.py (`pg_loss - entropy_loss * entropy_coeff`, masked means).
  dapo          volcengine/verl: docs/algo/dapo.md (clip_ratio_low 0.2 / high 0.28, `filter_groups` with
                max_num_gen_batches 10, gen_batch_size 1536 / train_batch_size 512, loss_agg_mode
                token-mean, overlong_buffer len 4096 of max_response_length 20480, penalty_factor 1.0),
                examples/gmpo_trainer/test_dapo_7b_math.sh (train_prompt_bsz=512, train_prompt_mini_bsz=32,
                kl_coef=0.0, use_kl_loss=False, entropy_coeff=0).
  trl-default   huggingface/trl: trl/trainer/grpo_config.py defaults (loss_type "dapo", scale_rewards
                "group", beta 0.0, num_iterations 1, epsilon 0.2, epsilon_high None -> epsilon,
                steps_per_generation None -> gradient_accumulation_steps, mask_truncated_completions False,
                vllm_importance_sampling_correction True, mode "sequence_mask", clip_max 3.0),
                trl/trainer/grpo_trainer.py (`advantages / (std_rewards + 1e-4)`).

Known deviations, stated rather than hidden:
  - simplerl-zoo: verl of that fork takes a token mean per micro-batch (2 sequences per GPU) and
    averages micro-batches; here the token mean is over the whole mini-batch ("dapo" aggregation),
    identical when micro-batches hold equal token counts.
  - dapo: the overlong buffer is 4096 / 20480 = 1/5 of max_tokens, so it scales with the preset's
    max_tokens; dynamic sampling refills from further prompts, at most 10 generation batches.
  - trl-default: TRL's "dapo" normalizer counts the active tokens of the whole generation batch
    across processes; here of the rollout batch on this process (one process on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # "repo: path (field)"


RECIPES: dict[str, dict[str, Setting]] = {
    "dr-grpo": {
        "advantage": Setting("drgrpo", "understand-r1-zero: train_zero_math.py (critic_type drgrpo: no std, "
                                       "masked_sum / generate_max_length)"),
        "inner_updates": Setting(8, "understand-r1-zero: examples/qwen2.5-math-1.5b.sh (rollout_batch_size 128 x "
                                    "num_samples 8 / train_batch_size 128)"),
        "epochs": Setting(1, "understand-r1-zero: examples/qwen2.5-math-1.5b.sh (num_ppo_epochs 1)"),
        "truncated_reward": Setting("zero", "understand-r1-zero: train_zero_math.py (no_eos -> reward = 0)"),
        "kl_coef": Setting(0.0, "understand-r1-zero: examples/qwen2.5-math-1.5b.sh (beta 0)"),
        "entropy_coef": Setting(0.0, "oat: oat/algorithms/ppo.py (no entropy term in the PG loss)"),
        "clip_low": Setting(0.2, "oat: oat/algorithms/ppo.py (cliprange 0.2)"),
        "clip_high": Setting(0.2, "oat: oat/algorithms/ppo.py (one symmetric cliprange)"),
        "tis_mode": Setting("token_truncate", "oat: oat/algorithms/ppo.py (tis = exp(logps - actor_logps)"
                                              ".clamp(max=tis_c))"),
        "tis_cap": Setting(2.0, "oat: oat/algorithms/ppo.py (tis_c default 2.0)"),
    },
    "simplerl-zoo": {
        "advantage": Setting("dapo", "simpleRL-reason: verl/trainer/ppo/core_algos.py ((score - mean) / (std + "
                                     "eps)) + verl_F.masked_mean token aggregation"),
        "adv_eps": Setting(1e-6, "simpleRL-reason: verl/trainer/ppo/core_algos.py (epsilon 1e-6)"),
        "inner_updates": Setting(4, "simpleRL-reason: README.md (--train_batch_size 1024) / "
                                    "train_grpo_math_tune_ray.sh (PPO_MINI_BATCH_SIZE=256)"),
        "epochs": Setting(1, "simpleRL-reason: verl/trainer/config/ppo_trainer.yaml (ppo_epochs: 1)"),
        "truncated_reward": Setting("keep", "simpleRL-reason: reward function scores every response"),
        "kl_coef": Setting(1e-4, "simpleRL-reason: README.md (kl_loss_coef=1e-4 for 0.5B-14B models, low_var_kl)"),
        "entropy_coef": Setting(1e-3, "simpleRL-reason: README.md (--entropy_coeffient 0.001)"),
        "clip_low": Setting(0.2, "simpleRL-reason: train_grpo_math_tune_ray.sh (CLIP_RATIO=0.2)"),
        "clip_high": Setting(0.2, "simpleRL-reason: verl/trainer/ppo/core_algos.py (symmetric cliprange)"),
        "tis_mode": Setting("off", "simpleRL-reason: no importance-sampling correction in its verl fork"),
    },
    "dapo": {
        "advantage": Setting("dapo", "verl: docs/algo/dapo.md (loss_agg_mode token-mean, GRPO advantage)"),
        "inner_updates": Setting(16, "verl: examples/gmpo_trainer/test_dapo_7b_math.sh (train_prompt_bsz=512 / "
                                     "train_prompt_mini_bsz=32)"),
        "epochs": Setting(1, "verl: verl/trainer/config/actor/actor.yaml (ppo_epochs: 1)"),
        "truncated_reward": Setting("keep", "verl: docs/algo/dapo.md (overlong filtering not used; shaping instead)"),
        "kl_coef": Setting(0.0, "verl: examples/gmpo_trainer/test_dapo_7b_math.sh (kl_coef=0.0, use_kl_loss=False)"),
        "entropy_coef": Setting(0.0, "verl: examples/gmpo_trainer/test_dapo_7b_math.sh (entropy_coeff=0)"),
        "clip_low": Setting(0.2, "verl: docs/algo/dapo.md (clip_ratio_low: 0.2)"),
        "clip_high": Setting(0.28, "verl: docs/algo/dapo.md (clip_ratio_high: 0.28)"),
        "dynamic_sampling": Setting(True, "verl: docs/algo/dapo.md (filter_groups.enable, metric acc)"),
        "max_gen_batches": Setting(10, "verl: docs/algo/dapo.md (max_num_gen_batches: 10)"),
        "overlong_buffer_frac": Setting(0.2, "verl: docs/algo/dapo.md (overlong_buffer.len 4096 / "
                                             "max_response_length 20480)"),
        "overlong_penalty": Setting(1.0, "verl: docs/algo/dapo.md (penalty_factor: 1.0)"),
        "tis_mode": Setting("off", "verl: docs/algo/dapo.md (no rollout importance sampling in DAPO)"),
    },
    "trl-default": {
        "advantage": Setting("dapo", "trl: trl/trainer/grpo_config.py (loss_type='dapo', scale_rewards='group')"),
        "adv_eps": Setting(1e-4, "trl: trl/trainer/grpo_trainer.py (advantages / (std_rewards + 1e-4))"),
        "inner_updates": Setting(1, "trl: trl/trainer/grpo_config.py (steps_per_generation None -> "
                                    "gradient_accumulation_steps: one optimizer step per generation batch)"),
        "epochs": Setting(1, "trl: trl/trainer/grpo_config.py (num_iterations=1)"),
        "truncated_reward": Setting("keep", "trl: trl/trainer/grpo_config.py (mask_truncated_completions=False)"),
        "kl_coef": Setting(0.0, "trl: trl/trainer/grpo_config.py (beta=0.0)"),
        "entropy_coef": Setting(0.0, "trl: trl/trainer/grpo_trainer.py (no entropy bonus)"),
        "clip_low": Setting(0.2, "trl: trl/trainer/grpo_config.py (epsilon=0.2)"),
        "clip_high": Setting(0.2, "trl: trl/trainer/grpo_config.py (epsilon_high=None -> epsilon)"),
        "tis_mode": Setting("sequence_mask", "trl: trl/trainer/grpo_config.py (vllm_importance_sampling_mode="
                                             "'sequence_mask')"),
        "tis_cap": Setting(3.0, "trl: trl/trainer/grpo_config.py (vllm_importance_sampling_clip_max=3.0)"),
    },
}

RECIPE_NAMES = ("none", *RECIPES)


def apply_recipe(cfg: Any, defaults: dict[str, Any]) -> None:
    """Set `cfg.recipe`'s fields on `cfg` where the field still holds its class default (`defaults`)."""
    if cfg.recipe == "none":
        return
    for name, setting in RECIPES[cfg.recipe].items():
        if getattr(cfg, name) == defaults[name]:
            setattr(cfg, name, setting.value)


def describe(name: str) -> list[tuple[str, Any, str]]:
    """(field, value, source) rows of a recipe, for docs and logs."""
    return [(k, s.value, s.source) for k, s in RECIPES[name].items()]
