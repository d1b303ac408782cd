"""Each book on Binance spot kept from the diff-depth stream over a REST snapshot by update ids (ccxt.pro's stock
binance client does Binance's documented procedure; trading_ops.venues.ccxt.binance_book surfaces it): on the
gateway's Binance dialect, the books sync and feed quotes; a diff that skips update ids (`binance_depth_gap`) is
counted as a gap, the book is out of sync (the order gate refuses new risk on it) until a new snapshot syncs it,
and the book then agrees with the venue's level for level. Needs only the gateway, served by the test on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from binance_helpers import binance, binance_gateway, binance_pro
from broker_recorder import Recorder, connected
from ccxt_example_bot import MOVING
from ccxt_helpers import chaos, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.paper.gateway.kraken.gateway import KrakenGateway
from trading_ops.venues.ccxt.pro_broker import ProStreamingCcxtBroker

HOUR = 3600.0
SYMBOLS = ["BTC-USD", "ETH-USD"]
DEPTH_ROUTE, TICKER_ROUTE = "api/depth", "api/ticker/24hr"  # the gateway's counts of answered requests


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


async def test_a_depth_stream_silent_while_the_market_moves_is_found_by_the_rest_quote_poll_and_resynced() -> None:
    """`binance_depth_silent`: the depth stream stays subscribed and sends nothing while the venue's book moves. The
    quote poll's REST answers (which the broker asks anyway) disagree with the book's top and no diff follows: the book
    is out of sync (the gate refuses new risk on it) and subscribed again, and its diffs come back. Persistent, the new
    subscription is silent too: the socket is replaced. A healthy moving market is never found silent."""
    registry = CollectorRegistry()
    value = registry.get_sample_value
    quote_poll = 0.25
    async with binance_gateway(**MOVING) as (gateway, dialect, base), ticking(gateway):
        broker = ProStreamingCcxtBroker(
            binance(base),
            SYMBOLS,
            pro=binance_pro(base),
            book_pro=binance_pro(base),
            registry=registry,
            poll_interval=HOUR,
            quote_interval=quote_poll,
        )
        async with connected(broker, Recorder()):
            for symbol in ("BTC/USD", "ETH/USD"):
                await wait_for(lambda s=symbol: value("tradingbot_stream_book_in_sync", {"symbol": s}) == 1)
            books = broker.books
            assert books is not None

            def silent_resyncs() -> float:
                return value("tradingbot_stream_resyncs_total", {"channel": "book", "reason": "silent"}) or 0.0

            # A healthy stream on a moving market: every quote poll checks the books, none is found silent, and the
            # check sends no request of its own (the ticker poll runs anyway; no snapshot is taken).
            calls = dict(dialect.rest.calls)
            await asyncio.sleep(20 * quote_poll)
            assert silent_resyncs() == 0
            assert dialect.rest.calls.get(DEPTH_ROUTE, 0) == calls.get(DEPTH_ROUTE, 0)
            polls = dialect.rest.calls.get(TICKER_ROUTE, 0) - calls.get(TICKER_ROUTE, 0)
            print(f"healthy: {polls} quote polls checked the books (weight 2 each, spent anyway), no snapshot")

            def venue_agrees() -> Callable[[], bool]:
                """In sync, and its diffs reached the venue's book as it stands now (at or past its update id: the
                market moves on meanwhile, and a loaded machine's book was not always caught at the very same id)."""
                now = dialect.market.books["BTCUSD"].update_id

                def caught_up() -> bool:
                    book = broker.book_pro.orderbooks.get("BTC/USD") or {}
                    return books.book_in_sync("BTC/USD") and (book.get("nonce") or 0) >= now

                return caught_up

            gate: list[bool] = []  # what the order gate sees of BTC-USD, each change of the book's state
            original = books._synced

            def watch_sync(symbol: str, ok: bool) -> None:
                original(symbol, ok)
                if symbol == "BTC/USD":
                    gate.append(broker.market_data_in_sync("BTC-USD"))

            books._synced = watch_sync  # type: ignore[method-assign]
            snapshots = dialect.rest.calls.get(DEPTH_ROUTE, 0)
            started = time.monotonic()
            await chaos(base, "binance_depth_silent", symbol="BTC-USD")
            await wait_for(lambda: silent_resyncs() == 1, timeout=20)
            detected = time.monotonic() - started
            assert False in gate  # out of sync: no new risk on it until the new snapshot
            await wait_for(venue_agrees(), timeout=20)  # subscribed again: diffs flow and follow the venue's book
            assert gate[-1] is True
            healed = time.monotonic() - started
            assert value("tradingbot_stream_resyncs_total", {"channel": "book", "reason": "silent"}) == 1
            assert dialect.streams.connections() >= 1
            snapshots = dialect.rest.calls.get(DEPTH_ROUTE, 0) - snapshots
            assert snapshots == 1  # the cost of healing: one snapshot (weight 5 at 100 levels)
            print(f"depth silent: detected {detected:.2f} s after the fault, healed {healed:.2f} s (one snapshot)")

            # Persistent: the new subscription is silent too, so the second miss replaces the socket. Counted from a
            # diff on the synced book (silence is counted since the last diff: a heal whose snapshot alone matched the
            # venue's book leaves the first miss counted, and the next miss would replace the socket at once).
            await wait_for(lambda: books.silences["BTC/USD"] == 0, timeout=20)
            reconnects = value("tradingbot_stream_reconnects_total", {"endpoint": "public", "reason": "silent"}) or 0
            started = time.monotonic()
            await chaos(base, "binance_depth_silent", symbol="BTC-USD", persistent=True)

            def replaced() -> bool:
                now = value("tradingbot_stream_reconnects_total", {"endpoint": "public", "reason": "silent"}) or 0
                return now > reconnects

            await wait_for(replaced, timeout=30)
            escalated = time.monotonic() - started
            assert silent_resyncs() >= 3  # the first miss resubscribed, the second replaced the socket
            # Cleared, the silent subscription speaks again; its first diff may skip past a snapshot taken meanwhile
            # (a gap, resynced as any) and the book follows the venue's again.
            await chaos(base, "clear")
            await wait_for(venue_agrees(), timeout=20)
            print(f"depth silent, persistent: socket replaced {escalated:.2f} s after the fault")
