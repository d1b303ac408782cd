"""The streaming client (trading_ops.venues.ccxt.kraken_stream) on the gateway's WebSocket v2, each stream fault
injected and healed by the client alone, seen in its `tradingbot_stream_…` metrics: a channel acked then silent
(resubscribed), a whole socket silent and a dropped socket (reconnected, subscriptions replayed), a corrupted book
checksum (counted, resynced, in sync again), a gap in executions' sequence (counted, the caller told), an invalid
session (a fresh token). Needs only the gateway, started per test on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest
from ccxt_helpers import chaos, limit, running_gateway, wait_for
from prometheus_client import CollectorRegistry
from ws_helpers import ws_token, ws_urls

from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.venues.ccxt.kraken_stream import KrakenStream, Subscription

MOVING = {"tick_interval": 0.02, "volatility": 0.001}
PRECISION = {"BTC/USD": (2, 4), "ETH/USD": (2, 4)}
DEADLINE = 30.0


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def streaming(stream: KrakenStream) -> AsyncIterator[KrakenStream]:
    task = asyncio.create_task(stream.run())
    try:
        await asyncio.wait_for(stream.connected.wait(), DEADLINE)
        yield stream
    finally:
        await stream.close()
        await asyncio.wait_for(task, DEADLINE)


def book_stream(base: str, registry: CollectorRegistry, messages: list[dict]) -> KrakenStream:
    async def keep(message: dict) -> None:
        messages.append(message)

    subs = [Subscription("book", ["BTC/USD"], cadence=0.02, params={"depth": 10})]
    return KrakenStream(ws_urls(base)[0], subs, StreamMetrics(registry), precision=PRECISION, on_message=keep)


def books_after(messages: list[dict], start: int) -> int:
    return sum(1 for m in messages[start:] if m.get("channel") == "book")


async def test_a_silent_channel_is_resubscribed_and_flows_again() -> None:
    registry = CollectorRegistry()
    messages: list[dict] = []
    async with running_gateway(**MOVING) as (_gateway, base), streaming(book_stream(base, registry, messages)):
        await wait_for(lambda: sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1)
        await chaos(base, "ws_silent_channel", channel="book")
        await wait_for(lambda: sample(registry, "tradingbot_stream_resyncs_total", channel="book", reason="silent"))
        start = len(messages)
        await wait_for(lambda: books_after(messages, start) >= 5)
        assert sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1
        assert sample(registry, "tradingbot_stream_reconnects_total", endpoint="public", reason="silent") == 0


async def test_a_silent_socket_and_a_dropped_one_are_reconnected_with_their_subscriptions() -> None:
    registry = CollectorRegistry()
    messages: list[dict] = []
    async with running_gateway(**MOVING) as (gateway, base), streaming(book_stream(base, registry, messages)):
        await wait_for(lambda: sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1)
        await chaos(base, "ws_silent_socket")
        await wait_for(
            lambda: sample(registry, "tradingbot_stream_reconnects_total", endpoint="public", reason="silent")
        )
        start = len(messages)
        await wait_for(lambda: books_after(messages, start) >= 5)
        await chaos(base, "ws_close", code=1006)
        await wait_for(
            lambda: sample(registry, "tradingbot_stream_reconnects_total", endpoint="public", reason="closed")
        )
        start = len(messages)
        await wait_for(lambda: books_after(messages, start) >= 5)
        assert sample(registry, "tradingbot_stream_connected", endpoint="public") == 1
        assert len(gateway.websocket.connections) == 1
        last = sample(registry, "tradingbot_stream_last_message_timestamp_seconds", channel="book", symbol="BTC/USD")
        assert last > 0


async def test_a_corrupted_checksum_is_counted_and_the_book_resynced() -> None:
    registry = CollectorRegistry()
    messages: list[dict] = []
    async with running_gateway(**MOVING) as (_gateway, base), streaming(book_stream(base, registry, messages)):
        await wait_for(lambda: sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1)
        await chaos(base, "ws_book_checksum", mode="once")
        await wait_for(lambda: sample(registry, "tradingbot_stream_resyncs_total", channel="book", reason="checksum"))
        await wait_for(lambda: sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1)
        assert sample(registry, "tradingbot_stream_checksum_failures_total", symbol="BTC/USD") == 1
        await chaos(base, "ws_book_checksum", mode="persistent")
        await wait_for(lambda: sample(registry, "tradingbot_stream_checksum_failures_total", symbol="BTC/USD") >= 3)
        assert sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 0  # never passed on as good
        await chaos(base, "clear")
        await wait_for(lambda: sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1)


async def test_an_executions_gap_is_counted_and_told_and_an_invalid_session_gets_a_fresh_token() -> None:
    registry = CollectorRegistry()
    gaps: list[tuple[str, int]] = []
    tokens: list[str] = []

    async def on_gap(channel: str, missing: int) -> None:
        gaps.append((channel, missing))

    async with running_gateway() as (gateway, base):

        async def token() -> str:
            tokens.append(await ws_token(base))
            return tokens[-1]

        subs = [Subscription("executions", params={"snap_trades": True})]
        stream = KrakenStream(
            ws_urls(base)[1], subs, StreamMetrics(registry), endpoint="private", token=token, on_gap=on_gap
        )
        await chaos(base, "ws_invalid_session")
        async with streaming(stream):
            await wait_for(lambda: len(tokens) == 2)  # the first refused: a fresh one
            await wait_for(lambda: stream.sequences.last.get("executions") == 2)
            await chaos(base, "ws_sequence_gap")
            await gateway.venue.submit(limit("gap-1"))
            await gateway.venue.submit(limit("gap-2"))
            await wait_for(lambda: gaps == [("executions", 1)])
            assert sample(registry, "tradingbot_stream_sequence_gaps_total", channel="executions") == 1


async def test_asked_to_it_resubscribes_every_channel_and_reconnects() -> None:
    """What the bot's control commands `resubscribe` and `reconnect` do to its stream: a fresh subscription (a
    snapshot, counted as a `requested` resync) and a new socket (a `requested` reconnect) with its subscriptions."""
    registry = CollectorRegistry()
    messages: list[dict] = []
    async with running_gateway(**MOVING) as (_gateway, base), streaming(book_stream(base, registry, messages)) as s:
        await wait_for(lambda: sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1)
        await s.resubscribe()
        assert sample(registry, "tradingbot_stream_resyncs_total", channel="book", reason="requested") == 1
        await s.reconnect()
        await wait_for(
            lambda: sample(registry, "tradingbot_stream_reconnects_total", endpoint="public", reason="requested")
        )
        await wait_for(
            lambda: s.sessions == 2 and sample(registry, "tradingbot_stream_connected", endpoint="public") == 1
        )
        start = len(messages)
        await wait_for(lambda: books_after(messages, start) >= 5)
        assert sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1


async def test_a_refused_subscription_is_a_fault_counted_and_logged_once_never_a_hang_or_a_reconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gateway refuses an `ohlc` interval Kraken does not have and a pair it does not list: each failed channel
    is counted (`refused`), logged once however often its retries are refused, REST stands in for it (the endpoint's
    fallback gauge, `streaming` False), and the socket's other channels flow on without a reconnect."""
    registry = CollectorRegistry()
    messages: list[dict] = []
    subs = [
        Subscription("book", ["BTC/USD", "DOGE/USD"], cadence=0.02, params={"depth": 10}),
        Subscription("ohlc", ["BTC/USD"], params={"interval": 2}),
    ]

    async def keep(message: dict) -> None:
        messages.append(message)

    async with running_gateway(**MOVING) as (_gateway, base):
        stream = KrakenStream(ws_urls(base)[0], subs, StreamMetrics(registry), precision=PRECISION, on_message=keep)
        with caplog.at_level(logging.WARNING, logger="trading_ops.venues.ccxt.kraken_stream"):
            async with streaming(stream):
                refused = lambda: sample(  # noqa: E731
                    registry, "tradingbot_stream_subscribe_failures_total", channel="ohlc", reason="refused"
                )
                await wait_for(lambda: refused() >= 3)  # retried with backoff, refused each time
                assert sample(registry, "tradingbot_stream_subscribe_failures_total", channel="book", reason="refused")
                assert not stream.streaming("ohlc", "BTC/USD") and not stream.streaming("book", "DOGE/USD")
                assert stream.streaming("book", "BTC/USD")
                assert sample(registry, "tradingbot_stream_rest_fallback", endpoint="public") == 1
                assert sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1
                start = len(messages)
                await wait_for(lambda: books_after(messages, start) >= 5)
        failures = [r.getMessage() for r in caplog.records if "subscription to" in r.getMessage()]
        assert len([f for f in failures if "ohlc" in f]) == 1 and len([f for f in failures if "DOGE" in f]) == 1
        assert "Subscription ohlc interval not supported" in failures[0] + failures[-1]
        for reason in ("silent", "closed", "error"):
            assert sample(registry, "tradingbot_stream_reconnects_total", endpoint="public", reason=reason) == 0


