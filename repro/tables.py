"""The paper's tables, built from results.db alone: one `TableData` per table, rendered by repro/render.py.

    main_table(factory, preset)      one row per method: avg@n [95% CI], pass@k, delta vs baseline (paired test)
    leaderboard(factory)             one row per (method, model, preset): latest finished run, every benchmark
    rescue_table(factory, preset)    zero-hit prompts and the rescue comparison (LatentRevise vs resample, hint,
                                     guided-prefix): rescue rate, FTE and seconds per rescued prompt, free-continuation
                                     accuracy revised vs unrevised (paired), and the conditioning/revision decomposition
    ablation_table(...)              the same per value of one LatentRevise config field (+ accuracy if trained)

The numbers come from repro/scores.py (queries and statistics); what the rows are (methods,
order, baselines) from repro/catalog.py. This module only arranges them into cells, rows and the
notes that say how each number was made, so rerunning `reproduce.py` prints the same table
without touching a model.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from harness.store import Revision, Run, session_scope
from repro.catalog import BASELINE, LATENTREVISE_METHOD, baseline_of
from repro.presets import Preset
from repro.render import Cell, TableData, format_pct
from repro.scores import (
    ALPHA,
    MINING_PHASE,
    PAIRED_METHOD,
    BenchScores,
    aggregate_rescue,
    ci95,
    evaluated_runs,
    finished_run,
    latest_runs,
    macro_weighted,
    method_key,
    mining_stats,
    paired_p,
    pass_at,
    pick_runs,
    rescue_runs,
    revision_means,
    run_scores,
)

# ---------------------------------------------------------------------------------------------
# score cells
# ---------------------------------------------------------------------------------------------

def _score_cell(scores: dict[str, float], counts: dict[str, tuple[int, int]] | None,
                pass_k: Iterable[int], base: dict[str, float] | None, base_name: str | None,
                n_label: str = "") -> Cell:
    mean = float(np.mean(list(scores.values())))
    lo, hi = ci95(list(scores.values()))
    values: dict[str, Any] = {"avg": mean, "ci_lo": lo, "ci_hi": hi, "n_problems": len(scores)}
    lines = [f"{format_pct(mean)} [{format_pct(lo)}–{format_pct(hi)}]{n_label}"]
    for k in pass_k:
        v = pass_at(counts, k) if counts else None
        if v is not None and k > 1:
            values[f"pass@{k}"] = v
            lines.append(f"pass@{k} {format_pct(v)}")
    if base is not None and base_name is not None:
        common = sorted(set(scores) & set(base))
        if common:
            a, b = [scores[p] for p in common], [base[p] for p in common]
            delta, p = float(np.mean(a) - np.mean(b)), paired_p(a, b)
            values |= {"baseline": base_name, "delta": delta, "p": p, "n_paired": len(common)}
            lines.append(f"Δ{base_name} {round(100 * delta, 1) + 0.0:+.1f}{'*' if p < ALPHA else ''} "
                         + (f"(p={p:.2g})" if p >= 1e-4 else "(p<1e-4)"))
    return Cell("\n".join(lines), values)


def _macro_scores(scored: dict[str, BenchScores], benches: Sequence[str]) -> dict[str, float]:
    """"benchmark/problem" -> score reweighted so the plain mean is the macro average (`macro_weighted`)."""
    weighted = macro_weighted({b: scored[b].scores for b in benches})
    return {f"{b}/{p}": v for (b, p), v in weighted.items()}


# ---------------------------------------------------------------------------------------------
# main table and leaderboard
# ---------------------------------------------------------------------------------------------

def main_table(factory: sessionmaker[Session], preset: Preset, prefer: dict[str, str] | None = None,
               methods: Sequence[str] | None = None, baselines: dict[str, str] | None = None) -> TableData:
    """One row per method on `preset`, one column per benchmark plus the macro average (`baselines`: method ->
    the row its deltas are measured against, instead of `baseline_of`; `--compare-to`)."""
    notes: list[str] = []
    runs, scored = _main_scores(factory, preset, prefer, methods, notes)
    bench_columns = {b: f"{b} (n={preset.eval.n_for(b)})" for b in preset.benchmarks}
    columns = ["method", "run", *bench_columns.values(), "average"]
    rows = [_main_row(m, runs[m], scored, bench_columns, preset, notes, (baselines or {}).get(m)) for m in scored]
    notes += _main_notes(preset)
    notes += [f"Δ for {m}: vs {b} (--compare-to, or the LatentRevise variant of the method's family)" for m in scored
              if (b := (baselines or {}).get(m) or baseline_of(m)) not in (BASELINE.get(m), "base", None)]
    return TableData(f"Main results ({preset.name}, base model {preset.base_model})", columns, rows, notes)


def _main_scores(factory: sessionmaker[Session], preset: Preset, prefer: dict[str, str] | None,
                 methods: Sequence[str] | None,
                 notes: list[str]) -> tuple[dict[str, Run], dict[str, dict[str, BenchScores]]]:
    """The run shown per method and its scores under the preset's protocol; a run without any gets no row."""
    with session_scope(factory) as s:
        runs = pick_runs(s, preset.name, prefer, notes, evaluated_runs(s))
        if methods is not None:
            runs = {m: r for m, r in runs.items() if m in methods}
        scored = {m: run_scores(s, r, list(preset.benchmarks), preset.eval, notes) for m, r in runs.items()}
    for m in [m for m, sc in scored.items() if not sc]:
        notes.append(f"{m}: run #{runs[m].id} has no finished evaluation under the preset's protocol; no row")
        del scored[m]
    return runs, scored


