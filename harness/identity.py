"""What identifies the samples an engine produces: backend, numerics, context, libraries, model revision.

    engine_identity("vllm", {"dtype": "float32", "max_model_len": 512, ...}, "/path/to/model")
    model_revision("/path/to/model")   # {"ref", "kind": "local", "hash"} | {"ref", "kind": "hub", "commit"}

An evaluation is reused or resumed only when everything that changes its samples is equal
(harness/evaluate.py puts this dict into the evaluation identity). A model directory is identified
by its content, not its path: a checkpoint retrained in place gets a new revision, and the same
checkpoint copied elsewhere keeps its revision. Hashing multi-GB weights costs seconds, so the hash
is cached in-process per (path, file names, sizes, mtimes): a changed file is hashed again.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

LIBRARIES = ("vllm", "torch", "transformers")
CHUNK = 1 << 22  # 4 MiB reads while hashing weights
_REVISIONS: dict[tuple, dict[str, Any]] = {}


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that produce samples (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _local_revision(root: Path) -> dict[str, Any]:
    """A content hash of a model directory: every file's name, size and bytes (weights, config, tokenizer)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    stats = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(root), stats)
    if key not in _REVISIONS:
        h = hashlib.sha256()
        for p, (name, size, _) in zip(files, stats):
            h.update(f"{name}\x1f{size}\x1f{_file_digest(p)}\n".encode())
        _REVISIONS[key] = {"kind": "local", "hash": h.hexdigest()[:16], "files": len(files)}
    return _REVISIONS[key]


def _hub_revision(repo_id: str) -> dict[str, Any]:
    """The commit of a hub model as found in the local hub cache (no network), else unknown."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001  (no hub library, a malformed id: the revision is simply unknown)
        cached = None
    if isinstance(cached, str) and "/snapshots/" in cached:
        return {"kind": "hub", "commit": cached.split("/snapshots/")[1].split("/")[0]}
    return {"kind": "hub", "commit": None}


def model_revision(model: str | Path) -> dict[str, Any]:
    """{"ref": model, ...}: a local directory's content hash, or a hub id's cached commit."""
    path = Path(model).expanduser()
    if path.is_dir():
        return {"ref": str(model), **_local_revision(path.resolve())}
    return {"ref": str(model), **_hub_revision(str(model))}


def engine_identity(backend: str, settings: dict[str, Any], model: str | Path | None) -> dict[str, Any]:
    """Everything about an engine that changes its samples (settings: dtype, context, parallelism, ...)."""
    return {"backend": backend, **settings, "versions": library_versions(),
            "model": model_revision(model) if model is not None else None}
