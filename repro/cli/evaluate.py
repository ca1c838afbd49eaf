"""`eval`: a model (directory or hub id) on benchmarks, every sample into results.db.

    python reproduce.py eval ./my-model --benchmarks math500,aime24 --n 4 --limit 50

Heavy imports (vLLM, torch) happen inside the commands. `crosscheck` lives in crosscheck.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from repro.cli.app import DEFAULT_DB, Backend, DataDir, Db, app, console, fail
from repro.cli.results import metrics_table

DEFAULT_BENCHMARKS = "math500,aime24,aime25,amc23,olympiadbench"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def check_data(names: list[str], data_dir: str | None, limit: int | None) -> None:
    """Load each benchmark once before any row is written: a rejected file or a missing --data-dir
    is a one-line error (BenchmarkDataError, errors.py) instead of a failed run left behind."""
    from benchmarks import load_benchmark

    for name in names:
        load_benchmark(name, data_dir, limit)


def pass_ks(n: int) -> tuple[int, ...]:
    return tuple(sorted({1, n} | {2 ** i for i in range(1, 12) if 2 ** i <= n}))


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="local model directory or hub id"),
    benchmarks: str = typer.Option(DEFAULT_BENCHMARKS, "--benchmarks", help="comma-separated benchmark names"),
    template: str = typer.Option("qwen25-math-cot", "--template", help="prompt template (harness/prompts.py)"),
    n: int = typer.Option(1, "--n", min=1, help="samples per problem"),
    temperature: float = typer.Option(0.6, "--temperature", min=0.0),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    max_tokens: int = typer.Option(3072, "--max-tokens", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="first N problems of each benchmark"),
    seed: int = typer.Option(0, "--seed"),
    data_dir: DataDir = None,
    db: Db = DEFAULT_DB,
    backend: Backend = "vllm",
    dtype: str = typer.Option("auto", "--dtype"),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", min=1),
    data_parallel_size: int = typer.Option(1, "--data-parallel-size", min=1),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="vLLM context length"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="at most this many problems per "
                                             "engine call (default: all in one call, the fastest)"),
) -> None:
    """Evaluate a model on benchmarks; every sample and verdict goes to results.db (resumable)."""
    from harness.evaluate import evaluate_model
    from harness.generation import GeneratorFactory, VLLMSettings
    from harness.prompts import TEMPLATES
    from harness.protocol import EvalProtocol
    from harness.store import display_url, fail_run, finish_run, get_or_create_run, open_db

    if template not in TEMPLATES:
        fail(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    names = check_benchmarks(benchmarks)
    model = check_model(model)
    check_data(names, data_dir, limit)
    try:
        protocol = EvalProtocol(template=template, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                n_default=n, pass_k=pass_ks(n), seed=seed)
    except ValueError as e:  # greedy with n > 1, ...
        fail(str(e))
    settings = VLLMSettings(dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                            data_parallel_size=data_parallel_size, max_model_len=max_model_len)
    try:
        engines = GeneratorFactory(backend, settings, seed=seed)
    except ValueError as e:  # vLLM asked for but not installed, an unknown backend
        fail(str(e))

    def make_generator(path: str):
        try:
            return engines(path)
        except Exception as e:  # a hub id that is not reachable, a broken checkpoint, ...
            raise typer.BadParameter(f"could not load model {path!r} with {backend}: {type(e).__name__}: {e}") from e

    make_generator.identity = engines.identity  # the evaluation identity, known before any engine starts

    factory = open_db(db)  # a bad URL, a missing driver, an unwritable path: one line, before any row
    # the run is the model; each evaluation's identity (harness.evaluate) covers engine and protocol
    config = {"protocol": protocol, "backend": backend, "dtype": dtype}
    # a finished run stays finished (new benchmarks are added to it); a failed one is resumed in place
    run, already_finished = get_or_create_run(factory, method="base", model=model, preset="custom", seed=seed,
                                              config=config)
    console.print(f"run {run.id} (base, {model}) -> {display_url(db)}", highlight=False, markup=False)
    from harness.grading import Grader

    try:
        with Grader() as grader:
            results = evaluate_model(factory, run.id, model, names, data_dir=data_dir, protocol=protocol,
                                     make_generator=make_generator, grader=grader, limit=limit, batch_size=batch_size)
    except BaseException as e:
        if not already_finished:
            fail_run(factory, run.id, e)  # never raises: a full disk must not turn one error into two
        if isinstance(e, typer.BadParameter):
            fail(str(e))
        raise
    if not already_finished:
        finish_run(factory, run.id)
    console.print(metrics_table(f"run {run.id}: {model}", results))
