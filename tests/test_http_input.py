"""One way to read a request (trading_ops.http_input) and one guard on every answer (trading_ops.http_guard), tried
against the real servers besides the reconciler (tests/reconciler/test_reconciler_hostile_input.py has it): a bot's
control API, the freqtrade sidecar's (the same server over a sidecar) and the Kraken-compatible gateway. JSON nested
too deep, bodies chunked past their limit, numbers no field holds: each a 4xx (or Kraken's own error), never a 5xx,
and every answer, a command's 500 included, with the security headers. Each server runs on a real port; raw sockets
send what no HTTP client does. No other server is needed (the sidecar's freqtrade is an address nothing listens on)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from ccxt_helpers import API_KEY, API_SECRET, CONTROL_TOKEN, running_gateway
from prometheus_client import CollectorRegistry
from raw_http import chunked_request

from trading_ops.bot.control import CommandError
from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.bot.server import MAX_CONTROL_BODY_BYTES
from trading_ops.http_guard import API_HEADERS
from trading_ops.integrations.freqtrade.app import FreqtradeSidecar, create_app
from trading_ops.paper.gateway.kraken.api import sign

TOKEN = "control-token-of-the-hostile-input-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Deeper than Python's recursion limit, and under every body limit (64 KiB).
DEEP = "[" * 20_000 + "]" * 20_000
# Bodies that are JSON no client of ours sends: each a 400 naming what is wrong.
NOT_OURS = (DEEP, '{"a":' * 40 + "1" + "}" * 40, '{"reason": 1e999}', '{"n": ' + "9" * 5000 + "}", "NaN")


async def bot_server(aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    """A bot's server (the library's Instrumentation) with a command that echoes its arguments or raises."""
    inst = Instrumentation(venue="paper", token=TOKEN, registry=CollectorRegistry(), data_dir=tmp_path)

    async def echo(args: dict[str, Any]) -> dict[str, Any]:
        if "fail" in args:
            raise CommandError("asked to fail")
        if "explode" in args:
            raise RuntimeError("boom")
        return {"echo": args}

    inst.control.register("reconnect", echo)
    client: TestClient[Any, Any] = await aiohttp_client(inst.create_app())
    return client


async def sidecar_server(aiohttp_client: Any) -> TestClient[Any, Any]:
    """The freqtrade sidecar's server, its freqtrade an address nothing listens on (the control API answers all
    the same: `status` says freqtrade is down)."""
    watched = FreqtradeSidecar(
        name="ft",
        url="http://127.0.0.1:9",
        username="u",
        password="p",
        token=TOKEN,
        registry=CollectorRegistry(),
        poll_interval=60,
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(watched))
    return client


@pytest.fixture
async def bot(aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    return await bot_server(aiohttp_client, tmp_path)


@pytest.fixture(params=["bot", "sidecar"])
async def server(request: pytest.FixtureRequest, aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    """A bot's server, or the freqtrade sidecar's (the same server over a sidecar)."""
    if request.param == "bot":
        return await bot_server(aiohttp_client, tmp_path)
    return await sidecar_server(aiohttp_client)


def has_security_headers(headers: Any) -> bool:
    return all(name in headers for name in API_HEADERS)


async def test_json_nested_too_deep_or_with_absurd_numbers_is_a_400(server: TestClient[Any, Any]) -> None:
    for body in NOT_OURS:
        resp = await server.post("/control/pause", data=body, headers=AUTH)
        assert resp.status == 400, (body[:20], resp.status, await resp.text())
        answer = await resp.json()
        assert answer["ok"] is False and "JSON" in answer["error"]
        assert has_security_headers(resp.headers)
    # And the server is still there, the command taken as it should be.
    resp = await server.post("/control/status", headers=AUTH)
    assert resp.status == 200 and has_security_headers(resp.headers)


async def test_a_chunked_body_past_the_limit_is_a_413(bot: TestClient[Any, Any]) -> None:
    port = bot.server.port
    assert port is not None
    chunk = b" " * 8192
    status, headers, _ = await chunked_request(
        port, "POST", "/control/reconnect", [f"Authorization: Bearer {TOKEN}".encode()], [chunk] * 12
    )
    assert status == 413 and (MAX_CONTROL_BODY_BYTES < 12 * len(chunk))
    assert has_security_headers({k.title(): v for k, v in headers.items()} | headers)
    status, _, body = await chunked_request(
        port, "POST", "/control/reconnect", [f"Authorization: Bearer {TOKEN}".encode()], [b'{"a":', b" 1}"]
    )
    assert status == 200 and b'"echo": {"a": 1}' in body


async def test_a_commands_500_and_a_routers_404_carry_the_security_headers(bot: TestClient[Any, Any]) -> None:
    resp = await bot.post("/control/reconnect", json={"explode": 1}, headers=AUTH)
    assert resp.status == 500 and has_security_headers(resp.headers)
    for path in ("/nothing-here", "/metrics", "/healthz"):
        resp = await bot.get(path)
        assert has_security_headers(resp.headers), path


async def test_the_gateway_answers_absurd_numbers_with_krakens_errors_never_a_500() -> None:
    async with running_gateway() as (_gateway, base), aiohttp.ClientSession() as session:
        for query in (
            "Depth?pair=XBTUSD&count=" + "9" * 5000,
            "Depth?pair=XBTUSD&count=%C2%B2",  # `²`: a digit to str.isdigit, none to int()
            "Trades?pair=XBTUSD&count=" + "9" * 5000,
            "Trades?pair=XBTUSD&since=1e999999",
            "OHLC?pair=XBTUSD&interval=" + "9" * 5000,
            "Spread?pair=XBTUSD&since=" + "9" * 5000,
        ):
            async with session.get(f"{base}/0/public/{query}") as r:
                assert r.status == 200 and has_security_headers(r.headers), query[:30]
                errors = (await r.json())["error"]
                assert len(errors) == 1 and errors[0].startswith("EGeneral:Invalid arguments"), query[:30]
        secret = base64.b64decode(API_SECRET)
        url = f"{base}/0/private/Balance"
        for nonce in ("9" * 5000, str(10**18) + "&ofs=" + "9" * 5000):
            body = f"nonce={nonce}"
            n = nonce.partition("&")[0]
            headers = {"API-Key": API_KEY, "API-Sign": sign(secret, "/0/private/Balance", n, body)}
            async with session.post(url, data=body, headers=headers) as r:
                assert r.status == 200, nonce[:30]
        async with session.post(
            f"{base}/chaos/rate_limit", data=DEEP, headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}
        ) as r:
            assert r.status == 400 and has_security_headers(r.headers)
        async with session.post(f"{base}/0/private/Balance", data=b"nonce=1&x=\xff\xfe") as r:
            assert r.status == 200 and (await r.json())["error"]
