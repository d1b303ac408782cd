"""Hostile input to the gateway's Binance dialect: malformed parameters, signatures, bodies and socket messages each
answer one of Binance's numbered errors (a 4xx), never a 5xx, and the gateway keeps serving. Real parts: the gateway's
aiohttp app on a free loopback port, aiohttp's real HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from urllib.parse import urlencode

import aiohttp
import pytest
from binance_helpers import BINANCE_KEY, BINANCE_SECRET, binance_gateway

from trading_ops.paper.gateway.binance.dialect import STREAM_PATH, WS_API_PATH


def signed_query(params: dict[str, str], secret: str = BINANCE_SECRET) -> str:
    query = urlencode({**params, "timestamp": str(int(time.time() * 1000))})
    return query + "&signature=" + hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()


PUBLIC = [
    "depth?symbol=BTCUSD&limit=%C2%B2",  # a superscript two is a digit to str.isdigit
    "depth?symbol=BTCUSD&limit=99999999999999999999999",
    "depth?symbol=BTCUSD&limit=0",
    "depth",
    "depth?symbol=%F0%9F%92%A5",
    "trades?symbol=BTCUSD&limit=-1",
    "aggTrades?symbol=BTCUSD&startTime=%C2%B2&limit=5",
    "ticker/24hr?symbols=%5B%22NOPE%22%5D",
    "ticker/price?symbols=%5B%5D",
    "exchangeInfo?symbol=btc",
    "nosuchendpoint",
]
SIGNED = [
    {"symbol": "BTCUSD", "side": "BUY", "type": "LIMIT", "quantity": "1e3", "price": "1", "timeInForce": "GTC"},
    {"symbol": "BTCUSD", "side": "BUY", "type": "LIMIT", "quantity": "0.01", "price": "NaN", "timeInForce": "GTC"},
    {"symbol": "BTCUSD", "side": "BUY", "type": "LIMIT", "quantity": "0.01", "price": "60000", "timeInForce": "IOC"},
    {"symbol": "BTCUSD", "side": "BUY", "type": "LIMIT", "quantity": "0.01", "price": "60000"},
    {"symbol": "BTCUSD", "side": "HOLD", "type": "LIMIT", "quantity": "0.01"},
    {"symbol": "BTCUSD", "side": "BUY", "type": "STOP", "quantity": "0.01"},
    {"symbol": "BTCUSD", "side": "BUY", "type": "MARKET", "quantity": "1" + "0" * 30},
    {"symbol": "BTCUSD", "side": "BUY", "type": "MARKET", "quantity": "0.01", "newOrderRespType": "ALL"},
    {"symbol": "BTCUSD", "side": "BUY", "type": "MARKET", "quantity": "0.01", "newClientOrderId": "é"},
    {"symbol": "BTCUSD", "side": "BUY", "type": "MARKET", "quantity": "0.01", "recvWindow": "60001"},
    {"symbol": "BTCUSD", "side": "BUY", "type": "MARKET", "quantity": "0.01", "recvWindow": "²"},
]


async def test_malformed_requests_answer_binance_errors_never_a_5xx() -> None:
    async with binance_gateway() as (_gw, _dialect, base), aiohttp.ClientSession() as session:
        for path in PUBLIC:
            async with session.get(f"{base}/api/v3/{path}") as r:
                body = await r.json()
                assert 400 <= r.status < 500 and isinstance(body["code"], int) and body["msg"], (path, r.status, body)
        headers = {"X-MBX-APIKEY": BINANCE_KEY}
        for params in SIGNED:
            async with session.post(f"{base}/api/v3/order?{signed_query(params)}", headers=headers) as r:
                body = await r.json()
                assert r.status == 400 and body["code"] < 0, (params, r.status, body)
        for query in ("signature=zz", "a=%ZZ&signature=1", "timestamp=1&signature=" + "0" * 64, "&&&", "x" * 5000):
            async with session.get(f"{base}/api/v3/account?{query}", headers=headers) as r:
                assert r.status == 400, (query, await r.text())
        async with session.post(f"{base}/api/v3/order", headers=headers, data=b"\xff\xfe" * 10) as r:
            assert r.status == 400
        async with session.post(f"{base}/api/v3/order", headers=headers, data=b"a" * 200_000) as r:
            assert r.status == 400
        async with session.get(f"{base}/api/v3/account?{signed_query({})}", headers={"X-MBX-APIKEY": "é"}) as r:
            assert r.status == 401
        async with session.get(f"{base}/api/v3/ping") as r:
            assert r.status == 200  # still serving


@pytest.mark.parametrize("path", [STREAM_PATH + "/0", WS_API_PATH])
async def test_garbage_on_the_sockets_is_answered_and_the_socket_stays(path: str) -> None:
    async with binance_gateway() as (_gw, _dialect, base), aiohttp.ClientSession() as session:
        async with session.ws_connect("ws" + base.removeprefix("http") + path) as ws:
            for junk in (
                "not json",
                "[]",
                '{"method": 5}',
                '{"method": "SUBSCRIBE", "params": ["doge@depth"]}',
                '{"method": "userDataStream.subscribe.signature", "params": {"apiKey": "x"}}',
                '{"method": "NOPE", "id": 1}',
                '{"method": "ping", "params": [1]}',
            ):
                await ws.send_str(junk)
                answer = (await asyncio.wait_for(ws.receive(), 10)).json()
                assert "error" in answer, (junk, answer)
            await ws.send_str(
                '{"method": "LIST_SUBSCRIPTIONS", "id": 9}' if path != WS_API_PATH else '{"method": "ping", "id": 9}'
            )
            answer = (await asyncio.wait_for(ws.receive(), 10)).json()
            assert answer["id"] == 9 and "error" not in answer
