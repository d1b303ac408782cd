"""Fixtures of the reconciler tests: migrated databases, a tiny bot control API, real Prometheus and Alertmanager.
What the tests import lives in modules of their own (reconciler_server, webhook_payloads, alertmanager_server,
fake_bot, engine_runs): a module named `conftest` is a different one in each folder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from alertmanager_server import Alertmanager, start_alertmanager
from fake_bot import FakeBot
from ports import free_port
from prometheus_server import start_prometheus
from server_process import stop, wait_http

from trading_ops.db import migrate


@pytest.fixture
def migrated_db(database_url: str) -> str:
    migrate.upgrade(database_url)
    return database_url


@pytest.fixture
async def fake_bot(aiohttp_server: Any) -> FakeBot:
    bot = FakeBot()
    server = await aiohttp_server(bot.app())
    bot.url = str(server.make_url("")).rstrip("/")
    return bot


@pytest.fixture
async def pages(aiohttp_server: Any) -> AsyncIterator[tuple[str, list[Any]]]:
    """Alertmanager's API as the reconciler's escalations reach it: (its URL, every page posted), counted."""
    posted: list[Any] = []

    async def alerts(request: web.Request) -> web.Response:
        posted.extend(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/v2/alerts", alerts)
    server = await aiohttp_server(app)
    yield str(server.make_url("")).rstrip("/"), posted


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """A real single Alertmanager (no webhook receiver) for the API v2 clients: silences, posted alerts."""
    am = start_alertmanager(tmp_path_factory.mktemp("alertmanager"))
    yield am
    stop(am.proc)


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus (no scrape targets: verification uses expressions of time())."""
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    port = free_port()
    proc = start_prometheus(tmp / "prometheus.yml", tmp / "data", port)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc=proc, deadline=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
