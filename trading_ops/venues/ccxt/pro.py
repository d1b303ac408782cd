"""ccxt.pro's stock kraken client on the venue's public WebSocket v2, every watch bounded: the `ticker` channel
(`watch_ticker`, best bid and ask on each change: event_trigger `bbo`) as the bot's quotes, and the `book`
(`watch_order_book`) checked by our code against Kraken's CRC32 checksum at the pair's precision (ccxt's own check is
off by default and crashes in Python when on), resubscribed with backoff while it disagrees.

ccxt.pro's watch_* waits on the channel's data, never on the subscription's answer: a subscription the venue refuses
(Kraken's v2 error, its req_id echoed) would leave it waiting forever. BoundedKraken ends that wait with the venue's
error, and every watch here is also bounded in time: the subscription's first message within
SUBSCRIBE_ANSWER_SECONDS, each later one within the channel's silence timeout. A failed watch is a stream fault, never
a hang: counted (`tradingbot_stream_subscribe_failures_total`, a `silent` resync, a reconnect), logged once until the
channel flows again, REST standing in (`streaming` False; the broker's REST ticker poll never stops), and subscribed
again after a backoff.

A quiet market is not a silent channel. Kraken sends the ticker (`bbo`) and the book only when they change, so a pair
that does not move says nothing for as long as it does not move. A channel quiet for a cadence is judged by the
broker's REST ticker poll, which runs anyway (`rest_quote`, at no call of its own): a quote asked since the channel's
last message, within its timeout, that shows the best bid and ask the channel last showed says the channel is
current, and its `tradingbot_stream_last_message_timestamp_seconds` moves to when that quote was asked. Only a move
the channel missed, or no REST quote to tell, lets its silence timeout run out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import ccxt.pro as ccxt_pro
from ccxt.base.errors import ExchangeError, NetworkError

from trading_ops.bot.streams.checksum import book_checksum
from trading_ops.bot.streams.health import HEARTBEAT_SECONDS, MISSED_BEATS, silence_timeout
from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.bot.streams.resync import Backoff
from trading_ops.tasks import stop_tasks
from trading_ops.venues.ccxt.kraken_stream import SUBSCRIBE_ANSWER_SECONDS, WATCH_SECONDS

LOG = logging.getLogger(__name__)
ENDPOINT = "public"


def _levels(side: Any) -> dict[Decimal, Decimal]:
    return {Decimal(str(price)): Decimal(str(qty)) for price, qty, *_ in side}


class BoundedKraken(ccxt_pro.kraken):  # type: ignore[misc]
    """ccxt.pro's kraken, its behaviour untouched, that also (1) remembers each subscription's request (req_id -> the
    message hashes its watches wait on) and, when the venue refuses it, ends those watches with the venue's error and
    forgets the subscription (the next watch subscribes again); (2) hands each book it kept, and the checksum of the
    message that made it, to `on_book(symbol, book, checksum, snapshot)` before any watcher reads it."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config or {})
        self.subscribing: dict[str, list[str]] = {}  # req_id -> subscribe hashes
        self.acked: dict[str, float] = {}  # subscribe hash -> when the venue last acked it (monotonic)
        self.on_book: Callable[[str, Any, int, bool], None] | None = None

    def watch_multiple(  # noqa: ANN201 - ccxt's own signature
        self, url: Any, message_hashes: Any, message: Any = None, subscribe_hashes: Any = None, subscription: Any = None
    ):
        if isinstance(message, dict) and message.get("method") == "subscribe" and "req_id" in message:
            self.subscribing[str(message["req_id"])] = list(subscribe_hashes or message_hashes)
        return super().watch_multiple(url, message_hashes, message, subscribe_hashes, subscription)

    def watch(  # noqa: ANN201 - ccxt's own signature
        self, url: Any, message_hash: Any, message: Any = None, subscribe_hash: Any = None, subscription: Any = None
    ):
        if isinstance(message, dict) and message.get("method") == "subscribe" and "req_id" in message:
            self.subscribing[str(message["req_id"])] = [subscribe_hash or message_hash]
        return super().watch(url, message_hash, message, subscribe_hash, subscription)

    def handle_error_message(self, client: Any, message: Any) -> Any:
        ok = super().handle_error_message(client, message)
        if isinstance(message, dict) and message.get("method") == "subscribe":
            hashes = self.subscribing.pop(str(message.get("req_id")), [])
            if ok and message.get("success") is True:
                self.acked.update(dict.fromkeys(hashes, time.monotonic()))
            if not ok and message.get("error") != "Already subscribed":
                error = ExchangeError(f"subscription refused: {str(message.get('error'))[:120]}")
                for message_hash in hashes:
                    client.subscriptions.pop(message_hash, None)
                    if message_hash in client.futures:
                        client.reject(error, message_hash)
        return ok

    def handle_order_book(self, client: Any, message: Any) -> None:
        super().handle_order_book(client, message)
        data = message.get("data") if isinstance(message, dict) else None
        first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        symbol, checksum = first.get("symbol"), first.get("checksum")
        if self.on_book is not None and symbol in self.orderbooks and checksum is not None:
            self.on_book(str(symbol), self.orderbooks[symbol], int(checksum), message.get("type") == "snapshot")

    def forget(self, url: str, message_hash: str) -> None:
        """Forget a subscription: the next watch subscribes again (a fresh snapshot)."""
        client = self.clients.get(url)
        if client is not None:
            client.subscriptions.pop(message_hash, None)


