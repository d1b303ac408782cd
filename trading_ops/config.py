"""Load the trading-ops YAML configuration and validate every key, type and value."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from trading_ops.scopes import DESTRUCTIVE, SCOPES, TokenSet

DEFAULT_CONFIG_PATH = "trading-ops.yaml"
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
# The unit and container a bot of a shipped kind runs in (bots[].unit and .container override): the paper bot's
# (trading_ops/paper/systemd/, docker-compose.yml), and for a freqtrade bot its sidecar's, the process that answers
# for it (integrations/freqtrade/systemd/); any other bot is an instance of the template unit trading-ops-bot@.
KIND_UNITS = {"paper": PAPER_BOT_UNIT, "freqtrade": "trading-ops-freqtrade.service"}
KIND_CONTAINERS = {"paper": PAPER_BOT_CONTAINER, "freqtrade": "trading-ops-freqtrade-sidecar"}
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


def path_field(default: str = "", check: Callable[[Any], str | None] | None = None) -> Any:
    """A path: a relative value is resolved against the configuration file's directory when the file is loaded
    (`resolve_paths`), so the code that uses it takes it as it is. Empty stays empty (not configured)."""
    metadata: dict[str, Any] = {"path": True}
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


def resolve_paths(section: Any, base_dir: Path) -> None:
    """Rewrite the path fields (`path_field`) of `section` and of the sections it holds to absolute paths."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.metadata.get("path"):
            setattr(section, f.name, resolve_path(value, base_dir))
            continue
        for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]:
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                resolve_paths(item, base_dir)


def _check_name(value: str) -> str | None:
    if NAME_PATTERN.match(value):
        return None
    return f"expected a name of letters, digits, '_', '.' or '-' (at most 64), got {_describe(value)}"


def order_id_prefix(name: str) -> str:
    """The order-id prefix of the bot named `name` when none is configured: the name itself up to
    ORDER_ID_PREFIX_CHARS characters, else its start, '-' and a hash of the whole name, so that distinct names never
    share one (`kraken-production-1` and `kraken-production-2` once both became `kraken-productio`)."""
    if len(name) <= ORDER_ID_PREFIX_CHARS:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:ORDER_ID_HASH_CHARS]
    return f"{name[: ORDER_ID_PREFIX_CHARS - ORDER_ID_HASH_CHARS - 1]}-{digest}"


def bot_prefix(entry: BotEntryConfig) -> str:
    """The order-id prefix of a bot under `bots:`: its venue's `order_id_prefix`, else derived from its name."""
    return entry.venue.order_id_prefix or order_id_prefix(entry.name)


def bot_order_id_prefix(config: Config) -> str:
    """The order-id prefix of the bot this configuration runs (`bot:`): bot.order_id_prefix, else its entry's under
    `bots:`, else derived from its name, as the reconciler's `venue` step derives it."""
    if config.bot.order_id_prefix:
        return config.bot.order_id_prefix
    entry = next((b for b in config.bots if b.name == config.bot.name), None)
    return bot_prefix(entry) if entry is not None else order_id_prefix(config.bot.name)


def _check_nonempty(value: Any) -> str | None:
    return None if value else "must not be empty"


def _check_asset(value: str) -> str | None:
    return None if ASSET_PATTERN.match(value) else f"expected an asset in capitals such as USD, got {_describe(value)}"


