"""Methods by name: ours (BUILTIN, imported on first use) and anyone's (a file, an entry point, the decorator).

    @register_method class MyMethod: name = "my-method"; config_cls = MyConfig; def train(...): ...
    get_method("sft"), available_methods(), build_config(cls, {"lr": 1e-5})
    load_method_file("my_method.py") or load_method_file("my_pkg.my_module:MyMethod")  # --method-file

Our methods are listed here by module, the way entry points list anyone's, so that the registry
imports no method module at import time (no import cycle, and `get_method("sft")` loads SFT
only). Third-party packages publish methods in the `latentrevise.methods` entry-point group:

    [project.entry-points."latentrevise.methods"]
    my-method = "my_pkg.my_module:MyMethod"

A method from a file (`--method-file`) carries the file's path and content hash (`method_source`),
which enter its runs' config, so editing the file makes a new run. A third-party method may say
what it is like (`family = "sft"` or `"rl"`: its default comparison in the main table is then the
LatentRevise variant of that family, and it starts from the preset's budget for that baseline) and
give its own per-preset settings (`preset_overrides = {"tiny": {...}}`). A third-party name that
is a built-in's is an error naming both; so is one name for two different classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

ENTRY_POINT_GROUP = "latentrevise.methods"
# name -> the module whose import registers it (with @register_method)
BUILTIN: dict[str, str] = {
    "sft": "methods.sft", "grpo": "methods.grpo",
    "lr-sft": "methods.latentrevise.methods", "lr-grpo": "methods.latentrevise.methods",
    "resample": "methods.resample", "hint": "methods.hint", "guided-prefix": "methods.guided_prefix",
}
# family a third-party method declares -> (the built-in baseline whose preset budget it starts from,
# the LatentRevise variant it is compared with by default)
FAMILIES: dict[str, tuple[str, str]] = {"sft": ("sft", "lr-sft"), "rl": ("grpo", "lr-grpo")}

_REGISTRY: dict[str, type] = {}


class MethodFileError(ValueError):
    """A --method-file that cannot be used; the message names the file and what to fix."""


def _origin(cls: type) -> str:
    """Where a class was defined: its file (or module) and qualified name, for error messages."""
    module = sys.modules.get(cls.__module__)
    return f"{getattr(module, '__file__', None) or cls.__module__}:{cls.__qualname__}"


def register_method(cls: type) -> type:
    """Class decorator: make a method runnable by name."""
    if not getattr(cls, "name", None) or not dataclasses.is_dataclass(getattr(cls, "config_cls", None)):
        raise TypeError(f"{cls.__name__} needs a `name` and a dataclass `config_cls`")
    builtin = BUILTIN.get(cls.name)
    if builtin is not None and not cls.__module__.startswith(builtin):
        raise MethodFileError(f"method {cls.name!r} of {_origin(cls)} clashes with the built-in {cls.name!r} "
                              f"({builtin}); give it another `name`")
    family = getattr(cls, "family", None)
    if family is not None and family not in FAMILIES:
        raise MethodFileError(f"method {cls.name!r} of {_origin(cls)}: family must be one of "
                              f"{', '.join(FAMILIES)}, got {family!r}")
    old = _REGISTRY.get(cls.name)
    if old is not None and old is not cls and _origin(old) != _origin(cls):
        raise MethodFileError(f"method {cls.name!r} of {_origin(cls)} clashes with {_origin(old)}; rename one")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin(name: str) -> None:
    module = importlib.import_module(BUILTIN[name])
    if name not in _REGISTRY:  # imported before a registry `restore`: its decorator does not run again
        for obj in vars(module).values():
            if isinstance(obj, type) and obj.__module__ == module.__name__ and getattr(obj, "name", None) == name:
                register_method(obj)
    if name not in _REGISTRY:
        raise RuntimeError(f"importing {BUILTIN[name]} did not register method {name!r} (fix BUILTIN)")


def available_methods() -> dict[str, type]:
    """Our methods plus every method published under the entry-point group or registered in-process."""
    for name in BUILTIN:
        _load_builtin(name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            register_method(ep.load())
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in BUILTIN:
        _load_builtin(name)
        return _REGISTRY[name]
    found = available_methods()
    if name not in found:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(found)} (a method in a file: --method-file)")
    return found[name]


def build_config(cls: type, overrides: dict[str, Any] | None = None) -> Any:
    """The method's config dataclass with `overrides` applied; unknown keys are an error."""
    cfg = cls.config_cls()
    if not overrides:
        return cfg
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"{cls.name}: unknown config field(s) {sorted(unknown)}; known: {sorted(names)}")
    return dataclasses.replace(cfg, **overrides)


