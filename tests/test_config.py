"""Configuration: defaults, the committed example, secrets from files or variables, one-line errors, exit 2."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from secret_file import write_secret
from sqlalchemy.engine import make_url
from system_binaries import run_binary

from trading_ops.cli import main
from trading_ops.config import (
    SQLITE_FILE_URL,
    ConfigError,
    bot_order_id_prefix,
    load_config,
    order_id_prefix,
    parse_config,
    resolve_secret,
    sqlite_file,
)

ROOT = Path(__file__).resolve().parents[1]


def test_committed_example_is_valid_and_matches_the_defaults() -> None:
    example = load_config(ROOT / "trading-ops.example.yaml")
    defaults = parse_config({})
    assert example.bot.listen.port == defaults.bot.listen.port == 9101
    assert example.paper.symbols == defaults.paper.symbols
    assert example.database.url == defaults.database.url


def assert_one_line_naming_the_key(tmp_path, capsys, yaml_text: str, message: str) -> None:
    """Loading fails naming the problem, and `config check` prints exactly that one line and exits 2."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


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
        (
            "bot:\n  resources:\n    data_dir_budget_bytes: -1\n",
            "bot.resources.data_dir_budget_bytes: must be at least 0",
        ),
        (
            "bot:\n  memory_limit_bytes: 1000\n  resources:\n    memory_budget_bytes: 2000\n",
            "bot.resources.memory_budget_bytes: 2000 is more than bot.memory_limit_bytes (1000)",
        ),
    ],
)
def test_bad_configuration_is_one_line_naming_the_key(tmp_path, capsys, yaml_text: str, message: str) -> None:
    assert_one_line_naming_the_key(tmp_path, capsys, yaml_text, message)


def test_missing_named_file_is_exit_2(tmp_path, capsys) -> None:
    assert main(["--config", str(tmp_path / "nope.yaml"), "config", "check"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_secret_from_file_relative_to_the_config(tmp_path) -> None:
    (tmp_path / "secrets").mkdir()
    write_secret(tmp_path / "secrets" / "token", "s3cret\n")
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


@pytest.mark.parametrize("env_value", ["a-token-from-the-environment", None])
def test_default_token_variable_applies_without_a_bot_section(tmp_path, capsys, monkeypatch, env_value) -> None:
    """`{}` (no bot: section) still reads TRADING_OPS_CONTROL_TOKEN: set, the check passes; unset, it fails."""
    if env_value is None:
        monkeypatch.delenv("TRADING_OPS_CONTROL_TOKEN", raising=False)
    else:
        monkeypatch.setenv("TRADING_OPS_CONTROL_TOKEN", env_value)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("{}\n")
    code = main(["--config", str(cfg_path), "config", "check"])
    captured = capsys.readouterr()
    if env_value is None:
        assert code == 2 and "bot.control_token: no token" in captured.err
    else:
        assert code == 0 and "configuration ok" in captured.out
        config = load_config(cfg_path)
        assert resolve_secret(config, config.bot, "control_token", "bot.control_token") == env_value


def test_default_token_variable_applies_without_any_config_file(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no trading-ops.yaml here: the defaults
    monkeypatch.delenv("TRADING_OPS_CONTROL_TOKEN", raising=False)
    assert main(["config", "check"]) == 2
    assert "bot.control_token: no token" in capsys.readouterr().err
    monkeypatch.setenv("TRADING_OPS_CONTROL_TOKEN", CONTROL_TOKEN)
    assert main(["config", "check"]) == 0
    assert "configuration ok for bot (defaults: no --config and no ./trading-ops.yaml)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("section", "name", "variable"),
    [
        ("bot", "control_token", "TRADING_OPS_CONTROL_TOKEN"),
        ("reconciler", "token", "TRADING_OPS_RECONCILER_TOKEN"),
        ("notifications", "urls", "TRADING_OPS_APPRISE_URLS"),
    ],
)
def test_every_secret_defaults_to_its_variable_without_its_section(monkeypatch, section, name, variable) -> None:
    config = parse_config({})
    monkeypatch.delenv(variable, raising=False)
    assert resolve_secret(config, getattr(config, section), name, f"{section}.{name}") == ""
    monkeypatch.setenv(variable, "value-from-env")
    assert resolve_secret(config, getattr(config, section), name, f"{section}.{name}") == "value-from-env"


def test_reconciler_target_token_defaults_to_the_control_token_variable(monkeypatch) -> None:
    monkeypatch.setenv("TRADING_OPS_CONTROL_TOKEN", "bot-token")
    config = parse_config({"reconciler": {"targets": {"bot:9101": {"url": "http://bot:9101"}}}})
    target = config.reconciler.targets["bot:9101"]
    assert resolve_secret(config, target, "token", "reconciler.targets.bot:9101.token") == "bot-token"


def test_relative_sqlite_path_resolves_against_the_config_file(tmp_path) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("database:\n  url: sqlite:///var/x.db\n")
    assert load_config(cfg_path).database_url() == f"sqlite:///{tmp_path}/var/x.db"


def test_relative_paths_are_resolved_against_the_config_file_when_it_loads(tmp_path) -> None:
    """Every path key (field metadata `path`) holds an absolute path once loaded, in sections of lists and dicts too;
    an absolute path, `~`, an empty key (not configured) and a `{data_dir}` template are kept as they mean."""
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "bot": {"data_dir": "./data", "listen": {"web_config_file": "web.yml"}},
                "backup": {"directory": "/srv/backups", "copy_to": "~/copies", "pitr": {"repo_path": "repo"}},
                "reconciler": {"tls": {"ca_file": "tls/ca.pem"}},
                "gateway": {"state_file": "gw.json", "accounts": [{"name": "sub", "state_file": "sub.json"}]},
                "upkeep": {"cleanup": {"logs": {"path": "{data_dir}/log"}, "other": {"path": "scratch"}}},
            }
        )
    )
    config = load_config(cfg_path)
    assert config.bot.data_dir == str(tmp_path / "data")
    assert config.bot.listen.web_config_file == str(tmp_path / "web.yml")
    assert config.backup.directory == "/srv/backups"
    assert config.backup.copy_to == str(Path.home() / "copies")
    assert config.backup.pitr.repo_path == str(tmp_path / "repo")
    assert config.backup.pitr.wal_state_file == ""
    assert config.reconciler.tls.ca_file == str(tmp_path / "tls" / "ca.pem")
    assert config.reconciler.spool_dir == str(tmp_path / "var" / "reconciler-spool")  # a default is resolved too
    assert config.gateway.state_file == str(tmp_path / "gw.json")
    assert config.gateway.accounts[0].state_file == str(tmp_path / "sub.json")
    assert config.upkeep.cleanup["logs"].path == "{data_dir}/log"
    assert config.upkeep.cleanup["other"].path == str(tmp_path / "scratch")


