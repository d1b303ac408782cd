"""The streaming client (trading_ops.venues.streams.client) on the gateway's WebSocket v2, each stream fault
injected and healed by the client alone, seen in its `tradingbot_stream_…` metrics: a channel acked then silent
(resubscribed), a whole socket silent and a dropped socket (reconnected, subscriptions replayed), a corrupted book
checksum (counted, resynced, in sync again), a gap in executions' sequence (counted, the caller told), an invalid
session (a fresh token). Needs only the gateway, started per test on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ccxt_helpers import chaos, limit, running_gateway, wait_for
from prometheus_client import CollectorRegistry
from ws_helpers import ws_token, ws_urls

from trading_ops.venues.streams.client import KrakenStream, Subscription
from trading_ops.venues.streams.metrics import StreamMetrics

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
