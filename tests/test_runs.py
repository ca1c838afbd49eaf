"""repro.runs / repro.execute: the run hash covers every argument, bad input leaves no run row, and a
plan's training and evaluation share one engine (repro.runs.EnginePool)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest
from rich.console import Console
from sqlalchemy import func, select

from harness.method import RunContext
from harness.protocol import EvalProtocol
from harness.store import Evaluation, Run, get_or_create_run, open_db, run_hash, session_scope
from methods import registry
from repro import plan, presets
from repro import runs as runner


def test_run_hash_covers_seed_and_preset_passed_beside_the_config(db_url):
    factory = open_db(db_url)
    config = {"protocol": "p"}  # a config without seed or preset in it (the eval CLI's shape)
    ids = {get_or_create_run(factory, method="base", model="m", preset=preset, seed=seed, config=config)[0].id
           for preset, seed in (("custom", 0), ("custom", 1), ("tiny", 0), ("custom", 0))}
    assert len(ids) == 3  # seed 1 and preset tiny are their own runs; the repeat is reused
    assert run_hash("base", "m", "custom", 0, config) != run_hash("base", "m", "custom", 1, config)
    # the planner's offline hash is the hash the run row gets
    smoke = presets.TINY.with_overrides(name="tiny-other", seed=3)
    with session_scope(factory) as s:
        assert plan.run_hash(smoke, "base") == run_hash("base", smoke.base_model, "tiny-other", 3,
                                                        runner.base_config(smoke))
        assert s.scalar(select(func.count()).select_from(Run)) == 3


@dataclass
class TwoPhaseConfig:
    phases: int = 2


class TwoPhase:
    """Asks for an engine twice (like SFT's sampling then a second phase), returns a copy of the base."""

    name = "test-two-phase"
    config_cls = TwoPhaseConfig

    def train(self, base_model, prompts, config, ctx: RunContext) -> str:
        from harness.generation import Sampling

        for _ in range(config.phases):
            gen = ctx.make_generator(base_model)
            gen.generate(["Problem: 1+1\nSolution:"], Sampling(n=1, max_tokens=2))
            gen.close()
        out = ctx.out_dir / "model"
        shutil.copytree(base_model, out, dirs_exist_ok=True)
        return str(out)


class CountingFactory:
    """A GeneratorFactory stand-in: counts engine constructions and weight loads."""

    def __init__(self):
        self.made, self.syncs = 0, 0

    def identity(self, model):
        return {"backend": "counting", "model": model}

    def __call__(self, model):
        from test_evaluate import StubEngine

        self.made += 1
        engine = StubEngine("counting")
        engine.update_weights = lambda weights: setattr(self, "syncs", self.syncs + 1)
        return engine


@pytest.fixture
def pool_preset(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setitem(registry._REGISTRY, TwoPhase.name, TwoPhase)
    monkeypatch.setenv("LATENTREVISE_RUNS", str(tmp_path / "runs"))
    return presets.TINY.with_overrides(
        name="test-pool", base_model=str(tiny_model_dir), train_limit=4, benchmarks=("arith-easy",), eval_limit=3,
        eval=EvalProtocol(template="tiny-boxed", temperature=1.0, max_tokens=4, n_default=1, pass_k=(1,)))


def test_execute_starts_one_engine_for_training_and_evaluation(pool_preset, db_url, monkeypatch):
    from repro.execute import execute

    counting = CountingFactory()
    monkeypatch.setattr(runner, "generator_factory", lambda preset, backend="auto": counting)
    factory = open_db(db_url)
    steps = [plan.Step("base", "base"), plan.Step(TwoPhase.name, TwoPhase.name)]
    failures = execute(steps, pool_preset, factory, data_dir=None, fresh=False, console=Console(quiet=True))
    assert failures == []
    # base evaluation, two training phases and the trained run's evaluation: one engine; its weights were
    # loaded once, for the checkpoint (the base phases ask for the weights it already holds)
    assert (counting.made, counting.syncs) == (1, 1)
    with session_scope(factory) as s:
        evs = s.scalars(select(Evaluation)).all()
        assert sorted(e.status for e in evs) == ["finished", "finished"]
        assert {e.identity["engine"]["backend"] for e in evs} == {"counting"}


def test_bad_training_input_leaves_no_run_row(pool_preset, db_url):
    factory = open_db(db_url)
    empty = pool_preset.with_overrides(train_filter={"level": ["no-such-level"]})
    with pytest.raises(ValueError, match="no training prompts"):
        runner.train_method(factory, empty, TwoPhase.name, backend="hf")
    with pytest.raises(ValueError, match="unknown config field"):
        runner.train_method(factory, pool_preset, TwoPhase.name, overrides={"nope": 1}, backend="hf")
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
