"""A ccxt broker that streams: CcxtBroker for every call and its polls (REST stays the fallback and the
reconciliation), with Kraken v2's private `executions` channel delivering fills as they happen (KrakenStream) and the
public `ticker` and `book` channels through ccxt.pro's stock kraken client (PublicStream: every watch bounded, a
refused or unanswered subscription a fault, never a hang) delivering the market it trades on: the ticker's best bid
and ask as quotes. Each fill reaches the bot once, whichever of the stream and the poll saw it first (FillFeed), and
every reconnect or sequence gap of the private stream runs a poll at once; a fill the poll delivers first that the
executions channel does not follow with any message within three heartbeats of its execution makes that channel
silent (it has no cadence to time it by): subscribed again, then the socket replaced, as the streaming paper bot
does (FillFeed.offer_polled, SilentChannels: the same code). Each book ccxt.pro keeps is checked by our
code against Kraken's checksum at the pair's precision, resubscribed with backoff on a mismatch, and never traded on
while out of sync (`market_data_in_sync`). The dead man's switch goes over the private socket while it is up, over
REST otherwise.

The fills come over our own v2 client rather than ccxt.pro's `watch_my_trades`/`watch_orders`, though ccxt.pro
4.5.90's kraken speaks the same v2 `executions` channel and the gateway serves it: ccxt.pro ignores each message's
`sequence` (a gap unseen until the next poll), files a message under its trades or its orders by its first item's
`exec_type` (a trade behind an order event never reaches watch_my_trades), reads the client order id from
`order_userref` and passes a repeated trade snapshot on as new trades. A venue whose ccxt.pro client watches the
account's trades and whose stream we do not speak takes ccxt.pro's (ProStreamingCcxtBroker; `ccxt.stream_executions`
picks, trading_ops.venues.ccxt.factory.executions_client)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerEvents, Channel, Quote, VenueFill
from trading_ops.bot.streams.checksum import DEFAULT_DEPTH, decimals
from trading_ops.bot.streams.fills import FillFeed
from trading_ops.bot.streams.health import Silence
from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.bot.streams.parse import ws_time
from trading_ops.tasks import stop_tasks
from trading_ops.venues.ccxt.kraken_stream import KrakenStream, StreamRequestError, Subscription
from trading_ops.venues.ccxt.pro import PublicStream
from trading_ops.venues.ccxt.rest import CcxtBroker
from trading_ops.venues.ccxt.symbols import from_ccxt_symbol, to_ccxt_symbol

LOG = logging.getLogger(__name__)

# A book of a traded pair changes at least this often (seconds): its silence timeout is three of these, never under
# three heartbeats (trading_ops.bot.streams.health.silence_timeout).
BOOK_CADENCE_SECONDS = 1.0
# While the private stream is up, the order poll (REST: open orders, the trade history) runs at most this often: a
# reconciliation and a fallback that a stream's own claim never switches off, at a fraction of the call budget.
STREAMED_POLL_SECONDS = 15.0
KEPT_FILLS = 10_000  # fills kept to apply to the last balance answer (far more than arrive between two)
# While the private `balances` channel streams in sequence, balances are its own; one REST answer at least this often
# (seconds) all the same: a check of the stream that its own claim never switches off.
BALANCES_REST_CHECK_SECONDS = 300.0
# A fill's balances update comes within this (seconds) of the fill, or the `balances` channel is behind (silent while
# executions flow): REST answers and the channel is subscribed again (a fresh snapshot).
BALANCES_LAG_SECONDS = 2.0
# How long the dead man's switch waits for the socket's answer before it asks over REST instead.
SWITCH_ANSWER_SECONDS = 2.0


def pair_precision(market: dict[str, Any]) -> tuple[int, int]:
    """A ccxt market's (price decimals, quantity decimals), as Kraken's checksum renders its levels: Kraken's own
    `pair_decimals` and `lot_decimals` where the market carries them, else ccxt's tick sizes."""
    info = market.get("info") or {}
    if "pair_decimals" in info and "lot_decimals" in info:
        return int(info["pair_decimals"]), int(info["lot_decimals"])
    precision = market.get("precision") or {}
    return decimals(Decimal(str(precision["price"]))), decimals(Decimal(str(precision["amount"])))


