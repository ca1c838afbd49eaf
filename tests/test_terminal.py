"""A quiet terminal (issue 10.4): engine and library logs go to a log file per invocation, not to the terminal.

The slow test runs `train` as a subprocess with the vLLM backend on a tiny random model (the engine core
runs in its own process), counts the lines it prints and finds vLLM's INFO lines in the log file instead;
with --verbose they are on the terminal. The fast tests check the redirection itself, descriptor by
descriptor, with a child process that writes to both.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import HAS_VLLM, ROOT
from rich.console import Console

from repro.terminal import quiet

QUIET_LINES = 12  # the most lines `train` may print when quiet: log path, run line, one per benchmark, bars


def test_library_output_and_child_processes_go_to_the_log_file(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("LATENTREVISE_LOGS", str(tmp_path / "logs"))
    ours, out = Console(file=sys.__stderr__), Console(file=sys.__stdout__)
    with quiet("unit", consoles=[ours, out]) as path:
        os.write(1, b"INFO engine on fd 1\n")
        os.write(2, b"WARNING library on fd 2\n")
        subprocess.run([sys.executable, "-c", "import sys; print('INFO child'); print('child err', file=sys.stderr)"],
                       check=True)
        ours.print("progress of ours")
        out.print("a result line")
    log = path.read_text()
    assert ["INFO engine on fd 1", "WARNING library on fd 2", "INFO child", "child err"] == [
        line for line in log.splitlines() if line]
    terminal = capfd.readouterr()
    assert "INFO" not in terminal.out + terminal.err
    assert "progress of ours" in terminal.err and f"logs: {path}" in " ".join(terminal.err.split())
    assert terminal.out == "a result line\n"  # a console on stdout stays on stdout
    os.write(1, b"after\n")  # descriptors restored
    assert capfd.readouterr().out == "after\n"


def test_verbose_keeps_logs_on_the_terminal_and_stdout_for_the_table(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("LATENTREVISE_LOGS", str(tmp_path / "logs"))
    with quiet("unit", verbose=True) as path:
        os.write(1, b"INFO engine\n")
    assert path is None and not (tmp_path / "logs").exists()
    got = capfd.readouterr()
    assert got.err == "INFO engine\n" and got.out == ""


PLUGIN = '''
"""A method and a preset for tests/test_terminal.py (registered on import, like any --method-file)."""
import dataclasses
import os
import shutil
from dataclasses import dataclass

from harness.protocol import EvalProtocol
from methods import register_method
from repro import presets

presets.PRESETS["quiet-test"] = presets.TINY.with_overrides(
    name="quiet-test", base_model=os.environ["QUIET_TEST_MODEL"], train_limit=4, benchmarks=("arith-easy",),
    eval_limit=4, eval=EvalProtocol(template="tiny-boxed", temperature=1.0, max_tokens=4, n_default=1, pass_k=(1,)),
    vllm=dataclasses.replace(presets.TINY.vllm, max_model_len=512))


@dataclass
class CopyConfig:
    note: str = "copies the base model"


@register_method
class QuietCopy:
    name = "quiet-copy"
    config_cls = CopyConfig

    def train(self, base_model, prompts, config, ctx):
        shutil.copytree(base_model, ctx.out_dir / "model", dirs_exist_ok=True)
        return str(ctx.out_dir / "model")
'''


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_train_with_a_vllm_engine_prints_a_few_lines_unless_verbose(tmp_path, tiny_model_dir):
    (tmp_path / "plugin.py").write_text(textwrap.dedent(PLUGIN))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QUIET_TEST_MODEL": str(tiny_model_dir),
           "LATENTREVISE_RUNS": str(tmp_path / "runs"), "VLLM_CPU_KVCACHE_SPACE": "1", "COLUMNS": "80"}
    env.pop("LATENTREVISE_LOGS", None)
    cmd = [sys.executable, str(ROOT / "reproduce.py"), "train", "quiet-copy", "--method-file", "plugin.py",
           "--preset", "quiet-test", "--backend", "vllm", "--db", "r.db"]
    quiet_run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert quiet_run.returncode == 0, quiet_run.stdout + quiet_run.stderr
    shown = (quiet_run.stdout + quiet_run.stderr).splitlines()
    assert len(shown) <= QUIET_LINES and not [s for s in shown if "INFO" in s], shown
    assert re.search(r"arith-easy: avg@1 = \d+\.\d %", quiet_run.stdout)
    logs = list((tmp_path / "runs" / "logs").glob("*-train-quiet-copy.log"))
    assert len(logs) == 1 and f"logs: {logs[0]}" in " ".join(quiet_run.stdout.split())
    assert "INFO" in logs[0].read_text()  # vLLM's engine (core process included) logged there

    loud = subprocess.run(cmd + ["--verbose", "--fresh"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert loud.returncode == 0, loud.stdout + loud.stderr
    assert len([s for s in loud.stderr.splitlines() if "INFO" in s]) > 5
    print(f"quiet: {len(shown)} lines; verbose: {len((loud.stdout + loud.stderr).splitlines())} lines")


def test_table_main_on_a_reused_database_prints_under_60_lines(tmp_path, monkeypatch, tiny_model_dir):
    from scored_db import byom_preset, seed_main_runs
    from typer.testing import CliRunner

    from harness.store import open_db
    from repro import presets
    from repro.cli import app

    preset = byom_preset(str(tiny_model_dir))
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    db = tmp_path / "r.db"
    seed_main_runs(open_db(f"sqlite:///{db}"), preset)
    res = CliRunner().invoke(app, ["--table", "main", "--preset", preset.name, "--db", str(db)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len(lines) < 60 and "Main results" in res.output and not [s for s in lines if "INFO" in s]
    assert "logs:" not in res.output  # nothing to run: no engine, no log file
