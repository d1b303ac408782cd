"""The ccxt broker on Binance (trading_ops.venues.ccxt.rest, PER_SYMBOL): stock ccxt binance takes no account-wide
trades, order lookups or cancels, so the broker asks per symbol: an order looked up and canceled by its client order id
alone (its symbol unknown to the broker) on any of its symbols, an order the venue does not know is None, cancel-all
leaves nothing resting on any symbol (fills on two symbols, the same on Kraken, are in test_ccxt_broker.py). Real
parts: the gateway's Binance dialect on a free loopback port, ccxt's stock binance client."""

from __future__ import annotations

from decimal import Decimal

from binance_helpers import binance, binance_gateway

from trading_ops.bot.broker import BrokerEvents, OrderRequest, OrderStatus, OrderType, Side
from trading_ops.venues.ccxt.rest import CcxtBroker

SYMBOLS = ["BTC-USD", "ETH-USD"]


def bid(cid: str, symbol: str, price: str, quantity: str = "0.01") -> OrderRequest:
    return OrderRequest(
        client_order_id=cid,
        symbol=symbol,
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal(quantity),
        price=Decimal(price),
    )


async def test_orders_are_looked_up_and_canceled_by_client_id_on_whichever_symbol_they_rest() -> None:
    async with binance_gateway() as (gateway, dialect, base):
        placer = CcxtBroker(binance(base), SYMBOLS)
        broker = CcxtBroker(binance(base), SYMBOLS)  # a second session that never saw the orders placed
        try:
            await placer.connect(BrokerEvents())
            await broker.connect(BrokerEvents())
            quote = {s: gateway.venue.quote(s) for s in SYMBOLS}
            low = {s: str((quote[s].bid * Decimal("0.9")).quantize(Decimal("0.01"))) for s in SYMBOLS}
            await placer.submit(bid("bb-eth-1", "ETH-USD", low["ETH-USD"]))
            await placer.submit(bid("bb-btc-1", "BTC-USD", low["BTC-USD"]))
            await placer.submit(bid("bb-btc-2", "BTC-USD", low["BTC-USD"]))

            found = await broker.order_status("bb-eth-1")
            assert found is not None and (found.symbol, found.status) == ("ETH-USD", OrderStatus.ACKNOWLEDGED)
            assert await broker.order_status("bb-none") is None
            assert await broker.order_status(venue_order_id="987654") is None
            listed = await broker.open_orders()
            assert sorted(o.client_order_id for o in listed) == ["bb-btc-1", "bb-btc-2", "bb-eth-1"]

            canceled = await broker.cancel("bb-eth-1")
            assert (canceled.symbol, canceled.status) == ("ETH-USD", OrderStatus.CANCELED)
            left = await broker.cancel_all()
            assert sorted(o.client_order_id for o in left) == ["bb-btc-1", "bb-btc-2"]
            assert all(o.status is OrderStatus.CANCELED for o in left)
            assert await gateway.venue.open_orders() == []
            assert await broker.cancel_all() == []  # nothing rests: no symbol asked to cancel
            assert dialect.rest.calls.get("api/openOrders", 0) > 0
        finally:
            await placer.close()
            await broker.close()
