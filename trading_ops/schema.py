"""The schema layer: typed structures (msgspec) checked in one call, their errors one line naming the key path."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

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
    choices = _literal_choices(at)
    if choices and (message.startswith("Invalid enum value") or re.match(TYPE_ERROR_PATTERN, message)):
        return f"expected one of {', '.join(map(repr, choices))}, got {describe(value)}"
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


def one_of(choices: Iterable[str]) -> Any:
    """The type of a value that is one of `choices` (a table's keys, say): a Literal, an `enum` in a JSON Schema."""
    return Literal[tuple(choices)]


def duration_type(most: float | None = None, *, positive: bool = False) -> Any:
    """A duration as a JSON Schema says it (parse_duration reads it): seconds, at least 0 (more than 0 if `positive`)
    and at most `most`, or a string like 30s, 1h30m or 2.5s (with a digit other than 0 if `positive`)."""
    from trading_ops.durations import DURATION_PATTERN

    seconds = msgspec.Meta(gt=0, le=most) if positive else msgspec.Meta(ge=0, le=most)
    text = r"^(?=[^1-9]*[1-9])" + DURATION_PATTERN[1:] if positive else DURATION_PATTERN
    return Annotated[
        Annotated[float, seconds] | Annotated[str, msgspec.Meta(pattern=text)],
        msgspec.Meta(description="a duration like 30s, 5m or 1h, or seconds"),
    ]


def json_schema(tp: Any, title: str, schema_hook: Callable[[type], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `tp`, for editors (the YAML language server) and other tools."""
    schema = _tag_choices(msgspec.json.schema(tp, schema_hook=schema_hook))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **schema}


def _tag_choices(node: Any) -> Any:
    """msgspec's tagged unions (anyOf with OpenAPI's `discriminator`) as the tag's choices, then the structure its
    value names (if/then): validators ignore `discriminator`, and of an anyOf they report only that the whole value
    fits none of its members, where this names the key that is wrong (the tag, or a key of its structure)."""
    if isinstance(node, list):
        return [_tag_choices(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _tag_choices(value) for key, value in node.items()}
    tagged = out.get("discriminator")
    if "anyOf" not in out or not isinstance(tagged, dict) or set(tagged) != {"propertyName", "mapping"}:
        return out
    del out["anyOf"], out["discriminator"]
    tag, mapping = tagged["propertyName"], tagged["mapping"]
    choices = [
        {"if": {"properties": {tag: {"const": value}}, "required": [tag]}, "then": {"$ref": ref}}
        for value, ref in mapping.items()
    ]
    return {**out, "type": "object", "required": [tag], "properties": {tag: {"enum": list(mapping)}}, "allOf": choices}


# ---- dataclasses as structures: the configuration's sections ------------------------------------------------------
# A configuration dataclass declares its keys; its msgspec twin (made once, on first use) is what a file is converted
# with in one call (types, ranges, unknown keys refused, finite numbers) and what its JSON Schema is made from. Field
# metadata (trading_ops.config's `secret`, `bounded`, `checked`): `secret` (with `help`) makes the key `x` the keys
# `x_file` and `x_env`; `min`/`max` a numeric range; `check` a function run on the converted value that returns the
# problem or None; `internal` a field the file does not set. After the conversion each section's dataclass is made
# from the keys the file gave, and its `validate(prefix, given)` checks the rules across its keys.

_STRUCTS: dict[type, type[msgspec.Struct]] = {}
_DATACLASSES: dict[type, type] = {}
_ANNOTATIONS: dict[tuple[str, str], Any] = {}


def build(cls: type, data: Any, *, unknown_key: Callable[[type, str], str] = unknown_key_words) -> Any:
    """`data` as the dataclass `cls`; SchemaError names the first key whose type, range or name is wrong, and what
    the checks and `validate` methods raise passes through."""
    return _build(cls, convert(data, struct_of(cls), unknown_key=unknown_key), data, "")


def struct_of(cls: type) -> type[msgspec.Struct]:
    """The msgspec structure of a dataclass (and of the dataclasses it holds): unknown keys refused."""
    if cls not in _STRUCTS:
        fields: list[tuple[str, Any, Any]] = []
        for f in dataclass_fields(cls):
            fields += _struct_fields(f, _annotation(cls, str(f.type)))
        # A dataclass's own docstring, not the signature @dataclass writes when it has none.
        doc = cls.__doc__ if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}(") else None
        struct = msgspec.defstruct(
            cls.__name__,
            fields,
            kw_only=True,
            forbid_unknown_fields=True,
            module=cls.__module__,
            namespace={"__doc__": inspect.cleandoc(doc) if doc else None},
        )
        _STRUCTS[cls], _DATACLASSES[struct] = struct, cls
    return _STRUCTS[cls]


def dataclass_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of a dataclass (or of the dataclass a structure was made from) that a file sets."""
    cls = _DATACLASSES.get(cls, cls)
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]  # type: ignore[arg-type]


def encode_names(struct: type) -> list[str]:
    """The keys a structure takes."""
    return [f.encode_name for f in msgspec.structs.fields(struct)]


def _annotation(cls: type, text: str) -> Any:
    """A field's annotation (a string under `from __future__ import annotations`) as a type, evaluated in its
    module; each distinct one once, not once per field as typing.get_type_hints would (every command loads the
    configuration)."""
    key = (cls.__module__, text)
    if key not in _ANNOTATIONS:
        _ANNOTATIONS[key] = eval(text, vars(sys.modules[cls.__module__]))  # noqa: S307 - the module's own annotations
    return _ANNOTATIONS[key]


def _struct_fields(f: dataclasses.Field[Any], tp: Any) -> list[tuple[str, Any, Any]]:
    """The structure's fields for a dataclass field: itself, or a secret's `_file` and `_env` keys."""
    if f.metadata.get("secret"):
        words = f.metadata.get("help") or f.name
        return [
            (f"{f.name}{suffix}", Annotated[str, msgspec.Meta(min_length=1, description=f"{words}: {where}")], NOT_SET)
            for suffix, where in (("_file", "read from this file"), ("_env", "read from this environment variable"))
        ]
    if f.default is not dataclasses.MISSING:
        default = msgspec.field(default=f.default)
    else:
        default = msgspec.field(default_factory=f.default_factory)  # type: ignore[arg-type]
    return [(f.name, _struct_type(tp, f.metadata), default)]


# A secret's `_file` and `_env` keys when the file gives neither (the schema shows no default).
NOT_SET = msgspec.field(default_factory=str)


def _struct_type(tp: Any, meta: Mapping[str, Any] = types.MappingProxyType({})) -> Any:
    """The structure's type for a dataclass field's type."""
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return struct_of(tp)  # type: ignore[arg-type]
    if origin is list:
        return list[_struct_type(args[0])]  # type: ignore[misc]
    if origin is dict:
        return dict[str, _struct_type(args[1])]  # type: ignore[misc]
    if origin in (Union, types.UnionType):
        return Union[tuple(_struct_type(a, meta) for a in args)]  # noqa: UP007 - built from a tuple
    if tp in (int, float):
        return _bounded(tp, meta)
    return tp


def _bounded(tp: type, meta: Mapping[str, Any]) -> Any:
    """A number's type with its range (`min`, `max`); a float is finite whether or not it has one."""
    low, high = meta.get("min"), meta.get("max")
    if tp is float:
        low = -sys.float_info.max if low is None else low
        high = sys.float_info.max if high is None else high
    return tp if low is None and high is None else Annotated[tp, msgspec.Meta(ge=low, le=high)]


def _build(cls: Any, value: msgspec.Struct, raw: dict[str, Any], prefix: str) -> Any:
    """The dataclass of a converted section: the keys the file gave, their checks, then the section's rules."""
    kwargs: dict[str, Any] = {}
    for f in dataclass_fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        if f.metadata.get("secret"):
            file, env = getattr(value, f"{f.name}_file"), getattr(value, f"{f.name}_env")
            if file and env:
                raise SchemaError(f"{path}_env", f"give only one of {f.name}_file and {f.name}_env")
            if file or env:
                kwargs[f.name] = f"file:{file}" if file else f"env:{env}"
        elif f.name in raw:
            kwargs[f.name] = converted = _instance(getattr(value, f.name), raw[f.name], path)
            check = f.metadata.get("check")
            if check is not None and (problem := check(converted)):
                raise SchemaError(path, problem)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        # Rules that span keys of one section (the section's defaults satisfy them).
        validate(prefix, set(kwargs))
    return obj


def _instance(value: Any, raw: Any, path: str) -> Any:
    """A converted value with its structures made dataclasses (`raw`: what the file gave for it)."""
    if (cls := _DATACLASSES.get(type(value))) is not None:
        return _build(cls, value, raw, path)
    if isinstance(value, list):
        return [_instance(v, raw[i], f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _instance(v, raw[k], f"{path}.{k}") for k, v in value.items()}
    return value
