"""Tables legible in an 80-column terminal (issue 10.5): no cell cut, benchmark columns in the preset's order,
abbreviations from one fixed map, every share in %; and the reading commands' CSV checked against SQL."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3

import pytest
from rich.cells import cell_len
from scored_db import add_run, verdicts
from typer.testing import CliRunner

from harness.store import open_db
from repro import presets
from repro.render import BENCH_ABBREV, Cell, TableData, column_chunks, render
from repro.tables import main_table

runner = CliRunner()
PAPER_ORDER = ["M500", "AIME24", "AIME25", "AMC23", "Olym"]


def _app():
    from repro.cli import app

    return app


@pytest.fixture
def narrow(monkeypatch):
    """The CLI console at 80 columns, whatever the test runner's terminal."""
    from repro.cli.app import console

    monkeypatch.setattr(console, "width", 80)


def assert_fits(text: str, width: int = 80) -> None:
    wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert not wide, f"{len(wide)} line(s) wider than {width}: {wide[0]!r}"
    assert "…" not in text


def _column_position(out: str, header: str) -> tuple[int, int]:
    """(which wrapped part, x offset) of a header's first appearance: the column order as printed."""
    pos = out.index(header)
    return len(re.findall(r"\(\d+/\d+\)", out[:pos])), pos - (out.rfind("\n", 0, pos) + 1)


def _paper_db(tmp_path):
    factory = open_db(f"sqlite:///{tmp_path / 'r.db'}")
    p = presets.PAPER
    for seed, m in enumerate(("base", "sft", "lr-sft")):
        rows = {b: verdicts(seed, [b], 6, p.eval.n_for(b), 0.3 + 0.1 * seed)[b] for b in p.benchmarks}
        add_run(factory, p, m, rows)
    return factory


def test_main_table_of_five_benchmarks_fits_80_columns_in_preset_order(tmp_path):
    table = main_table(_paper_db(tmp_path), presets.PAPER)
    out = render(table, "rich", 80)
    assert_fits(out)
    for row in table.rows:  # every word of every cell is printed whole (folding would split one)
        for col in table.columns:
            for word in str(row.get(col) or "").split():
                assert word in out, (col, word)
    heads = [_column_position(out, short) for short in PAPER_ORDER]
    assert heads == sorted(heads)  # math500, aime24, aime25, amc23, olympiadbench: the preset's order
    assert "M500 = math500, AIME24 = aime24, AIME25 = aime25, AMC23 = amc23, Olym = olympiadbench" in " ".join(
        out.split())
    assert out.count("lr-sft") >= 2  # the wrapped part repeats the method column
    assert "math500" in render(table, "csv").splitlines()[0]  # machine formats keep the full names


def test_column_chunks_pack_greedily_and_give_up_on_a_too_wide_column():
    assert column_chunks([6, 10, 10, 10], 80) == [[1, 2, 3]]
    assert column_chunks([6, 20, 20, 20], 60) == [[1, 2], [3]]  # 1 + 9 + 23 + 23 = 56; a third one: 79
    assert column_chunks([6, 80], 80) is None


def test_a_column_too_wide_for_80_is_stacked_not_cut():
    name, word = "m" * 30, "x" * 45  # side by side: 1 + 33 + 48 = 82 columns
    t = TableData("t", ["method", "note", "b"], [{"method": name, "note": Cell(word + " y"), "b": "1.0"}])
    out = render(t, "rich", 80)
    assert_fits(out)
    assert re.search(r"│ method +│ " + name, out) and re.search(r"│ note +│ " + word, out)  # one block per row


def _tiny_db(tmp_path):
    """Runs on the tiny preset's three benchmarks (inserted medium, hard, easy: the order must come from the preset)."""
    db = tmp_path / "r.db"
    factory = open_db(f"sqlite:///{db}")
    benches = ["arith-medium", "arith-hard", "arith-easy"]
    add_run(factory, presets.TINY, "base", verdicts(0, benches, 10, 8, 0.3))
    add_run(factory, presets.TINY, "sft", verdicts(1, benches, 10, 8, 0.5))
    return db


def _sql_avg(db, run_id: int, bench: str) -> float:
    """Mean over problems of the per-problem share correct, from the samples alone."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT AVG(c) FROM (SELECT AVG(s.correct) AS c FROM samples s JOIN evaluations e ON e.id = s.evaluation_id"
            " WHERE e.run_id = ? AND e.benchmark = ? GROUP BY s.problem_id)", (run_id, bench)).fetchone()[0]


def test_leaderboard_orders_benchmarks_as_the_preset_and_matches_sql(tmp_path, narrow):
    db = _tiny_db(tmp_path)
    res = runner.invoke(_app(), ["leaderboard", "--db", str(db), "--format", "csv"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.output)))
    header = next(csv.reader(io.StringIO(res.output)))
    assert [h for h in header if h.startswith("arith") and "." not in h] == ["arith-easy", "arith-medium", "arith-hard"]
    for row in rows:
        run_id = int(row["run"].lstrip("#"))
        for b in ("arith-easy", "arith-medium", "arith-hard"):
            assert float(row[f"{b}.avg"]) == pytest.approx(_sql_avg(db, run_id, b), abs=1e-12)
    res = runner.invoke(_app(), ["leaderboard", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert_fits(res.output)
    assert res.output.index("easy") < res.output.index("medium") < res.output.index("hard")


def test_show_prints_shares_in_percent_matching_sql(tmp_path, narrow):
    db = _tiny_db(tmp_path)
    res = runner.invoke(_app(), ["show", "2", "--db", str(db), "--format", "json"])
    assert res.exit_code == 0, res.output
    got = {r["metric"]: r for r in json.loads(res.output)["rows"]}
    for b in ("arith-easy", "arith-medium", "arith-hard"):
        assert got["avg@n %"][b] == f"{100 * _sql_avg(db, 2, b):.1f}"
    assert json.loads(res.output)["columns"] == ["metric", "arith-easy", "arith-medium", "arith-hard"]
    res = runner.invoke(_app(), ["show", "2", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert_fits(res.output)
    assert "avg@n %" in res.output and "0.5" not in res.output.split("avg@n %")[1].splitlines()[0]


def test_runs_csv_is_the_runs_table(tmp_path, narrow):
    db = _tiny_db(tmp_path)
    res = runner.invoke(_app(), ["runs", "--db", str(db), "--format", "csv"])
    assert res.exit_code == 0, res.output
    got = [(int(r["id"]), r["method"], r["preset"], r["status"], r["hash"], int(r["#evals"]))
           for r in csv.DictReader(io.StringIO(res.output))]
    with sqlite3.connect(db) as conn:
        want = conn.execute("SELECT r.id, r.method, r.preset, r.status, r.config_hash, COUNT(e.id) FROM runs r "
                            "LEFT JOIN evaluations e ON e.run_id = r.id GROUP BY r.id ORDER BY r.id").fetchall()
    assert got == want
    res = runner.invoke(_app(), ["runs", "--db", str(db)])
    assert_fits(res.output)


def test_abbreviations_are_whole_names_only():
    assert set(BENCH_ABBREV) >= {"math500", "olympiadbench", "aime24", "aime25", "amc23"}
    from repro.render import abbreviate

    assert abbreviate("math500 (n=4)") == ("M500 (n=4)", ["math500"])
    assert abbreviate("math500x arith-easy-2") == ("math500x arith-easy-2", [])
