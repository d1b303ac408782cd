"""The stream's health as metrics (`tradingbot_stream_…`), on the registry a caller gives."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

RECONNECT_REASONS = ("closed", "silent", "error", "requested")
SUBSCRIBE_FAULTS = ("refused", "unanswered")  # a subscription the venue answered with an error, or not in time
ENDPOINTS = ("public", "private")


class FallbackClock(Collector):
    """`tradingbot_stream_rest_fallback_seconds_total`: seconds each endpoint has spent on REST fallback, counted up
    to the scrape (a fallback still under way included), fresh at every scrape."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._spent: dict[str, float] = dict.fromkeys(ENDPOINTS, 0.0)
        self._since: dict[str, float] = {}

    def set(self, endpoint: str, on: bool) -> None:
        now = self._clock()
        since = self._since.pop(endpoint, None)
        if since is not None:
            self._spent[endpoint] = self._spent.get(endpoint, 0.0) + now - since
        if on:
            self._since[endpoint] = now

    def seconds(self, endpoint: str) -> float:
        since = self._since.get(endpoint)
        return self._spent.get(endpoint, 0.0) + (self._clock() - since if since is not None else 0.0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "tradingbot_stream_rest_fallback_seconds",
            "Seconds the endpoint's stream was down while REST polls stood in for it.",
            labels=["endpoint"],
        )
        for endpoint in sorted(set(self._spent) | set(self._since)):
            family.add_metric([endpoint], self.seconds(endpoint))
        yield family


class StreamMetrics:
    """Connected per endpoint, the last message per channel and symbol (and its silence timeout), reconnects by
    reason, checksum failures and resyncs per symbol, sequence gaps per channel, REST fallback per endpoint (and the
    seconds spent on it), fills by the source that saw them first, a subscription the venue holds or ended, a channel
    without a cadence found silent; bounded labels only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "tradingbot_stream_connected",
            "1 while the venue's stream endpoint is connected.",
            ["endpoint"],
            registry=registry,
        )
        self.last_message = Gauge(
            "tradingbot_stream_last_message_timestamp_seconds",
            "When the channel was last known current for the symbol: its last message, or on a market quiet since, "
            "the REST quote that found it unchanged (its age: time() minus this).",
            ["channel", "symbol"],
            registry=registry,
        )
        self.reconnects = Counter(
            "tradingbot_stream_reconnects_total",
            "Reconnects of the stream, by reason.",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.checksum_failures = Counter(
            "tradingbot_stream_checksum_failures_total",
            "Book messages whose checksum disagreed with the book they left.",
            ["symbol"],
            registry=registry,
        )
        self.resyncs = Counter(
            "tradingbot_stream_resyncs_total",
            "Subscriptions made again to heal a channel (a book out of sync, a silent channel).",
            ["channel", "reason"],
            registry=registry,
        )
        self.sequence_gaps = Counter(
            "tradingbot_stream_sequence_gaps_total",
            "Messages lost, by the sequence of a private channel.",
            ["channel"],
            registry=registry,
        )
        self.book_in_sync = Gauge(
            "tradingbot_stream_book_in_sync",
            "1 while the book agrees with its checksum (on Binance: while its update ids follow on from its snapshot).",
            ["symbol"],
            registry=registry,
        )
        self.silence_timeout = Gauge(
            "tradingbot_stream_silence_timeout_seconds",
            "How long the channel may stay quiet for the symbol before it is silent (only channels with a cadence).",
            ["channel", "symbol"],
            registry=registry,
        )
        self.rest_fallback = Gauge(
            "tradingbot_stream_rest_fallback",
            "1 while the endpoint's stream is down and REST polls stand in for it.",
            ["endpoint"],
            registry=registry,
        )
        self.fills_first_seen = Counter(
            "tradingbot_stream_fills_first_seen_total",
            "Fills delivered, by the source that saw each first (stream or poll).",
            ["source"],
            registry=registry,
        )
        self.subscribe_failures = Counter(
            "tradingbot_stream_subscribe_failures_total",
            "Subscriptions that failed: refused by the venue (its error) or unanswered within the bound.",
            ["channel", "reason"],
            registry=registry,
        )
        self.book_gaps = Counter(
            "tradingbot_stream_book_gaps_total",
            "Diff-depth events whose first update id skipped past the book's last (Binance's U past u + 1): the "
            "book was rebuilt from a new snapshot.",
            ["symbol"],
            registry=registry,
        )
        self.subscribed = Gauge(
            "tradingbot_stream_subscribed",
            "1 while the venue holds the channel's subscription (acked, not ended): Binance's user data stream.",
            ["channel"],
            registry=registry,
        )
        self.subscription_ends = Counter(
            "tradingbot_stream_subscription_ends_total",
            "Subscriptions the venue ended (Binance's eventStreamTerminated, an expired listen key): subscribed again.",
            ["channel"],
            registry=registry,
        )
        self.channel_silent = Gauge(
            "tradingbot_stream_channel_silent",
            "1 while a channel without a cadence is silent: it owed what REST found or an order the venue took, and "
            "nothing of it was heard since (nor a new subscription owing nothing).",
            ["channel"],
            registry=registry,
        )
        self.fallback_clock = FallbackClock()
        registry.register(self.fallback_clock)
        for endpoint in ENDPOINTS:
            for reason in RECONNECT_REASONS:
                self.reconnects.labels(endpoint, reason)

    def set_rest_fallback(self, endpoint: str, on: bool) -> None:
        """The endpoint's stream is down (REST polls stand in) or up again: the gauge and the seconds counted."""
        self.rest_fallback.labels(endpoint).set(1 if on else 0)
        self.fallback_clock.set(endpoint, on)
