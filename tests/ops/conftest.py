"""Fixtures of the scheduled-operations tests: a real Alertmanager, real bot control APIs (the SMTP server and the
migrated SQLite database: tests/conftest.py, shared with the readiness and reconciler tests).
What the tests import lives in modules of their own (ops_setup, smtp_sink, alertmanager_server): a module named
`conftest` is a different one in each folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alertmanager_server import Alertmanager, start_alertmanager
from ops_setup import Bot
from prometheus_client import CollectorRegistry
from reconciler_server import BOT_TOKEN
from server_process import stop

from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.db import migrate


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """A real Alertmanager (prometheus-alertmanager) on a free loopback port, for silences."""
    am = start_alertmanager(tmp_path_factory.mktemp("ops-alertmanager"))
    yield am
    stop(am.proc)


@pytest.fixture
async def bots(aiohttp_server: Any, tmp_path: Path) -> dict[str, Bot]:
    """Two bots' real control APIs (trading_ops.bot server), bot-1 and bot-2, both trading (active)."""
    out = {}
    for name in ("bot-1", "bot-2"):
        inst = Instrumentation(
            venue="paper", token=BOT_TOKEN, registry=CollectorRegistry(), data_dir=tmp_path / name, heartbeat_timeout=5
        )
        server = await aiohttp_server(inst.create_app())
        out[name] = Bot(name, str(server.make_url("")).rstrip("/"), inst)
    return out


@pytest.fixture
def migrated(database_url: str) -> str:
    migrate.upgrade(database_url)
    return database_url
