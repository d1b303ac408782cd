"""The schema layer: typed structures (msgspec) checked in one call, their errors one line naming the key path."""

from __future__ import annotations

import math
import re
import sys
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

# What a float field takes unless it says more: a finite number (NaN and infinities compare false with every bound,
# so a range alone would let them in).
FINITE = msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)
Finite = Annotated[float, FINITE]

# Patterns of msgspec's messages, compiled on the first error (re caches them), not by every command at start.
# msgspec's names of JSON types, in the words of our messages.
TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing (null)",
}
PATH_SEGMENT_PATTERN = r"\.([^.\[]+)|\[(\d+|\.\.\.)\]"
TYPE_ERROR_PATTERN = r"Expected `([^`]+)`, got `([^`]+)`"
BOUND_ERROR_PATTERN = r"Expected `(?:int|float)` (>=|<=|>|<) (\S+)"
LENGTH_ERROR_PATTERN = r"Expected `(?:str|array|object)` of length >= (\d+)"
# Too many entries or characters: said as such, whatever the type's description.
TOO_LONG_PATTERN = r"Expected `(str|array|object)` of length <= (\d+)"
KEY_CHARS = 60  # of a mapping's key in a key path: whatever a sender put there, the message stays one short line
BOUND_WORDS = {">=": "must be at least", "<=": "must be at most", ">": "must be more than", "<": "must be less than"}


class SchemaError(ValueError):
    """A value that does not fit its structure: `key` is its dotted path (`bot.listen.port`, "" the top level)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def describe(value: Any) -> str:
    """A value as an error message shows it: its repr, at most 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def unknown_key_words(struct: type, name: str) -> str:
    """The default message for a key a structure does not have."""
    known = ", ".join(f.encode_name for f in msgspec.structs.fields(struct))
    return f"unknown key (known: {known})"


def convert(
    data: Any,
    tp: Any,
    *,
    unknown_key: Callable[[type, str], str] = unknown_key_words,
    expected_from_description: bool = False,
) -> Any:
    """`data` (YAML or JSON) as `tp`; SchemaError names the first key that does not fit, in one line.
    `expected_from_description`: a value that does not fit a type with a description is "expected <description>"."""
    try:
        return msgspec.convert(data, tp)
    except msgspec.ValidationError as exc:
        raise explain(exc, data, tp, unknown_key, expected_from_description) from None


def explain(
    exc: msgspec.ValidationError,
    data: Any,
    tp: Any,
    unknown_key: Callable[[type, str], str] = unknown_key_words,
    expected_from_description: bool = False,
) -> SchemaError:
    """msgspec's "Expected `int`, got `str` - at `$.bot.listen.port`" as `bot.listen.port: expected an integer, got
    'abc'`: the key path with dict keys filled in, the value shown, the words of our messages ("" the top level)."""
    message, _, where = str(exc).partition(" - at `")
    if where.startswith("key` in `"):  # a mapping's key: the first that does not fit, named as "(the name)"
        key, value, at = _walk(where[len("key` in `") : -1], data, tp)
        at = get_args(_member(at, dict))[0]
        entry = next(k for k in value if not _fits(k, at))
        where_key = f"{key}.{entry[:KEY_CHARS]} (the name)" if isinstance(entry, str) else key
        return explain_value(message, where_key, entry, at, expected_from_description)
    key, value, at = _walk(where[:-1], data, tp)
    if match := re.match(r"Object contains unknown field `(.+)`", message):
        name = match.group(1)
        return SchemaError(f"{key}.{name}" if key else name, unknown_key(_member(at, msgspec.Struct), name))
    if match := re.match(r"Object missing required field `(.+)`", message):
        return SchemaError(f"{key}.{match.group(1)}" if key else match.group(1), "required")
    return explain_value(message, key, value, at, expected_from_description)


def explain_value(message: str, key: str, value: Any, at: Any, expected_from_description: bool) -> SchemaError:
    if expected_from_description and (words := _description(at)) and not re.match(TOO_LONG_PATTERN, message):
        return SchemaError(key, f"expected {words}")
    return SchemaError(key, _problem(message, value, at))