# ---------------------------------------------------------------------------------------------
# third-party methods: files, their identity in run configs, their preset settings and family
# ---------------------------------------------------------------------------------------------

def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_method_file(spec: str) -> list[str]:
    """Import a method file (a path ending in .py) or `module:attr`; the names of the methods it registered.

    Each of them gets `method_source = {"path", "sha256"}` (the file that defines it), which `source_identity`
    puts into its runs' config."""
    before = dict(_REGISTRY)
    if spec.endswith(".py") or ":" not in spec:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise MethodFileError(f"--method-file {spec}: no such file")
        digest = _file_sha256(path)
        module_name = f"latentrevise_method_file_{path.stem}_{digest[:12]}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look classes up by module
        try:
            loader_spec.loader.exec_module(module)  # executed afresh each time: a restored registry gets it back
        except MethodFileError:
            raise
        except Exception as e:
            raise MethodFileError(f"--method-file {path}: importing it failed: {type(e).__name__}: {e}") from e
        found: list[type] = []
    else:
        module_name, _, attr = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise MethodFileError(f"--method-file {spec}: {type(e).__name__}: {e}") from e
        found = [register_method(obj)]
        path = Path(sys.modules[obj.__module__].__file__).resolve()
        digest = _file_sha256(path)
    # what the import registered, less the built-ins it imported on the way (`from methods.sft import SFT`)
    found += [c for n, c in _REGISTRY.items() if before.get(n) is not c and c not in found and n not in BUILTIN]
    if not found:
        raise MethodFileError(f"--method-file {spec}: registered no method (decorate a class with @register_method)")
    for cls in found:
        cls.method_source = {"path": str(path), "sha256": digest}
    return sorted({c.name for c in found})


def source_identity(cls: type) -> dict[str, Any]:
    """What a run's config records of where its method came from: the file and its hash (nothing for built-ins
    and entry points, whose hashes are unchanged)."""
    source = getattr(cls, "method_source", None)
    return {"method_file": dict(source)} if source else {}


def preset_fields(cls: type, preset_name: str, preset_methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The config fields a preset sets for `cls`: its own entry; for a third-party method of a family, the
    family baseline's fields that its config shares (like-for-like budget), then its `preset_overrides`."""
    if cls.name in preset_methods or cls.name in BUILTIN:
        return dict(preset_methods.get(cls.name, {}))
    names = {f.name for f in dataclasses.fields(cls.config_cls)}
    family = getattr(cls, "family", None)
    base = preset_methods.get(FAMILIES[family][0], {}) if family in FAMILIES else {}
    own = dict((getattr(cls, "preset_overrides", None) or {}).get(preset_name, {}))
    return {**{k: v for k, v in base.items() if k in names}, **own}


def reference_method(name: str) -> str | None:
    """The LatentRevise variant a registered third-party method is compared with by default (its family's), or
    None (a built-in, no family, or not registered in this process)."""
    cls = _REGISTRY.get(name)
    family = getattr(cls, "family", None) if cls is not None and name not in BUILTIN else None
    return FAMILIES[family][1] if family in FAMILIES else None


def snapshot() -> dict[str, type]:
    """The registry with every built-in loaded (tests restore it with `restore`, so no registration leaks)."""
    for name in BUILTIN:
        _load_builtin(name)
    return dict(_REGISTRY)


def restore(saved: dict[str, type]) -> None:
    _REGISTRY.clear()
    _REGISTRY.update(saved)
