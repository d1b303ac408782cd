"""Every answer of every server we ship carries the security headers, aiohttp's own included (issue 47): the 400 its
HTTP parser writes before any application sees the request (a malformed request line, a header line past its limit,
broken chunk framing), and every 429 says when to come back (Retry-After). Raw bytes on a socket, since no HTTP
client sends these. The real reconciler (SQLite), the Kraken-compatible gateway and a bot's control server, each on a
real port of 127.0.0.1; no other server is needed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from ccxt_helpers import running_gateway
from prometheus_client import CollectorRegistry
from reconciler_server import make_config

from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.db import migrate
from trading_ops.http_guard import API_HEADERS, guard
from trading_ops.reconciler.app import create_app as reconciler_app

# What no client sends: the request and how the HTTP layer must answer (its status).
BROKEN = {
    "a malformed request line": (b"GET /metrics HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    "a method of bytes": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "a header line past the limit": (
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
        400,
    ),
    "broken chunk framing": (
        b"POST /api/v1/alertmanager HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "a chunk longer than it says": (
        b"POST /control/status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n",
        400,
    ),
}


async def raw(port: int, data: bytes) -> tuple[int, dict[str, str]]:
    """Send `data` to 127.0.0.1:`port` as it is; the answer's status and headers (names lower-cased)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in head[1:]))
    return int(head[0].split()[1]), headers


async def check_early_answers(port: int, server: str) -> None:
    for what, (data, status) in BROKEN.items():
        got, headers = await raw(port, data)
        assert got == status, (server, what, got)
        missing = [name for name in API_HEADERS if name.lower() not in headers]
        assert not missing, (server, what, missing, headers)


async def test_the_reconcilers_early_answers_carry_the_security_headers(tmp_path: Path, sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    server = TestServer(reconciler_app(make_config(tmp_path, sqlite_url)), host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        await check_early_answers(server.port, "reconciler")
    finally:
        await server.close()


async def test_the_gateways_early_answers_carry_the_security_headers() -> None:
    async with running_gateway() as (_gateway, base):
        await check_early_answers(int(base.rsplit(":", 1)[1]), "gateway")


async def test_a_bots_early_answers_carry_the_security_headers(tmp_path: Path) -> None:
    instrumentation = Instrumentation(venue="paper", token="a-control-token-long-enough", registry=CollectorRegistry())
    server = TestServer(instrumentation.create_app(), host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        await check_early_answers(server.port, "bot")
    finally:
        await server.close()


async def test_every_429_says_when_to_come_back(aiohttp_client: Any) -> None:
    async def throttled(_request: web.Request) -> web.Response:
        raise web.HTTPTooManyRequests(text="slow down")

    async def says_its_own(_request: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "30"})

    app = web.Application()
    app.router.add_get("/throttled", throttled)
    app.router.add_get("/own", says_its_own)
    guard(app)
    client = await aiohttp_client(app)
    resp = await client.get("/throttled")
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert all(name in resp.headers for name in API_HEADERS)
    resp = await client.get("/own")
    assert resp.status == 429 and resp.headers["Retry-After"] == "30"
