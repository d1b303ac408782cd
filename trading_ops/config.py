"""Load the trading-ops YAML configuration and validate every key, type and value."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

DEFAULT_CONFIG_PATH = "trading-ops.yaml"
SECRET_SUFFIXES = ("_file", "_env")


class ConfigError(Exception):
    """A configuration problem, rendered as one line that names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def secret(env: str, help: str = "") -> Any:
    """A secret field: never written in the file, read from `<name>_env` or `<name>_file` (or `env`)."""
    return field(default="", metadata={"secret": True, "env": env, "help": help})


def bounded(default: Any, *, min: float | None = None, max: float | None = None) -> Any:
    """A numeric field with an inclusive range checked on load."""
    return field(default=default, metadata={"min": min, "max": max})


@dataclass
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = bounded(9101, min=0, max=65535)


@dataclass
class DatabaseConfig:
    # SQLAlchemy URL: sqlite:///var/trading-ops.db (embedded default, WAL) or
    # postgresql+psycopg://user@host:5432/db. A URL with a password belongs in url_env / url_file.
    url: str = "sqlite:///var/trading-ops.db"
    url_env: str = ""
    url_file: str = ""
    # SQLite only: NORMAL survives a process crash (kill -9) in WAL mode; FULL also survives power loss.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "FULL"

    def resolved_url(self) -> str:
        if self.url_file:
            return _read_secret_file("database.url_file", self.url_file)
        if self.url_env:
            value = os.environ.get(self.url_env, "")
            if not value:
                raise ConfigError("database.url_env", f"environment variable {self.url_env} is not set")
            return value
        return self.url


@dataclass
class BotConfig:
    name: str = "paper-1"
    venue: str = "paper"
    strategy: str = "demo"
    listen: ListenConfig = field(default_factory=ListenConfig)
    control_token: str = secret("TRADING_OPS_CONTROL_TOKEN", "bearer token of the bot's control API")
    data_dir: str = "./var"
    # A trading loop that has not completed an iteration for this long is hung (/healthz fails).
    heartbeat_timeout_seconds: float = bounded(15.0, min=0.1)
    # Market data older than this makes /readyz fail and the bot stop opening positions.
    market_data_stale_seconds: float = bounded(10.0, min=0.1)
    # Distinct values a single label may take before new ones fold into "other".
    cardinality_limit: int = bounded(200, min=1)
    # Memory the bot may use; 0 means the cgroup limit, or the machine's memory when there is none.
    memory_limit_bytes: int = bounded(0, min=0)
    event_loop_lag_interval_seconds: float = bounded(0.25, min=0.01)


@dataclass
class PaperConfig:
    symbols: list[str] = field(default_factory=lambda: ["BTC-USD", "ETH-USD", "SOL-USD"])
    quote_asset: str = "USD"
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


@dataclass
class TargetConfig:
    # Base URL of the bot's HTTP server; the bot action posts to <url>/control/<command>.
    url: str = "http://127.0.0.1:9101"
    token: str = secret("TRADING_OPS_CONTROL_TOKEN", "bearer token of this bot's control API")


@dataclass
class BudgetConfig:
    # At most this many actions per target (an alert's instance) in any rolling hour ...
    max_actions_per_target_per_hour: int = bounded(6, min=1)
    # ... and this many in total. Spending a budget opens the circuit and escalates.
    max_actions_per_hour: int = bounded(60, min=1)
    # An open circuit closes again after this long.
    circuit_cool_off_seconds: float = bounded(1800.0, min=1)


@dataclass
class WatchdogConfig:
    # The always-firing alert that proves the alerting pipeline works end to end.
    alertname: str = "Watchdog"
    # No Watchdog for this long = the pipeline is broken: notify through apprise directly. 0 disables.
    window_seconds: float = bounded(600.0, min=0)
    check_interval_seconds: float = bounded(15.0, min=0.05)