def _main_row(method: str, run: Run, scored: dict[str, dict[str, BenchScores]], bench_columns: dict[str, str],
              preset: Preset, notes: list[str], base_name: str | None = None) -> dict[str, Any]:
    """One method's row: a score cell per benchmark and the average, each with its delta vs the baseline row."""
    sc = scored[method]
    base_name = base_name or baseline_of(method)
    base_sc = scored.get(base_name) if base_name else None
    if base_name and base_sc is None:
        notes.append(f"{method}: baseline {base_name} has no row; no delta")
    row: dict[str, Any] = {"method": method, "run": f"#{run.id} {run.config_hash[:8]}"}
    for b, col in bench_columns.items():
        if b not in sc:
            notes.append(f"{method}: no evaluation on {b} (blank cell)")
            continue
        ref = base_sc[b].scores if base_sc and b in base_sc else None
        if base_sc and ref is None:
            notes.append(f"{method}: baseline {base_name} has no {b} evaluation; no delta there")
        row[col] = _score_cell(sc[b].scores, sc[b].counts, preset.eval.pass_k, ref, base_name)
    benches = list(bench_columns)
    if all(b in sc for b in benches):
        ref = _macro_scores(base_sc, benches) if base_sc and all(b in base_sc for b in benches) else None
        row["average"] = _score_cell(_macro_scores(sc, benches), None, (), ref, base_name)
    return row


def _main_notes(preset: Preset) -> list[str]:
    """How the main table's numbers were made."""
    baselines = ", ".join(f"vs {base} for {method}" for method, base in BASELINE.items())
    return [f"avg@n in % with a 95% bootstrap CI over problems; n samples per problem at T={preset.eval.temperature},"
            f" top-p {preset.eval.top_p}, template {preset.eval.template}, max {preset.eval.max_tokens} tokens",
            f"Δ: {baselines}, else vs base; two-sided paired {PAIRED_METHOD} test over "
            f"problems (sign flips of per-problem accuracy differences); * p<{ALPHA}",
            "average: macro mean over benchmarks (problems reweighted so each benchmark counts equally)"]


def leaderboard(factory: sessionmaker[Session], benchmarks: Sequence[str] | None = None) -> TableData:
    """One row per (method, model, preset): its latest finished run; one column per benchmark + average."""
    notes: list[str] = []
    with session_scope(factory) as s:
        latest = latest_runs(s)
        scored = {key: run_scores(s, r, benchmarks, None, notes) for key, r in latest.items()}
    benches = list(benchmarks) if benchmarks else sorted({b for sc in scored.values() for b in sc})
    columns = ["method", "model", "preset", "run"] + benches + ["average"]
    rows = []
    for (m, model, preset), sc in sorted(scored.items(), key=lambda kv: (kv[0][2], kv[0][1], method_key(kv[0][0]))):
        if not sc:
            continue
        row: dict[str, Any] = {"method": m, "model": model, "preset": preset,
                               "run": f"#{latest[(m, model, preset)].id}"}
        for b in benches:
            if b in sc:
                row[b] = _score_cell(sc[b].scores, None, (), None, None, f" (n={sc[b].n})")
        if benches and all(b in sc for b in benches):
            row["average"] = _score_cell(_macro_scores(sc, benches), None, (), None, None)
        rows.append(row)
    notes.append("average: macro mean, only for rows with every benchmark shown")
    notes.append("latest finished run per (method, model, preset) and its latest finished evaluation per "
                 "benchmark (protocols may differ between rows: see `evaluations.sampling`); avg@n in % [95% CI]")
    return TableData("Leaderboard", columns, rows, notes)