async def test_an_unanswered_subscription_is_a_fault_within_its_bound_and_heals_when_answered() -> None:
    """A socket silent for 2 s (the gateway's `ws_silent_socket`; the client's heartbeat long enough that it does not
    reconnect for it): a subscription sent meanwhile is unanswered within its 0.5 s bound, a fault counted as such;
    its retry after the silence is acked and the channel streams again."""
    registry = CollectorRegistry()
    messages: list[dict] = []

    async def keep(message: dict) -> None:
        messages.append(message)

    subs = [Subscription("book", ["BTC/USD"], params={"depth": 10})]
    async with running_gateway(**MOVING) as (_gateway, base):
        stream = KrakenStream(
            ws_urls(base)[0],
            subs,
            StreamMetrics(registry),
            precision=PRECISION,
            on_message=keep,
            heartbeat=5.0,
            subscribe_answer=0.5,
        )
        async with streaming(stream):
            await wait_for(lambda: sample(registry, "tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1)
            unanswered = lambda: sample(  # noqa: E731
                registry, "tradingbot_stream_subscribe_failures_total", channel="book", reason="unanswered"
            )
            before = unanswered()  # a start on a loaded machine may already have missed the 0.5 s bound
            await chaos(base, "ws_silent_socket", seconds=2)
            sent = time.monotonic()
            await stream.resubscribe()
            await wait_for(lambda: unanswered() > before)
            print(f"unanswered subscription failed after {time.monotonic() - sent:.2f} s (bound 0.5 s)")
            assert not stream.streaming("book", "BTC/USD")
            await wait_for(lambda: stream.streaming("book", "BTC/USD"))
            start = len(messages)
            await wait_for(lambda: books_after(messages, start) >= 5)
            assert sample(registry, "tradingbot_stream_rest_fallback", endpoint="public") == 0