def _check_host(value: str) -> str | None:
    """An IP address (v4 or v6, without brackets) or a DNS host name."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if HOSTNAME_PATTERN.match(value) and not re.fullmatch(r"[0-9.]+", value):
        return None
    return f"expected an IP address or a host name, got {_describe(value)}"


def _check_http_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a port out of range or not a number
    except ValueError as exc:
        return f"not a valid URL ({exc}): {_describe(value)}"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"expected an http:// or https:// URL, got {_describe(value)}"
    if not parts.hostname or _check_host(parts.hostname):
        return f"the URL has no valid host: {_describe(value)}"
    if parts.password is not None:
        return "the URL carries a password; secrets are not written in the file"
    if parts.query or parts.fragment:
        return f"expected a base URL without query or fragment, got {_describe(value)}"
    return None


def http_url_problem(value: str) -> str | None:
    """What is wrong with a base URL of an HTTP server (http:// or https://, a host, no password, query or
    fragment), or None: the configuration's URLs and the command line's --url options alike."""
    return _check_http_url(value)


def _check_regex(value: str) -> str | None:
    """A pattern RE2 compiles (label values are matched in linear time, whatever they hold)."""
    from trading_ops.matchers import RegexError, compile_pattern

    try:
        compile_pattern(value)
    except RegexError as exc:
        return str(exc)
    return None


def _check_host_ports(value: list[str]) -> str | None:
    """Hosts as `host` (any port) or `host:port`, IPv6 in brackets: where the http action may send requests."""
    for entry in value:
        try:
            parts = urlsplit(f"//{entry}")
            parts.port  # raises ValueError for a port out of range or not a number
        except ValueError:
            return f"expected host or host:port, got {_describe(entry)}"
        if not parts.hostname or _check_host(parts.hostname) or f"//{entry}" != f"//{parts.netloc}":
            return f"expected host or host:port, got {_describe(entry)}"
        if parts.username is not None:
            return f"expected host or host:port (no user@), got {_describe(entry)}"
    return None


def _check_command(value: list[str]) -> str | None:
    if not value or not all(value):
        return "expected a non-empty list of non-empty strings (the command and its arguments)"
    return None


def _check_database_url(value: str, *, in_file: bool) -> str | None:
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


@dataclass
class ListenConfig:
    host: str = checked("127.0.0.1", _check_host)
    port: int = bounded(9101, min=0, max=65535)
    # The Prometheus exporter-toolkit web configuration (tls_server_config incl. mutual TLS, basic_auth_users with
    # bcrypt hashes; relative to this file): empty = plain HTTP. See trading_ops/webconfig.py and the README.
    web_config_file: str = path_field()


@dataclass
class TLSClientConfig:
    """TLS of a client (Prometheus's tls_config, in short): the CA its servers' certificates are verified against
    (empty: the system's), and a certificate and key for servers that ask for one (mutual TLS)."""

    ca_file: str = path_field()
    cert_file: str = path_field()
    key_file: str = path_field()


@dataclass
class DatabaseConfig:
    # SQLAlchemy URL: sqlite:///var/trading-ops.db (embedded default, WAL) or
    # postgresql+psycopg://user@host:5432/db. A URL with a password belongs in url_env / url_file.
    url: str = checked("sqlite:///var/trading-ops.db", lambda value: _check_database_url(value, in_file=True))
    url_env: str = ""
    url_file: str = path_field()
    # SQLite only: NORMAL survives a process crash (kill -9) in WAL mode; FULL also survives power loss.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "FULL"

    def validate(self, prefix: str, given: set[str]) -> None:
        sources = [name for name in ("url", "url_file", "url_env") if name in given]
        if len(sources) > 1:
            raise ConfigError(f"{prefix}.{sources[1]}", "give only one of url, url_file and url_env")

    def resolved_url(self, base_dir: Path | None = None) -> str:
        """The URL from url, url_file (relative to `base_dir`, the configuration's directory) or url_env."""
        if self.url_file:
            path = Path(self.url_file).expanduser()
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            key, value = "database.url_file", _read_secret_file("database.url_file", str(path))
        elif self.url_env:
            key, value = "database.url_env", os.environ.get(self.url_env, "").strip()
            if not value:
                raise ConfigError(key, f"environment variable {self.url_env} is not set")
        else:
            return self.url
        problem = _check_database_url(value, in_file=False)
        if problem:
            raise ConfigError(key, problem)
        return value


def sqlite_file(url: str) -> str | None:
    """The database file of an SQLite URL as SQLAlchemy reads it, or None: another database, or one in memory."""
    match = SQLITE_FILE_URL.fullmatch(url)
    if match is not None:
        database: str | None = match.group(2)
    else:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    return database if database and database != ":memory:" else None


def _check_optional_limit(value: float | None) -> str | None:
    return None if value is None or value >= 0 else f"must be at least 0, got {value}"


def _check_positive_duration(value: str) -> str | None:
    from trading_ops.durations import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        return str(exc)
    return None if seconds > 0 else "must be longer than 0s"


@dataclass
class RiskConfig:
    """In-process risk limits, enforced in the order gate before an order leaves; 0 means no limit. Notional
    values are in the quote asset."""

    # The day's loss (realized + unrealized) at which the bot halts; an operator clears it. Unset: no limit (the
    # bot logs that at start), except for the paper bot, which then uses paper.daily_loss_limit.
    daily_loss_limit: float | None = checked(None, _check_optional_limit)
    # Per symbol: an order that would take the position's notional past this is refused (then reduce-only).
    max_position_notional: float = bounded(0.0, min=0)
    # Orders working or in flight at once.
    max_open_orders: int = bounded(0, min=0)
    # Notional of one order (at its limit price, or the mark for a market order).
    max_order_notional: float = bounded(0.0, min=0)
    max_orders_per_second: float = bounded(0.0, min=0)
    max_orders_per_minute: float = bounded(0.0, min=0)
    # Symbols with a non-zero position (or an order working, which may open one): an order that would open one more
    # is refused (then reduce-only); one adding to or reducing a position already held is not.
    max_open_positions: int = bounded(0, min=0)
    # How far equity (realized P&L of the positions held plus unrealized P&L) may fall below its highest point of the
    # last drawdown_window before the bot halts, like the daily loss limit: an operator clears it, a restart keeps
    # it, and the peak is journaled. Measured from the peak, never from the day's start.
    max_drawdown: float = bounded(0.0, min=0)
    # How long a peak counts (a duration: 24h, 7d).
    drawdown_window: str = checked("24h", _check_positive_duration)


# The readiness verdict's criteria by name (trading_ops.readiness; tests/test_ramp.py holds the two lists equal): what a
# ramp stage may name in its `criteria`.
READINESS_CRITERIA = (
    "uptime",
    "restarts",
    "crashes",
    "memory_peak",
    "memory_growth",
    "order_success",
    "order_rejection",
    "api_error_ratio",
    "api_latency_p99",
    "stream_uptime",
    "daily_loss_breaches",
    "drawdown_breaches",
    "critical_alerts",
    "dead_man_switch",
    "emergency_stop",
    "log_size",
    "log_rotation",
    "backup_verified",
    "restore_drill",
    "alerts_routed",
    "runbooks",
)
# The limits a ramp stage sets, as its `widens` names them.
RAMP_LIMITS = ("max_position_notional", "symbols", "daily_loss_limit")


@dataclass
class RampStageConfig:
    """One stage of a bot's ramp (docs/readiness.md, "Go live in stages"): its risk limits, how long it lasts at least
    and which readiness criteria must hold over which window before the next stage may be approved."""

    name: str = checked("", _check_name)
    # Per symbol, as bot.risk.max_position_notional (0: no limit of the stage's own).
    max_position_notional: float = bounded(0.0, min=0)
    # The symbols the bot may open positions in (empty: every symbol); reducing is always allowed.
    symbols: list[str] = field(default_factory=list)
    # As bot.risk.daily_loss_limit (0: no limit of the stage's own).
    daily_loss_limit: float = bounded(0.0, min=0)
    # The least time the bot spends in this stage before the next may be approved.
    min_time: str = checked("1d", _check_positive_duration)
    # Readiness criteria (names of `trading-ops readiness`) that must pass over `window` for the next stage.
    criteria: list[str] = field(default_factory=list)
    window: str = checked("1d", _check_positive_duration)
    # The limits this stage widens over the one before, when more than one: a stage widens one limit at a time
    # unless it says so.
    widens: list[str] = field(default_factory=list)

    def validate(self, prefix: str, given: set[str]) -> None:
        if "name" not in given:
            raise ConfigError(f"{prefix}.name", "missing (each stage has a name)")
        for i, name in enumerate(self.criteria):
            if name not in READINESS_CRITERIA:
                raise ConfigError(
                    f"{prefix}.criteria[{i}]",
                    f"unknown criterion {name[:64]!r} (known: {', '.join(READINESS_CRITERIA)})",
                )
        for i, name in enumerate(self.widens):
            if name not in RAMP_LIMITS:
                raise ConfigError(
                    f"{prefix}.widens[{i}]", f"unknown limit {name[:64]!r} (known: {', '.join(RAMP_LIMITS)})"
                )

    def widened(self, before: RampStageConfig) -> tuple[list[str], list[str]]:
        """The limits this stage widens over `before`, and those it narrows (0 and an empty list: no limit)."""
        wider: list[str] = []
        narrower: list[str] = []
        for key in ("max_position_notional", "daily_loss_limit"):
            mine, theirs = getattr(self, key), getattr(before, key)
            if mine == theirs:
                continue
            (wider if (not mine or (theirs and mine > theirs)) else narrower).append(key)
        mine_s, theirs_s = set(self.symbols), set(before.symbols)
        if mine_s != theirs_s:
            if not theirs_s or (mine_s and not theirs_s <= mine_s):
                narrower.append("symbols")
            else:
                wider.append("symbols")
        return wider, narrower


@dataclass
class RampConfig:
    """A bot's risk limits as stages, the narrowest first: the runtime enforces the current stage's limits on top of
    bot.risk, falls back a stage by itself on a loss-limit breach, and takes the next only with a person's approval.
    No stages (the default): no ramp."""

    stages: list[RampStageConfig] = field(default_factory=list)
    # A bot of a venue other than `paper` refuses to start without a passing readiness verdict recorded for it
    # (`trading-ops readiness BOT --record`) or a person's approval recorded there; only with stages.
    require_readiness_to_go_live: bool = True
    # A crash loop falls back a stage by itself: this many crashes (runs ended without a clean shutdown) within
    # crash_loop_window, counted since the stage was taken (0: never on crashes).
    crash_loop_crashes: int = bounded(3, min=0)
    crash_loop_window: str = checked("1h", _check_positive_duration)
    # A channel to the venue (orders, market data) down this long without a break falls back a stage by itself,
    # once per outage.
    stream_down_for: str = checked("10m", _check_positive_duration)

    def validate(self, prefix: str, given: set[str]) -> None:
        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            key = f"{prefix}.stages[{i}]"
            if stage.name in seen:
                raise ConfigError(f"{key}.name", f"{stage.name!r} is given twice")
            seen.add(stage.name)
            if i == 0:
                continue
            before = self.stages[i - 1]
            wider, narrower = stage.widened(before)
            if narrower:
                raise ConfigError(
                    key,
                    f"narrows {', '.join(narrower)} of stage {before.name!r}: stages go from the narrowest to the "
                    "widest (out of order)",
                )
            if not wider:
                raise ConfigError(key, f"widens nothing over stage {before.name!r}: it overlaps it")
            if len(wider) > 1 and set(stage.widens) != set(wider):
                raise ConfigError(
                    f"{key}.widens",
                    f"the stage widens {', '.join(wider)} at once: list them in widens to say so "
                    f"(given: {', '.join(stage.widens) or 'none'})",
                )


@dataclass
class ResourcesConfig:
    """Budgets the bot's memory and disk alerts judge against (prometheus/rules/tradingbot-resources.yml): what
    this bot should use, on a machine far bigger than that. 0 = no budget: the alerts judge against the machine
    (the memory limit, the data directory's filesystem). A budget is exported as a metric only when set."""

    # Resident memory the bot should stay within (tradingbot_memory_budget_bytes). Above bot.memory_limit_bytes
    # it would never be reached, so that is refused; above a cgroup limit the alerts use the limit.
    memory_budget_bytes: int = bounded(0, min=0)
    # Disk space everything under bot.data_dir may take, the journal and what upkeep.cleanup deletes included
    # (tradingbot_data_dir_budget_bytes, beside the measured tradingbot_data_dir_bytes).
    data_dir_budget_bytes: int = bounded(0, min=0)


@dataclass
class DeadMansSwitchConfig:
    """The venue's dead man's switch (Kraken's CancelAllOrdersAfter), kept armed by the trading loop where the venue
    has one (trading_ops.bot.dead_man_switch): the venue cancels every open order of the account when the bot stops
    refreshing it for `timeout_seconds` (its host died, its loop hung). Kraken recommends a call every 15-30 s with a
    60 s timeout."""

    enabled: bool = True
    # Seconds the venue waits after the last refresh before it cancels every open order (Kraken: under a day).
    timeout_seconds: int = bounded(60, min=1, max=86_399)
    # How often the trading loop pushes the trigger back; must be well under the timeout.
    refresh_interval_seconds: float = bounded(20.0, min=0.1)
    # When the switch cannot be armed at start (or lapses): reduce_only (the bot opens no position until it is armed,
    # then resumes by itself) or alert (the metrics and the alert only).
    on_failure: Literal["reduce_only", "alert"] = "reduce_only"
    # At a graceful shutdown: after_cancel disarms it only once the shutdown's own cancel of the open orders
    # succeeded (with recovery.open_orders_on_shutdown keep, or a cancel that failed, it stays armed and the venue
    # cancels what is left at the trigger); always disarms it (kept orders stay until the next start); never leaves
    # it armed.
    disarm_on_shutdown: Literal["after_cancel", "always", "never"] = "after_cancel"

    def validate(self, prefix: str, given: set[str]) -> None:
        if self.refresh_interval_seconds * 2 > self.timeout_seconds:
            raise ConfigError(
                f"{prefix}.refresh_interval_seconds",
                f"{self.refresh_interval_seconds:g} is more than half of timeout_seconds ({self.timeout_seconds}): one "
                "late refresh would let the venue cancel every order",
            )


# Names the `source` label of tradingbot_control_commands_total gives to what is no configured token's: a bot's own
# risk limits, and requests without a valid token. A named token may not take them.
RESERVED_TOKEN_NAMES = ("risk", "unauthenticated")


@dataclass
class NamedTokenConfig:
    """One of the several tokens an API accepts: its name (logs, the journal, the `source` label), its scope, and
    where its secret is read from (token_file, or token_env; never the file itself)."""

    name: str = checked("", _check_name)
    scope: Literal["read", "operate", "destructive", "approve"] = "read"
    token: str = secret("", "the token's secret")

    def validate(self, prefix: str, given: set[str]) -> None:
        for key in ("name", "scope"):
            if key not in given:
                raise ConfigError(
                    f"{prefix}.{key}", f"missing (each token has a name and a scope: {', '.join(SCOPES)})"
                )
        if self.token == "env:":
            raise ConfigError(
                f"{prefix}.token_file", "missing: each token's secret is read from token_file (or token_env)"
            )
        if self.name in RESERVED_TOKEN_NAMES:
            raise ConfigError(f"{prefix}.name", f"{self.name!r} is reserved (a `source` label value of its own)")


def check_token_names(tokens: list[NamedTokenConfig], key: str, *reserved: str) -> None:
    """Each name once in a list of tokens, and none a name the single older token of that API goes by."""
    seen: set[str] = set()
    for i, token in enumerate(tokens):
        if token.name in seen:
            raise ConfigError(f"{key}[{i}].name", f"{token.name!r} is given twice; names tell the tokens apart")
        if token.name in reserved:
            raise ConfigError(f"{key}[{i}].name", f"{token.name!r} is the name of the single token (its key)")
        seen.add(token.name)


@dataclass
class BotConfig:
    name: str = checked("paper-1", _check_name)
    venue: str = checked("paper", _check_name)
    strategy: str = checked("demo", _check_name)
    # What the client ids of this bot's orders start with (`<prefix>-<run>-<n>`): how its orders are told from other
    # bots' on an account. Empty: derived from the name (`order_id_prefix`: distinct names never share one).
    order_id_prefix: str = checked("", lambda v: None if v == "" else _check_name(v))
    listen: ListenConfig = field(default_factory=ListenConfig)
    # The single token of the control API: every right (destructive), its callers name themselves in the
    # X-Trading-Ops-Source header. Unset (no file, no variable) when control_tokens are given instead.
    control_token: str = secret("TRADING_OPS_CONTROL_TOKEN", "bearer token of the bot's control API")
    # Named tokens, each with a scope (read, operate, destructive): docs/configuration.md, "Tokens and scopes".
    control_tokens: list[NamedTokenConfig] = field(default_factory=list)
    data_dir: str = path_field("./var", _check_nonempty)
    # How often a bot on the runtime runs its strategy's step (the paper bot: paper.loop_interval_seconds).
    loop_interval_seconds: float = bounded(0.5, min=0.001)
    # A trading loop that has not completed an iteration for this long is hung (/healthz fails).
    heartbeat_timeout_seconds: float = bounded(15.0, min=0.1)
    # Market data older than this makes /readyz fail and the bot stop opening positions.
    market_data_stale_seconds: float = bounded(10.0, min=0.1)
    # A journal that cannot be written stops every order and fails /readyz at once; failing this long, /healthz too
    # (a restart may help a broken connection; it does not free a full disk, hence not at once).
    journal_failure_timeout_seconds: float = bounded(60.0, min=0.1)
    # Distinct values a single label may take before new ones fold into "other".
    cardinality_limit: int = bounded(200, min=1)
    # Memory the bot may use; 0 means the cgroup limit, or the machine's memory when there is none.
    memory_limit_bytes: int = bounded(0, min=0)
    event_loop_lag_interval_seconds: float = bounded(0.25, min=0.01)
    risk: RiskConfig = field(default_factory=RiskConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    dead_man_switch: DeadMansSwitchConfig = field(default_factory=DeadMansSwitchConfig)
    # Risk limits in stages, from paper to live (docs/readiness.md); none: no ramp.
    ramp: RampConfig = field(default_factory=RampConfig)
    # The reconciler's public keys this bot trusts for signed decisions (docs/readiness.md, "Signed decisions"): each
    # a PEM file (relative to this file) or `ed25519:<base64 of the 32 raw bytes>`. A ramp promotion, a live start and
    # clearing a loss-limit halt need a decision signed by one of them; none: the bot widens nothing.
    decision_keys: list[str] = field(default_factory=list)
    # A signed live_start decision handed to the bot at start (written by `trading-ops readiness BOT --record
    # --decision-out FILE`): a live venue with a ramp starts only with one that verifies.
    live_start_decision_file: str = path_field()
    # A file the bot logs to instead of stderr, rotated at log_file_max_bytes (0: never) keeping log_file_backups.
    log_file: str = path_field("")
    log_file_max_bytes: int = bounded(10_000_000, min=0)
    log_file_backups: int = bounded(5, min=0)
    # Who rotates the log on stderr when it is not the journal (which the bot finds by itself): `docker`, a logging
    # driver with max-size as docker-compose.yml sets. Empty: nobody the bot knows of (log_rotation fails).
    log_rotated_by: Literal["", "docker"] = ""

    def validate(self, prefix: str, given: set[str]) -> None:
        check_token_names(self.control_tokens, f"{prefix}.control_tokens", "control_token")
        budget, limit = self.resources.memory_budget_bytes, self.memory_limit_bytes
        if budget and limit and budget > limit:
            raise ConfigError(
                f"{prefix}.resources.memory_budget_bytes",
                f"{budget} is more than {prefix}.memory_limit_bytes ({limit}): the budget would never be reached",
            )


@dataclass
class PaperConfig:
    symbols: list[str] = field(default_factory=lambda: ["BTC-USD", "ETH-USD", "SOL-USD"])
    quote_asset: str = checked("USD", _check_asset)
    starting_balance: float = bounded(100_000.0, min=0)
    seed: int = 0
    tick_interval_seconds: float = bounded(0.1, min=0.001)
    loop_interval_seconds: float = bounded(0.5, min=0.001)
    # Simulated venue behaviour.
    order_latency_seconds: float = bounded(0.005, min=0)
    reject_probability: float = bounded(0.02, min=0, max=1)
    partial_fill_probability: float = bounded(0.3, min=0, max=1)
    maker_fee_rate: float = bounded(0.0002, min=0, max=0.1)
    taker_fee_rate: float = bounded(0.0005, min=0, max=0.1)
    volatility: float = bounded(0.0005, min=0, max=0.5)
    # Strategy limits.
    order_notional: float = bounded(1_000.0, min=0)
    max_position_notional: float = bounded(10_000.0, min=0)
    order_max_age_seconds: float = bounded(5.0, min=0.01)
    daily_loss_limit: float = bounded(5_000.0, min=0)
    # The bot's broker: true (the default) streams the venue's order updates, fills and quotes over its push channel
    # (REST polls kept as the fallback and the reconciliation); false: REST only, the venue's events as direct calls.
    stream: bool = True
    stream_poll_seconds: float = bounded(5.0, min=0.1)  # the REST poll while streaming (1 s while a stream is down)

    def validate(self, prefix: str, given: set[str]) -> None:
        if not self.symbols:
            raise ConfigError(f"{prefix}.symbols", "must list at least one symbol")
        seen: set[str] = set()
        for i, symbol in enumerate(self.symbols):
            key = f"{prefix}.symbols[{i}]"
            match = SYMBOL_PATTERN.match(symbol)
            if match is None:
                raise ConfigError(key, f"expected BASE-QUOTE in capitals such as BTC-USD, got {_describe(symbol)}")
            if match.group(2) != self.quote_asset:
                raise ConfigError(
                    key, f"{symbol} is quoted in {match.group(2)}, but {prefix}.quote_asset is {self.quote_asset}"
                )
            if symbol in seen:
                raise ConfigError(key, f"{symbol} is listed twice")
            seen.add(symbol)
        if self.order_notional > self.max_position_notional:
            raise ConfigError(
                f"{prefix}.order_notional",
                f"{self.order_notional:g} is more than {prefix}.max_position_notional ({self.max_position_notional:g})",
            )


@dataclass
class NotificationsConfig:
    # apprise URLs (mailto://, slack://, tgram://, json://, ...). They carry credentials, so they come
    # from a file (one URL per line) or an environment variable (whitespace separated).
    urls: str = secret("TRADING_OPS_APPRISE_URLS", "apprise notification URLs")


# Reconciliation discrepancy classes, the policies each may be given, and the default policy of each.
RECONCILIATION_POLICIES: dict[str, tuple[str, ...]] = {
    "missing_fill": ("adopt", "alert", "halt"),
    "duplicate_fill": ("adopt", "alert", "halt"),
    "unknown_order": ("cancel", "adopt", "alert", "halt"),
    "order_state_mismatch": ("adopt", "alert", "halt"),
    "vanished_order": ("adopt", "alert", "halt"),
    "position_mismatch": ("adopt", "alert", "halt"),
    "balance_mismatch": ("adopt", "alert", "halt"),
}
DEFAULT_RECONCILIATION_POLICIES = {
    "missing_fill": "adopt",
    "duplicate_fill": "adopt",
    "unknown_order": "cancel",
    "order_state_mismatch": "adopt",
    "vanished_order": "adopt",
    "position_mismatch": "halt",
    "balance_mismatch": "adopt",
}


@dataclass
class RecoveryConfig:
    # The bot writes a heartbeat to the database this often while its trading loop makes progress.
    heartbeat_interval_seconds: float = bounded(1.0, min=0.01)
    # At start, a previous run without the clean-shutdown marker whose last heartbeat is older than this
    # crashed; a younger one may still be running, so the start waits until it is this old (or refuses).
    crash_timeout_seconds: float = bounded(10.0, min=0.05)
    # SIGTERM/SIGINT: stop orders, handle open orders, flush, mark clean, exit; forced exit past this.
    shutdown_deadline_seconds: float = bounded(10.0, min=0.1)
    open_orders_on_shutdown: Literal["cancel", "keep"] = "cancel"
    # Reconciliation runs at start, after every reconnect, on the `reconcile` command and this often
    # (0 = no scheduled runs); until the startup run passes it is retried every reconcile_retry_seconds.
    reconcile_interval_seconds: float = bounded(60.0, min=0)
    reconcile_retry_seconds: float = bounded(2.0, min=0.01)
    # How far back venue fills are compared with the journal (0 = every fill the venue still returns).
    fills_lookback_seconds: float = bounded(86_400.0, min=0)
    # Policy per discrepancy class: adopt (the venue's state into the journal), cancel (unknown orders
    # only), alert (record and export only) or halt (the kill switch). Classes left out keep their default.
    policies: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RECONCILIATION_POLICIES))

    def __post_init__(self) -> None:
        merged = dict(DEFAULT_RECONCILIATION_POLICIES)
        for name, policy in self.policies.items():
            allowed = RECONCILIATION_POLICIES.get(name)
            if allowed is None:
                known = ", ".join(RECONCILIATION_POLICIES)
                raise ConfigError(f"recovery.policies.{name}", f"unknown discrepancy class (known: {known})")
            if policy not in allowed:
                raise ConfigError(
                    f"recovery.policies.{name}", f"expected one of {', '.join(allowed)}, got {_describe(policy)}"
                )
            merged[name] = policy
        self.policies = merged


@dataclass
class ReconcilerListenConfig(ListenConfig):
    port: int = bounded(9102, min=0, max=65535)


def _check_optional_http_url(value: str) -> str | None:
    return None if value == "" else _check_http_url(value)


def _check_http_urls(values: list[str]) -> str | None:
    return next((problem for v in values if (problem := _check_http_url(v))), None)


def _check_networks(values: list[str]) -> str | None:
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            return f"expected an address or a network (10.0.0.0/8, fd00::/8), got {_describe(value)}"
    return None


def _check_prometheus_urls(value: str | list[str]) -> str | None:
    if isinstance(value, str):
        return _check_http_url(value)
    if not value:
        return "expected a URL or a list of the members' URLs, got an empty list"
    if len({v.rstrip("/") for v in value}) < len(value):
        return "a member is named twice"
    return _check_http_urls(value)


def _check_unit(value: str) -> str | None:
    if value == "" or UNIT_PATTERN.match(value):
        return None
    return f"expected a systemd unit name such as trading-ops-bot@paper-1.service, got {_describe(value)}"


def _check_container(value: str) -> str | None:
    if value == "" or CONTAINER_PATTERN.match(value):
        return None
    return f"expected a container name such as trading-ops-paper-bot, got {_describe(value)}"


def _check_optional_exchange(value: str) -> str | None:
    return None if value == "" else _check_name(value)


@dataclass
class BotVenueConfig:
    """The reconciler's own hands at a bot's account (a playbook's `venue` step), for when the bot is gone: the
    exchange through ccxt, with an API key of the reconciler's own on that account (trade permission only, never
    withdrawal), read from a file or a variable. Empty `exchange`: none configured, a venue step refuses."""

    exchange: str = checked("", _check_optional_exchange)  # a ccxt exchange id, e.g. kraken
    api_key: str = secret("", "the reconciler's own API key on the bot's account (trade permission only)")
    api_secret: str = secret("", "the secret of that API key")
    # Overrides of the exchange's API URLs by name (kraken: public, private), e.g. a paper gateway's address.
    urls: dict[str, str] = field(default_factory=dict)
    # The bot's symbols (BASE-QUOTE): what `positions` reports and `flatten` closes.
    symbols: list[str] = field(default_factory=list)
    # How the bot's orders are told from others' on the account: the client order ids the runtime gives them start
    # with `<prefix>-`. Empty: derived from the bot's name as the runtime derives it (`order_id_prefix`).
    order_id_prefix: str = checked("", lambda v: None if v == "" else _check_name(v))
    # Which account at the venue this is, in a name of yours (a Kraken subaccount's name, say): one account per bot,
    # so two bots may not name the same one. Empty: the account the reconciler's key (its file or variable) reaches.
    account: str = checked("", lambda v: None if v == "" else _check_name(v))
    # Base-asset balances that are not the bot's (its position is the balance less this), as ccxt.position_baseline.
    position_baseline: dict[str, float] = field(default_factory=dict)
    timeout_seconds: float = bounded(10.0, min=0.1)
    # TLS to an https venue whose certificate is not in ccxt's CA bundle (a paper gateway with a web_config_file).
    tls: TLSClientConfig = field(default_factory=TLSClientConfig)

    def validate(self, prefix: str, given: set[str]) -> None:
        if not self.exchange:
            if given - {"exchange"}:
                raise ConfigError(f"{prefix}.exchange", "missing: the ccxt exchange id of the bot's venue")
            return
        for name in ("api_key", "api_secret"):
            if getattr(self, name) == "env:":
                raise ConfigError(
                    f"{prefix}.{name}_file",
                    f"missing: the reconciler's key is read from {name}_file "
                    f"(or {name}_env), never written in the file",
                )
        if not self.symbols:
            raise ConfigError(f"{prefix}.symbols", "must list the bot's symbols (what positions and flatten cover)")
        _check_account(prefix, self.symbols, self.urls, self.position_baseline)


def _check_account(prefix: str, symbols: list[str], urls: dict[str, str], position_baseline: dict[str, float]) -> None:
    """What a ccxt account's settings share, the bot's broker's and the reconciler's venue step's: its symbols, the
    URLs that replace ccxt's and the balances that are not the bot's."""
    for i, symbol in enumerate(symbols):
        if SYMBOL_PATTERN.match(symbol) is None:
            raise ConfigError(
                f"{prefix}.symbols[{i}]", f"expected BASE-QUOTE in capitals such as BTC-USD, got {_describe(symbol)}"
            )
    for name, url in urls.items():
        if problem := _check_http_url(url):
            raise ConfigError(f"{prefix}.urls.{name}", problem)
    for asset in position_baseline:
        if problem := _check_asset(asset):
            raise ConfigError(f"{prefix}.position_baseline.{asset}", problem)


def _check_optional_host(value: str) -> str | None:
    return None if value == "" else _check_host(value)


def _check_remote_user(value: str) -> str | None:
    if value == "" or re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", value):
        return None
    return f"expected a user name (lower case letters, digits, '_', '.' or '-'), got {_describe(value)}"


def _check_docker_url(value: str) -> str | None:
    if value == "":
        return None
    scheme, sep, rest = value.partition("://")
    if sep and scheme in ("tcp", "ssh") and rest and "/" not in rest.rstrip("/"):
        return None
    return f"expected tcp://HOST:2376 (TLS) or ssh://USER@HOST, got {_describe(value)}"


@dataclass
class BotHostConfig:
    """The host a bot runs on when it is not the reconciler's own: systemd steps reach its service manager as
    `systemctl --host` does (SSH to it, `systemd-stdio-bridge` there), docker steps its Docker engine over TLS
    (`docker_url: tcp://host:2376`) or SSH (`ssh://user@host`). Known-hosts checking always: the host's key must be
    in `known_hosts_file`. Empty `address`: the reconciler's own host (reconciler.systemctl, docker_socket)."""

    address: str = checked("", _check_optional_host)  # the host's name or IP address
    ssh_port: int = bounded(22, min=1, max=65535)
    ssh_user: str = checked("", _check_remote_user)  # empty: the reconciler's user name
    identity_file: str = path_field()  # the reconciler's private key for this host; empty: ssh's default keys
    known_hosts_file: str = path_field()  # the host's key (StrictHostKeyChecking=yes); required with an address
    connect_timeout_seconds: float = bounded(10.0, min=1)
    # Its Docker engine: tcp://HOST:2376 with docker_tls (a client certificate), or ssh://USER@HOST[:PORT] (the
    # ssh settings above, `docker system dial-stdio` there). Empty: docker steps use reconciler.docker_socket.
    docker_url: str = checked("", _check_docker_url)
    docker_tls: TLSClientConfig = field(default_factory=TLSClientConfig)

    def validate(self, prefix: str, given: set[str]) -> None:
        if given - {"address"} and not self.address and not self.docker_url.startswith("tcp://"):
            raise ConfigError(f"{prefix}.address", "missing: the host's name or address")
        if self.address and not self.known_hosts_file:
            raise ConfigError(
                f"{prefix}.known_hosts_file", "missing: the host's key is checked (StrictHostKeyChecking=yes)"
            )
        if self.docker_url.startswith("tcp://"):
            tls = self.docker_tls
            if not (tls.ca_file and tls.cert_file and tls.key_file):
                raise ConfigError(
                    f"{prefix}.docker_tls",
                    "a tcp:// Docker engine is reached with TLS: give ca_file, cert_file and key_file",
                )


@dataclass
class TargetConfig:
    # Base URL of the bot's HTTP server; the bot action posts to <url>/control/<command>.
    url: str = checked("http://127.0.0.1:9101", _check_http_url)
    token: str = secret("TRADING_OPS_CONTROL_TOKEN", "bearer token of this bot's control API")
    # A token of the `destructive` scope, sent only with the commands that need it (cancel_all, flatten, halt,
    # clear_halt); `token` then needs no more than `operate`. Unset: `token` is sent with every command.
    destructive_token: str = secret("", "bearer token of this bot's control API for destructive commands")
    # The systemd unit running it: what a playbook's `systemd` step without `unit:` restarts.
    unit: str = checked(PAPER_BOT_UNIT, _check_unit)
    # Its container (docker compose): what a `docker` step without `container:` restarts.
    container: str = checked(PAPER_BOT_CONTAINER, _check_container)
    # The reconciler's own key on the bot's account at its venue: what a `venue` step uses (bots[].venue).
    venue: BotVenueConfig = field(default_factory=BotVenueConfig)
    # The host it runs on, when not the reconciler's own: where systemd and docker steps act (bots[].host).
    host: BotHostConfig = field(default_factory=BotHostConfig)


@dataclass
class BudgetConfig:
    # At most this many actions per target (an alert's instance) in any rolling hour ...
    max_actions_per_target_per_hour: int = bounded(6, min=1)
    # ... and this many in total. Spending a budget opens the circuit and escalates.
    max_actions_per_hour: int = bounded(60, min=1)
    # An open circuit closes again after this long.
    circuit_cool_off_seconds: float = bounded(1800.0, min=1)


@dataclass
class FourEyesConfig:
    """How many people other than the requester must approve each kind of decision that widens risk (four eyes,
    docs/reconciler.md#approvals). 0 is for a one-person team only, set explicitly: the requester's own approval then
    counts, and every such decision says "approved by its requester (allowed by configuration)". A step the
    reconciler asks a person to approve (a venue-direct flatten) always needs one person, never the reconciler."""

    # A ramp promotion (`trading-ops ramp promote`): the bot's limits widen.
    ramp_promotion: int = bounded(1, min=0, max=5)
    # A live start (paper to live).
    live_start: int = bounded(1, min=0, max=5)
    # Clearing a loss-limit halt: the bot may trade again.
    clear_halt: int = bounded(1, min=0, max=5)


@dataclass
class WatchdogConfig:
    # The always-firing alert that proves the alerting pipeline works end to end.
    alertname: str = checked("Watchdog", _check_nonempty)
    # No Watchdog for this long = the pipeline is broken: notify through apprise directly. 0 disables.
    window_seconds: float = bounded(600.0, min=0)
    check_interval_seconds: float = bounded(15.0, min=0.05)


@dataclass
class EscalationConfig:
    # Every page the reconciler owes is a ledger row (the outbox) posted to Alertmanager until a member takes it,
    # however long that takes. A post Alertmanager did not take is tried again after this long, doubling ...
    retry_initial_seconds: float = bounded(1.0, min=0.01)
    # ... up to this: once Alertmanager is back, every pending page is posted within about this long.
    retry_max_seconds: float = bounded(10.0, min=0.01)
    # A page Alertmanager has not taken this long after it was owed also goes out through notifications.urls
    # (apprise), and the episode counts as escalated from then on; the outbox still posts it to Alertmanager.
    fallback_after_seconds: float = bounded(30.0, min=0)


@dataclass
class ReconcilerConfig:
    listen: ReconcilerListenConfig = field(default_factory=ReconcilerListenConfig)
    token: str = secret("TRADING_OPS_RECONCILER_TOKEN", "bearer token Alertmanager sends to the webhook")
    # Bearer token of the episode API (GET /api/v1/episodes...), which shows labels, annotations and step outputs:
    # not the webhook's (whoever can post alerts need not read them). Unset = the episode API answers 401.
    read_token: str = secret("TRADING_OPS_RECONCILER_READ_TOKEN", "bearer token of the episode API")
    # Named tokens of the API (not of the webhook), each with a scope: read (episodes), operate, destructive,
    # approve (approvals). read_token is one more, named read_token, of the read scope.
    api_tokens: list[NamedTokenConfig] = field(default_factory=list)
    # The reconciler's own address as operators reach it (https://reconciler.example.org): its pages to Alertmanager
    # then carry a `console_url` annotation, a link into the operator console (/ui/) at their episode or approval.
    # Empty = no link.
    external_url: str = checked("", _check_optional_http_url)
    # Load balancers and proxies in front of the console (addresses or networks): a login through one of them counts
    # against the address it appended to X-Forwarded-For (read from the right, past every trusted hop), not against
    # the proxy's. Empty = the connection's address, X-Forwarded-For never believed.
    trusted_proxies: list[str] = checked([], _check_networks)
    # Name of this replica in claims and logs (empty = the host name). Replicas may share it: a claim is taken
    # over only when its lease expired or its process is provably gone.
    instance: str = ""
    # A packaged playbook (`default`: systemd units, `docker`: the docker compose stack) or a playbook file;
    # empty = default.
    playbook: str = ""
    # Prometheus, or every member of an HA pair (a list): each query goes to the member that answered last, and one
    # that fails there is asked of the next before it counts as failed, so one member down fails no verification.
    prometheus_url: str | list[str] = checked("http://127.0.0.1:9090", _check_prometheus_urls)
    alertmanager_url: str = checked("http://127.0.0.1:9093", _check_http_url)
    # The other members of a clustered Alertmanager (the URL above is one of them): escalations are posted to every
    # member, as Prometheus sends its alerts, and reads (silences, still-firing checks) go to the first that answers,
    # so one member down pages nobody less and holds nothing back.
    alertmanager_peers: list[str] = checked([], _check_http_urls)

    @property
    def alertmanager_urls(self) -> list[str]:
        return [self.alertmanager_url, *self.alertmanager_peers]

    @property
    def prometheus_urls(self) -> list[str]:
        return [self.prometheus_url] if isinstance(self.prometheus_url, str) else list(self.prometheus_url)

    # Webhook bodies larger than this get 413 (Alertmanager does not resend after a 4xx: such a notification is
    # lost). Paired with the receiver's max_alerts in alertmanager/alertmanager.yml (1000): 1000 alerts of the
    # largest shipped rule (the SLO burn-rate alerts, whose generatorURL carries a long expression) are about 1.9 MB,
    # so 8 MiB leaves room for labels and annotations 3x larger.
    max_body_bytes: int = bounded(8 * 1024 * 1024, min=1024)
    # Record what would be done, do nothing.
    dry_run: bool = False
    # How often the workers look for due episodes (new notifications wake them at once).
    poll_interval_seconds: float = bounded(1.0, min=0.01)
    # A claim on an episode and its target lasts this long and is renewed while the run is alive.
    lease_seconds: float = bounded(30.0, min=0.5)
    # Outcomes of steps the ledger has not taken yet (the database unreachable when a step finished, and the
    # reconciler stopping before it came back): one file each, written to the ledger at the next start before
    # anything else. Relative to this file's folder.
    spool_dir: str = path_field("./var/reconciler-spool", _check_nonempty)
    max_concurrent_runs: int = bounded(4, min=1)
    # Intake group commit: notifications stored per transaction at most.
    batch_max: int = bounded(256, min=1)
    # Label values reach exec steps (as environment variables) and templates only when they match this (RE2). ':' is
    # for instance labels (host:port), '@' for systemd template units; neither can move an http step's request
    # (values are URL-encoded there, and its host comes from its URL template).
    label_value_pattern: str = checked(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$", _check_regex)
    # Hosts (`host` for any port, or `host:port`) the playbook's `http` steps may send requests to. A step's host is
    # written in its URL template, never taken from a label; a host not listed here refuses the playbook at start.
    http_allowed_hosts: list[str] = checked([], _check_host_ports)
    # Outputs of steps are kept up to this many bytes.
    output_limit_bytes: int = bounded(4096, min=64)
    # Command used by systemd steps (`<systemctl> restart <unit>`).
    systemctl: list[str] = checked(["systemctl"], _check_command)
    docker_socket: str = checked("/var/run/docker.sock", _check_nonempty)
    # Ask Alertmanager whether a matching silence is active before acting (maintenance: the episode is parked
    # until the silence ends), and refresh tradingops_maintenance_active every 15 s.
    check_silences: bool = True
    # The ledger keeps notifications, and closed episodes with their attempts and steps, this many days (pruned
    # hourly; open episodes are never pruned). A firing alert that started longer ago is not acted on.
    retention_days: int = bounded(30, min=1, max=36500)
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    # Four eyes: how many people other than the requester approve each kind of widening decision.
    approvals: FourEyesConfig = field(default_factory=FourEyesConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    # TLS of every request the reconciler sends to an https URL: bots' control APIs, Prometheus, Alertmanager.
    tls: TLSClientConfig = field(default_factory=TLSClientConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)
    # Bot instance (the `instance` label of its alerts) -> its control API.
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    # The Ed25519 private key (PEM) the reconciler signs decisions with once people approved them (a ramp promotion,
    # clearing a loss-limit halt, a live start): read from decision_key_file (owner-only) or decision_key_env; the
    # bots trust its public key (bot.decision_keys). `trading-ops up` generates one for the local stack.
    decision_key: str = secret("", "Ed25519 private key (PEM) the reconciler signs decisions with")
    # How long a decision sent with a control command holds (it is sent at once), and one written for a live start.
    decision_ttl: str = checked("5m", _check_positive_duration)
    live_start_decision_ttl: str = checked("7d", _check_positive_duration)

    def validate(self, prefix: str, given: set[str]) -> None:
        check_token_names(self.api_tokens, f"{prefix}.api_tokens", "read_token")


def _check_instance(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or _check_host(host.strip("[]")):
        return f"expected host:port (the bot's scrape target), got {_describe(value)}"
    return None


# ---- backup and upkeep (trading_ops.ops) ------------------------------------------------------------------------
# Schedules are cron-like "M H DOM MON DOW" (lists, ranges, steps, names), checked by the scheduler's own parser
# (trading_ops.cron) so that every schedule the file accepts is one the scheduler can run.


def _check_cron(value: str) -> str | None:
    return _check_schedule(value)


def _check_time_zone(value: str) -> str | None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {_describe(value)} (an IANA name such as UTC or America/New_York)"
    return None


def _check_optional_duration(value: str) -> str | None:
    from trading_ops.durations import parse_duration

    if value == "":
        return None
    try:
        parse_duration(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class BotEntryConfig:
    """One bot the operations side watches and heals: Prometheus scrapes `instance`, the reconciler acts on `url`."""

    name: str = checked("paper-1", _check_name)
    # What runs it (`trading-ops up --bot KIND`): paper, or a kind of bot_kinds; `freqtrade` is a freqtrade watched by
    # the `trading-ops freqtrade` sidecar (instance and url are the sidecar's listen address for it: Prometheus scrapes
    # it in the freqtrade job, `config targets --job freqtrade`).
    kind: str = checked("paper", _check_name)
    # host:port of its /metrics: the scrape target, and so the `instance` label of its series and alerts.
    instance: str = checked("127.0.0.1:9101", _check_instance)
    # Base URL of its control API (usually http://<instance>).
    url: str = checked("http://127.0.0.1:9101", _check_http_url)
    token: str = secret("TRADING_OPS_CONTROL_TOKEN", "bearer token of this bot's control API")
    # A `destructive` token sent only with cancel_all, flatten, halt and clear_halt (then `token` may be `operate`).
    destructive_token: str = secret("", "bearer token of this bot's control API for destructive commands")
    # Its systemd unit (what the playbook's restart steps restart); default: trading-ops-paper-bot.service for the
    # paper kind, else the template unit's instance trading-ops-bot@<name>.service.
    unit: str = checked("", _check_unit)
    # Its container under docker compose; default: trading-ops-paper-bot for the paper kind, else trading-ops-<name>.
    container: str = checked("", _check_container)
    # The reconciler's own hands at this bot's account, for when the bot is gone (a playbook's `venue` step):
    # docs/deployment.md, "A fleet on several hosts".
    venue: BotVenueConfig = field(default_factory=BotVenueConfig)
    # The host it runs on, when not the reconciler's: systemd steps reach it with `systemctl --host` over SSH, docker
    # steps its Docker engine over TLS or SSH (docs/deployment.md, "A fleet on several hosts").
    host: BotHostConfig = field(default_factory=BotHostConfig)

    @property
    def systemd_unit(self) -> str:
        if self.unit:
            return self.unit
        return KIND_UNITS.get(self.kind) or f"trading-ops-bot@{self.name}.service"

    @property
    def docker_container(self) -> str:
        if self.container:
            return self.container
        return KIND_CONTAINERS.get(self.kind) or f"trading-ops-{self.name}"


def _check_remote_path(value: str) -> str | None:
    if not value or value.startswith("-") or any(c in value for c in "\n\r\0"):
        return f"expected a directory on the remote host, got {_describe(value)}"
    return None


@dataclass
class BackupRemoteConfig:
    # The off-host repository: a directory on another host, reached over SSH with OpenSSH's `ssh` (key auth only,
    # BatchMode). The remote needs a POSIX shell with cat, mkdir, mv, rm, ls and sha256sum (any Linux host).
    host: str = checked("", _check_optional_host)
    port: int = bounded(22, min=1, max=65535)
    user: str = checked("", _check_remote_user)  # empty: ssh's default (the local user, or ~/.ssh/config's)
    path: str = checked("trading-ops-backups", _check_remote_path)  # relative paths are in the user's home
    identity_file: str = path_field()  # a private key (relative to this file); empty: ssh's default keys
    known_hosts_file: str = path_field()  # the remote's host key (StrictHostKeyChecking=yes); empty: ~/.ssh/known_hosts
    ssh: str = checked("ssh", _check_nonempty)
    connect_timeout_seconds: float = bounded(10.0, min=1)
    # true: a backup is complete only once its off-host copy exists and its checksum verified there; with no host
    # every backup run fails (loudly: TradingOpsBackupFailed). false: local-only backups are accepted.
    required: bool = True


@dataclass
class BackupPitrConfig:
    # PostgreSQL point-in-time recovery with pgBackRest: `backup run` also takes a pgBackRest backup of the cluster
    # that holds the database (differential; full when the last full is older than full_every_days), and the
    # cluster archives its WAL with `archive_command = 'pgbackrest --config=… --stanza=… archive-push %p'`.
    # `backup restore --to-time T --pg-data DIR` restores the cluster as of T into DIR (a stopped or new cluster).
    enabled: bool = False
    stanza: str = checked("trading-ops", _check_nonempty)
    # pgBackRest's own configuration (repo1-path, pg1-path, …).
    config_file: str = path_field("/etc/pgbackrest/pgbackrest.conf")
    # How pgBackRest runs. It reads the data directory: the cluster's owner, or a user in its group when the cluster
    # has group access (initdb --allow-group-access), as the reconciler's user under systemd (no sudo there).
    command: list[str] = checked(["pgbackrest"], _check_command)
    full_every_days: float = bounded(7.0, min=0)
    timeout_seconds: float = bounded(3600.0, min=1)
    # pgBackRest's repository (its repo1-path), when this host's user can read it: copied after each pgBackRest
    # backup into <backup.remote.path>/pgbackrest with rsync over SSH (the backups and the WAL archived so far).
    # Empty: not copied (the repository is on another host or a mount of one already), by archive-wal either.
    repo_path: str = path_field()
    rsync: str = checked("rsync", _check_nonempty)
    # WAL leaves this host continuously, not only at backup runs: the cluster's archive_command is
    # `trading-ops --config=… backup archive-wal %p`, which pushes each segment into the local repository with
    # `<archive_push_command> archive-push` and copies the repository's WAL archive to <backup.remote.path>/pgbackrest
    # over SSH before it reports success (PostgreSQL keeps the segment and retries until then). The archiver runs as
    # the cluster's owner already: pgBackRest as it is, no runuser.
    archive_push_command: list[str] = checked(["pgbackrest"], _check_command)
    # The longest a committed transaction may stay on this host only: the cluster's archive_timeout must be set and
    # at most this (`backup run` fails otherwise), so a segment is switched, archived and shipped within it.
    archive_timeout_seconds: float = bounded(60.0, min=1)
    # Where `backup archive-wal` records its shipments (metrics, alerts); empty: wal-archive-state.json in
    # backup.directory. The cluster's owner must be able to write it.
    wal_state_file: str = path_field()


@dataclass
class BackupConfig:
    # Where backups and their manifests are kept (relative to this file's directory).
    directory: str = path_field("var/backups", _check_nonempty)
    # When the scheduled backup runs (cron, in time_zone).
    schedule: str = checked("0 * * * *", _check_cron)
    time_zone: str = checked("UTC", _check_time_zone)
    # Grandfather-father-son retention: the newest backup of each of the last N hours, days and ISO weeks.
    keep_hourly: int = bounded(24, min=0)
    keep_daily: int = bounded(7, min=0)
    keep_weekly: int = bounded(4, min=0)
    # And always the N newest backups, whatever their hours: a backup taken by hand just before the scheduled one (or
    # twice in a minute) is never deleted by the next run's retention.
    keep_last: int = bounded(3, min=1)
    # Also copy each backup and its manifest to this directory (another disk, a mounted remote); empty = no copy.
    copy_to: str = path_field()
    # The second copy of every backup, on another host (see BackupRemoteConfig).
    remote: BackupRemoteConfig = field(default_factory=BackupRemoteConfig)
    pitr: BackupPitrConfig = field(default_factory=BackupPitrConfig)
    # The restore drill (`trading-ops backup drill`): the latest backup restored into a scratch database, migrated
    # to head and checked (journal consistency), on this schedule (cron, in time_zone); false: not scheduled.
    drill: bool = True
    drill_schedule: str = checked("30 4 * * *", _check_cron)
    # `restore` refuses a database a bot or the reconciler used this recently (heartbeat, lease) without --force.
    live_seconds: float = bounded(60.0, min=0)
    # PostgreSQL client programs (from postgresql-client), found on PATH unless a path is given.
    pg_dump: str = checked("pg_dump", _check_nonempty)
    pg_restore: str = checked("pg_restore", _check_nonempty)
    timeout_seconds: float = bounded(3600.0, min=1)


@dataclass
class CleanupDirConfig:
    # `{data_dir}` in path is bot.data_dir. Only regular files under path matching pattern are ever deleted.
    path: str = path_field("{data_dir}/scratch", _check_nonempty)
    pattern: str = checked("*", _check_nonempty)
    # Files older than this are deleted ("" = no age rule) ...
    max_age: str = checked("", _check_optional_duration)
    # ... then the oldest until the matching files total at most this many bytes (-1 = no size rule).
    max_bytes: int = bounded(-1, min=-1)


def _default_cleanup() -> dict[str, CleanupDirConfig]:
    return {
        # The paper bot's fill_disk chaos and other throwaway files: disposable, all of it.
        "scratch": CleanupDirConfig(path="{data_dir}/scratch", pattern="*", max_bytes=0),
        # Rotated logs: a week, at most 1 GiB.
        "logs": CleanupDirConfig(path="{data_dir}/log", pattern="*.log.*", max_age="7d", max_bytes=1 << 30),
        "tmp": CleanupDirConfig(path="{data_dir}/tmp", pattern="*", max_age="1d"),
    }


@dataclass
class UpkeepConfig:
    schedule: str = checked("30 3 * * *", _check_cron)
    time_zone: str = checked("UTC", _check_time_zone)
    # VACUUM/ANALYZE (SQLite: PRAGMA optimize, VACUUM, ANALYZE; PostgreSQL: VACUUM (ANALYZE)).
    vacuum: bool = True
    # Journal rows (closed orders, fills of positions since flat again) older than this many days are deleted;
    # 0 keeps them forever. Never an open order, never the fills of a position that is still open.
    journal_retention_days: int = bounded(0, min=0)
    # Bot runs, recovery events and reconciliation runs older than this many days (0 = forever); a bot's last
    # run and unnotified events are kept. Ledger rows follow reconciler.retention_days.
    recovery_retention_days: int = bounded(90, min=0)
    # Directories cleaned by age and size, by name (the name labels the metrics).
    cleanup: dict[str, CleanupDirConfig] = field(default_factory=_default_cleanup)

    def validate(self, prefix: str, given: set[str]) -> None:
        for name in self.cleanup:
            if problem := _check_name(name):
                raise ConfigError(f"{prefix}.cleanup.{name}", problem)


# ---- scheduled operations: the scheduler, maintenance windows, the daily summary --------------------------


def _check_schedule_time_zone(value: str) -> str | None:
    from trading_ops.cron import ScheduleError, zone

    try:
        zone(value)
    except ScheduleError as exc:
        return str(exc)
    return None


def _check_schedule(value: str) -> str | None:
    from trading_ops.cron import CronSchedule, ScheduleError

    try:
        CronSchedule.parse(value)
    except ScheduleError as exc:
        return f"{exc}: {_describe(value)}"
    return None


def _check_time_of_day(value: str) -> str | None:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", value)
    return None if match else f"expected a local time HH:MM such as 16:30, got {_describe(value)}"


@dataclass
class SchedulerConfig:
    # Backups, upkeep, the daily summary and maintenance windows run inside the reconciler. Every replica runs the
    # scheduler; each slot is claimed in the database by exactly one of them.
    enabled: bool = True
    # A failed run is tried this many times in all, waiting retry_initial_seconds, then twice as long each time
    # up to retry_max_seconds.
    max_attempts: int = bounded(4, min=1)
    retry_initial_seconds: float = bounded(30.0, min=0.01)
    retry_max_seconds: float = bounded(900.0, min=0.01)
    # A claimed run renews its lease while it runs; a run whose lease passed belongs to a dead replica and is
    # taken over.
    lease_seconds: float = bounded(120.0, min=1)


@dataclass
class MaintenanceWindowConfig:
    # Cron-like "M H DOM MON DOW" in maintenance.time_zone: when the window opens.
    schedule: str = checked("0 3 * * sun", _check_schedule)
    duration: str = checked("30m", _check_positive_duration)
    reason: str = checked("scheduled maintenance", _check_nonempty)
    # Alerts matching these are silenced; the reconciler.targets they match are paused.
    matchers: dict[str, str] = field(default_factory=lambda: {"service": "tradingbot"})

    def validate(self, prefix: str, given: set[str]) -> None:
        if not self.matchers:
            raise ConfigError(f"{prefix}.matchers", "must name at least one label")
        for name, value in self.matchers.items():
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
                raise ConfigError(f"{prefix}.matchers.{name}", "not a label name")
            if not value:
                raise ConfigError(f"{prefix}.matchers.{name}", "must not be empty")


@dataclass
class MaintenanceConfig:
    time_zone: str = checked("UTC", _check_schedule_time_zone)
    # Scheduled windows by name.
    windows: dict[str, MaintenanceWindowConfig] = field(default_factory=dict)


@dataclass
class ReportConfig:
    # The daily summary, sent through notifications.urls at daily_at (local time in `time_zone`); it covers the
    # 24 hours before that moment.
    enabled: bool = True
    daily_at: str = checked("00:00", _check_time_of_day)
    time_zone: str = checked("UTC", _check_schedule_time_zone)
    # The weekly review (docs/readiness.md), sent beside the daily summary at daily_at on weekly_on: the seven days
    # before, each bot against the readiness criteria day by day, its ramp's stages, the alerts and recoveries.
    weekly: bool = True
    weekly_on: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] = "monday"


@dataclass
class ReadinessConfig:
    """What `trading-ops readiness BOT` judges a bot's paper run by (docs/readiness.md): every threshold defaults to
    the seeds' production checklist (phase 2: 3 to 5 days, 120+ hours, with every metric in range; the final
    approval's 99 % uptime and no breach of the daily loss limit)."""

    # The window of the Prometheus criteria when --window is not given.
    window: str = checked("5d", _check_positive_duration)
    # Share of the window the bot was scraped (`up`): at least this.
    min_uptime_ratio: float = bounded(0.99, min=0, max=1)
    # Process restarts in the window (deliberate or not; a crash is one too): at most this many.
    max_restarts: int = bounded(0, min=0)
    # Crashes in the window (runs that ended without a clean shutdown): at most this many.
    max_crashes: int = bounded(0, min=0)
    # Resident memory at its peak in the window: at most this (the seeds' 500 MB).
    max_memory_peak_bytes: int = bounded(500_000_000, min=1)
    # Resident memory's growth (its least-squares slope over the window), bytes per day: at most this ("stable").
    max_memory_growth_bytes_per_day: float = bounded(10_000_000.0, min=0)
    # Orders the venue acknowledged, of those sent: at least this (the seeds' trade success over 95 %).
    min_order_success_ratio: float = bounded(0.95, min=0, max=1)
    # Orders the venue rejected, of those sent: at most this.
    max_order_rejection_ratio: float = bounded(0.05, min=0, max=1)
    # Venue errors per request to the venue's API: at most this (the seeds' 0.1 %).
    max_api_error_ratio: float = bounded(0.001, min=0, max=1)
    # 99th percentile of the venue's answer time, seconds: at most this (the seeds' API response under 100 ms).
    max_api_latency_p99_seconds: float = bounded(0.1, min=0)
    # Share of the window each channel to the venue was connected: at least this (the seeds' WebSocket uptime 99 %).
    min_stream_uptime_ratio: float = bounded(0.99, min=0, max=1)
    # Breaches of the daily loss limit and of the drawdown limit in the window: at most this many.
    max_loss_limit_breaches: int = bounded(0, min=0)
    # Critical alerts of this bot that fired in the window: at most this many (the seeds' "no critical warnings").
    max_critical_alerts: int = bounded(0, min=0)
    # The bot's log: its file at its largest (bot.log_file), or what it wrote per day to stderr (the journal or Docker
    # keeps it): at most this (the seeds' "logs under 10 MB"). And it must rotate (bot.log_file_max_bytes, the journal,
    # or bot.log_rotated_by).
    max_log_bytes: int = bounded(10_000_000, min=1)
    # The last verified backup, the last passed restore drill and the last emergency stop (halt, then flatten) of the
    # bot: each at most this long ago.
    backup_verified_within: str = checked("7d", _check_positive_duration)
    restore_drill_within: str = checked("7d", _check_positive_duration)
    emergency_stop_within: str = checked("7d", _check_positive_duration)
    # Prometheus's retention (its --storage.tsdb.retention.time), when known: a ramp stage's window longer than it is
    # refused at load (Prometheus cannot hold that much history). Empty: asked of Prometheus when the verdict runs.
    prometheus_retention: str = checked("", _check_optional_duration)


@dataclass
class FreqtradeListenConfig(ListenConfig):
    port: int = bounded(9103, min=0, max=65535)


@dataclass
class FreqtradeTargetConfig:
    # freqtrade's API server (its config's api_server: listen_ip_address, listen_port, username, password).
    url: str = checked("http://127.0.0.1:8080", _check_http_url)
    username: str = checked("freqtrader", _check_nonempty)
    password: str = secret("TRADING_OPS_FREQTRADE_PASSWORD", "password of freqtrade's API server")
    # Where the sidecar serves this freqtrade's /metrics and /control: one port per freqtrade, so each is one
    # Prometheus target (its own `instance`) and one entry of the reconciler's targets.
    listen: FreqtradeListenConfig = field(default_factory=FreqtradeListenConfig)
    # The venue freqtrade trades on, reached by the sidecar itself through the ccxt broker (the same exchange, keys
    # and urls as freqtrade's `exchange` section; symbols = freqtrade's pairs as BASE-QUOTE) for `reconcile`.
    # Without it, `reconcile` answers 409.
    ccxt: CcxtConfig | None = None
    # freqtrade's log file (its `--logfile`) when the sidecar runs on its host and may read it: freqtrade's database
    # errors are read from it on every poll, so one freqtrade logged just before it exited is seen (its /logs, read
    # otherwise, dies with it). Empty: /logs only.
    log_file: str = ""
    # freqtrade streams its candles (its exchange.enable_ws on a venue it streams from): the sidecar exports its stream
    # state (tradingbot_stream_*) from the start, not only once freqtrade's log first shows its WebSocket.
    stream: bool = False


@dataclass
class FreqtradeConfig:
    # Bearer token of the sidecar's control API (the same for every watched freqtrade).
    control_token: str = secret("TRADING_OPS_CONTROL_TOKEN", "bearer token of the freqtrade sidecar's control API")
    # Named tokens with scopes, as bot.control_tokens (the same for every watched freqtrade).
    control_tokens: list[NamedTokenConfig] = field(default_factory=list)
    # How often freqtrade's API is asked; each poll is a handful of cheap GETs.
    poll_interval_seconds: float = bounded(2.0, min=0.05)
    request_timeout_seconds: float = bounded(3.0, min=0.05)
    # A loop iteration older than this makes the sidecar's /healthz fail (freqtrade's process_throttle_secs is 5 s
    # by default; the shipped TradingBotHeartbeatStale alert waits 15 s).
    heartbeat_timeout_seconds: float = bounded(15.0, min=0.1)
    # Targets with a `ccxt` venue are reconciled this often (0: only on the command and when freqtrade (re)starts).
    reconcile_interval_seconds: float = bounded(60.0, min=0)
    # Name (a label-safe word) -> one freqtrade.
    targets: dict[str, FreqtradeTargetConfig] = field(default_factory=dict)

    def validate(self, prefix: str, given: set[str]) -> None:
        check_token_names(self.control_tokens, f"{prefix}.control_tokens", "control_token")
        listens: dict[tuple[str, int], str] = {}
        for name, target in self.targets.items():
            key = f"{prefix}.targets.{name}"
            problem = _check_name(name)
            if problem:
                raise ConfigError(key, problem)
            where = (target.listen.host, target.listen.port)
            if target.listen.port and where in listens:
                raise ConfigError(
                    f"{key}.listen", f"{where[0]}:{where[1]} is already the listen address of {listens[where]}"
                )
            listens[where] = name


@dataclass
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


@dataclass
class GatewayListenConfig(ListenConfig):
    port: int = bounded(9110, min=0, max=65535)


@dataclass
class GatewayKeyConfig:
    """One more API key of the gateway's main account, as Kraken lets an account have several: each key has its own
    nonce, so each client of the account (a bot, its sidecar's reconciliation, a person's script) signs with its own and
    none has its orders refused because another's nonce arrived first."""

    api_key: str = secret("", "an API key of the main account")
    api_secret: str = secret("", "base64 API secret of that key")


@dataclass
class GatewayAccountConfig:
    """A sub-account of the gateway's venue, as Kraken's subaccounts: balances, orders and trades of its own on the
    same market, reached with its own API key (several bots on one venue never see each other's orders)."""

    name: str = checked("", _check_name)
    api_key: str = secret("", "API key of this sub-account")
    api_secret: str = secret("", "base64 API secret of that key")
    # More keys of this sub-account, as Kraken lets every account have several: one per client of it (the bot's own,
    # the reconciler's for its venue steps), each with its own nonce.
    extra_keys: list[GatewayKeyConfig] = field(default_factory=list)
    # Its state between restarts; empty: beside gateway.state_file as <stem>.<name><suffix> (none without it).
    state_file: str = path_field()


@dataclass
class GatewayConfig:
    """`trading-ops paper-gateway`: the paper venue (set up by the `paper` section) behind Kraken's REST API."""

    listen: GatewayListenConfig = field(default_factory=GatewayListenConfig)
    # The API key of the venue's main account and its secret (base64, as Kraken issues them).
    api_key: str = secret("TRADING_OPS_GATEWAY_API_KEY", "API key ccxt clients sign with")
    api_secret: str = secret("TRADING_OPS_GATEWAY_API_SECRET", "base64 API secret of that key")
    # Bearer token of POST /chaos/{fault} (`trading-ops gateway-chaos`).
    control_token: str = secret("TRADING_OPS_GATEWAY_CONTROL_TOKEN", "bearer token of the gateway's fault commands")
    # The venue's state survives restarts in this file (relative to this configuration); empty keeps it in memory.
    state_file: str = path_field()
    # The venue's order rate limit per account (a token bucket); past it AddOrder answers EOrder:Rate limit exceeded.
    orders_per_second: float = bounded(50.0, min=0.1)
    # Kraken's REST call counter per API key of this tier (trading_ops.venues.call_counter), past whose maximum a
    # private call answers EAPI:Rate limit exceeded; off: no such limit.
    call_counter: Literal["off", "starter", "intermediate", "pro"] = "off"
    # More keys of the main account (`api_key_file`/`_env`, `api_secret_file`/`_env` each): one per client of it.
    extra_keys: list[GatewayKeyConfig] = field(default_factory=list)
    # Sub-accounts on the same market, each with its own key (one per bot sharing the venue).
    accounts: list[GatewayAccountConfig] = field(default_factory=list)

    def validate(self, prefix: str, given: set[str]) -> None:
        seen = {GATEWAY_MAIN_ACCOUNT}
        for i, account in enumerate(self.accounts):
            if not account.name:
                raise ConfigError(f"{prefix}.accounts[{i}].name", "every sub-account needs a name")
            if account.name in seen:
                taken = "is the main account's name" if account.name == GATEWAY_MAIN_ACCOUNT else "is listed twice"
                raise ConfigError(f"{prefix}.accounts[{i}].name", f"{account.name} {taken}")
            seen.add(account.name)


@dataclass
class CcxtConfig:
    """A bot trading through ccxt (trading_ops.venues.ccxt): the exchange, its keys and where to reach it."""

    exchange: str = checked("kraken", _check_name)  # a ccxt exchange id
    api_key: str = secret("TRADING_OPS_CCXT_API_KEY", "the exchange API key")
    api_secret: str = secret("TRADING_OPS_CCXT_API_SECRET", "the exchange API secret")
    # Overrides of the exchange's API URLs by name (kraken: public, private), e.g. a paper gateway's address.
    urls: dict[str, str] = field(default_factory=dict)
    symbols: list[str] = field(default_factory=lambda: ["BTC-USD"])
    poll_interval_seconds: float = bounded(1.0, min=0.01)
    quote_poll_interval_seconds: float = bounded(1.0, min=0.01)
    timeout_seconds: float = bounded(10.0, min=0.1)
    enable_rate_limit: bool = True
    # Kraken only: the account's verification tier, whose REST call counter (maximum, decay) the broker budgets every
    # private call against (trading_ops.venues.call_counter); tradingbot_rate_limit_headroom_ratio is what is left.
    # off: no budget and no headroom (a Kraken-compatible venue without that counter, e.g. a paper gateway without
    # gateway.call_counter).
    kraken_tier: Literal["off", "starter", "intermediate", "pro"] = "starter"
    # Base-asset balances that are not the bot's (spot positions are the balance less this).
    position_baseline: dict[str, float] = field(default_factory=dict)
    # Stream where the exchange streams (ccxt.pro's `has` says so; here Kraken's WebSocket v2): the account's fills
    # over the private socket, each symbol's book over the public one (StreamingCcxtBroker: REST stays for every
    # call, the reconciliation and the fallback). `stream: false` is REST polls only. Other exchanges poll.
    stream: bool = True
    # Which client streams the account's fills: auto (the default) our own Kraken v2 client where the venue speaks it
    # (Kraken: it sees sequence gaps and snapshot repeats ccxt.pro hides), else ccxt.pro's watch_my_trades where its
    # `has` says watchMyTrades, else none (REST polls); kraken-v2 or ccxt.pro: that one only (docs/streams.md).
    stream_executions: Literal["auto", "kraken-v2", "ccxt.pro"] = "auto"
    # The private WebSocket URL; empty: the `private` REST URL's host at /ws-auth/v2 when `urls` names one (a paper
    # gateway), else Kraken's wss://ws-auth.kraken.com/v2.
    stream_url: str = ""
    # The public WebSocket URL (the books); empty: the `public` REST URL's host at /ws/v2 when `urls` names one, else
    # Kraken's wss://ws.kraken.com/v2.
    stream_public_url: str = ""
    # How often a traded pair's book changes at least (seconds): its silence timeout is three of these (never under
    # three heartbeats); 0: the book may be quiet for any time (no silence timeout).
    stream_book_cadence_seconds: float = bounded(1.0, min=0)
    # TLS to an https venue whose certificate is not in ccxt's CA bundle (certifi), e.g. a paper gateway with a
    # web_config_file: the CA to verify it with, and a client certificate if it asks for one (mutual TLS).
    tls: TLSClientConfig = field(default_factory=TLSClientConfig)

    def validate(self, prefix: str, given: set[str]) -> None:
        if not self.symbols:
            raise ConfigError(f"{prefix}.symbols", "must list at least one symbol")
        _check_account(prefix, self.symbols, self.urls, self.position_baseline)


@dataclass
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    bot: BotConfig = field(default_factory=BotConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    reconciler: ReconcilerConfig = field(default_factory=ReconcilerConfig)
    freqtrade: FreqtradeConfig = field(default_factory=FreqtradeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # The bots, declared once: the reconciler's targets and Prometheus's file_sd targets
    # (`trading-ops config targets`) are derived from this list.
    bots: list[BotEntryConfig] = field(default_factory=list)
    # Bot kinds `trading-ops up --bot KIND` can run besides the built-in `paper`: KIND -> the bot's command line;
    # {python} is this Python, {config} the stack's generated configuration file.
    bot_kinds: dict[str, list[str]] = field(default_factory=dict)
    backup: BackupConfig = field(default_factory=BackupConfig)
    upkeep: UpkeepConfig = field(default_factory=UpkeepConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    ccxt: CcxtConfig = field(default_factory=CcxtConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    readiness: ReadinessConfig = field(default_factory=ReadinessConfig)
    # Directory that relative paths in this file are resolved against (the file's own directory).
    base_dir: Path = field(default=Path("."), metadata={"internal": True})
    # The top-level sections the file gives (`config check` checks the services they configure).
    sections: frozenset[str] = field(default=frozenset(), metadata={"internal": True})

    def validate(self, prefix: str, given: set[str]) -> None:
        if self.readiness.prometheus_retention:
            from trading_ops.durations import parse_duration

            retention = parse_duration(self.readiness.prometheus_retention)
            for i, stage in enumerate(self.bot.ramp.stages):
                if parse_duration(stage.window) > retention:
                    raise ConfigError(
                        f"bot.ramp.stages[{i}].window",
                        f"{stage.window} is longer than Prometheus's retention ({self.readiness.prometheus_retention}, "
                        "readiness.prometheus_retention): it cannot hold that much history",
                    )
        for key, attr in (("name", "name"), ("instance", "instance")):
            seen: set[str] = set()
            for i, entry in enumerate(self.bots):
                value = getattr(entry, attr)
                if value in seen:
                    raise ConfigError(f"bots[{i}].{key}", f"{value} is listed twice")
                seen.add(value)
        for kind, command in self.bot_kinds.items():
            if _check_name(kind) or (problem := _check_command(command)):
                raise ConfigError(f"bot_kinds.{kind}", _check_name(kind) or problem or "")
        self._check_accounts()
        if self.bots:
            if self.reconciler.targets:
                raise ConfigError("reconciler.targets", "give the bots once, under bots: (targets are derived)")
            self.reconciler.targets = {
                b.instance: TargetConfig(
                    url=b.url,
                    token=b.token,
                    destructive_token=b.destructive_token,
                    unit=b.systemd_unit,
                    container=b.docker_container,
                    venue=dataclasses.replace(b.venue, order_id_prefix=bot_prefix(b)),
                    host=b.host,
                )
                for b in self.bots
            }

    def _check_accounts(self) -> None:
        """A bot touches only its own orders: one account per bot (the venue's dead man's switch and its balances are
        the account's, so two bots on one would cancel and reconcile each other), and no two bots on a venue with one
        order-id prefix (a `venue` step tells a bot's orders by it; two bots given keys of their own on one account
        are not seen sharing it, their prefixes are). The bot this file runs (`bot:`) takes the prefix its entry
        under `bots:` gives."""
        prefixes: dict[tuple[str, str], int] = {}
        accounts: dict[tuple[str, str], int] = {}
        for i, entry in enumerate(self.bots):
            venue = entry.venue
            if entry.name == self.bot.name and venue.order_id_prefix and self.bot.order_id_prefix:
                if venue.order_id_prefix != self.bot.order_id_prefix:
                    raise ConfigError(
                        f"bots[{i}].venue.order_id_prefix",
                        f"{venue.order_id_prefix} is not bot.order_id_prefix ({self.bot.order_id_prefix}), the "
                        f"prefix bot {entry.name} gives its orders",
                    )
            if not venue.exchange:
                continue
            place = " ".join([venue.exchange, *(f"{k}={v}" for k, v in sorted(venue.urls.items()))])
            prefix = bot_prefix(entry)
            first = prefixes.setdefault((place, prefix), i)
            if first != i:
                raise ConfigError(
                    f"bots[{i}].venue.order_id_prefix",
                    f"{prefix} is the order-id prefix of bots[{first}] ({self.bots[first].name}) on {venue.exchange} "
                    "too: a venue step would take both bots' orders (give each bot a prefix of its own)",
                )
            account = venue.account or venue.api_key
            first = accounts.setdefault((place, account), i)
            if first != i:
                raise ConfigError(
                    f"bots[{i}].venue",
                    f"the {venue.exchange} account of bots[{first}] ({self.bots[first].name}): one account per bot "
                    "(a Kraken subaccount each), the reconciler holding a key of its own on it",
                )

    def path(self, value: str) -> Path:
        """Resolve a path rendered at run time (a step's pidfile template) against the configuration file's
        directory; the configured path keys are resolved at load (`path_field`)."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def database_url(self) -> str:
        """The validated SQLAlchemy URL: a relative SQLite path resolved, bare `postgresql://` on psycopg 3."""
        url = self.database.resolved_url(self.base_dir)
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:" and not url.startswith("sqlite:////"):
            url = prefix + str(self.path(url[len(prefix) :]))
        if url.startswith("postgresql://"):
            url = POSTGRESQL_DRIVER + url[len("postgresql") :]
        if url.startswith(POSTGRESQL_DRIVER) and importlib.util.find_spec("psycopg") is None:
            raise ConfigError("database.url", POSTGRESQL_DRIVER_MISSING)
        return url


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
    resolve_paths(config, config.base_dir)
    return config


def resolve_secret(config: Config, obj: Any, name: str, key: str) -> str:
    """The value of secret field `name` of section `obj` (`key` is its dotted path, for errors)."""
    value = getattr(obj, name)
    if value.startswith("file:"):
        return _read_secret_file(f"{key}_file", str(config.path(value[len("file:") :])))
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


def _read_secret_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
