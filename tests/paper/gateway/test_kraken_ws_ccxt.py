"""ccxt.pro's stock kraken client (ccxt 4.5.90, unmodified: only its URLs point at the gateway) on the gateway's
WebSocket v2: watch_order_book, watch_trades, watch_ticker, watch_orders and watch_my_trades, create_order_ws,
cancel_order_ws and cancel_all_orders_ws. Needs nothing but the gateway, started per test on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ccxt.pro as ccxtpro
import pytest
from ccxt_helpers import market, running_gateway, wait_for
from gateway_helpers import API_KEY as GATEWAY_KEY
from gateway_helpers import API_SECRET as GATEWAY_SECRET
from gateway_helpers import start_gateway
from ws_helpers import pro_kraken, ws_urls

from trading_ops.cli import main

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


async def test_the_gateway_process_names_its_websocket_urls_and_its_faults_reach_ccxt_pro(tmp_path: Path) -> None:
    """`trading-ops paper-gateway` (its own process): the start-up line names both WebSocket URLs; ccxt.pro pointed
    at them streams the book; `trading-ops gateway-chaos ws_close code=1001` closes its socket, and its next
    watch_order_book opens a new one."""
    gateway = start_gateway(tmp_path / "gw")
    try:
        line = next(x for x in gateway.log.read_text().splitlines() if "WebSocket v2" in x)
        public, private = ws_urls(gateway.url)
        assert f"public {public}" in line and f"private {private}" in line and gateway.url in line
        ex = pro_kraken(gateway.url, GATEWAY_KEY, GATEWAY_SECRET)
        try:
            async with asyncio.timeout(DEADLINE):
                book = await ex.watch_order_book("BTC/USD")
                assert book["bids"][0][0] < book["asks"][0][0]
                config = tmp_path / "gw" / "gateway.yaml"
                argv = ["--config", str(config), "gateway-chaos", "ws_close", "code=1001", "--json"]
                socket = ex.clients[public]
                assert await asyncio.to_thread(main, argv) == 0
                await wait_for(socket.closed)  # ccxt.pro saw the close
                book = await ex.watch_order_book("BTC/USD")  # a new socket, subscribed again
                assert ex.clients[public] is not socket and book["bids"][0][0] < book["asks"][0][0]
        finally:
            await ex.close()
    finally:
        gateway.stop()