class StreamingCcxtBroker(CcxtBroker):
    """CcxtBroker plus the private stream at `private_url` (a token from the exchange's GetWebSocketsToken) and, with
    a `public_url`, the book of each symbol at `book_depth`. The bot's on_fill is fed by both the stream and the
    polls through one FillFeed; its on_quote by the book while in sync and by the REST ticker poll."""

    def __init__(
        self,
        exchange: Any,
        symbols: list[str],
        *,
        private_url: str,
        public_url: str = "",
        book_depth: int = DEFAULT_DEPTH,
        book_cadence: float | None = BOOK_CADENCE_SECONDS,
        registry: CollectorRegistry | None = None,
        ssl: Any = None,
        **kw: Any,
    ):
        super().__init__(exchange, symbols, **kw)
        self.ssl = ssl  # the streams' TLS context (ccxt.tls: a venue's CA, a client certificate)
        self.private_url = private_url
        self.public_url = public_url
        self.book_depth = book_depth
        self.book_cadence = book_cadence
        self._bot_on_fill: Any = None
        self._bot_on_quote: Any = None
        self.stream: KrakenStream | None = None
        self.public: PublicStream | None = None  # the ticker and the book (ccxt.pro)
        self._stream_tasks: list[asyncio.Task[None]] = []
        self.stream_metrics: StreamMetrics | None = None
        self.fills: FillFeed | None = None
        self.switch_over: str = ""  # where the dead man's switch went last: "stream" or "rest"
        self._handing_fill = False  # a fill is being handed to the bot (its balance lookup reads the last answer)
        self._fills_after_balances: list[tuple[float, VenueFill]] = []  # (monotonic arrival, fill)
        # The `balances` channel's view (ccxt's currency codes): None until a snapshot of this subscription, and again
        # after a reconnect or a sequence gap (REST answers until the next snapshot).
        self.streamed_balances: dict[str, Decimal] | None = None
        self._snapshot_at = 0.0  # monotonic time of the balances channel's snapshot
        self._ledger_refs: set[str] = set()  # trade ids the balances updates since the last snapshot reflect
        self._rest_only = 0  # callers that need the venue's REST answer (check_session, a reconciliation)
        self._ws_symbols = {s: to_ccxt_symbol(s) for s in self.symbols}  # ours -> v2 (BTC-USD -> BTC/USD)
        if registry is not None:
            self.register_metrics(registry)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """The stream's metrics on the bot's registry (a registry of its own when the bot gave none by `connect`)."""
        super().register_metrics(registry)
        if self.stream_metrics is not None:
            return
        self.stream_metrics = StreamMetrics(registry)
        self.fills = FillFeed(
            self._to_bot,
            self._reconcile_fills,
            self.stream_metrics,
            {to_ccxt_symbol(s): s for s in self.symbols},
            self._private_silence,
        )

    def _private_silence(self) -> Silence | None:
        """The private stream's channel clocks while its socket is up (the FillFeed's judge of a silent channel)."""
        stream = self.stream
        return stream.silence if stream is not None and stream.connected.is_set() else None

    async def _reconcile_fills(self) -> None:
        """After a reconnect or a sequence gap: a poll that asks for the trade history whatever the budget's pacing
        (the stream may have lost a fill of any order)."""
        self._trades_due = True
        await self.drain_events()

    async def _to_bot(self, fill: VenueFill) -> None:
        answered = self.balance_cache.answered_at  # fills before the last REST balance answer are in it
        self._fills_after_balances = [(t, f) for t, f in self._fills_after_balances if t > answered]
        self._fills_after_balances.append((time.monotonic(), fill))
        del self._fills_after_balances[:-KEPT_FILLS]
        if self._bot_on_fill is not None:
            self._handing_fill = True
            try:
                await self._bot_on_fill(fill)
            finally:
                self._handing_fill = False

    def balances_streaming(self) -> bool:
        """Whether the `balances` channel answers for the balances: subscribed, its snapshot in, no gap since, and
        no fill older than BALANCES_LAG_SECONDS that none of its updates reflects."""
        if self.streamed_balances is None or self.stream is None or not self.stream.streaming("balances"):
            return False
        lagging = time.monotonic() - BALANCES_LAG_SECONDS
        return not any(
            self._snapshot_at < at < lagging and fill.trade_id not in self._ledger_refs
            for at, fill in self._fills_after_balances
        )

    async def balances(self) -> dict[str, Decimal]:
        """The venue's balances. While the private `balances` channel streams in sequence: its own, no REST call
        (one REST answer every BALANCES_REST_CHECK_SECONDS all the same); else CcxtBroker's (REST). Asked while a
        fill is handed to the bot (the runtime's balance gauges after each fill), the channel's (or the last REST
        answer) with the fills delivered since that it does not reflect yet applied, as the venue applies them."""
        cache = self.balance_cache
        rest_due = time.monotonic() - cache.answered_at >= BALANCES_REST_CHECK_SECONDS or cache.last is None
        streaming = self.balances_streaming()
        if streaming and not self._rest_only and not (rest_due and not self._handing_fill):
            assert self.streamed_balances is not None
            return self._with_fills_since(self.streamed_balances, self._snapshot_at, self._ledger_refs, always=True)
        if not streaming and self.streamed_balances is not None and self.stream is not None:
            LOG.warning("%s: the balances channel is behind the fills: REST balances, subscribing again", self.venue)
            self.streamed_balances = None
            await self.stream.resubscribe_channel("balances", "silent")
        last = cache.last
        if self._handing_fill and last is not None:
            self._fills_after_balances = [(t, f) for t, f in self._fills_after_balances if t > cache.answered_at]
            return self._with_fills_since(last, cache.answered_at, set())
        return await super().balances()

    async def check_session(self) -> None:
        """CcxtBroker's, its private call a REST one whatever the stream says."""
        self._rest_only += 1
        try:
            await super().check_session()
        finally:
            self._rest_only -= 1

    @contextlib.asynccontextmanager
    async def reconciliation_room(self) -> AsyncIterator[None]:
        """CcxtBroker's, and the reconciliation inside reads the venue's balances over REST: a reconciliation is the
        check of what the streams said, which a stream's own claim never stands in for."""
        async with super().reconciliation_room():
            self._rest_only += 1
            try:
                yield
            finally:
                self._rest_only -= 1

    def _with_fills_since(
        self, base: dict[str, Decimal], since: float, reflected: set[str], *, always: bool = False
    ) -> dict[str, Decimal]:
        """`base` (balances as of `since`) with the fills delivered to the bot after it applied, but for those the
        base already `reflected` (a balances update naming the trade): while a fill is handed to the bot, or
        `always` (the channel's balances, whose updates name each trade they reflect)."""
        found = dict(base)
        if not (self._handing_fill or always):
            return found
        for at, fill in self._fills_after_balances:
            if at <= since or fill.trade_id in reflected:
                continue
            asset, _, quote = self._unified[fill.symbol].partition("/")
            sign = fill.side.sign
            found[asset] = found.get(asset, Decimal(0)) + sign * fill.quantity
            found[quote] = found.get(quote, Decimal(0)) - sign * fill.quantity * fill.price
            if fill.fee:
                found[fill.fee_asset] = found.get(fill.fee_asset, Decimal(0)) - fill.fee
        return found

    async def _on_private(self, message: dict[str, Any]) -> None:
        """A private message: executions to the FillFeed; balances kept (a snapshot replaces them, an update sets
        each asset's new balance)."""
        assert self.fills is not None
        if message.get("channel") != "balances":
            await self.fills.on_message(message)
            return
        items = [d for d in message.get("data") or [] if isinstance(d, dict) and "asset" in d and "balance" in d]
        if message.get("type") == "snapshot":
            self.streamed_balances = {}
            self._ledger_refs = set()
            self._snapshot_at = time.monotonic()
        elif self.streamed_balances is None:
            return  # an update before the snapshot it applies to
        for item in items:
            code = str(self.exchange.safe_currency_code(str(item["asset"])))
            self.streamed_balances[code] = Decimal(str(item["balance"]))
            if item.get("ref_id"):
                self._ledger_refs.add(str(item["ref_id"]))

    async def _on_private_gap(self, channel: str, missing: int) -> None:
        assert self.fills is not None
        if channel == "balances":  # REST answers until a fresh snapshot
            LOG.warning("%s: %d balances messages lost: REST balances until a fresh snapshot", self.venue, missing)
            self.streamed_balances = None
            if self.stream is not None:
                await self.stream.resubscribe_channel("balances", "gap")
            return
        await self.fills.on_gap(channel, missing)

    async def _on_private_reconnect(self) -> None:
        assert self.fills is not None
        self.streamed_balances = None  # the new subscription's snapshot starts them again
        await self.fills.on_reconnect()

    async def _from_poll(self, fill: VenueFill) -> None:
        """A fill the REST poll found: delivered unless the stream did first; one the stream should have sent long
        before is the evidence of a silent executions channel (FillFeed.offer_polled). The venue's time is read as the
        bot's own clock: a skew of seconds (LOST_AFTER) is past TradingBotClockSkew's 0.5 s, and a wrong verdict costs
        one resubscribe."""
        assert self.fills is not None  # connect registered it
        await self.fills.offer_polled(fill, datetime.now(UTC))

    async def _token(self) -> str:
        # Through CcxtBroker's call: its errors mapped, a nonce refused (a private call of the bot's beside it) retried.
        answer = await self._call(Channel.ORDERS, "websocket token", self.exchange.privatePostGetWebSocketsToken)
        return str(answer["result"]["token"])

    async def connect(self, events: BrokerEvents) -> None:
        self._bot_on_fill = events.on_fill
        self._bot_on_quote = events.on_quote
        if self.stream_metrics is None:  # a broker used without a bot runtime
            self.register_metrics(CollectorRegistry())
        assert self.fills is not None and self.stream_metrics is not None
        await super().connect(dataclasses.replace(events, on_fill=self._from_poll))
        if self._stream_tasks:
            return
        self.stream = KrakenStream(
            self.private_url,
            [Subscription("executions", params={"snap_trades": True}), Subscription("balances")],
            self.stream_metrics,
            endpoint="private",
            token=self._token,
            on_message=self._on_private,
            on_gap=self._on_private_gap,
            on_reconnect=self._on_private_reconnect,
            ssl=self.ssl,
        )
        self._stream_tasks.append(asyncio.create_task(self.stream.run(), name=f"{self.venue}-executions"))
        if self.public_url:
            markets = self.exchange.markets or {}
            self.public = PublicStream(
                self.exchange,
                self.public_url,
                list(self._ws_symbols.values()),
                self.stream_metrics,
                self._on_ticker,
                precision={ws: pair_precision(markets[ws]) for ws in self._ws_symbols.values()},
                book_depth=self.book_depth,
                cadence=self.book_cadence,
                ssl=self.ssl,
            )
            self._stream_tasks.append(asyncio.create_task(self.public.run(), name=f"{self.venue}-public"))

    def _rest_quote(self, symbol: str, asked: float, bid: Decimal, ask: Decimal) -> None:
        """A REST quote: the public stream's judge of a quiet channel (PublicStream.rest_quote)."""
        if self.public is not None:
            self.public.rest_quote(self._ws_symbols[symbol], asked, bid, ask)

    async def _on_ticker(self, symbol: str, bid: Decimal, ask: Decimal, at: datetime) -> None:
        """The ticker's best bid and ask (ccxt.pro's watch_ticker), as a quote."""
        if self._bot_on_quote is not None and bid < ask:
            await self._bot_on_quote(Quote(symbol=from_ccxt_symbol(symbol), bid=bid, ask=ask, timestamp=at))

    @property
    def orders_interval(self) -> float:
        """CcxtBroker's order poll interval, or STREAMED_POLL_SECONDS while the private stream is up (fills stream;
        every reconnect and sequence gap polls at once)."""
        polled = super().orders_interval
        if self.stream is not None and self.stream.streaming("executions"):
            return max(polled, STREAMED_POLL_SECONDS)
        return polled

    def market_data_in_sync(self, symbol: str) -> bool:
        """False while the symbol's streamed book disagrees with the venue's checksum (the gate then refuses orders
        that add risk on it). A book not streamed, or a stream that is down, leaves the REST quotes to tell."""
        ws = self._ws_symbols.get(symbol, "")
        if self.public is None or not self.public.streaming("book", ws):
            return True
        return self.public.book_in_sync(ws)

    async def cancel_all_orders_after(self, timeout: int) -> tuple[datetime, datetime | None]:
        """Kraken's `cancel_all_orders_after` over the private socket while it is up (no REST call spent, no wait on
        a REST session); over REST when the socket is down, refuses or does not answer in time."""
        if self.stream is not None and self.stream.connected.is_set():
            try:
                result = await self.stream.request(
                    "cancel_all_orders_after", {"timeout": int(timeout)}, SWITCH_ANSWER_SECONDS
                )
                now = ws_time(str(result["currentTime"]))
                trigger = str(result["triggerTime"])
            except (StreamRequestError, KeyError, ValueError) as exc:
                LOG.warning("%s: dead man's switch over the socket failed (%s): over REST", self.venue, exc)
            else:
                self.switch_over = "stream"
                if trigger == "0":
                    return now, None
                return now, ws_time(trigger) if trigger else now + timedelta(seconds=timeout)
        self.switch_over = "rest"
        return await super().cancel_all_orders_after(timeout)

    async def reconnect(self) -> None:
        """CcxtBroker's new REST session, and new sockets (their subscriptions replayed, a REST reconciliation)."""
        await super().reconnect()
        for stream in (self.stream, self.public):
            if stream is not None:
                await stream.reconnect()

    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        """CcxtBroker's fresh markets and quotes, and the streams' channels subscribed again (fresh snapshots)."""
        await super().resubscribe(symbols)
        wanted = [to_ccxt_symbol(s) for s in symbols] if symbols is not None else None
        for stream in (self.stream, self.public):
            if stream is not None:
                await stream.resubscribe(wanted)

    async def close(self) -> None:
        for stream in (self.stream, self.public):
            if stream is not None:
                await stream.close()
        await stop_tasks(self._stream_tasks)
        self._stream_tasks = []
        self.stream = None
        self.public = None
        await super().close()
