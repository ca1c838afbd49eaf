"""Table assembly from a results.db filled with synthetic rows (no model, no engine).

Accuracies are chosen so that every number in the table is known in advance: which cells are
blank, which deltas are significant, what the paired test's p-value is.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import IntegrityError

from harness.store import (
    Evaluation,
    Revision,
    Run,
    Sample,
    TrainStep,
    config_hash,
    get_or_create_run,
    open_db,
    session_scope,
)
from repro.presets import TINY
from repro.render import FORMATS, render
from repro.scores import rescue_points
from repro.tables import ablation_table, leaderboard, main_table, rescue_table

BENCHES = TINY.benchmarks  # arith-easy, arith-medium, arith-hard; n = 8 samples per problem
N_PROBLEMS = 20
T0 = datetime(2025, 1, 1)


def add_run(factory, method: str, *, status: str = "finished", config: dict | None = None, minutes: int = 0,
            preset: str = "tiny", error: str | None = None) -> int:
    config = config or {"method": method}
    with session_scope(factory) as s:
        run = Run(method=method, model="tiny", preset=preset, seed=0, config=config,
                  config_hash=config_hash({"preset": preset, **config}),
                  status=status, error=error, checkpoint="/nowhere", started_at=T0,
                  finished_at=T0 + timedelta(minutes=minutes) if status == "finished" else None)
        s.add(run)
        s.flush()
        return run.id


def add_eval(factory, run_id: int, benchmark: str, correct: list[list[bool]], template: str = "tiny-boxed") -> int:
    """One finished evaluation; correct[i][j] is sample j of problem i."""
    n = len(correct[0])
    with session_scope(factory) as s:
        ev = Evaluation(run_id=run_id, benchmark=benchmark, template=template,
                        sampling={"n": n, "temperature": TINY.eval.temperature, "top_p": TINY.eval.top_p,
                                  "max_tokens": TINY.eval.max_tokens, "seed": 0},
                        grader={"name": "math-verify"}, eval_hash=f"h-{run_id}-{benchmark}-{template}",
                        n_problems=len(correct), status="finished", finished_at=T0)
        s.add(ev)
        s.flush()
        s.execute(insert(Sample), [dict(evaluation_id=ev.id, problem_id=f"{benchmark}-{i}", sample_index=j,
                                        prompt="p", completion="c", gold="1", prompt_tokens=1, completion_tokens=1,
                                        finish_reason="stop", extracted="1", correct=ok, grading_ms=0.0)
                                   for i, row in enumerate(correct) for j, ok in enumerate(row)])
        return ev.id


def matrix(hits_per_problem: list[int], n: int = 8) -> list[list[bool]]:
    return [[j < h for j in range(n)] for h in hits_per_problem]


@pytest.fixture
def factory(db_url):
    return open_db(db_url)


@pytest.fixture
def filled(factory):
    """base 2/8 everywhere; sft 4/8; lr-sft 8/8 (far above sft); grpo 4/8 but no arith-hard; lr-grpo = grpo;
    a failed hint run; two sft configs (the later one shown)."""
    ids = {}
    for method, hits, minutes in (("base", 2, 1), ("sft", 4, 3), ("lr-sft", 8, 4), ("grpo", 4, 5), ("lr-grpo", 4, 6)):
        ids[method] = add_run(factory, method, minutes=minutes)
        for b in BENCHES:
            if method == "grpo" and b == "arith-hard":
                continue
            add_eval(factory, ids[method], b, matrix([hits] * N_PROBLEMS))
    ids["sft-old"] = add_run(factory, "sft", config={"method": "sft", "lr": 1}, minutes=2)
    for b in BENCHES:
        add_eval(factory, ids["sft-old"], b, matrix([0] * N_PROBLEMS))
    ids["hint"] = add_run(factory, "hint", status="failed", error="RuntimeError: out of memory")
    return ids


def cell(table, method: str, col_prefix: str):
    row = next(r for r in table.rows if r["method"] == method)
    col = next(c for c in table.columns if c.startswith(col_prefix))
    return row.get(col)


def test_main_table_rows_blanks_and_notes(factory, filled):
    t = main_table(factory, TINY)
    assert [r["method"] for r in t.rows] == ["base", "sft", "grpo", "lr-sft", "lr-grpo"]
    assert cell(t, "base", "arith-easy").values["avg"] == pytest.approx(0.25)
    assert cell(t, "lr-sft", "arith-hard").values["avg"] == pytest.approx(1.0)
    assert cell(t, "grpo", "arith-hard") is None and cell(t, "grpo", "average") is None  # missing benchmark
    assert any("grpo: no evaluation on arith-hard" in n for n in t.notes)
    assert any("hint" in n and "failed" in n and "out of memory" in n for n in t.notes)  # failed run: noted
    assert not any(r["method"] == "hint" for r in t.rows)
    # two sft configs: the latest finished is shown (4/8, not the older 0/8), and that is noted
    assert cell(t, "sft", "arith-easy").values["avg"] == pytest.approx(0.5)
    assert any(n.startswith("sft: 2 finished runs") for n in t.notes)
    # ... unless the caller prefers a config hash (what reproduce.py does with the preset's config)
    with session_scope(factory) as s:
        old_hash = s.get(Run, filled["sft-old"]).config_hash
    t2 = main_table(factory, TINY, prefer={"sft": old_hash})
    assert cell(t2, "sft", "arith-easy").values["avg"] == pytest.approx(0.0)


def test_pass_at_k_and_ci(factory, filled):
    c = cell(main_table(factory, TINY), "base", "arith-easy")
    # 2 of 8 correct on every problem: pass@4 = 1 - C(6,4)/C(8,4) = 1 - 15/70, pass@8 = 1
    assert c.values["pass@4"] == pytest.approx(1 - 15 / 70)
    assert c.values["pass@8"] == pytest.approx(1.0)
    assert c.values["ci_lo"] == pytest.approx(0.25) and c.values["ci_hi"] == pytest.approx(0.25)  # no variance


def test_deltas_baselines_and_significance(factory, filled):
    t = main_table(factory, TINY)
    lr = cell(t, "lr-sft", "arith-easy")
    assert lr.values["baseline"] == "sft" and lr.values["delta"] == pytest.approx(0.5)
    assert lr.values["p"] < 0.05 and "+50.0*" in lr.text
    tie = cell(t, "lr-grpo", "arith-easy")
    assert tie.values["baseline"] == "grpo" and tie.values["delta"] == pytest.approx(0.0)
    assert tie.values["p"] > 0.5 and "*" not in tie.text
    assert cell(t, "grpo", "arith-easy").values["baseline"] == "base"
    assert "baseline" not in cell(t, "base", "arith-easy").values
    # average: macro mean over the three benchmarks, compared with sft's average
    avg = cell(t, "lr-sft", "average")
    assert avg.values["avg"] == pytest.approx(1.0) and avg.values["delta"] == pytest.approx(0.5)


def test_paired_p_value_known_case(factory):
    """9 of 10 problems +1/8 better, 1 problem -1/8 worse: the exact two-sided sign-flip p-value is
    P(|sum of 10 random signs| >= 8) = 2 * (1 + 10) / 1024 (exact: 10 problems <= 16)."""
    a = add_run(factory, "sft", minutes=1)
    b = add_run(factory, "lr-sft", minutes=2)
    for bench in BENCHES:
        add_eval(factory, a, bench, matrix([4] * 10))
        add_eval(factory, b, bench, matrix([5] * 9 + [3]))
    p = cell(main_table(factory, TINY), "lr-sft", "arith-easy").values["p"]
    assert p == pytest.approx(22 / 1024)


def test_same_config_is_one_row(factory):
    cfg = {"lr": 1e-5}
    r1, reused1 = get_or_create_run(factory, method="sft", model="tiny", preset="tiny", seed=0, config=cfg)
    with session_scope(factory) as s:
        s.get(Run, r1.id).status = "finished"
    r2, reused2 = get_or_create_run(factory, method="sft", model="tiny", preset="tiny", seed=0, config=cfg)
    assert (r1.id, reused1, reused2) == (r2.id, False, True)
    with pytest.raises(IntegrityError):  # the unique (method, config_hash) constraint
        with session_scope(factory) as s:
            s.add(Run(method="sft", model="tiny", preset="tiny", seed=0, config=cfg, config_hash=r1.config_hash))
    for bench in BENCHES:
        add_eval(factory, r1.id, bench, matrix([3] * 5))
    assert [r["method"] for r in main_table(factory, TINY).rows] == ["sft"]


def test_other_protocol_is_not_mixed_in(factory):
    rid = add_run(factory, "base")
    add_eval(factory, rid, "arith-easy", matrix([8] * 5), template="plain")
    t = main_table(factory, TINY)
    assert t.rows == [] and any("no finished evaluation under the preset's protocol" in n for n in t.notes)


def test_every_format(factory, filled):
    t = main_table(factory, TINY)
    assert set(FORMATS) == {"rich", "csv", "json", "markdown"}
    rows = list(csv.DictReader(io.StringIO(render(t, "csv"))))
    lr = next(r for r in rows if r["method"] == "lr-sft")
    assert float(lr["arith-easy (n=8).p"]) < 0.05 and float(lr["arith-easy (n=8).delta"]) == pytest.approx(0.5)
    data = json.loads(render(t, "json"))
    assert data["columns"] == t.columns and len(data["rows"]) == 5 and data["notes"] == t.notes
    assert data["rows"][3]["arith-hard (n=8)"]["p"] == pytest.approx(lr_p := float(lr["arith-hard (n=8).p"]))
    assert lr_p < 0.05
    md = render(t, "markdown").splitlines()
    assert md[2].startswith("| method | run | arith-easy (n=8)") and sum(ln.startswith("| ") for ln in md) == 6
    rich = render(t, "rich")
    assert "lr-grpo" in rich and "+50.0*" in rich and "Main results" in rich
    with pytest.raises(ValueError, match="unknown format"):
        render(t, "xlsx")


def test_leaderboard_one_row_per_model_method(factory, filled):
    other = add_run(factory, "sft", preset="paper")
    add_eval(factory, other, "math500", matrix([1] * 4, n=4), template="qwen-boxed")
    t = leaderboard(factory)
    keys = [(r["method"], r["preset"]) for r in t.rows]
    assert len(keys) == len(set(keys)) and ("sft", "paper") in keys and ("sft", "tiny") in keys
    assert "math500" in t.columns and "average" in t.columns
    tiny_sft = next(r for r in t.rows if r["method"] == "sft" and r["preset"] == "tiny")
    assert tiny_sft["arith-easy"].values["avg"] == pytest.approx(0.5)  # the latest finished sft run
    assert "math500" not in tiny_sft and "average" not in tiny_sft  # no average over a partial row
    only = leaderboard(factory, benchmarks=["arith-easy"])
    assert only.columns[-2:] == ["arith-easy", "average"]


# --------------------------------------------------------------------------------------------
# rescue and ablation tables
# --------------------------------------------------------------------------------------------

def rescue(source: str, prompts: int, zero_hit: int, rescued: int, fte: float, trajectories: int = 0,
           len_before: float = 30.0, len_after: float = 40.0) -> dict:
    """What methods/latentrevise/mining.py:rescue_stats logs for one mining round."""
    return {"source": source, "n_prompts": prompts, "n_zero_hit": zero_hit, "n_rescued": rescued,
            "n_rescued_clean": rescued, "fte_total": fte, "n_trajectories": trajectories, "len_before": len_before,
            "len_after": len_after, "markers_before": {"wait": 0.5, "check": 0.0, "verify": 0.0},
            "markers_after": {"wait": 1.0, "check": 0.5, "verify": 0.5}, "wall_s": 4.0, "rescue_rate": 0.0}


def add_mining(factory, run_id: int, stats: dict | None, step: int = 0) -> None:
    with session_scope(factory) as s:
        s.add(TrainStep(run_id=run_id, phase="mining", step=step, zero_hit_ids=["p0"],
                        extra=None if stats is None else {"rescue": stats}))


def add_revision(factory, run_id: int, pid: str, rescued: bool, fw_steps: int = 4, prefix_len: int = 8) -> None:
    with session_scope(factory) as s:
        s.add(Revision(run_id=run_id, problem_id=pid, prompt="x", gold="1", failed_rollout="2 + 2 = 5",
                       prefix_len=prefix_len, fw_steps=fw_steps, config={}, gold_loss=[3.0, 2.0, 1.0],
                       away_loss=[0.5, 0.7, 0.9], top_tokens=[], discrete_prefix="2 + 2", wall_s=1.5,
                       peak_mem_mb=None, rescued=rescued, leakage=False,
                       continuations=[{"text": "2 + 2 = 4", "mode": "latent", "correct": rescued}]))


@pytest.fixture
def rescue_db(factory):
    lr = add_run(factory, "lr-sft", config={"method_config": {"fw_steps": 4}})
    add_mining(factory, lr, rescue("latentrevise", 100, 4, 2, 1000.0, trajectories=6))
    for pid, ok in (("p0", True), ("p1", False), ("p2", False), ("p2", True), ("p3", False)):
        add_revision(factory, lr, pid, ok)
    grpo = add_run(factory, "lr-grpo", config={"method_config": {"fw_steps": 2}})  # online: two mining rounds
    add_mining(factory, grpo, rescue("latentrevise", 50, 10, 5, 500.0, 5, len_before=10.0, len_after=20.0), step=0)
    add_mining(factory, grpo, rescue("latentrevise", 50, 30, 5, 1500.0, 15, len_before=30.0, len_after=40.0), step=1)
    rs = add_run(factory, "resample")
    add_mining(factory, rs, rescue("resample", 100, 4, 1, 4000.0, trajectories=1))
    hint = add_run(factory, "hint")
    add_mining(factory, hint, rescue("hint", 100, 4, 0, 800.0))
    return {"lr-sft": lr, "lr-grpo": grpo, "resample": rs, "hint": hint}


def test_rescue_table(factory, rescue_db):
    t = rescue_table(factory, TINY, methods=["lr-sft", "resample", "hint"])
    rows = {r["method"]: r for r in t.rows}
    assert list(rows) == ["lr-sft", "lr-grpo", "hint", "resample"]  # paper order first, others by name
    lr, og, rs, hint = rows["lr-sft"], rows["lr-grpo"], rows["resample"], rows["hint"]
    assert (lr["zero-hit"], lr["rescued"], lr["source"]) == (4, 2, "latentrevise")
    assert lr["rescue rate"].values["rate"] == pytest.approx(0.5)
    assert lr["FTE / rescued"].values["fte"] == pytest.approx(500.0) and lr["s / rescued"] == 2.0
    assert (lr["markers before"], lr["markers after"]) == (0.5, 2.0)
    # two rounds: counts add up, lengths are weighted by the prompts / trajectories behind them
    assert (og["prompts screened"], og["zero-hit"], og["rescued"]) == (100, 40, 10)
    assert og["FTE / rescued"].values["fte"] == pytest.approx(200.0)
    assert og["length before"] == pytest.approx((10 * 10 + 30 * 30) / 40)
    assert og["length after"] == pytest.approx((20 * 5 + 40 * 15) / 20)
    assert rs["rescue rate"].values["rate"] == pytest.approx(0.25) and rs["FTE / rescued"].values["fte"] == 4000.0
    assert hint["rescued"] == 0 and "FTE / rescued" not in hint and hint["rescue rate"].values["ci_hi"] == 0.0
    for fmt in FORMATS:
        assert "resample" in render(t, fmt)
    assert "[95% bootstrap CI over prompts]" in " ".join(render(t, "rich").split())  # text, not markup


def test_rescue_table_fails_loudly_without_mining_rows(factory):
    rid = add_run(factory, "resample")
    with pytest.raises(KeyError, match="no train_steps rows with phase='mining'"):
        rescue_table(factory, TINY, methods=["resample"])
    add_mining(factory, rid, {"source": "resample", "n_zero_hit": 3})
    with pytest.raises(KeyError, match=r"mining step 0: .*lacks n_prompts, n_rescued"):
        rescue_table(factory, TINY)


def test_rescue_points(factory, rescue_db):
    pts = {p["method"]: p for p in rescue_points(factory, TINY)}
    assert pts["lr-sft"]["fte"] == pytest.approx(250.0) and pts["lr-sft"]["rate"] == 0.5
    assert pts["lr-sft"]["fw_steps"] == 4 and pts["resample"]["fw_steps"] is None
    # runs that differ only in K form one curve ("family") in the rescue figure; any other field splits it
    k8 = add_run(factory, "lr-sft", config={"method_config": {"fw_steps": 8}})
    other = add_run(factory, "lr-sft", config={"method_config": {"fw_steps": 8, "prefix_frac": 0.3}})
    for rid in (k8, other):
        add_mining(factory, rid, rescue("latentrevise", 100, 4, 1, 1000.0, trajectories=1))
    family = {p["run"]: p["family"] for p in rescue_points(factory, TINY)}
    assert family[rescue_db["lr-sft"]] == family[k8] != family[other]


def test_ablation_table(factory, rescue_db):
    with session_scope(factory) as s:
        h = s.get(Run, rescue_db["lr-sft"]).config_hash
    t = ablation_table(factory, TINY, "k", "fw_steps", [(4, h), (8, "nope")], "K", budget={"limit": 8})
    assert [r["fw_steps"] for r in t.rows] == [4]
    assert t.rows[0]["rescue rate"].values["rate"] == pytest.approx(0.5)
    assert t.rows[0]["mean L"] == 8.0 and t.rows[0]["leakage"].values["leak_frac"] == 0.0
    assert any("fw_steps=8: no finished run" in n for n in t.notes) and any("limit=8" in n for n in t.notes)


def test_docs_queries_run(factory, rescue_db):
    """The example queries in docs/results-db.md run against this schema and give the known numbers."""
    from pathlib import Path

    add_revision(factory, rescue_db["lr-sft"], "p9", True, fw_steps=8, prefix_len=16)
    rid = add_run(factory, "lr-sft", config={"method_config": {"train_prefix": "latent"}}, minutes=9)
    add_eval(factory, rid, "arith-easy", matrix([2, 6]))
    doc = (Path(__file__).resolve().parent.parent / "docs" / "results-db.md").read_text()
    queries = [q.split("```", 1)[0] for q in doc.split("```sql")[1:]]
    assert len(queries) == 3
    with session_scope(factory) as s:
        by_k, by_len, acc = (s.execute(text(q)).mappings().all() for q in queries)
    assert [(r["k"], r["revisions"], r["rescue_rate"]) for r in by_k] == [(4, 5, 0.4), (8, 1, 1.0)]
    assert [(r["prefix_len"], r["prompts"], r["rescued"]) for r in by_len] == [(8, 4, 2), (16, 1, 1)]
    assert [(r["prefix_mode"], r["benchmark"], r["avg_at_n"]) for r in acc] == [("latent", "arith-easy", 0.5)]


def test_unevaluated_newer_run_does_not_hide_the_evaluated_one(factory, filled):
    """A later mining-only ablation run of lr-sft (no evaluations) must not replace lr-sft's row."""
    add_run(factory, "lr-sft", config={"method_config": {"fw_steps": 1}}, minutes=30)
    t = main_table(factory, TINY)
    assert cell(t, "lr-sft", "arith-easy").values["avg"] == pytest.approx(1.0)
    assert leaderboard(factory).rows[3]["method"] == "lr-sft"


