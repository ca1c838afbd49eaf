"""A method defined outside methods/ runs through the same CLI and lands in the leaderboard.

Registrations are scoped to each test (`scoped_registry`): nothing here changes the registry another test sees.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from harness.method import RunContext
from harness.protocol import EvalProtocol
from harness.store import Run, TrainStep, open_db, session_scope
from methods.registry import available_methods, build_config, register_method
from repro import presets
from reproduce import app


@dataclass
class CopyConfig:
    note: str = "copies the base model"


class CopyBase:
    """The smallest possible method: returns a copy of the base model and logs one step."""

    name = "third-party-copy"
    config_cls = CopyConfig

    def train(self, base_model: str, prompts, config: CopyConfig, ctx: RunContext) -> str:
        out = ctx.out_dir / "model"
        shutil.copytree(base_model, out, dirs_exist_ok=True)
        ctx.log_step(0, phase="copy", loss=0.0, n_prompts=len(prompts))
        return str(out)


@pytest.fixture
def copy_method(scoped_registry):
    return register_method(CopyBase)


@pytest.fixture
def mini_preset(monkeypatch, tiny_model_dir, tmp_path):
    preset = presets.TINY.with_overrides(
        name="test-mini", base_model=str(tiny_model_dir), train_limit=8, benchmarks=("arith-easy",),
        eval=EvalProtocol(template="tiny-boxed", temperature=0.0, max_tokens=4, n_default=1, pass_k=(1,)),
    )
    monkeypatch.setitem(presets.PRESETS, "test-mini", preset)
    monkeypatch.setenv("LATENTREVISE_RUNS", str(tmp_path / "runs"))
    return preset


def test_registry_lists_the_method_and_checks_its_config(copy_method):
    assert available_methods()["third-party-copy"] is CopyBase
    with pytest.raises(ValueError, match="unknown config field"):
        build_config(CopyBase, {"nope": 1})


def test_train_cli_runs_it_and_leaderboard_shows_it(mini_preset, copy_method, tmp_path):
    db = str(tmp_path / "r.db")
    cli = CliRunner()
    result = cli.invoke(app, ["train", "third-party-copy", "--preset", "test-mini", "--backend", "hf", "--db", db])
    assert result.exit_code == 0, result.output
    with session_scope(open_db(db)) as s:
        run = s.query(Run).filter_by(method="third-party-copy").one()
        assert run.status == "finished" and run.checkpoint.endswith("model")
        step = s.query(TrainStep).filter_by(run_id=run.id).one()
        assert step.extra == {"n_prompts": 8}
        assert len(run.evaluations) == 1 and run.evaluations[0].status == "finished"
    board = cli.invoke(app, ["leaderboard", "--db", db, "--format", "csv"])
    assert board.exit_code == 0, board.output
    assert "third-party-copy" in board.output and "arith-easy" in board.output

    again = cli.invoke(app, ["train", "third-party-copy", "--preset", "test-mini", "--backend", "hf", "--db", db])
    assert again.exit_code == 0
    with session_scope(open_db(db)) as s:  # reused: still one run, one evaluation
        assert s.query(Run).filter_by(method="third-party-copy").count() == 1


def test_train_cli_rejects_unknown_method_and_field(mini_preset, copy_method, tmp_path):
    cli = CliRunner()
    bad = cli.invoke(app, ["train", "no-such-method", "--db", str(tmp_path / "r.db")])
    assert bad.exit_code == 1 and "unknown method" in bad.output
    bad = cli.invoke(app, ["train", "third-party-copy", "--preset", "test-mini", "--set", "nope=1",
                           "--db", str(tmp_path / "r.db")])
    assert bad.exit_code == 1 and "unknown config field" in bad.output


def test_readme_example_method_trains_through_the_cli(mini_preset, scoped_registry, tmp_path):
    """examples/best_of_n.py is the README's "add your own method" code, verbatim."""
    from pathlib import Path

    from methods.registry import load_method_file

    load_method_file(str(Path(__file__).resolve().parent.parent / "examples" / "best_of_n.py"))
    db = str(tmp_path / "r.db")
    result = CliRunner().invoke(app, ["train", "best-of-n", "--preset", "test-mini", "--backend", "hf", "--db", db,
                                      "--set", "samples=2", "--set", "max_new_tokens=8", "--set", "max_steps=2",
                                      "--no-eval"])
    assert result.exit_code == 0, result.output
    with session_scope(open_db(db)) as s:
        run = s.query(Run).filter_by(method="best-of-n").one()
        assert run.status == "finished" and run.config["method_config"]["samples"] == 2
        phases = {t.phase for t in s.query(TrainStep).filter_by(run_id=run.id)}
        assert {"best-of-n", "sft"} <= phases
