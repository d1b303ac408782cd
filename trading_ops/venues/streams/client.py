"""One Kraken Spot WebSocket v2 connection, public or private, kept healthy: it replays its subscriptions after
every reconnect, pings when the socket is quiet, resubscribes a channel silent past its timeout (and reconnects when
that does not bring it back), resubscribes a book whose checksum disagrees (with backoff: a book out of sync is
reported, never passed on as good), counts a private channel's sequence gaps and tells the caller (whose REST
reconciliation fills them), and gets a fresh token on `ESession:Invalid session`. Every message goes to
`on_message`; the health goes to StreamMetrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp

from trading_ops.venues.streams.health import HEARTBEAT_SECONDS, Books, Sequences, Silence
from trading_ops.venues.streams.metrics import StreamMetrics
from trading_ops.venues.streams.resync import Backoff

LOG = logging.getLogger(__name__)

WATCH_SECONDS = 0.1  # how often silence is checked
E_SESSION = "ESession:Invalid session"


@dataclass
class Subscription:
    """A channel to keep subscribed: `symbols` for public channels, `cadence` the seconds between its messages on a
    live market (None: a channel that may rightly be quiet), `params` more of the request (depth, snap_trades)."""

    channel: str
    symbols: list[str] = field(default_factory=list)
    cadence: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


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
    ) -> None:
        self.url = url
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
        self._resubscribed: dict[tuple[str, str], float] = {}  # a silent channel resubscribed at (monotonic)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reason = ""
        self._req_id = 0
        self._closed = asyncio.Event()
        self.connected = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.metrics.rest_fallback.labels(self.endpoint).set(1)  # until the socket is up, REST polls stand in
        async with aiohttp.ClientSession() as session:
            while not self._closed.is_set():
                reason = await self._session(session)
                self.metrics.connected.labels(self.endpoint).set(0)
                self.metrics.rest_fallback.labels(self.endpoint).set(1)
                self.connected.clear()
                if self._closed.is_set():
                    return
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
            async with session.ws_connect(self.url, autoping=True, max_msg_size=0) as ws:
                self._ws = ws
                self.metrics.connected.labels(self.endpoint).set(1)
                self.metrics.rest_fallback.labels(self.endpoint).set(0)
                self.connected.set()
                now = time.monotonic()
                self.silence.heard(now)
                for sub in self.subscriptions:
                    await self._subscribe(sub)
                self.sessions += 1
                if self.sessions > 1 and self.on_reconnect is not None:
                    task: asyncio.Task[None] = asyncio.ensure_future(self.on_reconnect())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
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

    # -- requests ---------------------------------------------------------------------------------------------
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
        await self._send({"method": "subscribe", "params": params})

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
        channel = message.get("channel")
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
            if now - self.silence.socket_last >= self.heartbeat and now - last_ping >= self.heartbeat:
                last_ping = now
                await self._send({"method": "ping"})
            for clock in self.silence.silent_channels(now):
                key = (clock.channel, clock.symbol)
                if key in self._resubscribed and now - self._resubscribed[key] > (clock.timeout or 0):
                    LOG.warning("stream %s: %s %s still silent, reconnecting", self.endpoint, *key)
                    self._reason = "silent"
                    self._resubscribed.clear()
                    await ws.close()
                    return
                if key not in self._resubscribed:
                    sub = self._subscription(clock.channel)
                    if sub is not None:
                        LOG.warning("stream %s: %s %s silent, subscribing again", self.endpoint, *key)
                        self.metrics.resyncs.labels(clock.channel, "silent").inc()
                        self._resubscribed[key] = now
                        await self._subscribe(sub, [clock.symbol] if clock.symbol else None)
            for key in [
                k for k in self._resubscribed if k in self.silence.clocks and not self.silence.clocks[k].silent(now)
            ]:
                if self.silence.clocks[key].last > self._resubscribed[key]:
                    del self._resubscribed[key]
