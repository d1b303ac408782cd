"""The typed API a trading bot calls on each event; it keeps the `tradingbot_` metric catalogue."""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from trading_ops import __version__
from trading_ops.bot.cardinality import ChildCache, LabelGuard

PREFIX = "tradingbot"
SIDES = ("buy", "sell")
ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "post_only")
LIQUIDITY = ("maker", "taker")
VENUE_ERROR_CLASSES = (
    "rate_limit",
    "auth",
    "nonce",
    "timestamp",
    "network",
    "unavailable",
    "insufficient_funds",
    "invalid_order",
    "other",
)
CHANNELS = ("orders", "market_data", "account")
# Order acknowledgement on a co-located venue takes ~100 us, over the internet tens of milliseconds;
# anything past a few seconds is a venue in trouble.
ACK_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# One request to the venue's API (REST or a stream's request): the seeds' checklist wants responses under 100 ms;
# a venue that takes seconds is in trouble. The acknowledgement buckets, which cover both.
REQUEST_DURATION_BUCKETS = ACK_LATENCY_BUCKETS
# Submit to (first or last) fill: a taker fills with the ack, a resting limit order can take minutes.
FILL_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
# One trading-loop iteration: a fast loop is a millisecond, a slow strategy a second or two.
LOOP_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Orders given with a client order id are tracked (latency, in-flight and open gauges) until an event closes
# them. One the bot never closes (a missed cancel or fill, a forgotten order_closed) would stay forever:
# entries older than this are dropped, and at most MAX_TRACKED_ORDERS are kept (the oldest go first).
# A day is longer than any alert on a stuck order waits, and shorter than a leak takes to matter.
TRACKED_ORDER_MAX_AGE_SECONDS = 86_400.0
MAX_TRACKED_ORDERS = 100_000
# Expired entries and those beyond the cap are looked for at most this often, on the next tracked submission
# (never on a scrape): between two sweeps the cap can be passed by what a bot submits in this time.
TRACKING_SWEEP_INTERVAL_SECONDS = 1.0
DROP_REASONS = ("expired", "overflow")
# The runtime's lifecycle phases (tradingbot_phase): safe start, the trading loop running, the shutdown.
PHASES = ("starting", "trading", "stopping")

ErrorClass = Literal[
    "rate_limit", "auth", "nonce", "timestamp", "network", "unavailable", "insufficient_funds", "invalid_order", "other"
]


# The labels every bot family carries first (the scrape config adds no target labels).
VS = ("venue", "strategy")


