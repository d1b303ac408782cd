"""The venue families of BotMetrics: the connection per channel, market data, the venue's requests and errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from trading_ops.bot.cardinality import ChildCache
from trading_ops.bot.metrics_base import PREFIX, MetricsBase
from trading_ops.bot.order_metrics import ACK_LATENCY_BUCKETS

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
# One request to the venue's API (REST or a stream's request): the seeds' checklist wants responses under 100 ms;
# a venue that takes seconds is in trouble. The acknowledgement buckets, which cover both.
REQUEST_DURATION_BUCKETS = ACK_LATENCY_BUCKETS

ErrorClass = Literal[
    "rate_limit", "auth", "nonce", "timestamp", "network", "unavailable", "insufficient_funds", "invalid_order", "other"
]


class VenueMetrics(MetricsBase):
    """Each channel's connection (up, reconnects, disconnects, seconds connected), market data per symbol and its age,
    the rate limit's headroom, the clock's skew, and every request to the venue's API with its duration and errors. A
    part of BotMetrics (see MetricsBase)."""

    if not TYPE_CHECKING:  # mypy would hold the part to an empty __slots__; BotMetrics holds its attributes
        __slots__ = ()

    _connected: ChildCache
    _reconnects: ChildCache
    _disconnects: ChildCache
    _connection_state: dict[str, bool]
    _md_updates: ChildCache
    _md_last: ChildCache
    _headroom: ChildCache
    _skew: ChildCache
    _venue_errors: ChildCache
    _requests: ChildCache
    _request_duration: ChildCache
    _connected_seconds: dict[str, float]
    _connected_since: dict[str, float]
    last_market_data_monotonic: dict[str, float]

    def _venue_metrics(self) -> None:
        self.guard.allow_only("error_class", VENUE_ERROR_CLASSES)
        self.last_market_data_monotonic = {}
        self._connected = self._gauge(
            "broker_connected", "1 when the connection to the venue is up, per channel.", ("channel",)
        )
        self._reconnects = self._counter(
            "broker_reconnects", "Connections re-established after a loss, per channel.", ("channel",), ("venue",)
        )
        self._disconnects = self._counter(
            "broker_disconnects", "Connections to the venue lost, per channel.", ("channel",), ("venue",)
        )
        self._connection_state = {}
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
        self._request_duration = self._histogram(
            "venue_request_duration_seconds",
            "Time the venue took to answer a request (or to fail it), per channel.",
            "channel",
            REQUEST_DURATION_BUCKETS,
        )
        # Seconds connected per channel: accumulated on each change of state, the open stretch added at each
        # scrape (a gauge sampled per scrape misses a drop between two scrapes).
        self._connected_seconds = {}
        self._connected_since = {}
        # Counters of labels known up front start at 0 (an increase over a window that begins with the series is
        # lost to rate(), and a board's panel would read "no data" instead of "none"): every error class here, a
        # channel's reconnects and disconnects with its first state, each symbol's with known_symbols().
        for error_class in VENUE_ERROR_CLASSES:
            self._venue_errors[(error_class,)]

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

    def market_data_age(self, symbol: str) -> float | None:
        last = self.last_market_data_monotonic.get(symbol)
        return None if last is None else self._monotonic() - last


class ConnectionCollector(Collector):
    """The seconds each channel has been connected, the open stretch added at each scrape."""

    def __init__(self, metrics: VenueMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        m = self._metrics
        connected = CounterMetricFamily(
            f"{PREFIX}_broker_connected_seconds",
            "Seconds the connection to the venue has been up since the bot started, per channel: the stream uptime "
            "over a window is its increase over the window's length.",
            labels=["venue", "channel"],
        )
        for channel, seconds in sorted(m.connected_seconds().items()):
            connected.add_metric([m.venue, m.guard.peek("channel", channel)], seconds)
        yield connected
