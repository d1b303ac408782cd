"""Shared by the gateway's WebSocket tests and benchmark: a raw aiohttp WebSocket client that reads Kraken v2
messages with Decimal numbers and waits for the one a test expects, a WebSocket token from the gateway's REST
GetWebSocketsToken, and ccxt.pro's stock kraken client with its REST and WebSocket URLs on the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
from ccxt_helpers import API_KEY, API_SECRET, kraken

from trading_ops.paper.gateway.kraken.ws.messages import dumps
from trading_ops.paper.gateway.kraken.ws.server import PRIVATE_PATH, PUBLIC_PATH

# Longest a test waits for one message (a deadline, not a measurement).
MESSAGE_DEADLINE = 20.0


def ws_urls(base: str) -> tuple[str, str]:
    """The gateway's public and private WebSocket URLs for its REST base URL."""
    ws = base.replace("http://", "ws://", 1)
    return ws + PUBLIC_PATH, ws + PRIVATE_PATH


class Socket:
    """One raw WebSocket connection: everything it received, in order, as Kraken v2 messages."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self._seen = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(dumps(message))  # Decimals as JSON numbers, as Kraken takes them

    async def next(self, deadline: float = MESSAGE_DEADLINE) -> dict[str, Any]:
        """The next message (parsed with Decimal numbers)."""
        async with asyncio.timeout(deadline):
            msg = await self.ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"not a text frame: {msg.type.name} {msg.data!r} {msg.extra!r}")
        message = json.loads(msg.data, parse_float=Decimal)
        self.received.append(message)
        return message

    async def until(
        self, match: Callable[[dict[str, Any]], bool], deadline: float = MESSAGE_DEADLINE
    ) -> dict[str, Any]:
        """The next message that `match`es (those before it are kept in `received`)."""
        async with asyncio.timeout(deadline):
            while True:
                message = await self.next(deadline)
                if match(message):
                    return message


@contextlib.asynccontextmanager
async def socket(url: str) -> AsyncIterator[Socket]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, autoping=True) as ws:
        yield Socket(ws)


async def ws_token(base: str, key: str = API_KEY, secret: str = API_SECRET) -> str:
    """A private WebSocket token from REST GetWebSocketsToken, signed with `key`."""
    ex = kraken(base, key, secret)
    try:
        return (await ex.privatePostGetWebSocketsToken())["result"]["token"]
    finally:
        await ex.close()


def pro_kraken(base: str, key: str = API_KEY, secret: str = API_SECRET, **options: Any) -> ccxtpro.kraken:
    """ccxt.pro's stock kraken client, unmodified: only its URLs (REST and WebSocket v2) point at the gateway."""
    public, private = ws_urls(base)
    return ccxtpro.kraken(
        {
            "apiKey": key,
            "secret": secret,
            "enableRateLimit": False,
            "timeout": 5000,
            "urls": {
                "api": {
                    "public": base,
                    "private": base,
                    "ws": {"publicV2": public, "privateV2": private, "public": public, "private": private},
                }
            },
            **options,
        }
    )
