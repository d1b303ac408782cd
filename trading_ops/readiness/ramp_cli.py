"""`trading-ops ramp promote BOT --to STAGE`: ask a person to approve a bot's next stage, once its criteria pass."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from trading_ops import logsetup
from trading_ops.cli import EXIT_FAILURE, EXIT_OK, UsageError
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
        description="Judge the readiness criteria of the stage before STAGE over that stage's window; when every one "
        "passes, ask the reconciler (through Alertmanager) for a person's approval of STAGE: exit 0 asked, 1 a "
        "criterion does not pass (or Alertmanager took nothing), 2 bad usage.",
    )
    promote.add_argument("bot", metavar="BOT", help="a bot's name (bots[].name)")
    promote.add_argument("--to", required=True, metavar="STAGE", help="the stage asked for (the bot's next)")
    promote.add_argument("--by", required=True, metavar="NAME", help="who asks (a person other than the approver)")
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
    import asyncio

    from trading_ops.readiness.cli import resolve_bots

    (bot,) = resolve_bots(config, [args.bot])
    number, before = stage_before(config, args.to)
    if not args.by.strip():
        raise UsageError("ramp: --by needs a name")
    return asyncio.run(promote(config, bot, args.to, number, before, args.by.strip()))


async def promote(
    config: Config, bot: BotEntryConfig, stage: str, number: int, before: RampStageConfig, by: str
) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        problem = await ask(config, session, bot, stage, number, before, by)
    if problem is not None:
        logsetup.report(f"trading-ops: ramp: {problem}")
        return EXIT_FAILURE
    print(json.dumps({"bot": bot.name, "stage": stage, "requested_by": by, "criteria": before.criteria}))
    return EXIT_OK


async def ask(
    config: Config,
    session: aiohttp.ClientSession,
    bot: BotEntryConfig,
    stage: str,
    number: int,
    before: RampStageConfig,
    by: str,
) -> str | None:
    """Judge `before`'s criteria over its window, then post the request to Alertmanager: None when asked, else why not
    (one line). The CLI's `ramp promote` and the console's promotion form."""
    from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError
    from trading_ops.clients.prometheus import PrometheusClient
    from trading_ops.readiness.verdict import evaluate

    if before.criteria:
        prometheus = PrometheusClient(session, config.reconciler.prometheus_urls)
        alertmanager = AlertmanagerClient(session, config.reconciler.alertmanager_urls)
        (verdict,) = await evaluate(config, [bot], before.window, prometheus, alertmanager)
        results = {r.name: r for r in verdict.results}
        not_passing = [f"{n} {results[n].status}" for n in before.criteria if results[n].status != "pass"]
        if not_passing:
            return f"{bot.name} stays at {before.name}: over {before.window}, {', '.join(not_passing)}"
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
    criteria = ", ".join(before.criteria) or "none configured"
    alert = {
        "labels": labels,
        "annotations": {
            "summary": "A person asks to take a trading bot to the next stage of its ramp.",
            "description": f"{by} asks to take {bot.name} ({bot.instance}) from stage {before.name} to {stage}; "
            f"readiness over {before.window}: {criteria} pass. A person approves it with trading-ops reconciler "
            "approve.",
        },
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=REQUEST_HOURS)).isoformat(),
    }
    try:
        await AlertmanagerClient(session, config.reconciler.alertmanager_urls).post_alerts([alert])
    except AlertmanagerError as exc:
        return f"Alertmanager took no request: {exc}"
    return None
