"""The order families of BotMetrics: orders and fills as the bot reports them, and the orders it tracks by id."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trading_ops.bot.cardinality import ChildCache
from trading_ops.bot.metrics_base import PREFIX, MetricsBase

SIDES = ("buy", "sell")
ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "post_only")
LIQUIDITY = ("maker", "taker")
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


class OrderMetrics(MetricsBase):
    """Orders submitted, acknowledged, rejected, refused, canceled, of unknown outcome; fills, quantities, notional,
    fees and rebates; the acknowledgement and fill latencies of the orders tracked by client order id, and the
    tracking itself (expired and overflowing entries dropped and counted). A part of BotMetrics (see MetricsBase)."""

    if not TYPE_CHECKING:  # mypy would hold the part to an empty __slots__; BotMetrics holds its attributes
        __slots__ = ()

    _submitted: ChildCache
    _acknowledged: ChildCache
    _rejected: ChildCache
    _canceled: ChildCache
    _refused: ChildCache
    _unknown_outcome: ChildCache
    _fills: ChildCache
    _filled_quantity: ChildCache
    _filled_notional: ChildCache
    _fees: ChildCache
    _rebates: ChildCache
    _ack_latency: ChildCache
    _fill_latency: ChildCache
    _dropped: dict[str, Callable[[float], None]]
    # client order id -> [symbol, order_type, submitted (monotonic), acknowledged]; insertion order is
    # submission order, so the oldest entries are at the front. Touched only by the bot's own thread
    # (the scrape reads a copy), hence no lock.
    _orders: dict[str, list[Any]]
    _max_order_age: float
    _max_tracked: int
    _next_sweep: float

    def _order_metrics(self, tracked_order_max_age: float, max_tracked_orders: int) -> None:
        self.guard.allow_only("side", SIDES)
        self.guard.allow_only("order_type", ORDER_TYPES)
        self.guard.allow_only("liquidity", LIQUIDITY)
        self._orders = {}
        self._max_order_age = float(tracked_order_max_age)
        self._max_tracked = int(max_tracked_orders)
        self._next_sweep = self._monotonic() + TRACKING_SWEEP_INTERVAL_SECONDS
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
        self._ack_latency = self._histogram(
            "order_ack_latency_seconds",
            "Time from order submission to the venue's acknowledgement.",
            "order_type",
            ACK_LATENCY_BUCKETS,
        )
        self._fill_latency = self._histogram(
            "order_fill_latency_seconds", "Time from order submission to each fill.", "order_type", FILL_LATENCY_BUCKETS
        )
        dropped = Counter(
            f"{PREFIX}_tracked_orders_dropped",
            "Orders the library stopped tracking without an event closing them: older than the tracking "
            "horizon (expired) or beyond the tracking cap (overflow).",
            ["venue", "reason"],
            registry=self.registry,
        )
        self._dropped = {reason: dropped.labels(self.venue, reason).inc for reason in DROP_REASONS}

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


class OrderFlowCollector(Collector):
    """Orders in flight and open per symbol, and the submission time of the oldest unacknowledged one (OrderMetrics's
    tracked orders, read at each scrape)."""

    def __init__(self, metrics: OrderMetrics) -> None:
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
