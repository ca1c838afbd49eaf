"""Benchmark registry: a name -> a loader that returns plain `Problem` records.

This package knows problems and nothing about models. Each benchmark is a `BenchmarkSpec`
(hub dataset id, split, field mapping, local file name) or, for generated families such as the
synthetic arithmetic tasks, a plain function. Loading order for hub-backed sets:

1. `data_dir` argument, else the `LATENTREVISE_DATA_DIR` environment variable: read
   `<data_dir>/<local_file>` (JSON Lines with `id`, `problem`, `answer`; extra fields go to `meta`).
2. otherwise the Hugging Face hub through `datasets.load_dataset(hub_id, ...)`.

Malformed input fails with a `BenchmarkDataError` naming the file, the line and the field; bytes
that are not UTF-8 are named by line and byte offset. Rule for blank lines: a line that is empty
or only whitespace is skipped (an editor's trailing newline is not an error), and line numbers in
messages still count it, so they match what an editor shows. A missing data directory, or a hub
that cannot be reached, is a `BenchmarkDataError` too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DATA_DIR_ENV = "LATENTREVISE_DATA_DIR"


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class BenchmarkDataError(ValueError):
    """A benchmark file or row is malformed; the message names file, line and field."""


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    local_file: str  # file name inside a local data directory
    hub_id: str  # Hugging Face dataset id used when no local directory is given
    hub_split: str = "test"
    hub_config: str | None = None
    # hub field -> our field ("id", "problem", "answer"); an id field may be absent (row index used)
    fields: dict[str, str] = field(default_factory=lambda: {"problem": "problem", "answer": "answer"})
    description: str = ""
    answer_from_boxed: bool = False  # hub answer field is a full solution: keep its last \\boxed{}


_SPECS: dict[str, BenchmarkSpec] = {}
_GENERATED: dict[str, Callable[[], list[Problem]]] = {}


def register(spec: BenchmarkSpec) -> BenchmarkSpec:
    _SPECS[spec.name] = spec
    return spec


def register_generated(name: str, loader: Callable[[], list[Problem]]) -> None:
    """Register a benchmark that is generated in-process (no file, no hub)."""
    _GENERATED[name] = loader


def list_benchmarks() -> list[str]:
    return sorted([*_SPECS, *_GENERATED])


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None


def load_jsonl(path: Path) -> list[Problem]:
    """Read one JSONL benchmark file strictly: every row needs non-empty string id/problem/answer."""
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: file not found")
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for lineno, line in _utf8_lines(path):
        if not line.strip():
            continue  # blank lines are skipped (module docstring)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise BenchmarkDataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for key in ("id", "problem", "answer"):
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                raise BenchmarkDataError(
                    f"{path}:{lineno}: field '{key}' must be a non-empty string, got {value!r:.60}"
                )
        if row["id"] in seen:
            raise BenchmarkDataError(
                f"{path}:{lineno}: field 'id' duplicates line {seen[row['id']]} ({row['id']!r})"
            )
        seen[row["id"]] = lineno
        meta = {k: v for k, v in row.items() if k not in ("id", "problem", "answer")}
        problems.append(Problem(row["id"], row["problem"], row["answer"], meta))
    if not problems:
        raise BenchmarkDataError(f"{path}: no rows")
    return problems


def _utf8_lines(path: Path):
    """(line number, text) of each line; a byte that is not UTF-8 is an error naming line and offset."""
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                # a UTF-8 byte-order mark at the start of the file is not part of the first row
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise BenchmarkDataError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte offset {offset + e.start} of "
                    f"the file, column {e.start + 1} of the line); re-save the file as UTF-8") from None
            offset += len(raw)


def _load_hub(spec: BenchmarkSpec) -> list[Problem]:
    try:
        import datasets  # imported lazily: offline users never need the hub client

        ds = datasets.load_dataset(spec.hub_id, spec.hub_config, split=spec.hub_split)
    except Exception as e:  # no network, no such dataset, no `datasets` package: all mean "use local files"
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise BenchmarkDataError(
            f"{spec.name}: could not load {spec.hub_id} from the Hugging Face hub ({type(e).__name__}: {first}); "
            f"pass --data-dir (or set {DATA_DIR_ENV}) to a directory with {spec.local_file}") from None
    problems = []
    for i, row in enumerate(ds):
        mapped = {ours: row.get(theirs) for theirs, ours in spec.fields.items()}
        answer = mapped.get("answer")
        if isinstance(answer, list):  # OlympiadBench keeps final answers as a list of strings
            answer = answer[0] if answer else ""
        if spec.answer_from_boxed:
            answer = last_boxed(str(answer)) or ""
        pid = mapped.get("id")
        problems.append(
            Problem(
                id=f"{spec.name}-{pid if pid is not None else i}",
                problem=str(mapped["problem"]),
                answer=str(answer).strip().strip("$"),
                meta={k: v for k, v in row.items() if k not in spec.fields and _jsonable(v)},
            )
        )
    return problems


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> list[Problem]:
    """Problems of benchmark `name`, in file order; `limit` keeps the first `limit`."""
    if name in _GENERATED:
        problems = _GENERATED[name]()
    elif name in _SPECS:
        spec = _SPECS[name]
        local = resolve_data_dir(data_dir)
        if local is not None and not local.is_dir():
            raise BenchmarkDataError(f"{local / spec.local_file}: file not found: the data directory {local} does not "
                                     f"exist (set by --data-dir or {DATA_DIR_ENV}); point it at the directory "
                                     f"that holds {spec.local_file}")
        problems = load_jsonl(local / spec.local_file) if local else _load_hub(spec)
    else:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(list_benchmarks())}")
    return problems[:limit] if limit else problems
