"""The Binance dialect's public market: each symbol's last quote, its book with update ids, its public trades (every
account's fills, as the taker saw them) and its 24-hour statistics; the public REST endpoints that read them, and
the market-stream events each change makes (`<symbol>@depth@100ms`, `@trade`, `@ticker`, `@bookTicker`).

A symbol whose feed stopped (the gateway's stale_market_data) is a market that makes no data, as Binance's are in
BREAK (its "market data generated?" no) and once delisted: its tickers still answer, with what they last had. Its
book, best bid and ask and price stay where the feed left them, and its 24-hour statistics are those of its last
quote, `closeTime` included, so a client that reads the time sees the data did not move (ccxt's ticker `timestamp`);
bookTicker and price carry no time. Its public trades go on (orders still fill while the data is stale)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import Quote, Side, VenueFill
from trading_ops.paper.gateway.binance.depth import DepthBook
from trading_ops.paper.gateway.binance.errors import DISCONNECTED, DISCONNECTED_MSG, BinanceError, invalid
from trading_ops.paper.gateway.binance.symbols import Symbol, Symbols, fmt
from trading_ops.paper.gateway.binance.symbols import digits as digits_ok
from trading_ops.paper.gateway.binance.weights import WeightLimiter

DEFAULT_DEPTH = 100
MAX_DEPTH = 5000
DEFAULT_TRADES = 500
MAX_TRADES = 1000
DAY_MS = 86_400_000
MAX_HISTORY = 100_000  # quotes and trades kept per symbol for the 24-hour statistics
Event = tuple[str, dict[str, Any]]  # a stream's name and its event


def trade_number(trade_id: str) -> int:
    """The venue's trade id T123 as Binance's number 123."""
    digits = trade_id.lstrip("TP")
    return int(digits) if digits_ok(digits) else 0


def _limit(params: Mapping[str, str], default: int, high: int) -> int:
    raw = params.get("limit", "")
    if raw == "":
        return default
    if not digits_ok(raw, 6) or not 1 <= int(raw) <= high:
        raise invalid("limit")
    return int(raw)


class Market:
    """What the market streams and the public endpoints show, kept from the main venue's quotes and every account's
    fills; `now_ms` the server's clock."""

    def __init__(
        self,
        symbols: Symbols,
        weights: WeightLimiter,
        now_ms: Callable[[], int],
        feed_stopped: Callable[[str], bool] = lambda _symbol: False,
    ) -> None:
        self.symbols = symbols
        self.weights = weights
        self.now_ms = now_ms
        self.feed_stopped = feed_stopped  # whether a symbol's feed stopped (the venue's symbol: BTC-USD)
        self.books = {s.id: DepthBook(s) for s in symbols.by_symbol.values()}
        self.quotes: dict[str, Quote] = {}
        self.quoted_ms: dict[str, int] = {}  # when each symbol's last quote came, on the server's clock
        self.trades: dict[str, deque[dict[str, Any]]] = {s: deque(maxlen=MAX_TRADES) for s in self.books}
        self._mids: dict[str, deque[tuple[int, Decimal]]] = {s: deque(maxlen=MAX_HISTORY) for s in self.books}
        self._volume: dict[str, deque[tuple[int, Decimal, Decimal]]] = {
            s: deque(maxlen=MAX_HISTORY) for s in self.books
        }

    # -- what changes it ----------------------------------------------------------------------------------------
    def on_quote(self, quote: Quote) -> list[Event]:
        """A quote of the main venue's feed: the book moves; the depth, ticker and bookTicker events it makes."""
        sym = self.symbols.by_symbol.get(quote.symbol)
        if sym is None:
            return []
        now = self.now_ms()
        self.quotes[sym.id] = quote
        self.quoted_ms[sym.id] = now
        self._mids[sym.id].append((now, quote.mid.quantize(sym.tick)))
        book = self.books[sym.id]
        book.apply(quote.bid, quote.ask)
        events: list[Event] = []
        if (depth := book.flush(now)) is not None:
            events.append((f"{sym.id.lower()}@depth", depth))
        ticker = self.ticker_24hr(sym)
        full = self._ticker_event(sym, ticker, now)
        events.append((f"{sym.id.lower()}@ticker", full))
        mini = {k: full[k] for k in ("E", "s", "c", "o", "h", "l", "v", "q")}
        events.append((f"{sym.id.lower()}@miniTicker", {"e": "24hrMiniTicker", **mini}))
        bt = {
            "u": book.update_id,
            "s": sym.id,
            "b": fmt(quote.bid),
            "B": fmt(book.bids.get(quote.bid, Decimal(0))),
            "a": fmt(quote.ask),
            "A": fmt(book.asks.get(quote.ask, Decimal(0))),
        }
        events.append((f"{sym.id.lower()}@bookTicker", bt))
        return events

    def on_fill(self, fill: VenueFill) -> list[Event]:
        """A fill of any account is a public trade: the trade event it makes."""
        sym = self.symbols.by_symbol.get(fill.symbol)
        if sym is None:
            return []
        at = int(fill.executed_at.timestamp() * 1000)
        number = trade_number(fill.trade_id)
        buyer_maker = (fill.liquidity == "maker") == (fill.side is Side.BUY)
        self.trades[sym.id].append(
            {
                "id": number,
                "price": fmt(fill.price),
                "qty": fmt(fill.quantity),
                "quoteQty": fmt(fill.price * fill.quantity),
                "time": at,
                "isBuyerMaker": buyer_maker,
                "isBestMatch": True,
            }
        )
        self._volume[sym.id].append((at, fill.quantity, fill.price * fill.quantity))
        event = {
            "e": "trade",
            "E": self.now_ms(),
            "s": sym.id,
            "t": number,
            "p": fmt(fill.price),
            "q": fmt(fill.quantity),
            "T": at,
            "m": buyer_maker,
            "M": True,
        }
        return [(f"{sym.id.lower()}@trade", event)]

    def quote(self, sym: Symbol) -> Quote:
        quote = self.quotes.get(sym.id)
        if quote is None:
            raise BinanceError(DISCONNECTED, DISCONNECTED_MSG)
        return quote

    # -- public endpoints ---------------------------------------------------------------------------------------
    def ping(self, _params: Mapping[str, str]) -> dict[str, Any]:
        return {}

    def time(self, _params: Mapping[str, str]) -> dict[str, Any]:
        return {"serverTime": self.now_ms()}

    def exchange_info(self, params: Mapping[str, str]) -> dict[str, Any]:
        selected = self.symbols.select(params) or list(self.symbols.by_symbol.values())
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "rateLimits": self.weights.rate_limits(),
            "exchangeFilters": [],
            "symbols": [s.info() for s in selected],
        }

    def depth(self, params: Mapping[str, str]) -> dict[str, Any]:
        sym = self.symbols.one(params)
        limit = _limit(params, DEFAULT_DEPTH, MAX_DEPTH)
        self.quote(sym)  # no book before the first quote
        return self.books[sym.id].snapshot(limit)

    def recent_trades(self, params: Mapping[str, str]) -> list[dict[str, Any]]:
        sym = self.symbols.one(params)
        limit = _limit(params, DEFAULT_TRADES, MAX_TRADES)
        return list(self.trades[sym.id])[-limit:]

    def agg_trades(self, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """Each trade its own aggregate (the paper market matches one fill at a time)."""
        sym = self.symbols.one(params)
        limit = _limit(params, DEFAULT_TRADES, MAX_TRADES)
        start, end = params.get("startTime", ""), params.get("endTime", "")
        from_id = params.get("fromId", "")
        for name, raw in (("startTime", start), ("endTime", end), ("fromId", from_id)):
            if raw and not digits_ok(raw):
                raise invalid(name)
        rows = []
        for t in self.trades[sym.id]:
            if (digits_ok(start) and t["time"] < int(start)) or (digits_ok(end) and t["time"] > int(end)):
                continue
            if digits_ok(from_id) and t["id"] < int(from_id):
                continue
            rows.append(
                {
                    "a": t["id"],
                    "p": t["price"],
                    "q": t["qty"],
                    "f": t["id"],
                    "l": t["id"],
                    "T": t["time"],
                    "m": t["isBuyerMaker"],
                    "M": True,
                }
            )
        return rows[:limit] if (start or from_id) else rows[-limit:]

    def _each(self, params: Mapping[str, str], one: Callable[[Symbol], dict[str, Any]]) -> Any:
        selected = self.symbols.select(params)
        if params.get("symbol"):
            return one(self.symbols.one(params))
        return [one(s) for s in (selected or self.symbols.by_symbol.values()) if s.id in self.quotes]

    def ticker_24hr(self, sym: Symbol) -> dict[str, Any]:
        """The symbol's 24-hour statistics, as of now, or as of its last quote while its feed is stopped (nothing
        after that counts, the trades its orders still make included: the statistics froze with the feed)."""
        quote = self.quote(sym)
        frozen = self.feed_stopped(sym.symbol) and sym.id in self.quoted_ms
        now = self.quoted_ms[sym.id] if frozen else self.now_ms()

        def within(t: int) -> bool:
            return now - t <= DAY_MS and not (frozen and t > now)

        mids = [m for t, m in self._mids[sym.id] if within(t)] or [quote.mid.quantize(sym.tick)]
        trades = [(q, v) for t, q, v in self._volume[sym.id] if within(t)]
        volume = sum((q for q, _ in trades), Decimal(0))
        quote_volume = sum((v for _, v in trades), Decimal(0))
        last, opened = mids[-1], mids[0]
        change = last - opened
        public = [t for t in self.trades[sym.id] if not (frozen and t["time"] > now)]
        ids = [t["id"] for t in public if within(t["time"])]
        book = self.books[sym.id]
        return {
            "symbol": sym.id,
            "priceChange": fmt(change),
            "priceChangePercent": f"{(change / opened * 100) if opened else Decimal(0):.3f}",
            "weightedAvgPrice": fmt(quote_volume / volume if volume else last),
            "prevClosePrice": fmt(opened),
            "lastPrice": fmt(last),
            "lastQty": fmt(Decimal(public[-1]["qty"]) if public else Decimal(0)),
            "bidPrice": fmt(quote.bid),
            "bidQty": fmt(book.bids.get(quote.bid, Decimal(0))),
            "askPrice": fmt(quote.ask),
            "askQty": fmt(book.asks.get(quote.ask, Decimal(0))),
            "openPrice": fmt(opened),
            "highPrice": fmt(max(mids)),
            "lowPrice": fmt(min(mids)),
            "volume": fmt(volume),
            "quoteVolume": fmt(quote_volume),
            "openTime": now - DAY_MS,
            "closeTime": now,
            "firstId": ids[0] if ids else -1,
            "lastId": ids[-1] if ids else -1,
            "count": len(ids),
        }

    @staticmethod
    def _ticker_event(sym: Symbol, t: dict[str, Any], now: int) -> dict[str, Any]:
        return {
            "e": "24hrTicker",
            "E": now,
            "s": sym.id,
            "p": t["priceChange"],
            "P": t["priceChangePercent"],
            "w": t["weightedAvgPrice"],
            "x": t["prevClosePrice"],
            "c": t["lastPrice"],
            "Q": t["lastQty"],
            "b": t["bidPrice"],
            "B": t["bidQty"],
            "a": t["askPrice"],
            "A": t["askQty"],
            "o": t["openPrice"],
            "h": t["highPrice"],
            "l": t["lowPrice"],
            "v": t["volume"],
            "q": t["quoteVolume"],
            "O": t["openTime"],
            "C": t["closeTime"],
            "F": t["firstId"],
            "L": t["lastId"],
            "n": t["count"],
        }

    def ticker_24hr_endpoint(self, params: Mapping[str, str]) -> Any:
        return self._each(params, self.ticker_24hr)

    def ticker_price(self, params: Mapping[str, str]) -> Any:
        def one(sym: Symbol) -> dict[str, Any]:
            return {"symbol": sym.id, "price": fmt(self.quote(sym).mid.quantize(sym.tick))}

        return self._each(params, one)

    def book_ticker(self, params: Mapping[str, str]) -> Any:
        def one(sym: Symbol) -> dict[str, Any]:
            quote, book = self.quote(sym), self.books[sym.id]
            return {
                "symbol": sym.id,
                "bidPrice": fmt(quote.bid),
                "bidQty": fmt(book.bids.get(quote.bid, Decimal(0))),
                "askPrice": fmt(quote.ask),
                "askQty": fmt(book.asks.get(quote.ask, Decimal(0))),
            }

        return self._each(params, one)
