"""A simple demo strategy that trades continuously: mean-reverting quotes near the mid, within limits."""

from __future__ import annotations

import random
from decimal import ROUND_DOWN, Decimal

from trading_ops.bot.broker import OrderType, Side
from trading_ops.bot.state import TradingState
from trading_ops.bot.strategy import StrategyContext
from trading_ops.config import PaperConfig

QUANTITY_STEP = Decimal("0.0001")
PRICE_TICK = Decimal("0.01")
# Share of orders sent as market orders; the rest are limits a few basis points around the mid.
MARKET_ORDER_SHARE = 0.15
MAX_OFFSET_BPS = 8


class DemoStrategy:
    """One iteration per loop: expire old orders, then quote each symbol that has no working order (an order whose
    submission got no answer counts as working until reconciliation settles it).

    Orders the bot adopted from the venue (placed by hand) are not the strategy's quotes (`ctx.working_orders()`
    leaves them out): it neither expires them nor counts them as its working order on their symbol. They are still
    the bot's responsibility: the kill switch, cancel_all, flatten and the shutdown's cancel policy cancel them.
    """

    def __init__(self, config: PaperConfig, seed: int | None = None) -> None:
        self.config = config
        self.rng = random.Random(seed)

    async def step(self, ctx: StrategyContext) -> None:
        await self._expire(ctx)
        # The state as it is now, after the awaits above (a halt or pause may have come in during them); the order
        # gate checks it again right before each order leaves, which is what enforces it.
        state = ctx.state
        if state not in (TradingState.ACTIVE, TradingState.REDUCE_ONLY):
            return  # paused, halted, or flattening (the runtime closes the positions)
        working = {o.symbol for o in ctx.working_orders().values()}
        for symbol in self.config.symbols:
            quote = ctx.quote(symbol)
            if quote is None or symbol in working:
                continue  # no fresh price: never trade blind
            reduce_only = not state.may_open_positions
            if ctx.order_refusal(symbol, reduce_only) is not None:
                continue  # e.g. the book is not reconciled since a reconnect: wait rather than trade on it
            await self._quote(ctx, symbol, quote.mid, reduce_only=reduce_only)

    async def _expire(self, ctx: StrategyContext) -> None:
        for key, order in list(ctx.working_orders().items()):
            age = ctx.order_age(key)
            if age is not None and age > self.config.order_max_age_seconds and order.order_type is OrderType.LIMIT:
                await ctx.cancel(key)

    async def _quote(self, ctx: StrategyContext, symbol: str, mid: Decimal, reduce_only: bool) -> None:
        position = ctx.position(symbol)
        notional = position * mid
        limit = Decimal(str(self.config.max_position_notional))
        if reduce_only:
            if position == 0:
                return
            side = Side.SELL if position > 0 else Side.BUY
        elif abs(notional) > limit / 2:
            side = Side.SELL if notional > 0 else Side.BUY  # lean back towards flat
        else:
            side = self.rng.choice((Side.BUY, Side.SELL))
        size = (Decimal(str(self.config.order_notional)) / mid).quantize(QUANTITY_STEP, rounding=ROUND_DOWN)
        if reduce_only:
            size = min(size, abs(position))
        elif abs(notional + side.sign * size * mid) > limit:
            return
        if size <= 0:
            return
        if self.rng.random() < MARKET_ORDER_SHARE:
            await ctx.submit(symbol, side, OrderType.MARKET, size, reduce_only=reduce_only)
            return
        # Negative offsets cross the spread (taker), positive ones rest on the book (maker).
        offset = Decimal(self.rng.uniform(-MAX_OFFSET_BPS / 2, MAX_OFFSET_BPS)) / Decimal(10_000)
        price = mid * (1 - side.sign * offset)
        await ctx.submit(symbol, side, OrderType.LIMIT, size, price.quantize(PRICE_TICK), reduce_only=reduce_only)
