"""ccxt.pro's stock kraken client (ccxt 4.5.90, unmodified: only its URLs point at the gateway) on the gateway's
WebSocket v2: watch_order_book, watch_trades, watch_ticker, watch_orders and watch_my_trades, create_order_ws,
cancel_order_ws and cancel_all_orders_ws. Needs nothing but the gateway, started per test on 127.0.0.1."""

from __future__ import annotations

import asyncio

import ccxt.pro as ccxtpro
import pytest
from ccxt_helpers import market, running_gateway, wait_for
from ws_helpers import pro_kraken

MOVING = {"tick_interval": 0.02, "volatility": 0.001}
DEADLINE = 20.0


async def test_ccxt_pro_watches_the_book_trades_and_ticker() -> None:
    async with running_gateway(**MOVING) as (gateway, base):
        ex = pro_kraken(base)
        try:
            async with asyncio.timeout(DEADLINE):
                book = await ex.watch_order_book("BTC/USD", 10)
                assert len(book["asks"]) == len(book["bids"]) == 10 and book["bids"][0][0] < book["asks"][0][0]
                first = book["nonce"], book["asks"][0][0], book["timestamp"]
                while (book["nonce"], book["asks"][0][0], book["timestamp"]) == first:
                    book = await ex.watch_order_book("BTC/USD", 10)
                quote = gateway.venue.quote("BTC-USD")
                assert abs(book["asks"][0][0] - float(quote.ask)) < float(quote.ask) * 0.01
                trades = asyncio.ensure_future(ex.watch_trades("ETH/USD"))
                ticker = asyncio.ensure_future(ex.watch_ticker("ETH/USD"))
                await asyncio.sleep(0.3)  # both subscribed before the fill they are to see
                await gateway.venue.submit(market("m-1", "ETH-USD"))
                fill = (await gateway.venue.recent_fills())[-1]
                seen = await trades
                while seen[-1]["id"] != fill.trade_id.lstrip("T"):
                    seen = await ex.watch_trades("ETH/USD")
                assert seen[-1]["price"] == float(fill.price) and seen[-1]["side"] == "buy"
                await ticker  # the subscription's snapshot, or the fill's update: ccxt keeps the last one
                await wait_for(lambda: ex.tickers["ETH/USD"]["last"] == float(fill.price))
        finally:
            await ex.close()


async def test_ccxt_pro_trades_over_the_socket_and_watches_its_orders_and_fills() -> None:
    async with running_gateway() as (gateway, base):
        ex = pro_kraken(base)
        watcher = pro_kraken(base)
        try:
            async with asyncio.timeout(DEADLINE):
                await ex.load_markets()
                mine = asyncio.ensure_future(watcher.watch_my_trades())
                await asyncio.sleep(0.3)
                resting = await ex.create_order_ws("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "r-1"})
                assert resting["id"] and any(o.venue_order_id == resting["id"] for o in gateway.venue.orders())
                ask = gateway.venue.quote("ETH-USD").ask
                crossing = await ex.create_order_ws("ETH/USD", "limit", "buy", 0.5, float(ask + 5))
                trades = await mine
                fill = (await gateway.venue.recent_fills())[-1]
                assert trades[-1]["id"] == fill.trade_id and trades[-1]["order"] == crossing["id"]
                assert trades[-1]["amount"] == 0.5 and trades[-1]["takerOrMaker"] == "taker"
                assert trades[-1]["fee"] == {"cost": float(fill.fee), "currency": "USD"}

                orders = asyncio.ensure_future(watcher.watch_orders())
                await asyncio.sleep(0.3)
                canceled = await ex.cancel_order_ws(resting["id"])
                assert canceled["result"] == {"order_id": resting["id"]}
                seen = await orders
                while seen[-1]["status"] != "canceled":
                    seen = await watcher.watch_orders()
                assert seen[-1]["id"] == resting["id"]
                await ex.create_order_ws("BTC/USD", "limit", "buy", 0.01, 1000)
                assert (await ex.cancel_all_orders_ws())["result"] == {"count": 1}
                assert await gateway.venue.open_orders() == []
                # Kraken's string; ccxt.pro's WebSocket table only knows a longer one, so it raises ExchangeError.
                with pytest.raises(ccxtpro.ExchangeError, match="^EOrder:Insufficient funds$"):
                    await ex.create_order_ws("BTC/USD", "limit", "buy", 1000, 1000)
        finally:
            await ex.close()
            await watcher.close()
