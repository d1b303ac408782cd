"""The paper bot's streaming broker: every request goes to the paper venue as a REST call would, while its order
updates, fills and quotes arrive over the venue's push channel (`public` ticker, `private` executions), as a
streaming bot's do over Kraken's WebSocket v2.

REST stays: a poll of fills and orders every `poll_seconds` whatever the stream says (the fallback a stream's own
claim cannot switch off; every second while the private endpoint is down, with quotes polled while the public one
is), and a REST reconciliation at once after every reconnect and every sequence gap. Each fill reaches the bot once,
from whichever source saw it first (FillFeed, by execution id), counted in
`tradingbot_stream_fills_first_seen_total`; one the poll delivers first that the executions channel does not follow
with any message within three heartbeats of its execution makes that channel silent (FillFeed.offer_polled: the ccxt
bot's streaming broker shares it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import (
    Broker,
    BrokerError,
    BrokerEvents,
    Channel,
    OrderRequest,
    Quote,
    VenueFill,
    VenueOrder,
)
from trading_ops.bot.streams.fills import FillFeed
from trading_ops.bot.streams.health import Silence
from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.bot.streams.subscription import Subscription
from trading_ops.paper.push import PRIVATE, PUBLIC, Message, PushChannel
from trading_ops.paper.stream_client import PaperStream
from trading_ops.paper.venue import PaperVenue
from trading_ops.tasks import stop_tasks

LOG = logging.getLogger(__name__)

POLL_SECONDS = 5.0  # the REST poll while the stream is healthy
FALLBACK_POLL_SECONDS = 1.0  # while an endpoint is down
OVERLAP = timedelta(seconds=2)  # each fill poll reaches back past the last one (the FillFeed drops what it saw)
FIRST_CONNECT_SECONDS = 1.0  # connect() waits this long for the stream before it lets the bot start on REST
DRAIN_SECONDS = 5.0
REMEMBERED = 10_000  # closed orders remembered (not to be asked for again after their submit's answer)


class StreamingPaperBroker(Broker):
    """A Broker over a PaperVenue (`paper`) whose events stream (see the module). The venue keeps ticking and taking
    faults as before; `push` is its push channel (the stream faults).

    Over 20 public methods because it is the Broker interface (abstract in bot/broker.py, one method per request a
    bot makes of a venue): each answer is the paper venue's, a line or two here; what streams is in `push`."""

    def __init__(self, paper: PaperVenue, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.paper = paper
        self.venue = paper.venue
        self.push = PushChannel(paper)
        self.poll_seconds = poll_seconds
        self.metrics: StreamMetrics | None = None
        self.fills: FillFeed | None = None
        self.streams: dict[str, PaperStream] = {}
        self._events = BrokerEvents()
        self._tasks: list[asyncio.Task[None]] = []
        self._poll_lock = asyncio.Lock()
        self._polled_to: datetime | None = None  # venue time the last fill poll covered
        self._open: dict[str, VenueOrder] = {}  # venue order id -> the last open state seen (or its submit's ack)
        self._closed: OrderedDict[str, None] = OrderedDict()  # venue order ids seen closed, the latest REMEMBERED
        self._wake = asyncio.Event()
        self._reconciled_session = 1  # the private stream's last session a REST reconciliation ran in (the first's
        # events are the connect's: nothing before it to catch up on)

    # -- the stream -------------------------------------------------------------------------------------------
    def register_metrics(self, registry: CollectorRegistry) -> None:
        if self.metrics is not None:
            return
        self.metrics = StreamMetrics(registry)
        self.fills = FillFeed(
            self._to_bot, self.reconcile_rest, self.metrics, {s: s for s in self.paper.symbols}, self._private_silence
        )

    def _private_silence(self) -> Silence | None:
        """The private stream's channel clocks while it is connected (the FillFeed's judge of a silent channel)."""
        private = self.streams.get(PRIVATE)
        return private.silence if private is not None and private.connected.is_set() else None

    async def _to_bot(self, fill: VenueFill) -> None:
        if self._events.on_fill is not None:
            await self._events.on_fill(fill)

    async def _on_message(self, message: Message) -> None:
        assert self.fills is not None
        for item in message.data:
            if isinstance(item, VenueFill):
                await self.fills.offer(item, "stream")
            elif isinstance(item, VenueOrder):
                await self._order(item)
            elif isinstance(item, Quote) and self._events.on_quote is not None:
                await self._events.on_quote(item)

    async def _order(self, order: VenueOrder) -> None:
        if order.status.is_open:
            self._open[order.venue_order_id] = order
        else:
            self._open.pop(order.venue_order_id, None)
            self._closed[order.venue_order_id] = None
            if len(self._closed) > REMEMBERED:
                self._closed.popitem(last=False)
        if self._events.on_order is not None:
            await self._events.on_order(order)

    async def _on_gap(self, _channel: str, missing: int) -> None:
        LOG.warning("%d executions messages lost: reconciling over REST", missing)
        await self.reconcile_rest()

    # -- REST: the poll and the reconciliation ----------------------------------------------------------------
    async def reconcile_rest(self) -> None:
        """Fills since the last poll (with an overlap) and the open orders, over REST; an order the stream saw open
        that is no longer open is asked for by id. Each fill is offered to the FillFeed, so it is delivered once."""
        assert self.fills is not None
        if not self.paper.is_connected(Channel.ORDERS):
            return  # nothing can be sent (drop_connection): the reconnect's reconciliation comes after
        private = self.streams.get(PRIVATE)
        session = private.sessions if private is not None and private.connected.is_set() else 0
        async with self._poll_lock:
            started = await self.paper.server_time()
            since = None if self._polled_to is None else self._polled_to - OVERLAP
            for fill in await self.paper.recent_fills(since):
                if fill.client_order_id is None:
                    # A fill of no order (position_drift: a fill the venue told nobody of) is no stream's to lose: the
                    # bot's own reconciliation adopts it as a discrepancy (missing_fill), as without a stream.
                    continue
                await self.fills.offer_polled(fill, started)  # one found past its time: the channel is silent
            self._polled_to = started
            open_now = {o.venue_order_id: o for o in await self.paper.open_orders()}
            for order in open_now.values():
                await self._order(order)
            for venue_order_id in [v for v in self._open if v not in open_now]:
                closed = await self.paper.order_status(venue_order_id=venue_order_id)
                if closed is not None:
                    await self._order(closed)
                else:
                    self._open.pop(venue_order_id, None)
        self._reconciled_session = max(self._reconciled_session, session)

    async def _poll_quotes(self) -> None:
        if self._events.on_quote is None or not self.paper.is_connected(Channel.MARKET_DATA):
            return
        stale = set(self.paper.faults().get("stale_market_data") or ())
        for symbol in self.paper.symbols:
            if symbol not in stale:  # a frozen market is frozen over REST too
                await self._events.on_quote(self.paper.quote(symbol))

    async def _poll(self) -> None:
        """The REST poll: never off, faster while an endpoint is down."""
        while True:
            down = {e for e, s in self.streams.items() if not s.connected.is_set()}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FALLBACK_POLL_SECONDS if down else self.poll_seconds)
            self._wake.clear()
            try:
                await self.reconcile_rest()
                if PUBLIC in down:
                    await self._poll_quotes()
            except BrokerError as exc:
                if self._events.on_venue_error is not None:
                    self._events.on_venue_error(exc.error_class)
            except Exception:  # the bot's callback failing is the bot's to log; the poll goes on
                LOG.exception("paper broker: the REST poll failed")

    # -- Broker: connection -----------------------------------------------------------------------------------
    async def connect(self, events: BrokerEvents) -> None:
        self._events = events
        if self.metrics is None:
            self.register_metrics(CollectorRegistry())
        assert self.metrics is not None
        await self.paper.connect(self.push.venue_events(events))
        self._polled_to = await self.paper.server_time()
        if not self.streams:
            cadence = self.paper.tick_interval
            self.streams = {
                PUBLIC: PaperStream(
                    self.push,
                    PUBLIC,
                    [Subscription("ticker", list(self.paper.symbols), cadence=cadence)],
                    self.metrics,
                    on_message=self._on_message,
                    on_reconnect=self._after_reconnect,
                ),
                PRIVATE: PaperStream(
                    self.push,
                    PRIVATE,
                    [Subscription("executions")],
                    self.metrics,
                    on_message=self._on_message,
                    on_gap=self._on_gap,
                    on_reconnect=self._after_reconnect,
                ),
            }
            for endpoint, stream in self.streams.items():
                self._tasks.append(asyncio.create_task(stream.run(), name=f"paper-stream-{endpoint}"))
            self._tasks.append(asyncio.create_task(self._poll(), name="paper-rest-poll"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_CONNECT_SECONDS):
                for stream in self.streams.values():
                    await stream.connected.wait()

    async def _after_reconnect(self) -> None:
        await self.reconcile_rest()

    async def close(self) -> None:
        for stream in self.streams.values():
            await stream.close()
        await stop_tasks(self._tasks)
        self._tasks = []
        self.streams = {}
        await self.paper.close()

    def is_connected(self, channel: Channel) -> bool:
        return self.paper.is_connected(channel)

    async def reconnect(self) -> None:
        """The venue's channels back (REST), and a new connection of each stream endpoint (subscriptions replayed,
        a REST reconciliation after)."""
        await self.paper.reconnect()
        for stream in self.streams.values():
            await stream.reconnect()
        # The quotes the venue sent as it came back went to no connection: REST gives the bot the market at once.
        public = self.streams.get(PUBLIC)
        if public is not None and not public.connected.is_set():
            await self._poll_quotes()
        self._wake.set()

    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        await self.paper.resubscribe(symbols)
        stream = self.streams.get(PUBLIC)
        if stream is not None:
            await stream.resubscribe(symbols)

    async def drain_events(self) -> None:
        """The venue's events handed to the push channel, and what the private endpoint was sent (orders and fills;
        quotes need no draining) handled; while that endpoint is down (what it would have sent is lost), a REST
        reconciliation instead (and once after each reconnect, where what was sent before it was lost), so that what
        the venue produced reaches the bot before a snapshot all the same."""
        await self.paper.drain_events()
        stream = self.streams.get(PRIVATE)
        if stream is None:
            return
        conn = stream.conn
        if (
            conn is not None
            and not conn.closed
            and stream.connected.is_set()
            and stream.sessions <= self._reconciled_session
        ):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_SECONDS):
                    await conn.queue.join()
        else:
            await self.reconcile_rest()

    # -- Broker: REST calls, the venue's own --------------------------------------------------------------------
    async def submit(self, request: OrderRequest) -> VenueOrder:
        order = await self.paper.submit(request)
        if order.venue_order_id and order.venue_order_id not in self._closed:
            # Its updates stream; until one says it closed, the REST reconciliation asks for it (an update sent
            # while the private endpoint was down is lost, a market order's fill among them).
            self._open.setdefault(order.venue_order_id, order)
        return order

    async def cancel(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        return await self.paper.cancel(client_order_id, venue_order_id=venue_order_id)

    async def order_status(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder | None:
        return await self.paper.order_status(client_order_id, venue_order_id=venue_order_id)

    async def positions(self) -> dict[str, Decimal]:
        return await self.paper.positions()

    async def balances(self) -> dict[str, Decimal]:
        return await self.paper.balances()

    async def open_orders(self) -> list[VenueOrder]:
        return await self.paper.open_orders()

    async def recent_fills(self, since: datetime | None = None) -> list[VenueFill]:
        return await self.paper.recent_fills(since)

    async def server_time(self) -> datetime:
        return await self.paper.server_time()

    def server_time_resolution(self) -> float:
        return self.paper.server_time_resolution()

    def base_asset(self, symbol: str) -> str:
        return self.paper.base_asset(symbol)

    def quote(self, symbol: str) -> Quote:
        """The venue's current quote (as PaperVenue.quote: what tests and the demo read beside the stream)."""
        return self.paper.quote(symbol)

    def has_dead_man_switch(self) -> bool:
        return self.paper.has_dead_man_switch()

    async def cancel_all_orders_after(self, timeout: int) -> tuple[datetime, datetime | None]:
        return await self.paper.cancel_all_orders_after(timeout)

    def rate_limit_headroom(self) -> float | None:
        return self.paper.rate_limit_headroom()

    def status(self) -> dict[str, Any]:
        """The stream's state for the bot's `status` command."""
        return {
            endpoint: {"connected": s.connected.is_set(), "sessions": s.sessions}
            for endpoint, s in self.streams.items()
        } | {"faults": self.push.faults()}

    @contextlib.asynccontextmanager
    async def patient(self) -> AsyncIterator[None]:
        async with self.paper.patient():
            yield

    @contextlib.asynccontextmanager
    async def protective(self) -> AsyncIterator[None]:
        async with self.paper.protective():
            yield

    @contextlib.asynccontextmanager
    async def reconciliation_room(self) -> AsyncIterator[None]:
        async with self.paper.reconciliation_room():
            yield
