"""The JSON Schemas `trading-ops config schema` and `playbook schema` print, read back as a validator, and what it
says of a document, with its keys named as the loaders name them."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import jsonschema

from trading_ops.cli import main


@functools.cache
def printed_validator(command: str) -> jsonschema.Draft202012Validator:
    """The schema `trading-ops COMMAND schema` prints, read back from a file it wrote (`--output`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "schema.json"
        assert main([command, "schema", "--output", str(out)]) == 0
        schema = json.loads(out.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def key_path(path: Any) -> str:
    """jsonschema's path of an error as the loaders name keys: bots[0].instance, rules[0].steps[1].command."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def schema_errors(validator: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    """Every error the schema finds in `data`, as `key path: message`."""
    return [f"{key_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]


def first_error_at(validator: jsonschema.Draft202012Validator, data: Any) -> str | None:
    """The key path of the schema's most relevant error about `data`, None when it accepts it."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    return None if error is None else key_path(error.absolute_path)
