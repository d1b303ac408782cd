"""The readiness checklist's measurable criteria: each one's PromQL over a window, its threshold and how it compares.

One query per criterion serves every bot asked about (a selector of all their instances); the answer is split by
`instance`. The same expressions, over one day and every bot, are the recording rules of
prometheus/rules/tradingbot-readiness.yml (tests/readiness/test_readiness.py holds them equal), for boards and alerts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from trading_ops.config import ReadinessConfig
from trading_ops.config.fields import FREQTRADE_KIND
from trading_ops.durations import format_duration, parse_duration

# The shortest window a verdict judges (a day's checklist is judged over days; an hour is the least that means much).
MIN_WINDOW = "1h"
# How recent a scrape must be to count, at the window's start and at each point of it: Prometheus's own lookback (a
# series without a sample for 5 minutes is stale), at most 1 % of the window (36 s of a 1 h window, 5 min of a day).
# The bot is present at the window's start when it was scraped (`up`, 0 or 1) within this long after it; uptime counts
# a moment of the window as up when the bot's last scrape within this long before it succeeded. Both assume a scrape
# interval shorter than it (the shipped profiles scrape every 1 s or 5 s).
SCRAPE_TOLERANCE_SECONDS = 300.0
SCRAPE_TOLERANCE_SHARE = 0.01
# Uptime looks at the window on a grid: one point a minute, never more than this many points (a week: one every 2 min).
UPTIME_STEP_SECONDS = 60.0
UPTIME_MAX_POINTS = 5040
# The dead man's switch is judged now, on its last reading within this long.
ARMED_LOOKBACK = "15m"
# Venues with no dead man's switch for spot orders (Binance: its countdown cancel is for futures): there the criterion
# `dead_man_switch` reads NOT_APPLICABLE, never pass; what stands in for it is the reconciler's `venue` step, which
# cancels a dead bot's orders with the reconciler's own key (docs/deployment.md, "On Binance: no dead man's switch").
NO_DEAD_MAN_SWITCH = frozenset({"binance"})
NOT_APPLICABLE = "not applicable on this venue"


# Bot kinds that never arm a switch, wherever they trade: freqtrade places its orders itself and has no dead man's
# switch (its sidecar only watches it); the reconciler's venue step, in `orders: account` mode, stands in for it.
NO_SWITCH_KINDS = {FREQTRADE_KIND: "freqtrade arms no dead man's switch"}


def not_applicable(criterion: str, exchange: str, kind: str = "") -> str:
    """Why `criterion` does not apply to a bot of `kind` on `exchange` (its `bots[].kind` and `venue.exchange`), or ""
    when it does."""
    if criterion != "dead_man_switch":
        return ""
    if exchange in NO_DEAD_MAN_SWITCH:
        return (
            f"{NOT_APPLICABLE}: {exchange} spot has no dead man's switch; the reconciler's venue step cancels a dead "
            "bot's orders"
        )
    if kind in NO_SWITCH_KINDS:
        return (
            f"not applicable to this bot: {NO_SWITCH_KINDS[kind]}; the reconciler's venue step cancels a dead bot's "
            "orders (every order of its account)"
        )
    return ""


# The bot jobs of the recording rules: the rule pack's selectors.bot_jobs.
RULE_WINDOW = "1d"

Op = Literal[">=", "<="]
# How one bot's series (channels, strategies, limits) become one value: the worst of them, or how many there are.
Reduce = Literal["min", "max", "count"]


@dataclass(frozen=True)
class PromCriterion:
    """A criterion measured by Prometheus: `query` with `{sel}` (label matchers) and `{w}` (a PromQL duration) and
    `{w_seconds}`; `record` is its recording rule's name (over RULE_WINDOW)."""

    name: str
    what: str
    query: str
    op: Op
    threshold: Callable[[ReadinessConfig], float]
    unit: str
    reduce: Reduce = "max"
    record: str = ""
    # Its window: the verdict's (None), or a setting of its own (a duration, from the configuration), or fixed.
    window: Callable[[ReadinessConfig], str] | None = None
    # Without any series: missing data (None) or this value (no alert fired, no breach counted).
    when_absent: float | None = None
    # Counts are compared as whole numbers (increase() extrapolates: 1.02 breaches is one).
    whole: bool = False
    # Series that must all be there (label, values); one missing counts as 0.
    expect: tuple[str, tuple[str, ...]] | None = None

    def expr(self, sel: str, window: str) -> str:
        seconds = parse_duration(window)
        step = uptime_step(seconds)
        return self.query.format(
            sel=sel,
            w=format_duration(seconds),
            w_seconds=f"{seconds:g}",
            tolerance=format_duration(scrape_tolerance(seconds)),
            step=format_duration(step),
            points=f"{seconds / step:g}",
        )


