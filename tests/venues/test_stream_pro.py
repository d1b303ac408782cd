"""The public stream through ccxt.pro's stock kraken client (trading_ops.venues.ccxt.pro) on the gateway's
WebSocket v2: every watch bounded. A subscription the gateway refuses (an `ohlc` interval Kraken does not have, a
ticker trigger it does not know) ends ccxt.pro's wait with the venue's error instead of leaving it waiting forever; in
the stream it is a fault counted and logged once, REST standing in, and the other channels flow on; a subscription
unanswered within its bound is a fault too, healed once the venue answers. Needs only the gateway, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from ccxt.base.errors import ExchangeError
from ccxt_helpers import chaos, kraken, running_gateway, wait_for
from prometheus_client import CollectorRegistry
from ws_helpers import ws_urls

from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.venues.ccxt.pro import BoundedKraken, PublicStream

MOVING = {"tick_interval": 0.02, "volatility": 0.001}
PRECISION = {"BTC/USD": (2, 4), "ETH/USD": (2, 4)}
DEADLINE = 30.0


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def public_stream(base: str, registry: CollectorRegistry, **kw: Any) -> AsyncIterator[tuple[PublicStream, list]]:
    quotes: list[tuple[str, Decimal, Decimal, datetime]] = []

    async def on_quote(symbol: str, bid: Decimal, ask: Decimal, at: datetime) -> None:
        quotes.append((symbol, bid, ask, at))

    rest = kraken(base)
    await rest.load_markets()
    stream = PublicStream(
        rest, ws_urls(base)[0], ["BTC/USD", "ETH/USD"], StreamMetrics(registry), on_quote, precision=PRECISION, **kw
    )
    task = asyncio.create_task(stream.run())
    try:
        yield stream, quotes
    finally:
        await stream.close()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), DEADLINE)
        await rest.close()


async def test_ccxt_pro_s_wait_on_a_refused_subscription_ends_with_the_venue_s_error() -> None:
    """Stock ccxt.pro waits forever on a refused `ohlc` subscription (tests/paper/gateway/test_kraken_ws_ohlc.py);
    BoundedKraken (ccxt.pro's kraken, its behaviour untouched) ends that wait with Kraken's words, at once."""
    async with running_gateway() as (_gateway, base):
        public = ws_urls(base)[0]
        ex = BoundedKraken({"urls": {"api": {"public": base, "ws": {"publicV2": public, "public": public}}}})
        try:
            started = time.monotonic()
            with pytest.raises(ExchangeError, match="Subscription ohlc interval not supported"):
                await asyncio.wait_for(ex.watch_ohlcv("BTC/USD", "1m", params={"params": {"interval": 2}}), DEADLINE)
            print(f"refused ohlc subscription ended the watch in {time.monotonic() - started:.3f} s")
            candles = await asyncio.wait_for(ex.watch_ohlcv("BTC/USD", "1m"), DEADLINE)  # the socket serves on
            assert candles
        finally:
            await ex.close()


async def test_a_refused_ticker_is_a_fault_logged_once_while_the_book_flows_in_sync(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    async with running_gateway(**MOVING) as (_gateway, base):
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="trading_ops.venues.ccxt.pro"):
            async with public_stream(base, registry, book_depth=10, ticker_params={"event_trigger": "nope"}) as (
                stream,
                quotes,
            ):
                refused = lambda: sample(  # noqa: E731
                    registry, "tradingbot_stream_subscribe_failures_total", channel="ticker", reason="refused"
                )
                await wait_for(lambda: refused() >= 1)
                print(f"a refused ticker subscription counted {time.monotonic() - started:.3f} s after the start")
                await wait_for(lambda: refused() >= 6, timeout=DEADLINE)  # both symbols, retried with backoff
                assert not stream.streaming("ticker", "BTC/USD") and not quotes
                await wait_for(lambda: stream.streaming("book", "BTC/USD") and stream.book_in_sync("BTC/USD"))
                assert sample(registry, "tradingbot_stream_rest_fallback", endpoint="public") == 1
                assert sample(registry, "tradingbot_stream_connected", endpoint="public") == 1
                assert sample(registry, "tradingbot_stream_book_in_sync", symbol="ETH/USD") == 1
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream ticker")]
        assert len(logged) == 2 and all("Channel not found" in m for m in logged)  # once per symbol


async def test_the_ticker_quotes_flow_and_an_unanswered_subscription_is_a_fault_then_heals() -> None:
    registry = CollectorRegistry()
    async with (
        running_gateway(**MOVING) as (gateway, base),
        public_stream(base, registry, subscribe_answer=0.5, cadence=5.0) as (stream, quotes),
    ):
        await wait_for(lambda: len(quotes) >= 10)
        assert {q[0] for q in quotes} == {"BTC/USD", "ETH/USD"} and all(q[1] < q[2] for q in quotes)
        last = next(q for q in reversed(quotes) if q[0] == "BTC/USD")
        assert abs(last[1] - gateway.venue.quote("BTC-USD").bid) / last[1] < Decimal("0.01")
        assert stream.streaming("ticker", "BTC/USD")
        assert sample(registry, "tradingbot_stream_rest_fallback", endpoint="public") == 0
        unanswered = lambda: sample(  # noqa: E731
            registry, "tradingbot_stream_subscribe_failures_total", channel="ticker", reason="unanswered"
        )
        before = unanswered()  # a start on a loaded machine may already have missed the 0.5 s bound
        await chaos(base, "ws_silent_socket", seconds=2)
        sent = time.monotonic()
        await stream.resubscribe(["BTC/USD"])
        await wait_for(lambda: unanswered() > before)
        print(f"unanswered ticker subscription failed after {time.monotonic() - sent:.2f} s (bound 0.5 s)")
        await wait_for(lambda: stream.streaming("ticker", "BTC/USD"), timeout=DEADLINE)
        start = len(quotes)
        await wait_for(lambda: len(quotes) >= start + 5)
