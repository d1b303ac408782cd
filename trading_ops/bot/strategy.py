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
    """A strategy: `step(ctx)` once per loop iteration, while the safe-start gate is open and the bot is not
    shutting down. It may also define `async def on_start(ctx)`, awaited once before the first step."""

    async def step(self, ctx: StrategyContext) -> None: ...


class StrategyContext(Protocol):
    """What a strategy may see and do. Every order goes through the runtime's order gate and risk limits."""

    @property
    def symbols(self) -> Sequence[str]: ...

    @property
    def state(self) -> TradingState: ...

    def quote(self, symbol: str) -> Quote | None:
        """The latest quote of `symbol` while its market data is fresh; None when there is none or it is stale."""
        ...

    def position(self, symbol: str) -> Decimal: ...

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
    ) -> VenueOrder | None: ...

    async def cancel(self, key: str) -> bool: ...


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
