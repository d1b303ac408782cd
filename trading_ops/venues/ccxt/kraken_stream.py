"""One Kraken Spot WebSocket v2 connection, public or private, kept healthy: it replays its subscriptions after
every reconnect, pings when the socket is quiet, resubscribes a channel silent past its timeout or owing what the
caller's REST found first (Silence.owe), and reconnects when that does not bring it back (SilentChannels), resubscribes
a book whose checksum disagrees (with backoff: a book out of sync is reported, never passed on as good), counts a
private channel's sequence gaps and tells the caller (whose REST reconciliation fills them), and gets a fresh token
on `ESession:Invalid session`. Every subscription is bounded: refused by the venue or unanswered within
SUBSCRIBE_ANSWER_SECONDS, its channel is failed (counted, logged once, REST stands in: `streaming` is False for it)
and subscribed again after a backoff, never waited on forever. Every message goes to `on_message`; the health goes to
StreamMetrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

import aiohttp

from trading_ops.bot.streams.health import HEARTBEAT_SECONDS, Books, Sequences, Silence
from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.bot.streams.resync import Backoff, SilentChannels
from trading_ops.bot.streams.subscription import Subscription

LOG = logging.getLogger(__name__)

WATCH_SECONDS = 0.1  # how often silence is checked
# A subscription's answer (its ack, or the venue's error) comes within this (seconds), or the subscription failed:
# a stream fault (counted, logged once, REST stands in for the channel) and another attempt after a backoff.
SUBSCRIBE_ANSWER_SECONDS = 5.0
E_SESSION = "ESession:Invalid session"
E_ALREADY = "Already subscribed"  # Kraken's answer to a subscription it already has: as good as an ack


class StreamRequestError(Exception):
    """A request over the socket that got no good answer: refused (the venue's error string), unsent (the socket is
    not up) or unanswered in time. The caller falls back to REST."""


class KrakenStream:
    """Run it as a task (`run`), stop it with `close`."""

    def __init__(
        self,
        url: str,
        subscriptions: list[Subscription],
        metrics: StreamMetrics,
        *,
        endpoint: str = "public",
        precision: Mapping[str, tuple[int, int]] | None = None,
        token: Callable[[], Awaitable[str]] | None = None,
        on_message: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        on_gap: Callable[[str, int], Awaitable[None]] | None = None,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
        ssl: ssl_module.SSLContext | None = None,
        subscribe_answer: float = SUBSCRIBE_ANSWER_SECONDS,
    ) -> None:
        self.url = url
        self.ssl = ssl  # a TLS venue's context (its CA, a client certificate); None: the system's defaults
        self.subscriptions = subscriptions
        self.metrics = metrics
        self.endpoint = endpoint
        self.books = Books(precision or {})
        self.sequences = Sequences()
        self.silence = Silence(heartbeat)
        self.heartbeat = heartbeat
        self._token_source = token
        self._token = ""
        self.on_message = on_message
        self.on_gap = on_gap
        self.on_reconnect = on_reconnect  # after every reconnect (the caller's REST reconciliation)
        self.sessions = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.backoff = Backoff()
        self._book_backoff: dict[str, Backoff] = {}
        self.silent = SilentChannels(self.silence)  # what is done about a silent channel
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reason = ""
        self._req_id = 0
        self._closed = asyncio.Event()
        self.connected = asyncio.Event()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}  # requests' answers awaited, by req_id
        self.subscribe_answer = subscribe_answer
        # Subscriptions sent and not yet answered, by req_id: (channel, symbols still unanswered, sent at monotonic).
        self._unanswered: dict[int, tuple[str, set[str], float]] = {}
        self.failed: dict[tuple[str, str], str] = {}  # (channel, symbol) whose subscription failed -> why
        self._retry: dict[tuple[str, str], Backoff] = {}

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.metrics.set_rest_fallback(self.endpoint, True)  # until the socket is up, REST polls stand in
        async with aiohttp.ClientSession() as session:
            while not self._closed.is_set():
                reason = await self._session(session)
                self.metrics.connected.labels(self.endpoint).set(0)
                self.connected.clear()
                if self._closed.is_set():
                    self.metrics.set_rest_fallback(self.endpoint, False)  # stopped, not standing in for anything
                    return
                self.metrics.set_rest_fallback(self.endpoint, True)
                self.metrics.reconnects.labels(self.endpoint, reason).inc()
                wait = self.backoff.next()
                LOG.warning("stream %s: %s, reconnecting in %.2f s", self.endpoint, reason, wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), wait)

    async def close(self) -> None:
        self._closed.set()
        for task in list(self._tasks):
            task.cancel()
        if self._ws is not None:
            await self._ws.close()

    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        """Subscribe again to every channel (of `symbols` only, for public channels, when given): a fresh snapshot;
        counted as a resync with reason `requested`."""
        for sub in self.subscriptions:
            wanted = [s for s in sub.symbols if symbols is None or s in symbols] if sub.symbols else None
            if sub.symbols and not wanted:
                continue
            self.metrics.resyncs.labels(sub.channel, "requested").inc()
            await self._subscribe(sub, wanted)

    async def resubscribe_channel(self, channel: str, reason: str) -> None:
        """Subscribe one channel again (a fresh snapshot), counted as a resync with `reason`."""
        sub = self._subscription(channel)
        if sub is not None:
            self.metrics.resyncs.labels(channel, reason).inc()
            await self._subscribe(sub)

    async def reconnect(self) -> None:
        """Close the socket: `run` opens a new one at once, replays the subscriptions and tells `on_reconnect`.
        Returns without waiting for the close: the caller may hold what this connection's messages are waiting for
        (the bot's trade lock while its control command runs)."""
        LOG.info("stream %s: reconnecting, as asked", self.endpoint)
        self._reason = "requested"
        self.backoff.reset()
        if self._ws is not None:
            task: asyncio.Task[Any] = asyncio.ensure_future(self._ws.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _session(self, session: aiohttp.ClientSession) -> str:
        self._reason = ""
        try:
            async with session.ws_connect(
                self.url, autoping=True, max_msg_size=0, ssl=self.ssl if self.ssl is not None else True
            ) as ws:
                self._ws = ws
                self.metrics.connected.labels(self.endpoint).set(1)
                self.metrics.set_rest_fallback(self.endpoint, bool(self.failed))
                self.connected.set()
                self._unanswered.clear()
                self.silent.pending.clear()  # a new socket's subscriptions start afresh
                now = time.monotonic()
                self.silence.heard(now)
                for sub in self.subscriptions:
                    await self._subscribe(sub)
                self.sessions += 1
                if self.sessions > 1 and self.on_reconnect is not None:
                    self._spawn(self.on_reconnect())
                watchdog = asyncio.create_task(self._watch(ws), name=f"stream-watch-{self.endpoint}")
                try:
                    async for msg in ws:
                        if msg.type is aiohttp.WSMsgType.TEXT:
                            self.backoff.reset()
                            await self._on_text(msg.data)
                finally:
                    watchdog.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watchdog
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            LOG.warning("stream %s: %s", self.endpoint, exc)
            return "error"
        except Exception as exc:  # the token's REST call (the caller's errors): a retry with backoff, never the end
            LOG.warning("stream %s: %s: %s", self.endpoint, type(exc).__name__, exc)
            self._token = ""
            return "error"
        finally:
            self._ws = None
        return self._reason or "closed"

    def _spawn(self, coro: Awaitable[None]) -> None:
        """Run the caller's `coro` (its REST reconciliation) beside the socket's loop, kept until it ends."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- requests ---------------------------------------------------------------------------------------------
    async def request(self, method: str, params: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """One request on this socket (the token added on a private one), e.g. `cancel_all_orders_after`: its
        answer's `result`. StreamRequestError when the socket is not up, the venue refuses, or no answer comes within
        `timeout`."""
        ws = self._ws
        if ws is None or ws.closed or not self.connected.is_set():
            raise StreamRequestError(f"{method}: the {self.endpoint} stream is not connected")
        body = dict(params)
        if self._token_source is not None:
            if not self._token:
                self._token = await self._token_source()
            body["token"] = self._token
        self._req_id += 1
        req_id = self._req_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        try:
            await ws.send_str(json.dumps({"method": method, "params": body, "req_id": req_id}, default=str))
            answer = await asyncio.wait_for(future, timeout)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StreamRequestError(f"{method}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._pending.pop(req_id, None)
        if answer.get("success") is not True:
            raise StreamRequestError(f"{method}: {str(answer.get('error'))[:120]}")
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is not None and not self._ws.closed:
            self._req_id += 1
            await self._ws.send_str(json.dumps({**message, "req_id": self._req_id}, default=str))

    async def _subscribe(self, sub: Subscription, symbols: list[str] | None = None) -> None:
        params: dict[str, Any] = {"channel": sub.channel, **sub.params}
        if sub.symbols:
            params["symbol"] = symbols or sub.symbols
        if self._token_source is not None:
            if not self._token:
                self._token = await self._token_source()
            params["token"] = self._token
        now = time.monotonic()
        for symbol in (symbols or sub.symbols) or [""]:
            self.silence.watch(sub.channel, symbol, sub.cadence, now)
            timeout = self.silence.clocks[(sub.channel, symbol)].timeout
            if timeout is not None:
                self.metrics.silence_timeout.labels(sub.channel, symbol).set(timeout)
        if sub.channel in ("executions", "balances"):
            self.sequences.reset(sub.channel)
        if self._ws is not None and not self._ws.closed:
            self._req_id += 1
            self._unanswered[self._req_id] = (sub.channel, set(symbols or sub.symbols or [""]), now)
            await self._ws.send_str(
                json.dumps({"method": "subscribe", "params": params, "req_id": self._req_id}, default=str)
            )

    def streaming(self, channel: str, symbol: str = "") -> bool:
        """Whether the channel (of `symbol`, for a public one) streams: the socket up, its subscription not failed,
        and not subscribed again for silence with nothing heard since. False: REST stands in for it."""
        key = (channel, symbol)
        return self.connected.is_set() and key not in self.failed and key not in self.silent.pending

    def _on_subscribe_answer(self, message: dict[str, Any]) -> None:
        """The venue's answer to a subscription: an ack ends its failure, an error fails it."""
        req_id = message.get("req_id")
        waiting = self._unanswered.get(req_id) if isinstance(req_id, int) else None
        given = message.get("result")
        result: dict[str, Any] = given if isinstance(given, dict) else {}
        channel = str(result.get("channel") or (waiting[0] if waiting else ""))
        symbol = str(result.get("symbol") or message.get("symbol") or "")
        if waiting is not None:
            channel = waiting[0]
            symbols = waiting[1]
            answered = {symbol} if symbol in symbols else set(symbols)
            symbols -= answered
            if not symbols:
                del self._unanswered[req_id]  # type: ignore[arg-type]
        else:
            answered = {symbol}
        for one in answered:
            if message.get("success") is True or message.get("error") == E_ALREADY:
                self._subscribed(channel, one)
            else:
                self._subscribe_failed(channel, one, "refused", str(message.get("error"))[:120])

    def _subscribed(self, channel: str, symbol: str) -> None:
        self._retry.pop((channel, symbol), None)
        if self.failed.pop((channel, symbol), None) is not None:
            LOG.info("stream %s: %s %s subscribed", self.endpoint, channel, symbol)
            if not self.failed and self.connected.is_set():
                self.metrics.set_rest_fallback(self.endpoint, False)

    def _subscribe_failed(self, channel: str, symbol: str, reason: str, detail: str) -> None:
        """A subscription refused or unanswered: counted, logged once until it succeeds, its silence clock stopped
        (a failed channel is not silent, it is failed), REST standing in, another attempt after a backoff."""
        key = (channel, symbol)
        if self.failed.get(key) is None:
            LOG.warning(
                "stream %s: subscription to %s %s %s (%s): REST stands in, retrying",
                self.endpoint, channel, symbol, reason, detail,
            )  # fmt: skip
        self.failed[key] = reason
        self.metrics.subscribe_failures.labels(channel, reason).inc()
        self.metrics.set_rest_fallback(self.endpoint, True)
        self.silence.clocks.pop(key, None)
        self.silent.pending.pop(key, None)
        sub = self._subscription(channel)
        if sub is None:
            return
        wait = self._retry.setdefault(key, Backoff()).next()
        asyncio.get_running_loop().call_later(wait, self._retry_subscription, sub, symbol)

    def _retry_subscription(self, sub: Subscription, symbol: str) -> None:
        if self._ws is None or self._ws.closed or (sub.channel, symbol) not in self.failed:
            return
        task = asyncio.ensure_future(self._subscribe(sub, [symbol] if symbol else None))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _subscription(self, channel: str) -> Subscription | None:
        return next((s for s in self.subscriptions if s.channel == channel), None)

    # -- what arrives -----------------------------------------------------------------------------------------
    async def _on_text(self, text: str) -> None:
        now = time.monotonic()
        self.silence.heard(now)
        try:
            message = json.loads(text, parse_float=Decimal)
        except ValueError:
            LOG.warning("stream %s: not JSON: %.80s", self.endpoint, text)
            return
        if not isinstance(message, dict):
            return
        waiting = self._pending.get(message["req_id"]) if isinstance(message.get("req_id"), int) else None
        if waiting is not None and not waiting.done():
            waiting.set_result(message)
            return
        channel = message.get("channel")
        if message.get("method") == "subscribe":
            if message.get("error") == E_SESSION:  # subscribed again below, with a fresh token
                self._unanswered.pop(message.get("req_id"), None)  # type: ignore[arg-type]
            else:
                self._on_subscribe_answer(message)
        if message.get("error") == E_SESSION and self._token_source is not None:
            self._token = ""  # the next subscription asks for a fresh one
            sub = self._subscription(str(message.get("result", {}).get("channel", ""))) or next(
                (s for s in self.subscriptions), None
            )
            if sub is not None:
                await asyncio.sleep(self.backoff.next())
                await self._subscribe(sub)
        if channel in ("book", "trade", "ticker", "executions", "balances", "instrument"):
            await self._on_channel(str(channel), message, now)
        if self.on_message is not None:
            try:
                await self.on_message(message)
            except (
                Exception
            ):  # the consumer's failure (a REST call of the bot's during a reconnect) is not the stream's
                LOG.exception("stream %s: the consumer of a %s message failed", self.endpoint, channel)

    async def _on_channel(self, channel: str, message: dict[str, Any], now: float) -> None:
        data = message.get("data")
        items = data if isinstance(data, list) else []
        symbols = {str(d.get("symbol", "")) for d in items if isinstance(d, dict)} if channel != "executions" else set()
        for symbol in symbols or {""}:
            self.silence.seen(channel, symbol, now)
            self.metrics.last_message.labels(channel, symbol).set(time.time())
        snapshot = message.get("type") == "snapshot"
        if channel == "book":
            sub = self._subscription("book")
            depth = int(sub.params.get("depth", 10)) if sub is not None else 10
            for item in items:
                await self._on_book(item, depth, snapshot)
        elif channel in ("executions", "balances") and isinstance(message.get("sequence"), int):
            missing = self.sequences.check(channel, message["sequence"], snapshot=snapshot)
            if missing:
                LOG.warning("stream %s: %d %s messages lost (sequence)", self.endpoint, missing, channel)
                self.metrics.sequence_gaps.labels(channel).inc(missing)
                if self.on_gap is not None:
                    await self.on_gap(channel, missing)

    async def _on_book(self, data: dict[str, Any], depth: int, snapshot: bool) -> None:
        symbol = str(data.get("symbol", ""))
        if symbol not in self.books.precision:
            return
        was = self.books.in_sync.get(symbol, False)
        ok = self.books.apply(data, depth, snapshot=snapshot)
        self.metrics.book_in_sync.labels(symbol).set(1 if ok else 0)
        if ok:
            self._book_backoff.pop(symbol, None)
            return
        if was or snapshot:  # this message put the book out of sync (or a fresh snapshot is already wrong)
            self.metrics.checksum_failures.labels(symbol).inc()
            backoff = self._book_backoff.setdefault(symbol, Backoff())
            wait = backoff.next()
            LOG.warning("stream: the %s book disagrees with its checksum, resubscribing in %.2f s", symbol, wait)
            asyncio.get_running_loop().call_later(wait, self._resync_book, symbol)

    def _resync_book(self, symbol: str) -> None:
        sub = self._subscription("book")
        if sub is None or self._ws is None:
            return
        self.metrics.resyncs.labels("book", "checksum").inc()
        task = asyncio.ensure_future(self._subscribe(sub, [symbol]))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # -- silence ----------------------------------------------------------------------------------------------
    async def _watch(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Ping a quiet socket; resubscribe a silent channel, reconnect when that did not bring it back or when the
        socket itself is silent."""
        last_ping = 0.0
        while not ws.closed:
            await asyncio.sleep(WATCH_SECONDS)
            now = time.monotonic()
            if self.silence.socket_silent(now):
                LOG.warning("stream %s: the socket is silent, reconnecting", self.endpoint)
                self._reason = "silent"
                await ws.close()
                return
            for req_id, (channel, symbols, sent) in list(self._unanswered.items()):
                if now - sent > self.subscribe_answer:
                    del self._unanswered[req_id]
                    for symbol in symbols:
                        self._subscribe_failed(channel, symbol, "unanswered", f"no answer in {self.subscribe_answer} s")
            if now - self.silence.socket_last >= self.heartbeat and now - last_ping >= self.heartbeat:
                last_ping = now
                await self._send({"method": "ping"})
            again, stuck = self.silent.due(now)
            if stuck is not None:
                LOG.warning("stream %s: %s %s still silent, reconnecting", self.endpoint, *stuck.key)
                self._reason = "silent"
                await ws.close()
                return
            for clock in again:
                sub = self._subscription(clock.channel)
                if sub is not None:
                    LOG.warning("stream %s: %s %s silent, subscribing again", self.endpoint, *clock.key)
                    self.metrics.resyncs.labels(clock.channel, "silent").inc()
                    await self._subscribe(sub, [clock.symbol] if clock.symbol else None)
                    self.silent.resubscribed(clock, time.monotonic())
                    if clock.lost and self.on_reconnect is not None:  # what it lost before and while it came back
                        self._spawn(self.on_reconnect())
