"""Hub loading without patching the loader out: local `datasets` copies in each hub dataset's column layout.

Each fixture writes the benchmark's rows, rebuilt from ../shared/data in the hub's real layout (the
columns of its dataset card: HuggingFaceH4/MATH-500, HuggingFaceH4/aime_2024, math-ai/aime25,
math-ai/amc23, Hothan/OlympiadBench OE_TO_maths_en_COMP, DigitalLearningGmbH/MATH-lighteval), as a
parquet dataset directory with a README `configs:` block, the way the hub repositories are laid out.
Only `benchmarks.registry.hub_path` (hub id -> what `datasets.load_dataset` is given) is redirected to
that directory; `datasets.load_dataset`, the row validation and the normalization all run for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import BenchmarkDataError, Problem, load_benchmark, registry
from benchmarks.math_sets import PAPER_BENCHMARKS
from harness.generation import stable_seed

ALL = (*PAPER_BENCHMARKS, "math_train")


def _orig(p: Problem, key: str):
    """The source's own value of a normalized field (SOURCES.md keeps a differing one as source_<key>)."""
    return p.meta.get(f"source_{key}", getattr(p, key))


def hub_row(name: str, p: Problem) -> dict:
    """Problem `p` of the local file as a row of the hub dataset, column for column."""
    m = p.meta
    if name == "math500":
        return {k: (p.problem if k == "problem" else p.answer if k == "answer" else m[k])
                for k in ("problem", "solution", "answer", "subject", "level", "unique_id")}
    if name == "aime24":
        return {"id": m["source_id"], "problem": p.problem, "solution": m["solution"], "answer": _orig(p, "answer"),
                "url": m["url"], "year": "2024"}
    if name == "aime25":
        return {"problem": p.problem, "answer": m["source_answer"], "id": m["source_id"]}
    if name == "amc23":
        return {"id": m["source_id"], "question": m["question"], "answer": m["source_answer"], "url": m["url"]}
    if name == "olympiadbench":
        row = {"id": m["source_id"], **{k: m[k] for k in ("subfield", "context", "question", "solution",
                                                           "final_answer", "is_multiple_answer", "unit",
                                                           "answer_type", "error")}}
        return {**row, **{f"image_{i}": None for i in range(1, 6)}, "modality": "Text-only",
                "difficulty": "Competition", "question_type": "Open-ended", "subject": "Math", "language": "English"}
    if name == "math_train":
        return {"problem": p.problem, "level": m["level"], "solution": m["solution"], "type": m["type"]}
    raise KeyError(name)


