"""Fixtures of the scheduled-operations tests: a real Alertmanager, real bot control APIs, a real SMTP server."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from prometheus_client import CollectorRegistry

from tests.conftest import free_port
from tests.reconciler.conftest import Alertmanager, start_alertmanager, stop
from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.config import Config, parse_config
from trading_ops.db import migrate

BOT_TOKEN = "bot-token"


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """A real Alertmanager (prometheus-alertmanager) on a free loopback port, for silences."""
    am = start_alertmanager(tmp_path_factory.mktemp("ops-alertmanager"))
    yield am
    stop(am.proc)


@dataclass
class Mailbox:
    """What the SMTP server received, as parsed messages."""

    messages: list[email.message.EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        self.messages.append(email.message_from_bytes(raw, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def wait(self, count: int = 1, deadline: float = 30.0) -> list[email.message.EmailMessage]:
        end = time.monotonic() + deadline
        while len(self.messages) < count:
            assert time.monotonic() < end, f"{len(self.messages)} message(s) arrived, expected {count}"
            time.sleep(0.05)
        return self.messages

    async def await_messages(self, count: int = 1, deadline: float = 30.0) -> list[email.message.EmailMessage]:
        end = time.monotonic() + deadline
        while len(self.messages) < count:
            assert time.monotonic() < end, f"{len(self.messages)} message(s) arrived, expected {count}"
            await asyncio.sleep(0.05)
        return self.messages


@dataclass
class SMTPServer:
    host: str
    port: int
    mailbox: Mailbox
    controller: Controller

    def mailto(self, to: str = "ops@example.com") -> str:
        """An apprise URL delivering to this server without TLS or authentication."""
        return f"mailto://{self.host}:{self.port}?from=trading-ops@example.com&to={to}&mode=insecure"


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 and a free port, keeping what it receives."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SMTPServer("127.0.0.1", port, mailbox, controller)
    finally:
        controller.stop()


@dataclass
class Bot:
    name: str
    url: str
    instrumentation: Instrumentation

    @property
    def state(self) -> str:
        return str(self.instrumentation.state.state.value)


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


def ops_config(
    tmp_path: Path,
    db_url: str,
    *,
    alertmanager_url: str = "http://127.0.0.1:9",
    bots: dict[str, Bot] | None = None,
    notify_urls: list[str] | None = None,
    **sections: Any,
) -> Config:
    (tmp_path / "bot-token").write_text(BOT_TOKEN)
    targets = {name: {"url": b.url, "token_file": str(tmp_path / "bot-token")} for name, b in (bots or {}).items()}
    data: dict[str, Any] = {
        "database": {"url": db_url},
        "reconciler": {"alertmanager_url": alertmanager_url, "targets": targets},
        **sections,
    }
    if notify_urls:
        (tmp_path / "apprise-urls").write_text("\n".join(notify_urls))
        data["notifications"] = {"urls_file": str(tmp_path / "apprise-urls")}
    return parse_config(data, base_dir=tmp_path)


@pytest.fixture
def migrated(database_url: str) -> str:
    migrate.upgrade(database_url)
    return database_url


@pytest.fixture
def migrated_sqlite(sqlite_url: str) -> str:
    migrate.upgrade(sqlite_url)
    return sqlite_url
