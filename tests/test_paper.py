"""reproduce(): the plan (offline, reuse by config hash), the dry-run estimate, ablation checks, reuse."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from harness.store import Evaluation, Run, Sample, finish_run, get_or_create_run, open_db, session_scope
from repro import catalog, cost, pipeline, plan
from repro.presets import PAPER, TINY

FIVE_METHODS = ("base", "sft", "grpo", "lr-sft", "lr-grpo")


@pytest.fixture
def offline(monkeypatch):
    """Any hub access fails the test: planning must resolve nothing remotely."""
    import benchmarks.registry as registry

    def no_hub(*a, **k):
        raise AssertionError("the plan touched the hub")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("LATENTREVISE_DATA_DIR", raising=False)
    monkeypatch.setattr(registry, "_load_hub", no_hub)
    import repro.runs as runner

    monkeypatch.setattr(runner, "resolve_base_model", no_hub)


def test_paper_dry_run_prints_full_plan_offline(tmp_path, capsys, offline):
    db = tmp_path / "results.db"
    assert pipeline.reproduce(table="main", preset="paper", dry_run=True, db=str(db)) is None
    out = capsys.readouterr().out
    assert not db.exists()  # a dry run creates no database
    for m in FIVE_METHODS:
        assert re.search(rf"│ {re.escape(m)}\s+│ {re.escape(m)}\s+│.*│ run\s+│", out), f"{m} missing from plan:\n{out}"
    assert "error" not in out.lower()
    for b in PAPER.benchmarks:
        assert b in out
    assert "Qwen/Qwen2.5-Math-1.5B" in out
    total = float(re.search(r"estimate: ([\d.]+) GPU hours", out).group(1))
    assert total > 1.0
    assert "decode" in out and "MFU" in out and "math500=500 (published size (assumed))" in out


def test_estimate_formula():
    """Evaluation only (base): generated tokens / decode rate; 1.5B on the paper preset."""
    st = plan.Step("base", "base")
    est = cost.estimate_step(st, PAPER, data_dir=None)
    completion = cost.MEAN_COMPLETION_FRAC * PAPER.eval.max_tokens
    tokens = sum(cost.KNOWN_SIZES[b] * PAPER.eval.n_for(b) for b in PAPER.benchmarks) * completion
    assert est["eval_generated"] == pytest.approx(tokens)
    assert est["gpu_hours"] == pytest.approx(tokens / cost.GEN_TOK_S[1.5] / 3600)
    assert cost.estimate_step(st, TINY, data_dir=None) is None  # CPU preset: no GPU estimate


def test_local_data_dir_counts(data_dir):
    n, where = cost.dataset_size("math_train", str(data_dir), {"level": ["Level 3", "Level 4", "Level 5"]})
    assert n == 5586 and "counted" in where


def test_ablation_field_is_checked(monkeypatch):
    bogus = catalog.Ablation("bogus", "no_such_field", (1, 2), "nothing")
    monkeypatch.setitem(catalog.ABLATIONS, "bogus", bogus)
    with pytest.raises(ValueError, match="no_such_field.*does not exist"):
        plan.table_steps("ablation-bogus", TINY)
    with pytest.raises(KeyError, match="unknown ablation"):
        plan.table_steps("ablation-nope", TINY)
    with pytest.raises(ValueError, match="unknown table"):
        plan.table_steps("mian", TINY)


@pytest.mark.parametrize("name", sorted(catalog.ABLATIONS))
def test_every_ablation_field_exists(name):
    """The ablations name real LatentRevise config fields (fails until methods/latentrevise has them)."""
    steps = plan.table_steps(f"ablation-{name}", TINY)
    assert len([s for s in steps if s.method == catalog.LATENTREVISE_METHOD]) == len(catalog.ABLATIONS[name].values)


def _store_finished(factory, preset, method, benchmarks):
    """A finished run with exactly the config hash the plan computes, plus finished evaluations."""
    from repro.runs import base_model_identity, run_config

    config = ({**base_model_identity(preset), "preset": preset.name} if method == "base"
              else run_config(preset, method)[1])
    run, _ = get_or_create_run(factory, method=method, model=preset.base_model, preset=preset.name,
                               seed=preset.seed, config=config)
    finish_run(factory, run.id, checkpoint="/nowhere")
    n = preset.eval.n_for(benchmarks[0])
    with session_scope(factory) as s:
        for b in benchmarks:
            ev = Evaluation(run_id=run.id, benchmark=b, template=preset.eval.template,
                            sampling={"n": n, "temperature": preset.eval.temperature, "top_p": preset.eval.top_p,
                                      "max_tokens": preset.eval.max_tokens, "seed": preset.eval.seed},
                            grader={}, eval_hash=f"{b}", n_problems=4, status="finished")
            s.add(ev)
            s.flush()
            s.add_all(Sample(evaluation_id=ev.id, problem_id=str(i), sample_index=j, prompt="", completion="",
                             gold="", prompt_tokens=0, completion_tokens=0, finish_reason="stop", extracted=None,
                             correct=(i + j + len(method)) % 3 == 0, grading_ms=0.0)
                      for i in range(4) for j in range(n))
    return run.id


def test_second_invocation_reuses_everything(db_url, capsys, monkeypatch, offline):
    factory = open_db(db_url)
    for m in FIVE_METHODS:
        _store_finished(factory, TINY, m, list(TINY.benchmarks))
    steps = plan.plan_table("main", TINY, factory)
    assert [(s.method, s.action) for s in steps] == [(m, "reuse") for m in FIVE_METHODS]

    def boom(*a, **k):
        raise AssertionError("a reused plan must not train, evaluate or start a grader")

    import repro.execute as execute_mod
    import repro.runs as runner
    from harness.grading import Grader

    started = []

    class CountingGrader(Grader):  # the real execute runs; only grader starts are counted
        def __init__(self, *a, **k):
            started.append(1)
            super().__init__(*a, **k)

    for name in ("train_method", "evaluate_run", "base_run"):
        monkeypatch.setattr(runner, name, boom)
    monkeypatch.setattr(execute_mod, "Grader", CountingGrader)
    first = pipeline.reproduce(table="main", preset="tiny", db=db_url, fmt="json")
    out1 = capsys.readouterr().out
    second = pipeline.reproduce(table="main", preset="tiny", db=db_url, fmt="json")
    out2 = capsys.readouterr().out
    assert started == []  # a reused plan starts no grader (its worker processes)
    assert out1 == out2 and [r["method"] for r in json.loads(out1)["rows"]] == list(FIVE_METHODS)
    assert first.rows[0]["method"] == "base" and second.columns == first.columns


def test_missing_evaluation_is_planned(db_url, offline):
    factory = open_db(db_url)
    _store_finished(factory, TINY, "base", list(TINY.benchmarks[:2]))
    base = plan.plan_table("main", TINY, factory)[0]
    assert base.action == "evaluate" and TINY.benchmarks[2] in base.detail
    assert plan.plan_table("main", TINY, factory, fresh=True)[0].action == "run"


def test_fresh_base_run_replaces_the_stored_one(db_url, monkeypatch):
    import repro.runs as runner

    monkeypatch.setattr(runner, "resolve_base_model", lambda preset, progress=True: "/model")
    factory = open_db(db_url)
    first = runner.base_run(factory, TINY)
    with session_scope(factory) as s:
        s.add(Evaluation(run_id=first.id, benchmark="arith-easy", template="t", sampling={}, grader={},
                         eval_hash="x", n_problems=1, status="finished"))
    assert runner.base_run(factory, TINY).id == first.id  # reused
    fresh = runner.base_run(factory, TINY, fresh=True)
    with session_scope(factory) as s:
        assert s.query(Evaluation).count() == 0 and s.query(Run).count() == 1
    assert fresh.status == "finished" and fresh.checkpoint == "/model"


def test_all_tables_known():
    assert {s.method for s in plan.table_steps("main", TINY)} == set(FIVE_METHODS)
    assert [s.method for s in plan.table_steps("reference", PAPER)] == ["base"]
    assert plan.table_steps("reference", TINY) == []  # nothing published for the tiny model
    rescue = plan.table_steps("rescue", TINY)
    assert [s.method for s in rescue] == ["lr-sft", "resample", "hint", "guided-prefix"]
    assert not any(s.evaluate for s in rescue)
    assert rescue[0].overrides == {} and rescue[1].overrides == catalog.MINING_ONLY
    assert dataclasses.is_dataclass(plan.Step)


def test_a_failing_method_is_noted_and_the_rest_still_print(db_url, capsys, monkeypatch, offline):
    import harness.grading as grading
    import repro.runs as runner

    factory = open_db(db_url)
    for m in ("base", "sft", "lr-sft", "lr-grpo"):
        _store_finished(factory, TINY, m, list(TINY.benchmarks))

    class NoGrader:
        def close(self):
            pass

    def fail(factory, preset, method, **kw):
        raise RuntimeError(f"{method} exploded")

    monkeypatch.setattr(grading, "Grader", NoGrader)
    monkeypatch.setattr(runner, "train_method", fail)
    t = pipeline.reproduce(table="main", preset="tiny", db=db_url, fmt="markdown")
    out = capsys.readouterr()
    assert [r["method"] for r in t.rows] == ["base", "sft", "lr-sft", "lr-grpo"]
    assert "failed this invocation: grpo: RuntimeError: grpo exploded" in t.notes
    assert "grpo failed" in out.err and "| lr-grpo |" in out.out
    assert any(n.startswith("lr-grpo: baseline grpo has no row") for n in t.notes)


def test_paper_dry_run_json_matches_the_preset(tmp_path, capsys, offline):
    """`--preset paper --dry-run --format json`: methods, hashes, benchmarks, n per benchmark and token budgets
    as the preset says, every variant like for like with its baseline, the estimate with its assumptions."""
    db = tmp_path / "results.db"
    assert pipeline.reproduce(table="main", preset="paper", dry_run=True, fmt="json", db=str(db)) is None
    got = json.loads(capsys.readouterr().out)
    assert not db.exists()
    assert [r["method"] for r in got["runs"]] == list(FIVE_METHODS)
    assert [r["config_hash"] for r in got["runs"]] == [plan.run_hash(PAPER, m) for m in FIVE_METHODS]
    assert got["benchmarks"] == list(PAPER.benchmarks) and got["base_model"] == PAPER.base_model
    assert got["n_per_benchmark"] == {"math500": 4, "aime24": 32, "aime25": 32, "amc23": 32, "olympiadbench": 4}
    assert got["protocol"]["max_tokens"] == got["token_budgets"]["eval_max_tokens"] == 3072
    assert got["train"] == {"set": "math_train", "filter": {"level": ["Level 3", "Level 4", "Level 5"]},
                            "limit": None, "problems": 5586, "counted": "published size (assumed)"}
    runs = {r["method"]: r for r in got["runs"]}
    for m, base in (("lr-sft", "sft"), ("lr-grpo", "grpo")):
        b = runs[m]["budget"]
        assert b["baseline"] == base and b["differs"] == [] and b["n_shared"] > 10
        assert {k: v for k, v in b["fields"].items() if k in runs[base]["budget"]["fields"]} == \
            runs[base]["budget"]["fields"]
        assert b["fields"]["mine_max_tokens"] == b["fields"]["cont_max_tokens"] == 3072
    assert runs["grpo"]["config"]["max_tokens"] == runs["lr-grpo"]["config"]["max_tokens"] == 3072
    assert runs["lr-grpo"]["config"]["prompts_per_step"] == 128 and runs["lr-sft"]["config"]["max_len"] == 4096
    assert runs["base"]["config"] is None and runs["base"]["budget"] is None
    total = sum(r["estimate"]["gpu_hours"] for r in got["runs"])
    assert got["estimate"]["gpu_hours"] == pytest.approx(total) and total > 1.0
    assert any("built config" in a for a in got["estimate"]["assumptions"])
    assert "128 prompts x 8 rollouts x 768 tok" in runs["lr-grpo"]["estimate"]["how"]


def test_dry_run_prints_like_for_like_budgets(tmp_path, capsys, offline):
    pipeline.reproduce(table="main", preset="paper", dry_run=True, db=str(tmp_path / "r.db"))
    out = capsys.readouterr().out
    assert "budgets: each LatentRevise variant" in out
    for m, base in (("lr-sft", "sft"), ("lr-grpo", "grpo")):
        assert re.search(rf"│ {m}\s+│ {base}\s+│ .*max_\w+=\d+.*│ yes \(\d+ fields\)", out), out


def test_budgets_name_a_field_that_differs_from_the_baseline():
    st = plan.Step("lr-grpo", "lr-grpo")
    bad = PAPER.with_overrides(methods={**PAPER.methods, "lr-grpo": {**PAPER.methods["lr-grpo"], "max_tokens": 1024}})
    assert pipeline.budgets(st, bad)["differs"] == ["max_tokens"]
    # the plan's own overrides (an ablation's field, mining only) are deliberate, not a mismatch
    assert pipeline.budgets(plan.Step("x", "lr-sft", {"max_steps": 0}), PAPER)["differs"] == []


def test_lr_grpo_costs_grpo_plus_its_revisions():
    """Same budget as grpo when it revises nothing; the online revisions on top otherwise (no screening pass)."""
    from repro.runs import run_config

    grpo = cost.estimate_tokens("grpo", run_config(PAPER, "grpo")[0], 5586, 0.25)
    off = cost.estimate_tokens("lr-grpo", run_config(PAPER, "lr-grpo", {"revise_every": 0})[0], 5586, 0.25)
    on = cost.estimate_tokens("lr-grpo", run_config(PAPER, "lr-grpo")[0], 5586, 0.25)
    assert off[:2] == grpo[:2]
    cfg = run_config(PAPER, "lr-grpo")[0]
    revisions = cfg.steps * cfg.prompts_per_step * cost.ZERO_HIT_FRAC * cfg.failed_per_prompt
    length = 0.25 * cfg.max_tokens
    prefix = min(cfg.prefix_max_tokens, cfg.prefix_frac * length)
    away = min(cfg.away_max_tokens, length - prefix)
    # a Frank-Wolfe row token is 2/3 of a trained token (frozen weights); every continuation arm is counted
    assert on[1] - grpo[1] == pytest.approx(revisions * cfg.fw_steps * 2 * (prefix + cost.GOLD_TOKENS + away) * 2 / 3)
    assert on[0] - grpo[0] == pytest.approx(revisions * cost.continuation_arms(cfg) * cfg.cont_samples
                                            * (length - prefix))


def test_continuation_arms_and_matched_baselines():
    """The control arm is always sampled; the latent arm only when Z can leave a vertex; K=0 samples the control
    only; resample/hint/guided-prefix spend lr-sft's revision FTE on sampling and train nothing for it."""
    import dataclasses

    from methods.latentrevise.mining import LatentReviseConfig
    from methods.resample import MatchedRescueConfig

    vertex = LatentReviseConfig(step_rule="gap-topm", flip_gamma=1.0, cont_modes="both")
    assert cost.continuation_arms(vertex) == 2  # control + discrete (latent = discrete, deduplicated)
    assert cost.continuation_arms(dataclasses.replace(vertex, step_rule="harmonic")) == 3
    assert cost.continuation_arms(dataclasses.replace(vertex, fw_steps=0)) == 1
    assert cost.continuation_arms(dataclasses.replace(vertex, step_rule="harmonic", cont_modes="latent")) == 2
    lr, base = cost.TokenCount(), cost.TokenCount()
    cfg = LatentReviseConfig(step_rule="harmonic", fw_steps=2, prefix_frac=0.5, cont_samples=4, away_max_tokens=None)
    cost._revision_tokens(cfg, 10, 100, lr)
    fw = 10 * 2 * 2 * (50 + cost.GOLD_TOKENS + 50)
    assert lr.trained == pytest.approx(fw * 2 / 3) and lr.generated == pytest.approx(10 * 3 * 4 * 50)
    matched = MatchedRescueConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    cost._revision_tokens(matched, 10, 100, base)
    assert base.trained == 0 and base.generated == pytest.approx(10 * 3 * 4 * 50 + 2 * fw)