async def watch_or_kick(
    watch: Awaitable[Any], kick: asyncio.Event, timeout: float | None
) -> asyncio.Future[Any] | None:
    """`watch` (a ccxt.pro watch) raced against `kick` and `timeout`: its future when it ended first (a result, an
    error or cancelled by its client's close), None when kicked or past `timeout` (the watch cancelled)."""
    watched = asyncio.ensure_future(watch)
    kicked = asyncio.ensure_future(kick.wait())
    try:
        done, _ = await asyncio.wait({watched, kicked}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        kicked.cancel()
        if not watched.done():
            watched.cancel()
            with contextlib.suppress(BaseException):
                await watched
    return watched if watched in done else None


Top = tuple[Decimal, Decimal]  # a best bid and ask


def ticker_top(ticker: Any) -> Top | None:
    """A ccxt ticker's best bid and ask, None when it lacks one."""
    bid, ask = ticker.get("bid"), ticker.get("ask")
    return None if bid is None or ask is None else (Decimal(str(bid)), Decimal(str(ask)))


def book_top(book: Any) -> Top | None:
    """A ccxt order book's best bid and ask, None when a side is empty."""
    bids, asks = book.get("bids") or [], book.get("asks") or []
    return (Decimal(str(bids[0][0])), Decimal(str(asks[0][0]))) if bids and asks else None


class Watched:
    """One channel of one symbol: what its watch is, what is done with each result, and the best bid and ask
    (`top`) each result shows, for judging a quiet market by REST."""

    def __init__(
        self,
        channel: str,
        symbol: str,
        message_hash: str,
        watch: Callable[[], Awaitable[Any]],
        deliver: Callable[[Any], Awaitable[None]],
        timeout: float | None,
        top: Callable[[Any], Top | None],
    ) -> None:
        self.channel = channel
        self.symbol = symbol
        self.message_hash = message_hash
        self.watch = watch
        self.deliver = deliver
        self.timeout = timeout
        self.top = top
        self.last_top: Top | None = None  # what its last message showed
        self.last_at = 0.0  # its last message (monotonic)
        self.current_at = 0.0  # its last message, or the REST quote that found the market unchanged since (monotonic)
        self.kick = asyncio.Event()  # subscribe again (a resync, a control command)
        self.backoff = Backoff()
        self.failed = ""  # why its watch failed, until it flows again
        self.flowing = False
        self.silent_strikes = 0  # silent faults in a row: the second reconnects


class PublicStream:
    """The public channels of `symbols` (ccxt's unified BTC/USD) through ccxt.pro: each symbol's ticker as a quote
    (`on_quote(symbol, bid, ask, at)`) and, with `book_depth`, its book checked against Kraken's checksum
    (`in_sync`). Run it as a task (`run`), stop it with `close`."""

    def __init__(
        self,
        exchange: Any,
        url: str,
        symbols: list[str],
        metrics: StreamMetrics,
        on_quote: Callable[[str, Decimal, Decimal, datetime], Awaitable[None]],
        *,
        precision: Mapping[str, tuple[int, int]] | None = None,
        book_depth: int | None = None,
        cadence: float | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
        subscribe_answer: float = SUBSCRIBE_ANSWER_SECONDS,
        ticker_params: Mapping[str, Any] | None = None,
        ssl: Any = None,
    ) -> None:
        self.url = url
        self.pro = BoundedKraken(
            {
                "enableRateLimit": False,
                "timeout": int(getattr(exchange, "timeout", 10_000)),
                "urls": {"api": {"ws": {"publicV2": url, "public": url}}},
            }
        )
        if ssl is not None:
            self.pro.ssl_context = ssl  # a TLS venue's context (its CA, a client certificate), as on the REST client
        if exchange.markets:
            self.pro.set_markets(exchange.markets, exchange.currencies)
        self.pro.on_book = self._on_book
        self.metrics = metrics
        self.on_quote = on_quote
        self.precision = dict(precision or {})
        self.book_depth = book_depth
        self.subscribe_answer = subscribe_answer
        self.ticker_params = dict(ticker_params or {"event_trigger": "bbo"})
        self.in_sync: dict[str, bool] = {}
        self._book_backoff: dict[str, Backoff] = {}
        self.sessions = 0
        self._client: Any = None
        self._fallback: bool | None = None
        self._reason = ""
        self.connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        timeout = silence_timeout(cadence, heartbeat)
        self.watched: dict[tuple[str, str], Watched] = {}
        # Each symbol's last REST quote: (when it was asked, monotonic; when, Unix time; its best bid and ask).
        self.rest_quotes: dict[str, tuple[float, float, Top]] = {}
        for symbol in symbols:
            ticker = Watched(
                "ticker", symbol, f"ticker@{symbol}", self._ticker(symbol), self._quote(symbol), timeout, ticker_top
            )
            self._add(ticker)
            if book_depth is not None:
                book = self._book(symbol, book_depth)
                self._add(Watched("book", symbol, f"orderbook@{symbol}", book, self._noop, timeout, book_top))

    def _add(self, w: Watched) -> None:
        self.watched[(w.channel, w.symbol)] = w

    def _ticker(self, symbol: str) -> Callable[[], Awaitable[Any]]:
        return lambda: self.pro.watch_ticker(symbol, dict(self.ticker_params))

    def _book(self, symbol: str, depth: int) -> Callable[[], Awaitable[Any]]:
        return lambda: self.pro.watch_order_book(symbol, depth)

    async def _noop(self, _: Any) -> None:
        return None

    def _quote(self, symbol: str) -> Callable[[Any], Awaitable[None]]:
        async def deliver(ticker: Any) -> None:
            bid, ask = ticker.get("bid"), ticker.get("ask")
            if bid is None or ask is None:
                return
            stamp = ticker.get("timestamp")
            at = datetime.fromtimestamp(stamp / 1000, UTC) if stamp else datetime.now(UTC)
            await self.on_quote(symbol, Decimal(str(bid)), Decimal(str(ask)), at)

        return deliver

    def rest_quote(self, symbol: str, asked: float, bid: Decimal, ask: Decimal) -> None:
        """A REST quote of `symbol` (ccxt's BTC/USD), its poll sent at `asked` (monotonic): the judge of a quiet
        channel."""
        self.rest_quotes[symbol] = (asked, time.time() - (time.monotonic() - asked), (bid, ask))

    def _quiet(self, w: Watched, now: float) -> float | None:
        """When (Unix time) a REST quote found the channel current on a quiet market: asked since its last message
        and within its timeout, showing the best bid and ask it last showed. None when no quote says so."""
        rest = self.rest_quotes.get(w.symbol)
        if rest is None or w.last_top is None or w.timeout is None:
            return None
        asked, wall, top = rest
        if asked <= max(w.last_at, now - w.timeout) or top != w.last_top:
            return None
        return wall

    def streaming(self, channel: str, symbol: str) -> bool:
        """Whether the channel of the symbol flows (False: REST stands in for it)."""
        w = self.watched.get((channel, symbol))
        return w is not None and w.flowing and self.connected.is_set()

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.metrics.set_rest_fallback(ENDPOINT, True)  # until the socket is up, REST polls stand in
        self._fallback = True
        self._tasks = [
            asyncio.create_task(self._watch(w), name=f"{w.channel}-{w.symbol}") for w in self.watched.values()
        ]
        self._tasks.append(asyncio.create_task(self._health(), name="public-health"))
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await stop_tasks(self._tasks)

    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        """Subscribe every channel again (of `symbols`, when given): fresh snapshots, `requested` resyncs."""
        for w in self.watched.values():
            if symbols is None or w.symbol in symbols:
                self.metrics.resyncs.labels(w.channel, "requested").inc()
                w.kick.set()

    async def reconnect(self, reason: str = "requested") -> None:
        """A new socket: ccxt.pro's client closed and forgotten; every watch opens a new one and subscribes again."""
        LOG.info("stream %s: reconnecting (%s)", ENDPOINT, reason)
        self._reason = reason
        client = self.pro.clients.pop(self.url, None)
        if client is not None:
            # ccxt.pro forgets a client closed without an error by its URL, which by then may name the new one
            client.error = NetworkError(f"reconnecting ({reason})")
        for w in self.watched.values():
            w.kick.set()
        if client is not None:
            await client.close()

    async def close(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks = []
        self.metrics.connected.labels(ENDPOINT).set(0)
        self.metrics.set_rest_fallback(ENDPOINT, False)  # stopped, not standing in for anything
        with contextlib.suppress(Exception):
            await self.pro.close()

    async def _health(self) -> None:
        """The endpoint's gauges from ccxt.pro's client: connected, REST fallback (the socket down or a channel
        failed), and a reconnect counted for each new socket after the first."""
        while True:
            client = self.pro.clients.get(self.url)
            up = (
                client is not None
                and client.connected.done()
                and not client.connected.cancelled()
                and client.connected.exception() is None
                and not client.closed()
            )
            if up and client is not self._client:
                if self._client is not None:
                    self.metrics.reconnects.labels(ENDPOINT, self._reason or "closed").inc()
                self._client = client
                self._reason = ""
                self.sessions += 1
            self.metrics.connected.labels(ENDPOINT).set(1 if up else 0)
            if up:
                self.connected.set()
            else:
                self.connected.clear()
            fallback = not up or any(w.failed for w in self.watched.values())
            if fallback != self._fallback:
                self._fallback = fallback
                self.metrics.set_rest_fallback(ENDPOINT, fallback)
            await asyncio.sleep(WATCH_SECONDS)

    # -- each watch -------------------------------------------------------------------------------------------
    async def _watch(self, w: Watched) -> None:
        subscribing = True
        if w.timeout is not None:
            self.metrics.silence_timeout.labels(w.channel, w.symbol).set(w.timeout)
        while True:
            if w.kick.is_set():
                w.kick.clear()
                self.pro.forget(self.url, w.message_hash)
                subscribing = True
            try:
                result = await self._next(w, subscribing)
            except _Fault as fault:
                await self._failed(w, fault.reason, fault.detail)
                subscribing = True
                continue
            if result is _KICKED or result is _WAIT:
                continue
            if isinstance(result, _Quiet):
                w.current_at = time.monotonic()
                self.metrics.last_message.labels(w.channel, w.symbol).set(result.at)
                continue
            subscribing = False
            w.silent_strikes = 0
            w.backoff.reset()
            w.last_at = w.current_at = time.monotonic()
            w.last_top = w.top(result)
            self.metrics.last_message.labels(w.channel, w.symbol).set(time.time())
            if w.failed:
                LOG.info("stream %s %s: flowing again", w.channel, w.symbol)
                w.failed = ""
            w.flowing = True
            try:
                await w.deliver(result)
            except Exception:  # the consumer's failure is not the stream's
                LOG.exception("stream %s %s: the consumer failed", w.channel, w.symbol)

    async def _next(self, w: Watched, subscribing: bool) -> Any:
        """The watch's next result; _KICKED when asked to subscribe again meanwhile; after a cadence with no message,
        _Quiet when a REST quote found the market unchanged since its last one, _WAIT while its timeout runs; _Fault
        when it fails: refused, unanswered within its bound, silent past its timeout, or its socket dropped."""
        started = time.monotonic()
        if subscribing or w.timeout is None:
            bound = self.subscribe_answer if subscribing else None
        else:  # a cadence (a third of the timeout), then a look at REST, until the timeout since it was current
            bound = min(w.timeout / MISSED_BEATS, max(w.current_at + w.timeout - started, 0.0))
        watch = await watch_or_kick(w.watch(), w.kick, bound)
        if watch is None:
            if w.kick.is_set():
                return _KICKED
            now = time.monotonic()
            if not subscribing and w.timeout is not None:
                quiet = self._quiet(w, now)
                if quiet is not None:
                    return _Quiet(quiet)
                if now - w.current_at < w.timeout:
                    return _WAIT
            acked = self.pro.acked.get(w.message_hash, 0.0) >= started
            reason = "unanswered" if subscribing and not acked else "silent"
            raise _Fault(reason, f"no message in {now - max(started if subscribing else w.current_at, 0.0):.1f} s")
        if watch.cancelled():  # ccxt.pro's client closed (a reconnect): the next watch opens a new one
            raise _Fault("", "its socket closed")
        exc = watch.exception()
        if isinstance(exc, NetworkError):
            self._reason = self._reason or ("closed" if "closed" in str(exc).lower() else "error")
            raise _Fault("", f"{type(exc).__name__}: {exc}")
        if isinstance(exc, ExchangeError):  # the venue refused the subscription (BoundedKraken)
            raise _Fault("refused", str(exc))
        if exc is not None:
            raise _Fault("", f"{type(exc).__name__}: {exc}")
        return watch.result()

    async def _failed(self, w: Watched, reason: str, detail: str) -> None:
        """A watch failed: counted, logged once until the channel flows again, REST standing in, a backoff."""
        w.flowing = False
        if reason in ("refused", "unanswered"):
            self.metrics.subscribe_failures.labels(w.channel, reason).inc()
        elif reason == "silent":
            w.silent_strikes += 1
            if w.silent_strikes >= 2:  # subscribing again did not bring it back: a new socket
                LOG.warning("stream %s %s: still silent, reconnecting", w.channel, w.symbol)
                w.silent_strikes = 0
                await self.reconnect("silent")
            else:
                self.metrics.resyncs.labels(w.channel, "silent").inc()
        if not w.failed:
            why = reason or "error"
            LOG.warning("stream %s %s: %s (%s): REST stands in, subscribing again", w.channel, w.symbol, why, detail)
        w.failed = reason or "error"
        self.pro.forget(self.url, w.message_hash)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(w.kick.wait(), w.backoff.next())

    # -- the book's checksum ----------------------------------------------------------------------------------
    def _on_book(self, symbol: str, book: Any, checksum: int, snapshot: bool) -> None:
        """Each book ccxt.pro kept, against the checksum of the message that made it, at the pair's precision: out
        of sync until a snapshot agrees; a disagreement counted and the book subscribed again with backoff."""
        if symbol not in self.precision:
            return
        was = self.in_sync.get(symbol, False)
        if not snapshot and not was:
            return  # out of sync stays so until a snapshot
        prices, qtys = self.precision[symbol]
        ok = book_checksum(_levels(book["asks"]), _levels(book["bids"]), prices, qtys) == checksum
        self.in_sync[symbol] = ok
        self.metrics.book_in_sync.labels(symbol).set(1 if ok else 0)
        if ok:
            self._book_backoff.pop(symbol, None)
            return
        self.metrics.checksum_failures.labels(symbol).inc()
        wait = self._book_backoff.setdefault(symbol, Backoff()).next()
        LOG.warning("stream: the %s book disagrees with its checksum, resubscribing in %.2f s", symbol, wait)
        asyncio.get_running_loop().call_later(wait, self._resync_book, symbol)

    def _resync_book(self, symbol: str) -> None:
        w = self.watched.get(("book", symbol))
        if w is None:
            return
        self.metrics.resyncs.labels("book", "checksum").inc()
        w.kick.set()

    def book_in_sync(self, symbol: str) -> bool:
        return self.in_sync.get(symbol, False)


class _Fault(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Quiet:
    """A REST quote asked at `at` (Unix time) found the market unchanged since the channel's last message."""

    def __init__(self, at: float) -> None:
        self.at = at


_KICKED = object()
_WAIT = object()  # a cadence with no message and no REST quote to say the market is quiet: the timeout runs on
