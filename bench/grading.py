"""Grading throughput: in-process vs the worker pool, on the same pairs, in one run.

Three phases per configuration, each a separate `grade` call on the same lists for every config:
  boxed    reference solutions against their answers (500 MATH500 + the first `--train` MATH train
           problems): the common case, one box at the end;
  no-box   the first `--unboxed` MATH500 solutions with `\\boxed` deleted: the slower anchored
           fallback path (math-verify's regexes over the whole text);
  patho    a few pathological answers that only the time limit ends;
  votes    maj@k clustering (`Grader.vote_labels`) of `--vote-problems` MATH500 problems with
           `--vote-n` answers each, all distinct (the gold, then the next problems' golds, graded
           wrong): the worst case, every pair of wrong answers compared.
Every configuration starts with a cold answer cache; pool start-up (spawning workers, importing
sympy) is timed apart.

    python bench/grading.py [--data-dir ../shared/data] [--train 500] [--unboxed 100] [--timeout-s 2]
                            [--vote-problems 100] [--vote-n 16] [--json out.json]

Timings share the machine with whatever else runs: repeat before trusting a small difference.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from benchmarks import load_benchmark
from harness import grading
from harness.grading import Grader

PATHOLOGICAL = [r"\boxed{10^{10^{10^{10}}}}", r"\boxed{2^{2^{2^{2^{2^{2}}}}}}", r"\boxed{10!!!!!!}"]


def measure(name: str, grader: Grader, phases: dict[str, list[tuple[str, str]]], votes: list) -> dict:
    grading._parse_answer.cache_clear()  # the in-process cache; pool workers start cold anyway
    t0 = time.perf_counter()
    grader.grade([(r"\boxed{1}", "1")] * max(1, grader.workers))  # spawn + import, timed apart
    row = {"config": name, "startup_s": time.perf_counter() - t0}
    for phase, pairs in phases.items():
        t0 = time.perf_counter()
        verdicts = grader.grade(pairs)
        wall = time.perf_counter() - t0
        row[phase] = {"pairs": len(pairs), "wall_s": wall, "pairs_per_s": len(pairs) / wall,
                      "correct": sum(v.correct for v in verdicts),
                      "timeouts": sum(v.error == "timeout" for v in verdicts)}
    t0 = time.perf_counter()
    labels = grader.vote_labels(votes)
    row["votes"] = {"problems": len(votes), "wall_s": time.perf_counter() - t0,
                    "clusters": sum(len({x for x in lab if x is not None}) for lab in labels)}
    return row


def vote_inputs(problems, n: int) -> list[tuple[list[str], list[bool]]]:
    """Per problem: its gold (correct) and the golds of the next n-1 problems (wrong)."""
    golds = [p.answer for p in problems]
    return [([golds[(i + j) % len(golds)] for j in range(n)], [j == 0 for j in range(n)]) for i in range(len(golds))]


def main(data_dir: Path = typer.Option(Path(os.environ.get("LATENTREVISE_DATA_DIR", "../shared/data"))),
         train: int = 500, unboxed: int = 100, timeout_s: float = 2.0, vote_problems: int = 100, vote_n: int = 16,
         json_out: Path | None = typer.Option(None, "--json")):
    math500 = load_benchmark("math500", data_dir)
    problems = math500 + (load_benchmark("math_train", data_dir, limit=train) if train else [])  # limit=0: all
    phases = {
        "boxed": [(p.meta["solution"], p.answer) for p in problems],
        "no-box": [(p.meta["solution"].replace("\\boxed", ""), p.answer) for p in math500[:unboxed]],
        "patho": [(t, "1") for t in PATHOLOGICAL],
    }
    votes = vote_inputs(math500[:vote_problems], vote_n) if vote_problems else []
    configs = [("in-process (workers=0)", dict(workers=0)),
               ("pool workers=1 batch=16", dict(workers=1, batch_size=16)),
               ("pool workers=2 batch=16", dict(workers=2, batch_size=16)),
               ("pool workers=2 batch=1", dict(workers=2, batch_size=1))]
    rows = []
    for name, kwargs in configs:
        with Grader(timeout_s=timeout_s, **kwargs) as grader:
            rows.append(measure(name, grader, phases, votes))
    table = Table(title=f"Grading throughput, {len(phases['boxed'])} boxed / {len(phases['no-box'])} no-box / "
                        f"{len(PATHOLOGICAL)} pathological pairs (timeout {timeout_s:g} s); "
                        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for col in ("config", "startup s", "boxed pairs/s", "x", "no-box pairs/s", "x", "correct b/nb",
                "patho wall s", "timeouts", "votes s"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for r in rows:
        for phase in ("boxed", "no-box"):
            r[phase]["ratio"] = r[phase]["pairs_per_s"] / rows[0][phase]["pairs_per_s"]
        b, nb, pt = r["boxed"], r["no-box"], r["patho"]
        table.add_row(r["config"], f"{r['startup_s']:.1f}", f"{b['pairs_per_s']:.0f}", f"{b['ratio']:.2f}",
                      f"{nb['pairs_per_s']:.0f}", f"{nb['ratio']:.2f}", f"{b['correct']}/{nb['correct']}",
                      f"{pt['wall_s']:.1f}", f"{pt['timeouts']}/{pt['pairs']}", f"{r['votes']['wall_s']:.1f}")
    Console(width=150).print(table)
    if json_out:
        json_out.write_text(json.dumps({"settings": Grader(timeout_s=timeout_s).settings(), "rows": rows}, indent=1))


if __name__ == "__main__":
    typer.run(main)
