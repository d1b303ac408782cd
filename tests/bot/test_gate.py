"""The order gate against a venue's limit on new orders (trading_ops.bot.gate, ORDER_COUNT_FLOOR): a bot driven to
burst on Binance spot stops adding risk while the account's order count (read from the answers'
`X-MBX-ORDER-COUNT-10S`, the orders in flight counted) leaves less than the floor, so the venue never answers -1015;
each refusal is counted (`tradingbot_orders_refused_total{reason="venue_order_count"}`), the room is exported
(`tradingbot_venue_order_count_headroom_ratio`), and at no room at all its resting orders are still canceled (a cancel
is not a new order). Real parts: the paper gateway's Binance dialect on a free loopback port (its order limit per
10 s lowered to LIMIT so the burst is short), ccxt's stock binance client, the bot runtime with its HTTP server."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from binance_helpers import binance, binance_gateway
from paper_helpers import TOKEN, IdleStrategy, control, fast_config, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import OrderRequest, OrderType, Side
from trading_ops.bot.gate import ORDER_COUNT_FLOOR, REFUSED_ORDER_COUNT
from trading_ops.bot.runtime import BotRuntime
from trading_ops.venues.call_counter import WeightBudget
from trading_ops.venues.ccxt.rest import CcxtBroker

SYMBOL = "BTC-USD"
LIMIT = 20  # the venue's orders per 10 s in this test (Binance's is 100)
KEPT = int(LIMIT * ORDER_COUNT_FLOOR)  # what new risk leaves for reduce-only orders


def sample(bot: BotRuntime, name: str, **labels: str) -> float:
    """The bot's sample of `name` with `labels` (the bot's own venue and strategy labels taken as they are)."""
    for family in bot.inst.registry.collect():
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return float(s.value)
    return 0.0


async def test_a_burst_stops_short_of_binance_order_count_and_a_cancel_goes_out_at_no_room(tmp_path: Path) -> None:
    config = fast_config(tmp_path)
    config.bot.market_data_stale_seconds = 3600.0  # the quotes' polls are not what this test is about
    async with binance_gateway() as (gateway, dialect, base):
        dialect.rest.weights.orders_10s = LIMIT
        budget = WeightBudget(orders_10s=LIMIT)
        broker = CcxtBroker(binance(base), [SYMBOL], poll_interval=1.0, quote_interval=0.5, weight_budget=budget)
        bot = BotRuntime(config, broker, IdleStrategy(), symbols=[SYMBOL], token=TOKEN, registry=CollectorRegistry())
        port = await bot.start("127.0.0.1", 0)
        try:
            await wait_for(lambda: bot.gate.trading_allowed, timeout=30)
            price = (gateway.venue.quote(SYMBOL).bid / 2).quantize(Decimal("0.01"))  # rests
            placed = refused = 0
            async with bot.hold_trading():
                for _ in range(3 * LIMIT):  # as fast as the bot can: far more than the venue's 10 s window takes
                    order = await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, Decimal("0.01"), price)
                    if order is None:
                        refused += 1
                    else:
                        placed += 1
            # Refused short of the limit (after a new 10 s window of the bot's reading, one more may go before its
            # answer says the venue still counts the last window's: never past the limit).
            assert LIMIT - KEPT <= placed <= LIMIT, placed
            assert budget.refusals == 0  # no -1015 (nor any 429) answered
            assert sample(bot, "tradingbot_orders_refused_total", symbol=SYMBOL, reason=REFUSED_ORDER_COUNT) == refused
            room = sample(bot, "tradingbot_venue_order_count_headroom_ratio", venue="binance", interval="10s")
            assert room <= ORDER_COUNT_FLOOR and room == budget.order_headroom("x-mbx-order-count-10s")
            refusal = bot.order_refusal(SYMBOL, False)
            assert refusal is not None and "order count" in refusal

            # The rest of the count spent by orders the gate does not stop (a flatten's, another process's): no room.
            left = LIMIT - budget.used("x-mbx-order-count-10s")
            for n in range(left):
                await broker.submit(
                    OrderRequest(f"kept-{n}", SYMBOL, Side.BUY, OrderType.LIMIT, Decimal("0.01"), price)
                )
            assert budget.order_headroom() == 0.0
            resting = [o for o in await gateway.venue.open_orders() if o.symbol == SYMBOL]
            assert len(resting) == placed + left
            status, body = await control(port, "cancel_all")
            assert status == 200, body
            await wait_for(lambda: not bot.orders, timeout=10)
            left_open = {o.client_order_id for o in await gateway.venue.open_orders()}
            assert left_open == {f"kept-{n}" for n in range(left)}  # the bot's own all canceled at no room
            assert budget.refusals == 0
        finally:
            await bot.stop()
