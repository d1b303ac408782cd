"""The Binance dialect's streams against ccxt.pro's stock binance client (its URLs pointed at the gateway, nothing
else changed): the diff-depth book kept in sync with REST snapshots by update ids, trades, tickers and the best bid
and ask, and orders, trades and balances over the user data stream as the client subscribes to it (the WebSocket
API's `userDataStream.subscribe.signature`), a fill included, and every fill of a burst pushed with none held back;
and the listen-key stream Binance also offers. Real parts: the gateway's aiohttp app on a free loopback port,
ccxt.pro's real client, aiohttp's real WebSocket client."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import aiohttp
import ccxt
import pytest
from binance_helpers import BINANCE_KEY, BINANCE_SECRET, binance, binance_gateway, binance_pro

from trading_ops.paper.gateway.binance.dialect import STREAM_PATH, WS_API_PATH

MOVING = {"volatility": 0.001}  # the market moves at each tick the test makes (none by itself: tick_interval 3600)


async def rest_depth(base: str, symbol: str = "BTCUSD", limit: int = 20) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/api/v3/depth?symbol={symbol}&limit={limit}") as r,
    ):
        return await r.json()


def levels(side: list[list[Any]], n: int = 20) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q, *_ in side[:n]]


async def started(coro: Any) -> asyncio.Task[Any]:
    """A watch started, given a moment to subscribe (its answer is awaited later)."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0.3)
    return task


async def test_watched_order_book_stays_in_sync_with_rest_by_update_ids() -> None:
    async with binance_gateway(**MOVING) as (gw, dialect, base):
        ex = binance_pro(base)
        try:
            first = await started(ex.watch_order_book("BTC/USD"))
            await gw.venue.tick()  # a diff the client buffers until its snapshot, then applies
            book = await asyncio.wait_for(first, 10)
            for _ in range(5):
                await gw.venue.tick()
                book = await asyncio.wait_for(ex.watch_order_book("BTC/USD"), 10)
                snapshot = await rest_depth(base)
                assert book["nonce"] == snapshot["lastUpdateId"] == dialect.market.books["BTCUSD"].update_id
                assert levels(book["bids"]) == levels(snapshot["bids"])
                assert levels(book["asks"]) == levels(snapshot["asks"])
        finally:
            await ex.close()


async def test_watched_trades_ticker_and_best_bid_ask() -> None:
    async with binance_gateway(**MOVING) as (gw, _dialect, base):
        ex = binance_pro(base)
        try:
            await ex.load_markets()
            trades = await started(ex.watch_trades("ETH/USD"))
            ticker = await started(ex.watch_ticker("BTC/USD"))
            bids_asks = await started(ex.watch_bids_asks(["BTC/USD"]))
            order = await ex.create_order("ETH/USD", "market", "buy", 0.5)
            seen = await asyncio.wait_for(trades, 10)
            assert [(t["side"], t["amount"], t["price"]) for t in seen] == [("buy", 0.5, order["average"])]
            quote = await gw.venue.tick()
            btc = quote["BTC-USD"]
            assert (await asyncio.wait_for(ticker, 10))["last"] == float(btc.mid.quantize(btc.bid - btc.bid + 0))
            best = (await asyncio.wait_for(bids_asks, 10))["BTC/USD"]
            assert (best["bid"], best["ask"]) == (float(btc.bid), float(btc.ask))
        finally:
            await ex.close()


async def test_orders_trades_and_balance_stream_over_the_user_data_stream_with_a_fill() -> None:
    async with binance_gateway(**MOVING) as (gw, dialect, base):
        ex = binance_pro(base)
        try:
            await ex.load_markets()
            orders = await started(ex.watch_orders("BTC/USD"))
            balance = await started(ex.watch_balance())
            mine = await started(ex.watch_my_trades("BTC/USD"))
            subscribed = dialect.users.subscribers
            assert [s.subscription_id is not None for s in subscribed] == [True]  # the WebSocket API's, no listen key
            assert dialect.users.listen_keys == {}
            resting = await ex.create_order("BTC/USD", "limit", "buy", 0.01, 64000, {"clientOrderId": "stream-1"})
            first = await asyncio.wait_for(orders, 10)
            assert [(o["id"], o["status"], o["clientOrderId"]) for o in first] == [(resting["id"], "open", "stream-1")]
            held = await asyncio.wait_for(balance, 10)
            assert held["USD"]["used"] > 640
            orders = await started(ex.watch_orders("BTC/USD"))
            balance = await started(ex.watch_balance())
            await gw.venue.gap_price("BTC-USD", -0.05)  # the market falls through the bid: it fills
            fill = (await asyncio.wait_for(mine, 10))[-1]
            assert (fill["order"], fill["amount"], fill["side"]) == (resting["id"], 0.01, "buy")
            filled = await asyncio.wait_for(orders, 10)
            assert (filled[-1]["status"], filled[-1]["filled"]) == ("closed", 0.01)
            after = await asyncio.wait_for(balance, 10)
            assert after["BTC"]["free"] == 0.01
            assert (await ex.fetch_balance())["BTC"]["free"] == 0.01  # REST says the same
        finally:
            await ex.close()