# ---------------------------------------------------------------------------------------------
# rescue: zero-hit prompts and what each method recovers from them
# ---------------------------------------------------------------------------------------------

def _rescue_row(run: Run, label: str, a: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"method": label, "run": f"#{run.id} {run.config_hash[:8]}", "source": a["source"],
                           "prompts screened": a["prompts"], "zero-hit": a["zero_hit"], "rescued": a["rescued"]}
    if a["rate"] is not None:
        per_prompt = [1.0] * a["rescued"] + [0.0] * (a["zero_hit"] - a["rescued"])
        lo, hi = ci95(per_prompt)
        row["rescue rate"] = Cell(f"{format_pct(a['rate'])} [{format_pct(lo)}–{format_pct(hi)}]",
                                  {"rate": a["rate"], "ci_lo": lo, "ci_hi": hi,
                                   "clean_rate": a["rescued_clean"] / a["zero_hit"]})
    if a["fte_per_rescued"] is not None:
        row["FTE / rescued"] = Cell(f"{a['fte_per_rescued']:,.0f}",
                                    {"fte": a["fte_per_rescued"], "fte_total": a["fte"]})
        row["s / rescued"] = round(a["wall_s"] / a["rescued"], 2)
    for key, col in (("len_before", "length before"), ("len_after", "length after"),
                     ("markers_before", "markers before"), ("markers_after", "markers after")):
        if a[key] is not None:
            row[col] = round(a[key], 2)
    return row


RESCUE_COLUMNS = ["method", "run", "source", "prompts screened", "zero-hit", "rescued", "rescue rate", "FTE / rescued",
                  "s / rescued", "free acc", "free acc from p", "paired Δ [95% CI]", "Δ rescue vs resample",
                  "length before", "length after", "markers before", "markers after"]
REVISED_ARMS = ("discrete", "latent")  # the first one a run sampled is its "revised" arm (mining.py's arms)
CONTROL_ARM = "unrevised"  # the K=0 arm: continuations of the unrevised prefix p, same seeds
RESAMPLE_METHOD = "resample"


def arm_accuracy(s: Session, run: Run) -> dict[str, dict[str, float]]:
    """arm -> problem id -> accuracy of the arm's free continuations (mean over the prompt's revisions), from
    `revisions.config["_stats"]["arms"]` (methods/latentrevise/mining.py); {} for a run without revisions."""
    acc: dict[str, dict[str, list[float]]] = {}
    for pid, cfg in s.execute(select(Revision.problem_id, Revision.config).where(Revision.run_id == run.id)):
        for arm, c in (((cfg or {}).get("_stats") or {}).get("arms") or {}).items():
            if c.get("n"):
                acc.setdefault(arm, {}).setdefault(pid, []).append(c["correct"] / c["n"])
    return {a: {p: float(np.mean(v)) for p, v in by_p.items()} for a, by_p in acc.items()}


