"""The account's fills through ccxt.pro's own `watch_my_trades`, for a venue whose ccxt.pro client says so
(`has['watchMyTrades']`) and whose stream this package does not speak itself (`ccxt.stream_executions: ccxt.pro`).

Why not on Kraken by default: ccxt.pro 4.5.90's kraken watches `executions` on WebSocket v2 (its `privateV2` URL, a
token from GetWebSocketsToken), which the gateway serves, but it hides what our own v2 client (KrakenStream) acts on:
it ignores each message's `sequence` (a gap goes unseen until the next poll), hands a message to its trades or its
orders by the first item's `exec_type` (a trade behind an order event in one message never reaches watch_my_trades),
reads an order's client id from `order_userref` rather than `cl_ord_id`, and passes a resubscribe's repeated trade
snapshot on as new trades. So Kraken keeps KrakenStream; this path is for the venues ccxt.pro streams and we do not.

A trade that arrives while no watch waits is handed on at once all the same. Stock ccxt.pro (4.5.90) wakes a watch only
for a message that arrives while it waits: `Client.resolve` finds no future for a trade handled between two watches
(ProFills was handing the last one on, or the next watch was still subscribing), so the trade sits in the client's
`myTrades` cache and the next watch returns it only with the next trade, which may be minutes away or never come; the
last fill of a burst was then late, delivered by the REST poll first, and the channel could be judged silent. So
ProFills takes what the cache holds that it has not handed on (by symbol and trade id) before each watch, and again
while the watch waits: at each account event of a hooked client (Binance's), every CACHE_LOOK_SECONDS otherwise. The
watch's answer later repeats nothing it handed on.

What it keeps of the streaming broker: each fill delivered once, whichever of the stream and the REST poll saw it
first (FillFeed, by execution id), a REST reconciliation after every new socket, and the stream's health on the same
families (`tradingbot_stream_*`, endpoint `private`, channel `executions`). ccxt.pro has no channel clock and no
sequence to check, so a silent channel is found as the paper bot finds it: a fill the poll delivers first that the
stream does not follow with any fill within three heartbeats (FillFeed.offer_polled), then the subscription dropped
and made again, then the socket replaced (SilentChannels).

On Binance (a client with user-stream hooks: trading_ops.venues.ccxt.binance_pro) the stream says more, and so does
this: every account event is the channel speaking (its clock), each order the venue took or cancelled over REST is an
executionReport the channel owes within LOST_AFTER (a silent user stream is found at the next order, not only at the
next fill), and a subscription the venue ends (its listen key lapsed: `eventStreamTerminated`) is counted
(`tradingbot_stream_subscription_ends_total`), subscribed again at once and reconciled over REST.
`tradingbot_stream_subscribed` says whether the venue holds the subscription, `tradingbot_stream_channel_silent`
whether the channel is silent and not yet heard again (TradingBotStreamUserStreamSilent,
TradingBotStreamUnsubscribed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from ccxt.base.errors import NetworkError

from trading_ops.bot.streams.fills import LOST_AFTER
from trading_ops.bot.streams.health import HEARTBEAT_SECONDS, Silence
from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.bot.streams.resync import Backoff, SilentChannels
from trading_ops.tasks import stop_tasks
from trading_ops.venues.ccxt.kraken_stream import WATCH_SECONDS

LOG = logging.getLogger(__name__)
ENDPOINT = "private"
CHANNEL = "executions"
# Trade ids handed on and remembered, to hand none on twice: far more than ccxt.pro's trade cache keeps (its
# `tradesLimit`, 1000 by default).
REMEMBERED_TRADES = 10_000
# How often the trade cache is looked at while a watch waits, for a client that does not tell of each account event
# (a hooked one wakes the look at each): a trade ccxt.pro took in while its watch was still subscribing waits no longer.
CACHE_LOOK_SECONDS = 1.0


class ProFills:
    """`pro` (a ccxt.pro client with the account's keys) watched for the account's trades; each goes to
    `on_trade(raw)` (ccxt's unified trade); `on_reconnect()` after every new socket. Run it as a task (`run`), stop it
    with `close`."""

    def __init__(
        self,
        pro: Any,
        metrics: StreamMetrics,
        on_trade: Callable[[dict[str, Any]], Awaitable[None]],
        on_reconnect: Callable[[], Awaitable[None]],
        *,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.pro = pro
        self.metrics = metrics
        self.on_trade = on_trade
        self.on_reconnect = on_reconnect
        self.silence = Silence(heartbeat)
        self.silent = SilentChannels(self.silence)
        self.connected = asyncio.Event()
        self.sessions = 0
        self._kick = asyncio.Event()  # the subscription to be made again (a heal, a control command)
        self._reason = ""  # why the next new socket replaces the last one
        self._tasks: list[asyncio.Task[None]] = []
        self._current: Any = None  # ccxt.pro's client of the current socket
        self.silent_since: float | None = None  # found silent at (monotonic), until heard again
        self._lapsed = False  # subscribing again (ended by the venue, silent, asked): reconcile once it is held
        self._handed: OrderedDict[tuple[Any, Any], None] = OrderedDict()  # trades handed on (symbol, id), oldest first
        self._watch: asyncio.Future[Any] | None = None  # the watch of the account's trades, kept across looks
        self._stirred = asyncio.Event()  # an account event came (a hooked client's): the trade cache is looked at
        # a client that tells of every account event and of its subscription's end (binance_pro.UserStreamBinance)
        self.hooked = hasattr(pro, "on_user_event") and hasattr(pro, "on_subscription")
        if self.hooked:
            pro.on_user_event = self._event
            pro.on_subscription = self._subscription

    def streaming(self) -> bool:
        """Whether fills flow (False: the REST poll stands in at its own interval)."""
        return self.connected.is_set() and (CHANNEL, "") not in self.silent.pending

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.metrics.set_rest_fallback(ENDPOINT, True)  # until the socket is up, REST polls stand in
        self.metrics.connected.labels(ENDPOINT).set(0)
        if self.hooked:
            self.metrics.subscribed.labels(CHANNEL).set(0)
            self.metrics.channel_silent.labels(CHANNEL).set(0)
        self._tasks = [asyncio.create_task(self._health(), name="pro-fills-health")]
        backoff = Backoff()
        try:
            while True:
                try:
                    trades = await self._next()
                # the socket or the subscription: a new one, backoff. Any error: stock ccxt.pro 4.5.90's binance ends a
                # watch whose subscription the venue refused with a KeyError of its own clean-up, not the venue's error.
                except Exception as exc:
                    LOG.warning("stream %s: %s: %s", ENDPOINT, type(exc).__name__, exc)
                    self._reason = self._reason or ("closed" if "closed" in str(exc).lower() else "error")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._kick.wait(), backoff.next())
                    continue
                if trades is None:
                    continue
                backoff.reset()
                if trades:
                    self._heard()
                for raw in trades:
                    try:
                        await self.on_trade(raw)
                    except Exception:  # the consumer's failure is not the stream's: the REST poll brings it
                        LOG.exception("stream %s: the consumer of a trade failed", ENDPOINT)
        finally:
            self._drop_watch()
            await stop_tasks(self._tasks)

    async def _next(self) -> list[dict[str, Any]] | None:
        """The trades not yet handed on: those ccxt.pro took in while no watch waited, else those of the watch's next
        message. None when there is nothing yet (look again), or the subscription is to be made again meanwhile."""
        if self._kick.is_set():
            self._kick.clear()
            self._drop_watch()
            self._forget()
        # Looked at and the watch's wake-up cleared in one step: an event after it wakes the wait below.
        held = self._unhanded(getattr(self.pro, "myTrades", None) or [], cached=True)
        self._stirred.clear()
        if held:
            return held  # the watch (if any) stays: what it returns later, it returns without these
        if self._watch is None:
            self._watch = asyncio.ensure_future(self.pro.watch_my_trades())
        watch = self._watch
        waits = [asyncio.ensure_future(self._kick.wait()), asyncio.ensure_future(self._stirred.wait())]
        try:
            await asyncio.wait([watch, *waits], timeout=CACHE_LOOK_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if not watch.done():
            return None  # kicked, an account event, or a while: the cache first again
        self._watch = None
        if watch.cancelled():
            return None
        exc = watch.exception()
        if exc is not None:
            raise exc
        return self._unhanded(watch.result() or [])

    def _drop_watch(self) -> None:
        """The watch given up (the subscription is made again, or the stream stops); an error it ended with read."""
        watch, self._watch = self._watch, None
        if watch is None:
            return
        if watch.done() and not watch.cancelled():
            watch.exception()
        watch.cancel()

    def _unhanded(self, trades: Any, *, cached: bool = False) -> list[dict[str, Any]]:
        """Those of `trades` (oldest first) not handed on yet, now counted as handed on. A trade without an id cannot be
        told apart: a watch's is handed on, a cached one left to its watch."""
        new = []
        for raw in list(trades):
            # By symbol and id, as ccxt.pro's cache keeps them: Binance numbers each symbol's trades on its own.
            key = (raw.get("symbol"), raw["id"]) if isinstance(raw, dict) and raw.get("id") is not None else None
            if key is None:
                if not cached:
                    new.append(raw)
                continue
            if key in self._handed:
                continue
            self._handed[key] = None
            if len(self._handed) > REMEMBERED_TRADES:
                self._handed.popitem(last=False)
            new.append(raw)
        return new

    def _event(self) -> None:
        """A hooked client handled an account event: the channel spoke, and a trade may wait in its cache."""
        self._heard()
        self._stirred.set()

    def _heard(self) -> None:
        """The channel spoke (a trade, or any account event of a hooked client): its clock, and its silence over."""
        self.silence.seen(CHANNEL, "", time.monotonic())
        self.metrics.last_message.labels(CHANNEL, "").set(time.time())
        if self.silent_since is not None:
            LOG.info("stream %s: %s heard again", ENDPOINT, CHANNEL)
            self.silent_since = None
            self.metrics.channel_silent.labels(CHANNEL).set(0)

    def _subscription(self, held: bool) -> None:
        """The venue acked the user stream's subscription (held) or ended it: then counted and subscribed again at
        once. Once a new subscription is acked (after an end, a silence or a resubscribe), what the stream missed
        meanwhile is reconciled over REST: what came after the ack comes on the stream, what came before it (ccxt.pro
        hands a watch only what arrives while it waits) only by REST."""
        self.metrics.subscribed.labels(CHANNEL).set(1 if held else 0)
        if held:
            self._session()  # the socket it is held on is up: its clock runs from now, not from the next tick
            if self._lapsed:
                self._lapsed = False
                self._spawn(self.on_reconnect())
            return
        LOG.warning("stream %s: the venue ended the %s subscription, subscribing again", ENDPOINT, CHANNEL)
        self.metrics.subscription_ends.labels(CHANNEL).inc()
        self._lapsed = True
        self._kick.set()

    def _reconcile_when_held(self) -> None:
        """A REST reconciliation once the new subscription is acked (a hooked client tells: _subscription), else now."""
        if self.hooked:
            self._lapsed = True
        else:
            self._spawn(self.on_reconnect())

    def expect(self, since: float) -> None:
        """The venue took or cancelled an order over REST (asked at `since`, monotonic): on a hooked client its
        executionReport is owed within LOST_AFTER unless the channel spoke since it was asked."""
        if not self.hooked or not self.connected.is_set():
            return
        clock = self.silence.clocks.get((CHANNEL, ""))
        if clock is None or clock.last >= since:
            return
        self.silence.owe(CHANNEL, time.monotonic() + LOST_AFTER)

    def _judge(self, now: float, found: bool) -> None:
        """`tradingbot_stream_channel_silent`: set when the channel is found silent; over when it is heard, or when a
        subscription made since owes nothing for LOST_AFTER (a quiet account is legitimate)."""
        clock = self.silence.clocks.get((CHANNEL, ""))
        if found and self.silent_since is None:
            self.silent_since = now
        elif (
            self.silent_since is not None
            and clock is not None
            and clock.since > self.silent_since
            and not clock.lost
            and now - clock.since > LOST_AFTER
        ):
            self.silent_since = None
        self.metrics.channel_silent.labels(CHANNEL).set(0 if self.silent_since is None else 1)

    def _client(self) -> Any:
        """ccxt.pro's client of the socket the trades come on (the one connected), if any."""
        for client in list(self.pro.clients.values()):
            if client.connected.done() and not client.connected.cancelled() and client.connected.exception() is None:
                if not client.closed():
                    return client
        return None

    def _spawn(self, coro: Awaitable[None]) -> None:
        """Run the caller's REST reconciliation beside the watch, kept (to be stopped by `close`) until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            LOG.warning("stream %s: the reconciliation after a new socket failed: %s", ENDPOINT, task.exception())

    def _session(self) -> None:
        """The connection's gauges from ccxt.pro's client; a new socket after the first counted (by why the last one
        went) and reconciled over REST, its subscription's clock started."""
        client = self._client()
        if client is not None and client is not self._current:
            self._current = client
            self.sessions += 1
            self.silence.watch(CHANNEL, "", None, time.monotonic())
            self.silent.pending.clear()
            if self.sessions > 1:
                self.metrics.reconnects.labels(ENDPOINT, self._reason or "closed").inc()
                self._spawn(self.on_reconnect())
            self._reason = ""
        if client is not None and not self.connected.is_set():
            self.connected.set()
            self.metrics.connected.labels(ENDPOINT).set(1)
            self.metrics.set_rest_fallback(ENDPOINT, False)
        elif client is None and self.connected.is_set():
            LOG.warning("stream %s: down, REST stands in", ENDPOINT)
            self.connected.clear()
            if self.hooked:
                self.metrics.subscribed.labels(CHANNEL).set(0)
            self.metrics.connected.labels(ENDPOINT).set(0)
            self.metrics.set_rest_fallback(ENDPOINT, True)

    def _forget(self) -> None:
        """Drop the subscriptions ccxt.pro keeps: the next watch subscribes again on the same socket."""
        for client in list(self.pro.clients.values()):
            for key in [k for k in client.subscriptions if k != "authenticated"]:
                client.subscriptions.pop(key, None)

    async def _health(self) -> None:
        """Every WATCH_SECONDS: the connection's state; a channel that owes what REST found subscribed again, then
        its socket replaced."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            self._session()
            if not self.connected.is_set():
                continue
            again, stuck = self.silent.due(time.monotonic())
            if self.hooked:
                self._judge(time.monotonic(), bool(again) or stuck is not None)
            if stuck is not None:
                LOG.warning("stream %s: %s still silent, reconnecting", ENDPOINT, CHANNEL)
                await self.reconnect("silent")
                continue
            for clock in again:
                LOG.warning("stream %s: %s silent, subscribing again", ENDPOINT, CHANNEL)
                self.metrics.resyncs.labels(CHANNEL, "silent").inc()
                self.silence.watch(CHANNEL, "", None, time.monotonic())  # the new subscription's clock
                self.silent.resubscribed(clock, time.monotonic())
                self._kick.set()
                self._reconcile_when_held()  # what it lost before and while it came back: over REST

    async def resubscribe(self) -> None:
        """The subscription made again (`resyncs_total{reason="requested"}`)."""
        self.metrics.resyncs.labels(CHANNEL, "requested").inc()
        self.silence.watch(CHANNEL, "", None, time.monotonic())
        self._kick.set()
        if self.hooked:
            self._lapsed = True  # reconciled once held again (_subscription)

    async def reconnect(self, reason: str = "requested") -> None:
        """A new socket: ccxt.pro's clients closed and forgotten; the watch opens a new one and subscribes again."""
        LOG.info("stream %s: reconnecting (%s)", ENDPOINT, reason)
        self._reason = reason
        clients = list(self.pro.clients.items())
        self.pro.clients.clear()
        for _url, client in clients:
            client.error = NetworkError(f"reconnecting ({reason})")  # ccxt.pro: a closed client is no clean end
        self._kick.set()
        for _url, client in clients:
            with contextlib.suppress(Exception):
                await client.close()

    async def close(self) -> None:
        await stop_tasks(self._tasks)
        self.connected.clear()
        self.metrics.connected.labels(ENDPOINT).set(0)
        self.metrics.set_rest_fallback(ENDPOINT, False)  # stopped, not standing in for anything
        if self.hooked:
            self.metrics.subscribed.labels(CHANNEL).set(0)
            self.metrics.channel_silent.labels(CHANNEL).set(0)
        with contextlib.suppress(Exception):
            await self.pro.close()