def test_under_systemd_what_is_written_resolves_in_the_units_state_directory(tmp_path, monkeypatch) -> None:
    """A unit with StateDirectory= (systemd sets $STATE_DIRECTORY) reads its configuration from read-only /etc: the
    default SQLite database, bot.data_dir, the reconciler's spool and the backups resolve in the state directory (a
    default database beside /etc/trading-ops/bots/eth-mm.yaml was `Read-only file system: '/etc/trading-ops/bots/
    var'`); what is read (a web configuration, a secret file) still resolves beside the configuration."""
    etc, state = tmp_path / "etc", tmp_path / "var-lib-trading-ops-bots-eth-mm"
    etc.mkdir()
    cfg_path = etc / "eth-mm.yaml"
    cfg_path.write_text(yaml.safe_dump({"bot": {"listen": {"web_config_file": "web.yml"}}}))
    monkeypatch.setenv("STATE_DIRECTORY", f"{state}:{tmp_path / 'another'}")
    config = load_config(cfg_path)
    assert config.database_url() == f"sqlite:///{state}/var/trading-ops.db"
    assert config.bot.data_dir == str(state / "var")
    assert config.reconciler.spool_dir == str(state / "var" / "reconciler-spool")
    assert config.backup.directory == str(state / "var" / "backups")
    assert config.bot.listen.web_config_file == str(etc / "web.yml")
    cfg_path.write_text("database:\n  url: sqlite:////srv/journal.db\n")
    assert load_config(cfg_path).database_url() == "sqlite:////srv/journal.db"  # an absolute path as it is
    monkeypatch.delenv("STATE_DIRECTORY")
    cfg_path.write_text("{}\n")
    assert load_config(cfg_path).database_url() == f"sqlite:///{etc}/var/trading-ops.db"  # outside systemd: as before


def test_db_upgrade_command(tmp_path, capsys) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("database:\n  url: sqlite:///var/x.db\n")
    assert main(["--config", str(cfg_path), "db", "upgrade"]) == 0
    assert (tmp_path / "var" / "x.db").exists()
    assert main(["--config", str(cfg_path), "db", "check"]) == 0


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        # Database URLs: parsed, a supported backend, and no password in the file.
        ("database:\n  url: garbage\n", "database.url: not a database URL"),
        ("database:\n  url: mysql://trading@db/trading\n", "database.url: unsupported database 'mysql'"),
        ("database:\n  url: postgresql+psycopg2://t@db/t\n", "database.url: unsupported database"),
        ("database:\n  url: postgres://trading@db/trading\n", "database.url: write postgresql://"),
        (
            "database:\n  url: postgresql+psycopg://trading:hunter2@db/trading\n",
            "database.url: the URL carries a password; secrets are not written in the file: give url_file or url_env",
        ),
        ("database:\n  url: sqlite:///x.db\n  url_env: DB\n", "database.url_env: give only one of url, url_file"),
        # Paper symbols: BASE-QUOTE in capitals, at least one, unique, quoted in quote_asset.
        ("paper:\n  symbols: []\n", "paper.symbols: must list at least one symbol"),
        ("paper:\n  symbols: [BTC-USD, ETH-USD, BTC-USD]\n", "paper.symbols[2]: BTC-USD is listed twice"),
        ("paper:\n  symbols: [BTCUSD]\n", "paper.symbols[0]: expected BASE-QUOTE in capitals such as BTC-USD"),
        ("paper:\n  symbols: [btc-usd]\n", "paper.symbols[0]: expected BASE-QUOTE"),
        ("paper:\n  symbols: [BTC-EUR]\n", "paper.symbols[0]: BTC-EUR is quoted in EUR, but paper.quote_asset is USD"),
        ("paper:\n  quote_asset: usd\n", "paper.quote_asset: expected an asset in capitals"),
        # Numbers must be finite (NaN compares false with every bound, so the range checks alone let it in).
        ("paper:\n  volatility: .nan\n", "paper.volatility: expected a finite number, got nan"),
        (
            "bot:\n  heartbeat_timeout_seconds: .inf\n",
            "bot.heartbeat_timeout_seconds: expected a finite number, got inf",
        ),
        ("paper:\n  starting_balance: -.inf\n", "paper.starting_balance: expected a finite number, got -inf"),
        (
            "paper:\n  order_notional: 20000\n",
            "paper.order_notional: 20000 is more than paper.max_position_notional (10000)",
        ),
        # Names that become label values and file names.
        ("bot:\n  venue: ''\n", "bot.venue: expected a name"),
        ("bot:\n  name: ''\n", "bot.name: expected a name"),
        ("bot:\n  name: ../../etc/cron.d/x\n", "bot.name: expected a name"),
        ("bot:\n  strategy: two words\n", "bot.strategy: expected a name"),
        ("bot:\n  data_dir: ''\n", "bot.data_dir: must not be empty"),
        # Listen addresses and URLs.
        ("bot:\n  listen:\n    host: ''\n", "bot.listen.host: expected an IP address or a host name"),
        ("bot:\n  listen:\n    host: 999.1.1.1\n", "bot.listen.host: expected an IP address or a host name"),
        ("bot:\n  listen:\n    host: http://0.0.0.0\n", "bot.listen.host: expected an IP address or a host name"),
        ("reconciler:\n  listen:\n    host: '[::1]'\n", "reconciler.listen.host: expected an IP address"),
        (
            "reconciler:\n  prometheus_url: localhost:9090\n",
            "reconciler.prometheus_url: expected an http:// or https://",
        ),
        ("reconciler:\n  prometheus_url: ftp://prom:9090\n", "reconciler.prometheus_url: expected an http://"),
        ("reconciler:\n  alertmanager_url: http://am:99999\n", "reconciler.alertmanager_url: not a valid URL"),
        ("reconciler:\n  alertmanager_url: 'http://'\n", "reconciler.alertmanager_url: expected an http://"),
        (
            "reconciler:\n  alertmanager_url: http://a:pw@am:9093\n",
            "reconciler.alertmanager_url: the URL carries a password",
        ),
        ("reconciler:\n  prometheus_url: http://p:9090/?x=1\n", "reconciler.prometheus_url: expected a base URL"),
        (
            "reconciler:\n  targets:\n    bot-1:\n      url: 127.0.0.1:9101\n",
            "reconciler.targets.bot-1.url: expected an http:// or https:// URL",
        ),
        ("reconciler:\n  label_value_pattern: '^[a-z'\n", "reconciler.label_value_pattern: invalid regular expression"),
        ("reconciler:\n  systemctl: []\n", "reconciler.systemctl: expected a non-empty list"),
        ("reconciler:\n  watchdog:\n    alertname: ''\n", "reconciler.watchdog.alertname: must not be empty"),
        # A key given twice: PyYAML would silently keep the last one.
        ("bot:\n  listen:\n    port: 9101\n    port: 9102\n", "bot.listen.port: key given twice (lines 3 and 4)"),
        ("bot: {}\npaper: {}\nbot: {name: x}\n", "bot: key given twice (lines 1 and 3)"),
    ],
)
def test_wrong_values_are_one_line_naming_the_key_exit_2(
    tmp_path, capsys, monkeypatch, yaml_text: str, message: str
) -> None:
    monkeypatch.setenv("TRADING_OPS_CONTROL_TOKEN", CONTROL_TOKEN)  # only the value under test is wrong
    assert_one_line_naming_the_key(tmp_path, capsys, yaml_text, message)


