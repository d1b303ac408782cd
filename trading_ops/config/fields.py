"""The configuration's building blocks: ConfigError, the field markers (secret, bounded, checked, path_field), the
value checks every section shares, and the names' patterns."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = "trading-ops.yaml"
# Where `trading-ops up` (the local stack) writes its configurations, data and logs, relative to where it runs.
STACK_STATE_DIR = "var/stack"


# SQLAlchemy drivers the project supports; bare `postgresql` means psycopg 3 (psycopg2 is not a dependency).
DATABASE_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")


POSTGRESQL_DRIVER = "postgresql+psycopg"


# psycopg is the `postgres` extra, not a core dependency: without it a PostgreSQL URL is a one-line error.
POSTGRESQL_DRIVER_MISSING = "PostgreSQL needs the psycopg driver: pip install 'trading-ops[postgres]'"


# sqlite:///PATH without a query or a %-escape: the default URL, and what `trading-ops up` writes. SQLAlchemy's
# make_url (sqlalchemy/engine/url.py) reads every such URL as that driver, no user, no password, PATH the database,
# so it is read here without SQLAlchemy, whose import would cost ~0.1 s to every command that loads the
# configuration (the reconciler's stackctl steps, the disk rule's `upkeep cleanup`). Any other URL goes to make_url.
SQLITE_FILE_URL = re.compile(r"(sqlite(?:\+pysqlite)?):///([^?%]*)")


# Names that end up in label values, file names and the journal: a word of letters, digits, `_`, `.`, `-`.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# A bot's client order ids are `<prefix>-<run>-<n>`: the prefix is its name up to this many characters (a longer name:
# its start and a hash of the whole, `order_id_prefix`), so that the ids stay short enough for venues that cap them.
ORDER_ID_PREFIX_CHARS = 16


ORDER_ID_HASH_CHARS = 8


# A systemd unit name (unit@instance.service and the like); the polkit rule decides which ones may be restarted.
UNIT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@_.:-]{0,250}$")


# The paper bot's unit (trading_ops/paper/systemd/): a bot target's unit unless configured otherwise.
PAPER_BOT_UNIT = "trading-ops-paper-bot.service"


PAPER_BOT_CONTAINER = "trading-ops-paper-bot"


CONTAINER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# The kind of a bots[] entry that is a freqtrade watched by the `trading-ops freqtrade` sidecar. freqtrade places its
# orders through ccxt with no client order id (freqtrade.exchange.Exchange._get_params adds none, and no setting of its
# adds one): its venue is told apart by its account (`bots[].venue.orders: account`), never by a prefix.
FREQTRADE_KIND = "freqtrade"


# The unit and container a bot of a shipped kind runs in (bots[].unit and .container override): the paper bot's
# (trading_ops/paper/systemd/, docker-compose.yml), and for a freqtrade bot its sidecar's, the process that answers
# for it (integrations/freqtrade/systemd/); any other bot is an instance of the template unit trading-ops-bot@.
KIND_UNITS = {"paper": PAPER_BOT_UNIT, FREQTRADE_KIND: "trading-ops-freqtrade.service"}


KIND_CONTAINERS = {"paper": PAPER_BOT_CONTAINER, FREQTRADE_KIND: "trading-ops-freqtrade-sidecar"}


# Spot symbols as BASE-QUOTE in capitals (BTC-USD); the quote must be paper.quote_asset.
# The gateway's own account (gateway.api_key); its sub-accounts (gateway.accounts) have other names.
GATEWAY_MAIN_ACCOUNT = "main"


SYMBOL_PATTERN = re.compile(r"^([A-Z0-9]{1,16})-([A-Z0-9]{1,16})$")


ASSET_PATTERN = re.compile(r"^[A-Z0-9]{1,16}$")


HOSTNAME_PATTERN = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class ConfigError(Exception):
    """A configuration problem, rendered as one line that names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def secret(env: str, help: str = "") -> Any:
    """A secret field: never written in the file, read from `<name>_env` or `<name>_file`.

    Without either, it is read from the environment variable `env`, whether or not its section is in the file;
    `env` "" means none: such a secret is unset unless the file names where it is.
    """
    return field(default=f"env:{env}", metadata={"secret": True, "env": env, "help": help})


def bounded(default: Any, *, min: float | None = None, max: float | None = None) -> Any:
    """A numeric field with an inclusive range checked on load."""
    return field(default=default, metadata={"min": min, "max": max})


def checked(default: Any, check: Callable[[Any], str | None]) -> Any:
    """A field whose value `check` inspects on load; it returns the problem, or None when the value is fine."""
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=lambda: list(items), metadata={"check": check})
    return field(default=default, metadata={"check": check})


# systemd sets this for a unit with StateDirectory= (systemd.exec(5)): its state directories, colon-separated.
STATE_DIRECTORY_ENV = "STATE_DIRECTORY"


