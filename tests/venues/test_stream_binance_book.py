"""Each book on Binance spot kept from the diff-depth stream over a REST snapshot by update ids (ccxt.pro's stock
binance client does Binance's documented procedure; trading_ops.venues.ccxt.binance_book surfaces it): on the
gateway's Binance dialect, the books sync and feed quotes; a diff that skips update ids (`binance_depth_gap`) is
counted as a gap, the book is out of sync (the order gate refuses new risk on it) until a new snapshot syncs it,
and the book then agrees with the venue's level for level. Needs only the gateway, served by the test on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from binance_helpers import binance, binance_gateway, binance_pro
from broker_recorder import Recorder, connected
from ccxt_example_bot import MOVING
from ccxt_helpers import chaos, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.paper.gateway.kraken.gateway import KrakenGateway
from trading_ops.venues.ccxt.pro_broker import ProStreamingCcxtBroker

HOUR = 3600.0
SYMBOLS = ["BTC-USD", "ETH-USD"]


@contextlib.asynccontextmanager
async def ticking(gateway: KrakenGateway) -> AsyncIterator[None]:
    """The venue's prices move (each tick a depth diff) while the test runs."""

    async def tick() -> None:
        while True:
            await gateway.venue.tick()
            await asyncio.sleep(0.05)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_books_sync_by_update_ids_and_a_gap_is_counted_and_resynced() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    async with binance_gateway(**MOVING) as (gateway, dialect, base), ticking(gateway):
        broker = ProStreamingCcxtBroker(
            binance(base),
            SYMBOLS,
            pro=binance_pro(base),
            book_pro=binance_pro(base),
            registry=registry,
            poll_interval=HOUR,
            quote_interval=HOUR,
        )
        async with connected(broker, recorder):
            for symbol in ("BTC/USD", "ETH/USD"):
                await wait_for(lambda s=symbol: value("tradingbot_stream_book_in_sync", {"symbol": s}) == 1)
            assert value("tradingbot_stream_connected", {"endpoint": "public"}) == 1
            quoted = len(recorder.quotes)
            await wait_for(lambda: len(recorder.quotes) > quoted + 5)  # the books' tops, as quotes
            assert broker.market_data_in_sync("BTC-USD")

            synced: list[bool] = []
            books = broker.books
            assert books is not None
            original = books._synced

            def watch_sync(symbol: str, ok: bool) -> None:  # what the gate sees, each change of the book's state
                original(symbol, ok)
                if symbol == "BTC/USD":
                    synced.append(broker.market_data_in_sync("BTC-USD"))

            books._synced = watch_sync  # type: ignore[method-assign]
            started = time.monotonic()
            answer = await chaos(base, "binance_depth_gap", symbol="BTC-USD", count=3)
            assert answer == {"depth_gap": 3, "symbols": ["BTC-USD"]}
            await wait_for(lambda: value("tradingbot_stream_book_gaps_total", {"symbol": "BTC/USD"}) == 1)
            detected = time.monotonic() - started
            await wait_for(lambda: False in synced and synced[-1] is True)  # out of sync, then synced again
            resynced = time.monotonic() - started
            assert value("tradingbot_stream_resyncs_total", {"channel": "book", "reason": "gap"}) == 1
            assert value("tradingbot_stream_book_gaps_total", {"symbol": "ETH/USD"}) == 0  # the other book untouched
            print(f"depth gap: detected {detected * 1000:.0f} ms after the fault, resynced {resynced * 1000:.0f} ms")

            # The resynced book is the venue's, level for level, at the same update id: each diff it applies, compared
            # at once with the venue's book (which moves on between diffs) until one finds the venue not yet moved on.
            async def agrees() -> bool:
                book = await asyncio.wait_for(broker.book_pro.watch_order_book("BTC/USD", 100), 5)
                venue = dialect.market.books["BTCUSD"]
                if book["nonce"] != venue.update_id:
                    return False
                snapshot = venue.snapshot(5)
                return [[float(p), float(q)] for p, q in snapshot["bids"]] == [list(b[:2]) for b in book["bids"][:5]]

            await wait_for(agrees)
