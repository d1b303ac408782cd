"""`trading-ops clear-halt BOT --reason TEXT`: ask, with your own token, that a bot halted by a loss limit trade again;
a person other than the requester approves it through the reconciler, which then sends the bot a signed clear_halt
decision (the bot clears such a halt on nothing less)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from trading_ops import logsetup
from trading_ops.cli import EXIT_FAILURE, EXIT_OK, UsageError
from trading_ops.clients.reconciler import add_token_options
from trading_ops.config import Config

REASON_MAX = 500


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "clear-halt",
        help="ask that a bot halted by a loss limit trade again (another person approves it through the reconciler)",
        description="Ask the reconciler (POST /api/v1/requests/clear_halt/BOT) with your own token: the request is "
        "recorded under the token's name and posted as TradingBotClearHaltRequested; once someone other than you "
        "approves it, the reconciler sends the bot clear_halt with a decision it signed, which the bot verifies "
        "(docs/readiness.md, signed decisions). The bot lands paused until resumed. Exit 0 asked, 1 refused or no "
        "reconciler answered, 2 bad usage.",
    )
    parser.add_argument("bot", metavar="BOT", help="a bot's name (bots[].name)")
    parser.add_argument("--reason", required=True, help="why the loss is understood and the bot may trade again")
    add_token_options(parser)
    parser.set_defaults(handler=clear_halt)


def clear_halt(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.clients.reconciler import Unreachable, call, person_token, reconciler_url
    from trading_ops.readiness.cli import resolve_bots

    (bot,) = resolve_bots(config, [args.bot])
    reason = " ".join(args.reason.split())
    if not reason or len(reason) > REASON_MAX:
        raise UsageError(f"clear-halt: --reason needs a text of {REASON_MAX} characters at most")
    token = person_token(args, "clear-halt")
    url = f"{reconciler_url(config, args.url)}/api/v1/requests/clear_halt/{bot.name}"
    try:
        status, answer = call("POST", url, token, {"reason": reason})
    except Unreachable as exc:
        logsetup.report(f"trading-ops: clear-halt: {exc}")
        return EXIT_FAILURE
    if status != 200:
        logsetup.report(f"trading-ops: clear-halt: {answer.get('error') or f'HTTP {status}'}")
        return EXIT_FAILURE
    print(json.dumps(answer))
    return EXIT_OK
