"""What a strategy is to the runtime (Strategy) and the narrow view of the bot it trades through (StrategyContext)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from trading_ops.bot.broker import OrderType, Quote, Side, VenueOrder
from trading_ops.bot.state import TradingState

if TYPE_CHECKING:
    from trading_ops.bot.orders import OrderEngine
    from trading_ops.bot.state import StateMachine


@runtime_checkable
class Strategy(Protocol):
    """What a bot author writes: an object with `async def step(self, ctx)`. Any class with that method is one (a
    Protocol: nothing to subclass); it may also define `on_start` (see StrategyWithStart).

    The runtime calls `step` once per loop iteration, every `bot.loop_interval_seconds`, only after the startup
    reconciliation passed (the safe-start gate), never while the bot shuts down or the runtime flattens its
    positions (the `flatten` command); one step at a time, never at the same time as a reconciliation or a control
    command that restricts trading. A step that raises is logged with its traceback and the loop goes on: the next
    step runs as usual.
    """

    async def step(self, ctx: StrategyContext) -> None:
        """Look at the market and the bot through `ctx` and act through it (`ctx.submit`, `ctx.cancel`). Return soon:
        the loop's progress is what /healthz and the heartbeat check."""
        ...


@runtime_checkable
class StrategyWithStart(Strategy, Protocol):
    """A Strategy that also wants to prepare once the bot is up (say, look at the positions it starts with)."""

    async def on_start(self, ctx: StrategyContext) -> None:
        """Awaited once, after the startup reconciliation and before the first `step`; the same `ctx` as every
        step's. An exception here stops the start (the bot does not trade)."""
        ...


class StrategyContext(Protocol):
    """What a strategy may see and do: the runtime's view of the bot, nothing more. Every order goes through the
    runtime's order gate (shutdown, safe start, trading state, market-data freshness) and the risk limits of
    `bot.risk` right before it leaves, and is journaled first."""

    @property
    def symbols(self) -> Sequence[str]:
        """The symbols the bot trades (`BASE-QUOTE`, e.g. `BTC-USD`), as given to the runtime."""
        ...

    @property
    def state(self) -> TradingState:
        """The trading state now: ACTIVE, REDUCE_ONLY (only orders that shrink a position pass), PAUSED, HALTED or
        FLATTENING (the runtime is closing positions). The gate enforces it; a strategy may skip work on it."""
        ...

    def quote(self, symbol: str) -> Quote | None:
        """The latest quote of `symbol` while its market data is fresh; None when there is none or it is stale."""
        ...

    def position(self, symbol: str) -> Decimal:
        """The bot's position in `symbol`, in the base asset (signed: negative is short), from its own fills."""
        ...

    def working_orders(self, include_adopted: bool = False) -> dict[str, VenueOrder]:
        """Working orders by key: the bot's own (in flight included); with `include_adopted`, also those adopted
        from the venue (placed by hand), which a strategy must not take for its own quotes."""
        ...

    def order_age(self, key: str) -> float | None:
        """Seconds since the order was sent (or adopted), None when it is not working."""
        ...

    def order_refusal(self, symbol: str, reduce_only: bool) -> str | None:
        """Why the gate would refuse an order of this kind now (the risk limits that do not depend on the order
        included), or None. Asking is not a breach: only an order sent past a limit restricts the bot."""
        ...

    async def submit(
        self,
        symbol: str,
        side: Side,
        order_type: OrderType,
        quantity: Decimal,
        price: Decimal | None = None,
        reduce_only: bool = False,
    ) -> VenueOrder | None:
        """Send an order (`price` for a LIMIT order, None for MARKET; `quantity` in the base asset) and return the
        venue's answer; None when it was not placed: refused by the gate or a risk limit, rejected by the venue,
        or its answer lost (the runtime tracks it until reconciliation says what became of it). Never raises for a
        venue's refusal: it is counted in the metrics and logged."""
        ...

    async def cancel(self, key: str) -> bool:
        """Cancel a working order by its key (a key of `working_orders()`); False when there is no such order or the
        venue refused."""
        ...


class Context:
    """The runtime's StrategyContext: a view over the order engine and the trading state, nothing more."""

    def __init__(
        self, orders: OrderEngine, state: StateMachine, symbols: Sequence[str], stale_after_seconds: float
    ) -> None:
        self._orders = orders
        self._state = state
        self._symbols = tuple(symbols)
        self._stale_after = stale_after_seconds

    @property
    def symbols(self) -> Sequence[str]:
        return self._symbols

    @property
    def state(self) -> TradingState:
        return self._state.state

    def quote(self, symbol: str) -> Quote | None:
        quote = self._orders.quotes.get(symbol)
        age = self._orders.metrics.market_data_age(symbol)
        return quote if quote is not None and age is not None and age <= self._stale_after else None

    def position(self, symbol: str) -> Decimal:
        return self._orders.book.position(symbol)

    def working_orders(self, include_adopted: bool = False) -> dict[str, VenueOrder]:
        adopted = self._orders.external_orders
        return {k: o for k, o in self._orders.orders.items() if include_adopted or k not in adopted}

    def order_age(self, key: str) -> float | None:
        sent = self._orders.order_sent_at.get(key)
        return None if sent is None else time.monotonic() - sent

    def order_refusal(self, symbol: str, reduce_only: bool) -> str | None:
        return self._orders.order_refusal(symbol, reduce_only)

    async def submit(
        self,
        symbol: str,
        side: Side,
        order_type: OrderType,
        quantity: Decimal,
        price: Decimal | None = None,
        reduce_only: bool = False,
    ) -> VenueOrder | None:
        return await self._orders.submit(symbol, side, order_type, quantity, price, reduce_only)

    async def cancel(self, key: str) -> bool:
        return await self._orders.cancel(key)
