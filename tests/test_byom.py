"""Bring your own method (issue 16): a file or a package, its identity in the run config, the main table's row
compared with lr-sft over the same problems, and `compare` on any two runs.

Registrations are scoped to each test (`scoped_registry` in conftest.py). The fast tests train the README's
method on a tiny random model in-process; the slow one runs the same commands as subprocesses from a fresh
working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT
from scored_db import add_run, byom_preset, sampling, seed_main_runs
from typer.testing import CliRunner

from benchmarks import load_benchmark
from harness.store import open_db
from methods.registry import MethodFileError, load_method_file, preset_fields, reference_method
from repro import presets
from repro.plan import run_hash
from repro.runs import run_config
from repro.scores import paired_p

runner = CliRunner()
EXAMPLE = ROOT / "examples" / "best_of_n.py"
TRAIN_SET = ["--set", "samples=2", "--set", "max_new_tokens=8", "--set", "max_steps=2"]


def _app():
    from repro.cli import app

    return app


@pytest.fixture
def method_file(tmp_path) -> Path:
    """The README's method, written to a file outside the repository."""
    path = tmp_path / "my_method.py"
    shutil.copy(EXAMPLE, path)
    return path


def test_method_file_joins_the_registry_and_its_hash_enters_the_config(method_file, scoped_registry):
    assert load_method_file(str(method_file)) == ["best-of-n"]
    cfg, config = run_config(presets.TINY, "best-of-n")
    assert config["method_file"] == {"path": str(method_file.resolve()),
                                     "sha256": hashlib.sha256(method_file.read_bytes()).hexdigest()}
    sft = presets.TINY.methods["sft"]  # family "sft": the preset's sft budget, then the file's preset_overrides
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.max_len) == (sft["epochs"], sft["lr"], sft["batch_size"],
                                                                 sft["max_len"])
    assert (cfg.samples, cfg.max_new_tokens) == (4, 96)
    assert preset_fields(scoped_registry.get_method("sft"), "tiny", presets.TINY.methods) == sft  # built-ins unchanged
    assert reference_method("best-of-n") == "lr-sft" and reference_method("sft") is None
    before = run_hash(presets.TINY, "best-of-n")
    method_file.write_text(method_file.read_text() + "# edited\n")
    load_method_file(str(method_file))
    assert run_hash(presets.TINY, "best-of-n") != before  # a changed method is a new run


