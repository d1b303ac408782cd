"""The typed API a trading bot calls on each event; it keeps the `tradingbot_` metric catalogue."""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
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

ErrorClass = Literal[
    "rate_limit", "auth", "nonce", "timestamp", "network", "unavailable", "insufficient_funds", "other"
]


class _InFlight:
    """Orders between submission and their last event; exported per symbol at scrape time."""

    __slots__ = ("orders", "lock")

    def __init__(self) -> None:
        # client order id -> [symbol, order_type, submitted (monotonic), acknowledged]
        self.orders: dict[str, list[Any]] = {}
        self.lock = threading.Lock()


class BotMetrics:
    """Everything a bot records. One instance per bot process; pass `registry` for an isolated one.

    Every record call resolves its metric child through a cache, so the hot path is one dict lookup
    plus the prometheus_client child operation. Label values a bot passes are bounded by the
    cardinality guard; order ids are accepted only to measure latency and are never labels.
    """

    def __init__(
        self,
        *,
        venue: str,
        strategy: str = "default",
        registry: CollectorRegistry | None = REGISTRY,
        cardinality_limit: int = 200,
        daily_loss_limit: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # `_created` samples double the series count for no use in alerting; bots don't export them.
        disable_created_metrics()
        self.venue = venue
        self.strategy = strategy
        self.registry = registry
        self._clock = clock
        self.guard = LabelGuard(cardinality_limit, registry, PREFIX)
        self.guard.allow_only("side", SIDES)
        self.guard.allow_only("order_type", ORDER_TYPES)
        self.guard.allow_only("liquidity", LIQUIDITY)
        self.guard.allow_only("error_class", VENUE_ERROR_CLASSES)
        self._in_flight = _InFlight()
        self.last_heartbeat_monotonic: float | None = None
        self.last_market_data_monotonic: dict[str, float] = {}
        r = registry
        vs = ("venue", "strategy")

        def counter(name: str, doc: str, labels: tuple[str, ...], fixed: tuple[str, ...] = vs) -> ChildCache:
            metric = Counter(f"{PREFIX}_{name}", doc, [*fixed, *labels], registry=r)
            return ChildCache(metric, labels, self._fixed(fixed), self.guard)

        def gauge(name: str, doc: str, labels: tuple[str, ...], fixed: tuple[str, ...] = ("venue",)) -> ChildCache:
            metric = Gauge(f"{PREFIX}_{name}", doc, [*fixed, *labels], registry=r)
            return ChildCache(metric, labels, self._fixed(fixed), self.guard)

        # Orders and fills.
        self._submitted = counter("orders_submitted", "Orders sent to the venue.", ("symbol", "side", "order_type"))
        self._acknowledged = counter(
            "orders_acknowledged", "Orders the venue acknowledged.", ("symbol", "side", "order_type")
        )
        self._rejected = counter("orders_rejected", "Orders the venue rejected, by reason.", ("symbol", "reason"))
        self._canceled = counter("orders_canceled", "Orders canceled (by the bot or the venue).", ("symbol",))
        self._fills = counter("fills", "Fills (executions) received.", ("symbol", "side", "liquidity"))
        self._filled_quantity = counter(
            "filled_quantity", "Quantity filled, in units of the base asset.", ("symbol", "side")
        )
        self._filled_notional = counter(
            "filled_notional", "Notional value filled, in units of the quote asset.", ("symbol", "side")
        )
        self._fees = counter("fees", "Fees paid, in units of the quote asset.", ("symbol",))
        ack = Histogram(
            f"{PREFIX}_order_ack_latency_seconds",
            "Time from order submission to the venue's acknowledgement.",
            ["venue", "order_type"],
            buckets=ACK_LATENCY_BUCKETS,
            registry=r,
        )
        self._ack_latency = ChildCache(ack, ("order_type",), (venue,), self.guard)
        fill = Histogram(
            f"{PREFIX}_order_fill_latency_seconds",
            "Time from order submission to each fill.",
            ["venue", "order_type"],
            buckets=FILL_LATENCY_BUCKETS,
            registry=r,
        )
        self._fill_latency = ChildCache(fill, ("order_type",), (venue,), self.guard)

        # Positions, balances, P&L.
        self._position = gauge(
            "position_quantity", "Signed position in units of the base asset (negative is short).", ("symbol",)
        )
        self._position_notional = gauge(
            "position_notional", "Signed position valued at the mark price, in units of the quote asset.", ("symbol",)
        )
        self._balance = gauge("balance", "Account balance per asset, in units of that asset.", ("asset",))
        pnl_labels: tuple[str, ...] = ()
        self._realized = gauge(
            "realized_pnl",
            "Realized profit and loss since the start of the UTC day, in units of the quote asset.",
            pnl_labels,
            vs,
        )[()]
        self._unrealized = gauge(
            "unrealized_pnl",
            "Unrealized profit and loss of open positions at the mark price, in units of the quote asset.",
            pnl_labels,
            vs,
        )[()]
        self._loss_limit = gauge(
            "daily_loss_limit",
            "Loss (positive, quote asset) at which the bot must stop trading for the day.",
            pnl_labels,
            vs,
        )[()]
        if daily_loss_limit is not None:
            self._loss_limit.set(daily_loss_limit)

        # Venue connectivity and health.
        self._connected = gauge(
            "broker_connected", "1 when the connection to the venue is up, per channel.", ("channel",)
        )
        self._reconnects = counter(
            "broker_reconnects", "Connections re-established after a loss, per channel.", ("channel",), ("venue",)
        )
        self._disconnects = counter(
            "broker_disconnects", "Connections to the venue lost, per channel.", ("channel",), ("venue",)
        )
        self._connection_state: dict[str, bool] = {}
        self._md_updates = counter("market_data_updates", "Market-data updates received.", ("symbol",), ("venue",))
        self._md_last = gauge(
            "market_data_last_update_timestamp_seconds",
            "Unix time of the last market-data update per symbol.",
            ("symbol",),
        )
        self._headroom = gauge(
            "rate_limit_headroom_ratio", "Fraction of the venue's request rate limit still available (0-1).", ()
        )[()]
        self._skew = gauge("clock_skew_seconds", "Local clock minus the venue's clock.", ())[()]
        self._venue_errors = counter(
            "venue_errors", "Errors returned by the venue, by class.", ("error_class",), ("venue",)
        )

        # The trading loop.
        self._heartbeat = Gauge(
            f"{PREFIX}_heartbeat_timestamp_seconds",
            "Unix time at which the trading loop last completed an iteration.",
            registry=r,
        )
        self._iterations = Counter(f"{PREFIX}_loop_iterations", "Trading-loop iterations completed.", registry=r)
        self._loop_duration = Histogram(
            f"{PREFIX}_loop_duration_seconds",
            "Duration of one trading-loop iteration.",
            buckets=LOOP_DURATION_BUCKETS,
            registry=r,
        )

        # Control API.
        self._commands = Counter(f"{PREFIX}_control_commands", "Control commands received.", ["command"], registry=r)
        self._command_failures = Counter(
            f"{PREFIX}_control_command_failures",
            "Control commands that were not carried out, by reason.",
            ["command", "reason"],
            registry=r,
        )
        self.collector_errors = Counter(
            f"{PREFIX}_collector_errors",
            "Errors raised by a metrics collector during a scrape.",
            ["collector"],
            registry=r,
        )

        build = Gauge(
            f"{PREFIX}_build_info",
            "Build of trading-ops running in this bot (always 1).",
            ["version", "python_version"],
            registry=r,
        )
        build.labels(__version__, platform.python_version()).set(1)
        if r is not None:
            r.register(_OrderFlowCollector(self))

    def _fixed(self, names: tuple[str, ...]) -> tuple[str, ...]:
        values = {"venue": self.venue, "strategy": self.strategy}
        return tuple(values[n] for n in names)

    # -- orders -------------------------------------------------------------------------------------------
    def order_submitted(self, symbol: str, side: str, order_type: str, client_order_id: str | None = None) -> None:
        self._submitted[(symbol, side, order_type)].inc()
        if client_order_id is not None:
            self._in_flight.orders[client_order_id] = [symbol, order_type, time.monotonic(), False]

    def order_acknowledged(
        self,
        symbol: str,
        side: str,
        order_type: str,
        client_order_id: str | None = None,
        latency_seconds: float | None = None,
    ) -> None:
        self._acknowledged[(symbol, side, order_type)].inc()
        if client_order_id is not None:
            entry = self._in_flight.orders.get(client_order_id)
            if entry is not None:
                entry[3] = True
                if latency_seconds is None:
                    latency_seconds = time.monotonic() - entry[2]
        if latency_seconds is not None:
            self._ack_latency[(order_type,)].observe(latency_seconds)

    def order_rejected(self, symbol: str, reason: str, client_order_id: str | None = None) -> None:
        self._rejected[(symbol, reason)].inc()
        if client_order_id is not None:
            self._in_flight.orders.pop(client_order_id, None)

    def order_canceled(self, symbol: str, client_order_id: str | None = None) -> None:
        self._canceled[(symbol,)].inc()
        if client_order_id is not None:
            self._in_flight.orders.pop(client_order_id, None)

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
        key = (symbol, side)
        self._fills[(symbol, side, liquidity)].inc()
        self._filled_quantity[key].inc(quantity)
        self._filled_notional[key].inc(quantity * price)
        if fee:
            self._fees[(symbol,)].inc(fee)
        if client_order_id is not None:
            orders = self._in_flight.orders
            entry = orders.pop(client_order_id, None) if order_done else orders.get(client_order_id)
            if entry is not None:
                order_type = entry[1]
                if latency_seconds is None:
                    latency_seconds = time.monotonic() - entry[2]
        if latency_seconds is not None:
            self._fill_latency[(order_type,)].observe(latency_seconds)

    def order_closed(self, client_order_id: str) -> None:
        """Forget an order without counting an event (it expired, or the journal says it is done)."""
        self._in_flight.orders.pop(client_order_id, None)

    # -- positions, balances, P&L -----------------------------------------------------------------------
    def position(self, symbol: str, quantity: float, notional: float | None = None) -> None:
        self._position[(symbol,)].set(quantity)
        if notional is not None:
            self._position_notional[(symbol,)].set(notional)

    def balance(self, asset: str, total: float) -> None:
        self._balance[(asset,)].set(total)

    def pnl(self, realized: float, unrealized: float) -> None:
        self._realized.set(realized)
        self._unrealized.set(unrealized)

    def daily_loss_limit(self, limit: float) -> None:
        self._loss_limit.set(limit)

    # -- venue connectivity -------------------------------------------------------------------------------
    def broker_connection(self, channel: str, connected: bool) -> None:
        """Record the connection state of a channel; a down-to-up change counts as a reconnect."""
        previous = self._connection_state.get(channel)
        self._connection_state[channel] = connected
        self._connected[(channel,)].set(1 if connected else 0)
        if previous is True and not connected:
            self._disconnects[(channel,)].inc()
        elif previous is False and connected:
            self._reconnects[(channel,)].inc()

    def market_data(self, symbol: str) -> None:
        self._md_updates[(symbol,)].inc()
        self._md_last[(symbol,)].set(self._clock())
        self.last_market_data_monotonic[symbol] = time.monotonic()

    def rate_limit_headroom(self, ratio: float) -> None:
        self._headroom.set(min(1.0, max(0.0, ratio)))

    def clock_skew(self, seconds: float) -> None:
        self._skew.set(seconds)

    def venue_error(self, error_class: ErrorClass | str) -> None:
        self._venue_errors[(error_class,)].inc()

    # -- trading loop -------------------------------------------------------------------------------------
    def loop_iteration(self, duration_seconds: float) -> None:
        """Call once per completed trading-loop iteration: it is the bot's heartbeat."""
        self._iterations.inc()
        self._loop_duration.observe(duration_seconds)
        self._heartbeat.set(self._clock())
        self.last_heartbeat_monotonic = time.monotonic()

    def heartbeat_age(self) -> float | None:
        """Seconds since the last loop iteration (monotonic), or None before the first one."""
        if self.last_heartbeat_monotonic is None:
            return None
        return time.monotonic() - self.last_heartbeat_monotonic

    def market_data_age(self, symbol: str) -> float | None:
        last = self.last_market_data_monotonic.get(symbol)
        return None if last is None else time.monotonic() - last

    # -- control API --------------------------------------------------------------------------------------
    def control_command(self, command: str) -> None:
        self._commands.labels(command).inc()

    def control_failure(self, command: str, reason: str) -> None:
        self._command_failures.labels(command, reason).inc()


class _OrderFlowCollector(Collector):
    """Orders in flight and open per symbol, and the submission time of the oldest unacknowledged one."""

    def __init__(self, metrics: BotMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
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
        for symbol, _type, submitted, acked in list(m._in_flight.orders.values()):
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
            oldest_family.add_metric([m.venue], m._clock() - (time.monotonic() - oldest))
        yield oldest_family