def state_base(base_dir: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where relative paths of what a service writes (its database, data and spool directories) resolve: the unit's
    state directory under systemd (`$STATE_DIRECTORY`, its first), never the configuration's directory, which is
    read-only there (/etc under ProtectSystem=strict); elsewhere the configuration's directory."""
    value = (os.environ if environ is None else environ).get(STATE_DIRECTORY_ENV, "").split(":", 1)[0]
    return Path(value) if value and Path(value).is_absolute() else base_dir


def path_field(default: str = "", check: Callable[[Any], str | None] | None = None, *, state: bool = False) -> Any:
    """A path: a relative value is resolved against the configuration file's directory when the file is loaded
    (`resolve_paths`), so the code that uses it takes it as it is. Empty stays empty (not configured). `state`: what
    the service writes, resolved against `state_base` (the unit's state directory under systemd)."""
    metadata: dict[str, Any] = {"path": True, "state": state}
    if check is not None:
        metadata["check"] = check
    return field(default=default, metadata=metadata)


def resolve_path(value: str, base_dir: Path) -> str:
    """`value` (`~` expanded) if absolute, else `base_dir / value`; an empty value, or one that starts with a
    placeholder rendered at run time (`{data_dir}`), as it is."""
    if not value or value.startswith("{"):
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base_dir / p)


def resolve_paths(section: Any, base_dir: Path, state_dir: Path | None = None) -> None:
    """Rewrite the path fields (`path_field`) of `section` and of the sections it holds to absolute paths: what is
    written (`state`) against `state_dir` (default `base_dir`), the rest against `base_dir`."""
    state_dir = state_dir or base_dir
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.metadata.get("path"):
            setattr(section, f.name, resolve_path(value, state_dir if f.metadata.get("state") else base_dir))
            continue
        for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]:
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                resolve_paths(item, base_dir, state_dir)


def check_name(value: str) -> str | None:
    if NAME_PATTERN.match(value):
        return None
    return f"expected a name of letters, digits, '_', '.' or '-' (at most 64), got {describe(value)}"


def check_client_id_prefix(exchange: str, prefix: str, key: str) -> None:
    """Binance caps a client order id at 36 characters: `<prefix>-<run, 11 hex digits>-<n>` fits with a prefix of at
    most ORDER_ID_PREFIX_CHARS (n up to seven digits); ConfigError for a longer one on Binance."""
    if exchange == "binance" and len(prefix) > ORDER_ID_PREFIX_CHARS:
        raise ConfigError(
            key,
            f"{prefix} is {len(prefix)} characters: Binance's client order ids are at most 36, so a bot's prefix there "
            f"is at most {ORDER_ID_PREFIX_CHARS}",
        )


def check_nonempty(value: Any) -> str | None:
    return None if value else "must not be empty"


def check_asset(value: str) -> str | None:
    return None if ASSET_PATTERN.match(value) else f"expected an asset in capitals such as USD, got {describe(value)}"


