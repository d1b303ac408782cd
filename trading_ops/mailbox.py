"""A local mail receiver to try Alertmanager's routes without any outside account: a real SMTP server (aiosmtpd), no
TLS, no authentication, that keeps each message in a Maildir and logs one line per message (who it is to, its
subject). `trading-ops mailbox` runs it; docker-compose.yml's `mailbox` service is the compose stack's."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import mailbox
import os
import signal
from pathlib import Path
from typing import Any

log = logging.getLogger("trading_ops.mailbox")

# aiosmtpd's own logger: a line per SMTP command at INFO (about a dozen per message); quiet but for its warnings, so
# a message is one line of ours, unless --log-level DEBUG asks for everything.
AIOSMTPD_LOGGER = "mail.log"
# The largest message kept (Alertmanager's are a few kB); a larger one is refused with SMTP's 552.
MAX_MESSAGE_BYTES = 1_000_000
HOSTNAME = "mailbox"


# A Maildir's own folders: a directory that exists without them (made by hand, a volume mounted empty) gets them.
MAILDIR_FOLDERS = ("tmp", "new", "cur")
# What a message that could not be kept is answered (SMTP's "local error in processing": the sender retries).
NOT_KEPT = "451 Requested action aborted: the mailbox could not keep it"


class MaildirProblem(Exception):
    """The Maildir cannot be used (not a directory, not writable); one line: why."""


def open_maildir(path: Path) -> mailbox.Maildir:
    """The Maildir at `path`, its folders made where missing (Python's Maildir makes them only for a directory it
    creates: an existing empty one failed every message). MaildirProblem when it cannot be."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for folder in MAILDIR_FOLDERS:
            (path / folder).mkdir(mode=0o700, exist_ok=True)
    except FileExistsError:
        raise MaildirProblem(f"{path} is not a directory") from None
    except OSError as exc:
        raise MaildirProblem(f"{path}: {exc.strerror or exc}") from None
    if not os.access(path / "tmp", os.W_OK | os.X_OK):
        raise MaildirProblem(f"{path}: not writable")
    return mailbox.Maildir(path, create=False)


class MaildirHandler:
    """aiosmtpd's DATA handler: each message into the Maildir, then one log line."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = open_maildir(maildir)
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        try:
            key = self.maildir.add(raw)
        except OSError as exc:  # the disk full, the folder removed meanwhile: one line, the sender retries
            log.error("mailbox: could not keep a message for %s: %s", ", ".join(envelope.rcpt_tos), exc)
            return NOT_KEPT
        self.received += 1
        log.info(
            "mailbox: received %s for %s: %s",
            key,
            ", ".join(envelope.rcpt_tos),
            str(message.get("Subject", "(no subject)")),
        )
        return "250 Message accepted for delivery"


async def serve(host: str, port: int, maildir: Path, started: asyncio.Event | None = None) -> None:
    """Serve SMTP on host:port until cancelled or SIGTERM/SIGINT."""
    from aiosmtpd.smtp import SMTP

    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger(AIOSMTPD_LOGGER).setLevel(logging.WARNING)
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=HOSTNAME, data_size_limit=MAX_MESSAGE_BYTES), host=host, port=port
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("mailbox: listening on %s:%d, keeping mail in %s", host, port, maildir)
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        server.close()
        await server.wait_closed()
        log.info("mailbox: stopped after %d message(s)", handler.received)
