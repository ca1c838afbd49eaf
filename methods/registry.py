"""Methods by name: ours (BUILTIN, imported on first use) and anyone's (entry points, decorator).

    @register_method class MyMethod: name = "my-method"; config_cls = MyConfig; def train(...): ...
    get_method("sft"), available_methods(), build_config(cls, {"lr": 1e-5})

Our methods are listed here by module, the way entry points list anyone's, so that the registry
imports no method module at import time (no import cycle, and `get_method("sft")` loads SFT
only). Third-party packages publish methods in the `latentrevise.methods` entry-point group:

    [project.entry-points."latentrevise.methods"]
    my-method = "my_pkg.my_module:MyMethod"
"""

from __future__ import annotations

import dataclasses
import importlib
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "latentrevise.methods"
# name -> the module whose import registers it (with @register_method)
BUILTIN: dict[str, str] = {
    "sft": "methods.sft", "grpo": "methods.grpo",
    "lr-sft": "methods.latentrevise.methods", "lr-grpo": "methods.latentrevise.methods",
    "resample": "methods.resample", "hint": "methods.hint", "guided-prefix": "methods.guided_prefix",
}

_REGISTRY: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: make a method runnable by name."""
    if not getattr(cls, "name", None) or not dataclasses.is_dataclass(getattr(cls, "config_cls", None)):
        raise TypeError(f"{cls.__name__} needs a `name` and a dataclass `config_cls`")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin(name: str) -> None:
    importlib.import_module(BUILTIN[name])
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
        raise KeyError(f"unknown method {name!r}; available: {', '.join(found)}")
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