@pytest.mark.parametrize(
    "yaml_text",
    [
        "bot:\n  listen:\n    host: 0.0.0.0\n",
        "bot:\n  listen:\n    host: '::1'\n",
        "bot:\n  listen:\n    host: localhost\n",
        "reconciler:\n  listen:\n    host: paper-bot.internal\n",
        "reconciler:\n  prometheus_url: https://prometheus.example.com/prometheus\n",
        "reconciler:\n  targets:\n    'paper-bot:9101':\n      url: http://paper-bot:9101\n",
        "paper:\n  symbols: [DOGE-EUR]\n  quote_asset: EUR\n",
        "paper:\n  order_notional: 10000\n",
        "database:\n  url: sqlite:////tmp/abs.db\n",
        "database:\n  url: postgresql+psycopg://trading@127.0.0.1:5432/trading\n",
        "database:\n  url: postgresql:///trading\n",  # the local server over its Unix socket
        "bot:\n  name: paper-2\n  venue: binance.us\n  strategy: mean_reversion\n",
    ],
)
def test_good_values_pass_config_check(tmp_path, monkeypatch, yaml_text: str) -> None:
    monkeypatch.setenv("TRADING_OPS_CONTROL_TOKEN", CONTROL_TOKEN)
    monkeypatch.setenv("TRADING_OPS_RECONCILER_TOKEN", "reconciler-token-of-the-config-tests")
    path = tmp_path / "good.yaml"
    path.write_text(yaml_text)
    assert main(["--config", str(path), "config", "check"]) == 0


# Paths of any text, and of the characters URL syntax gives a meaning to (%-escapes, query, user@, host:port).
URL_PATHS = st.text() | st.text(st.sampled_from("%?=&:/@[]#.\naF0149"))


@settings(max_examples=500)
@given(driver=st.sampled_from(["sqlite", "sqlite+pysqlite"]), path=URL_PATHS)
def test_an_sqlite_url_is_read_without_sqlalchemy_as_sqlalchemy_reads_it(driver: str, path: str) -> None:
    """sqlite:///PATH (the default, what `up` writes) is read without importing SQLAlchemy, which would cost every
    command that loads the configuration ~0.1 s: accepted exactly when SQLAlchemy's make_url reads it as a supported
    driver without password, and the database file (which cleanup never deletes) is the one make_url names."""
    url = f"{driver}:///{path}"
    parsed = make_url(url)
    named = parsed.database if parsed.get_backend_name() == "sqlite" else None
    assert sqlite_file(url) == (named if named and named != ":memory:" else None)
    if SQLITE_FILE_URL.fullmatch(url):  # accepted as it is: what the make_url check finds
        assert parsed.drivername == driver and parsed.password is None
        assert parse_config({"database": {"url": url}}).database.url == url


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mysql://trading:pw@db/trading", "database.url_env: unsupported database 'mysql'"),
        ("not a url", "database.url_env: not a database URL"),
        ("", "database.url_env: environment variable DB_URL is not set"),
    ],
)
def test_database_url_from_the_environment_is_validated(tmp_path, capsys, monkeypatch, value, message) -> None:
    monkeypatch.setenv("TRADING_OPS_CONTROL_TOKEN", CONTROL_TOKEN)
    monkeypatch.setenv("DB_URL", value)
    path = tmp_path / "c.yaml"
    path.write_text("database:\n  url_env: DB_URL\n")
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_database_url_from_a_file_may_carry_a_password_and_bare_postgresql_means_psycopg3(tmp_path) -> None:
    (tmp_path / "db-url").write_text("postgresql://trading:s3cret@db:5432/trading\n")
    path = tmp_path / "c.yaml"
    path.write_text("database:\n  url_file: db-url\n")
    config = load_config(path)
    # psycopg2 is not a dependency: a bare postgresql:// URL (as many tools print them) runs on psycopg 3.
    assert config.database_url() == "postgresql+psycopg://trading:s3cret@db:5432/trading"


