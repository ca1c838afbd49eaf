"""Presets compose: every table's methods have an entry, each LatentRevise variant and rescue baseline equals
its baseline on every shared field, mining follows the generation budget, and the rehearsal is the paper
preset with budgets cut."""

from __future__ import annotations

import dataclasses

import pytest

from methods.registry import available_methods
from repro import catalog
from repro.presets import CONFIG_BASE, GEN_FIELDS, PAPER, PAPER_REHEARSAL, PRESETS, TINY, MethodParts, derive
from repro.runs import run_config

TABLE_METHODS = sorted({*catalog.MAIN_METHODS, *catalog.RESCUE_METHODS, catalog.LATENTREVISE_METHOD})


def _fields(cfg) -> set[str]:
    return {f.name for f in dataclasses.fields(cfg)}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_table_method_has_an_entry_and_equals_its_baseline_on_shared_fields(name):
    preset = PRESETS[name]
    registered = available_methods()
    assert set(TABLE_METHODS) <= set(preset.methods), f"{name}: no entry for {set(TABLE_METHODS) - set(preset.methods)}"
    for method in TABLE_METHODS:
        assert method in ("sft", "grpo") or method in CONFIG_BASE, f"{method} composes from no baseline"
    # a composed method not registered in this checkout (guided-prefix lands with its branch) is checked once it is
    checked = [m for m in preset.methods if m in CONFIG_BASE and m in registered]
    assert set(TABLE_METHODS) - {"sft", "grpo"} <= set(checked)
    for method in checked:
        base = CONFIG_BASE[method]
        cfg, ref = run_config(preset, method)[0], run_config(preset, base)[0]
        shared = _fields(cfg) & _fields(ref)
        assert shared == _fields(ref), f"{method} lacks some of {base}'s fields"
        differs = {f: (getattr(cfg, f), getattr(ref, f)) for f in shared if getattr(cfg, f) != getattr(ref, f)}
        assert not differs, f"{name}: {method} differs from {base} on {differs}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_mining_and_continuations_stop_at_the_generation_budget(name):
    """A truncated mining rollout must not count as a zero-hit failure: mining stops where GRPO and evaluation stop."""
    preset = PRESETS[name]
    grpo = run_config(preset, "grpo")[0]
    assert grpo.max_tokens == preset.eval.max_tokens == preset.parts.gen_tokens
    for method in ("lr-sft", "lr-grpo", "resample", "hint"):
        cfg = run_config(preset, method)[0]
        assert [getattr(cfg, f) for f in GEN_FIELDS] == [preset.eval.max_tokens] * len(GEN_FIELDS), (name, method)


def test_paper_variants_use_the_paper_budgets():
    """The numbers the issue found wrong (lr-grpo at 64 prompts / 1024 tokens, lr-sft at max_len 2048)."""
    lr_grpo, lr_sft = run_config(PAPER, "lr-grpo")[0], run_config(PAPER, "lr-sft")[0]
    assert (lr_grpo.prompts_per_step, lr_grpo.max_tokens, lr_grpo.micro_batch_size) == (128, 3072, 8)
    assert (lr_sft.max_len, lr_sft.heldout_frac) == (4096, 0.02)
    assert (lr_sft.mine_max_tokens, lr_sft.cont_max_tokens) == (3072, 3072)


def test_a_variant_cannot_override_its_baseline():
    parts = dataclasses.replace(TINY.parts, own={"lr-sft": {"lr": 1.0}})
    with pytest.raises(ValueError, match="lr-sft: lr would override its baseline sft"):
        parts.compose()
    with pytest.raises(ValueError, match="would override its baseline grpo"):
        dataclasses.replace(TINY.parts, lr_grpo={"steps": 3}).compose()
    with pytest.raises(ValueError, match="unknown method part"):
        TINY.parts.cut(sfft={"epochs": 1})


def test_derive_cuts_and_recomposes():
    parts = TINY.parts.cut(48, sft={"epochs": 1}, grpo={"steps": 2, "max_tokens": 48})
    p = derive(TINY, "t2", parts)
    assert p.methods["lr-sft"]["epochs"] == 1 and p.methods["lr-grpo"]["steps"] == 2
    assert p.methods["lr-sft"]["mine_max_tokens"] == 48 == p.methods["lr-grpo"]["cont_max_tokens"]
    assert TINY.methods["lr-sft"]["epochs"] == 4  # the base preset is untouched
    with pytest.raises(ValueError, match="no method parts"):
        derive(dataclasses.replace(TINY, parts=None), "t3")


# the fields the rehearsal cuts (budgets) or must change to run on a CPU; everything else is the paper's
REHEARSAL_CUTS = {
    "preset": {"name", "base_model", "train_limit", "eval", "methods", "parts", "eval_limit", "device", "vllm",
               "label"},
    "eval": {"max_tokens", "n_default", "n_per_benchmark", "pass_k"},
    "sft": {"epochs", "batch_size", "micro_batch_size"},
    "grpo": {"steps", "prompts_per_step", "max_tokens", "save_every", "mine_max_tokens", "cont_max_tokens"},
    "mining": {"mine_max_tokens", "cont_max_tokens"},
}


def _diff(a, b) -> set[str]:
    return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}


def test_the_rehearsal_is_the_paper_preset_with_budgets_cut():
    assert _diff(PAPER_REHEARSAL, PAPER) <= REHEARSAL_CUTS["preset"]
    assert _diff(PAPER_REHEARSAL.eval, PAPER.eval) <= REHEARSAL_CUTS["eval"]
    assert set(PAPER_REHEARSAL.eval.n_per_benchmark) == set(PAPER.eval.n_per_benchmark)  # same structure
    assert (PAPER_REHEARSAL.train_set, PAPER_REHEARSAL.train_filter, PAPER_REHEARSAL.benchmarks,
            PAPER_REHEARSAL.eval.template) == (PAPER.train_set, PAPER.train_filter, PAPER.benchmarks, "qwen25-math-cot")
    assert set(PAPER_REHEARSAL.methods) == set(PAPER.methods)
    for method in PAPER.methods:
        if method not in available_methods():
            continue
        assert set(PAPER_REHEARSAL.methods[method]) == set(PAPER.methods[method]), method  # same structure
        cut = REHEARSAL_CUTS["sft" if CONFIG_BASE.get(method, method) == "sft" else "grpo"] | REHEARSAL_CUTS["mining"]
        differs = _diff(run_config(PAPER_REHEARSAL, method)[0], run_config(PAPER, method)[0])
        assert differs <= cut, f"{method}: the rehearsal changes {differs - cut}"


def test_parts_are_plain_dicts_of_real_fields():
    """Every part's keys are fields of the configs they go into (a typo fails here, not on a GPU node)."""
    for preset in PRESETS.values():
        assert isinstance(preset.parts, MethodParts)
        for method in preset.methods:
            if method in available_methods():
                run_config(preset, method)  # build_config rejects unknown keys
