"""`trading-ops config schema`: the JSON Schema an editor checks the file with agrees with the loader."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from schema_helpers import key_path, printed_validator, schema_errors

from trading_ops.cli import main
from trading_ops.config import Config, ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {name for name in Config.__dataclass_fields__ if name != "base_dir"}
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)


@pytest.fixture
def validator() -> jsonschema.Draft202012Validator:
    return printed_validator("config")


def as_config(text: str) -> dict[str, Any] | None:
    """`text` as a configuration file the loader accepts (a mapping of known sections), or None."""
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):  # not YAML, or a YAML date that is no date
        return None
    if not isinstance(data, dict) or not data or not set(data) <= SECTIONS:
        return None
    try:
        parse_config(data)
    except ConfigError:
        return None
    return data


def documented_configs() -> list[tuple[str, dict[str, Any]]]:
    """The committed configuration files, the YAML blocks of the docs, and the YAML strings of the tests that the
    loader accepts: every configuration a reader or a test uses."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name in ("trading-ops.example.yaml", "trading-ops.docker.yaml", "trading-ops.systemd.yaml"):
        data = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
        found.append((name, data))
    for page in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]):
        for i, block in enumerate(YAML_BLOCK.findall(page.read_text(encoding="utf-8"))):
            if (data := as_config(block)) is not None:
                found.append((f"{page.name}#{i}", data))
    for module in sorted([*ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/**/*.py")]):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value:
                if (data := as_config(node.value)) is not None:
                    found.append((f"{module.name}:{node.lineno}", data))
    return found


CONFIGS = documented_configs()


def test_the_configurations_found_include_the_docs_and_the_tests() -> None:
    names = [name for name, _ in CONFIGS]
    assert "trading-ops.example.yaml" in names
    assert any(name.endswith(".md#0") or ".md#" in name for name in names), names
    assert sum(name.startswith("test_config.py:") for name in names) >= 10, names


@pytest.mark.parametrize(("name", "data"), CONFIGS, ids=[name for name, _ in CONFIGS])
def test_every_configuration_in_use_validates_against_the_schema(
    validator: jsonschema.Draft202012Validator, name: str, data: dict[str, Any]
) -> None:
    errors = schema_errors(validator, data)
    assert not errors, f"{name}: {errors}"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"bot": {"listen": {"port": "abc"}}}, "bot.listen.port"),
        ({"bot": {"listen": {"port": 70000}}}, "bot.listen.port"),
        ({"bot": {"heartbeat_timeout_seconds": True}}, "bot.heartbeat_timeout_seconds"),
        ({"paper": {"symbols": "BTC-USD"}}, "paper.symbols"),
        ({"paper": {"reject_probability": 1.5}}, "paper.reject_probability"),
        ({"logging": {"level": "LOUD"}}, "logging.level"),
        ({"bot": {"nmae": "x"}}, "bot"),
        ({"bot": {"control_token": "hunter2"}}, "bot"),  # a secret is written as control_token_file/_env
        ({"bot": {"control_token_file": ""}}, "bot.control_token_file"),
        ({"reconciler": {"targets": {"bot-1": {"url": 9101}}}}, "reconciler.targets.bot-1.url"),
        ({"bots": [{"name": "b1", "instance": ["127.0.0.1:9101"]}]}, "bots[0].instance"),
        ({"bots": [{"name": "b1", "venue": {"exchange": "kraken", "orders": "all"}}]}, "bots[0].venue.orders"),
        ({"upkeep": {"cleanup": {"logs": {"max_bytes": -2}}}}, "upkeep.cleanup.logs.max_bytes"),
    ],
)
def test_the_schema_refuses_what_the_loader_refuses_as_a_type_range_or_key(
    validator: jsonschema.Draft202012Validator, data: dict[str, Any], where: str
) -> None:
    errors = list(validator.iter_errors(data))
    assert errors and key_path(errors[0].absolute_path) == where, [e.message for e in errors]
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(where), info.value


def test_config_schema_prints_json_without_reading_the_configuration(tmp_path, capsys) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("bot: {\n")  # does not load: the schema is what helps fix it
    assert main(["--config", str(broken), "config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    bot = schema["$defs"]["BotConfig"]["properties"]
    assert bot["listen"] == {"$ref": "#/$defs/ListenConfig"}
    assert schema["$defs"]["ListenConfig"]["properties"]["port"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 65535,
        "default": 9101,
    }
    assert "control_token" not in bot and {"control_token_file", "control_token_env"} <= set(bot)


def test_config_schema_output_to_an_unwritable_place_is_one_line_exit_2(tmp_path, capsys) -> None:
    assert main(["config", "schema", "--output", str(tmp_path / "no" / "such" / "dir" / "s.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output: cannot write" in err[0], err
