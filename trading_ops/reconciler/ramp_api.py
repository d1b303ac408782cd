"""POST /api/v1/ramp/{bot}/promote: a person asks for a bot's next ramp stage with their own token (scope operate or
approve). The reconciler checks that the stage is the bot's next (the bot's own status says its stage), that no
identical request stands, and the readiness criteria of the stage before it; then records the request under the
token's name (reconciler_requests, and an audit entry) and posts the alert the `ramp-promote` rule answers: its
approval takes its requester from that record, so the requester never approves its own promotion. `trading-ops ramp
promote` and the console's promotion form ask through here."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from trading_ops.cli import UsageError
from trading_ops.config import BotEntryConfig
from trading_ops.db.base import utcnow
from trading_ops.http_input import read_json_object
from trading_ops.readiness.ramp_cli import REQUEST_HOURS, criteria_problem, post_request, stage_before
from trading_ops.reconciler import keys
from trading_ops.reconciler.auth import UNAUTHORIZED
from trading_ops.reconciler.requests import RAMP_PROMOTION, Duplicate, RequestStore
from trading_ops.scopes import APPROVE, OPERATE

log = logging.getLogger(__name__)
PATH = "/api/v1/ramp/{bot}/promote"
CLEAR_HALT_PATH = "/api/v1/requests/clear_halt/{bot}"
COMMENT_MAX = 200
REASON_MAX = 500
# The alert that carries a clear_halt request to the reconciler's `clear-halt` rule (as `trading-ops clear-halt`).
CLEAR_HALT_ALERT = "TradingBotClearHaltRequested"


@dataclass(frozen=True)
class Asked:
    """What a request ended in: its HTTP status and JSON answer (an error's one line under `error`)."""

    status: int
    answer: dict[str, Any]


def refused(status: int, message: str) -> Asked:
    return Asked(status, {"error": message})


async def current_stage(app: web.Application, bot: BotEntryConfig) -> tuple[int, str] | str:
    """The bot's stage as it says itself (number, name), or why it cannot be read (one line)."""
    from trading_ops.reconciler.console import bot_status

    if bot.instance not in app[keys.CONFIG].reconciler.targets:
        return f"{bot.name} is not a target of the reconciler (reconciler.targets): its stage cannot be read"
    status = await bot_status(app, bot.instance)
    ramp = status.get("ramp") if isinstance(status.get("ramp"), dict) else None
    if ramp is None or not ramp.get("stage"):
        return f"{bot.name}'s stage cannot be read: {status.get('error') or 'the bot reports no ramp'}"
    return int(ramp["stage"]), str(ramp.get("name") or "")


async def _checked(app: web.Application, bot_name: str, stage: str) -> Asked | tuple[Any, ...]:
    """(the bot, the stage's number, the stage before it, the bot's stage now) when the stage may be asked for;
    else the refusal."""
    config = app[keys.CONFIG]
    bot = next((b for b in config.bots if b.name == bot_name), None)
    if bot is None:
        return refused(404, f"no bot {bot_name[:64]!r} in the configuration's bots: list")
    try:
        number, before = stage_before(config, stage[:64])
    except UsageError as exc:
        return refused(400, str(exc).removeprefix("ramp: "))
    now_at = await current_stage(app, bot)
    if isinstance(now_at, str):
        return refused(503, f"not asked: {now_at}")
    at_number, at_name = now_at
    if number != at_number + 1:
        names = [s.name for s in config.bot.ramp.stages]
        where = f"{bot.name} is at stage {at_name or at_number}"
        if at_number >= len(names):  # at its last stage: no promotion at all, whichever stage was named
            already = " already" if number == at_number else ""
            why = f"{where}{already}, its last stage: none comes after it ({stage} asked)"
        else:
            why = f"{where}: its next stage is {names[at_number]}, not {stage}"
        return refused(409, f"not asked: {why}")
    problem = await criteria_problem(config, app[keys.SESSION], bot, before)
    if problem is not None:
        return refused(409, f"not asked: {problem}")
    return bot, number, before, now_at


async def ask_promotion(
    app: web.Application, bot_name: str, stage: str, principal: str, source: str, comment: str
) -> Asked:
    """The whole request (see the module): 200 and the request; 404 no such bot; 400 no such stage; 409 not the next
    stage, an identical request standing, or a criterion not passing; 503 the bot's stage or Alertmanager unknown."""
    checked = await _checked(app, bot_name, stage)
    if isinstance(checked, Asked):
        return checked
    bot, number, before, (at_number, at_name) = checked
    config, session = app[keys.CONFIG], app[keys.SESSION]
    store = RequestStore(app[keys.LEDGER])
    made = await asyncio.to_thread(
        store.create,
        kind=RAMP_PROMOTION,
        bot=bot.name,
        instance=bot.instance,
        stage=stage,
        principal=principal,
        source=source,
        comment=comment,
        now=utcnow(),
        hours=REQUEST_HOURS,
        before={"stage": at_name, "stage_number": at_number},
    )
    if isinstance(made, Duplicate):
        return refused(409, f"not asked: {made.message}")
    problem = await post_request(config, session, bot, stage, number, before, principal, made["id"])
    if problem is not None:
        await asyncio.to_thread(store.withdraw, made["id"], utcnow(), problem)
        return refused(503, f"not asked: {problem}")
    log.warning("ramp promotion of %s to %s asked by %s from %s (request %s)", bot.name, stage, principal, source,
                made["id"])  # fmt: skip
    return Asked(
        200,
        {
            "bot": bot.name,
            "stage": stage,
            "requested_by": principal,
            "request": made["id"],
            "comment": comment,
            "criteria": before.criteria,
            "expires_at": made["expires_at"].isoformat(),
        },
    )


def asker(request: web.Request, what: str) -> Any:
    """The token that asks (scope operate or approve: one token per person), or the 401/403 to send."""
    token = request.app[keys.API_TOKENS].match(request.headers.get("Authorization"))
    if token is None:
        return web.json_response(
            {"error": UNAUTHORIZED}, status=401, headers={"WWW-Authenticate": 'Bearer realm="trading-ops reconciler"'}
        )
    if not (token.allows(OPERATE) or token.allows(APPROVE)):
        message = f"{what} needs the 'operate' or 'approve' scope; token {token.name!r} has {token.scope!r}"
        return web.json_response({"error": message}, status=403)
    return token


async def ask_clear_halt(app: web.Application, bot_name: str, principal: str, source: str, reason: str) -> Asked:
    """A request that a bot halted by a loss limit trade again, recorded under `principal` (an audit entry) and posted
    as TradingBotClearHaltRequested with its `request` label: the clear-halt rule's approval takes its requester from
    the record. 404 no such bot; 409 the bot is not halted, or the same request stands; 503 its state or
    Alertmanager unknown."""
    from datetime import timedelta

    from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError
    from trading_ops.reconciler.console import bot_status

    config = app[keys.CONFIG]
    bot = next((b for b in config.bots if b.name == bot_name), None)
    if bot is None:
        return refused(404, f"no bot {bot_name[:64]!r} in the configuration's bots: list")
    if bot.instance not in config.reconciler.targets:
        return refused(503, f"not asked: {bot.name} is not a target of the reconciler (reconciler.targets)")
    status = await bot_status(app, bot.instance)
    if status.get("state") != "halted":
        why = status.get("error") or f"its state is {status.get('state')!r}"
        return refused(409 if "state" in status else 503, f"not asked: {bot.name} is not halted ({why})")
    store = RequestStore(app[keys.LEDGER])
    now = utcnow()
    made = await asyncio.to_thread(
        store.create,
        kind="clear_halt",
        bot=bot.name,
        instance=bot.instance,
        stage="",
        principal=principal,
        source=source,
        comment=reason,
        now=now,
        hours=REQUEST_HOURS,
        before={"state": "halted", "state_reason": status.get("state_reason")},
    )
    if isinstance(made, Duplicate):
        return refused(409, f"not asked: {made.message}")
    alert = {
        "labels": {
            "alertname": CLEAR_HALT_ALERT,
            "instance": bot.instance,
            "bot": bot.name,
            "requested_by": principal[:128],
            "request": str(made["id"]),
            "severity": "warning",
            "service": "tradingbot",
        },
        "annotations": {
            "summary": "A person asks that a trading bot halted by a loss limit trade again.",
            "description": f"{principal} asks to clear the loss-limit halt of {bot.name} ({bot.instance}): {reason}. "
            f"A person other than {principal} approves it with trading-ops reconciler approve and their own token.",
        },
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=REQUEST_HOURS)).isoformat(),
    }
    try:
        await AlertmanagerClient(app[keys.SESSION], config.reconciler.alertmanager_urls).post_alerts([alert])
    except AlertmanagerError as exc:
        await asyncio.to_thread(store.withdraw, made["id"], utcnow(), f"Alertmanager took no request: {exc}")
        return refused(503, f"not asked: Alertmanager took no request: {exc}")
    log.warning("clear_halt of %s asked by %s from %s (request %s)", bot.name, principal, source, made["id"])
    return Asked(200, {"bot": bot.name, "requested_by": principal, "request": made["id"], "reason": reason,
                       "expires_at": made["expires_at"].isoformat()})  # fmt: skip


