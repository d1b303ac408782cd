"""`trading-ops mailbox`: a local SMTP receiver that keeps what Alertmanager mails in a Maildir (trading_ops.mailbox),
to try the routes with no outside account (docker-compose.yml's `mailbox` service)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from trading_ops.cli import UsageError
from trading_ops.config import Config

DEFAULT_PORT = 2525
DEFAULT_MAILDIR = "mailbox"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "mailbox",
        help="receive mail (SMTP, no TLS, no login) into a Maildir, one log line per message, to try the routes",
        description="A local mail receiver for trying Alertmanager's routes without any outside account: a real "
        "SMTP server without TLS or authentication that keeps each message in a Maildir and logs who it is to and "
        "its subject. Point Alertmanager's smtp_smarthost at it (docker compose: the `mailbox` profile and "
        "alertmanager/alertmanager-local.yml, docs/deploy-compose.md). Not a mail server for production: it "
        "accepts mail from anyone who reaches its port. It reads no configuration file.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--maildir", default=DEFAULT_MAILDIR, metavar="DIR", help=f"the Maildir (default: ./{DEFAULT_MAILDIR})"
    )
    parser.set_defaults(handler=run_mailbox, without_config=True)


def run_mailbox(args: argparse.Namespace, config: Config) -> int:
    try:
        from trading_ops.mailbox import MaildirProblem, open_maildir, serve
    except ModuleNotFoundError as exc:
        raise UsageError(f"mailbox: needs aiosmtpd ({exc.name}): install trading-ops[mailbox]") from None
    if not 0 < args.port < 65536:
        raise UsageError(f"--port: expected 1-65535, got {args.port}")
    try:
        open_maildir(Path(args.maildir))  # before listening: a Maildir that cannot be used is one line, exit 2
    except MaildirProblem as exc:
        raise UsageError(f"mailbox: --maildir: {exc}") from None
    asyncio.run(serve(args.host, args.port, Path(args.maildir)))
    return 0
