"""Figures for the paper, drawn from results.db (matplotlib, Agg backend, PNG).

    write_figures(factory, preset, out_dir) -> [paths]   # every figure the database has data for

- passk.png: pass@k against k per benchmark, one line per method (unbiased estimator over each
  problem's n samples, averaged over problems).
- rescue.png: rescue rate against compute per zero-hit prompt, LatentRevise vs resample vs hint
  (one point per mining run; runs of one method that differ only in K join into a curve).
- fw_dynamics.png: the two loss terms of LatentRevise over the K Frank-Wolfe steps, mean and
  10-90% band over the preset's revisions, one line per K.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from harness.store import Revision, Run, session_scope  # noqa: E402
from repro.presets import Preset  # noqa: E402
from repro.scores import pick_runs, rescue_points, run_scores  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def passk_figure(factory: sessionmaker[Session], preset: Preset, path: Path,
                 prefer: dict[str, str] | None = None) -> Path | None:
    from harness.metrics import pass_at_k

    with session_scope(factory) as s:
        runs = pick_runs(s, preset.name, prefer, [])
        scored = {m: run_scores(s, r, list(preset.benchmarks), preset.eval, []) for m, r in runs.items()}
    scored = {m: sc for m, sc in scored.items() if sc}
    if not scored:
        return None
    benches = [b for b in preset.benchmarks if any(b in sc for sc in scored.values())]
    fig, axes = plt.subplots(1, len(benches), figsize=(3.4 * len(benches), 3.2), squeeze=False, sharey=True)
    for ax, b in zip(axes[0], benches):
        for m, sc in scored.items():
            if b not in sc:
                continue
            counts = list(sc[b].counts.values())
            n = min(n for n, _ in counts)
            ks = sorted({1, *[2 ** i for i in range(1, int(np.log2(n)) + 1)], n})
            ys = [100 * np.mean([pass_at_k(ni, ci, k) for ni, ci in counts]) for k in ks]
            ax.plot(ks, ys, marker="o", ms=3, label=m)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{b} (n={preset.eval.n_for(b)})", fontsize=10)
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pass@k (%)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"pass@k ({preset.name})", fontsize=11)
    return _save(fig, path)


def fw_figure(factory: sessionmaker[Session], preset: Preset, path: Path) -> Path | None:
    """Both loss terms over the Frank-Wolfe steps: one line (mean, 10-90% band) per K, so that runs with
    different K are never averaged into one curve."""
    with session_scope(factory) as s:
        rows = s.execute(select(Revision.gold_loss, Revision.away_loss).join(Run, Run.id == Revision.run_id)
                         .where(Run.preset == preset.name)).all()
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, idx, name in ((axes[0], 0, "toward-gold loss (NLL of the gold answer)"),
                          (axes[1], 1, "away loss (failed continuation)")):
        curves = [[np.nan if v is None else v for v in r[idx]] for r in rows if r[idx] and len(r[idx]) > 1]
        by_len: dict[int, list[list[float]]] = {}
        for c in curves:
            by_len.setdefault(len(c), []).append(c)
        drawn = 0
        for j, (n, group) in enumerate(sorted(by_len.items())):
            arr = np.array(group, dtype=float)
            if np.isnan(arr).all():
                continue
            steps = np.arange(n)
            with np.errstate(all="ignore"):
                mean = np.nanmean(arr, 0)
                lo, hi = np.nanpercentile(arr, 10, 0), np.nanpercentile(arr, 90, 0)
            ax.plot(steps, mean, color=f"C{j}", marker="o", ms=2, label=f"K={n - 1} ({len(group)} revisions)")
            ax.fill_between(steps, lo, hi, color=f"C{j}", alpha=0.12)
            drawn += 1
        if not drawn:
            ax.set_visible(False)
            continue
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("Frank-Wolfe step k")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Frank-Wolfe dynamics ({preset.name}): mean and 10-90% band per K", fontsize=11)
    return _save(fig, path)


def rescue_figure(factory: sessionmaker[Session], preset: Preset, path: Path) -> Path | None:
    """Each mining run is a point (compute per zero-hit prompt, rescue rate); runs of one method whose
    configs differ only in K are joined in order of K, so LatentRevise's K ablation traces a curve."""
    points = rescue_points(factory, preset)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, method in enumerate(sorted({p["method"] for p in points})):
        pts = [p for p in points if p["method"] == method]
        ax.scatter([p["fte"] for p in pts], [100 * p["rate"] for p in pts], color=f"C{i}", s=18, label=method)
        for fam in {p["family"] for p in pts}:
            curve = sorted((p for p in pts if p["family"] == fam), key=lambda p: p["fw_steps"] or 0)
            if len(curve) < 2:
                continue
            ax.plot([p["fte"] for p in curve], [100 * p["rate"] for p in curve], color=f"C{i}", lw=1)
            for p in curve:
                ax.annotate(f"K={p['fw_steps']}", (p["fte"], 100 * p["rate"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_xlabel("compute per zero-hit prompt (forward-token equivalents)")
    ax.set_ylabel("zero-hit prompts rescued (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"rescue rate vs compute ({preset.name})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_figures(factory: sessionmaker[Session], preset: Preset, out_dir: str | Path,
                  prefer: dict[str, str] | None = None) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = [passk_figure(factory, preset, out / "passk.png", prefer),
            rescue_figure(factory, preset, out / "rescue.png"),
            fw_figure(factory, preset, out / "fw_dynamics.png")]
    return [p for p in made if p is not None]
