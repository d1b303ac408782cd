"""The schema layer: msgspec's errors as one line naming the key path, dict keys filled in, in our words."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import pytest

from trading_ops.schema import SchemaError, build, convert


class Leaf(msgspec.Struct, forbid_unknown_fields=True):
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9101
    ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    level: Literal["DEBUG", "INFO"] = "INFO"
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=8)] = "x"
    when: Annotated[str, msgspec.Meta(pattern="^[0-9]+$", description="digits only")] = "1"


class Root(msgspec.Struct, forbid_unknown_fields=True):
    leaf: Leaf = msgspec.field(default_factory=Leaf)
    by_name: dict[str, Leaf] = {}
    items: list[Leaf] = []
    labels: Annotated[dict[Annotated[str, msgspec.Meta(max_length=4)], str], msgspec.Meta(max_length=2)] = {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"leaf": {"port": "abc"}}, "leaf.port: expected an integer, got 'abc'"),
        ({"leaf": {"port": 70000}}, "leaf.port: must be at most 65535, got 70000"),
        ({"leaf": {"ratio": -0.5}}, "leaf.ratio: must be at least 0, got -0.5"),
        ({"leaf": {"ratio": math.nan}}, "leaf.ratio: expected a finite number, got nan"),
        ({"leaf": {"ratio": True}}, "leaf.ratio: expected a number, got True"),
        ({"leaf": {"level": "LOUD"}}, "leaf.level: expected one of 'DEBUG', 'INFO', got 'LOUD'"),
        ({"leaf": {"name": ""}}, "leaf.name: must not be empty"),
        ({"leaf": {"name": "x" * 9}}, "leaf.name: more than 8 characters"),
        ({"leaf": {"nmae": 1}}, "leaf.nmae: unknown key (known: port, ratio, level, name, when)"),
        ({"leaf": [1]}, "leaf: expected a mapping, got [1]"),
        ([1], "expected a mapping, got [1]"),
        # A mapping's entry is named by its key, found in the data (msgspec says only `[...]`).
        ({"by_name": {"a": {}, "b-1": {"port": -1}}}, "by_name.b-1.port: must be at least 0, got -1"),
        ({"items": [{}, {"level": 3}]}, "items[1].level: expected one of 'DEBUG', 'INFO', got 3"),
        ({"labels": {"a": "1", "b": "2", "c": "3"}}, "labels: more than 2 entries"),
        ({"labels": {"long-name": "1"}}, "labels.long-name (the name): more than 4 characters"),
    ],
)
def test_errors_are_one_line_naming_the_key(data: Any, message: str) -> None:
    with pytest.raises(SchemaError) as info:
        convert(data, Root)
    assert str(info.value) == message


def test_a_description_gives_the_words_after_expected_when_asked() -> None:
    with pytest.raises(SchemaError, match=r"^leaf\.when: expected digits only$"):
        convert({"leaf": {"when": "soon"}}, Root, expected_from_description=True)
    with pytest.raises(SchemaError, match=r"^leaf\.when: expected `str` matching regex"):
        convert({"leaf": {"when": "soon"}}, Root)


def check_even(value: int) -> str | None:
    return None if value % 2 == 0 else f"expected an even number, got {value}"


@dataclass
class Section:
    count: int = field(default=2, metadata={"min": 0, "max": 10, "check": check_even})
    token: str = field(default="env:TOKEN", metadata={"secret": True, "help": "a token"})
    seen: list[str] = field(default_factory=list)

    def validate(self, prefix: str, given: set[str]) -> None:
        self.seen = sorted(given)


@dataclass
class Top:
    section: Section = field(default_factory=Section)
    sections: dict[str, Section] = field(default_factory=dict)


def test_dataclasses_are_built_from_the_keys_given_with_their_checks_and_rules() -> None:
    top = build(Top, {"section": {"count": 4, "token_file": "t"}, "sections": {"a": {}}})
    assert top.section == Section(count=4, token="file:t", seen=["count", "token"])
    assert top.sections["a"].seen == [] and top.sections["a"].token == "env:TOKEN"
    for data, message in [
        ({"section": {"count": 3}}, "section.count: expected an even number, got 3"),
        ({"section": {"count": 12}}, "section.count: must be at most 10, got 12"),
        ({"sections": {"b": {"count": 1.5}}}, "sections.b.count: expected an integer, got 1.5"),
        ({"section": {"token_file": "t", "token_env": "T"}}, "section.token_env: give only one of token_file and"),
        ({"section": {"token": "s3cret"}}, "section.token: unknown key"),
    ]:
        with pytest.raises(SchemaError) as info:
            build(Top, data)
        assert str(info.value).startswith(message), info.value
