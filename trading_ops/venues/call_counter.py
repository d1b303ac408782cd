"""Kraken's REST call counter: the bot's estimate of it (every private call from one budget) and the gateway's copy.

Kraken limits private REST calls with a counter per API key (docs.kraken.com, "Spot REST Rate Limits"): it starts at
0, a trade-history or ledger call adds 2, order placement and cancellation add nothing (they count on the matching
engine's limiter instead), every other private call adds 1; it decays continuously at the tier's rate; a call past the
tier's maximum is refused with `EAPI:Rate limit exceeded`. Public calls are limited per IP, elsewhere.

ccxt tells its client nothing of that counter. Its own throttler (kraken: `rateLimit` 1000 ms, Balance 3, OpenOrders
3, TradesHistory 6, AddOrder 0) is a leaky bucket of capacity one call: it has no state worth exporting (it is either
waiting or not), it knows no tier, and the stack turns it off on the paper gateway. So the broker keeps the estimate
itself, as Kraken's own client guides do: `CallBudget` is one counter per API key, spent by every private request ccxt
sends (`install` wraps ccxt's `fetch2`, the one place every request passes, where ccxt's own throttler sits), and
the headroom the bot exports is `1 - level / maximum` of it, a value that moves with real spending. A call that got
no answer because its connection was refused or closed (an outage) is counted back out; one the venue refuses with
`EAPI:Rate limit exceeded` sets the estimate to the maximum (the venue knows better).

How the budget is spent, as a REST-only Kraken bot must:
- Protective calls have room of their own: the dead man's switch's refresh (CancelAllOrdersAfter, whoever sends it)
  and what a cancel asks after it (inside `protective()`: the cancel's lookups of the order's state) may take the
  estimate up to the hard ceiling; every other call, a reconciliation's and a poll's included, stops
  `PROTECTIVE_RESERVE_POINTS` under it. So a reconciliation that spent all it may still leaves the next refresh and
  a cancel's lookup their points: a refresh lost to the budget lets the venue cancel a live bot's orders at its
  trigger, and one lost for longer leaves them unguarded.
- Nothing is ever sent that would take the estimate past `maximum - MARGIN_POINTS` (the margin covers the venue's
  coarser decay steps and the request's travel time): such a call is refused at once with BudgetExhausted (ccxt's
  RateLimitExceeded, so the broker raises it as a `rate_limit` BrokerError), never sent, so a bot whose estimate is
  right is never refused by the venue. It does not wait for the decay: a reconciliation holds the trading loop while
  it runs, and a loop held for seconds is a stalled bot (its watchdog restarts it); the caller tries again later, as
  it does after any rate-limit error. Except inside `patient()`: a bot's start (before its loop runs: its startup
  reconciliation, adopting what it left, arming the dead man's switch) and a shutdown's cancels wait for the decay,
  since nothing else waits on them and failing them (the start exiting, orders left open) helps nobody; a call the
  venue refuses there (a new process's empty estimate of a counter its killed predecessor spent) saturates the
  estimate and is sent again once it has room.
- Background polls (`background()` marks them) keep a reserve: a poll cycle begins only while the estimate is under
  `POLL_CEILING` of the maximum with room for its usual cost (the broker asks `affordable`), and its calls never wait
  (one past the hard ceiling raises Deferred: the cycle ends, holding nothing a reconciliation needs). A cycle once
  begun finishes (its order lookups and trade history are what the next one would need again), so cancels, order
  lookups and reconciliations (about 12 points) find 70 % of the counter free.
- A reconciliation is not refused for want of room by the bot's own budget: before it takes the trade lock it
  reserves the counter (`reserved`: the polls skip their cycles from then on) and, while the estimate leaves less
  than RECONCILIATION_POINTS under the ordinary ceiling (the protective reserve kept), waits for the decay
  (`seconds_until_room`) with nothing held: the trading loop and the heartbeat run meanwhile
  (CcxtBroker.reconciliation_room).
- The cadence of the polls is planned from the tier's decay (`poll_interval`): open orders each cycle at most
  `POLL_SHARE` of the decay, trade history only when something changed or every `trades_interval` (the broker says
  when), so that at rest the counter stays near empty.

The gateway (trading_ops.paper.gateway.kraken.gateway, `gateway.call_counter`) keeps the same counter per key with
`CounterLimiter` and refuses with Kraken's string, so the bot's estimate is checked against the venue: a refusal on a
healthy stack means the estimate is wrong. A refused call adds nothing to the gateway's counter (Kraken says calls made
while limited may prolong the limit, without a number; the lightest reading is modelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import ccxt.async_support as ccxt_async


@dataclass(frozen=True)
class Tier:
    maximum: float  # the counter's maximum
    decay: float  # points per second


# Kraken's verification tiers (docs.kraken.com, Spot REST Rate Limits).
TIERS = {
    "starter": Tier(15.0, 0.33),
    "intermediate": Tier(20.0, 0.5),
    "pro": Tier(20.0, 1.0),
}
# Private methods that count on the matching engine's limiter, not on this counter. CancelAllOrdersAfter (the dead
# man's switch) is not one of them: Kraken's page names only order placement and cancellation, so it adds 1 like any
# other private call (a refresh every 20 s: 3 points a minute, 15 % of the Starter tier's decay).
FREE_METHODS = frozenset(
    {"AddOrder", "AddOrderBatch", "AmendOrder", "EditOrder", "CancelOrder", "CancelOrderBatch", "CancelAll"}
)
# Ledger and trade-history calls: 2 points.
DOUBLE_METHODS = frozenset({"TradesHistory", "QueryTrades", "Ledgers", "QueryLedgers"})
MARGIN_POINTS = 2.0  # never spent by the bot: the venue's decay comes in steps, and requests take time to arrive
# Under the hard ceiling, kept for protective calls: a switch refresh (1) and a cancel's lookups of its order (the open
# orders, then the closed ones: 2). The refresh comes every 20 s at the defaults, in which the Starter tier decays 6.6
# points: the reserve is back by then.
PROTECTIVE_RESERVE_POINTS = 3.0
# Private methods that are protective whoever sends them: the dead man's switch (its refresh keeps a live bot's orders
# from being cancelled by the venue; its arming guards them when the bot dies).
PROTECTIVE_METHODS = frozenset({"CancelAllOrdersAfter"})
POLL_CEILING = 0.3  # polls begin a cycle only under this share of the maximum: a reconciliation (~12) fits on top
POLL_SHARE = 0.5  # the open-orders poll's planned share of the decay
TRADES_SHARE = 0.2  # the trade-history poll's planned share of the decay (when nothing asked for it sooner)
TRADES_INTERVAL_SECONDS = 10.0  # ... and never more often than this when nothing changed
# What a reconciliation spends, at most, in one look (its settling drains, a snapshot, the lookups of orders that
# left the open list) and its confirming look: it starts only once this much fits under the hard ceiling (or the
# counter is empty, on a tier whose ceiling is lower).
RECONCILIATION_POINTS = 12.0
# Set in a task that polls in the background: its private calls keep the reserve.
_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("kraken_background_call", default=False)
# Set around a cancel's calls (the lookups of the state it left): they may spend the protective reserve.
_PROTECTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("kraken_protective_call", default=False)
# Set around work that nothing else waits on and that must not fail for want of room (a start, a shutdown's cancels):
# its private calls wait for the counter's decay instead of raising BudgetExhausted.
_PATIENT: contextvars.ContextVar[bool] = contextvars.ContextVar("kraken_patient_call", default=False)


class Deferred(Exception):
    """A background call the budget has no room for: not sent."""


class BudgetExhausted(ccxt_async.RateLimitExceeded):
    """A call the budget has no room for (it would take the estimate past the hard ceiling): not sent."""


def call_cost(method: str) -> float:
    """Points a private Kraken method adds to the call counter."""
    if method in FREE_METHODS:
        return 0.0
    return 2.0 if method in DOUBLE_METHODS else 1.0


def tier(name: str) -> Tier:
    try:
        return TIERS[name]
    except KeyError:
        raise ValueError(f"unknown Kraken tier {name!r} (one of {', '.join(TIERS)})") from None


class CallCounter:
    """One API key's counter: points added, decaying continuously at the tier's rate."""

    def __init__(self, tier: Tier, clock: Callable[[], float] = time.monotonic) -> None:
        self.tier = tier
        self._clock = clock
        self._level = 0.0
        self._at = clock()

    def level(self) -> float:
        now = self._clock()
        self._level = max(0.0, self._level - (now - self._at) * self.tier.decay)
        self._at = now
        return self._level

    def add(self, points: float) -> None:
        self._level = self.level() + points

    def seconds_until(self, points: float, ceiling: float) -> float:
        """How long until `points` more keep the counter at or under `ceiling` (0: now)."""
        return max(0.0, (self.level() + points - ceiling) / self.tier.decay)


@contextlib.contextmanager
def patient() -> Iterator[None]:
    """Marks the private calls made inside (in this task) as ones that wait for room in the budget rather than fail:
    what a bot does before its trading loop runs (its startup reconciliation, adopting what it left, arming the dead
    man's switch) and a shutdown's cancels, which nothing else waits on. A background poll's calls never wait."""
    token = _PATIENT.set(True)
    try:
        yield
    finally:
        _PATIENT.reset(token)


@contextlib.contextmanager
def impatient() -> Iterator[None]:
    """Inside `patient()`, marks calls that are worth making only if there is room now (a cancel's lookup of the
    state it left, which the caller's own look at the venue settles anyway): they raise BudgetExhausted at once."""
    token = _PATIENT.set(False)
    try:
        yield
    finally:
        _PATIENT.reset(token)


@contextlib.contextmanager
def protective() -> Iterator[None]:
    """Marks the private calls made inside (in this task) as protective: a cancel's lookups, which may spend the
    reserve no reconciliation or poll can take (CancelAllOrdersAfter is protective wherever it is sent)."""
    token = _PROTECTIVE.set(True)
    try:
        yield
    finally:
        _PROTECTIVE.reset(token)


def is_protective(method: str) -> bool:
    """Whether a call of `method` made now may spend the protective reserve."""
    return method in PROTECTIVE_METHODS or _PROTECTIVE.get()


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Marks the private calls made inside (in this task) as a background poll's: they keep the reserve."""
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


class CallBudget:
    """The bot's estimate of its key's counter, spent by every private call (see the module's docstring)."""

    def __init__(
        self,
        tier_name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        margin: float = MARGIN_POINTS,
        poll_ceiling: float = POLL_CEILING,
        reserve: float = PROTECTIVE_RESERVE_POINTS,
    ) -> None:
        self.tier_name = tier_name
        self.tier = tier(tier_name)
        self.counter = CallCounter(self.tier, clock)
        self.hard_ceiling = self.tier.maximum - margin
        # Where every call but a protective one stops: the reserve between it and the hard ceiling is theirs.
        self.ceiling = self.hard_ceiling - reserve
        self.poll_ceiling = self.tier.maximum * poll_ceiling
        self.spent = 0.0  # points, since the start
        self.exhausted = 0  # calls refused for want of room (never sent)
        self.deferred = 0  # background calls not sent for want of room
        self.reserved = 0  # reconciliations waiting for their room or running: the polls leave the counter to them
        self.waits = 0  # patient calls that waited for room (never refused)
        self.protective_spent = 0  # protective calls sent (a switch refresh, a cancel's lookups)
        self.protective_exhausted = 0  # protective calls refused for want of room: none while the estimate is right

    def headroom(self) -> float:
        """Fraction (0-1) of the counter still free, by the estimate."""
        return max(0.0, min(1.0, 1.0 - self.counter.level() / self.tier.maximum))

    def poll_interval(self, points: float, share: float = POLL_SHARE) -> float:
        """The shortest interval at which a poll of `points` spends at most `share` of the decay."""
        return points / (self.tier.decay * share)

    def trades_interval(self) -> float:
        return max(TRADES_INTERVAL_SECONDS, self.poll_interval(call_cost("TradesHistory"), TRADES_SHARE))

    def affordable(self, points: float) -> bool:
        """Whether a background poll may spend `points` now: never while a reconciliation holds a reservation."""
        return not self.reserved and self.counter.level() + points <= self.poll_ceiling

    def seconds_until_room(self, points: float) -> float:
        """Seconds of decay until `points` fit under the ceiling of ordinary calls (0: now), the protective reserve
        left above it; `points` past the whole room wait for an empty counter."""
        return self.counter.seconds_until(min(points, self.ceiling), self.ceiling)

    def ceiling_for(self, method: str) -> float:
        """How far a call of `method` made now may take the estimate: the hard ceiling for a protective call, the
        ordinary ceiling (the reserve kept) for every other."""
        return self.hard_ceiling if is_protective(method) else self.ceiling

    @staticmethod
    def patient_now() -> bool:
        """Whether this task's private calls wait for room (inside `patient()`, not in a background poll)."""
        return _PATIENT.get() and not _BACKGROUND.get()

    async def wait_for_room(self, method: str) -> None:
        """Inside `patient()` (and not in a background poll): return once the method's call fits under the hard
        ceiling, sleeping through the decay meanwhile. Elsewhere at once."""
        if not self.patient_now():
            return
        points = call_cost(method)
        ceiling = self.ceiling_for(method)
        while points and (wait := self.counter.seconds_until(min(points, ceiling), ceiling)) > 0:
            self.waits += 1
            await asyncio.sleep(wait + 0.01)

    def spend(self, method: str) -> None:
        """Count the method's call if it fits under the hard ceiling; else raise at once, sending nothing: Deferred in
        a background poll, BudgetExhausted (a rate-limit error) elsewhere."""
        points = call_cost(method)
        if points == 0:
            return
        protected = is_protective(method) and not _BACKGROUND.get()
        wait = self.counter.seconds_until(points, self.hard_ceiling if protected else self.ceiling)
        if wait > 0:
            if _BACKGROUND.get():
                self.deferred += 1
                raise Deferred(method)
            self.exhausted += 1
            self.protective_exhausted += protected
            raise BudgetExhausted(
                f"{method}: the call budget of Kraken's {self.tier_name} tier has no room "
                f"(headroom {self.headroom():.2f}; {wait:.1f} s to decay)"
            )
        self.counter.add(points)
        self.spent += points
        self.protective_spent += protected

    def refund(self, method: str) -> None:
        """A call the venue never answered (its connection refused or closed): counted back out. Were the venue to
        have counted it after all, its refusal saturates the estimate."""
        points = call_cost(method)
        self.counter.add(-min(points, self.counter.level()))
        self.spent -= points

    def saturate(self) -> None:
        """The venue said the counter is past its maximum: believe it (the estimate was wrong)."""
        level = self.counter.level()
        self.counter.add(max(0.0, self.tier.maximum - level))


def install(exchange: ccxt_async.Exchange, budget: CallBudget) -> None:
    """Every private request of `exchange` (a ccxt kraken client) spends from `budget` before it is sent; a refusal
    `EAPI:Rate limit exceeded` saturates the estimate, one that got no answer on its connection is counted back out."""
    send = exchange.fetch2

    async def fetch2(
        path: str, api: Any = "public", method: str = "GET", params: Any = None, config: Any = None
    ) -> Any:
        private = api == "private" or (isinstance(api, list) and "private" in api)
        while True:
            if private:
                await budget.wait_for_room(path)
                budget.spend(path)
            try:
                return await send(path, api, method, {} if params is None else params, {} if config is None else config)
            except ccxt_async.DDoSProtection as exc:  # RateLimitExceeded is one
                if private and "EAPI:Rate limit exceeded" in str(exc) and not isinstance(exc, BudgetExhausted):
                    budget.saturate()
                    if budget.patient_now():
                        continue  # refused, so nothing happened: sent again (a fresh nonce) once there is room
                raise
            except ccxt_async.ExchangeNotAvailable as exc:
                if private and isinstance(exc.__cause__, aiohttp.ClientConnectionError):
                    budget.refund(path)  # no answer on that connection: the venue most likely never counted it
                raise

    exchange.fetch2 = fetch2


class CounterLimiter:
    """The venue's side: a counter per API key, refusing a call its counter cannot take."""

    def __init__(self, tier_name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.tier = tier(tier_name)
        self._clock = clock
        self._counters: dict[str, CallCounter] = {}
        self.refused = 0

    def admit(self, key: str, method: str) -> bool:
        """Count the call of `method` signed with `key`; False (and nothing counted) when it would pass the maximum."""
        points = call_cost(method)
        if points == 0:
            return True
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = CallCounter(self.tier, self._clock)
        if counter.level() + points > self.tier.maximum:
            self.refused += 1
            return False
        counter.add(points)
        return True

    def level(self, key: str) -> float:
        counter = self._counters.get(key)
        return 0.0 if counter is None else counter.level()


# -- Binance: request weight per minute per IP, orders per 10 s and per day per account -----------------------------
BINANCE_WEIGHT_PER_MINUTE = 6000  # REQUEST_WEIGHT, per IP (exchangeInfo's rateLimits)
BINANCE_ORDERS_PER_10S = 100  # ORDERS, per account
BINANCE_ORDERS_PER_DAY = 200_000
WEIGHT_HEADER = "x-mbx-used-weight-1m"
# Background polls (orders, quotes) skip their cycle once less than this share of the weight or order counts is left:
# the rest of the minute is kept for cancels, submits and a reconciliation, never spent on looking.
WEIGHT_POLL_FLOOR = 0.3
ORDER_COUNT_HEADERS = {"x-mbx-order-count-10s": 10.0, "x-mbx-order-count-1d": 86_400.0}
# The order counts' intervals as the bot exports them (tradingbot_venue_order_count_headroom_ratio{interval}).
ORDER_COUNT_INTERVALS = {"x-mbx-order-count-10s": "10s", "x-mbx-order-count-1d": "1d"}
# What places a new order (what Binance's order counts count): a -1015 stops these alone. Cancels, queries and market
# data go on: the order counts are the account's, not the IP's weight, and a cancel is the protective call.
NEW_ORDER_PATHS = frozenset(
    {"order", "order/oco", "order/cancelReplace", "orderList/oco", "orderList/oto", "orderList/otoco", "sor/order"}
)
TOO_MANY_ORDERS = "-1015"
# ticker/24hr's weight by how many `symbols` one request asks for (Binance: 2 for 1-20, 40 for 21-100, 80 above, the
# weight of every symbol). ccxt's throttle costs a request with `symbols` as one of every symbol (it looks for `symbol`
# alone): a quote poll of two symbols cost 40 times its weight, 0.8 s of the client's 50 ms tokens, and every call of
# the bot queued behind it (a streamed fill handed over 2 s late; docs/measurements.md, bench_binance_bot.py).
TICKER_24HR_SYMBOL_WEIGHTS = ((20, 1), (100, 20))  # (at most this many symbols, that many times one symbol's weight)


class WeightBudget:
    """Binance's limits as its answers report them (docs/gateway-binance.md, "Weights and bans"): every answer carries
    the weight the IP used this minute (`X-MBX-USED-WEIGHT-1M`), an order's the account's order counts
    (`X-MBX-ORDER-COUNT-10S`, `-1D`); the budget keeps the last of each with the window it was read in (a reading from
    an earlier window counts as 0: Binance's windows are whole minutes, whole 10 s, days). `headroom` is the least room
    of the three. A 429 for the weight or a 418 (the IP banned) stops every call, public and private, until its
    `Retry-After`: calls meanwhile are refused at once with BudgetExhausted (a `rate_limit` error), never sent, since
    Binance bans an IP that keeps calling after its 429s and lengthens the ban of one that calls while banned. A 429
    for the order counts (-1015, the account's, not the IP's) stops new orders alone until its window ends: cancels,
    lookups, a reconnect's markets go on. `ban_seconds` is what is left of a 418's ban (the bot exports it: it
    pages)."""

    def __init__(
        self,
        weight_limit: int = BINANCE_WEIGHT_PER_MINUTE,
        orders_10s: int = BINANCE_ORDERS_PER_10S,
        orders_day: int = BINANCE_ORDERS_PER_DAY,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.limits = {
            WEIGHT_HEADER: weight_limit,
            "x-mbx-order-count-10s": orders_10s,
            "x-mbx-order-count-1d": orders_day,
        }
        self.windows = {WEIGHT_HEADER: 60.0, **ORDER_COUNT_HEADERS}
        self._clock = clock
        self._wall = wall
        self._readings: dict[str, tuple[int, float]] = {}  # header -> (value, the window's start, wall time)
        self.stopped_until = 0.0  # clock() until which no call is sent (a 429's or a 418's Retry-After)
        self.orders_stopped_until = 0.0  # clock() until which no new order is sent (a -1015's window)
        self.banned_until = 0.0  # clock() until which the IP is banned (a 418's)
        self.refusals = 0  # 429s answered
        self.bans = 0  # 418s answered
        self.held = 0  # calls not sent while stopped
        self.polls_skipped = 0  # background poll cycles skipped for want of room

    def observe(self, headers: Mapping[str, Any] | None) -> None:
        """Read the weight and order counts an answer reports."""
        if not headers:
            return
        lower = {str(k).lower(): v for k, v in headers.items()}
        now = self._wall()
        for name, window in self.windows.items():
            value = lower.get(name)
            if value is not None and str(value).isdigit():
                self._readings[name] = (int(value), now - now % window)

    def used(self, name: str = WEIGHT_HEADER) -> int:
        """The last reading of `name` if it is of the current window, else 0."""
        value, start = self._readings.get(name, (0, 0.0))
        now = self._wall()
        return value if start == now - now % self.windows[name] else 0

    def order_headroom(self, name: str | None = None) -> float:
        """The least fraction (0-1) left of the account's order counts (of `name` alone when given: a header of
        ORDER_COUNT_HEADERS), the orders sent and not yet answered included; 0 while a -1015 holds new orders. What
        the bot's order gate reads before an order that adds risk (trading_ops.bot.gate)."""
        if self.orders_stopped_until > self._clock():
            return 0.0
        names = [name] if name is not None else list(ORDER_COUNT_HEADERS)
        return max(0.0, min(1.0 - self.used(n) / self.limits[n] for n in names))

    def order_sent(self) -> None:
        """A new order is on its way: each order count one higher until its answer's headers say what the venue
        counted (so orders in flight together are not each judged against the count before any of them)."""
        now = self._wall()
        for name in ORDER_COUNT_HEADERS:
            window = self.windows[name]
            self._readings[name] = (self.used(name) + 1, now - now % window)

    def headroom(self) -> float:
        """The least fraction (0-1) left of the weight and the order counts; 0 while calls are stopped."""
        if self.stop_seconds() > 0:
            return 0.0
        return max(0.0, min(1.0 - self.used(name) / limit for name, limit in self.limits.items()))

    def stop_seconds(self) -> float:
        return max(0.0, self.stopped_until - self._clock())

    def polls_allowed(self) -> bool:
        """Whether a background poll may begin a cycle: no stop in force and WEIGHT_POLL_FLOOR of the weight left. A
        poll spends weight and never an order count: the order counts are the order gate's (trading_ops.bot.gate), and
        judged here they starved a busy bot's quote polls until its market data read stale."""
        weight_room = 1.0 - self.used(WEIGHT_HEADER) / self.limits[WEIGHT_HEADER]
        if self.stop_seconds() == 0 and weight_room >= WEIGHT_POLL_FLOOR:
            return True
        self.polls_skipped += 1
        return False

    def ban_seconds(self) -> float:
        """Seconds left of a 418's ban (0: none)."""
        return max(0.0, self.banned_until - self._clock())

    def check(self, path: str, method: str = "GET") -> None:
        """Raise BudgetExhausted, sending nothing, while calls are stopped (or, for a new order, while orders are)."""
        wait = self.stop_seconds()
        if wait > 0:
            self.held += 1
            banned = "the IP is banned (418)" if self.ban_seconds() > 0 else "past the limit (429)"
            raise BudgetExhausted(f"{path}: Binance {banned}: no call for {wait:.0f} s more")
        orders_wait = self.orders_stopped_until - self._clock()
        if orders_wait > 0 and method.upper() == "POST" and path in NEW_ORDER_PATHS:
            self.held += 1
            raise BudgetExhausted(
                f"{path}: Binance's order count past its limit (429): no new order for {orders_wait:.0f} s more"
            )
        if method.upper() == "POST" and path in NEW_ORDER_PATHS:
            self.order_sent()

    def refused(self, status: int, headers: Mapping[str, Any] | None, orders_only: bool = False) -> None:
        """A 429 or 418: stop every call until its Retry-After (at least a second). `orders_only` (a -1015: the order
        counts past their limit): stop new orders alone, until the Retry-After or else the 10 s window's end."""
        lower = {str(k).lower(): v for k, v in (headers or {}).items()}
        if orders_only:
            now_wall = self._wall()
            window_left = 10.0 - now_wall % 10.0
            raw = str(lower.get("retry-after", window_left))
            seconds = float(raw) if raw.replace(".", "", 1).isdigit() else window_left
            self.orders_stopped_until = max(self.orders_stopped_until, self._clock() + max(1.0, seconds))
            self.refusals += 1
            self.observe(headers)
            return
        raw = str(lower.get("retry-after", "1"))
        seconds = float(raw) if raw.replace(".", "", 1).isdigit() else 1.0
        until = self._clock() + max(1.0, seconds)
        self.stopped_until = max(self.stopped_until, until)
        if status == 418:
            self.bans += 1
            self.banned_until = max(self.banned_until, until)
        else:
            self.refusals += 1
        self.observe(headers)


def install_weights(exchange: ccxt_async.Exchange, budget: WeightBudget) -> None:
    """Every request of `exchange` (a ccxt binance client), public or private (Binance weighs per IP), goes through
    `budget`: refused unsent while a 429's or 418's Retry-After runs, its answer's weight and order counts read."""
    send = exchange.fetch2

    async def fetch2(
        path: str, api: Any = "public", method: str = "GET", params: Any = None, config: Any = None
    ) -> Any:
        while (wait := budget.stop_seconds()) > 0 and CallBudget.patient_now():
            await asyncio.sleep(wait + 0.01)  # a start or a shutdown waits out the Retry-After
        budget.check(path, method)
        try:
            result = await send(path, api, method, {} if params is None else params, {} if config is None else config)
        except ccxt_async.DDoSProtection as exc:
            if not isinstance(exc, BudgetExhausted):
                headers = getattr(exchange, "last_response_headers", None)
                orders_only = TOO_MANY_ORDERS in str(exc)
                budget.refused(418 if "banned" in str(exc) else 429, headers, orders_only=orders_only)
            raise
        budget.observe(getattr(exchange, "last_response_headers", None))
        return result

    exchange.fetch2 = fetch2
    exchange.calculate_rate_limiter_cost = functools.partial(binance_cost, exchange.calculate_rate_limiter_cost)


def binance_cost(
    ccxt_cost: Callable[..., Any], api: Any, method: Any, path: Any, params: Any, config: Any = None
) -> Any:
    """ccxt's throttle cost of a Binance request (`ccxt_cost`, the client's own), but ticker/24hr's with `symbols` at
    Binance's weight for that many (TICKER_24HR_SYMBOL_WEIGHTS), in ccxt's units (its cost of one symbol's)."""
    config = {} if config is None else config
    raw = params.get("symbols") if isinstance(params, Mapping) and "symbol" not in params else None
    if path != "ticker/24hr" or not isinstance(raw, str) or "cost" not in config:
        return ccxt_cost(api, method, path, params, config)
    asked = len([n for n in raw.strip("[]").split(",") if n.strip().strip('"')])
    times = next((t for most, t in TICKER_24HR_SYMBOL_WEIGHTS if asked <= most), None)
    return ccxt_cost(api, method, path, params, config) if times is None else config["cost"] * times
