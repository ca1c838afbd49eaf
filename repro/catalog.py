"""What the paper's tables contain: method lists, row order, baselines and the ablations, as data.

The planner (repro/plan.py), the table builders (repro/tables.py) and the score queries
(repro/scores.py) all read these, so changing a table's methods, its row order, a baseline or an
ablation's sweep is a one-line edit here. An ablation is one LatentRevise config field and the
values to sweep; `check_ablation` holds it against the config dataclass before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from repro.presets import Preset

MAIN_METHODS = ("sft", "grpo", "lr-sft", "lr-grpo")
RESCUE_METHODS = ("lr-sft", "resample", "hint", "guided-prefix")  # LatentRevise vs resample, hint, guided-prefix
LATENTREVISE_METHOD = "lr-sft"  # whose config the ablations vary
ROW_ORDER = ("base", *MAIN_METHODS)  # the paper's row order; other methods follow
BASELINE = {"lr-sft": "sft", "lr-grpo": "grpo"}  # everything else is compared with "base"


def baseline_of(method: str) -> str | None:
    """The method a row's deltas are measured against (None for the base model itself): BASELINE, else for a
    registered third-party method the LatentRevise variant of its declared family, else base."""
    from methods.registry import reference_method

    return (BASELINE.get(method) or reference_method(method) or "base") if method != "base" else None


@dataclass(frozen=True)
class Ablation:
    name: str
    field: str  # a field of the LatentRevise config dataclass
    values: tuple[Any, ...]
    what: str
    trains: bool = False  # True: each variant trains a model, so the table adds downstream accuracy


ABLATIONS: dict[str, Ablation] = {a.name: a for a in (
    Ablation("k", "fw_steps", (0, 1, 3, 10, 20), "number of Frank-Wolfe steps K (0: no revision, continue "
             "from the original prefix)"),
    Ablation("prefix", "prefix_frac", (0.25, 0.5, 0.75), "prefix length L, as a fraction of the failed rollout "
             "(L = clamp(round(prefix_frac x |y|), prefix_min_tokens, prefix_max_tokens))"),
    Ablation("loss", "loss_terms", ("gold", "away", "both"), "objective: toward-gold only, away-only, both"),
    Ablation("hull", "hull", (True, False), "convex-hull constraint (Frank-Wolfe) vs unconstrained normalized-"
             "gradient steps + nearest-token projection"),
    Ablation("prefix-mode", "train_prefix", ("discrete", "latent"), "training data continues from the discrete "
             "prefix p' or from the latent prefix", trains=True),
    # issue 13.5: the new mechanism's choices (methods/latentrevise/core.py documents each value's effect on p')
    Ablation("step-rule", "step_rule", ("gap-topm", "gcg", "harmonic", "const"), "Frank-Wolfe step rule (gap-topm: "
             "the largest-gap positions move; gcg: true-objective single flips; harmonic / const: every position)"),
    Ablation("discretize", "discretize", ("max-weight", "nearest", "sample"), "how p' is read off Z (heaviest "
             "vertex, nearest embedding row, or sampled from the convex weights)"),
    Ablation("objective", "objective", ("gold-after-prefix", "gold-in-rollout", "self-contrast", "fluency"),
             "revision objective (core.py: the two gradients of each)"),
    Ablation("keep-best", "keep_best", (True, False), "return the iterate with the lowest objective among 0..K "
             "(True) or the K-th (False)"),
    Ablation("away-weight", "away_weight", (0.0, 0.5, 1.0, 2.0), "weight of the away term (0: toward only)"),
)}
# Ablations that do not train measure rescue only: lr-sft mines and revises, then takes 0 SFT steps.
MINING_ONLY = {"max_steps": 0}
# Extra overrides per preset that keep every ablation variant cheap (a subset of the training prompts).
ABLATION_BUDGET: dict[str, dict[str, Any]] = {"tiny": {"mine_prompts": 128}, "tiny-smoke": {"mine_prompts": 32}}


def ablation_overrides(abl: Ablation, preset: Preset) -> dict[str, Any]:
    """What every variant of `abl` sets besides the ablated field."""
    return {**ABLATION_BUDGET.get(preset.name, {}), **({} if abl.trains else MINING_ONLY)}


def ablation(name: str) -> Ablation:
    if name not in ABLATIONS:
        raise KeyError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
    return ABLATIONS[name]


def check_ablation(abl: Ablation, method: str = LATENTREVISE_METHOD) -> None:
    """Fail before running anything when the LatentRevise config has no such field."""
    from methods.registry import get_method

    cls = get_method(method).config_cls
    names = {f.name for f in dataclasses.fields(cls)}
    if abl.field not in names:
        raise ValueError(f"ablation {abl.name!r} varies {cls.__module__}.{cls.__name__}.{abl.field}, which does "
                         f"not exist; fields: {', '.join(sorted(names))} (fix ABLATIONS in repro/catalog.py)")
