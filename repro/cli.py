"""Subcommands of reproduce.py: eval, train, leaderboard, runs, show, query, methods, crosscheck.

    python reproduce.py eval ./my-model --benchmarks math500,aime24 --n 4 --limit 50
    python reproduce.py train lr-sft --preset tiny --set fw_steps=5   # train + evaluate one method
    python reproduce.py leaderboard --format markdown
    python reproduce.py runs | show 3 | methods
    python reproduce.py query "SELECT benchmark, AVG(correct) FROM samples JOIN evaluations e ON e.id = evaluation_id GROUP BY 1"
    python reproduce.py crosscheck math500 --model ./my-model --limit 20

Every command reads or writes results.db (`--db`, a path or any SQLAlchemy URL); `query` opens it
read-only. Heavy imports (vLLM, lm-eval, torch) happen inside the commands that need them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from repro.render import format_value

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_show_locals=False)
console = Console()

DEFAULT_BENCHMARKS = "math500,aime24,aime25,amc23,olympiadbench"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=1)


def check_model(model: str) -> str:
    """A local model directory (with config.json) or a hub id; anything else is a clear error."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            fail(f"model directory {path} has no config.json (expected a Hugging Face model directory)")
        return str(path.resolve())
    if model.startswith((".", "/", "~")) or not HUB_ID.match(model):
        fail(f"model {model!r} not found: not a local directory and not a hub id of the form 'org/name'")
    return model


def check_benchmarks(names: str) -> list[str]:
    from benchmarks import list_benchmarks

    wanted = [b.strip() for b in names.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in list_benchmarks()]
    if unknown or not wanted:
        fail(f"unknown benchmark(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(list_benchmarks())}")
    return wanted


