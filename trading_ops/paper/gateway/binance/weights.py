"""Binance's request weights and order counts: each request costs its endpoint's weight against the IP's budget per
minute (`X-MBX-USED-WEIGHT-1M` on every answer), each new order counts against the account's orders per 10 seconds
and per day (`X-MBX-ORDER-COUNT-10S`, `-1D`). Past the weight limit a request answers 429 (-1003) with a
`Retry-After`; a client that keeps sending past it is banned: 418 with `Retry-After` until the ban ends."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from trading_ops.paper.gateway.binance.errors import (
    BANNED_MSG,
    TOO_MANY_ORDERS,
    TOO_MANY_ORDERS_MSG,
    TOO_MANY_REQUESTS,
    WEIGHT_MSG,
    BinanceError,
)
from trading_ops.paper.gateway.binance.symbols import digits

WEIGHT_LIMIT_PER_MINUTE = 6000
ORDERS_PER_10_SECONDS = 100
ORDERS_PER_DAY = 200_000
# Requests refused with a 429 in one minute before the IP is banned, and the first ban's length (Binance: "from 2
# minutes to 3 days" for clients that keep sending after a 429).
REFUSALS_BEFORE_BAN = 10
BAN_SECONDS = 120.0
# Each endpoint's weight (spot REST API documentation); depth's by its limit, tickers' by whether one symbol is asked.
WEIGHTS: dict[tuple[str, str], int] = {
    ("GET", "ping"): 1,
    ("GET", "time"): 1,
    ("GET", "exchangeInfo"): 20,
    ("GET", "trades"): 25,
    ("GET", "avgPrice"): 2,
    ("GET", "account"): 20,
    ("POST", "order"): 1,
    ("POST", "order/test"): 1,
    ("DELETE", "order"): 1,
    ("POST", "order/cancelReplace"): 1,
    ("GET", "order"): 4,
    ("DELETE", "openOrders"): 1,
    ("GET", "allOrders"): 20,
    ("GET", "myTrades"): 20,
    ("POST", "userDataStream"): 2,
    ("PUT", "userDataStream"): 2,
    ("DELETE", "userDataStream"): 2,
}
DEPTH_WEIGHTS = ((100, 5), (500, 25), (1000, 50), (5000, 250))
# (one symbol, every symbol)
TICKER_WEIGHTS = {"ticker/24hr": (2, 80), "ticker/price": (2, 4), "ticker/bookTicker": (2, 4), "openOrders": (6, 80)}
# ticker/24hr with `symbols`, by how many are asked (Binance: 2 for 1-20, 40 for 21-100, 80 for 101 or more); the
# other tickers weigh `symbols` as all of them (4), openOrders takes no `symbols`.
SYMBOLS_24HR_WEIGHTS = ((20, 2), (100, 40))
MINUTE = 60.0
TEN_SECONDS = 10.0
DAY = 86_400.0


def weight(method: str, path: str, params: Mapping[str, str]) -> int:
    """The weight of a request to `path` (under /api/v3) with `params`."""
    if path == "depth":
        raw = params.get("limit", "100")
        limit = int(raw) if digits(raw, 5) else 100
        return next((w for top, w in DEPTH_WEIGHTS if limit <= top), DEPTH_WEIGHTS[-1][1])
    if path in TICKER_WEIGHTS and method in ("GET", "HEAD"):
        one, every = TICKER_WEIGHTS[path]
        if params.get("symbol"):
            return one
        asked = symbols_asked(params.get("symbols", ""))
        if path == "ticker/24hr" and asked:
            return next((w for top, w in SYMBOLS_24HR_WEIGHTS if asked <= top), every)
        return every
    return WEIGHTS.get((method, path), 1)


def symbols_asked(raw: str) -> int:
    """How many symbols a `symbols` parameter names (Binance's JSON array, `["BTCUSDT","BNBUSDT"]`); 0 for none."""
    names = [n.strip().strip('"') for n in raw.strip().removeprefix("[").removesuffix("]").split(",")]
    return len([n for n in names if n])


@dataclass
class _Window:
    start: float = 0.0
    used: int = 0
    refused: int = 0


@dataclass
class _Orders:
    ten: list[float] = field(default_factory=list)
    day: list[float] = field(default_factory=list)


class WeightLimiter:
    """The weight each IP used this minute, the orders each account sent in the last 10 seconds and day, the bans.

    Windows are whole minutes of `clock`, as Binance's are. `exhaust()` spends every IP's whole budget for the rest of
    the minute (the `binance_weight_exhausted` fault)."""

    def __init__(
        self,
        limit: int = WEIGHT_LIMIT_PER_MINUTE,
        orders_10s: int = ORDERS_PER_10_SECONDS,
        orders_day: int = ORDERS_PER_DAY,
        *,
        refusals_before_ban: int = REFUSALS_BEFORE_BAN,
        ban_seconds: float = BAN_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.orders_10s = orders_10s
        self.orders_day = orders_day
        self.refusals_before_ban = refusals_before_ban
        self.ban_seconds = ban_seconds
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._orders: dict[str, _Orders] = {}
        self._banned: dict[str, float] = {}
        self._exhausted_minute: float | None = None
        self.refusals = 0  # 429s answered (what a test counts)
        self.bans = 0

    def _window(self, ip: str) -> _Window:
        now = self.clock()
        start = math.floor(now / MINUTE) * MINUTE
        window = self._windows.get(ip)
        if window is None or window.start != start:
            window = self._windows[ip] = _Window(start)
        if self._exhausted_minute == start:
            window.used = max(window.used, self.limit)
        return window

    def used(self, ip: str) -> int:
        return self._window(ip).used

    def charge(self, ip: str, cost: int) -> dict[str, str]:
        """Spend `cost` of the IP's weight: the headers to answer with, or a BinanceError 429 past the limit (418
        once banned), with its Retry-After."""
        now = self.clock()
        until = self._banned.get(ip)
        if until is not None and now < until:
            ms = int(until * 1000)
            raise BinanceError(TOO_MANY_REQUESTS, BANNED_MSG.format(until=ms), 418, self._retry(until - now))
        window = self._window(ip)
        if window.used + cost > self.limit:
            window.refused += 1
            self.refusals += 1
            if window.refused > self.refusals_before_ban:
                self._banned[ip] = now + self.ban_seconds
                self.bans += 1
                ms = int((now + self.ban_seconds) * 1000)
                raise BinanceError(TOO_MANY_REQUESTS, BANNED_MSG.format(until=ms), 418, self._retry(self.ban_seconds))
            headers = self._retry(window.start + MINUTE - now)
            headers["X-MBX-USED-WEIGHT-1M"] = str(window.used)
            raise BinanceError(TOO_MANY_REQUESTS, WEIGHT_MSG.format(limit=self.limit), 429, headers)
        window.used += cost
        return {"X-MBX-USED-WEIGHT-1M": str(window.used)}

    @staticmethod
    def _retry(seconds: float) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(seconds)))}

    def count_order(self, account: str) -> dict[str, str]:
        """Count a new order of `account`: the headers, or -1015 (429) past its orders per 10 s or per day."""
        now = self.clock()
        orders = self._orders.setdefault(account, _Orders())
        orders.ten = [t for t in orders.ten if now - t < TEN_SECONDS]
        orders.day = [t for t in orders.day if now - t < DAY]
        if len(orders.ten) >= self.orders_10s:
            msg = TOO_MANY_ORDERS_MSG.format(limit=self.orders_10s, interval="10 SECOND")
            raise BinanceError(TOO_MANY_ORDERS, msg, 429, self._order_headers(orders))
        if len(orders.day) >= self.orders_day:
            msg = TOO_MANY_ORDERS_MSG.format(limit=self.orders_day, interval="1 DAY")
            raise BinanceError(TOO_MANY_ORDERS, msg, 429, self._order_headers(orders))
        orders.ten.append(now)
        orders.day.append(now)
        return self._order_headers(orders)

    @staticmethod
    def _order_headers(orders: _Orders) -> dict[str, str]:
        return {"X-MBX-ORDER-COUNT-10S": str(len(orders.ten)), "X-MBX-ORDER-COUNT-1D": str(len(orders.day))}

    def exhaust(self) -> float:
        """Every IP's weight spent for the rest of this minute; returns the seconds left of it."""
        now = self.clock()
        self._exhausted_minute = math.floor(now / MINUTE) * MINUTE
        return self._exhausted_minute + MINUTE - now

    def ban(self, ip: str | None, seconds: float) -> None:
        """Ban `ip` (every IP that sent a request this minute when None) for `seconds`."""
        for one in [ip] if ip else list(self._windows):
            self._banned[one] = self.clock() + seconds

    def banned(self) -> dict[str, float]:
        now = self.clock()
        return {ip: until - now for ip, until in self._banned.items() if until > now}

    def clear(self) -> None:
        self._windows.clear()
        self._banned.clear()
        self._exhausted_minute = None

    def rate_limits(self) -> list[dict[str, object]]:
        """exchangeInfo's rateLimits."""
        return [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": self.limit},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": self.orders_10s},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": self.orders_day},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ]
