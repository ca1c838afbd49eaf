"""harness.config: Literal-typed fields are checked by name, through combined (inherited) configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from harness.config import check_choices


@dataclass
class Base:
    mode: Literal["a", "b"] = "a"
    maybe: Literal["x"] | None = None

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class Other:
    rule: Literal["p", "q"] = "p"

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class Combined(Base, Other):
    pass


def test_a_wrong_choice_names_the_field_and_the_choices():
    assert Base(mode="b", maybe="x").mode == "b"
    with pytest.raises(ValueError, match=r"Base.mode must be one of a \| b, got 'c'"):
        Base(mode="c")
    with pytest.raises(ValueError, match=r"Base.maybe must be one of x \| None, got 'y'"):
        Base(maybe="y")


def test_a_combined_config_checks_the_fields_of_every_base():
    with pytest.raises(ValueError, match="Combined.rule must be one of p | q"):
        Combined(rule="r")


def test_method_configs_check_at_construction():
    from methods.registry import build_config, get_method

    with pytest.raises(ValueError, match="LRGRPOConfig.insert_mode must be one of append | replace"):
        build_config(get_method("lr-grpo"), {"insert_mode": "prepend"})
    with pytest.raises(ValueError, match="LRSFTConfig.data must be one of"):
        build_config(get_method("lr-sft"), {"data": "web"})
