"""Hostile input at the gateway's WebSocket: non-JSON, binary, deep nesting, a huge frame, unknown methods, a
subscribe storm and hundreds of connections from one client each get a Kraken-style error or a clean close, never
a crash nor a stuck server (another client is answered at once afterwards). Needs only the gateway, per test."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
from ccxt_helpers import running_gateway
from ws_helpers import socket, ws_urls

from trading_ops.paper.gateway.kraken.ws.connection import MAX_REFUSED
from trading_ops.paper.gateway.kraken.ws.server import MAX_CONNECTIONS_PER_ADDRESS, MAX_FRAME_BYTES


async def still_serving(url: str) -> None:
    """A new client is answered: its status, and a pong for its ping."""
    async with socket(url) as ws:
        assert (await ws.next())["channel"] == "status"
        await ws.send({"method": "ping", "req_id": 99})
        assert (await ws.next())["req_id"] == 99


async def test_malformed_frames_get_kraken_errors_and_the_socket_stays_open() -> None:
    async with running_gateway() as (_gateway, base):
        url = ws_urls(base)[0]
        async with socket(url) as ws:
            await ws.next()  # status
            for frame in (
                "not json",
                "[1, 2]",
                "{",
                "[" * 30_000 + "]" * 30_000,
                '{"method": 5}',
                '{"method": "subscribe", "params": []}',
            ):
                await ws.ws.send_str(frame)
                error = await ws.next()
                assert error == {**error, "success": False, "error": "Malformed request"}
            await ws.ws.send_bytes(b"\x00\x01binary")
            assert (await ws.next())["error"] == "Malformed request"
            await ws.send({"method": "frobnicate", "req_id": 3})
            unknown = await ws.next()
            assert (unknown["method"], unknown["req_id"], unknown["error"]) == ("frobnicate", 3, "Method not found")
            await ws.send({"method": "subscribe", "params": {"channel": "nope", "symbol": ["BTC/USD"]}, "req_id": 4})
            assert (await ws.next())["error"] == "Channel not found"
            await ws.send({"method": "ping", "req_id": 5})
            assert (await ws.next())["method"] == "pong"
        await still_serving(url)


async def test_a_huge_frame_closes_that_socket_with_1009_only() -> None:
    async with running_gateway() as (_gateway, base):
        url = ws_urls(base)[0]
        async with socket(url) as ws:
            await ws.next()
            await ws.ws.send_str('{"method": "ping", "pad": "' + "x" * MAX_FRAME_BYTES + '"}')
            msg = await ws.ws.receive(timeout=20)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            assert ws.ws.close_code == 1009
        await still_serving(url)


async def test_a_subscribe_storm_is_refused_for_its_rate_then_closed() -> None:
    async with running_gateway() as (_gateway, base):
        url = ws_urls(base)[0]
        async with socket(url) as ws:
            await ws.next()
            request = '{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD"]},"req_id":1}'
            for _ in range(MAX_REFUSED + 200):
                await ws.ws.send_str(request)
            errors = 0
            async with asyncio.timeout(60):
                with contextlib.suppress(ConnectionError):
                    while True:
                        message = await ws.next()
                        errors += message.get("error") == "Exceeded msg rate"
            assert errors == MAX_REFUSED and ws.ws.close_code == 1008
        await still_serving(url)


async def test_a_thousand_connections_from_one_client_are_capped_not_served_to_death() -> None:
    async with running_gateway() as (gateway, base):
        url = ws_urls(base)[0]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            opened: list[aiohttp.ClientWebSocketResponse] = []
            refused = 0

            async def connect() -> None:
                nonlocal refused
                try:
                    opened.append(await session.ws_connect(url))
                except aiohttp.WSServerHandshakeError as exc:
                    assert exc.status == 429
                    refused += 1

            try:
                await asyncio.gather(*(connect() for _ in range(MAX_CONNECTIONS_PER_ADDRESS + 750)))
                assert (len(opened), refused) == (MAX_CONNECTIONS_PER_ADDRESS, 750)
                assert len(gateway.websocket.connections) == MAX_CONNECTIONS_PER_ADDRESS
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await still_serving(url)
            finally:
                await asyncio.gather(*(ws.close() for ws in opened))
        await still_serving(url)  # the address's connections closed: it is served again
        assert len(gateway.websocket.connections) == 0
