"""Pre-trade risk limits, checked in the order gate before an order leaves: a breach restricts the bot at once."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from prometheus_client import Counter, Gauge

from trading_ops.bot.broker import OrderRequest
from trading_ops.bot.control import SOURCE_RISK
from trading_ops.bot.drawdown import EquityPeak
from trading_ops.bot.metrics import PREFIX, BotMetrics
from trading_ops.bot.state import StateMachine, TradingState
from trading_ops.durations import format_duration

log = logging.getLogger(__name__)

# The limits, in the order they are checked; each is the `limit` label of the risk metrics and, prefixed with
# REFUSED_PREFIX, the `reason` of tradingbot_orders_refused_total.
DAILY_LOSS = "daily_loss"
DRAWDOWN = "drawdown"
ORDERS_PER_SECOND = "orders_per_second"
ORDERS_PER_MINUTE = "orders_per_minute"
OPEN_ORDERS = "open_orders"
ORDER_NOTIONAL = "order_notional"
POSITION_NOTIONAL = "position_notional"
OPEN_POSITIONS = "open_positions"
SYMBOLS = "symbols"  # a ramp stage's symbols allowed (trading_ops.bot.ramp): its value is how many
LIMITS = (
    DAILY_LOSS,
    DRAWDOWN,
    ORDERS_PER_SECOND,
    ORDERS_PER_MINUTE,
    OPEN_ORDERS,
    OPEN_POSITIONS,
    ORDER_NOTIONAL,
    POSITION_NOTIONAL,
    SYMBOLS,
)
REFUSED_PREFIX = "risk_"
# What a breach does: a loss limit (the day's loss, the drawdown from the equity peak) halts (the kill switch: only an
# operator clears it); any other limit leaves the bot able to shrink its positions and nothing more until an operator
# resumes it.
HALT = "halt"
REDUCE_ONLY = "reduce_only"
LOSS_LIMITS = (DAILY_LOSS, DRAWDOWN)
ACTION = {limit: HALT if limit in LOSS_LIMITS else REDUCE_ONLY for limit in LIMITS}
# The starts of the reasons a loss-limit halt carries (journaled with the transition): a restart finds one and stays
# halted (see BotRuntime), so the halt never clears by itself.
HALT_REASON_PREFIXES = tuple(f"risk limit {limit}" for limit in LOSS_LIMITS)
# The help of the families a bot without this engine (the freqtrade sidecar) exports too, where it has the notion.
RISK_LIMIT_HELP = (
    "The bot's in-process risk limits (0: no limit): daily loss, drawdown and notional values in the quote asset, "
    "open orders and open positions as counts, order rates per second or minute, symbols allowed (a ramp stage's) "
    "as how many."
)
OPEN_POSITIONS_HELP = "Symbols with a non-zero position (what the open_positions risk limit counts)."
# Without bot.risk.drawdown_window: the peak of the last day.
DRAWDOWN_WINDOW_SECONDS = 86400.0
RATE_WINDOWS = {ORDERS_PER_SECOND: 1.0, ORDERS_PER_MINUTE: 60.0}


@dataclass(frozen=True)
class RiskLimits:
    """One bot's limits; 0 means no limit. Notional values are in the quote asset."""

    daily_loss: float = 0.0
    max_position_notional: float = 0.0
    max_open_orders: int = 0
    max_order_notional: float = 0.0
    max_orders_per_second: float = 0.0
    max_orders_per_minute: float = 0.0
    max_open_positions: int = 0
    max_drawdown: float = 0.0
    drawdown_window: float = DRAWDOWN_WINDOW_SECONDS  # seconds
    symbols: frozenset[str] | None = None  # the symbols the bot may add risk in (a ramp stage's); None: every one

    def value(self, limit: str) -> float:
        return float(
            {
                DAILY_LOSS: self.daily_loss,
                DRAWDOWN: self.max_drawdown,
                ORDERS_PER_SECOND: self.max_orders_per_second,
                ORDERS_PER_MINUTE: self.max_orders_per_minute,
                OPEN_ORDERS: self.max_open_orders,
                ORDER_NOTIONAL: self.max_order_notional,
                POSITION_NOTIONAL: self.max_position_notional,
                OPEN_POSITIONS: self.max_open_positions,
                SYMBOLS: len(self.symbols or ()),
            }[limit]
        )