def test_reference_table_places_ours_beside_published(factory):
    from repro.presets import PAPER
    from repro.reference import PUBLISHED, reference_table

    with session_scope(factory) as s:
        run = Run(method="base", model=PAPER.base_model, preset="paper", seed=0, config={}, config_hash="b",
                  status="finished", finished_at=T0)
        s.add(run)
        s.flush()
        ev = Evaluation(run_id=run.id, benchmark="math500", template=PAPER.eval.template, grader={}, eval_hash="e",
                        sampling={"n": 4, "temperature": 0.6, "top_p": 0.95, "max_tokens": 3072, "seed": 0},
                        n_problems=2, status="finished", finished_at=T0)
        s.add(ev)
        s.flush()
        s.execute(insert(Sample), [dict(evaluation_id=ev.id, problem_id=str(i), sample_index=j, prompt="", gold="",
                                        completion="", prompt_tokens=0, completion_tokens=0, finish_reason="stop",
                                        extracted=None, correct=j < 3 * i, grading_ms=0.0)
                                   for i in range(2) for j in range(4)])
    t = reference_table(factory)
    assert all(p.source and p.protocol and p.scores for p in PUBLISHED)
    models = [r["model"] for r in t.rows]
    i = models.index("Qwen/Qwen2.5-Math-1.5B")
    ours = t.rows[i + 1]
    assert ours["source"] == "results.db" and ours["math500"].values["value"] == pytest.approx(37.5)  # (0 + 3/4) / 2
    assert t.rows[i]["math500"].values["value"] == 51.7 and "aime24" not in ours


