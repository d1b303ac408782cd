"""The bot's sections: risk limits, the ramp's stages, resources, the dead man's switch, recovery, order-id prefixes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from trading_ops.config.common import ListenConfig, NamedTokenConfig, check_token_names
from trading_ops.config.fields import (
    ORDER_ID_HASH_CHARS,
    ORDER_ID_PREFIX_CHARS,
    ConfigError,
    bounded,
    check_name,
    check_nonempty,
    check_optional_limit,
    check_positive_duration,
    checked,
    describe,
    path_field,
    secret,
)


def order_id_prefix(name: str) -> str:
    """The order-id prefix of the bot named `name` when none is configured: the name itself up to
    ORDER_ID_PREFIX_CHARS characters, else its start, '-' and a hash of the whole name, so that distinct names never
    share one (`kraken-production-1` and `kraken-production-2` once both became `kraken-productio`)."""
    if len(name) <= ORDER_ID_PREFIX_CHARS:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:ORDER_ID_HASH_CHARS]
    return f"{name[: ORDER_ID_PREFIX_CHARS - ORDER_ID_HASH_CHARS - 1]}-{digest}"


@dataclass
class RiskConfig:
    """In-process risk limits, enforced in the order gate before an order leaves; 0 means no limit. Notional
    values are in the quote asset."""

    # The day's loss (realized + unrealized) at which the bot halts; an operator clears it. Unset: no limit (the
    # bot logs that at start), except for the paper bot, which then uses paper.daily_loss_limit.
    daily_loss_limit: float | None = checked(None, check_optional_limit)
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
    drawdown_window: str = checked("24h", check_positive_duration)


# The readiness verdict's criteria by name (trading_ops.readiness; tests/bot/test_ramp.py holds the two lists equal):
# what a ramp stage may name in its `criteria`.
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

    name: str = checked("", check_name)
    # Per symbol, as bot.risk.max_position_notional (0: no limit of the stage's own).
    max_position_notional: float = bounded(0.0, min=0)
    # The symbols the bot may open positions in (empty: every symbol); reducing is always allowed.
    symbols: list[str] = field(default_factory=list)
    # As bot.risk.daily_loss_limit (0: no limit of the stage's own).
    daily_loss_limit: float = bounded(0.0, min=0)
    # The least time the bot spends in this stage before the next may be approved.
    min_time: str = checked("1d", check_positive_duration)
    # Readiness criteria (names of `trading-ops readiness`) that must pass over `window` for the next stage.
    criteria: list[str] = field(default_factory=list)
    window: str = checked("1d", check_positive_duration)
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
    crash_loop_window: str = checked("1h", check_positive_duration)
    # A channel to the venue (orders, market data) down this long without a break falls back a stage by itself,
    # once per outage.
    stream_down_for: str = checked("10m", check_positive_duration)

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


@dataclass
class BotConfig:
    name: str = checked("paper-1", check_name)
    venue: str = checked("paper", check_name)
    strategy: str = checked("demo", check_name)
    # What the client ids of this bot's orders start with (`<prefix>-<run>-<n>`): how its orders are told from other
    # bots' on an account. Empty: derived from the name (`order_id_prefix`: distinct names never share one).
    order_id_prefix: str = checked("", lambda v: None if v == "" else check_name(v))
    listen: ListenConfig = field(default_factory=ListenConfig)
    # The single token of the control API: every right (destructive), its callers name themselves in the
    # X-Trading-Ops-Source header. Unset (no file, no variable) when control_tokens are given instead.
    control_token: str = secret("TRADING_OPS_CONTROL_TOKEN", "bearer token of the bot's control API")
    # Named tokens, each with a scope (read, operate, destructive): docs/configuration.md, "Tokens and scopes".
    control_tokens: list[NamedTokenConfig] = field(default_factory=list)
    data_dir: str = path_field("./var", check_nonempty, state=True)
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
    # A signed live_start decision handed to the bot at start (fetched from the reconciler once others approved the
    # live start: `trading-ops readiness BOT --decision-out FILE`): a live venue with a ramp starts only with one that
    # verifies.
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
                    f"recovery.policies.{name}", f"expected one of {', '.join(allowed)}, got {describe(policy)}"
                )
            merged[name] = policy
        self.policies = merged
