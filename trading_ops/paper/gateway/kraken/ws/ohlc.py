"""The public `ohlc` channel of the gateway's WebSocket (Kraken v2 "Candles (OHLC)"): a subscription per pair and
interval, acked per symbol, a snapshot of the recent candles, then an update of the running candle as the market
moves (at most one a second per pair and interval, and at once when a new candle starts). The candles are the ones
REST OHLC serves (the gateway's MarketData), so a client that streams and one that polls see the same history."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from trading_ops.paper.gateway.kraken.ws.connection import Connection, Subscription
from trading_ops.paper.gateway.kraken.ws.messages import RequestError, answer, now_text

OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)  # minutes, as Kraken's
SNAPSHOT_CANDLES = 100  # candles a subscription's snapshot carries at most
E_INTERVAL = "Subscription ohlc interval not supported"  # Kraken's words (ccxt.pro's error table knows them)
UPDATE_SECONDS = 1.0  # the running candle's updates, at most this often per pair and interval

# (symbol, interval) -> candles [start seconds, open, high, low, close, count], oldest first
Candles = Callable[[str, int], list[list[Decimal]]]


def candle_item(symbol: str, interval: int, candle: list[Decimal]) -> dict[str, Any]:
    start, opened, high, low, close, count = candle
    begin = datetime.fromtimestamp(int(start), UTC)
    return {
        "symbol": symbol,
        "open": opened,
        "high": high,
        "low": low,
        "close": close,
        "trades": int(count),
        "volume": Decimal("0E-8"),
        "vwap": close,
        "interval_begin": now_text(begin),
        "interval": interval,
        "timestamp": now_text(),
    }


class OhlcChannel:
    """Subscriptions to `ohlc` (keyed ("ohlc", symbol) on a connection, one interval each, as Kraken keeps one per
    pair and interval) and what they are sent."""

    def __init__(self, candles: Candles, connections: Callable[[], Iterable[Connection]]) -> None:
        self.candles = candles
        self.connections = connections
        self._sent: dict[tuple[str, int], tuple[Decimal, float]] = {}  # last update: candle start, monotonic time

    @staticmethod
    def interval(params: Mapping[str, Any]) -> int:
        interval = params.get("interval", 1)
        if isinstance(interval, bool) or interval not in OHLC_INTERVALS:
            raise RequestError(E_INTERVAL)
        return int(interval)

    def subscribe(
        self, conn: Connection, symbol: str, venue_symbol: str, interval: int, snapshot: bool, req_id: Any, time_in: str
    ) -> None:
        sub = Subscription("ohlc", symbol, options={"interval": interval, "venue_symbol": venue_symbol})
        conn.subs[("ohlc", symbol)] = sub  # subscribing again replaces it: a fresh snapshot, silence ended
        result = {"channel": "ohlc", "interval": interval, "snapshot": snapshot, "symbol": symbol}
        conn.send(answer("subscribe", req_id, time_in, result))
        if snapshot:
            rows = self.candles(venue_symbol, interval)[-SNAPSHOT_CANDLES:]
            if rows:
                data = [candle_item(symbol, interval, c) for c in rows]
                conn.send({"channel": "ohlc", "type": "snapshot", "timestamp": now_text(), "data": data})

    def on_quote(self, venue_symbol: str, symbol: str) -> None:
        """The pair's market moved: the running candle of each interval subscribed, when its update is due."""
        subs = [
            (c, s) for c in self.connections() if (s := c.subs.get(("ohlc", symbol))) is not None and not s.silenced
        ]
        now = time.monotonic()
        for interval in {s.options["interval"] for _, s in subs}:
            rows = self.candles(venue_symbol, interval)
            if not rows:
                continue
            running = rows[-1]
            last = self._sent.get((symbol, interval))
            if last is not None and last[0] == running[0] and now - last[1] < UPDATE_SECONDS:
                continue
            self._sent[(symbol, interval)] = (running[0], now)
            message = {
                "channel": "ohlc",
                "type": "update",
                "timestamp": now_text(),
                "data": [candle_item(symbol, interval, running)],
            }
            for conn, sub in subs:
                if sub.options["interval"] == interval:
                    conn.send(message)
