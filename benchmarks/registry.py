"""Benchmark registry: a name -> a loader that returns plain `Problem` records.

This package knows problems and nothing about models. Each benchmark is a `BenchmarkSpec`
(hub dataset id, split, the hub's column layout, its normalizer, local file name, row count) or,
for generated families such as the synthetic arithmetic tasks, a plain function. Loading order for
hub-backed sets:

1. `data_dir` argument, else the `LATENTREVISE_DATA_DIR` environment variable: read
   `<data_dir>/<local_file>` (JSON Lines with `id`, `problem`, `answer`; extra fields go to `meta`).
2. otherwise the Hugging Face hub through `datasets.load_dataset(hub_id, ...)`.

One problem, one id: a hub row is turned into the record the local file holds for the same problem
(the rules of ../shared/data/SOURCES.md, one `normalize` function per benchmark in math_sets.py), so
its id, and with it the per-problem seed, is the same from either source and runs can be paired.
`meta` follows the same rule as the local files: every original column is kept (mapped ones such as
MATH's `solution` included); an original `id`/`problem`/`answer` whose value differs from the
normalized one is kept as `source_id`/`source_problem`/`source_answer`.

Malformed input fails with a `BenchmarkDataError` naming the file, the line and the field (hub: the
dataset, the row and the field); bytes that are not UTF-8 are named by line and byte offset. Hub rows
are checked like local rows: every column of the layout present with its type, the normalized id,
problem and answer non-empty strings, ids unique, and the row count equal to the published size (a
hub dataset that grew or shrank is another problem set). Rule for blank lines: a line that is empty
or only whitespace is skipped (an editor's trailing newline is not an error), and line numbers in
messages still count it, so they match what an editor shows. A missing data directory, or a hub
that cannot be reached, is a `BenchmarkDataError` too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

DATA_DIR_ENV = "LATENTREVISE_DATA_DIR"
NORMALIZED = ("id", "problem", "answer")


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class BenchmarkDataError(ValueError):
    """A benchmark file or row is malformed; the message names file, line and field."""


# A hub row (its original columns) -> (id, problem, answer) as the local file writes them; raises
# ValueError with a message naming the field when a value cannot be normalized.
Normalizer = Callable[[Mapping[str, Any]], "tuple[str, str, str]"]


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    local_file: str  # file name inside a local data directory
    hub_id: str  # Hugging Face dataset id used when no local directory is given
    normalize: Normalizer  # hub row -> the local file's (id, problem, answer) for the same problem
    columns: Mapping[str, tuple[type, ...]]  # hub column -> accepted Python types (None: type(None))
    size: int  # rows of the published set, checked on hub loading
    # ids that neither source carries (MATH train on the hub has no file name): both sources use
    # `content_id(name, problem)` and a local file's own id is kept as meta["source_id"]
    content_ids: bool = False
    hub_split: str = "test"
    hub_config: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.local_file or not self.hub_id:
            raise ValueError(f"BenchmarkSpec needs a name, a local_file and a hub_id, got {self!r:.120}")
        if self.size < 1 or not self.columns:
            raise ValueError(f"BenchmarkSpec {self.name}: size must be >= 1 and columns non-empty")


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


def get_spec(name: str) -> BenchmarkSpec:
    if name not in _SPECS:
        raise KeyError(f"unknown hub-backed benchmark {name!r}; known: {', '.join(sorted(_SPECS))}")
    return _SPECS[name]


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


def hub_path(spec: BenchmarkSpec) -> str:
    """What `datasets.load_dataset` is given for `spec`: the hub id (tests point it at a local copy)."""
    return spec.hub_id


def _open_hub(spec: BenchmarkSpec) -> Iterable[Mapping[str, Any]]:
    try:
        import datasets  # imported lazily: offline users never need the hub client

        return datasets.load_dataset(hub_path(spec), spec.hub_config, split=spec.hub_split)
    except Exception as e:  # no network, no such dataset, no `datasets` package: all mean "use local files"
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise BenchmarkDataError(
            f"{spec.name}: could not load {spec.hub_id} from the Hugging Face hub ({type(e).__name__}: {first}); "
            f"pass --data-dir (or set {DATA_DIR_ENV}) to a directory with {spec.local_file}") from None


def _load_hub(spec: BenchmarkSpec) -> list[Problem]:
    """The hub rows of `spec`, validated and normalized like the local file (module docstring)."""
    where = f"{spec.hub_id}{f' ({spec.hub_config})' if spec.hub_config else ''} split {spec.hub_split}"
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(_open_hub(spec)):
        problem = hub_problem(spec, dict(row), f"{where} row {i}")
        if problem.id in seen:
            raise BenchmarkDataError(f"{where} row {i}: id {problem.id!r} duplicates row {seen[problem.id]}")
        seen[problem.id] = i
        problems.append(problem)
    if len(problems) != spec.size:
        raise BenchmarkDataError(f"{where}: {len(problems)} rows, expected {spec.size} ({spec.description})")
    return problems


def hub_problem(spec: BenchmarkSpec, row: dict[str, Any], where: str) -> Problem:
    """One hub row -> the `Problem` of the local file; a missing or mistyped column is a one-line error."""
    for column, types in spec.columns.items():
        if column not in row:
            raise BenchmarkDataError(f"{where}: field {column!r} missing (columns: {', '.join(row)})")
        if not _has_type(row[column], types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise BenchmarkDataError(f"{where}: field {column!r} must be {names}, got "
                                     f"{type(row[column]).__name__} {row[column]!r:.60}")
    try:
        values = spec.normalize(row)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise BenchmarkDataError(f"{where}: {e}") from None
    for key, value in zip(NORMALIZED, values):
        if not isinstance(value, str) or not value.strip():
            raise BenchmarkDataError(f"{where}: normalized field {key!r} must be a non-empty string, "
                                     f"got {value!r:.60}")
    return Problem(*values, meta=_meta(row, dict(zip(NORMALIZED, values))))


def content_id(name: str, problem: str) -> str:
    """`<name>-<12 hex>`: sha256 of the problem text without leading/trailing whitespace, the same from any
    source. Inner whitespace counts: MATH train has two problems that differ only in a double space."""
    return f"{name}-{hashlib.sha256(problem.strip().encode('utf-8')).hexdigest()[:12]}"


def _rekey(spec: BenchmarkSpec, problems: list[Problem]) -> list[Problem]:
    if not spec.content_ids:
        return problems
    out = [Problem(content_id(spec.name, p.problem), p.problem, p.answer, {**p.meta, "source_id": p.id})
           for p in problems]
    dups = len(out) - len({p.id for p in out})
    if dups:
        raise BenchmarkDataError(f"{spec.local_file}: {dups} problem texts repeat (ids are content hashes)")
    return out


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:  # bool is an int subclass: True is not a row id
        return False
    return isinstance(value, types)


def _meta(row: Mapping[str, Any], normalized: Mapping[str, str]) -> dict[str, Any]:
    """Every original column (SOURCES.md rule); a differing original id/problem/answer as source_*."""
    meta = {}
    for key, value in row.items():
        if not _jsonable(value):
            continue  # images (OlympiadBench's image_1..5) and other binary columns
        if key in normalized:
            if value != normalized[key]:
                meta[f"source_{key}"] = value
        else:
            meta[key] = value
    return meta


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
        problems = _rekey(spec, load_jsonl(local / spec.local_file)) if local else _load_hub(spec)
    else:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(list_benchmarks())}")
    return problems[:limit] if limit else problems