def test_a_name_clash_with_a_builtin_names_both(tmp_path, scoped_registry):
    bad = tmp_path / "clash.py"
    bad.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from methods import register_method

        @dataclass
        class C:
            lr: float = 1.0

        @register_method
        class MySFT:
            name = "sft"
            config_cls = C
    '''))
    with pytest.raises(MethodFileError, match=r"clash.py:MySFT clashes with the built-in 'sft' \(methods.sft\)"):
        load_method_file(str(bad))
    res = runner.invoke(_app(), ["methods", "--method-file", str(bad)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "methods.sft" in res.output
    res = runner.invoke(_app(), ["methods", "--method-file", str(tmp_path / "missing.py")])
    assert res.exit_code == 1 and "no such file" in res.output


def test_module_attr_route(tmp_path, monkeypatch, scoped_registry):
    (tmp_path / "my_pkg_attr.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass

        @dataclass
        class Cfg:
            k: int = 3

        class Attr:
            name = "attr-method"
            config_cls = Cfg
            family = "rl"
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_method_file("my_pkg_attr:Attr") == ["attr-method"]
    assert run_config(presets.TINY, "attr-method")[1]["method_file"]["path"] == str(tmp_path / "my_pkg_attr.py")
    assert reference_method("attr-method") == "lr-grpo"


def test_an_installed_entry_point_is_found_with_no_flag(tmp_path, monkeypatch, scoped_registry):
    """A throwaway package installed with pip into a --target directory, then put on sys.path."""
    src = tmp_path / "src"
    (src / "tp_byom").mkdir(parents=True)
    (src / "tp_byom" / "__init__.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass

        @dataclass
        class Cfg:
            note: str = "packaged"

        class Packaged:
            name = "packaged-method"
            config_cls = Cfg
    '''))
    (src / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "tp-byom"
        version = "0.1"
        [project.entry-points."latentrevise.methods"]
        packaged-method = "tp_byom:Packaged"
        [tool.setuptools]
        packages = ["tp_byom"]
    '''))
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    monkeypatch.syspath_prepend(str(target))
    res = runner.invoke(_app(), ["methods"])
    assert res.exit_code == 0, res.output
    assert "packaged-method" in res.output and "tp_byom.Packaged" in res.output


@pytest.fixture
def mini_preset(monkeypatch, tiny_model_dir, tmp_path):
    preset = byom_preset(str(tiny_model_dir))
    monkeypatch.setitem(presets.PRESETS, "test-byom", preset)
    monkeypatch.setenv("LATENTREVISE_RUNS", str(tmp_path / "runs"))
    return preset


def _sql_scores(db: Path, run_id: int) -> dict[str, float]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT s.problem_id, AVG(s.correct) FROM samples s JOIN evaluations e ON "
                                 "e.id = s.evaluation_id WHERE e.run_id = ? AND e.status = 'finished' "
                                 "GROUP BY s.problem_id", (run_id,)).fetchall())


def _run_id(db: Path, method: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id FROM runs WHERE method = ?", (method,)).fetchone()[0]


def _row_matches_sql(db: Path, output: str) -> dict:
    """The best-of-n row's arith-easy cell of the table in `output` (JSON after the plan), checked against a
    recomputation from the samples with SQL: Δ vs lr-sft and the paired p over the same 6 problems."""
    table = json.loads(output[output.index('{\n  "title"'):])
    cell = next(r for r in table["rows"] if r["method"] == "best-of-n")["arith-easy (n=2)"]
    mine, ref = _sql_scores(db, _run_id(db, "best-of-n")), _sql_scores(db, _run_id(db, "lr-sft"))
    common = sorted(set(mine) & set(ref))
    assert len(common) == 6 and cell["baseline"] == "lr-sft" and cell["n_paired"] == 6
    a, b = [mine[p] for p in common], [ref[p] for p in common]
    assert cell["delta"] == pytest.approx(sum(a) / 6 - sum(b) / 6, abs=1e-12)
    assert cell["p"] == pytest.approx(paired_p(a, b), abs=1e-12)
    assert any(n.startswith("Δ for best-of-n: vs lr-sft") for n in table["notes"])
    return cell


def test_table_row_vs_lr_sft_and_compare_reproduce_the_paired_test(mini_preset, method_file, tmp_path,
                                                                   scoped_registry):
    db = tmp_path / "r.db"
    seed_main_runs(open_db(f"sqlite:///{db}"), mini_preset)
    res = runner.invoke(_app(), ["train", "best-of-n", "--method-file", str(method_file), "--preset", "test-byom",
                                 "--backend", "hf", "--db", str(db), *TRAIN_SET])
    assert res.exit_code == 0, res.output
    res = runner.invoke(_app(), ["--table", "main", "--preset", "test-byom", "--method-file", str(method_file),
                                 "--with", "best-of-n", "--compare-to", "lr-sft", "--format", "json", "--db", str(db),
                                 *TRAIN_SET])
    assert res.exit_code == 0, res.output
    cell = _row_matches_sql(db, res.output)
    assert "reuse" in res.output.split('{\n  "title"')[0]  # the trained run was reused, not retrained
    default = runner.invoke(_app(), ["--table", "main", "--preset", "test-byom", "--method-file", str(method_file),
                                     "--with", "best-of-n", "--format", "json", "--db", str(db), *TRAIN_SET])
    assert default.exit_code == 0, default.output
    assert _row_matches_sql(db, default.output) == cell  # family "sft": lr-sft is the default reference

    res = runner.invoke(_app(), ["compare", str(_run_id(db, "best-of-n")), str(_run_id(db, "lr-sft")),
                                 "--format", "json", "--db", str(db)])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)["rows"][0]
    assert got["problems"] == 6 and got["Δ A-B"]["delta"] == cell["delta"] and got["Δ A-B"]["p"] == cell["p"]


def test_compare_refuses_different_protocols_and_names_the_fields(tmp_path, mini_preset):
    db = tmp_path / "r.db"
    factory = open_db(f"sqlite:///{db}")
    ids = [p.id for p in load_benchmark("arith-easy", limit=4)]
    a = add_run(factory, mini_preset, "base", {"arith-easy": {pid: [True, False] for pid in ids}})
    b = add_run(factory, mini_preset, "sft", {"arith-easy": {pid: [True, True] for pid in ids[:3]}},
                temperature=0.6, max_tokens=8)
    res = runner.invoke(_app(), ["compare", str(a), str(b), "--db", str(db)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "sampling.max_tokens: 4 vs 8" in res.output and "sampling.temperature: 1.0 vs 0.6" in res.output
    res = runner.invoke(_app(), ["compare", str(a), str(b), "--allow-protocol-mismatch", "--format", "csv",
                                 "--db", str(db)])
    assert res.exit_code == 0, res.output
    row = res.output.splitlines()[1].split(",")
    assert row[:2] == ["arith-easy", "3"]  # matching problems only
    assert sampling(mini_preset, "arith-easy")["temperature"] == 1.0


def test_no_registration_leaks_between_tests():
    """Run after the tests above (file order) and tests/test_third_party.py: their methods are gone again."""
    from methods.registry import snapshot

    assert {"best-of-n", "third-party-copy", "attr-method", "packaged-method"}.isdisjoint(snapshot())


# A sitecustomize for the subprocesses: the test preset exists there too (the method file stays the README's).
PRESET_SITE = """
import os
if os.environ.get("BYOM_TEST_MODEL"):
    import sys
    sys.path.insert(0, os.environ["BYOM_TEST_DIR"])
    from repro import presets
    from scored_db import byom_preset
    presets.PRESETS["test-byom"] = byom_preset(os.environ["BYOM_TEST_MODEL"])
"""


@pytest.mark.slow
def test_readme_method_from_a_file_to_the_main_table_in_subprocesses(tmp_path, method_file, tiny_model_dir):
    """`train best-of-n --method-file FILE`, then `--table main --with best-of-n --compare-to lr-sft`, from a
    fresh working directory; the other main-table runs are stored already (reused, so no engine starts)."""
    cwd, site = tmp_path / "cwd", tmp_path / "site"
    cwd.mkdir()
    site.mkdir()
    (site / "sitecustomize.py").write_text(PRESET_SITE)
    seed_main_runs(open_db(f"sqlite:///{cwd / 'results.db'}"), byom_preset(str(tiny_model_dir)))
    env = {**os.environ, "PYTHONPATH": f"{site}:{ROOT}", "BYOM_TEST_MODEL": str(tiny_model_dir),
           "BYOM_TEST_DIR": str(ROOT / "tests"), "LATENTREVISE_RUNS": str(tmp_path / "runs")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, str(ROOT / "reproduce.py"), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    cli("train", "best-of-n", "--method-file", str(method_file), "--preset", "test-byom", "--backend", "hf",
        *TRAIN_SET)
    table = cli("--table", "main", "--preset", "test-byom", "--with", "best-of-n", "--compare-to", "lr-sft",
                "--method-file", str(method_file), "--format", "json", *TRAIN_SET)
    cell = _row_matches_sql(cwd / "results.db", "\n" + table.stdout)
    got = json.loads(cli("compare", str(_run_id(cwd / "results.db", "best-of-n")),
                         str(_run_id(cwd / "results.db", "lr-sft")), "--format", "json").stdout)["rows"][0]
    assert (got["Δ A-B"]["delta"], got["Δ A-B"]["p"]) == (cell["delta"], cell["p"])