class BotMetrics:
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

    Over 400 lines and 20 public methods because it is the hot path: one record method per event a bot reports
    (orders, fills, positions, the venue, the loop, control commands), each resolving its child from the slots of this
    one object. Split into objects per concern, every record call would pay an attribute hop more against the goal of
    ≤ 1.5× the raw prometheus_client child operation (benchmarks/bench_exporter.py). What is not on the hot path lives
    beside it already: the collectors (collectors.py), the reconciliation's families (reconciliation_metrics.py),
    the cardinality guard (cardinality.py) and the log families (log_metrics.py).
    """

    # Slots: attribute loads on the hot path stay the fast, specialized kind however many metrics there are.
    __slots__ = (
        "_ack_latency",
        "_acknowledged",
        "_balance",
        "_canceled",
        "_clock",
        "_command_failures",
        "_commands",
        "_connected",
        "_connected_seconds",
        "_connected_since",
        "_crashes",
        "_connection_state",
        "_disconnects",
        "_dropped",
        "_fees",
        "_fill_latency",
        "_filled_notional",
        "_filled_quantity",
        "_fills",
        "_headroom",
        "_heartbeat",
        "_iterations",
        "_loop_duration",
        "_loss_limit",
        "_max_order_age",
        "_max_tracked",
        "_md_last",
        "_md_updates",
        "_monotonic",
        "_next_sweep",
        "_orders",
        "_phase",
        "_position",
        "_position_notional",
        "_realized",
        "_rebates",
        "_reconnects",
        "_refused",
        "_rejected",
        "_request_duration",
        "_requests",
        "_skew",
        "_submitted",
        "_unknown_outcome",
        "_unrealized",
        "_venue_errors",
        "collector_errors",
        "current_phase",
        "guard",
        "last_heartbeat_monotonic",
        "last_market_data_monotonic",
        "registry",
        "strategy",
        "venue",
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
        self.guard.allow_only("side", SIDES)
        self.guard.allow_only("order_type", ORDER_TYPES)
        self.guard.allow_only("liquidity", LIQUIDITY)
        self.guard.allow_only("error_class", VENUE_ERROR_CLASSES)
        # client order id -> [symbol, order_type, submitted (monotonic), acknowledged]; insertion order is
        # submission order, so the oldest entries are at the front. Touched only by the bot's own thread
        # (the scrape reads a copy), hence no lock.
        self._orders: dict[str, list[Any]] = {}
        self._max_order_age = float(tracked_order_max_age)
        self._max_tracked = int(max_tracked_orders)
        self._next_sweep = monotonic() + TRACKING_SWEEP_INTERVAL_SECONDS
        self.last_heartbeat_monotonic: float | None = None
        self.last_market_data_monotonic: dict[str, float] = {}
        self._order_metrics()
        self._account_metrics(daily_loss_limit)
        self._venue_metrics()
        self._loop_and_control_metrics()

    # -- the families, registered in this order (the /metrics output's) ------------------------------
    def _counter(self, name: str, doc: str, labels: tuple[str, ...], fixed: tuple[str, ...] = VS) -> ChildCache:
        metric = Counter(f"{PREFIX}_{name}", doc, [*fixed, *labels], registry=self.registry)
        return ChildCache(metric, labels, self._fixed(fixed), self.guard, "inc")

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...], fixed: tuple[str, ...] = ("venue",)) -> ChildCache:
        metric = Gauge(f"{PREFIX}_{name}", doc, [*fixed, *labels], registry=self.registry)
        return ChildCache(metric, labels, self._fixed(fixed), self.guard, "set")

    def _order_metrics(self) -> None:
        # Orders and fills.
        self._submitted = self._counter(
            "orders_submitted", "Orders sent to the venue.", ("symbol", "side", "order_type")
        )
        self._acknowledged = self._counter(
            "orders_acknowledged", "Orders the venue acknowledged.", ("symbol", "side", "order_type")
        )
        self._rejected = self._counter("orders_rejected", "Orders the venue rejected, by reason.", ("symbol", "reason"))
        self._canceled = self._counter("orders_canceled", "Orders canceled (by the bot or the venue).", ("symbol",))
        self._refused = self._counter(
            "orders_refused",
            "Orders the bot kept from the venue (trading state, safe-start gate, stale market data, a reconciliation "
            "still due after a reconnect or after the journal came back, a journal that cannot be written, shutdown, "
            "a risk limit: risk_<limit>), by reason.",
            ("symbol", "reason"),
        )
        self._unknown_outcome = self._counter(
            "orders_outcome_unknown",
            "Orders whose submission got no answer (network error, venue unavailable): they may be on the venue; "
            "the bot tracks them until reconciliation settles them.",
            ("symbol",),
        )
        self._fills = self._counter("fills", "Fills (executions) received.", ("symbol", "side", "liquidity"))
        self._filled_quantity = self._counter(
            "filled_quantity", "Quantity filled, in units of the base asset.", ("symbol", "side")
        )
        self._filled_notional = self._counter(
            "filled_notional", "Notional value filled, in units of the quote asset.", ("symbol", "side")
        )
        self._fees = self._counter("fees", "Fees paid, in units of the quote asset.", ("symbol",))
        self._rebates = self._counter(
            "fee_rebates",
            "Fee rebates received (negative fees, e.g. maker rebates), in units of the quote asset.",
            ("symbol",),
        )
        ack = Histogram(
            f"{PREFIX}_order_ack_latency_seconds",
            "Time from order submission to the venue's acknowledgement.",
            ["venue", "order_type"],
            buckets=ACK_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._ack_latency = ChildCache(ack, ("order_type",), (self.venue,), self.guard, "observe")
        fill = Histogram(
            f"{PREFIX}_order_fill_latency_seconds",
            "Time from order submission to each fill.",
            ["venue", "order_type"],
            buckets=FILL_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._fill_latency = ChildCache(fill, ("order_type",), (self.venue,), self.guard, "observe")
        dropped = Counter(
            f"{PREFIX}_tracked_orders_dropped",
            "Orders the library stopped tracking without an event closing them: older than the tracking "
            "horizon (expired) or beyond the tracking cap (overflow).",
            ["venue", "reason"],
            registry=self.registry,
        )
        self._dropped = {reason: dropped.labels(self.venue, reason).inc for reason in DROP_REASONS}

    def _account_metrics(self, daily_loss_limit: float | None) -> None:
        # Positions, balances, P&L.
        self._position = self._gauge(
            "position_quantity", "Signed position in units of the base asset (negative is short).", ("symbol",)
        )
        self._position_notional = self._gauge(
            "position_notional", "Signed position valued at the mark price, in units of the quote asset.", ("symbol",)
        )
        self._balance = self._gauge("balance", "Account balance per asset, in units of that asset.", ("asset",))
        pnl_labels: tuple[str, ...] = ()
        self._realized = self._gauge(
            "realized_pnl",
            "Realized profit and loss since the start of the UTC day, in units of the quote asset.",
            pnl_labels,
            VS,
        )[()]
        self._unrealized = self._gauge(
            "unrealized_pnl",
            "Unrealized profit and loss of open positions at the mark price, in units of the quote asset.",
            pnl_labels,
            VS,
        )[()]
        self._loss_limit = self._gauge(
            "daily_loss_limit",
            "Loss (positive, quote asset) at which the bot must stop trading for the day.",
            pnl_labels,
            VS,
        )[()]
        if daily_loss_limit is not None:
            self._loss_limit(daily_loss_limit)

    def _venue_metrics(self) -> None:
        # Venue connectivity and health.
        self._connected = self._gauge(
            "broker_connected", "1 when the connection to the venue is up, per channel.", ("channel",)
        )
        self._reconnects = self._counter(
            "broker_reconnects", "Connections re-established after a loss, per channel.", ("channel",), ("venue",)
        )
        self._disconnects = self._counter(
            "broker_disconnects", "Connections to the venue lost, per channel.", ("channel",), ("venue",)
        )
        self._connection_state: dict[str, bool] = {}
        self._md_updates = self._counter(
            "market_data_updates", "Market-data updates received.", ("symbol",), ("venue",)
        )
        self._md_last = self._gauge(
            "market_data_last_update_timestamp_seconds",
            "Unix time of the last market-data update per symbol.",
            ("symbol",),
        )
        # Absent until the bot reports one: a 0 exported before that would read as "rate limit exhausted".
        self._headroom = self._gauge(
            "rate_limit_headroom_ratio", "Fraction of the venue's request rate limit still available (0-1).", ()
        )
        self._skew = self._gauge(
            "clock_skew_seconds",
            "Local clock minus the venue's clock, as small as the last reading allows (its round trip and the "
            "venue's time resolution taken out; 0 when they may agree).",
            (),
        )
        self._venue_errors = self._counter(
            "venue_errors", "Errors returned by the venue, by class.", ("error_class",), ("venue",)
        )
        # Every request to the venue's API, answered or not: the denominator of the API error ratio
        # (tradingbot_venue_errors_total over this), and each one's duration.
        self._requests = self._counter(
            "venue_requests",
            "Requests made to the venue's API (REST calls, a stream's requests), answered or failed, per channel.",
            ("channel",),
            ("venue",),
        )
        duration = Histogram(
            f"{PREFIX}_venue_request_duration_seconds",
            "Time the venue took to answer a request (or to fail it), per channel.",
            ["venue", "channel"],
            buckets=REQUEST_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._request_duration = ChildCache(duration, ("channel",), (self.venue,), self.guard, "observe")
        # Seconds connected per channel: accumulated on each change of state, the open stretch added at each
        # scrape (a gauge sampled per scrape misses a drop between two scrapes).
        self._connected_seconds: dict[str, float] = {}
        self._connected_since: dict[str, float] = {}
        # Crashes of this bot over its life, as the journal counts them (None until the bot has read it).
        self._crashes: int | None = None
        # Counters of labels known up front start at 0 (an increase over a window that begins with the series is
        # lost to rate(), and a board's panel would read "no data" instead of "none"): every error class here, a
        # channel's reconnects and disconnects with its first state, each symbol's with known_symbols().
        for error_class in VENUE_ERROR_CLASSES:
            self._venue_errors[(error_class,)]

    def _loop_and_control_metrics(self) -> None:
        # The trading loop.
        self._heartbeat = Gauge(
            f"{PREFIX}_heartbeat_timestamp_seconds",
            "Unix time at which the trading loop last completed an iteration.",
            registry=self.registry,
        ).set
        self._iterations = Counter(
            f"{PREFIX}_loop_iterations", "Trading-loop iterations completed.", registry=self.registry
        ).inc
        # The runtime's lifecycle (one-hot; no sample until a runtime sets one, so a bot built on the library alone
        # exports none): a bot `starting` (safe start: crash check, startup reconciliation; its loop not yet running)
        # is not down nor hung, and no alert pages nor playbook acts on it for that (prometheus/rules).
        self._phase = Gauge(
            f"{PREFIX}_phase",
            "Lifecycle phase of the bot runtime, one-hot: starting, trading or stopping.",
            ["phase"],
            registry=self.registry,
        )
        self.current_phase: str | None = None
        self._loop_duration = Histogram(
            f"{PREFIX}_loop_duration_seconds",
            "Duration of one trading-loop iteration.",
            buckets=LOOP_DURATION_BUCKETS,
            registry=self.registry,
        ).observe

        # Control API.
        self._commands = Counter(
            f"{PREFIX}_control_commands",
            "Control commands received by the control API, and state changes the bot's risk limits made, by who "
            "asked (source: the token's name; with the single control_token operator, reconciler or maintenance; "
            "risk; unauthenticated).",
            ["command", "source"],
            registry=self.registry,
        )
        self._command_failures = Counter(
            f"{PREFIX}_control_command_failures",
            "Control commands that were not carried out, by reason.",
            ["command", "reason"],
            registry=self.registry,
        )
        self.collector_errors = Counter(
            f"{PREFIX}_collector_errors",
            "Errors raised by a metrics collector during a scrape.",
            ["collector"],
            registry=self.registry,
        )

        build = Gauge(
            f"{PREFIX}_build_info",
            "Build of trading-ops running in this bot (always 1).",
            ["version", "python_version"],
            registry=self.registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
        if self.registry is not None:
            self.registry.register(_OrderFlowCollector(self))

    def _fixed(self, names: tuple[str, ...]) -> tuple[str, ...]:
        values = {"venue": self.venue, "strategy": self.strategy}
        return tuple(values[n] for n in names)

    # -- orders -------------------------------------------------------------------------------------------
    def order_submitted(self, symbol: str, side: str, order_type: str, client_order_id: str | None = None) -> None:
        """An order sent to the venue. With `client_order_id`, it is tracked until an event closes it."""
        self._submitted[(symbol, side, order_type)]()
        if client_order_id is not None:
            now = self._monotonic()
            orders = self._orders
            orders[client_order_id] = [symbol, order_type, now, False]
            if now >= self._next_sweep:
                self._sweep(now)

    def order_acknowledged(
        self,
        symbol: str,
        side: str,
        order_type: str,
        client_order_id: str | None = None,
        latency_seconds: float | None = None,
    ) -> None:
        """The venue accepted the order; its ack latency is given, or measured from the tracked submission."""
        self._acknowledged[(symbol, side, order_type)]()
        if client_order_id is not None:
            entry = self._orders.get(client_order_id)
            if entry is not None:
                entry[3] = True
                if latency_seconds is None:
                    latency_seconds = self._monotonic() - entry[2]
        if latency_seconds is not None:
            self._ack_latency[(order_type,)](latency_seconds)

    def order_rejected(self, symbol: str, reason: str, client_order_id: str | None = None) -> None:
        self._rejected[(symbol, reason)]()
        if client_order_id is not None:
            self._orders.pop(client_order_id, None)

    def order_refused(self, symbol: str, reason: str) -> None:
        """An order the bot itself did not send (its own gate said no): never reached the venue."""
        self._refused[(symbol, reason)]()

    def known_symbols(self, symbols: Iterable[str]) -> None:
        """The symbols the bot trades, known at its start: their counters of rare events (orders with an unknown
        outcome, fee rebates) are exported from 0, as the first such event must be counted by rate() too."""
        for symbol in symbols:
            self._unknown_outcome[(symbol,)]
            self._rebates[(symbol,)]

    def order_outcome_unknown(self, symbol: str) -> None:
        """A submission whose answer was lost: the order stays tracked (in flight) until the bot learns its fate."""
        self._unknown_outcome[(symbol,)]()

    def order_canceled(self, symbol: str, client_order_id: str | None = None) -> None:
        self._canceled[(symbol,)]()
        if client_order_id is not None:
            self._orders.pop(client_order_id, None)

    def order_filled(
        self,
        symbol: str,
        side: str,
        quantity: float,
        price: float,
        fee: float = 0.0,
        liquidity: str = "taker",
        *,
        order_type: str = "limit",
        client_order_id: str | None = None,
        order_done: bool = True,
        latency_seconds: float | None = None,
    ) -> None:
        """A fill (execution). A negative fee is a rebate and counts in tradingbot_fee_rebates_total."""
        key = (symbol, side)
        self._fills[(symbol, side, liquidity)]()
        self._filled_quantity[key](quantity)
        self._filled_notional[key](quantity * price)
        if fee > 0:
            self._fees[(symbol,)](fee)
        elif fee < 0:
            self._rebates[(symbol,)](-fee)
        if client_order_id is not None:
            orders = self._orders
            entry = orders.pop(client_order_id, None) if order_done else orders.get(client_order_id)
            if entry is not None:
                order_type = entry[1]
                if latency_seconds is None:
                    latency_seconds = self._monotonic() - entry[2]
        if latency_seconds is not None:
            self._fill_latency[(order_type,)](latency_seconds)

    def order_closed(self, client_order_id: str) -> None:
        """Forget an order without counting an event (it expired, or the journal says it is done)."""
        self._orders.pop(client_order_id, None)

    def tracked_orders(self) -> int:
        """Orders tracked by client order id (submitted and not yet closed by an event)."""
        return len(self._orders)

    def _sweep(self, now: float) -> None:
        """Drop tracked orders past the horizon, then the oldest beyond the cap; count both."""
        self._next_sweep = now + TRACKING_SWEEP_INTERVAL_SECONDS
        orders = self._orders
        cutoff = now - self._max_order_age
        expired = []
        for client_order_id, entry in orders.items():
            if entry[2] > cutoff:
                break  # submission order: everything after this one is younger
            expired.append(client_order_id)
        for client_order_id in expired:
            del orders[client_order_id]
        if expired:
            self._dropped["expired"](len(expired))
        overflow = len(orders) - self._max_tracked
        if overflow > 0:
            for client_order_id in list(itertools.islice(orders, overflow)):
                del orders[client_order_id]
            self._dropped["overflow"](overflow)

    # -- positions, balances, P&L -----------------------------------------------------------------------
    def position(self, symbol: str, quantity: float, notional: float | None = None) -> None:
        self._position[(symbol,)](quantity)
        if notional is not None:
            self._position_notional[(symbol,)](notional)

    def balance(self, asset: str, total: float) -> None:
        self._balance[(asset,)](total)

    def pnl(self, realized: float, unrealized: float) -> None:
        self._realized(realized)
        self._unrealized(unrealized)

    def daily_loss_limit(self, limit: float) -> None:
        self._loss_limit(limit)

    # -- venue connectivity -------------------------------------------------------------------------------
    def broker_connection(self, channel: str, connected: bool) -> None:
        """Record the connection state of a channel; a down-to-up change counts as a reconnect."""
        previous = self._connection_state.get(channel)
        self._connection_state[channel] = connected
        now = self._monotonic()
        since = self._connected_since.pop(channel, None)
        if since is not None:
            self._connected_seconds[channel] = self._connected_seconds.get(channel, 0.0) + (now - since)
        else:
            self._connected_seconds.setdefault(channel, 0.0)
        if connected:
            self._connected_since[channel] = now
        self._connected[(channel,)](1 if connected else 0)
        if previous is None:  # a channel this bot has: its reconnects, disconnects and requests are exported from 0
            self._reconnects[(channel,)]
            self._disconnects[(channel,)]
            self._requests[(channel,)]
            self._request_duration[(channel,)]
        if previous is True and not connected:
            self._disconnects[(channel,)]()
        elif previous is False and connected:
            self._reconnects[(channel,)]()

    def market_data(self, symbol: str) -> None:
        self._md_updates[(symbol,)]()
        self._md_last[(symbol,)](self._clock())
        self.last_market_data_monotonic[symbol] = self._monotonic()

    def rate_limit_headroom(self, ratio: float) -> None:
        self._headroom[()](min(1.0, max(0.0, ratio)))

    def clock_skew(self, seconds: float) -> None:
        self._skew[()](seconds)

    def venue_error(self, error_class: ErrorClass | str) -> None:
        self._venue_errors[(error_class,)]()

    def venue_request(self, channel: str, duration_seconds: float) -> None:
        """One request to the venue's API, answered or failed, and how long it took."""
        self._requests[(channel,)]()
        self._request_duration[(channel,)](duration_seconds)

    def connected_seconds(self) -> dict[str, float]:
        """Seconds each channel has been connected since the bot started (the open stretch included)."""
        now = self._monotonic()
        totals = dict(self._connected_seconds)
        for channel, since in list(self._connected_since.items()):
            totals[channel] = totals.get(channel, 0.0) + (now - since)
        return totals

    def crashes(self, count: int) -> None:
        """How many times this bot crashed over its life (runs that ended without the clean-shutdown marker), as its
        journal counts them: set once at start, before the first scrape that should show it."""
        self._crashes = int(count)

    # -- trading loop -------------------------------------------------------------------------------------
    def loop_iteration(self, duration_seconds: float) -> None:
        """Call once per completed trading-loop iteration: it is the bot's heartbeat."""
        self._iterations()
        self._loop_duration(duration_seconds)
        self._heartbeat(self._clock())
        self.last_heartbeat_monotonic = self._monotonic()

    def phase(self, phase: str) -> None:
        """The runtime entered `phase` (one of PHASES)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r} (one of {', '.join(PHASES)})")
        for each in PHASES:
            self._phase.labels(each).set(1 if each == phase else 0)
        self.current_phase = phase

    def loop_started(self) -> None:
        """The trading loop starts: until its first iteration completes, the heartbeat reads the loop's start. The
        gauge reads 0 (1970) before: a scrape between the start and the first iteration, right after a restart, showed
        a heartbeat decades stale, and a verification of that restart saw the loop still hung."""
        if self.last_heartbeat_monotonic is None:
            self._heartbeat(self._clock())

    def heartbeat_age(self) -> float | None:
        """Seconds since the last loop iteration (monotonic), or None before the first one."""
        if self.last_heartbeat_monotonic is None:
            return None
        return self._monotonic() - self.last_heartbeat_monotonic

    def market_data_age(self, symbol: str) -> float | None:
        last = self.last_market_data_monotonic.get(symbol)
        return None if last is None else self._monotonic() - last

    # -- control API --------------------------------------------------------------------------------------
    def control_commands_known(self, commands: tuple[str, ...], sources: tuple[str, ...]) -> None:
        """Export these commands' counters at 0 for each source from the start: increase() over a series that
        appears at 1 is 0, so the first pause or halt would be missing from the boards."""
        for command in commands:
            for source in sources:
                self._commands.labels(command, source)

    def control_command(self, command: str, source: str) -> None:
        """A control command asked for, and by whom (one of trading_ops.bot.control's SOURCE_* values)."""
        self._commands.labels(command, source).inc()

    def control_failure(self, command: str, reason: str) -> None:
        self._command_failures.labels(command, reason).inc()


class _OrderFlowCollector(Collector):
    """Orders in flight and open per symbol, the submission time of the oldest unacknowledged one, the seconds each
    channel has been connected and the crashes the journal counts."""

    def __init__(self, metrics: BotMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        m = self._metrics
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_orders_in_flight",
            "Orders submitted and not yet acknowledged or rejected.",
            labels=["venue", "symbol"],
        )
        open_orders = GaugeMetricFamily(
            f"{PREFIX}_open_orders", "Orders acknowledged and still working on the venue.", labels=["venue", "symbol"]
        )
        oldest_family = GaugeMetricFamily(
            f"{PREFIX}_oldest_order_in_flight_timestamp_seconds",
            "Unix time at which the oldest unacknowledged order was submitted; absent when there is none.",
            labels=["venue"],
        )
        counts_in_flight: dict[str, int] = {}
        counts_open: dict[str, int] = {}
        oldest: float | None = None
        # A copy: the bot's thread may add and remove orders while this scrape runs on another thread.
        # Entries past the horizon are not counted even before the next sweep drops them.
        now = m._monotonic()
        cutoff = now - m._max_order_age
        for symbol, _type, submitted, acked in list(m._orders.values()):
            if submitted <= cutoff:
                continue
            if acked:
                counts_open[symbol] = counts_open.get(symbol, 0) + 1
            else:
                counts_in_flight[symbol] = counts_in_flight.get(symbol, 0) + 1
                oldest = submitted if oldest is None else min(oldest, submitted)
        symbols = set(counts_in_flight) | set(counts_open) | {key[0] for key in list(m._submitted)}
        by_label: dict[str, list[int]] = {}
        for symbol in symbols:
            totals = by_label.setdefault(m.guard.peek("symbol", symbol), [0, 0])
            totals[0] += counts_in_flight.get(symbol, 0)
            totals[1] += counts_open.get(symbol, 0)
        for label, (flying, working) in sorted(by_label.items()):
            in_flight.add_metric([m.venue, label], flying)
            open_orders.add_metric([m.venue, label], working)
        yield in_flight
        yield open_orders
        if oldest is not None:
            # Submission times are monotonic (immune to clock steps); convert once, at scrape time.
            oldest_family.add_metric([m.venue], m._clock() - (now - oldest))
        yield oldest_family
        connected = CounterMetricFamily(
            f"{PREFIX}_broker_connected_seconds",
            "Seconds the connection to the venue has been up since the bot started, per channel: the stream uptime "
            "over a window is its increase over the window's length.",
            labels=["venue", "channel"],
        )
        for channel, seconds in sorted(m.connected_seconds().items()):
            connected.add_metric([m.venue, m.guard.peek("channel", channel)], seconds)
        yield connected
        # Carried over restarts (the journal's count), so its increase over a window is the crashes in it; absent
        # until the bot has read it, so that a start never shows a jump from 0.
        crashes = CounterMetricFamily(
            f"{PREFIX}_crashes",
            "Runs of this bot that ended without a clean shutdown (a crash, a kill -9, a host that died), over the "
            "bot's life as its journal counts them; a deliberate restart is not one.",
            labels=["venue"],
        )
        if m._crashes is not None:
            crashes.add_metric([m.venue], m._crashes)
        yield crashes