def scrape_tolerance(window_seconds: float) -> float:
    """How recent a scrape must be to count over a window this long (see SCRAPE_TOLERANCE_SECONDS), whole seconds."""
    return float(max(1, int(min(SCRAPE_TOLERANCE_SECONDS, window_seconds * SCRAPE_TOLERANCE_SHARE))))


def uptime_step(window_seconds: float) -> float:
    """The uptime grid's step over a window this long: a minute, or whole minutes keeping UPTIME_MAX_POINTS at most."""
    minutes = max(1, math.ceil(window_seconds / UPTIME_MAX_POINTS / UPTIME_STEP_SECONDS))
    return minutes * UPTIME_STEP_SECONDS


def _count(value: float) -> float:
    return float(int(value + 0.5))


CRITERIA: tuple[PromCriterion, ...] = (
    PromCriterion(
        "uptime",
        "share of the window the bot was up (scraped): a gap without samples counts as down",
        # The window's points (one a minute) at which the bot's last scrape, within the tolerance before it, succeeded,
        # of every point of the window: a gap in the history is time down, never left out (avg_over_time(up) was the
        # share of the samples that exist). At most 1 over the point Prometheus 2 counts at both ends.
        "clamp_max(sum_over_time(last_over_time(up{{{sel}}}[{tolerance}])[{w}:{step}]) / {points}, 1)",
        ">=",
        lambda c: c.min_uptime_ratio,
        "ratio",
        reduce="min",
        record="instance:up:avg_over_time1d",
    ),
    PromCriterion(
        "restarts",
        "process restarts (deliberate or not)",
        "changes(process_start_time_seconds{{{sel}}}[{w}])",
        "<=",
        lambda c: c.max_restarts,
        "count",
        record="instance:process_start_time_seconds:changes1d",
        whole=True,
    ),
    PromCriterion(
        "crashes",
        "runs that ended without a clean shutdown",
        "max_over_time(tradingbot_crashes_total{{{sel}}}[{w}]) - min_over_time(tradingbot_crashes_total{{{sel}}}[{w}])",
        "<=",
        lambda c: c.max_crashes,
        "count",
        record="instance:tradingbot_crashes:delta1d",
        whole=True,
    ),
    PromCriterion(
        "memory_peak",
        "resident memory at its peak",
        "max_over_time(process_resident_memory_bytes{{{sel}}}[{w}])",
        "<=",
        lambda c: c.max_memory_peak_bytes,
        "bytes",
        record="instance:process_resident_memory_bytes:max_over_time1d",
    ),
    PromCriterion(
        "memory_growth",
        "resident memory's growth per day (least-squares slope)",
        "deriv(process_resident_memory_bytes{{{sel}}}[{w}]) * 86400",
        "<=",
        lambda c: c.max_memory_growth_bytes_per_day,
        "bytes/day",
        record="instance:process_resident_memory_bytes:deriv_per_day1d",
    ),
    PromCriterion(
        "order_success",
        "orders the venue acknowledged, of those sent",
        "sum without (symbol, side, order_type) (increase(tradingbot_orders_acknowledged_total{{{sel}}}[{w}]))\n"
        "/ (sum without (symbol, side, order_type) (increase(tradingbot_orders_submitted_total{{{sel}}}[{w}])) > 0)",
        ">=",
        lambda c: c.min_order_success_ratio,
        "ratio",
        reduce="min",
        record="instance:tradingbot_orders_acknowledged:ratio_increase1d",
    ),
    PromCriterion(
        "order_rejection",
        "orders the venue rejected, of those sent",
        "(\n  sum without (symbol, reason) (increase(tradingbot_orders_rejected_total{{{sel}}}[{w}]))\n"
        "  or 0 * sum without (symbol, side, order_type) (increase(tradingbot_orders_submitted_total{{{sel}}}[{w}]))\n"
        ")\n/ (sum without (symbol, side, order_type) (increase(tradingbot_orders_submitted_total{{{sel}}}[{w}])) > 0)",
        "<=",
        lambda c: c.max_order_rejection_ratio,
        "ratio",
        record="instance:tradingbot_orders_rejected:ratio_increase1d",
    ),
    PromCriterion(
        "api_error_ratio",
        "venue errors per request to the venue's API",
        "sum without (error_class) (increase(tradingbot_venue_errors_total{{{sel}}}[{w}]))\n"
        "/ (sum without (channel) (increase(tradingbot_venue_requests_total{{{sel}}}[{w}])) > 0)",
        "<=",
        lambda c: c.max_api_error_ratio,
        "ratio",
        record="instance:tradingbot_venue_errors:ratio_increase1d",
    ),
    PromCriterion(
        "api_latency_p99",
        "99th percentile of the venue's answer time",
        "histogram_quantile(0.99, sum without (channel) "
        "(increase(tradingbot_venue_request_duration_seconds_bucket{{{sel}}}[{w}])))",
        "<=",
        lambda c: c.max_api_latency_p99_seconds,
        "seconds",
        record="instance:tradingbot_venue_request_duration_seconds:p99_1d",
    ),
    PromCriterion(
        "stream_uptime",
        "share of the window each channel to the venue was connected (the worst channel)",
        "clamp_max(increase(tradingbot_broker_connected_seconds_total{{{sel}}}[{w}]) / {w_seconds}, 1)",
        ">=",
        lambda c: c.min_stream_uptime_ratio,
        "ratio",
        reduce="min",
        record="instance:tradingbot_broker_connected_seconds:ratio_increase1d",
    ),
    PromCriterion(
        "daily_loss_breaches",
        "breaches of the daily loss limit",
        'sum without (strategy) (increase(tradingbot_risk_limit_breaches_total{{{sel}, limit="daily_loss"}}[{w}]))',
        "<=",
        lambda c: c.max_loss_limit_breaches,
        "count",
        record="instance:tradingbot_daily_loss_breaches:increase1d",
        whole=True,
    ),
    PromCriterion(
        "drawdown_breaches",
        "breaches of the drawdown limit",
        'sum without (strategy) (increase(tradingbot_risk_limit_breaches_total{{{sel}, limit="drawdown"}}[{w}]))',
        "<=",
        lambda c: c.max_loss_limit_breaches,
        "count",
        record="instance:tradingbot_drawdown_breaches:increase1d",
        whole=True,
    ),
    PromCriterion(
        "critical_alerts",
        "critical alerts of the bot that fired",
        'count_over_time(ALERTS{{{sel}, alertstate="firing", severity="critical"}}[{w}]) > 0',
        "<=",
        lambda c: c.max_critical_alerts,
        "count",
        reduce="count",
        when_absent=0.0,
        whole=True,
    ),
    PromCriterion(
        "dead_man_switch",
        "the venue's dead man's switch is armed now",
        "last_over_time(tradingbot_dead_man_switch_armed{{{sel}}}[{w}])",
        ">=",
        lambda c: 1,
        "armed",
        reduce="min",
        window=lambda c: ARMED_LOOKBACK,
    ),
    PromCriterion(
        "log_size",
        "the bot's log: its file at its largest, or what it wrote per day to stderr",
        "max_over_time(tradingbot_log_file_bytes{{{sel}}}[{w}])\n"
        "or increase(tradingbot_log_written_bytes_total{{{sel}}}[{w}]) * 86400 / {w_seconds}",
        "<=",
        lambda c: c.max_log_bytes,
        "bytes",
        record="instance:tradingbot_log_bytes:max1d",
    ),
    PromCriterion(
        "log_rotation",
        "the bot's log rotates (its file's size limit, the journal, or a Docker logging driver) all along",
        "min_over_time(tradingbot_log_rotating{{{sel}}}[{w}])",
        ">=",
        lambda c: 1,
        "rotating",
        reduce="min",
        record="instance:tradingbot_log_rotating:min1d",
    ),
    PromCriterion(
        "emergency_stop",
        "halt and flatten received by the bot (the fewer of the two)",
        "sum without (source) (increase(tradingbot_control_commands_total"
        '{{{sel}, command=~"halt|flatten", source!="unauthenticated"}}[{w}]))',
        ">=",
        lambda c: 1,
        "count",
        reduce="min",
        window=lambda c: c.emergency_stop_within,
        whole=True,
        expect=("command", ("halt", "flatten")),
    ),
)


