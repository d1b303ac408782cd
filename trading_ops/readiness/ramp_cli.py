"""`trading-ops ramp promote BOT --to STAGE`: ask a person to approve a bot's next stage, once its criteria pass."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from trading_ops import logsetup
from trading_ops.cli import EXIT_FAILURE, EXIT_OK, UsageError
from trading_ops.clients.reconciler import add_token_options
from trading_ops.config import BotEntryConfig, Config, RampStageConfig

if TYPE_CHECKING:
    import aiohttp

# The alert that carries the request to the reconciler's `ramp-promote` rule (its approval binds the stage).
ALERTNAME = "TradingBotRampPromotionRequested"
# How long Alertmanager holds the request: the rule's approval_timeout.
REQUEST_HOURS = 24


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "ramp",
        help="a bot's staged ramp: ask for its next stage (a person approves it through the reconciler)",
        description="The ramp of bot.ramp.stages (docs/readiness.md, Go live in stages).",
    )
    inner = parser.add_subparsers(dest="ramp_command", metavar="ACTION", required=True)
    promote = inner.add_parser(
        "promote",
        help="ask for the bot's next stage: its readiness criteria are judged first, then a person approves",
        description="Ask the reconciler, with your own token (--token-file, $TRADING_OPS_TOKEN_FILE or "
        "$TRADING_OPS_TOKEN), for the bot's next stage: it checks that STAGE is the bot's next, that no identical "
        "request stands, and the readiness criteria of the stage before STAGE over that stage's window; then it "
        "records the request under your token's name (the audit chain) and asks another person's approval: exit 0 "
        "asked, 1 refused (not the next stage, asked already, a criterion does not pass, Alertmanager took nothing), "
        "2 bad usage.",
    )
    promote.add_argument("bot", metavar="BOT", help="a bot's name (bots[].name)")
    promote.add_argument("--to", required=True, metavar="STAGE", help="the stage asked for (the bot's next)")
    promote.add_argument(
        "--by", default=None, metavar="COMMENT", help="a comment beside your token's name (the token asks, not this)"
    )
    add_token_options(promote)
    promote.set_defaults(handler=ramp)


def stage_before(config: Config, name: str) -> tuple[int, RampStageConfig]:
    """(STAGE's number, 1 the first; the stage before it, whose criteria and window decide); UsageError otherwise."""
    stages = config.bot.ramp.stages
    names = [s.name for s in stages]
    if not stages:
        raise UsageError("ramp: the configuration has no ramp (bot.ramp.stages)")
    if name not in names:
        raise UsageError(f"ramp: unknown stage {name[:64]!r} (stages: {', '.join(names)})")
    index = names.index(name)
    if index == 0:
        raise UsageError(f"ramp: {name!r} is the first stage: a bot starts there, nothing to promote to")
    return index + 1, stages[index - 1]


def ramp(args: argparse.Namespace, config: Config) -> int:
    """Ask through the reconciler's API (POST /api/v1/ramp/{bot}/promote) with the person's own token: the request
    is recorded under that token's name, and the approval then knows its requester."""
    from trading_ops.clients.reconciler import Unreachable, call, person_token, reconciler_url
    from trading_ops.readiness.cli import resolve_bots

    (bot,) = resolve_bots(config, [args.bot])
    stage_before(config, args.to)
    token = person_token(args, "ramp")
    body = {"stage": args.to, "comment": " ".join(str(args.by or "").split())}
    try:
        status, answer = call("POST", f"{reconciler_url(config, args.url)}/api/v1/ramp/{bot.name}/promote", token, body)
    except Unreachable as exc:
        logsetup.report(f"trading-ops: ramp: {exc}")
        return EXIT_FAILURE
    if status != 200:
        logsetup.report(f"trading-ops: ramp: {answer.get('error') or f'HTTP {status}'}")
        return EXIT_FAILURE
    print(json.dumps(answer))
    return EXIT_OK


async def criteria_problem(
    config: Config, session: aiohttp.ClientSession, bot: BotEntryConfig, before: RampStageConfig
) -> str | None:
    """Why `before`'s criteria do not all pass over its window (one line), or None when they do."""
    from trading_ops.clients.alertmanager import AlertmanagerClient
    from trading_ops.clients.prometheus import PrometheusClient
    from trading_ops.readiness.verdict import evaluate

    if not before.criteria:
        return None
    prometheus = PrometheusClient(session, config.reconciler.prometheus_urls)
    alertmanager = AlertmanagerClient(session, config.reconciler.alertmanager_urls)
    (verdict,) = await evaluate(config, [bot], before.window, prometheus, alertmanager)
    results = {r.name: r for r in verdict.results}
    not_passing = [f"{n} {results[n].status}" for n in before.criteria if results[n].status not in ("pass", "n/a")]
    if not_passing:
        return f"{bot.name} stays at {before.name}: over {before.window}, {', '.join(not_passing)}"
    return None


async def post_request(
    config: Config,
    session: aiohttp.ClientSession,
    bot: BotEntryConfig,
    stage: str,
    number: int,
    before: RampStageConfig,
    by: str,
    request_id: int | None = None,
) -> str | None:
    """Post the request to Alertmanager (its `request` label names the reconciler's record of it, whose principal the
    approval takes as its requester): None when taken, else why not (one line)."""
    from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError

    now = datetime.now(UTC)
    labels = {
        "alertname": ALERTNAME,
        "instance": bot.instance,
        "bot": bot.name,
        "stage": stage,
        "stage_number": str(number),
        "requested_by": by[:128],
        "severity": "warning",
        "service": "tradingbot",
    }
    if request_id is not None:
        labels["request"] = str(request_id)
    criteria = ", ".join(before.criteria) or "none configured"
    alert = {
        "labels": labels,
        "annotations": {
            "summary": "A person asks to take a trading bot to the next stage of its ramp.",
            "description": f"{by} asks to take {bot.name} ({bot.instance}) from stage {before.name} to {stage}; "
            f"readiness over {before.window}: {criteria} pass. Another person approves it with trading-ops "
            "reconciler approve and their own token.",
        },
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=REQUEST_HOURS)).isoformat(),
    }
    try:
        await AlertmanagerClient(session, config.reconciler.alertmanager_urls).post_alerts([alert])
    except AlertmanagerError as exc:
        return f"Alertmanager took no request: {exc}"
    return None
