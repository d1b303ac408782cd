"""`trading-ops clear-halt BOT --by NAME --reason TEXT`: ask that a bot halted by a loss limit trade again; a person
other than the requester approves it through the reconciler, which then sends the bot a signed clear_halt decision."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from trading_ops import logsetup
from trading_ops.cli import EXIT_FAILURE, EXIT_OK, UsageError
from trading_ops.config import Config

# The alert that carries the request to the reconciler's `clear-halt` rule (its approval is a person's decision).
ALERTNAME = "TradingBotClearHaltRequested"
# How long Alertmanager holds the request: the rule's approval_timeout.
REQUEST_HOURS = 24
REASON_MAX = 500


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "clear-halt",
        help="ask that a bot halted by a loss limit trade again (a person approves it through the reconciler)",
        description="Post the request for a person's approval (TradingBotClearHaltRequested, through Alertmanager): "
        "once someone other than the requester approves it, the reconciler sends the bot clear_halt with a decision "
        "it signed, which the bot verifies (a loss limit's halt clears on nothing less; docs/readiness.md). The bot "
        "stays paused until resumed. Exit 0 asked, 1 Alertmanager took nothing, 2 bad usage.",
    )
    parser.add_argument("bot", metavar="BOT", help="a bot's name (bots[].name)")
    parser.add_argument("--by", required=True, metavar="NAME", help="who asks (a person other than the approver)")
    parser.add_argument("--reason", required=True, help="why the loss is understood and the bot may trade again")
    parser.set_defaults(handler=clear_halt)


def clear_halt(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    from trading_ops.readiness.cli import resolve_bots

    (bot,) = resolve_bots(config, [args.bot])
    by, reason = args.by.strip(), args.reason.strip()
    if not by or not reason:
        raise UsageError("clear-halt: --by needs a name and --reason a text")
    now = datetime.now(UTC)
    alert = {
        "labels": {
            "alertname": ALERTNAME,
            "instance": bot.instance,
            "bot": bot.name,
            "requested_by": by[:128],
            "severity": "warning",
            "service": "tradingbot",
        },
        "annotations": {
            "summary": "A person asks that a trading bot halted by a loss limit trade again.",
            "description": f"{by} asks to clear the loss-limit halt of {bot.name} ({bot.instance}): "
            f"{reason[:REASON_MAX]}. A person other than {by} approves it with trading-ops reconciler approve.",
        },
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=REQUEST_HOURS)).isoformat(),
    }
    problem = asyncio.run(_post(config, alert))
    if problem is not None:
        logsetup.report(f"trading-ops: clear-halt: Alertmanager took no request: {problem}")
        return EXIT_FAILURE
    print(json.dumps({"bot": bot.name, "requested_by": by, "alertname": ALERTNAME}))
    return EXIT_OK


async def _post(config: Config, alert: dict[str, Any]) -> str | None:
    import aiohttp

    from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError

    async with aiohttp.ClientSession() as session:
        try:
            await AlertmanagerClient(session, config.reconciler.alertmanager_urls).post_alerts([alert])
        except AlertmanagerError as exc:
            return str(exc)
    return None