def _bound_words(match: re.Match[str], value: Any) -> str:
    bound = float(match.group(2))
    shown = str(int(bound)) if bound.is_integer() and abs(bound) < 1e15 else repr(bound)
    return f"{BOUND_WORDS[match.group(1)]} {shown}, got {describe(value)}"


def _type_words(match: re.Match[str], value: Any) -> str:
    wanted = " or ".join(TYPE_WORDS.get(name, name) for name in match.group(1).split(" | "))
    return f"expected {wanted}, got {describe(value)}"


def _too_long_words(match: re.Match[str], value: Any) -> str:
    return f"more than {match.group(2)} {'characters' if match.group(1) == 'str' else 'entries'}"


def _too_short_words(match: re.Match[str], value: Any) -> str:
    return "must not be empty" if match.group(1) == "1" else f"expected at least {match.group(1)} entries"


# msgspec's messages and ours.
MESSAGE_WORDS: tuple[tuple[str, Callable[[re.Match[str], Any], str]], ...] = (
    (TYPE_ERROR_PATTERN, _type_words),
    (BOUND_ERROR_PATTERN, _bound_words),
    (TOO_LONG_PATTERN, _too_long_words),
    (LENGTH_ERROR_PATTERN, _too_short_words),
)


def _problem(message: str, value: Any, at: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value}"
    if message.startswith("Invalid enum value"):
        choices = ", ".join(repr(choice) for choice in _literal_choices(at))
        return f"expected one of {choices}, got {describe(value)}"
    for pattern, words in MESSAGE_WORDS:
        if match := re.match(pattern, message):
            return words(match, value)
    return message[:1].lower() + message[1:]


def _walk(path: str, data: Any, tp: Any) -> tuple[str, Any, Any]:
    """Follow msgspec's path (`$.a.b[0].c[...]`) through `data` and `tp`: the dotted key, the value, its type. A
    mapping's entry (`[...]`) is the first whose value does not convert."""
    key, value = "", data
    for name, index in re.findall(PATH_SEGMENT_PATTERN, path.removeprefix("$")):
        if name:
            tp = _field_type(_member(tp, msgspec.Struct), name)
            key, value = f"{key}.{name}" if key else name, value.get(name) if isinstance(value, dict) else None
        elif index != "...":
            tp, value, key = get_args(_member(tp, list))[0], value[int(index)], f"{key}[{index}]"
        else:
            tp = get_args(_member(tp, dict))[1]
            entry = next(k for k, v in value.items() if not _fits(v, tp))
            key, value = f"{key}.{str(entry)[:KEY_CHARS]}" if key else str(entry)[:KEY_CHARS], value[entry]
    return key, value, tp


def _fits(value: Any, tp: Any) -> bool:
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError:
        return False
    return True


def _members(tp: Any) -> list[Any]:
    """The types a value of `tp` may be (a union's members), each with its Annotated kept."""
    bare = get_args(tp)[0] if get_origin(tp) is Annotated else tp
    if get_origin(bare) in (Union, types.UnionType):
        return [m for a in get_args(bare) for m in _members(a)]
    return [tp]


def _bare(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _member(tp: Any, kind: type) -> Any:
    """The member of `tp` that is a `kind` (a Struct class, list[...] or dict[...]), without Annotated."""
    for member in map(_bare, _members(tp)):
        if (get_origin(member) or member) is kind or isinstance(member, type) and issubclass(member, kind):
            return member
    return Any


def _field_type(struct: Any, name: str) -> Any:
    return next((f.type for f in msgspec.structs.fields(struct) if f.encode_name == name), Any)


def _literal_choices(tp: Any) -> tuple[Any, ...]:
    return next((get_args(m) for m in map(_bare, _members(tp)) if get_origin(m) is Literal), ())


def _description(tp: Any) -> str | None:
    """The description of a Meta on `tp`, or else on the first member of a union that has one."""
    if get_origin(tp) is Annotated:
        meta = next((m for m in get_args(tp)[1:] if isinstance(m, msgspec.Meta) and m.description), None)
        if meta is not None:
            return meta.description
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        return next(filter(None, map(_description, get_args(tp))), None)
    return None


def json_schema(tp: Any, title: str, schema_hook: Callable[[type], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `tp`, for editors (the YAML language server) and other tools."""
    schema = msgspec.json.schema(tp, schema_hook=schema_hook)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **schema}