class Exposure(Protocol):
    """What the risk engine reads of the bot's book: the order engine offers it."""

    def position(self, symbol: str) -> Decimal: ...

    def mark(self, symbol: str) -> Decimal | None: ...

    def open_order_count(self) -> int: ...

    def exposed_symbols(self) -> set[str]:
        """Symbols with a non-zero position or a working order (which may open one)."""
        ...


@dataclass(frozen=True)
class Breach:
    limit: str
    message: str

    @property
    def reason(self) -> str:
        """The `reason` label of tradingbot_orders_refused_total."""
        return REFUSED_PREFIX + self.limit


class RiskEngine:
    """Checks every order against the limits before it leaves, and the day's loss whenever P&L changes.

    A breach refuses the order that would cross the limit and, at once, moves the bot to reduce_only (halted for
    the loss limits: the day's loss, the drawdown) with the limit named in the transition's reason; `on_halt` then
    lets the owner sweep open orders off the venue. The limits are exported as `tradingbot_risk_limit{limit}` (0:
    none) and every breach counts in `tradingbot_risk_limit_breaches_total{limit}`; what the limits without a gauge
    of their own measure is exported beside them (`tradingbot_open_positions`, `tradingbot_equity_peak`,
    `tradingbot_drawdown`).

    The drawdown is measured from the highest equity (realized P&L of the positions held so far plus unrealized P&L
    at the mark) of the last `drawdown_window`, never from the day's start: a day that began after a peak, or that
    is still in profit, does not hide a fall from that peak (the mistake of hummingbot #2969).
    """

    def __init__(
        self,
        limits: RiskLimits,
        state: StateMachine,
        metrics: BotMetrics,
        *,
        on_halt: Callable[[str], None] | None = None,
        on_loss_limit: Callable[[str], object] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.state = state
        self.metrics = metrics
        self.on_halt = on_halt
        # A loss limit breached (its reason): the ramp falls back a stage (before the halt, so the narrower limits
        # hold from the order that crossed it on).
        self.on_loss_limit = on_loss_limit
        self.clock = monotonic  # replaceable: a test drives the order-rate windows
        self.wall = wall  # replaceable: a test drives the drawdown window (journaled: wall clock)
        self._sent: dict[str, deque[float]] = {name: deque() for name in RATE_WINDOWS}
        self._loss = Decimal(0)  # the day's loss as last observed
        # The last observed loss (the day's; the drawdown) was at or past its limit (a halt is edge-triggered).
        self._over: dict[str, bool] = dict.fromkeys(LOSS_LIMITS, False)
        self.peak = EquityPeak(limits.drawdown_window)  # journaled by the owner (BotRuntime): survives a restart
        self._drawdown = Decimal(0)  # below the window's equity peak, as last observed
        registry = metrics.registry
        labels = ["venue", "strategy", "limit"]
        gauge = Gauge(
            f"{PREFIX}_risk_limit",
            RISK_LIMIT_HELP,
            labels,
            registry=registry,
        )
        breaches = Counter(
            f"{PREFIX}_risk_limit_breaches",
            "Orders refused and state changes made because a risk limit would have been crossed, by limit.",
            labels,
            registry=registry,
        )
        self._breaches = {}
        self._limit_gauges = {}
        for limit in LIMITS:
            self._limit_gauges[limit] = gauge.labels(metrics.venue, metrics.strategy, limit).set
            self._breaches[limit] = breaches.labels(metrics.venue, metrics.strategy, limit).inc
        self.set_limits(limits)
        vs = ["venue", "strategy"]

        def measured(name: str, doc: str) -> Callable[[float], None]:
            return Gauge(f"{PREFIX}_{name}", doc, vs, registry=registry).labels(metrics.venue, metrics.strategy).set

        self._open_positions = measured("open_positions", OPEN_POSITIONS_HELP)
        self._equity_peak = measured(
            "equity_peak",
            "The highest equity (realized P&L of the positions held plus unrealized P&L at the mark) within the "
            "drawdown window, in units of the quote asset.",
        )
        self._drawdown_gauge = measured(
            "drawdown",
            "How far equity is below its peak within the drawdown window (positive), in units of the quote asset: "
            "the drawdown risk limit halts the bot at its value.",
        )

    def set_limits(self, limits: RiskLimits) -> None:
        """Enforce `limits` from the next order on (a ramp's stage changed), and export them."""
        self.limits = limits
        for limit, set_value in self._limit_gauges.items():
            set_value(limits.value(limit))
        self.metrics.daily_loss_limit(limits.daily_loss)

    # -- checks ---------------------------------------------------------------------------------------
    def check(self, symbol: str, reduce_only: bool, request: OrderRequest | None, book: Exposure) -> Breach | None:
        """The limit this order would cross, or None. Without `request` (a strategy asking whether it may send
        one), only the limits that do not depend on the order itself. A reduce-only order is held only to the
        order rates: it can only shrink a position, and a flatten must not be blocked by the limits it cures."""
        if not reduce_only:
            breach = self._loss_breach()
            if breach is not None:
                return breach
        breach = self._rate_breach()
        if breach is not None or reduce_only:
            return breach
        return (
            self._symbols_breach(symbol)
            or self._open_orders_breach(book)
            or self._open_positions_breach(symbol, book)
            or self._order_breach(symbol, request, book)
        )

    def loss_breach(self) -> Breach | None:
        """The loss limit (the day's loss, the drawdown) the bot is past now, or None: while it is, no order that can
        add risk goes out, whatever the trading state says."""
        return self._loss_breach()

    def _loss_breach(self) -> Breach | None:
        """The day's loss or the drawdown at its limit: no order that can add risk goes out."""
        loss = self.limits.daily_loss
        if loss and self._loss >= Decimal(str(loss)):
            return Breach(DAILY_LOSS, f"the day's loss {self._loss:.2f} reached the daily loss limit {loss:g}")
        drawdown = self.limits.max_drawdown
        if drawdown and self._drawdown >= Decimal(str(drawdown)):
            return self._drawdown_breach()
        return None

    def _rate_breach(self) -> Breach | None:
        """One more order would be past an order rate (the windows forget what they no longer cover)."""
        now = self.clock()
        for limit, window in RATE_WINDOWS.items():
            allowed = self.limits.value(limit)
            if allowed:
                sent = self._sent[limit]
                while sent and sent[0] <= now - window:
                    sent.popleft()
                if len(sent) + 1 > allowed:
                    return Breach(limit, f"{len(sent)} orders in the last {window:g} s; the limit is {allowed:g}")
        return None

    def _symbols_breach(self, symbol: str) -> Breach | None:
        allowed = self.limits.symbols
        if allowed and symbol not in allowed:
            return Breach(SYMBOLS, f"{symbol} is not among the symbols allowed ({', '.join(sorted(allowed))})")
        return None

    def _open_orders_breach(self, book: Exposure) -> Breach | None:
        max_open = self.limits.max_open_orders
        if max_open and book.open_order_count() + 1 > max_open:
            return Breach(OPEN_ORDERS, f"{book.open_order_count()} orders open; the limit is {max_open}")
        return None

    def _order_breach(self, symbol: str, request: OrderRequest | None, book: Exposure) -> Breach | None:
        """The order itself, or the position after it fills, over its notional limit (only with a request and a
        price to value it at)."""
        if request is None:
            return None
        price = request.price if request.price is not None else book.mark(symbol)
        if price is None:
            return None  # no price known: the stale-market-data gate refuses the order anyway
        notional = request.quantity * price
        max_order = self.limits.max_order_notional
        if max_order and notional > Decimal(str(max_order)):
            return Breach(ORDER_NOTIONAL, f"order notional {notional:.2f} is over the limit {max_order:g}")
        max_position = self.limits.max_position_notional
        # The position after this order fills, valued at the mark (the order's price when there is none yet).
        after = abs(book.position(symbol) + request.side.sign * request.quantity) * (book.mark(symbol) or price)
        if max_position and after > Decimal(str(max_position)):
            return Breach(
                POSITION_NOTIONAL, f"the {symbol} position would be {after:.2f}, over the limit {max_position:g}"
            )
        return None

    def _open_positions_breach(self, symbol: str, book: Exposure) -> Breach | None:
        """An order in a symbol the bot neither holds nor has an order working in would open one more position: past
        the cap it is refused. Symbols with a working order count as open (their orders may fill), so resting orders
        in many symbols cannot take the bot past the cap; an order adding to or reducing a position never opens one."""
        cap = self.limits.max_open_positions
        if not cap:
            return None
        exposed = book.exposed_symbols()
        if symbol in exposed or len(exposed) + 1 <= cap:
            return None
        return Breach(OPEN_POSITIONS, f"{len(exposed)} symbol(s) held or with an order working; the limit is {cap}")

    def sent(self) -> None:
        """An order left (counts against the order rates)."""
        now = self.clock()
        for name, sent in self._sent.items():
            if self.limits.value(name):
                sent.append(now)

    def observe_loss(self, loss: Decimal) -> None:
        """The day's loss (positive; realized plus unrealized) as it is now: reaching the limit halts the bot.

        Edge-triggered: once an operator cleared that halt (to flatten, say), the loss staying past the limit does
        not halt again, but every order that could add risk is still refused (and halts) until it is back under.
        """
        self._loss = loss
        limit = self.limits.daily_loss
        if self._crossed(DAILY_LOSS, loss, limit):
            self.breached(Breach(DAILY_LOSS, f"the day's loss {loss:.2f} reached the daily loss limit {limit:g}"))

    def observe_equity(self, equity: Decimal | None, open_positions: int) -> None:
        """Equity (realized P&L of the positions held so far plus unrealized P&L; None while a held symbol has no
        mark yet: a partial sum would set a false peak) and the number of symbols held, as they are now. A fall of
        `max_drawdown` from the window's peak halts the bot, edge-triggered like the daily loss limit."""
        self._open_positions(open_positions)
        if equity is None:
            return
        now = self.wall()
        self.peak.observe(equity, now)
        highest = self.peak.peak(now)
        peak = equity if highest is None else highest  # never None right after an observation
        self._drawdown = max(peak - equity, Decimal(0))
        self._equity_peak(float(peak))
        self._drawdown_gauge(float(self._drawdown))
        if self._crossed(DRAWDOWN, self._drawdown, self.limits.max_drawdown):
            self.breached(self._drawdown_breach())

    def _drawdown_breach(self) -> Breach:
        window, limit = format_duration(self.limits.drawdown_window), self.limits.max_drawdown
        return Breach(
            DRAWDOWN, f"equity {self._drawdown:.2f} below its {window} peak reached the drawdown limit {limit:g}"
        )

    def _crossed(self, limit: str, value: Decimal, allowed: float) -> bool:
        """Whether `value` just reached the loss limit `allowed` (0: none) and the bot is not halted already."""
        over = bool(allowed) and value >= Decimal(str(allowed))
        crossed = over and not self._over[limit]
        self._over[limit] = over
        return crossed and self.state.state is not TradingState.HALTED

    # -- breaches -------------------------------------------------------------------------------------
    def breached(self, breach: Breach) -> None:
        """Count the breach and restrict the bot at once: the transition's reason names the limit (it is journaled
        with the transition)."""
        self._breaches[breach.limit]()
        action = ACTION[breach.limit]
        state = self.state.state
        reason = f"risk limit {breach.limit}: {breach.message}"[:200]
        if breach.limit in LOSS_LIMITS and state is not TradingState.HALTED and self.on_loss_limit is not None:
            self.on_loss_limit(reason)
        if action == HALT:
            if state is not TradingState.HALTED:
                self.state.apply("halt", reason=reason)
                self.metrics.control_command("halt", SOURCE_RISK)
                log.error("halted: %s", reason)
                if self.on_halt is not None:
                    self.on_halt(reason)
        elif self.state.can("reduce_only") and state is not TradingState.REDUCE_ONLY:
            self.state.apply("reduce_only", reason=reason)
            self.metrics.control_command("reduce_only", SOURCE_RISK)
            log.error("reduce-only: %s", reason)
        else:
            log.warning("order refused by %s (state stays %s)", reason, state.value)