@dataclass
class ReconcilerConfig:
    listen: ReconcilerListenConfig = field(default_factory=ReconcilerListenConfig)
    token: str = secret("TRADING_OPS_RECONCILER_TOKEN", "bearer token Alertmanager sends to the webhook")
    # Name of this replica in claims; claims held by this name at start-up are from a previous life.
    # Empty = the host name. Give each replica sharing a database its own name.
    instance: str = ""
    # Playbook file; empty = the packaged default playbook for the paper bot and the alert catalogue.
    playbook: str = ""
    prometheus_url: str = "http://127.0.0.1:9090"
    alertmanager_url: str = "http://127.0.0.1:9093"
    max_body_bytes: int = bounded(1024 * 1024, min=1024)
    # Record what would be done, do nothing.
    dry_run: bool = False
    # How often the workers look for due episodes (new notifications wake them at once).
    poll_interval_seconds: float = bounded(1.0, min=0.01)
    # A claim on an episode and its target lasts this long and is renewed while the run is alive.
    lease_seconds: float = bounded(30.0, min=0.5)
    max_concurrent_runs: int = bounded(4, min=1)
    # Intake group commit: notifications stored per transaction at most.
    batch_max: int = bounded(256, min=1)
    # Label values reach exec steps (as environment variables) and templates only when they match this.
    label_value_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
    # Outputs of steps are kept up to this many bytes.
    output_limit_bytes: int = bounded(4096, min=64)
    # Command used by systemd steps (`<systemctl> restart <unit>`).
    systemctl: list[str] = field(default_factory=lambda: ["systemctl"])
    docker_socket: str = "/var/run/docker.sock"
    # Ask Alertmanager whether a matching silence is active before acting (maintenance).
    check_silences: bool = True
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    # Bot instance (the `instance` label of its alerts) -> its control API.
    targets: dict[str, TargetConfig] = field(default_factory=dict)


@dataclass
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


@dataclass
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    bot: BotConfig = field(default_factory=BotConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    reconciler: ReconcilerConfig = field(default_factory=ReconcilerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Directory that relative paths in this file are resolved against (the file's own directory).
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def path(self, value: str) -> Path:
        """Resolve a path from the configuration against the configuration file's directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def database_url(self) -> str:
        url = self.database.resolved_url()
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:" and not url.startswith("sqlite:////"):
            url = prefix + str(self.path(url[len(prefix) :]))
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
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError("", f"{p}: {problem}{where}") from exc
    return parse_config({} if data is None else data, base_dir=p.resolve().parent)


def parse_config(data: Any, *, base_dir: Path | None = None) -> Config:
    config = _build(Config, data, "")
    config.base_dir = base_dir or Path.cwd()
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


def _read_secret_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin = get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(key, f"expected {_type_name(tp)}, got {_describe(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {_describe(value)}")
        (item,) = get_args(tp)
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {_describe(value)}")
        _, item = get_args(tp)
        return {str(k): _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_describe(value)}")
        return value
    raise ConfigError(key, f"unsupported type {tp}")  # pragma: no cover - a programming error


def _build(cls: Any, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix or "(top level)", f"expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    secrets = {name for name, f in fields.items() if f.metadata.get("secret")}
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        path = f"{prefix}.{key}" if prefix else key
        base = next((key[: -len(s)] for s in SECRET_SUFFIXES if key.endswith(s) and key[: -len(s)] in secrets), None)
        if base is not None:
            if not isinstance(value, str) or not value:
                raise ConfigError(path, f"expected a non-empty string, got {_describe(value)}")
            if base in kwargs:
                raise ConfigError(path, f"give only one of {base}_file and {base}_env")
            kwargs[base] = ("file:" if key.endswith("_file") else "env:") + value
            continue
        if key in secrets:
            raise ConfigError(path, f"secrets are not written in the file; use {key}_file or {key}_env")
        if key not in fields:
            known = ", ".join(
                sorted([f for f in fields if f not in secrets] + [s + suf for s in secrets for suf in SECRET_SUFFIXES])
            )
            raise ConfigError(path, f"unknown key (known keys: {known})")
        converted = _convert(hints[key], value, path)
        meta = fields[key].metadata
        if meta.get("min") is not None and converted < meta["min"]:
            raise ConfigError(path, f"must be at least {meta['min']}, got {converted}")
        if meta.get("max") is not None and converted > meta["max"]:
            raise ConfigError(path, f"must be at most {meta['max']}, got {converted}")
        kwargs[key] = converted
    for name in secrets:
        if name not in kwargs:
            kwargs[name] = "env:" + fields[name].metadata["env"]
    return cls(**kwargs)
