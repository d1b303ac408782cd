"""Driving the reconciler's operator console as a browser does, for the tests of its forms: a login through the form,
a page, a POST with the session's cookie and CSRF token."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from trading_ops.reconciler import keys
from trading_ops.reconciler.console import COOKIE

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def log_in(client: TestClient[Any, Any], token: str) -> str:
    """A login through the console's form: the session id its cookie carries."""
    form = await client.get("/ui/login")
    nonce = CSRF.search(await form.text())
    assert nonce is not None
    done = await client.post("/ui/login", data={"csrf": nonce.group(1), "token": token}, allow_redirects=False)
    assert done.status == 303, await done.text()
    sid = done.cookies[COOKIE].value
    client.session.cookie_jar.clear()
    return sid


async def page(client: TestClient[Any, Any], path: str, sid: str) -> tuple[int, str]:
    resp = await client.get(path, headers={"Cookie": f"{COOKIE}={sid}"}, allow_redirects=False)
    return resp.status, resp.headers.get("Location") or await resp.text()


async def post_form(client: TestClient[Any, Any], path: str, sid: str, **form: str) -> aiohttp.ClientResponse:
    """A POST of `form` with the CSRF token of the page at `path` (its form posts back to it)."""
    status, text = await page(client, path, sid)
    assert status == 200, text
    found = CSRF.search(text)
    assert found is not None
    data = {"csrf": found.group(1), **form}
    return await client.post(path, data=data, headers={"Cookie": f"{COOKIE}={sid}"}, allow_redirects=False)


def count(client: TestClient[Any, Any], model: Any) -> int:
    with client.app[keys.LEDGER].engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())