async def clear_halt(request: web.Request) -> web.Response:
    """POST /api/v1/requests/clear_halt/{bot} {"reason": "..."}: see ask_clear_halt."""
    token = asker(request, "asking that a halted bot trade again")
    if isinstance(token, web.Response):
        return token
    body = await read_json_object(request, request.app[keys.CONFIG].reconciler.max_body_bytes)
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_MAX or not reason.isprintable():
        return web.json_response({"error": f"reason: expected printable text of {REASON_MAX} characters at most"},
                                 status=400)  # fmt: skip
    asked = await ask_clear_halt(
        request.app, request.match_info["bot"], token.name, request.remote or "-", " ".join(reason.split())
    )
    if asked.status != 200:
        log.warning("clear_halt by %s from %s refused: %s", token.name, request.remote, asked.answer["error"])
    return web.json_response(asked.answer, status=asked.status)


async def promote(request: web.Request) -> web.Response:
    token = request.app[keys.API_TOKENS].match(request.headers.get("Authorization"))
    if token is None:
        return web.json_response(
            {"error": UNAUTHORIZED}, status=401, headers={"WWW-Authenticate": 'Bearer realm="trading-ops reconciler"'}
        )
    if not (token.allows(OPERATE) or token.allows(APPROVE)):
        message = (
            f"asking for a ramp promotion needs the 'operate' or 'approve' scope; token {token.name!r} has "
            f"{token.scope!r}"
        )
        return web.json_response({"error": message}, status=403)
    body = await read_json_object(request, request.app[keys.CONFIG].reconciler.max_body_bytes)
    stage, comment = body.get("stage"), body.get("comment", "")
    if not isinstance(stage, str) or not stage or not isinstance(comment, str) or len(comment) > COMMENT_MAX:
        return web.json_response(
            {"error": f"stage: expected a stage's name; comment: text of {COMMENT_MAX} characters at most"}, status=400
        )
    if not stage.isprintable() or not comment.isprintable():
        return web.json_response({"error": "stage and comment: printable text only"}, status=400)
    asked = await ask_promotion(
        request.app, request.match_info["bot"], stage, token.name, request.remote or "-", " ".join(comment.split())
    )
    if asked.status != 200:
        log.warning("ramp promotion by %s from %s refused: %s", token.name, request.remote, asked.answer["error"])
    return web.json_response(asked.answer, status=asked.status)
