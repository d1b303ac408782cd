"""Every parameter of every public and private method of the Kraken-compatible gateway, walked with huge and hostile
values (issue 47): thousands of digits, exponents no float holds, NaN, digits that are not ASCII, underscores, NUL,
megabyte-sized strings. No answer is a 5xx; every refusal is Kraken's own `{"error": ["E...:..."]}`. The parameters
are read from the gateway's code (every `params` key its handlers read), the methods from the gateway itself. Each
private call is signed with a fresh nonce, as a real client's. Needs nothing but the gateway, on a free port."""

from __future__ import annotations

import ast
import base64
import inspect
import re
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
from ccxt_helpers import API_KEY, API_SECRET, running_gateway

from trading_ops.paper.gateway.kraken import account as kraken_account
from trading_ops.paper.gateway.kraken import api as kraken_api
from trading_ops.paper.gateway.kraken import market as kraken_market
from trading_ops.paper.gateway.kraken.api import sign

HUGE = "9" * 5000
# Public methods read the query string, which aiohttp takes up to 8190 bytes a line (a longer one: its own 400).
LONG_FOR_A_URL = "A" * 6000
HOSTILE = [
    HUGE,
    "-" + HUGE,
    "0." + HUGE,
    "1e999999",
    "-1e999999",
    "1e-999999",
    "NaN",
    "-Infinity",
    "inf",
    "1_000",
    "0x1F",
    "²",
    "٣",
    " 7 ",
    "-1",
    "0",
    "\x00",
    "%",
    LONG_FOR_A_URL,
]
# Private methods read a form body (the gateway takes it up to its own limit).
HOSTILE_BODIES = [*HOSTILE, "A" * 100_000]
# A Kraken error: a category starting with E or W, a colon, a message (EGeneral:Invalid arguments:volume).
KRAKEN_ERROR = re.compile(r"^[EW][A-Za-z]+:\S.*$")
# What an order needs besides the parameter under test, so a hostile value reaches every check past the first.
ORDER = {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "100", "validate": "true"}


def parameters() -> set[str]:
    """Every key the gateway's handlers read from a request's parameters: `params.get("x")`, `params["x"]`, and
    `f(params, "x", ...)` (decimal_param, count_param, flag, ...), in the modules that answer the methods."""
    names: set[str] = set()
    for module in (kraken_account, kraken_market, kraken_api):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Name):
                    holder, key = func.value.id, node.args[0]
                elif isinstance(node.args[0], ast.Name) and len(node.args) > 1:
                    holder, key = node.args[0].id, node.args[1]
                else:
                    continue
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
                holder, key = node.value.id, node.slice
            else:
                continue
            if holder == "params" and isinstance(key, ast.Constant) and isinstance(key.value, str):
                names.add(key.value)
    return names


def check(answer: tuple[int, Any], where: str) -> None:
    status, body = answer
    assert status < 500, (where, status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), list), (where, status, body)
    for error in body["error"]:
        assert isinstance(error, str) and KRAKEN_ERROR.match(error), (where, error)


async def test_every_parameter_of_every_method_with_hostile_values_gets_a_kraken_error_never_a_5xx() -> None:
    params = parameters()
    # The walk covers what the methods really read (a sample: a change that hides them from the walk fails here).
    assert {"timeout", "pair", "volume", "price", "txid", "since", "count", "interval", "ofs", "start"} <= params
    secret = base64.b64decode(API_SECRET)
    nonce = time.time_ns()
    calls = 0
    async with running_gateway() as (gateway, base), aiohttp.ClientSession() as session:

        async def private(method: str, fields: dict[str, str]) -> tuple[int, Any]:
            nonlocal nonce, calls
            nonce += 1
            body = urlencode({"nonce": str(nonce), **fields})
            path = f"/0/private/{method}"
            headers = {
                "API-Key": API_KEY,
                "API-Sign": sign(secret, path, str(nonce), body),
                "Content-Type": "application/x-www-form-urlencoded",
            }
            calls += 1
            async with session.post(f"{base}{path}", data=body, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)

        async def public(method: str, fields: dict[str, str]) -> tuple[int, Any]:
            nonlocal calls
            calls += 1
            async with session.get(f"{base}/0/public/{method}", params=fields) as resp:
                return resp.status, await resp.json(content_type=None)

        for method in gateway._private:
            for name in sorted(params):
                for value in HOSTILE_BODIES:
                    fields = {**(ORDER if method == "AddOrder" else {"pair": "XBTUSD"}), name: value}
                    check(await private(method, fields), f"private {method} {name}={value[:20]!r}")
        for method in gateway._public:
            for name in sorted(params):
                for value in HOSTILE:
                    check(
                        await public(method, {"pair": "XBTUSD", name: value}), f"public {method} {name}={value[:20]!r}"
                    )
        # The review's case, exactly: Kraken's bare "Invalid arguments", as for every other malformed timeout.
        for value in (HUGE, "86400", "-5", "1.5", "٣"):
            assert (await private("CancelAllOrdersAfter", {"timeout": value}))[1]["error"] == [
                "EGeneral:Invalid arguments"
            ], value
        assert (await private("CancelAllOrdersAfter", {"timeout": "0"}))[1]["error"] == []
        # A nonce of thousands of digits is an invalid nonce, not a crash.
        body = f"nonce={HUGE}"
        headers = {"API-Key": API_KEY, "API-Sign": sign(secret, "/0/private/Balance", HUGE, body)}
        async with session.post(f"{base}/0/private/Balance", data=body, headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["error"] == ["EAPI:Invalid nonce"]
    print({"gateway_hostile_calls": calls, "parameters": len(params), "values": len(HOSTILE)})
