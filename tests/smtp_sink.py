"""A real SMTP server (aiosmtpd) on 127.0.0.1 for a test, keeping every message it receives, parsed."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.policy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from ports import free_port


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


@contextlib.contextmanager
def serve_smtp() -> Iterator[SMTPServer]:
    """An SMTP server on a free port, without TLS or authentication, stopped on exit."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SMTPServer("127.0.0.1", port, mailbox, controller)
    finally:
        controller.stop()
