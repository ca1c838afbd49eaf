"""Config dataclass checks, shared by every method and preset: choices are `Literal` types.

A field typed `Literal["a", "b"]` may only hold "a" or "b"; `check_choices(cfg)` (called from a
config's `__post_init__`) says which field is wrong and what it allows, before any work starts:

    @dataclass
    class SFTConfig:
        data: Literal["reference", "rft", "both"] = "reference"
        def __post_init__(self): check_choices(self)

Config classes are combined by inheritance (lr-sft's config is SFT's plus LatentRevise's), so a
`__post_init__` checks the whole object and calls `super().__post_init__()` when a base has one.
"""

from __future__ import annotations

import dataclasses
import typing
from functools import lru_cache
from typing import Any, Literal


@lru_cache(maxsize=None)
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """field name -> allowed values, for every `Literal`-typed field of a dataclass (and of `X | None`)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[Any, ...]] = {}
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name)
        options = [hint, *typing.get_args(hint)] if typing.get_origin(hint) is typing.Union else [hint]
        for opt in options:
            if typing.get_origin(opt) is Literal:
                out[f.name] = typing.get_args(opt) + ((None,) if type(None) in typing.get_args(hint) else ())
    return out


def check_choices(cfg: Any) -> None:
    """ValueError naming the first field whose value is not one of its `Literal` choices."""
    for name, allowed in _choices(type(cfg)).items():
        value = getattr(cfg, name)
        if value not in allowed:
            shown = " | ".join(repr(a) if a is None else str(a) for a in allowed)
            raise ValueError(f"{type(cfg).__name__}.{name} must be one of {shown}, got {value!r}")


def require(condition: bool, message: str) -> None:
    """ValueError(message) unless `condition`: range checks in `__post_init__` read as one line each."""
    if not condition:
        raise ValueError(message)
