"""One endpoint of the paper venue's push channel, kept healthy as KrakenStream keeps a socket: subscriptions replayed
after every reconnect (with backoff), each channel's silence checked against its cadence (a silent channel is
subscribed again, and the connection replaced when that does not bring it back), a private channel's sequence checked
(a gap told to the caller, whose REST reconciliation fills it), and the caller told after every reconnect. Its health
goes to the same StreamMetrics (`tradingbot_stream_*`) as every stream's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from trading_ops.bot.broker import BrokerError
from trading_ops.bot.streams.health import Sequences, Silence
from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.bot.streams.resync import Backoff, SilentChannels
from trading_ops.bot.streams.subscription import Subscription
from trading_ops.paper.push import HEARTBEAT, HEARTBEAT_SECONDS, Message, PushChannel, PushConnection, StreamClosed

LOG = logging.getLogger(__name__)

WATCH_SECONDS = 0.1  # how often silence is checked


class PaperStream:
    """Run it as a task (`run`), stop it with `close`. `on_message` gets every channel message (heartbeats not);
    `on_gap(channel, missing)` and `on_reconnect()` are the caller's REST reconciliation."""

    def __init__(
        self,
        push: PushChannel,
        endpoint: str,
        subscriptions: list[Subscription],
        metrics: StreamMetrics,
        *,
        on_message: Callable[[Message], Awaitable[None]],
        on_gap: Callable[[str, int], Awaitable[None]] | None = None,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.push = push
        self.endpoint = endpoint
        self.subscriptions = subscriptions
        self.metrics = metrics
        self.on_message = on_message
        self.on_gap = on_gap
        self.on_reconnect = on_reconnect
        self.heartbeat = heartbeat
        self.silence = Silence(heartbeat)
        self.sequences = Sequences()
        self.backoff = Backoff()
        self.sessions = 0
        self.conn: PushConnection | None = None
        self.connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._retry = asyncio.Event()  # ends a backoff wait (a reconnect asked for, the stream closed)
        self._reason = ""
        self.silent = SilentChannels(self.silence)  # what is done about a silent channel
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.metrics.connected.labels(self.endpoint).set(0)
        self.metrics.rest_fallback.labels(self.endpoint).set(1)  # until connected, REST polls stand in
        while not self._closed.is_set():
            reason = await self._session()
            self.connected.clear()
            self.metrics.connected.labels(self.endpoint).set(0)
            self.metrics.rest_fallback.labels(self.endpoint).set(1)
            if self._closed.is_set():
                return
            if reason != "refused":  # a refused attempt is no reconnect: the connection it replaces was counted
                self.metrics.reconnects.labels(self.endpoint, reason).inc()
            wait = self.backoff.next()
            LOG.warning("paper stream %s: %s, connecting again in %.2f s", self.endpoint, reason, wait)
            self._retry.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry.wait(), wait)

    async def close(self) -> None:
        self._closed.set()
        self._retry.set()
        if self.conn is not None:
            self.conn.close("closed by the client")
        for task in list(self._tasks):
            task.cancel()

    async def reconnect(self) -> None:
        """Replace the connection now (its subscriptions replayed, the caller told); while waiting out a backoff,
        connect at once."""
        LOG.info("paper stream %s: reconnecting, as asked", self.endpoint)
        self.backoff.reset()
        if self.conn is not None:
            self._reason = "requested"
            self.conn.close("requested")
        else:  # waiting out a backoff: try at once
            self._retry.set()

    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        """Subscribe again to every channel (of `symbols` only, for channels with symbols): fresh snapshots."""
        conn = self.conn
        if conn is None:
            return
        for sub in self.subscriptions:
            wanted = [s for s in sub.symbols if symbols is None or s in symbols] if sub.symbols else []
            if sub.symbols and not wanted:
                continue
            self.metrics.resyncs.labels(sub.channel, "requested").inc()
            await self._subscribe(conn, sub, wanted)

    async def _session(self) -> str:
        self._reason = ""
        try:
            conn = self.conn = self.push.connect(self.endpoint)
        except StreamClosed as exc:
            return exc.reason
        try:
            now = time.monotonic()
            self.silence.heard(now)
            for sub in self.subscriptions:
                await self._subscribe(conn, sub)
            self.metrics.connected.labels(self.endpoint).set(1)
            self.metrics.rest_fallback.labels(self.endpoint).set(0)
            self.connected.set()
            self.sessions += 1
            if self.sessions > 1 and self.on_reconnect is not None:
                self._spawn(self.on_reconnect())
            while True:
                message = await conn.receive(WATCH_SECONDS)
                if message is not None:
                    try:
                        await self._on(message)
                    finally:
                        if message is not HEARTBEAT:
                            conn.queue.task_done()
                if await self._watch(conn):
                    return self._reason
        except StreamClosed as exc:
            return self._reason or ("closed" if exc.reason in ("dropped", "venue unreachable") else "error")
        except BrokerError as exc:  # a subscription's snapshot the venue could not give (it went down meanwhile)
            LOG.warning("paper stream %s: %s", self.endpoint, exc)
            return "error"
        except Exception:  # never the stream's end: a new connection, with backoff
            LOG.exception("paper stream %s: unexpected error", self.endpoint)
            return "error"
        finally:
            conn.close("closed by the client")
            self.conn = None

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:  # the caller's reconciliation failing (the venue down again) is not the stream's end
                LOG.exception("paper stream %s: the reconciliation after a reconnect failed", self.endpoint)

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _subscribe(self, conn: PushConnection, sub: Subscription, symbols: list[str] | None = None) -> None:
        now = time.monotonic()
        wanted = symbols or sub.symbols
        for symbol in wanted or [""]:
            self.silence.watch(sub.channel, symbol, sub.cadence, now)
            timeout = self.silence.clocks[(sub.channel, symbol)].timeout
            if timeout is not None:
                self.metrics.silence_timeout.labels(sub.channel, symbol).set(timeout)
        if not sub.symbols:
            self.sequences.reset(sub.channel)
        await conn.subscribe(sub.channel, wanted)

    # -- what arrives -----------------------------------------------------------------------------------------
    async def _on(self, message: Message) -> None:
        now = time.monotonic()
        self.silence.heard(now)
        if message.channel == "heartbeat":
            return
        self.backoff.reset()
        self.silence.seen(message.channel, message.symbol, now)
        self.metrics.last_message.labels(message.channel, message.symbol).set(time.time())
        if message.sequence and message.channel == "executions":
            missing = self.sequences.check(message.channel, message.sequence, snapshot=message.kind == "snapshot")
            if missing:
                LOG.warning("paper stream %s: %d %s messages lost (sequence)", self.endpoint, missing, message.channel)
                self.metrics.sequence_gaps.labels(message.channel).inc(missing)
                if self.on_gap is not None:
                    self._spawn(self.on_gap(message.channel, missing))
        try:
            await self.on_message(message)
        except Exception:  # the consumer's failure is not the stream's: the next REST poll brings what it missed
            LOG.exception("paper stream %s: the consumer of a %s message failed", self.endpoint, message.channel)

    async def _watch(self, conn: PushConnection) -> bool:
        """Subscribe a silent channel again; True (the connection to be replaced) when that did not bring it back,
        or when the connection itself is silent."""
        now = time.monotonic()
        if self.silence.socket_silent(now):
            LOG.warning("paper stream %s: the connection is silent, reconnecting", self.endpoint)
            self._reason = "silent"
            return True
        again, stuck = self.silent.due(now)
        if stuck is not None:
            LOG.warning("paper stream %s: %s %s still silent, reconnecting", self.endpoint, *stuck.key)
            self._reason = "silent"
            return True
        for clock in again:
            sub = next((s for s in self.subscriptions if s.channel == clock.channel), None)
            if sub is not None:
                LOG.warning("paper stream %s: %s %s silent, subscribing again", self.endpoint, *clock.key)
                self.metrics.resyncs.labels(clock.channel, "silent").inc()
                await self._subscribe(conn, sub, [clock.symbol] if clock.symbol else None)
                self.silent.resubscribed(clock, time.monotonic())
                if clock.lost and self.on_reconnect is not None:  # what it lost before (and while) it came back
                    self._spawn(self.on_reconnect())
        return False
