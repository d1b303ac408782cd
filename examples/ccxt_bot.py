"""A whole bot on any ccxt exchange, on the trading_ops runtime: `python examples/ccxt_bot.py trading-ops.yaml`.

The `ccxt:` section of the configuration says which exchange, its keys (from files or variables, never in the file),
the symbols and, to trade on the paper gateway (`trading-ops paper-gateway`), its `urls`: the same bot trades on a
real exchange when they are left out. Everything but the strategy comes from the runtime: metrics and the control
API, the journal, the order gate and the risk limits of `bot.risk`, reconciliation, crash recovery and a graceful
shutdown on SIGTERM. Run `trading-ops db upgrade` once before the first start.
"""

from __future__ import annotations

import sys
from collections import deque
from decimal import Decimal

from trading_ops.bot import OrderType, Side, StrategyContext, run
from trading_ops.venues.ccxt.factory import broker_from_config

ORDER_NOTIONAL = Decimal("100")  # in the quote asset, per order
MAX_POSITION_NOTIONAL = Decimal("300")  # per symbol (bot.risk enforces the hard limits)
WINDOW = 20  # mids in the moving average
BID_DISCOUNT = Decimal("0.002")  # the resting bid sits this far under the best bid
BID_MAX_AGE_SECONDS = 10.0  # then it is canceled, and placed again at the next step
STEP = Decimal("0.0001")  # quantities are rounded down to this (ccxt rounds to the exchange's precision too)


class MeanReverter:
    """Per symbol: buy a little at the market when the mid dips under its moving average and sell it all back when
    it rises above; meanwhile keep one small limit bid resting under the market, renewed when it gets old."""

    def __init__(self) -> None:
        self.mids: dict[str, deque[Decimal]] = {}

    async def step(self, ctx: StrategyContext) -> None:  # once per loop iteration, only through the context
        for symbol in ctx.symbols:
            quote = ctx.quote(symbol)  # None while its market data is stale: never trade blind
            if quote is None:
                continue
            mids = self.mids.setdefault(symbol, deque(maxlen=WINDOW))
            mids.append(quote.mid)
            working = {k: o for k, o in ctx.working_orders().items() if o.symbol == symbol}
            if any(o.order_type is OrderType.MARKET for o in working.values()):
                continue  # one on its way: wait for its fills
            bids = [k for k, o in working.items() if o.order_type is OrderType.LIMIT]
            for key in bids:
                if (ctx.order_age(key) or 0) > BID_MAX_AGE_SECONDS:
                    await ctx.cancel(key)
            size = (ORDER_NOTIONAL / quote.ask).quantize(STEP)
            if not bids and ctx.order_refusal(symbol, False) is None:
                price = quote.bid * (1 - BID_DISCOUNT)
                await ctx.submit(symbol, Side.BUY, OrderType.LIMIT, size, price)  # through the gate and risk limits
            if len(mids) < WINDOW:
                continue
            average = sum(mids) / len(mids)
            held = ctx.position(symbol)
            if quote.mid < average and (held + size) * quote.ask <= MAX_POSITION_NOTIONAL:
                if ctx.order_refusal(symbol, False) is None:
                    await ctx.submit(symbol, Side.BUY, OrderType.MARKET, size)
            elif quote.mid > average and held > 0:
                await ctx.submit(symbol, Side.SELL, OrderType.MARKET, held, reduce_only=True)


def main(argv: list[str]) -> int:
    """0 after a clean stop; one line on stderr and 2 for a configuration problem, 1 for a failure."""
    # config.ccxt: the exchange, its keys, its urls (the paper gateway's), the symbols; trades until SIGTERM or SIGINT,
    # then stops within recovery.shutdown_deadline_seconds.
    return run(MeanReverter(), broker_from_config, argv[1] if len(argv) > 1 else "trading-ops.yaml")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
