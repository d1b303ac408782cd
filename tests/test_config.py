"""Configuration: defaults, the committed example, secrets from files or variables, one-line errors, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from trading_ops.cli import main
from trading_ops.config import ConfigError, load_config, parse_config, resolve_secret

ROOT = Path(__file__).resolve().parents[1]


def test_committed_example_is_valid_and_matches_the_defaults() -> None:
    example = load_config(ROOT / "trading-ops.example.yaml")
    defaults = parse_config({})
    assert example.bot.listen.port == defaults.bot.listen.port == 9101
    assert example.paper.symbols == defaults.paper.symbols
    assert example.database.url == defaults.database.url


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("bot:\n  listen:\n    port: abc\n", "bot.listen.port: expected an integer, got 'abc'"),
        ("bot:\n  listen:\n    port: 70000\n", "bot.listen.port: must be at most 65535, got 70000"),
        ("bot:\n  nmae: x\n", "bot.nmae: unknown key"),
        ("paper:\n  reject_probability: 1.5\n", "paper.reject_probability: must be at most 1"),
        ("paper:\n  symbols: BTC-USD\n", "paper.symbols: expected a list"),
        ("logging:\n  level: LOUD\n", "logging.level: expected one of 'DEBUG'"),
        ("bot:\n  control_token: hunter2\n", "bot.control_token: secrets are not written in the file"),
        ("bot: [1, 2]\n", "bot: expected a mapping"),
        ("bot:\n  heartbeat_timeout_seconds: true\n", "expected a number, got True"),
        ("bot: {\n", "at line 2, column 1"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_key(tmp_path, capsys, yaml_text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_named_file_is_exit_2(tmp_path, capsys) -> None:
    assert main(["--config", str(tmp_path / "nope.yaml"), "config", "check"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_secret_from_file_relative_to_the_config(tmp_path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("s3cret\n")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("bot:\n  control_token_file: secrets/token\n")
    config = load_config(cfg_path)
    assert resolve_secret(config, config.bot, "control_token", "bot.control_token") == "s3cret"


def test_secret_from_environment(tmp_path, monkeypatch) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("bot:\n  control_token_env: MY_TOKEN\n")
    monkeypatch.setenv("MY_TOKEN", "from-env")
    config = load_config(cfg_path)
    assert resolve_secret(config, config.bot, "control_token", "bot.control_token") == "from-env"


def test_unreadable_secret_file_names_the_key(tmp_path, capsys) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("bot:\n  control_token_file: /nonexistent/token\n")
    assert main(["--config", str(cfg_path), "config", "check"]) == 2
    assert "bot.control_token_file: cannot read /nonexistent/token" in capsys.readouterr().err


def test_config_check_without_token_fails(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("TRADING_OPS_CONTROL_TOKEN", raising=False)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("{}\n")
    assert main(["--config", str(cfg_path), "config", "check"]) == 2
    assert "bot.control_token: no token" in capsys.readouterr().err


def test_relative_sqlite_path_resolves_against_the_config_file(tmp_path) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("database:\n  url: sqlite:///var/x.db\n")
    assert load_config(cfg_path).database_url() == f"sqlite:///{tmp_path}/var/x.db"


def test_db_upgrade_command(tmp_path, capsys) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("database:\n  url: sqlite:///var/x.db\n")
    assert main(["--config", str(cfg_path), "db", "upgrade"]) == 0
    assert (tmp_path / "var" / "x.db").exists()
    assert main(["--config", str(cfg_path), "db", "check"]) == 0