def history_query(sel: str, window: str) -> str:
    """Per instance, whether it was scraped at the window's start (within the scrape tolerance after it): the series
    exist only for those. Without it every criterion over the window is unknown: less history than the window."""
    seconds = parse_duration(window)
    tolerance = scrape_tolerance(seconds)
    return f"count_over_time(up{{{sel}}}[{format_duration(tolerance)}] offset {format_duration(seconds - tolerance)})"


def instances_selector(instances: list[str]) -> str:
    """The label matchers of these bots' series: `instance="a"` for one, a regular expression for several."""
    if len(instances) == 1:
        return f'instance="{_escape(instances[0])}"'
    alternatives = "|".join(_escape(re.escape(i)) for i in instances)
    return f'instance=~"{alternatives}"'


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def compare(op: Op, value: float, threshold: float) -> bool:
    return value >= threshold if op == ">=" else value <= threshold


def whole(value: float) -> float:
    return _count(value)


def parse_window(text: str) -> float:
    """A verdict's window in seconds; ValueError saying why for a bad duration or one too short to judge."""
    seconds = parse_duration(text)
    if seconds <= parse_duration(MIN_WINDOW):
        raise ValueError(f"must be longer than {MIN_WINDOW}, got {text[:40]!r}")
    return seconds


def retention_problem(seconds: float, text: str, retention: float | None) -> str | None:
    """Why Prometheus cannot answer for a window this long (it keeps less history), or None."""
    if retention is not None and seconds > retention:
        return (
            f"{text[:40]} is longer than Prometheus's retention ({retention / 86400:g}d): it cannot hold that much "
            "history"
        )
    return None
