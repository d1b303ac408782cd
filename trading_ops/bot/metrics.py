"""The typed API a trading bot calls on each event; it keeps the `tradingbot_` metric catalogue."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, disable_created_metrics

from trading_ops import __version__
from trading_ops.bot.account_metrics import AccountMetrics
from trading_ops.bot.cardinality import LabelGuard
from trading_ops.bot.control_metrics import ControlMetrics
from trading_ops.bot.loop_metrics import LOOP_DURATION_BUCKETS, PHASES, CrashCollector, LoopMetrics
from trading_ops.bot.metrics_base import PREFIX, VS, MetricsBase, slots_of
from trading_ops.bot.order_metrics import (
    ACK_LATENCY_BUCKETS,
    DROP_REASONS,
    FILL_LATENCY_BUCKETS,
    LIQUIDITY,
    MAX_TRACKED_ORDERS,
    ORDER_TYPES,
    SIDES,
    TRACKED_ORDER_MAX_AGE_SECONDS,
    TRACKING_SWEEP_INTERVAL_SECONDS,
    OrderFlowCollector,
    OrderMetrics,
)
from trading_ops.bot.venue_metrics import (
    CHANNELS,
    REQUEST_DURATION_BUCKETS,
    VENUE_ERROR_CLASSES,
    ConnectionCollector,
    ErrorClass,
    VenueMetrics,
)

# The catalogue's names, where the library's users have always imported them from.
__all__ = [
    "ACK_LATENCY_BUCKETS",
    "CHANNELS",
    "DROP_REASONS",
    "FILL_LATENCY_BUCKETS",
    "LIQUIDITY",
    "LOOP_DURATION_BUCKETS",
    "MAX_TRACKED_ORDERS",
    "ORDER_TYPES",
    "PHASES",
    "PREFIX",
    "REQUEST_DURATION_BUCKETS",
    "SIDES",
    "TRACKED_ORDER_MAX_AGE_SECONDS",
    "TRACKING_SWEEP_INTERVAL_SECONDS",
    "VENUE_ERROR_CLASSES",
    "VS",
    "BotMetrics",
    "ErrorClass",
]


class BotMetrics(OrderMetrics, AccountMetrics, VenueMetrics, LoopMetrics, ControlMetrics):
    """Everything a bot records. One instance per bot process; pass `registry` for an isolated one.

    Every record call resolves the bound operation of its metric child (`inc`, `set`, `observe`) through
    a cache keyed by the raw label values, so the hot path is one dict lookup plus the prometheus_client
    child operation. Label values a bot passes are bounded by the cardinality guard; order ids are
    accepted only to measure latency and count orders in flight, and are never labels.

    `disable_created_series=True` calls prometheus_client's `disable_created_metrics()`: counters and
    histograms stop exporting their `_created` samples, which double the series count and serve no alert.
    That switch is process-wide (every registry of the process), so the library never flips it on its
    own; a bot that owns its process may opt in (the paper bot does). `clock` (Unix time) and `monotonic`
    are injectable for tests.

    It wires the parts that each own one domain's families and record calls: orders and fills (OrderMetrics, in
    order_metrics.py), the account (AccountMetrics), the venue's connection, market data and requests (VenueMetrics),
    the loop and the runtime's life (LoopMetrics), the control API (ControlMetrics); it registers their families in
    the /metrics output's order. The parts are its bases, not attributes: a bot's record call (`order_submitted`,
    `order_filled`, ...) resolves on this one object with no hop, against the goal of ≤ 1.5× the raw prometheus_client
    child operation (benchmarks/bot/bench_exporter.py). Each part declares its attributes, this class holds them all
    in its slots (attribute loads on the hot path stay the fast, specialized kind). What is not on the hot path lives
    beside it: the collectors (collectors.py), the reconciliation's families (reconciliation_metrics.py), the
    cardinality guard (cardinality.py) and the log families (log_metrics.py).
    """

    __slots__ = slots_of(MetricsBase, OrderMetrics, AccountMetrics, VenueMetrics, LoopMetrics, ControlMetrics) + (
        "collector_errors",
    )

    def __init__(
        self,
        *,
        venue: str,
        strategy: str = "default",
        registry: CollectorRegistry | None = REGISTRY,
        cardinality_limit: int = 200,
        daily_loss_limit: float | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        disable_created_series: bool = False,
        tracked_order_max_age: float = TRACKED_ORDER_MAX_AGE_SECONDS,
        max_tracked_orders: int = MAX_TRACKED_ORDERS,
    ) -> None:
        if disable_created_series:
            disable_created_metrics()
        if tracked_order_max_age <= 0 or max_tracked_orders < 1:
            raise ValueError("tracked_order_max_age must be positive and max_tracked_orders at least 1")
        self.venue = venue
        self.strategy = strategy
        self.registry = registry
        self._clock = clock
        self._monotonic = monotonic
        self.guard = LabelGuard(cardinality_limit, registry, PREFIX)
        # The families, registered in this order (the /metrics output's).
        self._order_metrics(tracked_order_max_age, max_tracked_orders)
        self._account_metrics(daily_loss_limit)
        self._venue_metrics()
        self._loop_metrics()
        self._control_metrics()
        self.collector_errors = Counter(
            f"{PREFIX}_collector_errors",
            "Errors raised by a metrics collector during a scrape.",
            ["collector"],
            registry=registry,
        )
        build = Gauge(
            f"{PREFIX}_build_info",
            "Build of trading-ops running in this bot (always 1).",
            ["version", "python_version"],
            registry=registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
        if registry is not None:
            # Read at each scrape, in this order (as one collector did: orders in flight and open, the oldest in
            # flight, the seconds connected, the crashes).
            registry.register(OrderFlowCollector(self))
            registry.register(ConnectionCollector(self))
            registry.register(CrashCollector(self))