def check_host(value: str) -> str | None:
    """An IP address (v4 or v6, without brackets) or a DNS host name."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if HOSTNAME_PATTERN.match(value) and not re.fullmatch(r"[0-9.]+", value):
        return None
    return f"expected an IP address or a host name, got {describe(value)}"


def check_http_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a port out of range or not a number
    except ValueError as exc:
        return f"not a valid URL ({exc}): {describe(value)}"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"expected an http:// or https:// URL, got {describe(value)}"
    if not parts.hostname or check_host(parts.hostname):
        return f"the URL has no valid host: {describe(value)}"
    if parts.password is not None:
        return "the URL carries a password; secrets are not written in the file"
    if parts.query or parts.fragment:
        return f"expected a base URL without query or fragment, got {describe(value)}"
    return None


def http_url_problem(value: str) -> str | None:
    """What is wrong with a base URL of an HTTP server (http:// or https://, a host, no password, query or
    fragment), or None: the configuration's URLs and the command line's --url options alike."""
    return check_http_url(value)


def check_regex(value: str) -> str | None:
    """A pattern RE2 compiles (label values are matched in linear time, whatever they hold)."""
    from trading_ops.matchers import RegexError, compile_pattern

    try:
        compile_pattern(value)
    except RegexError as exc:
        return str(exc)
    return None


def check_host_ports(value: list[str]) -> str | None:
    """Hosts as `host` (any port) or `host:port`, IPv6 in brackets: where the http action may send requests."""
    for entry in value:
        try:
            parts = urlsplit(f"//{entry}")
            parts.port  # raises ValueError for a port out of range or not a number
        except ValueError:
            return f"expected host or host:port, got {describe(entry)}"
        if not parts.hostname or check_host(parts.hostname) or f"//{entry}" != f"//{parts.netloc}":
            return f"expected host or host:port, got {describe(entry)}"
        if parts.username is not None:
            return f"expected host or host:port (no user@), got {describe(entry)}"
    return None


def check_command(value: list[str]) -> str | None:
    if not value or not all(value):
        return "expected a non-empty list of non-empty strings (the command and its arguments)"
    return None


def check_database_url(value: str, *, in_file: bool) -> str | None:
    """The problem with a database URL, or None. `in_file`: written in the configuration, so no password."""
    if SQLITE_FILE_URL.fullmatch(value):
        return None  # a supported driver, no password: what make_url would find
    # SQLAlchemy is imported here, not with the module: every command loads the configuration, few use the database.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except (ArgumentError, ValueError) as exc:
        return f"not a database URL ({exc})"
    if url.drivername == "postgres":
        return "write postgresql:// (or postgresql+psycopg://), not postgres://"
    if url.drivername not in DATABASE_DRIVERS:
        known = ", ".join(f"{name}://" for name in DATABASE_DRIVERS)
        return f"unsupported database {url.drivername!r} (supported: {known})"
    if in_file and url.password is not None:
        return "the URL carries a password; secrets are not written in the file: give url_file or url_env"
    return None


def check_optional_limit(value: float | None) -> str | None:
    return None if value is None or value >= 0 else f"must be at least 0, got {value}"


def check_positive_duration(value: str) -> str | None:
    from trading_ops.durations import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        return str(exc)
    return None if seconds > 0 else "must be longer than 0s"


def check_optional_http_url(value: str) -> str | None:
    return None if value == "" else check_http_url(value)


def check_http_urls(values: list[str]) -> str | None:
    return next((problem for v in values if (problem := check_http_url(v))), None)


def check_networks(values: list[str]) -> str | None:
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            return f"expected an address or a network (10.0.0.0/8, fd00::/8), got {describe(value)}"
    return None


def check_prometheus_urls(value: str | list[str]) -> str | None:
    if isinstance(value, str):
        return check_http_url(value)
    if not value:
        return "expected a URL or a list of the members' URLs, got an empty list"
    if len({v.rstrip("/") for v in value}) < len(value):
        return "a member is named twice"
    return check_http_urls(value)


def check_unit(value: str) -> str | None:
    if value == "" or UNIT_PATTERN.match(value):
        return None
    return f"expected a systemd unit name such as trading-ops-bot@paper-1.service, got {describe(value)}"


def check_container(value: str) -> str | None:
    if value == "" or CONTAINER_PATTERN.match(value):
        return None
    return f"expected a container name such as trading-ops-paper-bot, got {describe(value)}"


def check_optional_exchange(value: str) -> str | None:
    return None if value == "" else check_name(value)


def check_account(prefix: str, symbols: list[str], urls: dict[str, str], position_baseline: dict[str, float]) -> None:
    """What a ccxt account's settings share, the bot's broker's and the reconciler's venue step's: its symbols, the
    URLs that replace ccxt's and the balances that are not the bot's."""
    for i, symbol in enumerate(symbols):
        if SYMBOL_PATTERN.match(symbol) is None:
            raise ConfigError(
                f"{prefix}.symbols[{i}]", f"expected BASE-QUOTE in capitals such as BTC-USD, got {describe(symbol)}"
            )
    for name, url in urls.items():
        if problem := check_http_url(url):
            raise ConfigError(f"{prefix}.urls.{name}", problem)
    for asset in position_baseline:
        if problem := check_asset(asset):
            raise ConfigError(f"{prefix}.position_baseline.{asset}", problem)


def check_optional_host(value: str) -> str | None:
    return None if value == "" else check_host(value)


def check_remote_user(value: str) -> str | None:
    if value == "" or re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", value):
        return None
    return f"expected a user name (lower case letters, digits, '_', '.' or '-'), got {describe(value)}"


def check_docker_url(value: str) -> str | None:
    if value == "":
        return None
    scheme, sep, rest = value.partition("://")
    if sep and scheme in ("tcp", "ssh") and rest and "/" not in rest.rstrip("/"):
        return None
    return f"expected tcp://HOST:2376 (TLS) or ssh://USER@HOST, got {describe(value)}"


def check_instance(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or check_host(host.strip("[]")):
        return f"expected host:port (the bot's scrape target), got {describe(value)}"
    return None


def check_cron(value: str) -> str | None:
    return check_schedule(value)


def check_time_zone(value: str) -> str | None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {describe(value)} (an IANA name such as UTC or America/New_York)"
    return None


def check_optional_duration(value: str) -> str | None:
    from trading_ops.durations import parse_duration

    if value == "":
        return None
    try:
        parse_duration(value)
    except ValueError as exc:
        return str(exc)
    return None


def check_remote_path(value: str) -> str | None:
    if not value or value.startswith("-") or any(c in value for c in "\n\r\0"):
        return f"expected a directory on the remote host, got {describe(value)}"
    return None


def check_schedule_time_zone(value: str) -> str | None:
    from trading_ops.cron import ScheduleError, zone

    try:
        zone(value)
    except ScheduleError as exc:
        return str(exc)
    return None


def check_schedule(value: str) -> str | None:
    from trading_ops.cron import CronSchedule, ScheduleError

    try:
        CronSchedule.parse(value)
    except ScheduleError as exc:
        return f"{exc}: {describe(value)}"
    return None


def check_time_of_day(value: str) -> str | None:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", value)
    return None if match else f"expected a local time HH:MM such as 16:30, got {describe(value)}"


def read_secret_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc


def describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
