"""A ccxt broker whose fills stream through ccxt.pro's own `watch_my_trades` (ProFills), for a venue whose ccxt.pro
client has it and whose stream this package does not speak itself (`ccxt.stream_executions: ccxt.pro`; why Kraken
keeps our own v2 client by default: trading_ops.venues.ccxt.pro_fills). Everything else is StreamingCcxtBroker's
without its Kraken v2 sockets: CcxtBroker's calls and polls (quotes, balances and the dead man's switch over REST),
each fill delivered once through the same FillFeed, a REST reconciliation after every new socket, the order poll
every 15 s at most while fills stream, and a silent channel found by that poll."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerEvents, OrderRequest, Quote, VenueOrder
from trading_ops.bot.streams.health import Silence
from trading_ops.tasks import stop_tasks
from trading_ops.venues.ccxt.binance_book import BinanceBooks
from trading_ops.venues.ccxt.pro_fills import ProFills
from trading_ops.venues.ccxt.streaming import STREAMED_POLL_SECONDS, StreamingCcxtBroker
from trading_ops.venues.ccxt.symbols import to_ccxt_symbol


class ProStreamingCcxtBroker(StreamingCcxtBroker):
    """StreamingCcxtBroker with `pro` (a ccxt.pro client of the same exchange and keys) for the fills, and no Kraken
    v2 socket: `stream` and `public` stay None."""

    def __init__(self, exchange: Any, symbols: list[str], *, pro: Any, book_pro: Any = None, **kw: Any) -> None:
        super().__init__(exchange, symbols, private_url="", **kw)
        self.pro = pro
        pro.number = str  # amounts as the venue wrote them, as on the REST client
        self.pro_fills: ProFills | None = None
        # Binance: each symbol's book from the diff-depth stream, synced by update ids (a client of its own: its
        # sockets are the public stream's, apart from the user stream's)
        self.book_pro = book_pro
        self.books: BinanceBooks | None = None
        self._asked: dict[str, Any] = {}  # the books' update ids when the last quote poll was sent

    def _private_silence(self) -> Silence | None:
        fills = self.pro_fills
        return fills.silence if fills is not None and fills.connected.is_set() else None

    async def _on_trade(self, raw: dict[str, Any]) -> None:
        """A trade ccxt.pro parsed (ccxt's unified trade, as REST's): its order's client id learned as the poll
        learns it, then offered to the FillFeed as the stream's (only the bot's own on a shared account)."""
        assert self.fills is not None
        vid = str(raw.get("order") or "")
        if vid:
            await self._learn_client_ids({vid})
        fill = self.translate.fill(raw)
        if self.share.mine(fill.client_order_id):  # a shared account's stream carries every bot's trades
            await self.fills.offer(fill, "stream")

    async def submit(self, request: OrderRequest) -> VenueOrder:
        """CcxtBroker's submit; the order the venue took is a message the user stream owes (ProFills.expect)."""
        since = time.monotonic()
        order = await super().submit(request)
        if self.pro_fills is not None:
            self.pro_fills.expect(since)
        return order

    async def cancel(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        since = time.monotonic()
        order = await super().cancel(client_order_id, venue_order_id=venue_order_id)
        if self.pro_fills is not None:
            self.pro_fills.expect(since)
        return order

    async def connect(self, events: BrokerEvents) -> None:
        self._bot_on_fill = events.on_fill
        self._bot_on_quote = events.on_quote
        if self.stream_metrics is None:  # a broker used without a bot runtime
            self.register_metrics(CollectorRegistry())
        assert self.stream_metrics is not None
        await super(StreamingCcxtBroker, self).connect(
            dataclasses.replace(events, on_fill=self._from_poll, on_quote=self._polled_quote)
        )
        if self._stream_tasks:
            return
        if self.exchange.markets:
            self.pro.set_markets(self.exchange.markets, self.exchange.currencies)
        self.pro_fills = ProFills(self.pro, self.stream_metrics, self._on_trade, self._reconcile_fills)
        self._stream_tasks.append(asyncio.create_task(self.pro_fills.run(), name=f"{self.venue}-pro-fills"))
        if self.book_pro is not None:
            if self.exchange.markets:
                self.book_pro.set_markets(self.exchange.markets, self.exchange.currencies)
            self.books = BinanceBooks(
                self.book_pro, list(self._ws_symbols.values()), self.stream_metrics, self._on_ticker
            )
            self._stream_tasks.append(asyncio.create_task(self.books.run(), name=f"{self.venue}-books"))

    async def _poll_quotes(self, symbols: list[str]) -> None:
        """CcxtBroker's quote poll, the books' update ids noted as it is sent: each answer is then the books' check."""
        self._asked = self.books.nonces() if self.books is not None else {}
        await super()._poll_quotes(symbols)

    async def _polled_quote(self, quote: Quote) -> None:
        """A REST quote: the streamed book of its symbol checked against it (BinanceBooks.cross_check: a silent depth
        stream found at no weight of its own), then handed to the bot."""
        if self.books is not None:
            self.books.cross_check(to_ccxt_symbol(quote.symbol), quote.bid, quote.ask, self._asked)
        if self._bot_on_quote is not None:
            await self._bot_on_quote(quote)

    def market_data_in_sync(self, symbol: str) -> bool:
        """False while the symbol's streamed book is out of sync (a gap in its update ids, until a new snapshot
        syncs): the gate refuses new risk on it. A book not streamed, or its socket down, leaves REST quotes to tell."""
        ws = self._ws_symbols.get(symbol, "")
        if self.books is None or not self.books.streaming(ws):
            return True
        return self.books.book_in_sync(ws)

    @property
    def orders_interval(self) -> float:
        polled = super(StreamingCcxtBroker, self).orders_interval
        if self.pro_fills is not None and self.pro_fills.streaming():
            return max(polled, STREAMED_POLL_SECONDS)
        return polled

    async def reconnect(self) -> None:
        await super().reconnect()
        if self.pro_fills is not None:
            await self.pro_fills.reconnect()
        if self.books is not None:
            await self.books.reconnect()

    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        await super().resubscribe(symbols)
        if self.pro_fills is not None:
            await self.pro_fills.resubscribe()
        if self.books is not None:
            await self.books.resubscribe([to_ccxt_symbol(s) for s in symbols] if symbols is not None else None)

    async def close(self) -> None:
        await stop_tasks(self._stream_tasks)
        self._stream_tasks = []
        if self.pro_fills is not None:
            await self.pro_fills.close()
            self.pro_fills = None
        if self.books is not None:
            await self.books.close()
            self.books = None
        await super().close()