def pass_ks(n: int) -> tuple[int, ...]:
    return tuple(sorted({1, n} | {2 ** i for i in range(1, 12) if 2 ** i <= n}))


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="local model directory or hub id"),
    benchmarks: str = typer.Option(DEFAULT_BENCHMARKS, "--benchmarks", help="comma-separated benchmark names"),
    template: str = typer.Option("qwen-boxed", "--template", help="prompt template (harness/prompts.py)"),
    n: int = typer.Option(1, "--n", min=1, help="samples per problem"),
    temperature: float = typer.Option(0.6, "--temperature", min=0.0),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    max_tokens: int = typer.Option(3072, "--max-tokens", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="first N problems of each benchmark"),
    seed: int = typer.Option(0, "--seed"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", envvar="LATENTREVISE_DATA_DIR"),
    db: str = typer.Option("results.db", "--db", help="SQLite path or any SQLAlchemy URL"),
    backend: str = typer.Option("vllm", "--backend", help="vllm | hf"),
    dtype: str = typer.Option("auto", "--dtype"),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", min=1),
    data_parallel_size: int = typer.Option(1, "--data-parallel-size", min=1),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="vLLM context length"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="problems per generation batch"),
) -> None:
    """Evaluate a model on benchmarks; every sample and verdict goes to results.db (resumable)."""
    from harness.evaluate import evaluate_model
    from harness.generation import GeneratorFactory, VLLMSettings
    from harness.prompts import TEMPLATES
    from harness.protocol import EvalProtocol
    from harness.store import finish_run, get_or_create_run, open_db

    if template not in TEMPLATES:
        fail(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    if backend not in ("vllm", "hf"):
        fail(f"--backend must be 'vllm' or 'hf', got {backend!r}")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        fail("vLLM is not installed; install it (see README) or pass --backend hf")
    names = check_benchmarks(benchmarks)
    model = check_model(model)
    protocol = EvalProtocol(template=template, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                            n_default=n, pass_k=pass_ks(n), seed=seed)
    settings = VLLMSettings(dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                            data_parallel_size=data_parallel_size, max_model_len=max_model_len)

    engines = GeneratorFactory(backend, settings, seed=seed)

    def make_generator(path: str):
        try:
            return engines(path)
        except Exception as e:  # a hub id that is not reachable, a broken checkpoint, ...
            raise typer.BadParameter(f"could not load model {path!r} with {backend}: {type(e).__name__}: {e}") from e

    factory = open_db(db)
    config = {"protocol": protocol, "backend": backend, "dtype": dtype}
    # a finished run stays finished (new benchmarks are added to it); a failed one is resumed in place
    run, already_finished = get_or_create_run(factory, method="base", model=model, preset="custom", seed=seed,
                                              config=config)
    console.print(f"run {run.id} (base, {model}) -> {db}", highlight=False)
    from harness.grading import Grader

    grader = Grader()
    try:
        results = evaluate_model(factory, run.id, model, names, data_dir=data_dir, protocol=protocol,
                                 make_generator=make_generator, grader=grader, limit=limit, batch_size=batch_size)
    except BaseException as e:
        if not already_finished:
            finish_run(factory, run.id, status="failed", error=f"{type(e).__name__}: {e}"[:2000])
        if isinstance(e, typer.BadParameter):
            fail(str(e))
        raise
    finally:
        grader.close()
    if not already_finished:
        finish_run(factory, run.id)
    console.print(metrics_table(f"run {run.id}: {model}", results))


def metrics_table(title: str, results: dict[str, dict[str, Any]]) -> Table:
    keys: list[str] = []
    for m in results.values():
        keys += [k for k, v in (m or {}).items() if isinstance(v, (int, float)) and k not in keys]
    table = Table(title=title)
    table.add_column("benchmark")
    for k in keys:
        table.add_column(k, justify="right")
    for b, m in results.items():
        table.add_row(b, *[format_value((m or {}).get(k)) for k in keys])
    return table


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings -> a dict; values are read as JSON when they parse (5, 0.1, true, "x")."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--set takes key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command()
def train(
    method: str = typer.Argument(..., help="a registered method (see `methods`), ours or a third party's"),
    preset: str = typer.Option("tiny", "--preset"),
    overrides: list[str] = typer.Option([], "--set", help="method config override key=value (repeatable)"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="evaluate the trained model on the preset"),
    backend: str = typer.Option("auto", "--backend", help="auto (vLLM when installed) | vllm | hf"),
    fresh: bool = typer.Option(False, "--fresh", help="retrain even if a finished identical run exists"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", envvar="LATENTREVISE_DATA_DIR"),
    db: str = typer.Option("results.db", "--db"),
) -> None:
    """Train one method on a preset (reusing an identical finished run), then evaluate it."""
    from harness.store import open_db
    from methods.registry import available_methods
    from repro import runs as runner
    from repro.presets import get_preset

    if method not in available_methods():
        fail(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    try:
        chosen = get_preset(preset)
    except KeyError as e:
        fail(str(e.args[0]))
    factory = open_db(db)
    try:
        run = runner.train_method(factory, chosen, method, overrides=parse_overrides(overrides),
                                  data_dir=data_dir, fresh=fresh, backend=backend)
    except ValueError as e:  # unknown config field, bad value
        fail(str(e))
    console.print(f"run {run.id} ({run.method}, {run.status}): checkpoint {run.checkpoint}")
    if evaluate:
        metrics = runner.evaluate_run(factory, run, chosen, data_dir=data_dir, backend=backend)
        for bench, m in metrics.items():
            console.print(f"  {bench}: avg@{m.get('n')} = {m.get('avg@n', float('nan')):.4f}")


@app.command()
def leaderboard(
    benchmarks: Optional[str] = typer.Option(None, "--benchmarks", help="comma-separated (default: all)"),
    fmt: str = typer.Option("rich", "--format", help="rich | csv | json | markdown"),
    db: str = typer.Option("results.db", "--db"),
) -> None:
    """One row per model/method, one column per benchmark, the average and 95% CIs."""
    from harness.store import open_db
    from repro import render, tables

    if fmt not in render.FORMATS:
        fail(f"--format must be one of {', '.join(render.FORMATS)}")
    names = [b.strip() for b in benchmarks.split(",")] if benchmarks else None
    typer.echo(render.render(tables.leaderboard(open_db(db), names), fmt))


@app.command()
def runs(db: str = typer.Option("results.db", "--db")) -> None:
    """All runs: id, method, model, preset, seed, status, config hash, wall time, #evaluations."""
    from sqlalchemy import func, select

    from harness.store import Evaluation, Run, open_db, session_scope

    with session_scope(open_db(db)) as s:
        counts = dict(s.execute(select(Evaluation.run_id, func.count()).group_by(Evaluation.run_id)).all())
        rows = s.scalars(select(Run).order_by(Run.id)).all()
    table = Table(title=f"runs in {db}")
    for c in ("id", "method", "model", "preset", "seed", "status", "hash", "wall s", "#evals"):
        table.add_column(c, justify="right" if c in ("id", "seed", "wall s", "#evals") else "left")
    for r in rows:
        table.add_row(str(r.id), r.method, r.model, r.preset, str(r.seed), r.status, r.config_hash,
                      format_value(r.wall_s), str(counts.get(r.id, 0)))
    console.print(table)


@app.command()
def show(run_id: int = typer.Argument(...), db: str = typer.Option("results.db", "--db"),
         examples: int = typer.Option(2, "--examples", help="correct and incorrect samples shown per benchmark")) -> None:
    """A run's per-benchmark metrics and some correct and incorrect samples (extracted answer vs gold)."""
    from sqlalchemy import select

    from harness.store import Evaluation, Run, Sample, open_db, session_scope

    with session_scope(open_db(db)) as s:
        run = s.get(Run, run_id)
        if run is None:
            fail(f"no run {run_id} in {db}")
        evals = s.scalars(select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.id)).all()
        picks = {}
        for ev in evals:
            picks[ev.id] = [
                s.scalars(select(Sample).where(Sample.evaluation_id == ev.id, Sample.correct == ok)
                          .order_by(Sample.problem_id, Sample.sample_index).limit(examples)).all()
                for ok in (True, False)
            ]
    console.print(f"[bold]run {run.id}[/] {run.method} | {run.model} | preset {run.preset} | seed {run.seed} | "
                  f"{run.status} | hash {run.config_hash} | code {run.code_version}", highlight=False)
    if run.error:
        console.print(f"[red]error:[/] {run.error}", highlight=False)
    console.print(metrics_table("metrics", {f"{ev.benchmark} [{ev.template}, n={ev.sampling.get('n')}, "
                                             f"{ev.status}]": ev.metrics or {} for ev in evals}))
    table = Table(title="samples: some correct, some incorrect")
    for c in ("benchmark", "problem", "#", "ok", "extracted", "gold", "finish", "completion (end)"):
        table.add_column(c, overflow="fold")
    for ev in evals:
        for group in picks[ev.id]:
            for x in group:
                table.add_row(ev.benchmark, x.problem_id, str(x.sample_index), "yes" if x.correct else "no",
                              str(x.extracted), x.gold, x.finish_reason, x.completion[-160:])
    console.print(table)


@app.command()
def query(sql: str = typer.Argument(..., help="SQL to run against results.db (read-only)"),
          db: str = typer.Option("results.db", "--db"),
          max_rows: int = typer.Option(200, "--max-rows")) -> None:
    """Run SQL on results.db, read-only: a statement that writes fails with a clear error."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from harness.store import engine_of, normalize_url, open_db

    url = normalize_url(db)
    if url.startswith("sqlite:///") and not Path(url.split("sqlite:///", 1)[1]).is_file():
        fail(f"no database at {url.split('sqlite:///', 1)[1]}")
    engine = engine_of(open_db(url, readonly=True))
    try:
        with engine.connect() as conn:
            if engine.dialect.name in ("postgresql", "mysql"):
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            result = conn.execute(text(sql))
            if not result.returns_rows:
                conn.rollback()
                fail("query is read-only: the statement returned no rows and was rolled back")
            columns, rows = list(result.keys()), result.fetchmany(max_rows + 1)
            conn.rollback()
    except DBAPIError as e:
        msg = str(e.orig)
        if "readonly" in msg.replace("-", "") or "read only" in msg or "read-only" in msg:
            fail(f"query is read-only; refused to write: {msg}")
        fail(f"SQL error: {msg}")
    finally:
        engine.dispose()
    table = Table(title=f"{min(len(rows), max_rows)} row(s)" + (" (truncated)" if len(rows) > max_rows else ""))
    for c in columns:
        table.add_column(str(c), overflow="fold")
    for r in rows[:max_rows]:
        table.add_row(*["NULL" if v is None else str(v) for v in r])
    console.print(table)


@app.command()
def methods() -> None:
    """Registered post-training methods and their config fields (name=default)."""
    from methods.registry import available_methods

    table = Table(title="methods")
    table.add_column("name")
    table.add_column("class")
    table.add_column("config fields", overflow="fold")
    for name, cls in available_methods().items():
        cfg = cls.config_cls
        fields = []
        for f in dataclasses.fields(cfg):
            default = (f.default if f.default is not dataclasses.MISSING
                       else f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
            fields.append(f"{f.name}={default!r}")
        table.add_row(name, f"{cls.__module__}.{cls.__name__}", ", ".join(fields))
    console.print(table)


@app.command()
def crosscheck(
    benchmark: str = typer.Argument(..., help="one of math500, aime24, aime25, amc23, olympiadbench"),
    model: str = typer.Option(..., "--model", help="local model directory or hub id"),
    limit: int = typer.Option(10, "--limit", min=1),
    template: str = typer.Option("qwen-boxed", "--template"),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", envvar="LATENTREVISE_DATA_DIR"),
    db: str = typer.Option("results.db", "--db"),
    backend: str = typer.Option("vllm", "--backend", help="vllm | hf"),
    dtype: str = typer.Option("auto", "--dtype"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len"),
) -> None:
    """Score the same generations with lm-eval's task (our exported YAML) and with the harness; compare."""
    from repro.lmeval.bridge import TASKS
    from repro.lmeval.bridge import crosscheck as run_crosscheck

    if benchmark not in TASKS:
        fail(f"crosscheck supports {', '.join(TASKS)}; got {benchmark!r}")
    if importlib.util.find_spec("lm_eval") is None:
        fail("lm-eval is not installed (pip install lm-eval)")
    model = check_model(model)
    report = run_crosscheck(benchmark, model, limit=limit, template=template, max_tokens=max_tokens,
                            data_dir=data_dir, db=db, backend=backend, dtype=dtype, max_model_len=max_model_len)
    table = Table(title=f"crosscheck {benchmark}: lm-eval vs harness (greedy, {report['n']} problems)")
    for c in ("problem", "same prompt", "same completion", "lm-eval math_verify", "lm-eval exact_match",
              "harness", "agree"):
        table.add_column(c)
    for r in report["rows"]:
        table.add_row(r["problem_id"], _yn(r["same_prompt"]), _yn(r["same_completion"]),
                      _yn(r["lm_eval_math_verify"]), _yn(r["lm_eval_exact_match"]), _yn(r["harness"]), _yn(r["agree"]))
    console.print(table)
    console.print(f"agreement (math_verify vs harness): {report['agreement']:.3f} | lm-eval accuracy "
                  f"{report['lm_eval_accuracy']:.3f} (exact_match {report['lm_eval_exact_match']:.3f}) | harness "
                  f"accuracy {report['harness_accuracy']:.3f} | stored on evaluation {report['evaluation_id']}",
                  highlight=False)


def _yn(v: Any) -> str:
    return "yes" if v else "no"