async def test_a_listen_key_streams_the_account_and_lapses_unless_kept_alive() -> None:
    async with binance_gateway() as (_gw, dialect, base):
        headers = {"X-MBX-APIKEY": BINANCE_KEY}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/api/v3/userDataStream", headers=headers) as r:
                assert r.status == 200
                key = (await r.json())["listenKey"]
            assert len(key) == 60
            async with session.put(f"{base}/api/v3/userDataStream", headers=headers, data={"listenKey": key}) as r:
                assert r.status == 200 and await r.json() == {}
            async with session.put(f"{base}/api/v3/userDataStream", headers=headers, data={"listenKey": "x" * 60}) as r:
                assert r.status == 400 and (await r.json())["code"] == -1125
            ws_url = "ws" + base.removeprefix("http") + f"{STREAM_PATH}/{key}"
            async with session.ws_connect(ws_url) as ws:
                ex = binance(base)
                try:
                    await ex.create_order("ETH/USD", "market", "buy", 0.5)
                finally:
                    await ex.close()
                kinds = []
                while "TRADE" not in kinds:
                    event = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
                    kinds.append(event.get("x", event["e"]))
                assert kinds[0] == "NEW" and "outboundAccountPosition" in kinds
                dialect.users.expire(dialect.users.listen_keys[key].expires)  # its 60 minutes run out
                lapsed = {}
                while lapsed.get("e") != "listenKeyExpired":  # after the last balance event of the fill
                    lapsed = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
                assert lapsed == {"e": "listenKeyExpired", "E": lapsed["E"], "listenKey": key}
                assert (await asyncio.wait_for(ws.receive(), 10)).type == aiohttp.WSMsgType.CLOSE
            async with session.put(f"{base}/api/v3/userDataStream", headers=headers, data={"listenKey": key}) as r:
                assert (await r.json())["code"] == -1125  # gone: a client asks for a new one
            async with session.post(f"{base}/api/v3/userDataStream") as r:
                assert r.status == 401 and (await r.json())["code"] == -2014


async def test_a_user_data_stream_subscription_with_a_wrong_signature_is_refused() -> None:
    async with binance_gateway() as (_gw, _dialect, base):
        ex = binance_pro(base, secret="not the secret")
        try:
            await ex.load_markets()
        except ccxt.AuthenticationError:
            pass  # load_markets' signed calls refuse the secret too: the stream's refusal is what counts here
        ex.set_markets(list((await _markets(base)).values()))
        try:
            with pytest.raises(Exception) as raised:
                await asyncio.wait_for(ex.watch_orders(), 10)
            # ccxt.pro 4.5.90 raises the AuthenticationError, then a KeyError while it forgets the subscription twice
            # (handle_ws_error, then the subscribe's own clean-up): the refusal is in the chain.
            chain, error = [], raised.value
            while error is not None:
                chain.append(error)
                error = error.__context__
            refused = [e for e in chain if isinstance(e, ccxt.AuthenticationError)]
            assert refused and "-1022" in str(refused[0])
        finally:
            await ex.close()


async def _markets(base: str) -> dict[str, Any]:
    loader = binance(base)
    try:
        return await loader.load_markets()
    finally:
        await loader.close()


BURST = 8


async def test_every_fill_of_a_burst_is_pushed_on_the_user_stream_before_a_later_answer_on_its_socket() -> None:
    """The gateway holds no execution report back: a burst of market orders placed over REST, then a `ping` on the
    user stream's socket; every fill's TRADE report comes before the ping's answer (the socket sends in order, and each
    report was queued while its order was placed), the last fill's included. Read with aiohttp's own WebSocket client,
    so that nothing of a client library's stands between the gateway and what it sent."""
    async with binance_gateway() as (_gw, dialect, base), aiohttp.ClientSession() as session:
        url = "ws" + base.removeprefix("http") + WS_API_PATH
        async with session.ws_connect(url) as ws:
            params = {"apiKey": BINANCE_KEY, "timestamp": str(dialect.now_ms())}
            payload = "&".join(f"{k}={params[k]}" for k in sorted(params))
            signature = hmac.new(BINANCE_SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
            request = {"id": "sub", "method": "userDataStream.subscribe.signature"}
            await ws.send_json({**request, "params": {**params, "signature": signature}})
            assert (await asyncio.wait_for(ws.receive_json(), 10))["status"] == 200
            ex = binance(base)
            try:
                placed = [str((await ex.create_order("ETH/USD", "market", "buy", 0.1))["id"]) for _ in range(BURST)]
                await ws.send_json({"id": "after-the-burst", "method": "ping"})
                filled, trades = [], []
                while (message := await asyncio.wait_for(ws.receive_json(), 10)).get("id") != "after-the-burst":
                    event = message["event"]
                    if event["e"] == "executionReport" and event["x"] == "TRADE":
                        filled.append(str(event["i"]))
                        trades.append(str(event["t"]))
                assert filled == placed  # one fill each, in the order placed, none held back
                assert trades == [t["id"] for t in await ex.fetch_my_trades("ETH/USD")]  # the venue's every trade
            finally:
                await ex.close()