def _per_prompt(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """problem id (round-qualified when a run mined more than once) -> rescue_stats' per-prompt record."""
    out: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(rounds):
        for pid, rec in (r.get("per_prompt") or {}).items():
            out[pid if len(rounds) == 1 else f"{i}/{pid}"] = rec
    return out


def free_measures(s: Session, run: Run, rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-prompt measures of one rescue run: "revised" and "control" (LatentRevise arms) or "samples" (the
    baselines' own samples) accuracy of free continuations, and "rescued" (0/1) from the per-prompt stats."""
    arms, per = arm_accuracy(s, run), _per_prompt(rounds)
    out: dict[str, dict[str, float]] = {"rescued": {p: float(r["rescued"]) for p, r in per.items()}}
    revised = next((arms[a] for a in REVISED_ARMS if a in arms), None)
    if revised is not None:
        out["revised"] = revised
        out["control"] = arms.get(CONTROL_ARM, {})
    else:
        out["samples"] = {p: r["correct"] / r["n"] for p, r in per.items() if r.get("n")}
    return out


def _mean_cell(values: dict[str, float]) -> Cell | None:
    if not values:
        return None
    mean, (lo, hi) = float(np.mean(list(values.values()))), ci95(list(values.values()))
    return Cell(f"{format_pct(mean)} [{format_pct(lo)}–{format_pct(hi)}]",
                {"avg": mean, "ci_lo": lo, "ci_hi": hi, "n_prompts": len(values)})


def paired_cell(a: dict[str, float], b: dict[str, float]) -> Cell | None:
    """mean(a - b) over the prompts both have, in points, with a bootstrap 95% CI and the paired p-value."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    x, y = [a[k] for k in common], [b[k] for k in common]
    d = [u - v for u, v in zip(x, y)]
    delta, (lo, hi), p = float(np.mean(d)), ci95(d), paired_p(x, y)
    pct = lambda v: f"{round(100 * v, 1) + 0.0:+.1f}"  # noqa: E731  (+0.0: no "-0.0")
    return Cell(f"{pct(delta)} [{pct(lo)}, {pct(hi)}]{'*' if p < ALPHA else ''} "
                + (f"(p={p:.2g})" if p >= 1e-4 else "(p<1e-4)"),
                {"delta": delta, "ci_lo": lo, "ci_hi": hi, "p": p, "n_paired": len(common)})


def _put(row: dict[str, Any], column: str, cell: Cell | None) -> None:
    if cell is not None:
        row[column] = cell


def _free_columns(row: dict[str, Any], m: dict[str, dict[str, float]], resample: dict | None) -> None:
    """The free-continuation cells of one rescue row (module docstring of the rescue notes)."""
    _put(row, "free acc", _mean_cell(m.get("revised") or m.get("samples") or {}))
    if "revised" in m:
        _put(row, "free acc from p", _mean_cell(m["control"]))
        _put(row, "paired Δ [95% CI]", paired_cell(m["revised"], m["control"]))
    if resample is not None and m is not resample:
        _put(row, "Δ rescue vs resample", paired_cell(m["rescued"], resample["rescued"]))


def decomposition_rows(method: str, m: dict[str, dict[str, float]], resample: dict | None) -> list[dict[str, Any]]:
    """The fair decomposition at equal compute per continuation: conditioning on a prefix (K=0 arm vs resample's
    samples) and revision (the revised arm vs the K=0 arm, same seeds)."""
    rows = []
    if resample is not None and m.get("control") and resample.get("samples"):
        rows.append({"method": f"Δ conditioning: {method} K=0 arm − {RESAMPLE_METHOD}",
                     "paired Δ [95% CI]": paired_cell(m["control"], resample["samples"])})
    if m.get("control"):
        rows.append({"method": f"Δ revision: {method} K≥1 − K=0 arm",
                     "paired Δ [95% CI]": paired_cell(m["revised"], m["control"])})
    return [r for r in rows if r["paired Δ [95% CI]"] is not None]


def rescue_table(factory: sessionmaker[Session], preset: Preset, methods: Sequence[str] | None = None,
                 prefer: dict[str, str] | None = None) -> TableData:
    """Zero-hit statistics and the rescue comparison (LatentRevise vs resample, hint and guided-prefix)."""
    notes: list[str] = []
    rows, measures = [], {}
    with session_scope(factory) as s:
        runs = rescue_runs(s, preset.name, methods, notes, prefer)
        for m, r in runs.items():
            rounds = mining_stats(s, r)
            rows.append(_rescue_row(r, m, aggregate_rescue(rounds)))
            measures[m] = free_measures(s, r, rounds)
    resample = measures.get(RESAMPLE_METHOD)
    for row in rows:
        _free_columns(row, measures[row["method"]], resample)
    for m in [m for m, v in measures.items() if "revised" in v]:
        rows += decomposition_rows(m, measures[m], resample)
    if not rows:
        notes.append(f"no finished run with {MINING_PHASE!r} steps on preset {preset.name}")
    notes += _rescue_notes()
    return TableData(f"Zero-hit rescue ({preset.name})", RESCUE_COLUMNS, rows, notes)


def _rescue_notes() -> list[str]:
    """How the rescue table's numbers were made."""
    return ["zero-hit: screened prompts whose every policy sample was wrong; rescue rate: share of them with at "
            "least one verified-correct rescued trajectory [95% bootstrap CI over prompts]",
            "FTE: forward-token equivalents spent by the rescue method (revision, continuation or resampling; the "
            "shared screening pass excluded), per rescued prompt; s: wall seconds per rescued prompt",
            "free acc: accuracy of free continuations per zero-hit prompt (mean over prompts [95% CI]): LatentRevise "
            "from its revised prefix (discrete arm p', else latent Z); the baselines: their own samples (resample "
            "from x, hint from the hinted x, guided-prefix from x + the reference solution's first steps); free acc "
            "from p: the same revisions' K=0 arm (unrevised prefix, the SAME seeds)",
            f"paired Δ: revised − unrevised over the same prompts and seeds (points, bootstrap 95% CI, two-sided "
            f"paired {PAIRED_METHOD} test over prompts; * p<{ALPHA}); Δ rescue vs resample: rescued (0/1) minus "
            "resample's on the same zero-hit prompts (same screening seeds), at resample's matched budget",
            "decomposition rows: conditioning = K=0 arm − resample's samples (what continuing a failed prefix does), "
            "revision = K≥1 − K=0 (what revising it adds); equal compute per continuation (one sample each)",
            "length: tokens per trajectory; markers: reflection markers (wait, check*, verif*) per trajectory; "
            "before = failed policy samples of zero-hit prompts, after = correct rescued trajectories"]


# ---------------------------------------------------------------------------------------------
# ablations: one LatentRevise config field, one run per value
# ---------------------------------------------------------------------------------------------

def ablation_table(factory: sessionmaker[Session], preset: Preset, name: str, field_name: str,
                   variants: Sequence[tuple[Any, str]], what: str, budget: dict[str, Any] | None = None,
                   method: str = LATENTREVISE_METHOD) -> TableData:
    """Rescue rate (and accuracy when the variants trained a model) per value of `field_name`."""
    notes: list[str] = []
    columns = [field_name, "run", "zero-hit", "rescued", "rescue rate", "FTE / rescued", "s / rescued", "mean L",
               "leakage", "p' ≠ p", "free acc", "free acc from p", "paired Δ [95% CI]"]
    rows: list[dict[str, Any]] = []
    with session_scope(factory) as s:
        base = pick_runs(s, preset.name, None, []).get("base")
        base_sc = run_scores(s, base, list(preset.benchmarks), preset.eval, []) if base else {}
        for value, h in variants:
            run = finished_run(s, method, h)
            if run is None:
                notes.append(f"{field_name}={value!r}: no finished run (config {h[:8]}); row left out")
                continue
            row = {k: v for k, v in _rescue_row(run, str(value), aggregate_rescue(mining_stats(s, run))).items()
                   if k in columns}
            row[field_name] = value
            mean_l, leak = revision_means(s, run)
            if mean_l is not None:
                row["mean L"], row["leakage"] = round(float(mean_l), 1), Cell(format_pct(leak), {"leak_frac": leak})
            _free_columns(row, free_measures(s, run, mining_stats(s, run)), None)
            _put(row, "p' ≠ p", _changed_cell(s, run))
            for b, sc in run_scores(s, run, list(preset.benchmarks), preset.eval, notes).items():
                ref = base_sc[b].scores if b in base_sc else None
                row[b] = _score_cell(sc.scores, sc.counts, (), ref, "base" if ref else None)
                if b not in columns:
                    columns.append(b)
            rows.append(row)
    notes.append(f"ablation {name}: {what}; every other setting as in the preset's {method} config; mean L and "
                 "leakage (% of revisions flagged) from the revisions table")
    notes.append("p' ≠ p: share of revisions whose discrete prefix changed; free acc: continuations of the revised "
                 "prefix, free acc from p: of the unrevised one with the SAME seeds, per zero-hit prompt; paired Δ: "
                 f"their difference (points, bootstrap 95% CI, paired {PAIRED_METHOD} test over prompts)")
    if budget:
        notes.append("every variant also sets: " + ", ".join(f"{k}={v!r}" for k, v in budget.items()))
    return TableData(f"Ablation {name}: {field_name} ({preset.name})", columns, rows, notes)


def _changed_cell(s: Session, run: Run) -> Cell | None:
    """Share of the run's revisions whose discrete prefix p' differs from p (`_stats.p_changed`)."""
    flags = [bool(((cfg or {}).get("_stats") or {}).get("p_changed"))
             for (cfg,) in s.execute(select(Revision.config).where(Revision.run_id == run.id))]
    return Cell(format_pct(float(np.mean(flags))), {"p_changed_frac": float(np.mean(flags)), "n": len(flags)}) \
        if flags else None
