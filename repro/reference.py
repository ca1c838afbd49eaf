"""Published numbers a correct harness should approach under the same protocol (`--table reference`).

Each entry names its source (repository, file, commit or paper) and the protocol the number was
measured under. Only numbers copied from a source a reader can open are here. The table shows
them beside our own base-model measurements from results.db, so a wrong template, grader or
sampling setting shows up as a gap before any training is spent.

Protocol matters as much as the model: the same Qwen2.5-Math-7B scores 13.3 on AIME24 greedily
with the `qwen-boxed` template (SimpleRL-Zoo) and 20.7 as avg@32 under ConciseR's protocol, and
Liu et al. (understand-r1-zero) report that Qwen2.5 base models' average benchmark scores improve by
~60% without any prompt template compared with 4-shot prompting. Compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from harness.store import Run, session_scope
from repro.presets import PRESETS
from repro.render import Cell, TableData, format_pct
from repro.scores import pick_runs, run_scores

BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "olympiadbench")


@dataclass(frozen=True)
class Published:
    model: str  # hub id of the evaluated model
    source: str  # where the number is printed
    protocol: str  # how it was measured (decoding, samples, template)
    scores: dict[str, float]  # benchmark -> accuracy in %


SIMPLERL = ("SimpleRL-Zoo README, 'Main Results / Qwen Series Model' (github.com/hkust-nlp/simpleRL-reason "
            "@9b928d49; arXiv 2503.18892)")
CONCISER = "ConciseR README, 'Key Results' (github.com/nick7nlp/ConciseR; arXiv 2505.21178)"
FASTCURL = ("FastCuRL README, 'Key Results' (numbers as reported by DeepScaleR; stored copy at "
            "github.com/AnitaLeungxx/FastCuRL README.md)")

PUBLISHED: tuple[Published, ...] = (
    Published("Qwen/Qwen2.5-Math-7B", SIMPLERL,
              "pass@1, greedy, template qwen-boxed, Qwen2.5-Math evaluation code (no code execution)",
              {"math500": 63.6, "aime24": 13.3, "amc23": 42.5, "olympiadbench": 25.8}),
    Published("Qwen/Qwen2.5-Math-7B", SIMPLERL, "AIME24 avg@32 ('32 responses per model with the same settings'), template qwen-boxed",
              {"aime24": 8.6}),
    Published("hkust-nlp/Qwen-2.5-Math-7B-SimpleRL-Zoo", SIMPLERL,
              "pass@1, T=1.0, top-p 0.95, template qwen-boxed (AIME24 single sample)",
              {"math500": 80.2, "aime24": 40.0, "amc23": 70.0, "olympiadbench": 39.0}),
    Published("Qwen/Qwen2.5-Math-7B", CONCISER, "avg@32 (pass@1 averaged over 32 samples); template not stated",
              {"math500": 64.3, "aime24": 20.7, "amc23": 56.2, "olympiadbench": 29.0}),
    Published("Qwen/Qwen2.5-Math-1.5B", CONCISER, "avg@32 (pass@1 averaged over 32 samples); template not stated",
              {"math500": 51.7, "aime24": 11.3, "amc23": 44.0, "olympiadbench": 26.0}),
    Published("sail/Qwen2.5-Math-7B-Oat-Zero", CONCISER, "avg@32; template not stated",
              {"math500": 79.4, "aime24": 28.0, "amc23": 66.2, "olympiadbench": 43.8}),
    Published("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", FASTCURL,
              "pass@1 averaged over 16 samples per problem; sampling settings not stated there",
              {"math500": 82.8, "aime24": 28.8, "amc23": 62.9, "olympiadbench": 43.3}),
)


def reference_table(factory: sessionmaker[Session] | None = None) -> TableData:
    """Published rows, each followed by our measurement of the same model where results.db has one."""
    notes: list[str] = []
    columns = ["model", "source", "protocol", *BENCHMARKS]
    measured = _measured(factory, notes) if factory is not None else {}
    rows: list[dict[str, Any]] = []
    shown: set[str] = set()
    for pub in PUBLISHED:
        rows.append({"model": pub.model, "source": pub.source, "protocol": pub.protocol,
                     **{b: Cell(f"{v:.1f}", {"value": v}) for b, v in pub.scores.items()}})
        if pub.model in measured and pub.model not in shown:
            shown.add(pub.model)
            rows += measured[pub.model]
    notes += [
        "published numbers are in %; 'ours' rows: avg@n of our base run under the preset's protocol, from results.db",
        "protocols differ between sources (greedy vs sampled, template): the same Qwen2.5-Math-7B scores 13.3 "
        "(greedy, qwen-boxed) vs 20.7 (avg@32) on AIME24; compare rows with the same protocol only",
        "understand-r1-zero README (github.com/sail-sg/understand-r1-zero): Qwen2.5 base models' average benchmark "
        "scores improve by ~60% without a prompt template compared with 4-shot prompting",
    ]
    if not measured:
        notes.append("no base-model evaluation of these models in results.db yet "
                     "(python reproduce.py --table main --preset paper)")
    return TableData("Published reference numbers vs ours", columns, rows, notes)


def _measured(factory: sessionmaker[Session], notes: list[str]) -> dict[str, list[dict[str, Any]]]:
    """model -> our rows: the base run of every preset whose base model is that model."""
    out: dict[str, list[dict[str, Any]]] = {}
    with session_scope(factory) as s:
        for preset in PRESETS.values():
            base = pick_runs(s, preset.name, None, []).get("base")
            if base is None:
                continue
            scores = run_scores(s, base, list(BENCHMARKS), preset.eval, notes)
            if not scores:
                continue
            p = preset.eval
            proto = (f"ours ({preset.name}, run #{base.id}): avg@n, T={p.temperature}, top-p {p.top_p}, "
                     f"template {p.template}, max {p.max_tokens} tokens")
            row: dict[str, Any] = {"model": base.model, "source": "results.db", "protocol": proto}
            for b, sc in scores.items():
                vals = list(sc.scores.values())
                mean = sum(vals) / len(vals)
                row[b] = Cell(f"{format_pct(mean)} (n={sc.n})", {"value": 100 * mean, "n": sc.n,
                                                            "n_problems": len(vals)})
            out.setdefault(base.model, []).append(row)
    return out


def models_with_reference() -> set[str]:
    return {p.model for p in PUBLISHED}


__all__ = ["PUBLISHED", "Published", "reference_table", "models_with_reference", "Run"]
