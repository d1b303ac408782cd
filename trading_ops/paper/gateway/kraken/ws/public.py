"""The public channels of the gateway's WebSocket: book (snapshot and updates with their checksum, at each pair's
precision), trade, ticker and instrument, fed by the paper market's quotes and every account's fills."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import OrderType, Quote, Side, VenueFill
from trading_ops.bot.streams.checksum import DEFAULT_DEPTH, decimals
from trading_ops.paper.gateway.kraken.api import Pair, Pairs
from trading_ops.paper.gateway.kraken.ws.book_feed import DEPTHS, BookFeed
from trading_ops.paper.gateway.kraken.ws.connection import Connection, Subscription
from trading_ops.paper.gateway.kraken.ws.messages import E_CHANNEL, E_DEPTH, E_PAIR, RequestError, answer, now_text
from trading_ops.paper.gateway.kraken.ws.ohlc import Candles, OhlcChannel
from trading_ops.paper.venue import PaperVenue

PUBLIC_CHANNELS = ("book", "trade", "ticker", "instrument", "ohlc")
TRADE_SNAPSHOT = 50  # trades a trade subscription's snapshot carries
ASSET_PRECISION = 10
EVENT_TRIGGERS = ("trades", "bbo")


def ws_symbol(pair: Pair) -> str:
    """v2's name of a pair: BTC/USD (v1's wsname says XBT/USD)."""
    return pair.symbol.replace("-", "/")


def trade_item(fill: VenueFill, kinds: Mapping[str, OrderType], symbol: str) -> dict[str, Any]:
    """One public trade as its taker saw it (a resting order's fill was taken by the other side, at market)."""
    taker = fill.liquidity != "maker"
    side = fill.side if taker else (Side.SELL if fill.side is Side.BUY else Side.BUY)
    limit = taker and kinds.get(fill.venue_order_id) is OrderType.LIMIT
    return {
        "symbol": symbol,
        "side": side.value,
        "price": fill.price,
        "qty": fill.quantity,
        "ord_type": "limit" if limit else "market",
        "trade_id": int(fill.trade_id.lstrip("T") or 0),
        "timestamp": now_text(fill.executed_at),
    }


class PublicChannels:
    """Subscriptions to the public channels and what each sends: a snapshot after the ack, then updates as the
    market moves. `connections` lists the sockets to publish to; `corrupt(checksum)` is the fault's hook."""

    def __init__(
        self,
        venue: PaperVenue,
        accounts: Mapping[str, PaperVenue],
        pairs: Pairs,
        connections: Callable[[], Iterable[Connection]],
        corrupt: Callable[[int, bool], int],
        silenced: Callable[[str, str], bool] = lambda _channel, _symbol: False,
        candles: Candles | None = None,
    ) -> None:
        self.venue = venue
        self.silenced = silenced  # whether a new subscription starts silenced (a persistent silent-channel fault)
        self.ohlc = OhlcChannel(candles or (lambda _symbol, _interval: []), connections)
        self.accounts = accounts
        self.pairs = pairs
        self.connections = connections
        self.corrupt = corrupt
        self.by_ws = {ws_symbol(p): p for p in pairs.by_symbol.values()}
        self.books: dict[tuple[str, int], BookFeed] = {}
        self.quotes: dict[str, Quote] = {}
        self.paused = False  # system maintenance: no market data

    # -- subscribing ------------------------------------------------------------------------------------------
    def symbols(
        self, params: Mapping[str, Any], method: str, req_id: Any, time_in: str, conn: Connection
    ) -> list[Pair]:
        """The known pairs of `symbol`; each unknown one answered with its own error."""
        raw = params.get("symbol")
        if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
            raise RequestError(E_PAIR)
        found = []
        for name in raw:
            pair = self.by_ws.get(name)
            if pair is None:
                conn.send({**answer(method, req_id, time_in, error=f"{E_PAIR} {name[:32]}"), "symbol": name[:32]})
            else:
                found.append(pair)
        return found

    def subscribe(self, conn: Connection, params: Mapping[str, Any], req_id: Any, time_in: str) -> list[str]:
        """Subscribe `conn`; the venue's symbols it subscribed to."""
        channel = params.get("channel")
        snapshot = params.get("snapshot", True) is not False
        if channel == "instrument":
            conn.subs[("instrument", "")] = Subscription("instrument")
            conn.send(answer("subscribe", req_id, time_in, {"channel": "instrument", "snapshot": snapshot}))
            if snapshot:
                conn.send({"channel": "instrument", "type": "snapshot", "data": self.instrument()})
            return []
        if channel not in PUBLIC_CHANNELS:
            raise RequestError(E_CHANNEL)
        if channel == "ohlc":
            return self._subscribe_ohlc(conn, params, snapshot, req_id, time_in)
        depth = 0
        trigger = ""
        if channel == "book":
            depth = params.get("depth", DEFAULT_DEPTH)
            if isinstance(depth, bool) or depth not in DEPTHS:
                raise RequestError(E_DEPTH)
        if channel == "ticker":
            trigger = params.get("event_trigger", "trades")
            if trigger not in EVENT_TRIGGERS:
                raise RequestError(E_CHANNEL)
        pairs = self.symbols(params, "subscribe", req_id, time_in, conn)
        for pair in pairs:
            symbol = ws_symbol(pair)
            sub = Subscription(channel, symbol, depth, {"event_trigger": trigger} if trigger else {})
            # Subscribing again replaces it: a fresh snapshot, silence ended (unless a persistent fault says not).
            sub.silenced = self.silenced(channel, symbol)
            conn.subs[(channel, symbol)] = sub
            result: dict[str, Any] = {"channel": channel}
            if channel == "book":
                result["depth"] = depth
            if trigger:
                result["event_trigger"] = trigger
            result |= {"snapshot": snapshot, "symbol": symbol}
            conn.send(answer("subscribe", req_id, time_in, result))
            if snapshot and not sub.silenced:
                self._snapshot(conn, sub, pair)
        return [pair.symbol for pair in pairs]

    def _subscribe_ohlc(
        self, conn: Connection, params: Mapping[str, Any], snapshot: bool, req_id: Any, time_in: str
    ) -> list[str]:
        interval = OhlcChannel.interval(params)
        pairs = self.symbols(params, "subscribe", req_id, time_in, conn)
        for pair in pairs:
            self.ohlc.subscribe(conn, ws_symbol(pair), pair.symbol, interval, snapshot, req_id, time_in)
        return [pair.symbol for pair in pairs]

    def unsubscribe(self, conn: Connection, params: Mapping[str, Any], req_id: Any, time_in: str) -> None:
        channel = params.get("channel")
        if channel not in PUBLIC_CHANNELS:
            raise RequestError(E_CHANNEL)
        if channel == "instrument":
            conn.subs.pop(("instrument", ""), None)
            conn.send(answer("unsubscribe", req_id, time_in, {"channel": channel}))
            return
        for pair in self.symbols(params, "unsubscribe", req_id, time_in, conn):
            symbol = ws_symbol(pair)
            conn.subs.pop((channel, symbol), None)
            conn.send(answer("unsubscribe", req_id, time_in, {"channel": channel, "symbol": symbol}))

    def _snapshot(self, conn: Connection, sub: Subscription, pair: Pair) -> None:
        quote = self.quotes.get(pair.symbol)
        if sub.channel == "book":
            if quote is None:
                return  # nothing published yet: the first update carries the whole book
            feed = self._feed(pair.symbol, sub.depth)
            conn.send(self._book_message(feed, "snapshot", feed.asks.items(), feed.bids.items(), quote))
        elif sub.channel == "ticker":
            if quote is not None:
                conn.send({"channel": "ticker", "type": "snapshot", "data": [self._ticker(pair, quote)]})
        elif sub.channel == "trade":
            # Kraken's pairs always have trades to show; a pair with none sends no snapshot (an empty one crashes
            # ccxt.pro's handler, which reads the symbol from the first trade).
            trades = self._recent_trades(pair)
            if trades:
                conn.send({"channel": "trade", "type": "snapshot", "data": trades})

    # -- publishing -------------------------------------------------------------------------------------------
    def _subscribers(self, channel: str, symbol: str) -> list[tuple[Connection, Subscription]]:
        found = []
        for conn in self.connections():
            sub = conn.subs.get((channel, symbol))
            if sub is not None and not sub.silenced:
                found.append((conn, sub))
        return found

    def on_quote(self, quote: Quote) -> None:
        """The market published a quote: book updates at every depth subscribed, the ticker's bbo trigger."""
        pair = self.pairs.by_symbol.get(quote.symbol)
        if pair is None:
            return
        previous = self.quotes.get(quote.symbol)
        self.quotes[quote.symbol] = quote
        if self.paused:
            return
        symbol = ws_symbol(pair)
        self.ohlc.on_quote(quote.symbol, symbol)
        books = self._subscribers("book", symbol)
        for depth in {sub.depth for _, sub in books}:
            feed = self._feed(quote.symbol, depth, advance=False)
            first = not feed.asks and not feed.bids
            asks, bids = feed.advance(quote)
            if not asks and not bids:
                continue
            kind = "snapshot" if first else "update"
            message = self._book_message(feed, kind, asks, bids, quote)
            for conn, sub in books:
                if sub.depth == depth:
                    conn.send(message)
        if previous is None or (previous.bid, previous.ask) != (quote.bid, quote.ask):
            tickers = [(c, s) for c, s in self._subscribers("ticker", symbol) if s.options["event_trigger"] == "bbo"]
            if tickers:
                message = {"channel": "ticker", "type": "update", "data": [self._ticker(pair, quote)]}
                for conn, _ in tickers:
                    conn.send(message)

    def on_fill(self, fill: VenueFill, venue: PaperVenue) -> None:
        """An account's fill is a public trade; the ticker's trades trigger."""
        pair = self.pairs.by_symbol.get(fill.symbol)
        if pair is None or self.paused:
            return
        symbol = ws_symbol(pair)
        kinds = {o.venue_order_id: o.order_type for o in venue.orders() if o.venue_order_id == fill.venue_order_id}
        trade = {"channel": "trade", "type": "update", "data": [trade_item(fill, kinds, symbol)]}
        for conn, _ in self._subscribers("trade", symbol):
            conn.send(trade)
        quote = self.quotes.get(fill.symbol)
        tickers = [(c, s) for c, s in self._subscribers("ticker", symbol) if s.options["event_trigger"] == "trades"]
        if tickers and quote is not None:
            message = {"channel": "ticker", "type": "update", "data": [self._ticker(pair, quote, fill.price)]}
            for conn, _ in tickers:
                conn.send(message)

    # -- messages ---------------------------------------------------------------------------------------------
    def _feed(self, symbol: str, depth: int, *, advance: bool = True) -> BookFeed:
        feed = self.books.get((symbol, depth))
        if feed is None:
            feed = self.books[(symbol, depth)] = BookFeed(
                symbol, depth, self.venue.tick_size(symbol), self.venue.step_size(symbol)
            )
            quote = self.quotes.get(symbol)
            if advance and quote is not None:
                feed.advance(quote)
        return feed

    def _book_message(
        self,
        feed: BookFeed,
        kind: str,
        asks: Iterable[tuple[Decimal, Decimal]],
        bids: Iterable[tuple[Decimal, Decimal]],
        quote: Quote,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "symbol": ws_symbol(self.pairs.by_symbol[feed.symbol]),
            "bids": [{"price": p, "qty": feed.qty(q)} for p, q in bids],
            "asks": [{"price": p, "qty": feed.qty(q)} for p, q in asks],
            "checksum": self.corrupt(feed.checksum(), kind == "snapshot"),
        }
        if kind == "update":
            data["timestamp"] = now_text(quote.timestamp)
        return {"channel": "book", "type": kind, "data": [data]}

    def _ticker(self, pair: Pair, quote: Quote, last: Decimal | None = None) -> dict[str, Any]:
        tick = self.venue.tick_size(pair.symbol)
        step = self.venue.step_size(pair.symbol)
        feed = self.books.get((pair.symbol, DEFAULT_DEPTH))
        bid_qty = feed.bids.get(quote.bid) if feed is not None else None
        ask_qty = feed.asks.get(quote.ask) if feed is not None else None
        price = (last if last is not None else quote.mid).quantize(tick)
        return {
            "symbol": ws_symbol(pair),
            "bid": quote.bid,
            "bid_qty": bid_qty or step,
            "ask": quote.ask,
            "ask_qty": ask_qty or step,
            "last": price,
            "volume": Decimal(0).quantize(step),
            "vwap": price,
            "low": price,
            "high": price,
            "change": Decimal(0).quantize(tick),
            "change_pct": Decimal("0.00"),
        }

    def _recent_trades(self, pair: Pair) -> list[dict[str, Any]]:
        rows: list[tuple[Any, str, dict[str, Any]]] = []
        for venue in self.accounts.values():
            kinds = {o.venue_order_id: o.order_type for o in venue.orders()}
            for fill in venue.book.fills[-TRADE_SNAPSHOT:]:
                if fill.symbol == pair.symbol:
                    rows.append((fill.executed_at, fill.trade_id, trade_item(fill, kinds, ws_symbol(pair))))
        rows.sort(key=lambda r: (r[0], r[1]))
        return [row for _, _, row in rows[-TRADE_SNAPSHOT:]]

    def instrument(self) -> dict[str, Any]:
        """The instrument channel's snapshot: every asset and pair with its precision."""
        venue = self.venue
        assets = sorted({venue.quote_asset, *(venue.base_asset(s) for s in self.pairs.by_symbol)})
        return {
            "assets": [
                {
                    "id": a,
                    "status": "enabled",
                    "precision": ASSET_PRECISION,
                    "precision_display": 5,
                    "borrowable": False,
                    "collateral_value": Decimal("0.00"),
                    "margin_rate": Decimal("0.0000"),
                }
                for a in assets
            ],
            "pairs": [
                {
                    "symbol": ws_symbol(pair),
                    "base": venue.base_asset(pair.symbol),
                    "quote": venue.quote_asset,
                    "status": "online",
                    "qty_precision": decimals(venue.step_size(pair.symbol)),
                    "qty_increment": venue.step_size(pair.symbol),
                    "price_precision": decimals(venue.tick_size(pair.symbol)),
                    "cost_precision": 5,
                    "marginable": False,
                    "has_index": False,
                    "cost_min": Decimal("0.5"),
                    "tick_size": venue.tick_size(pair.symbol),
                    "price_increment": venue.tick_size(pair.symbol),
                    "qty_min": venue.step_size(pair.symbol),
                }
                for pair in self.pairs.by_symbol.values()
            ],
        }
