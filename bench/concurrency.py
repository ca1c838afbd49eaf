"""Concurrent evaluations into one results database: do N processes at once store every row, once?

    python bench/concurrency.py [--workers 1,2,4,8] [--problems 500] [--n 4] [--batch-size 32] [--same] [--gen-delay 0]
                                [--backends sqlite,postgres] [--reps 2] [--out results.json]

N worker processes start together (a file barrier, after their imports) and each runs
`harness.evaluate.evaluate` for its own run (a distinct config, so a distinct evaluation) on the
same synthetic problems into ONE database: SQLite (WAL, a temp file) and PostgreSQL (a throwaway
server started here, tests/pgserver.py, skipped with the reason when it cannot start). The
generator and the grader are fakes that answer at once, so the figure is the storage path: open
the database, get-or-create the run, open the evaluation, write every sample in per-batch
transactions, summarize. `--same` gives every worker the SAME run and evaluation instead (the
"two identical evaluations" case: the workers split its problems through harness.claims, so
`generated`, the prompts sent to the workers' engines in all, should equal --problems).

Reported per backend and N: prompts generated, rows stored (expected N x problems x n, or problems x n with --same),
duplicate rows (0), runs and evaluations, worker errors (0), the wall time from the barrier to the
last worker's end (the best of --reps repetitions, and how much slower the worst was), throughput
(rows/s) and its ratio to N = 1. On a
shared 2-core machine N > 2 processes share two cores: throughput measures contention, not scale.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class InstantGenerator:
    """Answers every prompt (after `delay_s`): even problems right (\\boxed{gold}), odd ones wrong."""

    tokenizer = None

    def __init__(self, golds: dict[str, str], delay_s: float = 0.0):
        self.golds, self.sent, self.delay_s = golds, 0, delay_s

    def generate(self, prompts, sampling, seeds=None, progress=False):
        from harness.generation import Completion

        self.sent += len(prompts)
        time.sleep(self.delay_s)  # --gen-delay: an engine's time per call, to see the work being split
        out = []
        for prompt in prompts:
            problem = prompt.removeprefix("Problem: ").removesuffix("\nSolution:")
            gold = self.golds[problem]
            text = f" {problem} = \\boxed{{{gold if int(gold) % 2 == 0 else -1}}}"
            out.append([Completion(text, [1] * 8, "stop", 6)] * sampling.n)
        return out

    def close(self) -> None:
        pass


class ExactGrader:
    """String equality of the boxed answer; no worker processes (the storage path is measured)."""

    def settings(self) -> dict:
        return {"name": "bench-exact"}

    def grade(self, pairs):
        from benchmarks.registry import last_boxed
        from harness.grading import Verdict

        return [Verdict(last_boxed(text), last_boxed(text) == gold, 0.0) for text, gold in pairs]


def worker(url: str, index: int, sync: str, problems: int, n: int, batch_size: int, same: bool,
           delay_s: float) -> None:
    """One process: wait at the barrier, evaluate, print {"rows", "seconds", "error"} as JSON."""
    from benchmarks.registry import Problem
    from harness.evaluate import evaluate
    from harness.protocol import EvalProtocol
    from harness.store import engine_of, get_or_create_run, open_db

    probs = [Problem(f"q{i}", f"{i}+1", str(i + 1)) for i in range(problems)]
    protocol = EvalProtocol(template="tiny-boxed", n_default=n, temperature=1.0, top_p=1.0, max_tokens=8)
    Path(sync, f"ready-{index}").touch()
    deadline = time.time() + 900  # an orphaned worker (the parent died) stops by itself
    while not Path(sync, "go").exists():
        if time.time() > deadline:
            sys.exit("no go signal within 900 s")
        time.sleep(0.0005)
    t0, error, rows, gen = time.perf_counter(), None, 0, InstantGenerator({p.problem: p.answer for p in probs}, delay_s)
    try:
        factory = open_db(url)
        run, _ = get_or_create_run(factory, method="bench", model="instant", preset="bench", seed=0,
                                   config={"worker": 0 if same else index})
        result = evaluate(factory, run.id, "bench", probs, protocol, gen, ExactGrader(), batch_size=batch_size,
                          progress=False)
        rows = problems * n if not result["reused"] else 0
        engine_of(factory).dispose()
    except Exception as e:  # reported, counted as an error: the benchmark's point
        error = f"{type(e).__name__}: {e}"[:300]
    print(json.dumps({"rows": rows, "generated": gen.sent, "seconds": time.perf_counter() - t0, "error": error}))


def one_round(url: str, workers: int, args, tmp: Path) -> dict:
    """N workers at once into `url` (a fresh database); the stored rows checked afterwards."""
    sync = Path(tempfile.mkdtemp(dir=tmp))
    cmd = [sys.executable, __file__, "--worker", url, "--sync", str(sync), "--problems", str(args.problems),
           "--n", str(args.n), "--batch-size", str(args.batch_size), "--gen-delay", str(args.gen_delay),
           *(["--same"] if args.same else [])]
    procs = [subprocess.Popen(cmd + ["--index", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(workers)]
    while len(list(sync.glob("ready-*"))) < workers:  # every worker has imported and is waiting
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    t0 = time.perf_counter()
    (sync / "go").touch()
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        lines = out.strip().splitlines()
        reports.append(json.loads(lines[-1]) if p.returncode == 0 and lines else {"error": err.strip()[-300:]})
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "errors": [r["error"] for r in reports if r.get("error")],
            "generated": sum(r.get("generated", 0) for r in reports), **stored(url)}


def stored(url: str) -> dict:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    q = {
        "rows": "SELECT COUNT(*) FROM samples",
        "duplicates": "SELECT COUNT(*) FROM (SELECT 1 FROM samples GROUP BY evaluation_id, problem_id, sample_index "
                      "HAVING COUNT(*) > 1) AS d",
        "runs": "SELECT COUNT(*) FROM runs",
        "evaluations": "SELECT COUNT(*) FROM evaluations",
        "unfinished": "SELECT COUNT(*) FROM evaluations WHERE status <> 'finished'",
    }
    with engine.connect() as conn:
        out = {k: conn.execute(text(v)).scalar() for k, v in q.items()}
    engine.dispose()
    return out


def databases(backends: list[str], tmp: Path, stack):
    """(backend, make_url(name) -> URL of a fresh database) for each backend that can run here."""
    for backend in backends:
        if backend == "sqlite":
            yield backend, lambda name: f"sqlite:///{tmp / (name + '.db')}"
        elif backend == "postgres":
            sys.path.insert(0, str(ROOT / "tests"))
            import pgserver

            reason = pgserver.unavailable()
            if reason:
                print(f"postgres skipped: {reason}")
                continue
            admin = stack.enter_context(pgserver.temp_server(max_connections=100))
            yield backend, lambda name, admin=admin: pgserver.create_database(admin, name)


def main() -> None:
    from contextlib import ExitStack

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--gen-delay", type=float, default=0.0, help="seconds the fake engine takes per call")
    ap.add_argument("--same", action="store_true", help="every worker evaluates the same run and evaluation")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--sync", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.index, args.sync, args.problems, args.n, args.batch_size, args.same,
                      args.gen_delay)

    from rich.console import Console
    from rich.table import Table

    counts = [int(x) for x in args.workers.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        for backend, fresh_db in databases(args.backends.split(","), Path(tmp), stack):
            base = None
            for workers in counts:
                rounds = [one_round(fresh_db(f"c{workers}r{rep}"), workers, args, Path(tmp))
                          for rep in range(args.reps)]
                best = min(rounds, key=lambda r: r["wall_s"])
                best["errors"] = [e for r in rounds for e in r["errors"]]  # over every repetition
                best["duplicates"] = max(r["duplicates"] for r in rounds)
                best["generated"] = max(r["generated"] for r in rounds)  # the worst repetition
                best["wall_spread_s"] = max(r["wall_s"] for r in rounds) - best["wall_s"]
                best.update(backend=backend, workers=workers, rows_per_s=best["rows"] / best["wall_s"],
                            expected_rows=(1 if args.same else workers) * args.problems * args.n)
                base = base or best["rows_per_s"]
                best["vs_single"] = best["rows_per_s"] / base
                results.append(best)
    table = Table(title=f"{'same' if args.same else 'distinct'} evaluations, {args.problems} problems x n={args.n}, "
                        f"batch {args.batch_size}, engine {args.gen_delay} s/call, best of {args.reps}")
    for c in ("backend", "N", "generated", "rows", "expected", "duplicates", "runs", "evals", "unfinished", "errors",
              "wall s", "spread", "rows/s", "vs N=1"):
        table.add_column(c, justify="left" if c == "backend" else "right")
    for r in results:
        table.add_row(r["backend"], str(r["workers"]), str(r["generated"]), str(r["rows"]), str(r["expected_rows"]),
                      str(r["duplicates"]), str(r["runs"]), str(r["evaluations"]), str(r["unfinished"]),
                      str(len(r["errors"])), f"{r['wall_s']:.2f}", f"+{r['wall_spread_s']:.2f}",
                      f"{r['rows_per_s']:.0f}", f"{r['vs_single']:.2f}")
    console = Console()
    console.print(table)
    for r in results:
        for e in r["errors"]:
            console.print(f"{r['backend']} N={r['workers']}: {e}", markup=False, highlight=False)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
