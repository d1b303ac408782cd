"""`trading-ops openapi reconciler|bot`: print the OpenAPI 3.1 description of the reconciler's API or of a bot's (the
document the server serves at GET /api/v1/openapi.json or GET /openapi.json), to generate a client from."""

from __future__ import annotations

import argparse
from typing import Any

from trading_ops.cli import UsageError, write_output
from trading_ops.config import Config, ConfigError

SERVERS = {
    "reconciler": "the reconciler's API (served at GET /api/v1/openapi.json)",
    "bot": "a bot's API on the runtime: every command a bot offers (a bot serves its own at GET /openapi.json)",
}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "openapi",
        help="print the OpenAPI 3.1 description of the reconciler's or a bot's API (to generate a client)",
        description="Print the OpenAPI 3.1 document of an HTTP API as JSON: `reconciler` (the webhook, episodes, "
        "approvals, circuits, health, metrics) or `bot` (the control commands every bot on the runtime offers, "
        "their scopes, arguments and answers; a running bot or freqtrade sidecar serves its own, with the commands "
        "it really offers, at GET /openapi.json). It reads no configuration file.",
    )
    parser.add_argument(
        "server", choices=sorted(SERVERS), metavar="SERVER", help="; ".join(f"{k}: {v}" for k, v in SERVERS.items())
    )
    parser.add_argument("--output", "-o", default=None, metavar="FILE", help="write to FILE instead of stdout")
    parser.set_defaults(handler=print_document, without_config=True)


def print_document(args: argparse.Namespace, config: Config) -> int:
    if args.server == "reconciler":
        from trading_ops.reconciler.api_spec import document_bytes

        text = document_bytes().decode()
    else:
        from trading_ops.bot.api_spec import RuntimeCommands
        from trading_ops.bot.api_spec import document_bytes as bot_document_bytes

        text = bot_document_bytes(RuntimeCommands()).decode()
    try:
        if write_output(text, args.output):
            print(f"wrote the OpenAPI document of the {args.server}'s API to {args.output}")
    except ConfigError as exc:  # an option of this command, not the configuration: no "config:" before it
        raise UsageError(str(exc)) from None
    return 0
