"""Reading a configuration: the YAML loader (duplicate keys refused), the schema check, secrets and tokens resolved, and
the file's JSON Schema."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from trading_ops.config.common import NamedTokenConfig
from trading_ops.config.fields import DEFAULT_CONFIG_PATH, ConfigError, read_secret_file, resolve_paths, state_base
from trading_ops.config.root import Config
from trading_ops.scopes import DESTRUCTIVE, TokenSet


def load_config(path: str | os.PathLike[str] | None, *, must_exist: bool = False) -> Config:
    """Read and validate a YAML configuration file. A missing default file gives the defaults."""
    if path is None:
        path = DEFAULT_CONFIG_PATH
    p = Path(path)
    if not p.exists():
        if must_exist or str(path) != DEFAULT_CONFIG_PATH:
            raise ConfigError("", f"configuration file {p} does not exist")
        return parse_config({}, base_dir=Path.cwd())
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read configuration file {p}: {exc.strerror}") from exc
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError("", f"{p}: {problem}{where}") from exc
    return parse_config({} if data is None else data, base_dir=p.resolve().parent)


def _load_yaml(text: str) -> Any:
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _reject_duplicate_keys(node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _reject_duplicate_keys(node: yaml.Node, path: str, visited: set[int]) -> None:
    if id(node) in visited:  # an alias of a node already checked (or a recursive one)
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            child = path
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                child = f"{path}.{key_node.value}" if path else str(key_node.value)
                line = key_node.start_mark.line + 1
                if key_node.value in first_line:
                    raise ConfigError(
                        child, f"key given twice (lines {first_line[key_node.value]} and {line}); keep one"
                    )
                first_line[key_node.value] = line
            _reject_duplicate_keys(value_node, child, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _reject_duplicate_keys(item, f"{path}[{i}]", visited)


def parse_config(data: Any, *, base_dir: Path | None = None) -> Config:
    """The configuration in `data` (the parsed YAML), checked against its schema (types, ranges, unknown keys), then
    by the `checked` functions and the sections' `validate` rules."""
    # The schema layer (msgspec) is imported by the commands that read a configuration, not by `--help`.
    from trading_ops.schema import SchemaError, build

    try:
        config: Config = build(Config, data, unknown_key=_unknown_key)
    except SchemaError as exc:
        raise ConfigError(exc.key or "(top level)", exc.problem) from None
    config.base_dir = base_dir or Path.cwd()
    config.sections = frozenset(str(k) for k in data) if isinstance(data, dict) else frozenset()
    resolve_paths(config, config.base_dir, state_base(config.base_dir))
    return config


def resolve_secret(config: Config, obj: Any, name: str, key: str) -> str:
    """The value of secret field `name` of section `obj` (`key` is its dotted path, for errors)."""
    value = getattr(obj, name)
    if value.startswith("file:"):
        return read_secret_file(f"{key}_file", str(config.path(value[len("file:") :])))
    if value.startswith("env:"):
        env = value[len("env:") :]
        return os.environ.get(env, "")
    return value


def resolve_tokens(
    config: Config, section: Any, legacy: str, named: str, key: str, legacy_scope: str = DESTRUCTIVE
) -> TokenSet:
    """The tokens an API accepts: the single older one (`section.<legacy>`, every right of the API unless
    `legacy_scope` says less) when it is set, and each of the named ones (`section.<named>`), their files read now.
    Two tokens with one value are a configuration error: a request must name exactly one caller."""
    tokens: list[NamedTokenConfig] = getattr(section, named)
    values = [resolve_secret(config, t, "token", f"{key}.{named}[{i}].token") for i, t in enumerate(tokens)]
    single = resolve_secret(config, section, legacy, f"{key}.{legacy}")
    for i, value in enumerate(values):
        if not value:
            raise ConfigError(f"{key}.{named}[{i}].token", f"the token of {tokens[i].name!r} is empty")
    try:
        return TokenSet(
            [(t.name, t.scope, v) for t, v in zip(tokens, values, strict=True)],
            legacy=(legacy, legacy_scope, single) if single else None,
        )
    except ValueError as exc:
        raise ConfigError(f"{key}.{named}", str(exc)) from exc


def _unknown_key(struct: type, name: str) -> str:
    """The message for a key a section does not have: a secret written in the file, or an unknown one."""
    from trading_ops.schema import dataclass_fields, encode_names

    if name in [f.name for f in dataclass_fields(struct) if f.metadata.get("secret")]:
        return f"secrets are not written in the file; use {name}_file or {name}_env"
    return f"unknown key (known keys: {', '.join(sorted(encode_names(struct)))})"


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file (`trading-ops config schema`)."""
    from trading_ops.schema import json_schema, struct_of

    return json_schema(struct_of(Config), "trading-ops configuration")