def write_hub_copy(root: Path, spec, rows: list[dict]) -> Path:
    """A dataset directory that `datasets.load_dataset(root, spec.hub_config, split=spec.hub_split)` reads."""
    import datasets

    config = spec.hub_config or "default"
    (root / config).mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(root / config / f"{spec.hub_split}-00000-of-00001.parquet"))
    (root / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: {spec.hub_split}\n"
        f"    path: {config}/{spec.hub_split}-*.parquet\n---\n", encoding="utf-8")
    return root


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """hub(name, rows) -> the directory standing in for the hub dataset of benchmark `name`."""
    import datasets

    monkeypatch.delenv("LATENTREVISE_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    copies: dict[str, Path] = {}
    monkeypatch.setattr(registry, "hub_path", lambda spec: str(copies[spec.name]))

    def make(name: str, rows: list[dict]) -> Path:
        copies[name] = write_hub_copy(tmp_path / name, registry.get_spec(name), rows)
        return copies[name]

    return make


def _source_order(name: str, problems: list[Problem]) -> list[Problem]:
    """The hub's own row order (by its integer id where it has one), not the local file's."""
    if name in ("aime24", "amc23", "olympiadbench"):
        return sorted(problems, key=lambda p: int(p.meta["source_id"]))
    return list(reversed(problems)) if name == "math_train" else problems


@pytest.mark.parametrize("name", ALL)
def test_hub_rows_get_the_local_ids_answers_and_meta(data_dir, hub, name):
    local = load_benchmark(name, data_dir)
    hub(name, [hub_row(name, p) for p in _source_order(name, local)])
    remote = load_benchmark(name)
    assert len(remote) == len(local)
    by_id = {p.id: p for p in remote}
    assert set(by_id) == {p.id for p in local}  # one problem, one id: the pairing key of two runs
    for p in local:
        q = by_id[p.id]
        assert (q.problem, q.answer) == (p.problem, p.answer), p.id
        assert stable_seed(0, name, q.id) == stable_seed(0, name, p.id)
        shared = set(p.meta) & set(q.meta)
        assert {k: q.meta[k] for k in shared} == {k: p.meta[k] for k in shared}, p.id
    kept = {"math500": "solution", "aime24": "solution", "aime25": "source_answer", "amc23": "url",
            "olympiadbench": "final_answer", "math_train": "solution"}[name]
    assert all(kept in q.meta for q in remote)  # mapped columns stay in meta (17.1: SFT needs the solution)
    if name == "math_train":
        _sft_reference_examples_work([by_id[p.id] for p in local[:40]], local[:40])


def _sft_reference_examples_work(remote: list[Problem], local: list[Problem]) -> None:
    """17.1: SFT data='reference' on hub-loaded MATH train raised "has no meta['solution']"."""
    from methods.sft import SFT, SFTConfig

    cfg = SFTConfig()
    examples = SFT().reference_examples(remote, [p.problem for p in remote], cfg)
    assert examples == [(p.id, p.problem, cfg.response_prefix + p.meta["solution"]) for p in local]


def test_math_train_ids_are_content_hashes_from_either_source(data_dir):
    local = load_benchmark("math_train", data_dir)
    first = local[0]
    assert first.meta["source_id"] == "train/algebra/0.json"  # the file's own id, kept
    assert re.fullmatch(r"math_train-[0-9a-f]{12}", first.id)
    assert first.id == registry.content_id("math_train", "  " + first.problem + "\n")
    twins = [p for p in local if p.meta["source_id"] in ("train/algebra/2463.json", "train/algebra/24377.json")]
    assert len({p.id for p in twins}) == 2  # the texts differ only in a double space: two problems, two ids
    assert len({p.id for p in local}) == 7500
    hand = {p.meta["source_id"]: p.answer for p in local if "answer_note" in p.meta}
    assert hand == {"train/number_theory/7115.json": "0", "train/number_theory/7117.json": "0"}


def _rows(data_dir, name: str, n: int | None = None) -> list[dict]:
    return [hub_row(name, p) for p in load_benchmark(name, data_dir)][:n]


@pytest.mark.parametrize("name,edit,message", [
    ("math500", lambda rows: [{k: v for k, v in r.items() if k != "unique_id"} for r in rows],
     r"HuggingFaceH4/MATH-500 split test row 0: field 'unique_id' missing"),
    ("math500", lambda rows: [{**r, "level": str(r["level"])} for r in rows],  # a column of strings
     r"HuggingFaceH4/MATH-500 split test row 0: field 'level' must be int, got str '2'"),
    ("math500", lambda rows: rows[:499], r"HuggingFaceH4/MATH-500 split test: 499 rows, expected 500"),
    ("math500", lambda rows: rows[:2] + [{**rows[2], "answer": " "}] + rows[3:],
     r"row 2: normalized field 'answer' must be a non-empty string"),
    ("math500", lambda rows: rows[:1] + [rows[0]] + rows[2:],
     r"row 1: id 'test/precalculus/807.json' duplicates row 0"),
    ("aime24", lambda rows: rows[:4] + [{**rows[4], "url": "https://example.org/p5"}] + rows[5:],
     r"HuggingFaceH4/aime_2024 split train row 4: field 'url' does not name a problem"),
    ("amc23", lambda rows: rows[:1] + [{**rows[1], "answer": 2.5}] + rows[2:],
     r"math-ai/amc23 split test row 1: field 'answer' must be an integer, got 2.5"),
    ("olympiadbench", lambda rows: rows[:7] + [{**rows[7], "final_answer": []}] + rows[8:],
     r"Hothan/OlympiadBench \(OE_TO_maths_en_COMP\) split train row 7: field 'final_answer' must be a non-empty"),
])
def test_bad_hub_rows_name_dataset_row_and_field(data_dir, hub, name, edit, message):
    hub(name, edit(_rows(data_dir, name)))
    with pytest.raises(BenchmarkDataError, match=message):
        load_benchmark(name)
