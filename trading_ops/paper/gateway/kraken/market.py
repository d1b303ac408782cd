"""The Kraken gateway's public endpoints: the market as Kraken serves it (time, status, assets, pairs, ticker,
candles, depth, public trades, spreads), from the quotes the main venue's feed publishes."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

from trading_ops.bot.broker import OrderType, Quote, Side
from trading_ops.paper.gateway.kraken.api import (
    E_INVALID_ARGUMENTS,
    E_UNAVAILABLE,
    KRAKEN_ASSETS,
    KrakenError,
    Pairs,
    asset_id,
    count_param,
    decimal_param,
    num,
    seconds_param,
)
from trading_ops.paper.gateway.kraken.faults import GatewayFaults
from trading_ops.paper.venue import PaperVenue

DEPTH_LEVELS = 10  # book levels per side Depth answers at most
CANDLE_SECONDS = 60
MAX_CANDLES = 720  # one-minute candles kept per pair (OHLC answers at most 720, as Kraken does)
MAX_TRADES = 1000  # Trades answers at most this many (Kraken's `count` default and maximum)
MAX_SPREADS = 200  # changes of the best bid and ask kept per pair for Spread
MAX_COUNT = 10**9  # a `count` past this is no count (the answer is capped at the levels or trades kept anyway)
NANOSECONDS = 10**9
SECONDS_OR_NANOSECONDS = 10**12  # a `since` above this is a nanosecond id, not Unix seconds
OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)  # minutes
ASSET_DECIMALS = 10


class MarketData:
    """The public endpoints and the market history they serve: the last quote of each pair (frozen while its feed is
    stale), one-minute candles and the changes of the best bid and ask, kept from the main venue's feed; Trades reads
    the fills of every account."""

    def __init__(
        self, venue: PaperVenue, accounts: Mapping[str, PaperVenue], pairs: Pairs, faults: GatewayFaults
    ) -> None:
        self.venue = venue
        self.accounts = accounts
        self.pairs = pairs
        self.faults = faults
        self._quotes: dict[str, Quote] = {}
        self._candles: dict[str, list[list[Decimal]]] = {s: [] for s in venue.symbols}
        self._spreads: dict[str, deque[tuple[int, Decimal, Decimal]]] = {
            s: deque(maxlen=MAX_SPREADS) for s in venue.symbols
        }

    async def on_quote(self, quote: Quote) -> None:
        """The main venue's feed published a quote: keep it, and the spread and candle it changes."""
        self._quotes[quote.symbol] = quote
        spreads = self._spreads[quote.symbol]
        if not spreads or spreads[-1][1:] != (quote.bid, quote.ask):
            spreads.append((int(quote.timestamp.timestamp()), quote.bid, quote.ask))
        mid = quote.mid.quantize(self.venue.tick_size(quote.symbol))
        minute = Decimal(int(quote.timestamp.timestamp()) // CANDLE_SECONDS * CANDLE_SECONDS)
        candles = self._candles[quote.symbol]
        if not candles:
            # The minute before the first quote, flat at its price, as history a real venue would have: a client
            # that drops the candle in progress (freqtrade does) has a closed one from the start.
            candles.append([minute - CANDLE_SECONDS, mid, mid, mid, mid, Decimal(0)])
        if candles[-1][0] == minute:
            candle = candles[-1]
            candle[2], candle[3], candle[4] = max(candle[2], mid), min(candle[3], mid), mid
            candle[5] += 1
        else:
            candles.append([minute, mid, mid, mid, mid, Decimal(1)])
            del candles[:-MAX_CANDLES]

    # -- endpoints --------------------------------------------------------------------------------------------
    async def time(self, _params: Mapping[str, str]) -> dict[str, Any]:
        now = await self.venue.server_time()
        return {"unixtime": int(now.timestamp()), "rfc1123": format_datetime(now, usegmt=True)}

    async def system_status(self, _params: Mapping[str, str]) -> dict[str, Any]:
        now = await self.venue.server_time()
        return {"status": "online", "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")}

    async def assets(self, params: Mapping[str, str]) -> dict[str, Any]:
        assets = {self.venue.quote_asset, *(self.venue.base_asset(s) for s in self.pairs.by_symbol)}
        assets.update(await self.venue.balances())
        wanted = set(params["asset"].split(",")) if params.get("asset") else None
        result = {}
        for asset in sorted(assets):
            aid, alt = KRAKEN_ASSETS.get(asset, (asset, asset))
            if wanted is None or aid in wanted or alt in wanted or asset in wanted:
                result[aid] = {
                    "aclass": "currency",
                    "altname": alt,
                    "decimals": ASSET_DECIMALS,
                    "display_decimals": 5,
                    "status": "enabled",
                }
        return result

    async def asset_pairs(self, params: Mapping[str, str]) -> dict[str, Any]:
        pairs = self.pairs.select(params)
        await self.faults.end_stale([p.symbol for p in pairs])  # listed again: a polling client's new subscription
        result = {}
        for pair in pairs:
            tick, step = self.venue.tick_size(pair.symbol), self.venue.step_size(pair.symbol)
            result[pair.pair_id] = {
                "altname": pair.altname,
                "wsname": pair.wsname,
                "aclass_base": "currency",
                "base": pair.base_id,
                "aclass_quote": "currency",
                "quote": pair.quote_id,
                "lot": "unit",
                "cost_decimals": 5,
                "pair_decimals": max(0, -int(tick.as_tuple().exponent)),
                "lot_decimals": max(0, -int(step.as_tuple().exponent)),
                "lot_multiplier": 1,
                "leverage_buy": [],
                "leverage_sell": [],
                "fees": [[0, float(self.venue.taker_fee * 100)]],
                "fees_maker": [[0, float(self.venue.maker_fee * 100)]],
                "fee_volume_currency": asset_id(self.venue.quote_asset),
                "margin_call": 80,
                "margin_stop": 40,
                "ordermin": num(step),
                "costmin": "0",
                "tick_size": num(tick),
                "status": "online",
            }
        return result

    def _quote(self, symbol: str) -> Quote:
        """The last quote the feed published (frozen while the symbol's market data is stale)."""
        quote = self._quotes.get(symbol)
        if quote is None:
            raise KrakenError(E_UNAVAILABLE)
        return quote

    async def ticker(self, params: Mapping[str, str]) -> dict[str, Any]:
        result = {}
        for pair in self.pairs.select(params):
            if self.faults.stale(pair.symbol):
                continue  # its feed stopped: nothing to tell
            quote = self._quote(pair.symbol)
            candles = self._candles[pair.symbol]
            last = num(quote.mid.quantize(self.venue.tick_size(pair.symbol)))
            low = num(min(c[3] for c in candles)) if candles else last
            high = num(max(c[2] for c in candles)) if candles else last
            opened = num(candles[0][1]) if candles else last
            result[pair.pair_id] = {
                "a": [num(quote.ask), "1", "1.000"],
                "b": [num(quote.bid), "1", "1.000"],
                "c": [last, "0.00000000"],
                "v": ["0.00000000", "0.00000000"],
                "p": [last, last],
                "t": [0, 0],
                "l": [low, low],
                "h": [high, high],
                "o": opened,
            }
        return result

    async def ohlc(self, params: Mapping[str, str]) -> dict[str, Any]:
        pair = self.pairs.one(params)
        interval = count_param(params, "interval", 1, max(OHLC_INTERVALS))
        if interval not in OHLC_INTERVALS:
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:interval")
        since = seconds_param(params, "since")
        merged = self.candles(pair.symbol, interval)
        rows = [
            [int(t), num(o), num(h), num(low), num(c), num(c), "0.00000000", int(n)]
            for t, o, h, low, c, n in merged
            if since is None or t > Decimal(str(since))
        ]
        return {pair.pair_id: rows, "last": int(merged[-1][0]) if merged else 0}

    def candles(self, symbol: str, interval: int) -> list[list[Decimal]]:
        """The pair's candles of `interval` minutes, [start seconds, open, high, low, close, count], oldest first:
        what REST OHLC and the WebSocket's ohlc channel serve."""
        width = interval * CANDLE_SECONDS
        merged: list[list[Decimal]] = []
        for t, o, h, low, c, n in self._candles.get(symbol, []):
            start = t - t % width
            if merged and merged[-1][0] == start:
                m = merged[-1]
                m[2], m[3], m[4], m[5] = max(m[2], h), min(m[3], low), c, m[5] + n
            else:
                merged.append([start, o, h, low, c, n])
        return merged

    async def depth(self, params: Mapping[str, str]) -> dict[str, Any]:
        pair = self.pairs.one(params)
        count = count_param(params, "count", DEPTH_LEVELS, MAX_COUNT)
        if count < 1:
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:count")
        levels = min(count, DEPTH_LEVELS)
        quote = self._quote(pair.symbol)
        tick = self.venue.tick_size(pair.symbol)
        at = int(quote.timestamp.timestamp())
        asks = [[num(quote.ask + i * tick), "1.000", at] for i in range(levels)]
        bids = [[num(quote.bid - i * tick), "1.000", at] for i in range(levels) if quote.bid - i * tick > 0]
        return {pair.pair_id: {"asks": asks, "bids": bids}}

    @staticmethod
    def _since_ns(params: Mapping[str, str]) -> int | None:
        """Trades' and Spread's `since`: Unix seconds, or a nanosecond id (Trades' `last`) as Kraken also takes."""
        since = decimal_param(params, "since")
        if since is None:
            return None
        return int(since) if since > SECONDS_OR_NANOSECONDS else int(since * NANOSECONDS)

    async def trades(self, params: Mapping[str, str]) -> dict[str, Any]:
        """The market's public trades: every account's fills of the pair, as the taker saw them (the side and order
        type of the taker; a fill of a resting order was taken by the other side at the market), oldest first."""
        pair = self.pairs.one(params)
        count = count_param(params, "count", MAX_TRADES, MAX_COUNT)
        if count < 1:
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:count")
        since = self._since_ns(params)
        rows: list[tuple[int, int, list[Any]]] = []
        for venue in self.accounts.values():
            kinds = {o.venue_order_id: o.order_type for o in venue.orders()}
            for fill in await venue.recent_fills():
                if fill.symbol != pair.symbol:
                    continue
                at = int(fill.executed_at.timestamp() * NANOSECONDS)
                if since is not None and at <= since:
                    continue
                taker = fill.liquidity != "maker"
                side = fill.side if taker else (Side.SELL if fill.side is Side.BUY else Side.BUY)
                kind = "l" if taker and kinds.get(fill.venue_order_id) is OrderType.LIMIT else "m"
                trade_id = int(fill.trade_id.lstrip("T") or 0)
                row = [num(fill.price), num(fill.quantity), at / NANOSECONDS, side.value[0], kind, "", trade_id]
                rows.append((at, trade_id, row))
        rows.sort(key=lambda r: (r[0], r[1]))
        newest = rows[-count:] if count < len(rows) else rows
        last = newest[-1][0] if newest else (since or 0)
        return {pair.pair_id: [row for _, _, row in newest], "last": str(last)}

    async def spread(self, params: Mapping[str, str]) -> dict[str, Any]:
        """The best bid and ask of the pair each time they changed (frozen with a stale feed), oldest first."""
        pair = self.pairs.one(params)
        since = self._since_ns(params)
        rows = [
            [at, num(bid), num(ask)]
            for at, bid, ask in self._spreads[pair.symbol]
            if since is None or at * NANOSECONDS > since
        ]
        last = rows[-1][0] if rows else (since or 0) // NANOSECONDS
        return {pair.pair_id: rows, "last": last}
