"""The paper's tables, assembled from results.db alone, and rendered as rich, CSV, JSON or Markdown.

Every number here is recomputed from stored rows (per-problem accuracy from `samples`, rescue
statistics from `revisions`/`rollouts`/`train_steps`), so a table is a pure function of the
database: rerunning `reproduce.py` prints the same table without touching a model.

    main_table(factory, preset)      one row per method: avg@n [95% CI], pass@k, delta vs baseline (paired test)
    leaderboard(factory)             one row per (method, model, preset): latest finished run, every benchmark
    rescue_table(factory, preset)    zero-hit prompts and the rescue comparison (LatentRevise vs resample vs hint)
    ablation_table(...)              rescue rate (and accuracy) per value of one LatentRevise config field
    render(table, fmt)               rich | csv | json | markdown

A cell is a `Cell`: the text a reader sees plus the raw values (mean, CI, delta, p) that CSV and
JSON carry, so no number is lost to formatting.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session, sessionmaker

from harness.protocol import EvalProtocol
from harness.store import Evaluation, Revision, Run, Sample, TrainStep, config_hash, session_scope
from repro.presets import Preset

FORMATS = ("rich", "csv", "json", "markdown")
ORDER = ("base", "sft", "grpo", "lr-sft", "lr-grpo")  # the paper's row order; other methods follow
BASELINE = {"lr-sft": "sft", "lr-grpo": "grpo"}  # everything else is compared with "base"
ALPHA = 0.05  # a delta is marked `*` when the paired test's p-value is below this
PAIRED_METHOD = "permutation"  # sign-flip test over problems (exact up to 16 problems), harness.metrics.paired_test


# ---------------------------------------------------------------------------------------------
# table data and rendering
# ---------------------------------------------------------------------------------------------

@dataclass
class Cell:
    text: str  # what rich and Markdown show
    values: dict[str, Any] = field(default_factory=dict)  # what CSV and JSON carry

    def __str__(self) -> str:
        return self.text


@dataclass
class TableData:
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]  # column -> Cell | str | number | None (blank)
    notes: list[str] = field(default_factory=list)


def format_value(value: Any) -> str:
    """A cell value as text: blank for None, 4 significant digits for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flat(table: TableData) -> tuple[list[str], list[list[Any]]]:
    """CSV view: a Cell column expands to `column.key` for each raw value (text kept as `column`)."""
    spec: list[tuple[str, str | None]] = []
    for col in table.columns:
        spec.append((col, None))
        keys: list[str] = []
        for row in table.rows:
            cell = row.get(col)
            if isinstance(cell, Cell):
                keys += [k for k in cell.values if k not in keys]
        spec += [(col, k) for k in keys]
    rows = [[(cell.values.get(key) if isinstance(cell, Cell) else None) if key else format_value(cell)
             for col, key in spec for cell in [row.get(col)]] for row in table.rows]
    return [col if key is None else f"{col}.{key}" for col, key in spec], rows