def test_figures(factory, filled, tmp_path):
    from repro.plots import write_figures

    add_mining(factory, filled["lr-sft"], rescue("latentrevise", 100, 4, 2, 1000.0, trajectories=6))
    add_revision(factory, filled["lr-sft"], "p0", True)

    assert write_figures(open_db(f"sqlite:///{tmp_path / 'empty.db'}"), TINY, tmp_path / "none") == []
    paths = write_figures(factory, TINY, tmp_path / "fig")
    assert sorted(p.name for p in paths) == ["fw_dynamics.png", "passk.png", "rescue.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < p.stat().st_size < 200_000


# --------------------------------------------------------------------------------------------
# free continuations: revised vs unrevised (paired), the decomposition, per-prompt baselines
# --------------------------------------------------------------------------------------------

def add_arm_revision(factory, run_id: int, pid: str, control: int, revised: int, n: int = 4,
                     changed: bool = True) -> None:
    """A revision row whose `_stats.arms` holds `control` / `revised` correct of `n` continuations."""
    stats = {"arms": {"unrevised": {"n": n, "correct": control, "same_as": None},
                      "discrete": {"n": n, "correct": revised, "same_as": None if changed else "unrevised"}},
             "p_changed": changed}
    with session_scope(factory) as s:
        s.add(Revision(run_id=run_id, problem_id=pid, prompt="x", gold="1", failed_rollout="2 + 2 = 5",
                       prefix_len=8, fw_steps=3, config={"_stats": stats}, gold_loss=[1.0], away_loss=[1.0],
                       top_tokens=[], discrete_prefix="2 + 2", wall_s=1.0, peak_mem_mb=None,
                       rescued=revised > 0, leakage=False, continuations=[]))


def per_prompt(rescued: dict[str, bool], correct: dict[str, int] | None = None, n: int = 0) -> dict:
    return {p: {"n": n, "correct": (correct or {}).get(p, 0), "fte": 10.0, "rescued": r} for p, r in rescued.items()}


@pytest.fixture
def paired_db(factory):
    """4 zero-hit prompts. lr-sft: K=0 arm 0,0,1,0 of 4 correct; revised arm 2,1,1,0 of 4. resample: 8 samples
    each, 0,2,0,0 correct. guided-prefix: 8 samples each, 4,0,0,0 correct."""
    lr = add_run(factory, "lr-sft", config={"method_config": {"fw_steps": 3}})
    add_mining(factory, lr, {**rescue("latentrevise", 100, 4, 3, 900.0, trajectories=4),
                             "per_prompt": per_prompt({"p0": True, "p1": True, "p2": True, "p3": False})})
    for pid, c0, c1, changed in (("p0", 0, 2, True), ("p1", 0, 1, True), ("p2", 1, 1, False), ("p3", 0, 0, True)):
        add_arm_revision(factory, lr, pid, c0, c1, changed=changed)
    rs = add_run(factory, "resample")
    add_mining(factory, rs, {**rescue("resample", 100, 4, 1, 800.0, trajectories=2),
                             "per_prompt": per_prompt({"p0": False, "p1": True, "p2": False, "p3": False},
                                                      {"p1": 2}, n=8)})
    gp = add_run(factory, "guided-prefix")
    add_mining(factory, gp, {**rescue("guided-prefix", 100, 4, 1, 600.0, trajectories=4),
                             "per_prompt": per_prompt({"p0": True, "p1": False, "p2": False, "p3": False},
                                                      {"p0": 4}, n=8)})
    return {"lr-sft": lr, "resample": rs, "guided-prefix": gp}


def test_rescue_table_free_continuations_paired_and_decomposed(factory, paired_db):
    t = rescue_table(factory, TINY, methods=["lr-sft", "resample", "guided-prefix"])
    rows = {r["method"]: r for r in t.rows}
    lr, rs, gp = rows["lr-sft"], rows["resample"], rows["guided-prefix"]
    assert lr["free acc"].values["avg"] == pytest.approx((0.5 + 0.25 + 0.25 + 0) / 4)
    assert lr["free acc from p"].values["avg"] == pytest.approx(0.25 / 4)
    d = lr["paired Δ [95% CI]"].values  # differences 0.5, 0.25, 0, 0 over the same prompts and seeds
    assert d["delta"] == pytest.approx(0.1875) and d["n_paired"] == 4
    assert d["p"] == pytest.approx(0.5)  # exact sign flips: only the two non-zero differences matter
    assert d["ci_lo"] <= 0.1875 <= d["ci_hi"]
    assert rs["free acc"].values["avg"] == pytest.approx(0.25 / 4) and "paired Δ [95% CI]" not in rs
    assert gp["free acc"].values["avg"] == pytest.approx(0.5 / 4)
    assert gp["FTE / rescued"].values["fte"] == 600.0 and gp["s / rescued"] == 4.0
    # rescued 1,1,1,0 (lr) vs 0,1,0,0 (resample): +50 points, p = 0.5 (two non-zero differences)
    assert lr["Δ rescue vs resample"].values["delta"] == pytest.approx(0.5)
    assert lr["Δ rescue vs resample"].values["p"] == pytest.approx(0.5)
    assert gp["Δ rescue vs resample"].values["delta"] == pytest.approx(0.0)
    assert "Δ rescue vs resample" not in rs
    cond = rows["Δ conditioning: lr-sft K=0 arm − resample"]["paired Δ [95% CI]"].values
    assert cond["delta"] == pytest.approx((0 - 0 + (0 - 0.25) + (0.25 - 0) + 0) / 4) and cond["p"] == 1.0
    rev = rows["Δ revision: lr-sft K≥1 − K=0 arm"]["paired Δ [95% CI]"].values
    assert rev == d
    assert any("SAME seeds" in n for n in t.notes)
    for fmt in FORMATS:
        out = render(t, fmt)
        # rich keeps every word whole at 80 columns but may wrap a long row label between words
        assert ("revision: lr-sft" in out) if fmt != "rich" else ("revision:" in out and "K≥1" in out), fmt


def test_ablation_rows_report_revised_vs_unrevised(factory, paired_db):
    with session_scope(factory) as s:
        h = s.get(Run, paired_db["lr-sft"]).config_hash
    t = ablation_table(factory, TINY, "step-rule", "step_rule", [("gap-topm", h)], "step rule")
    (row,) = t.rows
    assert row["p' ≠ p"].values["p_changed_frac"] == pytest.approx(0.75)
    assert row["paired Δ [95% CI]"].values["delta"] == pytest.approx(0.1875)
    assert row["free acc from p"].values["avg"] == pytest.approx(0.0625)


def test_new_ablations_are_catalogued_on_real_config_fields():
    from repro.catalog import ABLATIONS, check_ablation

    for name in ("step-rule", "discretize", "objective", "keep-best", "away-weight"):
        check_ablation(ABLATIONS[name])  # raises if the lr-sft config has no such field
    assert set(ABLATIONS["objective"].values) == {"gold-after-prefix", "gold-in-rollout", "self-contrast", "fluency"}
    assert ABLATIONS["keep-best"].values == (True, False)