def test_config_targets_writes_the_file_sd_of_the_bots_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`config targets`: one file_sd target group per entry of bots:, else the bot.listen address; bad input is one
    line and exit 2."""
    path = tmp_path / "trading-ops.yaml"
    bots = [
        {"name": "a", "instance": "bot-a:9101", "url": "http://bot-a:9101", "token_file": "a"},
        {"name": "b", "kind": "mine", "instance": "bot-b:9101", "url": "http://bot-b:9101", "token_file": "b"},
    ]
    path.write_text(yaml.safe_dump({"bots": bots}))
    out = tmp_path / "tradingbot.yml"
    assert main(["--config", str(path), "config", "targets", "-o", str(out)]) == 0
    assert [g["targets"] for g in yaml.safe_load(out.read_text())] == [["bot-a:9101"], ["bot-b:9101"]]
    config = load_config(path)
    assert {k: v.url for k, v in config.reconciler.targets.items()} == {
        "bot-a:9101": "http://bot-a:9101",
        "bot-b:9101": "http://bot-b:9101",
    }
    path.write_text("bot:\n  listen:\n    port: 9200\n")
    assert main(["--config", str(path), "config", "targets"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == [{"targets": ["127.0.0.1:9200"]}]
    path.write_text(yaml.safe_dump({"bots": [*bots, {**bots[0], "instance": "bot-c:1"}]}))
    assert main(["--config", str(path), "config", "targets"]) == 2
    assert capsys.readouterr().err.strip().endswith("bots[2].name: a is listed twice")


def test_each_bot_has_its_own_unit_and_container_for_the_restart_steps() -> None:
    config = parse_config(
        {
            "bots": [
                {"name": "paper-1", "kind": "paper", "instance": "127.0.0.1:9101", "url": "http://127.0.0.1:9101"},
                {"name": "eth-mm", "kind": "ccxt", "instance": "127.0.0.1:9111", "url": "http://127.0.0.1:9111"},
                {
                    "name": "own",
                    "kind": "ccxt",
                    "instance": "127.0.0.1:9121",
                    "url": "http://127.0.0.1:9121",
                    "unit": "my-bot.service",
                    "container": "my-bot",
                },
            ]
        }
    )
    targets = config.reconciler.targets
    assert (targets["127.0.0.1:9101"].unit, targets["127.0.0.1:9101"].container) == (
        "trading-ops-paper-bot.service",
        "trading-ops-paper-bot",
    )
    assert (targets["127.0.0.1:9111"].unit, targets["127.0.0.1:9111"].container) == (
        "trading-ops-bot@eth-mm.service",
        "trading-ops-eth-mm",
    )
    assert (targets["127.0.0.1:9121"].unit, targets["127.0.0.1:9121"].container) == ("my-bot.service", "my-bot")


@pytest.mark.parametrize(("key", "value"), [("unit", "x; reboot"), ("container", "../etc")])
def test_a_bot_unit_or_container_that_is_no_name_is_a_config_error(key: str, value: str) -> None:
    entry = {"name": "b", "instance": "127.0.0.1:9101", "url": "http://127.0.0.1:9101", key: value}
    with pytest.raises(ConfigError, match=f"bots\\[0\\].{key}"):
        parse_config({"bots": [entry]})


def test_config_targets_puts_freqtrade_sidecars_in_their_own_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bot of kind freqtrade is a sidecar's target: scraped in the freqtrade job (never in tradingbot's too), acted
    on by the reconciler like any bot. Without bots:, the freqtrade job's targets are the sidecar's listen ports."""
    path = tmp_path / "trading-ops.yaml"
    bots = [
        {"name": "a", "instance": "bot-a:9101", "url": "http://bot-a:9101", "token_file": "a"},
        {"name": "ft", "kind": "freqtrade", "instance": "side:9103", "url": "http://side:9103", "token_file": "t"},
    ]
    path.write_text(yaml.safe_dump({"bots": bots}))
    assert main(["--config", str(path), "config", "targets"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == [{"targets": ["bot-a:9101"]}]
    assert main(["--config", str(path), "config", "targets", "--job", "freqtrade"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == [{"targets": ["side:9103"]}]
    assert "config targets --job freqtrade" in out and "the `freqtrade` job" in out
    assert sorted(load_config(path).reconciler.targets) == ["bot-a:9101", "side:9103"]
    (tmp_path / "pw").write_text("x")
    target = {"password_file": "pw", "listen": {"host": "127.0.0.1", "port": 9104}}
    path.write_text(yaml.safe_dump({"freqtrade": {"targets": {"ft": target}}}))
    assert main(["--config", str(path), "config", "targets", "--job", "freqtrade"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == [{"targets": ["127.0.0.1:9104"]}]
    path.write_text(yaml.safe_dump({"bots": bots[:1]}))
    assert main(["--config", str(path), "config", "targets", "--job", "freqtrade"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == []  # no freqtrade: nothing to scrape
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(path), "config", "targets", "--job", "nope"])
    assert exited.value.code == 2


def test_a_bot_a_freqtrade_target_watches_is_of_kind_freqtrade_unless_the_file_says_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `bots:` entry named as a freqtrade target of the same file (its `bot`, else its name) is that freqtrade: of
    kind freqtrade when `kind` is left out (its unit, its container, its scrape job, its venue step's orders and its
    readiness are freqtrade's); another kind given is refused in one line, exit 2."""
    (tmp_path / "pw").write_text("x")
    targets = {
        "ft": {"password_file": "pw", "listen": {"host": "127.0.0.1", "port": 9103}},
        "other": {"password_file": "pw", "listen": {"host": "127.0.0.1", "port": 9104}, "bot": "ft-2"},
    }
    bots = [
        {"name": "a", "instance": "bot-a:9101", "url": "http://bot-a:9101", "token_file": "a"},
        {"name": "ft", "instance": "127.0.0.1:9103", "url": "http://127.0.0.1:9103", "token_file": "t"},
        {"name": "ft-2", "instance": "127.0.0.1:9104", "url": "http://127.0.0.1:9104", "token_file": "t"},
    ]
    config = parse_config({"bots": bots, "freqtrade": {"targets": targets}}, base_dir=tmp_path)
    assert [(b.name, b.kind) for b in config.bots] == [("a", "paper"), ("ft", "freqtrade"), ("ft-2", "freqtrade")]
    assert config.bots[1].systemd_unit == "trading-ops-freqtrade.service"
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump({"bots": bots, "freqtrade": {"targets": targets}}))
    assert main(["--config", str(path), "config", "targets", "--job", "freqtrade"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == [{"targets": ["127.0.0.1:9103"]}, {"targets": ["127.0.0.1:9104"]}]

    venue = {"exchange": "kraken", "api_key_file": "k", "api_secret_file": "s", "symbols": ["BTC-USD"]}
    with pytest.raises(ConfigError, match=r"bots\[1\]\.venue\.orders: must be account for a bot of kind freqtrade"):
        parse_config({"bots": [bots[0], {**bots[1], "venue": venue}], "freqtrade": {"targets": targets}})
    path.write_text(
        yaml.safe_dump({"bots": [bots[0], {**bots[1], "kind": "paper"}], "freqtrade": {"targets": targets}})
    )
    assert main(["--config", str(path), "config", "check"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert said == [
        "trading-ops: config: bots[1].kind: paper, but freqtrade.targets.ft watches ft: it is of kind freqtrade"
    ]


# -- named tokens with scopes ---------------------------------------------------------------------------------------


# A token `config check` takes (16 characters at least: trading_ops.commands.config_cmd.MIN_TOKEN_CHARS).
CONTROL_TOKEN = "control-token-of-the-config-tests"


def write_tokens(tmp_path: Path, **tokens: str) -> None:
    for name, value in tokens.items():
        write_secret(tmp_path / name, value + "\n")


NAMED = "    - {name: oncall, scope: read, token_file: t-read}\n    - {name: rec, scope: operate, token_file: t-op}\n"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "bot:\n  control_tokens:\n" + NAMED + "    - {name: oncall, scope: destructive, token_file: t-de}\n",
            "bot.control_tokens[2].name: 'oncall' is given twice; names tell the tokens apart",
        ),
        (
            "bot:\n  control_tokens:\n    - {name: x, scope: admin, token_file: t-read}\n",
            "bot.control_tokens[0].scope: expected one of 'read', 'operate', 'destructive', 'approve', got 'admin'",
        ),
        (
            "bot:\n  control_tokens:\n    - {name: x, scope: read, token_file: /nonexistent/t}\n",
            "bot.control_tokens[0].token_file: cannot read /nonexistent/t: No such file or directory",
        ),
        (
            "bot:\n  control_tokens:\n    - {name: x, scope: read, token: hunter2}\n",
            "bot.control_tokens[0].token: secrets are not written in the file; use token_file or token_env",
        ),
        (
            "bot:\n  control_tokens:\n    - {name: x, scope: read}\n",
            "bot.control_tokens[0].token_file: missing: each token's secret is read from token_file (or token_env)",
        ),
        (
            "bot:\n  control_tokens:\n    - {name: x, token_file: t-read}\n",
            "bot.control_tokens[0].scope: missing (each token has a name and a scope",
        ),
        (
            "bot:\n  control_tokens:\n    - {scope: read, token_file: t-read}\n",
            "bot.control_tokens[0].name: missing",
        ),
        (
            "bot:\n  control_tokens:\n    - {name: risk, scope: read, token_file: t-read}\n",
            "bot.control_tokens[0].name: 'risk' is reserved",
        ),
        (
            "bot:\n  control_tokens:\n    - {name: control_token, scope: read, token_file: t-read}\n",
            "bot.control_tokens[0].name: 'control_token' is the name of the single token",
        ),
        (
            "bot:\n  control_tokens:\n    - {name: 'a b', scope: read, token_file: t-read}\n",
            "bot.control_tokens[0].name: expected a name",
        ),
        (
            "bot:\n  control_tokens:\n" + NAMED + "    - {name: again, scope: destructive, token_file: t-op}\n",
            "bot.control_tokens: tokens 'rec' and 'again' have the same value; give each its own",
        ),
        (
            "bot:\n  control_token_file: t-op\n  control_tokens:\n" + NAMED,
            "bot.control_tokens: tokens 'control_token' and 'rec' have the same value",
        ),
        (
            "freqtrade:\n  control_tokens:\n" + NAMED + "    - {name: rec, scope: read, token_file: t-de}\n",
            "freqtrade.control_tokens[2].name: 'rec' is given twice",
        ),
        (
            "reconciler:\n  api_tokens:\n    - {name: read_token, scope: read, token_file: t-read}\n",
            "reconciler.api_tokens[0].name: 'read_token' is the name of the single token",
        ),
        (
            "reconciler:\n  api_tokens:\n    - {name: a, scope: approve, token_file: /nonexistent/a}\n",
            "reconciler.api_tokens[0].token_file: cannot read /nonexistent/a",
        ),
        (
            "bots:\n  - {name: b1, destructive_token_file: /nonexistent/d}\n",
            "reconciler.targets.127.0.0.1:9101.destructive_token_file: cannot read /nonexistent/d",
        ),
    ],
)
def test_token_configuration_errors_are_one_line_exit_2(
    tmp_path, capsys, monkeypatch, yaml_text: str, message: str
) -> None:
    monkeypatch.setenv("TRADING_OPS_CONTROL_TOKEN", CONTROL_TOKEN)
    write_tokens(tmp_path, **{"t-read": "r" * 16, "t-op": "o" * 16, "t-de": "d" * 16})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_named_tokens_alone_pass_config_check_without_the_single_token(tmp_path, capsys, monkeypatch) -> None:
    from trading_ops.bot.runtime import control_tokens

    monkeypatch.delenv("TRADING_OPS_CONTROL_TOKEN", raising=False)
    write_tokens(tmp_path, **{"t-read": "r" * 16, "t-op": "o" * 16})
    path = tmp_path / "c.yaml"
    path.write_text("bot:\n  control_tokens:\n" + NAMED)
    assert main(["--config", str(path), "config", "check"]) == 0, capsys.readouterr().err
    tokens = control_tokens(load_config(path))
    assert [(t.name, t.scope, t.legacy) for t in tokens.tokens] == [
        ("oncall", "read", False),
        ("rec", "operate", False),
    ]
    # With the single token too, it is one more token, of every right, named after its key.
    monkeypatch.setenv("TRADING_OPS_CONTROL_TOKEN", "old")
    tokens = control_tokens(load_config(path))
    assert [(t.name, t.scope, t.legacy) for t in tokens.tokens][0] == ("control_token", "destructive", True)


def _fleet(*bots: dict[str, object]) -> str:
    """A `bots:` list of ccxt bots, each with a venue account (the reconciler's key on it) unless it gives its own."""
    entries = []
    for i, extra in enumerate(bots):
        venue = {
            "exchange": "kraken",
            "api_key_file": f"key-{i}",
            "api_secret_file": f"secret-{i}",
            "symbols": ["BTC-USD"],
        }
        venue.update(extra.pop("venue", {}))  # type: ignore[arg-type]
        entries.append({"kind": "ccxt", "instance": f"10.0.0.{i + 1}:9101", "venue": venue, **extra})
    return yaml.safe_dump({"bots": entries})


def test_distinct_bot_names_never_share_an_order_id_prefix(tmp_path: Path) -> None:
    """The default prefix: the name itself up to 16 characters, a longer one its start and a hash of the whole, so
    `kraken-production-1` and `kraken-production-2` (once both `kraken-productio`) are told apart; the reconciler's
    venue step and the bot's runtime derive the same one."""
    one, two = order_id_prefix("kraken-production-1"), order_id_prefix("kraken-production-2")
    assert one != two and len(one) == len(two) == 16 and one.startswith("kraken-")
    assert order_id_prefix("kraken-1") == "kraken-1"
    path = tmp_path / "fleet.yaml"
    path.write_text(_fleet({"name": "kraken-production-1"}, {"name": "kraken-production-2"}))
    config = load_config(path)
    prefixes = [t.venue.order_id_prefix for t in config.reconciler.targets.values()]
    assert prefixes == [one, two]
    config.bot.name = "kraken-production-2"  # the bot this file would run: the prefix its runtime gives its orders
    assert bot_order_id_prefix(config) == two


@pytest.mark.parametrize(
    ("bots", "message"),
    [
        (
            [
                {"name": "bot-a", "venue": {"order_id_prefix": "shared"}},
                {"name": "bot-b", "venue": {"order_id_prefix": "shared"}},
            ],
            "bots[1].venue.order_id_prefix: shared is the order-id prefix of bots[0] (bot-a) on kraken too: a venue "
            "step would take both bots' orders (give each bot a prefix of its own)",
        ),
        (
            [{"name": "bot-a"}, {"name": "bot-b", "venue": {"api_key_file": "key-0", "api_secret_file": "secret-0"}}],
            "bots[1].venue: the kraken account of bots[0] (bot-a): one account per bot (a Kraken subaccount each), "
            "the reconciler holding a key of its own on it",
        ),
        (
            [{"name": "bot-a", "venue": {"account": "main"}}, {"name": "bot-b", "venue": {"account": "main"}}],
            "bots[1].venue: the kraken account of bots[0] (bot-a): one account per bot",
        ),
    ],
    ids=["one prefix on a venue", "one reconciler key", "one named account"],
)
def test_two_bots_on_one_account_or_with_one_prefix_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bots: list[dict[str, object]], message: str
) -> None:
    assert_one_line_naming_the_key(tmp_path, capsys, _fleet(*bots), message)


def test_accounts_of_their_own_and_prefixes_of_their_own_are_accepted(tmp_path: Path) -> None:
    """Two bots whose names share their first 16 characters, each on an account of its own (named, or reached by a
    key of its own), load; so do two bots with one prefix on different venues (a gateway and the real one)."""
    path = tmp_path / "fleet.yaml"
    path.write_text(
        _fleet(
            {"name": "kraken-production-1", "venue": {"account": "sub-1"}},
            {"name": "kraken-production-2", "venue": {"account": "sub-2"}},
            {"name": "paper-a", "venue": {"order_id_prefix": "x", "urls": {"private": "http://10.0.0.9:9110"}}},
            {"name": "paper-b", "venue": {"order_id_prefix": "x"}},
        )
    )
    assert len(load_config(path).reconciler.targets) == 4


def test_a_freqtrade_bot_with_a_venue_is_refused_unless_its_orders_are_the_accounts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """freqtrade gives its orders no client order id: a freqtrade bot whose venue tells its orders by a prefix (the
    default, said or not) would have its host-down cancel_all cancel none of them and report success. Refused in one
    line naming the key; with `orders: account` it loads, and the reconciler's target carries the setting. A freqtrade
    bot without a venue is not concerned (no venue step can run for it)."""
    message = (
        "bots[0].venue.orders: must be account for a bot of kind freqtrade: freqtrade places its orders with no client "
        "order id, so none carries the bot's prefix and a venue step's cancel_all would cancel none of them"
    )
    for venue in ({}, {"orders": "prefix"}):
        text = _fleet({"name": "freqtrade-1", "kind": "freqtrade", "venue": venue})
        assert_one_line_naming_the_key(tmp_path, capsys, text, message)
    path = tmp_path / "fleet.yaml"
    path.write_text(
        _fleet({"name": "freqtrade-1", "kind": "freqtrade", "venue": {"orders": "account"}}, {"name": "bot-b"})
    )
    targets = load_config(path).reconciler.targets
    assert [t.venue.orders for t in targets.values()] == ["account", "prefix"]
    path.write_text(yaml.safe_dump({"bots": [{"name": "freqtrade-1", "kind": "freqtrade", "instance": "side:9103"}]}))
    assert load_config(path).reconciler.targets["side:9103"].venue.exchange == ""


# -- `config check` agrees with each service --------------------------------------------------------------------------


GATEWAY_ONLY = "gateway:\n  api_key_file: k\n  api_secret_file: s\n  control_token_file: c\n"
RECONCILER_ONLY = "reconciler:\n  token_file: w\n  read_token_file: r\nbots:\n  - {name: b1, token_file: c}\n"


def check_file(tmp_path: Path, text: str, *options: str) -> tuple[int, str, str]:
    """`config check` of a file holding `text`, its secret files beside it, no token in the environment."""
    write_tokens(tmp_path, k="gateway-api-key-0001", s="c2VjcmV0LW9mLXRoZS1nYXRld2F5", c=CONTROL_TOKEN)
    write_tokens(tmp_path, w="webhook-token-of-the-tests", r="read-token-of-the-tests-01")
    path = tmp_path / "service.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "trading_ops", "--config", str(path), "config", "check", *options],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("TRADING_OPS_")},
    )
    return result.returncode, result.stdout.strip(), result.stderr.strip()


@pytest.mark.parametrize(
    ("text", "services"),
    [
        (GATEWAY_ONLY, "gateway"),
        (RECONCILER_ONLY, "reconciler"),
        (GATEWAY_ONLY + RECONCILER_ONLY, "reconciler"),
    ],
    ids=["gateway", "reconciler", "both"],
)
def test_a_file_for_one_service_passes_without_the_others_secrets(tmp_path: Path, text: str, services: str) -> None:
    """A gateway's or a reconciler's own file (no bot token: it runs no bot) passes, as the service runs it; a file
    for the reconciler that also has a gateway section is the reconciler's (`--service gateway` checks the rest)."""
    status, out, err = check_file(tmp_path, text)
    assert (status, err) == (0, ""), err
    assert out.startswith(f"configuration ok for {services} (")


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        (GATEWAY_ONLY, ("--service", "bot"), "bot.control_token: no token"),  # the reverse: not a bot's file
        (RECONCILER_ONLY.replace("  token_file: w\n", ""), (), "reconciler.token: no webhook token"),
        (GATEWAY_ONLY.replace("  control_token_file: c\n", ""), (), "gateway.control_token"),
        ("reconciler:\n  token_file: w\n  playbook: /nonexistent/playbook.yml\n", (), "reconciler.playbook: "),
        ("bot:\n  name: b1\n", (), "bot.control_token: no token"),
        ("database:\n  url: sqlite:////tmp/x.db\n", (), "bot.control_token: no token"),  # no service: a bot's
    ],
    ids=["asked-for-the-bot", "no-webhook-token", "no-gateway-token", "no-playbook", "bot", "no-service-section"],
)
def test_what_a_service_refuses_the_check_refuses(
    tmp_path: Path, text: str, options: tuple[str, ...], message: str
) -> None:
    status, out, err = check_file(tmp_path, text, *options)
    assert status == 2 and out == "", out
    assert len(err.splitlines()) == 1 and message in err, err


def test_each_service_refuses_at_start_what_the_check_refuses(tmp_path: Path) -> None:
    """The reverse, run: the paper gateway and the reconciler started on the files the check refused exit 2 with the
    same line."""
    for text, command in (
        (GATEWAY_ONLY.replace("  control_token_file: c\n", ""), "paper-gateway"),
        (RECONCILER_ONLY.replace("  token_file: w\n", ""), "reconciler"),
    ):
        _, _, refused = check_file(tmp_path, text)
        path = tmp_path / "service.yaml"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_OPS_")}
        argv = [sys.executable, "-m", "trading_ops", "--config", str(path), command]
        ran = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)
        assert ran.returncode == 2 and ran.stderr.strip().splitlines()[-1] == refused, (command, ran.stderr)


SSH_ENGINE_HOST = "host: {address: 10.0.1.21, docker_url: 'ssh://ops@10.0.1.21', known_hosts_file: c}"
SYSTEMD_WARNING = (
    "trading-ops: config: warning: bots[0] (eth-mm): its url is on {host}, but no host.address is given: systemd "
    "steps would restart trading-ops-bot@eth-mm.service on the reconciler's own host. Give host.address "
    "(docs/deploy-fleet.md)"
)
DOCKER_WARNING = (
    "trading-ops: config: warning: bots[0] (eth-mm): its url is on {host}, but no host.docker_url is given: docker "
    "steps would restart the container trading-ops-eth-mm on the reconciler's own host. Give host.docker_url "
    "(docs/deploy-fleet.md)"
)


@pytest.mark.parametrize(
    ("playbook", "url", "host", "warning"),
    [
        ("", "http://10.0.1.21:9101", "", SYSTEMD_WARNING),
        ("", "http://bot-host-2.internal:9101", "", SYSTEMD_WARNING),
        ("", "http://10.0.1.21:9101", "host: {address: 10.0.1.21, known_hosts_file: c}", ""),
        ("", "http://127.0.0.1:9101", "", ""),
        ("", "http://localhost:9101", "", ""),
        ("", "http://[::1]:9101", "", ""),
        # A compose service name is no other host for docker steps: the reconciler's engine runs that container.
        ("docker", "http://paper-bot:9101", "", ""),
        ("docker", "http://10.0.1.21:9101", "", DOCKER_WARNING),
        ("docker", "http://bot-host-2.internal:9101", "", DOCKER_WARNING),
        ("docker", "http://10.0.1.21:9101", SSH_ENGINE_HOST, ""),
        # Systemd steps would still restart a unit of the reconciler's own host for a compose name.
        ("", "http://paper-bot:9101", "", SYSTEMD_WARNING),
    ],
)
def test_a_remote_bot_without_a_host_is_warned_about(
    tmp_path: Path, playbook: str, url: str, host: str, warning: str
) -> None:
    entry = f"  - name: eth-mm\n    kind: ccxt\n    instance: '{url.split('//')[1]}'\n    url: '{url}'\n"
    entry += "    token_file: c\n" + (f"    {host}\n" if host else "")
    reconciler = "reconciler:\n  token_file: w\n" + (f"  playbook: {playbook}\n" if playbook else "")
    status, out, err = check_file(tmp_path, reconciler + "bots:\n" + entry)
    assert status == 0, err
    assert err == warning.format(host=url.split("//")[1].rsplit(":", 1)[0].strip("[]"))


def test_the_compose_configuration_gets_no_host_warning() -> None:
    """trading-ops.docker.yaml: its bots are compose services, restarted by docker steps on the reconciler's engine."""
    from trading_ops.commands.config_cmd import remote_bot_warnings

    config = load_config(ROOT / "trading-ops.docker.yaml")
    assert config.bots and config.reconciler.playbook == "docker"
    assert remote_bot_warnings(config) == []


# -- Prometheus rendered for the deployment: node exporter targets of the bots' hosts ---------------------------------

FLEET = """
reconciler:
  listen: {host: 0.0.0.0, port: 9102}
  alertmanager_url: http://10.0.0.2:9093
  alertmanager_peers: [http://10.0.0.3:9093]
  prometheus_url: http://10.0.0.2:9090
bots:
  - {name: paper-1, kind: paper, instance: '10.0.1.21:9101', url: 'http://10.0.1.21:9101'}
  - {name: eth-mm, kind: ccxt, instance: '10.0.1.21:9111', url: 'http://10.0.1.21:9111'}
  - {name: btc-mm, kind: ccxt, instance: '10.0.1.22:9101', url: 'http://10.0.1.22:9101'}
  - {name: ft-1, kind: freqtrade, instance: '10.0.1.23:9103', url: 'http://10.0.1.23:9103'}
"""


def test_node_targets_are_one_exporter_per_bot_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The host part of each bot's instance, port 9100: what TradingBotHostDown joins a bot and its host on."""
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    assert main(["--config", str(path), "config", "targets", "--job", "node"]) == 0
    groups = yaml.safe_load(capsys.readouterr().out)
    assert groups == [{"targets": [f"10.0.1.{n}:9100"]} for n in (21, 22, 23)]


def test_render_writes_a_prometheus_config_promtool_accepts_with_this_deployments_addresses(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    out = tmp_path / "prometheus"
    assert main(["--config", str(path), "config", "render", "-o", str(out)]) == 0
    assert main(["rules", "render", "-o", str(out / "rules")]) == 0
    checked = run_binary("promtool", "check", "config", out / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    data = yaml.safe_load((out / "prometheus.yml").read_text())
    static = {j["job_name"]: j["static_configs"][0]["targets"] for j in data["scrape_configs"] if "static_configs" in j}
    assert static == {
        "trading-ops-reconciler": ["127.0.0.1:9102"],  # listening on every address: this host's loopback
        "alertmanager": ["10.0.0.2:9093", "10.0.0.3:9093"],
        "prometheus": ["10.0.0.2:9090"],
    }
    assert data["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["10.0.0.2:9093", "10.0.0.3:9093"]
    assert data["global"]["scrape_interval"] == "5s"
    # No docker compose name anywhere: every address is the configuration's.
    assert not any(
        name in (out / "prometheus.yml").read_text() for name in ("paper-bot:", "reconciler:9102", "node-exporter")
    )
    targets = {f.stem: yaml.safe_load(f.read_text()) for f in (out / "targets").glob("*.yml")}
    assert targets["tradingbot"] == [{"targets": [t]} for t in ("10.0.1.21:9101", "10.0.1.21:9111", "10.0.1.22:9101")]
    assert targets["freqtrade"] == [{"targets": ["10.0.1.23:9103"]}]
    assert targets["node"] == [{"targets": [f"10.0.1.{n}:9100"]} for n in (21, 22, 23)]


def test_the_systemd_example_fits_the_units_sandbox() -> None:
    """trading-ops.systemd.yaml in /etc/trading-ops: what it writes is under /var/lib/trading-ops (the units'
    StateDirectory=, the one writable place under ProtectSystem=strict), what it reads under /etc/trading-ops."""
    repo = Path(__file__).resolve().parent.parent
    config = load_config(repo / "trading-ops.systemd.yaml")
    assert config.database.url.startswith("postgresql+psycopg://") and "host=/run/postgresql" in config.database.url
    written = [config.bot.data_dir, config.reconciler.spool_dir, config.backup.directory]
    assert all(p.startswith("/var/lib/trading-ops") for p in written), written
    secrets = [
        config.bot.control_token,
        config.reconciler.token,
        config.reconciler.read_token,
        *(b.token for b in config.bots),
    ]
    assert all(s.startswith("file:/etc/trading-ops/") for s in secrets), secrets
    for unit in ("paper/systemd/trading-ops-paper-bot.service", "reconciler/systemd/trading-ops-reconciler.service"):
        text = (repo / "trading_ops" / unit).read_text()
        assert "ReadWritePaths=/var/lib/trading-ops\n" in text and "StateDirectory=trading-ops\n" in text
        assert "--config /etc/trading-ops/trading-ops.yaml" in text


def test_render_writes_the_shipped_alertmanager_routes_with_this_deployments_reconciler(tmp_path: Path) -> None:
    """amtool accepts the rendered file, every routing case of the shipped one routes alike, the reconciler's webhook
    is this configuration's, and with --local-receivers people are mailed on this host, with no outside account."""
    repo = Path(__file__).resolve().parent.parent
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    out = tmp_path / "prometheus"
    shipped = repo / "alertmanager" / "alertmanager.yml"
    argv = ["--config", str(path), "config", "render", "-o", str(out), "--alertmanager", str(shipped)]
    assert main([*argv, "--local-receivers"]) == 0
    rendered = out / "alertmanager.yml"
    checked = run_binary("amtool", "check-config", rendered)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    data = yaml.safe_load(rendered.read_text())
    receivers = {r["name"]: r for r in data["receivers"]}
    (hook,) = receivers["reconciler"]["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9102/api/v1/alertmanager"
    assert hook["http_config"]["authorization"]["credentials_file"] == str(out / "secrets" / "reconciler-token")
    assert hook["max_alerts"] == 1000  # the rest of the shipped receiver kept
    for name in ("pager", "chat", "deadman"):
        assert [c["to"] for c in receivers[name]["email_configs"]] == ["root@localhost"], receivers[name]
        assert set(receivers[name]) == {"name", "email_configs"}  # no PagerDuty, Slack or dead-man service
    assert data["global"]["smtp_smarthost"] == "localhost:25" and "smtp_auth_password_file" not in data["global"]
    assert (out / "templates" / "trading-ops.tmpl").read_text() == (
        repo / "alertmanager/templates/trading-ops.tmpl"
    ).read_text()
    cases = yaml.safe_load((repo / "alertmanager" / "tests" / "routing-cases.yml").read_text())
    for case in cases:
        labels = [f"{k}={v}" for k, v in case["labels"].items()]
        verify = f"--verify.receivers={','.join(case['receivers'])}"
        routed = run_binary("amtool", "config", "routes", "test", f"--config.file={rendered}", verify, *labels)
        assert routed.returncode == 0, (case["name"], routed.stdout + routed.stderr)
    # Without --local-receivers the people's receivers are the shipped ones.
    assert main(argv) == 0
    receivers = {r["name"]: r for r in yaml.safe_load(rendered.read_text())["receivers"]}
    assert "pagerduty_configs" in receivers["pager"] and "slack_configs" in receivers["chat"]


def test_render_builds_the_documented_ha_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/deployment.md's HA files from `config render`: a Prometheus of the pair (its replica label, dropped from
    its alerts; both Alertmanagers with the shipped `timeout`), and an Alertmanager with one receiver per reconciler
    replica, every route to the reconciler once per replica (the copies but the last continuing). promtool and amtool
    accept them, and every shipped routing case routes alike, the reconciler's cases to both replicas."""
    repo = Path(__file__).resolve().parent.parent
    path = tmp_path / "pair.yaml"
    path.write_text(
        FLEET.replace(
            "prometheus_url: http://10.0.0.2:9090", "prometheus_url: [http://10.0.0.2:9090, http://10.0.0.3:9090]"
        )
    )
    out = tmp_path / "etc"
    shipped = repo / "alertmanager" / "alertmanager.yml"
    argv = ["--config", str(path), "config", "render", "-o", str(out), "--replica", "a", "--alertmanager", str(shipped)]
    replicas = ["--reconciler-replica", "r1=http://10.0.0.2:9102", "--reconciler-replica", "r2=http://10.0.0.3:9102"]
    assert main([*argv, *replicas]) == 0
    assert main(["rules", "render", "-o", str(out / "rules")]) == 0
    checked = run_binary("promtool", "check", "config", out / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    prometheus = yaml.safe_load((out / "prometheus.yml").read_text())
    shipped_timeout = yaml.safe_load((repo / "prometheus" / "prometheus.yml").read_text())["alerting"]["alertmanagers"]
    assert prometheus["global"]["external_labels"] == {"replica": "a"}
    assert prometheus["alerting"]["alert_relabel_configs"] == [{"action": "labeldrop", "regex": "replica"}]
    (managers,) = prometheus["alerting"]["alertmanagers"]
    assert managers["timeout"] == shipped_timeout[0]["timeout"] == "2s"
    assert managers["static_configs"][0]["targets"] == ["10.0.0.2:9093", "10.0.0.3:9093"]
    rendered = out / "alertmanager.yml"
    checked = run_binary("amtool", "check-config", rendered)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    data = yaml.safe_load(rendered.read_text())
    receivers = {r["name"]: r for r in data["receivers"]}
    assert "reconciler" not in receivers
    for name, host in (("reconciler-r1", "10.0.0.2"), ("reconciler-r2", "10.0.0.3")):
        (hook,) = receivers[name]["webhook_configs"]
        assert hook["url"] == f"http://{host}:9102/api/v1/alertmanager"
        assert hook["http_config"]["authorization"]["credentials_file"] == str(out / "secrets" / "reconciler-token")
    cases = yaml.safe_load((repo / "alertmanager" / "tests" / "routing-cases.yml").read_text())
    for case in cases:
        expected = [
            name
            for receiver in case["receivers"]
            for name in (("reconciler-r1", "reconciler-r2") if receiver == "reconciler" else (receiver,))
        ]
        labels = [f"{k}={v}" for k, v in case["labels"].items()]
        verify = f"--verify.receivers={','.join(expected)}"
        routed = run_binary("amtool", "config", "routes", "test", f"--config.file={rendered}", verify, *labels)
        assert routed.returncode == 0, (case["name"], routed.stdout + routed.stderr)
    # Each mistake is one line, exit 2.
    for bad, said in (
        (["--reconciler-replica", "r1"], "--reconciler-replica r1: expected NAME=URL"),
        (["--reconciler-replica", "r1=ftp://x"], "is not an http(s) URL"),
        (["--reconciler-replica", "r1=http://a:1", "--reconciler-replica", "r1=http://b:1"], "given twice"),
    ):
        assert main([*argv, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and "\n" not in err, err
    assert main(["--config", str(path), "config", "render", "-o", str(out), *replicas[:2]]) == 2
    assert "--reconciler-replica needs --alertmanager FILE" in capsys.readouterr().err


def test_local_receivers_need_the_alertmanager_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    assert main(["--config", str(path), "config", "render", "-o", str(tmp_path), "--local-receivers"]) == 2
    assert "--local-receivers needs --alertmanager FILE" in capsys.readouterr().err
    missing = ["--config", str(path), "config", "render", "-o", str(tmp_path), "--alertmanager", "/nonexistent.yml"]
    assert main(missing) == 2
    assert capsys.readouterr().err.strip() == (
        "trading-ops: --alertmanager /nonexistent.yml: cannot read it: No such file or directory"
    )


def test_the_example_s_commands_are_the_real_cli_s_forms() -> None:
    """Every `trading-ops ...` the example's comments name parses with the real CLI's parser (its `a|b` alternatives
    each, `[...]` left out, placeholders filled in), and a readiness form takes BOT where the CLI does: the example said
    `readiness stop-drill BOT`, which the CLI read as two bots named `stop-drill` and BOT."""
    from trading_ops.cli import build_parser

    placeholders = {"BOT": "paper-1", "KIND": "paper", '"..."': "why"}
    # Named as commands to look up, not as complete invocations (their arguments are on their own pages).
    references = {("gateway-chaos",)}
    forms = sorted(set(re.findall(r"`trading-ops ([^`]*)`", (ROOT / "trading-ops.example.yaml").read_text())))
    readiness = 0
    for form in forms:
        words = re.sub(r"\[[^\]]*\]", "", form).split()
        for argv in itertools.product(*(w.split("|") for w in words)):
            if argv in references:
                continue
            args = build_parser().parse_args([placeholders.get(w, w) for w in argv])
            if argv[0] == "readiness":
                readiness += 1
                assert args.bots == ["paper-1"], form
    assert readiness >= 2
