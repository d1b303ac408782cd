"""Each symbol's book on Binance spot, kept by ccxt.pro's stock binance client from the diff-depth stream over a REST
snapshot by update ids, as Binance documents it (buffer the diffs, take `/api/v3/depth`, drop what `lastUpdateId`
covers, then each diff's `U` must be the last `u + 1`). ccxt.pro does that procedure itself: on a diff that skips ids
it drops the book and its subscription and fails the watch with `ChecksumError`, and the next watch takes a new
snapshot. This module does not do it again; it surfaces it: each gap counted (`tradingbot_stream_book_gaps_total`),
each new snapshot a `gap` resync, the book out of sync (`tradingbot_stream_book_in_sync` 0, the bot's order gate
refusing new risk on the symbol) until a new snapshot is synced, and each synced book's best bid and ask handed on
as a quote. Run it as a task (`run`), stop it with `close`.

A dead depth subscription is what ccxt.pro cannot see: Binance sends a diff only when the book changes, so a stream
that stopped looks like a quiet market. The broker's REST quote poll (ticker/24hr, weight 2 for up to 20 symbols, that
runs anyway) is the check, at no weight of its own (`cross_check`): when the venue's best bid or ask differs from the
book's and the book took no diff while the poll was under way, the stream owes a diff; none within
DEPTH_OWED_SECONDS (ten of the `@depth@100ms` stream's cadence) and the channel is silent: the book out of sync, a
`silent` resync (a new subscription and snapshot, the snapshot's weight 5); silent again before any diff came after
that, the socket replaced (`reconnects_total{reason="silent"}`). A quiet market's book is right, silent or not: only a
move the book missed counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ccxt.base.errors import ChecksumError, ExchangeError, NetworkError

from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.bot.streams.resync import Backoff
from trading_ops.tasks import stop_tasks
from trading_ops.venues.ccxt.pro import watch_or_kick

LOG = logging.getLogger(__name__)
ENDPOINT = "public"
CHANNEL = "book"
DEPTH = 100  # levels of the REST snapshot (Binance's weight 5 up to 100) and of the book kept
# A top the REST quote poll saw that the book has not is owed by a diff within this (seconds): the @depth@100ms
# stream batches changes each 100 ms, the rest is travel and a busy event loop.
DEPTH_OWED_SECONDS = 1.0


class BinanceBooks:
    """`pro` (ccxt.pro's binance, its public stream URL on the venue) watched for the books of `symbols` (ccxt's
    BTC/USD); each synced book's top to `on_quote(symbol, bid, ask, at)`."""

    def __init__(
        self,
        pro: Any,
        symbols: list[str],
        metrics: StreamMetrics,
        on_quote: Callable[[str, Decimal, Decimal, datetime], Awaitable[None]],
        *,
        depth: int = DEPTH,
    ) -> None:
        self.pro = pro
        self.symbols = list(symbols)
        self.metrics = metrics
        self.on_quote = on_quote
        self.depth = depth
        self.in_sync: dict[str, bool] = dict.fromkeys(self.symbols, False)
        self.gaps: dict[str, int] = dict.fromkeys(self.symbols, 0)
        self._kicks = {symbol: asyncio.Event() for symbol in self.symbols}
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False
        self.owed_seconds = DEPTH_OWED_SECONDS
        self.silences: dict[str, int] = dict.fromkeys(self.symbols, 0)  # found silent since the last diff
        self._owed: dict[str, asyncio.TimerHandle] = {}  # symbol -> the check of a diff owed

    def nonces(self) -> dict[str, Any]:
        """Each book's last update id now (what a REST poll about to be sent is later judged against)."""
        return {symbol: self._book(symbol).get("nonce") for symbol in self.symbols}

    def _book(self, symbol: str) -> Any:
        return self.pro.orderbooks.get(symbol) or {}

    def cross_check(self, symbol: str, bid: Decimal, ask: Decimal, asked: Mapping[str, Any]) -> None:
        """The venue's best bid and ask by REST (asked when the books' update ids were `asked`, from `nonces()`): a
        synced book whose top differs and that took no diff meanwhile owes one within `owed_seconds`."""
        if not self.streaming(symbol) or not self.in_sync.get(symbol) or symbol in self._owed:
            return
        book = self._book(symbol)
        nonce = book.get("nonce")
        if nonce is None or nonce != asked.get(symbol):
            return  # the book moved while the poll was under way: its answer may be the older of the two
        bids, asks = book.get("bids") or [], book.get("asks") or []
        if bids and asks and Decimal(str(bids[0][0])) == bid and Decimal(str(asks[0][0])) == ask:
            return
        loop = asyncio.get_running_loop()
        self._owed[symbol] = loop.call_later(self.owed_seconds, self._overdue, symbol, nonce, bid, ask)

    def _overdue(self, symbol: str, nonce: Any, bid: Decimal, ask: Decimal) -> None:
        """The diff owed since REST saw bid/ask: none came (the book's update id unchanged) -> the channel is silent."""
        self._owed.pop(symbol, None)
        if self._book(symbol).get("nonce") != nonce or not self.in_sync.get(symbol):
            return  # a diff came (or the book is being rebuilt already)
        self.silences[symbol] += 1
        self.metrics.resyncs.labels(CHANNEL, "silent").inc()
        self._synced(symbol, False)
        LOG.warning(
            "stream %s %s: silent: the venue's top is %s/%s by REST, the book's no diff followed in %.1f s",
            CHANNEL,
            symbol,
            bid,
            ask,
            self.owed_seconds,
        )
        if self.silences[symbol] > 1:  # a new subscription did not bring it back: a new socket
            self._tasks.append(asyncio.create_task(self.reconnect("silent"), name=f"book-reconnect-{symbol}"))
            return
        self._forget(symbol)
        self._kicks[symbol].set()

    def book_in_sync(self, symbol: str) -> bool:
        return self.in_sync.get(symbol, False)

    def streaming(self, symbol: str) -> bool:
        """Whether the symbol's book is streamed (its socket up): then its sync decides, else REST quotes tell."""
        return self._up and symbol in self.in_sync

    async def run(self) -> None:
        self.metrics.set_rest_fallback(ENDPOINT, True)  # until a book is synced, REST polls stand in
        for symbol in self.symbols:
            self.metrics.book_gaps.labels(symbol)
            self.metrics.book_in_sync.labels(symbol).set(0)
        self._tasks = [asyncio.create_task(self._watch(s), name=f"book-{s}") for s in self.symbols]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await stop_tasks(self._tasks)

    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        """A new snapshot of each book (of `symbols`, when given): `requested` resyncs."""
        for symbol in self.symbols:
            if symbols is None or symbol in symbols:
                self.metrics.resyncs.labels(CHANNEL, "requested").inc()
                self._forget(symbol)
                self._kicks[symbol].set()

    async def reconnect(self, reason: str = "requested") -> None:
        """A new socket: ccxt.pro's clients closed and forgotten; every watch opens a new one and takes a snapshot."""
        LOG.info("stream %s: reconnecting (%s)", ENDPOINT, reason)
        self.metrics.reconnects.labels(ENDPOINT, reason).inc()
        clients = list(self.pro.clients.values())
        self.pro.clients.clear()
        for client in clients:
            client.error = NetworkError(f"reconnecting ({reason})")
        for symbol in self.symbols:
            self._kicks[symbol].set()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()

    async def close(self) -> None:
        for handle in self._owed.values():
            handle.cancel()
        self._owed.clear()
        await stop_tasks(self._tasks)
        self._tasks = []
        self._connected(False)
        self.metrics.set_rest_fallback(ENDPOINT, False)  # stopped, not standing in for anything
        with contextlib.suppress(Exception):
            await self.pro.close()

    def _connected(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            self.metrics.connected.labels(ENDPOINT).set(1 if up else 0)
            self.metrics.set_rest_fallback(ENDPOINT, not up)

    def _forget(self, symbol: str) -> None:
        """ccxt.pro's book of `symbol` and its subscription dropped: the next watch subscribes and takes a snapshot."""
        self.pro.orderbooks.pop(symbol, None)
        for client in list(self.pro.clients.values()):
            client.subscriptions.pop(f"orderbook::{symbol}", None)

    def _synced(self, symbol: str, synced: bool) -> None:
        self.in_sync[symbol] = synced
        self.metrics.book_in_sync.labels(symbol).set(1 if synced else 0)

    async def _watch(self, symbol: str) -> None:
        backoff = Backoff()
        kick = self._kicks[symbol]
        while True:
            kick.clear()
            watch = await watch_or_kick(self.pro.watch_order_book(symbol, self.depth), kick, None)
            if watch is None or watch.cancelled():
                continue
            exc = watch.exception()
            if isinstance(exc, ChecksumError):  # a diff whose U is not the last u + 1: ccxt.pro dropped the book
                self.gaps[symbol] += 1
                self.metrics.book_gaps.labels(symbol).inc()
                self.metrics.resyncs.labels(CHANNEL, "gap").inc()
                self._synced(symbol, False)
                LOG.warning("stream %s %s: update ids skipped (%s): a new snapshot", CHANNEL, symbol, exc)
                continue  # the next watch subscribes again and syncs a new snapshot
            if isinstance(exc, (NetworkError, ExchangeError)):
                self._synced(symbol, False)
                self._connected(False)
                LOG.warning("stream %s %s: %s: %s", CHANNEL, symbol, type(exc).__name__, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kick.wait(), backoff.next())
                continue
            if exc is not None:
                raise exc
            backoff.reset()
            self._connected(True)
            book = watch.result()
            if not self.in_sync[symbol]:
                LOG.info("stream %s %s: synced by update ids at %s", CHANNEL, symbol, book.get("nonce"))
            else:
                self.silences[symbol] = 0  # a diff on a synced book: the stream speaks (a snapshot alone does not say)
            self._synced(symbol, True)
            self.metrics.last_message.labels(CHANNEL, symbol).set(time.time())
            await self._quote(symbol, book)

    async def _quote(self, symbol: str, book: Any) -> None:
        bids, asks = book.get("bids") or [], book.get("asks") or []
        if not bids or not asks:
            return
        bid, ask = Decimal(str(bids[0][0])), Decimal(str(asks[0][0]))
        stamp = book.get("timestamp")
        at = datetime.fromtimestamp(stamp / 1000, UTC) if stamp else datetime.now(UTC)
        try:
            await self.on_quote(symbol, bid, ask, at)
        except Exception:  # the consumer's failure is not the stream's
            LOG.exception("stream %s %s: the consumer of a quote failed", CHANNEL, symbol)
