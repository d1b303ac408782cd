"""The stream's health as metrics (`tradingbot_stream_…`), on the registry a caller gives."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

RECONNECT_REASONS = ("closed", "silent", "error", "requested")


class StreamMetrics:
    """Connected per endpoint, the last message per channel and symbol (and its silence timeout), reconnects by
    reason, checksum failures and resyncs per symbol, sequence gaps per channel, REST fallback per endpoint; bounded
    labels only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "tradingbot_stream_connected",
            "1 while the venue's stream endpoint is connected.",
            ["endpoint"],
            registry=registry,
        )
        self.last_message = Gauge(
            "tradingbot_stream_last_message_timestamp_seconds",
            "When the channel last delivered a message for the symbol (its age: time() minus this).",
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
            "1 while the book agrees with its checksum.",
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
        for endpoint in ("public", "private"):
            for reason in RECONNECT_REASONS:
                self.reconnects.labels(endpoint, reason)
