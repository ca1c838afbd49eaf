"""Published numbers a correct harness should approach under the same protocol (`--table reference`).

Each entry names its source (repository, file, commit or paper) and the protocol the number was
measured under. Only numbers copied from a source a reader can open are here. The table shows
them beside our own base-model measurements from results.db, so a wrong template, grader or
sampling setting shows up as a gap before any training is spent.

Like with like: every row states its problem sets, template (by harness/prompts.py's names, which are
the sources' names), grader, decoding and samples per problem, and the table marks a row "not comparable"
with the reasons where its problem set, template or decoding differs from our protocol (the `paper`
preset's). A figure sits in the column of the problem set it was measured on: the AMC figures of
DeepScaleR, its followers (FastCuRL, ConciseR) and understand-r1-zero are on the 83 problems of AMC 2022+2023
(agentica-project/deepscaler @95ef74ff deepscaler/data/test/amc.json; understand-r1-zero's
datasets/evaluation_suite/amc), printed there as "AMC 2023"; they go in the `amc22+23` column, never in
`amc23` (our 40 AMC 2023 problems, = QwenLM/Qwen2.5-Math evaluation/data/amc23/test.jsonl).

Protocol matters as much as the model: the same Qwen2.5-Math-7B scores 13.3 on AIME24 greedily
with Qwen's `qwen-boxed` template (SimpleRL-Zoo) and 20.7 as avg@32 under ConciseR's protocol, and
Liu et al. (understand-r1-zero) report that Qwen2.5 base models' average benchmark scores improve by
~60% without any prompt template compared with 4-shot prompting. Compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from harness.protocol import EvalProtocol
from harness.store import Run, session_scope
from repro.presets import PAPER, PRESETS
from repro.render import Cell, TableData, format_pct
from repro.scores import pick_runs, run_scores

BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "olympiadbench")  # ours: what results.db holds


@dataclass(frozen=True)
class ProblemSet:
    column: str
    n_problems: int
    description: str


PROBLEM_SETS: dict[str, ProblemSet] = {s.column: s for s in (
    ProblemSet("math500", 500, "MATH-500"),
    ProblemSet("aime24", 30, "AIME 2024"),
    ProblemSet("aime25", 30, "AIME 2025"),
    ProblemSet("amc23", 40, "AMC 2023, 40 problems (QwenLM/Qwen2.5-Math evaluation/data/amc23)"),
    ProblemSet("amc22+23", 83,
               "AMC 2022+2023, 83 problems (agentica-project/deepscaler deepscaler/data/test/amc.json)"),
    ProblemSet("olympiadbench", 675, "OlympiadBench, 675 problems"),
)}
COLUMNS = tuple(PROBLEM_SETS)
NOT_STATED = "not stated"


@dataclass(frozen=True)
class Published:
    model: str  # hub id of the evaluated model
    source: str  # where the number is printed
    protocol: str  # how it was measured, in the source's words
    scores: dict[str, float]  # problem set (a PROBLEM_SETS column) -> accuracy in %
    template: str  # a harness/prompts.py name when the source's prompt is one of ours, else what it was
    grader: str
    n: str  # samples per problem
    temperature: float | None  # 0 = greedy; None = not stated
    top_p: float | None = None

    def __post_init__(self) -> None:
        unknown = set(self.scores) - set(PROBLEM_SETS)
        if unknown:
            raise ValueError(f"Published({self.model!r}, {self.source[:40]!r}): unknown problem set(s) "
                             f"{sorted(unknown)}; known: {', '.join(PROBLEM_SETS)}")

    def differences(self, protocol: EvalProtocol, problem_sets: set[str]) -> list[str]:
        """Why this row is not measured like `protocol` on `problem_sets` (empty: comparable)."""
        out = [f"problem set {k} ({PROBLEM_SETS[k].n_problems} problems) is not ours" for k in self.scores
               if k not in problem_sets]
        if self.template != protocol.template:
            out.append(f"template {self.template} (ours {protocol.template})")
        if self.temperature is None:
            out.append("decoding not stated")
        elif (self.temperature, self.top_p if self.temperature else None) != \
                (protocol.temperature, protocol.top_p if protocol.temperature else None):
            got = "greedy" if self.temperature == 0 else f"T={self.temperature}, top-p {self.top_p}"
            want = "greedy" if protocol.temperature == 0 else f"T={protocol.temperature}, top-p {protocol.top_p}"
            out.append(f"decoding {got} (ours {want})")
        return out


# Sources (each row's numbers are copied from the first one named)
SIMPLERL = ("SimpleRL-Zoo README, 'Main Results / Qwen Series Model' (github.com/hkust-nlp/simpleRL-reason "
            "@9b928d49; arXiv 2503.18892)")
CONCISER = "ConciseR README, 'Key Results' (github.com/nick7nlp/ConciseR @01d9caec; arXiv 2505.21178)"
DEEPSCALER = ("DeepScaleR README, 'Evaluation' (github.com/agentica-project/deepscaler @95ef74ff; the same numbers in "
              "FastCuRL's README, github.com/AnitaLeungxx/FastCuRL)")
QWEN_GRADER = "Qwen2.5-Math evaluation (grader.py math_equal), no code execution"
CONCISER_AMC = ("amc22+23: ConciseR is by FastCuRL's authors, who evaluate with DeepScaleR's code and data; "
                "its DeepSeek-R1-Distill row is DeepScaleR's number")
DEEPSCALER_TEMPLATE = ("DeepScaleR's: the problem + \"Let's think step by step and output the final answer within "
                       "\\boxed{}.\" in the model's chat template (deepscaler scripts/data/deepscaler_dataset.py)")

PUBLISHED: tuple[Published, ...] = (
    Published("Qwen/Qwen2.5-Math-7B", SIMPLERL, "pass@1, greedy ('baselines use greedy decoding')",
              {"math500": 63.6, "aime24": 13.3, "amc23": 42.5, "olympiadbench": 25.8},
              template="qwen-boxed", grader=QWEN_GRADER, n="1", temperature=0.0),
    Published("Qwen/Qwen2.5-Math-7B", SIMPLERL, "AIME24 avg@32 ('32 responses per model with the same settings')",
              {"aime24": 8.6}, template="qwen-boxed", grader=QWEN_GRADER, n="32", temperature=None),
    Published("hkust-nlp/Qwen-2.5-Math-7B-SimpleRL-Zoo", SIMPLERL, "pass@1, T=1.0, top-p 0.95 (single sample)",
              {"math500": 80.2, "aime24": 40.0, "amc23": 70.0, "olympiadbench": 39.0},
              template="qwen-boxed", grader=QWEN_GRADER, n="1", temperature=1.0, top_p=0.95),
    Published("Qwen/Qwen2.5-Math-7B", CONCISER, "avg@32 (pass@1 averaged over 32 samples); " + CONCISER_AMC,
              {"math500": 64.3, "aime24": 20.7, "amc22+23": 56.2, "olympiadbench": 29.0},
              template=NOT_STATED, grader=NOT_STATED, n="32", temperature=None),
    Published("Qwen/Qwen2.5-Math-1.5B", CONCISER, "avg@32 (pass@1 averaged over 32 samples); " + CONCISER_AMC,
              {"math500": 51.7, "aime24": 11.3, "amc22+23": 44.0, "olympiadbench": 26.0},
              template=NOT_STATED, grader=NOT_STATED, n="32", temperature=None),
    Published("sail/Qwen2.5-Math-7B-Oat-Zero", CONCISER, "avg@32; " + CONCISER_AMC,
              {"math500": 79.4, "aime24": 28.0, "amc22+23": 66.2, "olympiadbench": 43.8},
              template=NOT_STATED, grader=NOT_STATED, n="32", temperature=None),
    Published("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", DEEPSCALER,
              "pass@1 averaged over 16 samples, T=0.6, top-p 0.95 (scripts/eval/eval_model.sh)",
              {"math500": 82.8, "aime24": 28.8, "amc22+23": 62.9, "olympiadbench": 43.3},
              template=DEEPSCALER_TEMPLATE, grader="DeepScaleR reward (deepscaler/rewards/math_reward.py)", n="16",
              temperature=0.6, top_p=0.95),
)


def published_row(pub: Published, protocol: EvalProtocol, problem_sets: set[str]) -> dict[str, Any]:
    """One published row: its protocol facts, the comparability mark against ours, its scores by problem set."""
    why = pub.differences(protocol, problem_sets)
    return {"model": pub.model, "source": pub.source, "protocol": pub.protocol, "template": pub.template,
            "grader": pub.grader, "n": pub.n,
            "problem sets": "; ".join(f"{k}: {PROBLEM_SETS[k].n_problems}" for k in pub.scores),
            "comparable": Cell("yes" if not why else "NOT comparable: " + "; ".join(why), {"comparable": not why,
                                                                                          "differences": why}),
            **{k: Cell(f"{v:.1f}", {"value": v, "n_problems": PROBLEM_SETS[k].n_problems})
               for k, v in pub.scores.items()}}


def reference_table(factory: sessionmaker[Session] | None = None, protocol: EvalProtocol = PAPER.eval) -> TableData:
    """Published rows, each followed by our measurement of the same model where results.db has one."""
    notes: list[str] = []
    columns = ["model", "source", "protocol", "template", "grader", "n", "problem sets", "comparable", *COLUMNS]
    measured = _measured(factory, notes) if factory is not None else {}
    rows: list[dict[str, Any]] = []
    shown: set[str] = set()
    for pub in PUBLISHED:
        rows.append(published_row(pub, protocol, set(BENCHMARKS)))
        if pub.model in measured and pub.model not in shown:
            shown.add(pub.model)
            rows += measured[pub.model]
    notes += [
        "published numbers are in %; 'ours' rows: avg@n of our base run under the preset's protocol, from results.db",
        f"'comparable' is judged against the paper preset's protocol (template {protocol.template}, "
        f"T={protocol.temperature}, top-p {protocol.top_p}) and our problem sets ({', '.join(BENCHMARKS)}); "
        "a grader or sample-count difference is stated, not a mark",
        "amc23 = 40 AMC 2023 problems; amc22+23 = 83 AMC 2022+2023 problems (DeepScaleR's and understand-r1-zero's "
        "'AMC 2023'): the two columns are different problem sets",
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
            row: dict[str, Any] = {"model": base.model, "source": "results.db", "protocol": proto,
                                   "template": p.template, "grader": "ours (harness/grading.py, math-verify)",
                                   "n": ", ".join(f"{b}: {sc.n}" for b, sc in scores.items()),
                                   "problem sets": "; ".join(f"{b}: {len(sc.scores)}" for b, sc in scores.items()),
                                   "comparable": Cell("ours", {"comparable": None})}
            for b, sc in scores.items():
                vals = list(sc.scores.values())
                mean = sum(vals) / len(vals)
                row[b] = Cell(f"{format_pct(mean)} (n={sc.n})", {"value": 100 * mean, "n": sc.n,
                                                            "n_problems": len(vals)})
            out.setdefault(base.model, []).append(row)
    return out


def models_with_reference() -> set[str]:
    return {p.model for p in PUBLISHED}


__all__ = ["PUBLISHED", "PROBLEM_SETS", "ProblemSet", "Published", "published_row", "reference_table",
           "models_with_reference", "Run"]
