"""`train` and `methods`: one method on a preset (then its evaluation), and the registered methods.

    python reproduce.py train lr-sft --preset tiny --set fw_steps=5
    python reproduce.py train best-of-n --method-file examples/best_of_n.py --preset tiny-smoke
    python reproduce.py methods --method-file examples/best_of_n.py

Engine and library logs go to a log file (repro/terminal.py; its path is printed once) unless --verbose.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import typer
from rich.table import Table

from repro.cli.app import (
    DEFAULT_DB,
    Backend,
    DataDir,
    Db,
    MethodFiles,
    PresetName,
    Verbose,
    app,
    console,
    fail,
    load_method_files,
)
from repro.cli.errors import err_console


def parse_overrides(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """`key=value` strings -> a dict; values are read as JSON when they parse (5, 0.1, true, "x")."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"{flag} takes key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command()
def train(
    method: str = typer.Argument(..., help="a registered method (see `methods`), ours or a third party's"),
    preset: PresetName = "tiny",
    overrides: list[str] = typer.Option([], "--set", help="method config override key=value (repeatable)"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="evaluate the trained model on the preset"),
    backend: Backend = "auto",
    fresh: bool = typer.Option(False, "--fresh", help="retrain even if a finished identical run exists"),
    data_dir: DataDir = None,
    db: Db = DEFAULT_DB,
    method_files: MethodFiles = [],  # noqa: B006  (typer reads the default)
    verbose: Verbose = False,
) -> None:
    """Train one method on a preset (reusing an identical finished run), then evaluate it."""
    from harness.store import open_db
    from methods.registry import available_methods
    from repro import runs as runner
    from repro.presets import get_preset
    from repro.terminal import quiet

    load_method_files(method_files)
    if method not in available_methods():
        fail(f"unknown method {method!r}; available: {', '.join(available_methods())} "
             "(a method in a file: --method-file FILE)")
    try:
        chosen = get_preset(preset)
    except KeyError as e:
        fail(str(e.args[0]))
    factory = open_db(db)
    engines = None
    with quiet(f"train-{method}", verbose, [console, err_console]):  # err_console: fail() inside the block
        try:
            try:
                engines = runner.EnginePool(runner.generator_factory(chosen, backend))  # training's engine evaluates
                run = runner.train_method(factory, chosen, method, overrides=parse_overrides(overrides),
                                          data_dir=data_dir, fresh=fresh, backend=backend, engines=engines)
            except ValueError as e:  # unknown config field, bad value
                fail(str(e))
            console.print(f"run {run.id} ({run.method}, {run.status}): checkpoint {run.checkpoint}")
            if evaluate:
                metrics = runner.evaluate_run(factory, run, chosen, data_dir=data_dir, backend=backend,
                                              engines=engines)
                for bench, m in metrics.items():
                    console.print(f"  {bench}: avg@{m.get('n')} = {100 * m.get('avg@n', float('nan')):.1f} %")
        finally:
            if engines is not None:
                engines.shutdown()


@app.command()
def methods(method_files: MethodFiles = []) -> None:  # noqa: B006  (typer reads the default)
    """Registered post-training methods and their config fields (name=default)."""
    from methods.registry import available_methods

    load_method_files(method_files)
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