def render(table: TableData, fmt: str = "rich") -> str:
    """The table as a string in one of FORMATS (rich output is captured, not printed)."""
    if fmt == "json":
        rows = [{c: (r.get(c).values | {"text": r.get(c).text}) if isinstance(r.get(c), Cell) else r.get(c)
                 for c in table.columns} for r in table.rows]
        return json.dumps({"title": table.title, "columns": table.columns, "rows": rows, "notes": table.notes},
                          indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header, rows = _flat(table)
        writer.writerow(header)
        writer.writerows(rows)
        return buf.getvalue()
    if fmt == "markdown":
        esc = lambda s: format_value(s).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
        lines = [f"**{table.title}**", "", "| " + " | ".join(map(esc, table.columns)) + " |",
                 "|" + "---|" * len(table.columns)]
        lines += ["| " + " | ".join(esc(r.get(c)) for c in table.columns) + " |" for r in table.rows]
        lines += [""] + [f"- {n}" for n in table.notes]
        return "\n".join(lines) + "\n"
    if fmt == "rich":
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text  # plain Text: "[16.2–32.5]" and notes are never parsed as markup

        t = Table(title=table.title, show_lines=True)
        for c in table.columns:
            t.add_column(Text(c), overflow="fold")
        for r in table.rows:
            t.add_row(*(Text(format_value(r.get(c))) for c in table.columns))
        console = Console(record=True, width=max(100, 24 * len(table.columns)), file=io.StringIO())
        console.print(t)
        for n in table.notes:
            console.print(Text(f"- {n}", style="dim"))
        return console.export_text()
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------
# per-problem scores
# ---------------------------------------------------------------------------------------------

@dataclass
class BenchScores:
    """One evaluation reduced to per-problem (n samples, c correct)."""

    evaluation_id: int
    counts: dict[str, tuple[int, int]]  # problem id -> (n, c)

    @property
    def scores(self) -> dict[str, float]:
        return {pid: c / n for pid, (n, c) in self.counts.items()}

    @property
    def n(self) -> int:
        return min(n for n, _ in self.counts.values())


def problem_counts(s: Session, evaluation_id: int) -> dict[str, tuple[int, int]]:
    q = (select(Sample.problem_id, func.count(), func.sum(cast(Sample.correct, Integer)))
         .where(Sample.evaluation_id == evaluation_id).group_by(Sample.problem_id))
    return {pid: (int(n), int(c or 0)) for pid, n, c in s.execute(q)}


def matches(ev: Evaluation, protocol: EvalProtocol | None) -> bool:
    """Same template and sampling as the protocol (keys the evaluation did not store are not checked)."""
    if protocol is None:
        return True
    want = {"n": protocol.n_for(ev.benchmark), "temperature": protocol.temperature, "top_p": protocol.top_p,
            "max_tokens": protocol.max_tokens, "seed": protocol.seed}
    got = ev.sampling or {}
    return ev.template == protocol.template and all(got[k] == v for k, v in want.items() if k in got)


def evaluated_runs(s: Session) -> set[int]:
    return set(s.scalars(select(Evaluation.run_id).where(Evaluation.status == "finished")))


def run_scores(s: Session, run: Run, benchmarks: Sequence[str] | None, protocol: EvalProtocol | None,
               notes: list[str]) -> dict[str, BenchScores]:
    """benchmark -> scores of the run's latest finished evaluation under `protocol`."""
    evs = s.scalars(select(Evaluation).where(Evaluation.run_id == run.id, Evaluation.status == "finished")
                    .order_by(Evaluation.finished_at, Evaluation.id)).all()
    out: dict[str, BenchScores] = {}
    for ev in evs:
        if (benchmarks is None or ev.benchmark in benchmarks) and matches(ev, protocol):
            counts = problem_counts(s, ev.id)
            if counts:
                out[ev.benchmark] = BenchScores(ev.id, counts)  # later evaluations overwrite earlier ones
    return out


def pass_at(counts: dict[str, tuple[int, int]], k: int) -> float | None:
    from harness.metrics import pass_at_k

    if any(n < k for n, _ in counts.values()):
        return None
    return float(np.mean([pass_at_k(n, c, k) for n, c in counts.values()]))


def ci95(scores: Sequence[float]) -> tuple[float, float]:
    from harness.metrics import bootstrap_ci

    lo, hi = bootstrap_ci(list(scores))
    return float(lo), float(hi)


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    from harness.metrics import paired_test

    return float(paired_test(list(a), list(b), method=PAIRED_METHOD)[1])


def macro_weighted(per_bench: dict[str, dict[str, float]]) -> dict[tuple[str, str], float]:
    """Per-problem scores rescaled so that their plain mean is the macro average over benchmarks.

    Score x of a problem in benchmark b becomes x * N / (B * n_b); the bootstrap CI and the paired
    test of the average column then run on one vector, with each benchmark weighted equally."""
    total, nb = sum(len(v) for v in per_bench.values()), len(per_bench)
    return {(b, pid): x * total / (nb * len(v)) for b, v in per_bench.items() for pid, x in v.items()}


# ---------------------------------------------------------------------------------------------
# which runs
# ---------------------------------------------------------------------------------------------

def pick_runs(s: Session, preset: str, prefer: dict[str, str] | None, notes: list[str],
              usable: set[int] | None = None) -> dict[str, Run]:
    """method -> the run shown for it: the preferred config hash if finished, else the latest finished.

    `usable`: ids of the runs that have what the table needs (evaluations, mining rows); others are skipped."""
    runs = s.scalars(select(Run).where(Run.preset == preset).order_by(Run.finished_at, Run.id)).all()
    if usable is not None:
        runs = [r for r in runs if r.id in usable or r.status != "finished"]
    chosen: dict[str, Run] = {}
    for method in sorted({r.method for r in runs}, key=method_key):
        mine = [r for r in runs if r.method == method]
        done = [r for r in mine if r.status == "finished"]
        bad = [r for r in mine if r.status != "finished"]
        if bad:
            notes.append(f"{method}: excluded {len(bad)} run(s) not finished: " + "; ".join(
                f"#{r.id} {r.status}" + (f" ({_short(r.error)})" if r.error else "") for r in bad))
        if not done:
            continue
        want = (prefer or {}).get(method)
        hit = [r for r in done if r.config_hash == want]
        chosen[method] = hit[-1] if hit else done[-1]
        if len(done) > 1:
            why = "the preset's config" if hit else "the latest finished"
            notes.append(f"{method}: {len(done)} finished runs with different configs; showing run "
                         f"#{chosen[method].id} ({why}), others: "
                         + ", ".join(f"#{r.id}" for r in done if r is not chosen[method]))
    return chosen


def method_key(method: str) -> tuple[int, str]:
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


# ---------------------------------------------------------------------------------------------
# main table and leaderboard
# ---------------------------------------------------------------------------------------------

def _score_cell(scores: dict[str, float], counts: dict[str, tuple[int, int]] | None,
                pass_k: Iterable[int], base: dict[str, float] | None, base_name: str | None,
                n_label: str = "") -> Cell:
    mean = float(np.mean(list(scores.values())))
    lo, hi = ci95(list(scores.values()))
    values: dict[str, Any] = {"avg": mean, "ci_lo": lo, "ci_hi": hi, "n_problems": len(scores)}
    lines = [f"{_pct(mean)} [{_pct(lo)}–{_pct(hi)}]{n_label}"]
    for k in pass_k:
        v = pass_at(counts, k) if counts else None
        if v is not None and k > 1:
            values[f"pass@{k}"] = v
            lines.append(f"pass@{k} {_pct(v)}")
    if base is not None and base_name is not None:
        common = sorted(set(scores) & set(base))
        if common:
            a, b = [scores[p] for p in common], [base[p] for p in common]
            delta, p = float(np.mean(a) - np.mean(b)), paired_p(a, b)
            values |= {"baseline": base_name, "delta": delta, "p": p, "n_paired": len(common)}
            lines.append(f"Δ{base_name} {round(100 * delta, 1) + 0.0:+.1f}{'*' if p < ALPHA else ''} "
                         + (f"(p={p:.2g})" if p >= 1e-4 else "(p<1e-4)"))
    return Cell("\n".join(lines), values)


def main_table(factory: sessionmaker[Session], preset: Preset, prefer: dict[str, str] | None = None,
               methods: Sequence[str] | None = None) -> TableData:
    """One row per method on `preset`, one column per benchmark plus the macro average."""
    notes: list[str] = []
    benches = list(preset.benchmarks)
    with session_scope(factory) as s:
        runs = pick_runs(s, preset.name, prefer, notes, evaluated_runs(s))
        if methods is not None:
            runs = {m: r for m, r in runs.items() if m in methods}
        scored = {m: run_scores(s, r, benches, preset.eval, notes) for m, r in runs.items()}
    for m in [m for m, sc in scored.items() if not sc]:
        notes.append(f"{m}: run #{runs[m].id} has no finished evaluation under the preset's protocol; no row")
        del scored[m]
    columns = ["method", "run"] + [f"{b} (n={preset.eval.n_for(b)})" for b in benches] + ["average"]
    rows = []
    for m, sc in scored.items():
        base_name = BASELINE.get(m, "base") if m != "base" else None
        base_sc = scored.get(base_name) if base_name else None
        if base_name and base_sc is None:
            notes.append(f"{m}: baseline {base_name} has no row; no delta")
        row: dict[str, Any] = {"method": m, "run": f"#{runs[m].id} {runs[m].config_hash[:8]}"}
        for b, col in zip(benches, columns[2:]):
            if b not in sc:
                notes.append(f"{m}: no evaluation on {b} (blank cell)")
                continue
            ref = base_sc[b].scores if base_sc and b in base_sc else None
            if base_sc and ref is None:
                notes.append(f"{m}: baseline {base_name} has no {b} evaluation; no delta there")
            row[col] = _score_cell(sc[b].scores, sc[b].counts, preset.eval.pass_k, ref, base_name)
        if all(b in sc for b in benches):
            mine = macro_weighted({b: sc[b].scores for b in benches})
            ref = None
            if base_sc and all(b in base_sc for b in benches):
                w = macro_weighted({b: base_sc[b].scores for b in benches})
                ref = {f"{b}/{p}": v for (b, p), v in w.items()}
            row["average"] = _score_cell({f"{b}/{p}": v for (b, p), v in mine.items()}, None, (), ref, base_name)
        rows.append(row)
    notes += [f"avg@n in % with a 95% bootstrap CI over problems; n samples per problem at T={preset.eval.temperature},"
              f" top-p {preset.eval.top_p}, template {preset.eval.template}, max {preset.eval.max_tokens} tokens",
              f"Δ: vs sft for lr-sft, vs grpo for lr-grpo, else vs base; two-sided paired {PAIRED_METHOD} test over "
              f"problems (sign flips of per-problem accuracy differences); * p<{ALPHA}",
              "average: macro mean over benchmarks (problems reweighted so each benchmark counts equally)"]
    return TableData(f"Main results ({preset.name}, base model {preset.base_model})", columns, rows, notes)


def leaderboard(factory: sessionmaker[Session], benchmarks: Sequence[str] | None = None) -> TableData:
    """One row per (method, model, preset): its latest finished run; one column per benchmark + average."""
    notes: list[str] = []
    with session_scope(factory) as s:
        runs = s.scalars(select(Run).where(Run.status == "finished", Run.id.in_(evaluated_runs(s)))
                         .order_by(Run.finished_at, Run.id)).all()
        latest: dict[tuple[str, str, str], Run] = {}
        for r in runs:
            latest[(r.method, r.model, r.preset)] = r
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
            w = macro_weighted({b: sc[b].scores for b in benches})
            row["average"] = _score_cell({f"{b}/{p}": v for (b, p), v in w.items()}, None, (), None, None)
        rows.append(row)
    notes.append("average: macro mean, only for rows with every benchmark shown")
    notes.append("latest finished run per (method, model, preset) and its latest finished evaluation per "
                 "benchmark (protocols may differ between rows: see `evaluations.sampling`); avg@n in % [95% CI]")
    return TableData("Leaderboard", columns, rows, notes)


# ---------------------------------------------------------------------------------------------
# rescue: zero-hit prompts and what each method recovers from them
# ---------------------------------------------------------------------------------------------

MINING_PHASE = "mining"  # train_steps rows written by methods/latentrevise/mining.py:log_rescue
RESCUE_KEY = "rescue"  # train_steps.extra[RESCUE_KEY] = mining.rescue_stats(...) of that mining round
RESCUE_FIELDS = ("source", "n_prompts", "n_zero_hit", "n_rescued", "n_rescued_clean", "fte_total", "n_trajectories",
                 "len_before", "len_after", "markers_before", "markers_after", "wall_s")


def mining_stats(s: Session, run: Run) -> list[dict[str, Any]]:
    """The rescue statistics of each mining round of `run`; a loud error when a method did not log them."""
    rows = s.scalars(select(TrainStep).where(TrainStep.run_id == run.id, TrainStep.phase == MINING_PHASE)
                     .order_by(TrainStep.step)).all()
    if not rows:
        raise KeyError(f"run #{run.id} ({run.method}) has no train_steps rows with phase={MINING_PHASE!r}: the rescue "
                       f"table needs ctx.log_step(step, phase={MINING_PHASE!r}, zero_hit_ids=..., {RESCUE_KEY}="
                       "rescue_stats(...)) (methods/latentrevise/mining.py:log_rescue)")
    out = []
    for r in rows:
        stats = (r.extra or {}).get(RESCUE_KEY)
        missing = [k for k in RESCUE_FIELDS if k not in (stats or {})]
        if missing:
            raise KeyError(f"run #{run.id} ({run.method}) mining step {r.step}: train_steps.extra[{RESCUE_KEY!r}] "
                           f"lacks {', '.join(missing)} (written by methods/latentrevise/mining.py:rescue_stats)")
        out.append(stats)
    return out


def aggregate_rescue(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mining rounds (one per GRPO step for online mining) -> one set of numbers; means weighted by counts."""
    def wmean(key: str, weight: str) -> float | None:
        w = sum(r[weight] for r in rounds)
        return sum(r[key] * r[weight] for r in rounds) / w if w else None

    def markers(key: str, weight: str) -> float | None:
        w = sum(r[weight] for r in rounds)
        return sum(sum(r[key].values()) * r[weight] for r in rounds) / w if w else None

    zh, res = sum(r["n_zero_hit"] for r in rounds), sum(r["n_rescued"] for r in rounds)
    fte = sum(r["fte_total"] for r in rounds)
    return {"source": rounds[0]["source"], "rounds": len(rounds), "prompts": sum(r["n_prompts"] for r in rounds),
            "zero_hit": zh, "rescued": res, "rescued_clean": sum(r["n_rescued_clean"] for r in rounds),
            "rate": res / zh if zh else None, "fte": fte, "fte_per_rescued": fte / res if res else None,
            "fte_per_zero_hit": fte / zh if zh else None, "wall_s": sum(r["wall_s"] for r in rounds),
            "len_before": wmean("len_before", "n_zero_hit"), "len_after": wmean("len_after", "n_trajectories"),
            "markers_before": markers("markers_before", "n_zero_hit"),
            "markers_after": markers("markers_after", "n_trajectories")}


def _rescue_row(run: Run, label: str, a: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"method": label, "run": f"#{run.id} {run.config_hash[:8]}", "source": a["source"],
                           "prompts screened": a["prompts"], "zero-hit": a["zero_hit"], "rescued": a["rescued"]}
    if a["rate"] is not None:
        per_prompt = [1.0] * a["rescued"] + [0.0] * (a["zero_hit"] - a["rescued"])
        lo, hi = ci95(per_prompt)
        row["rescue rate"] = Cell(f"{_pct(a['rate'])} [{_pct(lo)}–{_pct(hi)}]",
                                  {"rate": a["rate"], "ci_lo": lo, "ci_hi": hi,
                                   "clean_rate": a["rescued_clean"] / a["zero_hit"]})
    if a["fte_per_rescued"] is not None:
        row["FTE / rescued"] = Cell(f"{a['fte_per_rescued']:,.0f}", {"fte": a["fte_per_rescued"], "fte_total": a["fte"]})
        row["s / rescued"] = round(a["wall_s"] / a["rescued"], 2)
    for key, col in (("len_before", "length before"), ("len_after", "length after"),
                     ("markers_before", "markers before"), ("markers_after", "markers after")):
        if a[key] is not None:
            row[col] = round(a[key], 2)
    return row


RESCUE_COLUMNS = ["method", "run", "source", "prompts screened", "zero-hit", "rescued", "rescue rate", "FTE / rescued",
                  "s / rescued", "length before", "length after", "markers before", "markers after"]


def rescue_runs(s: Session, preset: str, methods: Sequence[str] | None, notes: list[str],
                prefer: dict[str, str] | None = None) -> dict[str, Run]:
    """method -> its run: every method that did mining on the preset, plus `methods` (which must have)."""
    mined = set(s.scalars(select(TrainStep.run_id).where(TrainStep.phase == MINING_PHASE)))
    chosen = pick_runs(s, preset, prefer, notes, mined)
    for m, r in pick_runs(s, preset, prefer, [], None).items():
        if m in (methods or ()) and m not in chosen:
            chosen[m] = r  # a method that should have mined but did not: mining_stats says so, loudly
    return dict(sorted(chosen.items(), key=lambda kv: method_key(kv[0])))


def rescue_table(factory: sessionmaker[Session], preset: Preset, methods: Sequence[str] | None = None,
                 prefer: dict[str, str] | None = None) -> TableData:
    """Zero-hit statistics and the rescue comparison (LatentRevise vs resample vs hint)."""
    notes: list[str] = []
    with session_scope(factory) as s:
        runs = rescue_runs(s, preset.name, methods, notes, prefer)
        rows = [_rescue_row(r, m, aggregate_rescue(mining_stats(s, r))) for m, r in runs.items()]
    if not rows:
        notes.append(f"no finished run with {MINING_PHASE!r} steps on preset {preset.name}")
    notes += ["zero-hit: screened prompts whose every policy sample was wrong; rescue rate: share of them with at "
              "least one verified-correct rescued trajectory [95% bootstrap CI over prompts]",
              "FTE: forward-token equivalents spent by the rescue method (revision, continuation or resampling; the "
              "shared screening pass excluded), per rescued prompt; s: wall seconds per rescued prompt",
              "length: tokens per trajectory; markers: reflection markers (wait, check*, verif*) per trajectory; "
              "before = failed policy samples of zero-hit prompts, after = correct rescued trajectories"]
    return TableData(f"Zero-hit rescue ({preset.name})", RESCUE_COLUMNS, rows, notes)


def rescue_points(factory: sessionmaker[Session], preset: Preset) -> list[dict[str, Any]]:
    """One point per finished mining run on the preset: compute per zero-hit prompt vs rescue rate (plots)."""
    out = []
    with session_scope(factory) as s:
        mined = set(s.scalars(select(TrainStep.run_id).where(TrainStep.phase == MINING_PHASE)))
        runs = s.scalars(select(Run).where(Run.preset == preset.name, Run.status == "finished",
                                           Run.id.in_(mined))).all()
        for r in runs:
            a = aggregate_rescue(mining_stats(s, r))
            if a["rate"] is not None:
                cfg = dict(r.config.get("method_config") or {})
                k = cfg.pop("fw_steps", None)
                out.append({"method": r.method, "source": a["source"], "run": r.id, "fte": a["fte_per_zero_hit"],
                            "rate": a["rate"], "fw_steps": k, "family": config_hash(cfg)})  # same config but K
    return out


# ---------------------------------------------------------------------------------------------
# ablations: one LatentRevise config field, one run per value
# ---------------------------------------------------------------------------------------------

def ablation_table(factory: sessionmaker[Session], preset: Preset, name: str, field_name: str,
                   variants: Sequence[tuple[Any, str]], what: str, budget: dict[str, Any] | None = None,
                   method: str = "lr-sft") -> TableData:
    """Rescue rate (and accuracy when the variants trained a model) per value of `field_name`."""
    notes: list[str] = []
    columns = [field_name, "run", "zero-hit", "rescued", "rescue rate", "FTE / rescued", "s / rescued", "mean L",
               "leakage"]
    rows: list[dict[str, Any]] = []
    with session_scope(factory) as s:
        base = pick_runs(s, preset.name, None, []).get("base")
        base_sc = run_scores(s, base, list(preset.benchmarks), preset.eval, []) if base else {}
        for value, h in variants:
            run = s.scalars(select(Run).where(Run.method == method, Run.config_hash == h,
                                              Run.status == "finished")).first()
            if run is None:
                notes.append(f"{field_name}={value!r}: no finished run (config {h[:8]}); row left out")
                continue
            row = {k: v for k, v in _rescue_row(run, str(value), aggregate_rescue(mining_stats(s, run))).items()
                   if k in columns}
            row[field_name] = value
            mean_l, leak = s.execute(select(func.avg(Revision.prefix_len), func.avg(cast(Revision.leakage, Integer)))
                                     .where(Revision.run_id == run.id)).one()
            if mean_l is not None:
                row["mean L"], row["leakage"] = round(float(mean_l), 1), Cell(_pct(leak), {"leak_frac": leak})
            for b, sc in run_scores(s, run, list(preset.benchmarks), preset.eval, notes).items():
                ref = base_sc[b].scores if b in base_sc else None
                row[b] = _score_cell(sc.scores, sc.counts, (), ref, "base" if ref else None)
                if b not in columns:
                    columns.append(b)
            rows.append(row)
    notes.append(f"ablation {name}: {what}; every other setting as in the preset's {method} config; mean L and "
                 "leakage (% of revisions flagged) from the revisions table")
    if budget:
        notes.append("every variant also sets: " + ", ".join(f"{k}={v!r}" for k, v in budget.items()))
    return TableData(f"Ablation {name}: {field_name} ({preset.name})", columns, rows, notes)
