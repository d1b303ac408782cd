"""A live start through the reconciler: `POST /api/v1/requests/live_start/{bot}` records a person's request under their
token's name (with the bot's readiness verdict now, an audit entry) and posts TradingBotLiveStartRequested; the
`live-start` rule's approval takes its requester from that record, so other people approve it
(reconciler.approvals.live_start of them), never the requester. Once approved, the rule's `live_start` step writes the
readiness record with those principals and the live_start decision the reconciler signs for it;
`GET /api/v1/requests/live_start/{bot}` hands the decision out (`trading-ops readiness BOT --decision-out FILE`)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from aiohttp import web

from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError
from trading_ops.db import readiness_records as records
from trading_ops.db.base import utcnow
from trading_ops.decisions import LIVE_START
from trading_ops.http_input import read_json_object
from trading_ops.readiness.ramp_cli import REQUEST_HOURS
from trading_ops.reconciler import keys
from trading_ops.reconciler.ramp_api import REASON_MAX, Asked, asker, refused
from trading_ops.reconciler.readiness_api import MAX_WINDOW_CHARS, bot_verdict
from trading_ops.reconciler.requests import Duplicate, RequestStore

log = logging.getLogger(__name__)
PATH = "/api/v1/requests/live_start/{bot}"
# The alert that carries a live start request to the reconciler's `live-start` rule.
ALERT = "TradingBotLiveStartRequested"
# What a request keeps of the verdict it was asked on (what the readiness record then says).
VERDICT_KEYS = ("verdict", "window", "failing", "missing")


async def ask_live_start(
    app: web.Application, bot_name: str, principal: str, source: str, reason: str, window: str | None
) -> Asked:
    """The request (see the module): 200 and the request with the verdict it was asked on; 404 no such bot; 400 a bad
    window; 409 the same request stands; 503 Alertmanager took no request."""
    config = app[keys.CONFIG]
    status, verdict = await bot_verdict(app, bot_name, window)
    if status != 200:
        return refused(status, f"not asked: {verdict['error']}")
    bot = next(b for b in config.bots if b.name == bot_name)
    kept = {k: verdict.get(k) for k in VERDICT_KEYS}
    store = RequestStore(app[keys.LEDGER])
    now = utcnow()
    made = await asyncio.to_thread(
        store.create,
        kind=LIVE_START,
        bot=bot.name,
        instance=bot.instance,
        stage="",
        principal=principal,
        source=source,
        comment=reason,
        now=now,
        hours=REQUEST_HOURS,
        before={"live_start": None, **kept},
        detail=kept,
    )
    if isinstance(made, Duplicate):
        return refused(409, f"not asked: {made.message}")
    required = config.reconciler.approvals.live_start
    others = (
        f"{required} person other than {principal}" if required == 1 else f"{required} people other than {principal}"
    )
    alert = {
        "labels": {
            "alertname": ALERT,
            "instance": bot.instance,
            "bot": bot.name,
            "requested_by": principal[:128],
            "request": str(made["id"]),
            "severity": "warning",
            "service": "tradingbot",
        },
        "annotations": {
            "summary": "A person asks that a trading bot go live.",
            "description": f"{principal} asks that {bot.name} go live: {reason}. Its readiness verdict over "
            f"{kept['window']} is {kept['verdict']} (failing: {', '.join(kept['failing'] or []) or 'none'}; missing: "
            f"{', '.join(kept['missing'] or []) or 'none'}). {others} approve it with trading-ops reconciler approve "
            "and their own token.",
        },
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=REQUEST_HOURS)).isoformat(),
    }
    try:
        await AlertmanagerClient(app[keys.SESSION], config.reconciler.alertmanager_urls).post_alerts([alert])
    except AlertmanagerError as exc:
        await asyncio.to_thread(store.withdraw, made["id"], utcnow(), f"Alertmanager took no request: {exc}")
        return refused(503, f"not asked: Alertmanager took no request: {exc}")
    log.warning("live start of %s asked by %s from %s (request %s, verdict %s)", bot.name, principal, source,
                made["id"], kept["verdict"])  # fmt: skip
    return Asked(200, {"bot": bot.name, "requested_by": principal, "request": made["id"], "reason": reason,
                       "required": required, **kept, "expires_at": made["expires_at"].isoformat()})  # fmt: skip


async def request_live_start(request: web.Request) -> web.Response:
    """POST /api/v1/requests/live_start/{bot} {"reason": "...", "window": "5d"}: see ask_live_start."""
    token = asker(request, "asking that a bot go live")
    if isinstance(token, web.Response):
        return token
    body = await read_json_object(request, request.app[keys.CONFIG].reconciler.max_body_bytes)
    reason, window = body.get("reason"), body.get("window")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_MAX or not reason.isprintable():
        return web.json_response({"error": f"reason: expected printable text of {REASON_MAX} characters at most"},
                                 status=400)  # fmt: skip
    if window is not None and (not isinstance(window, str) or len(window) > MAX_WINDOW_CHARS):
        return web.json_response({"error": "window: expected a duration (5d, 36h)"}, status=400)
    asked = await ask_live_start(
        request.app, request.match_info["bot"], token.name, request.remote or "-", " ".join(reason.split()), window
    )
    if asked.status != 200:
        log.warning("live start by %s from %s refused: %s", token.name, request.remote, asked.answer["error"])
    return web.json_response(asked.answer, status=asked.status)


def decided(app: web.Application, bot_name: str) -> tuple[int, dict[str, Any]]:
    """The bot's newest readiness record with the live_start decision signed for it (200), else why there is none:
    404 no such bot or nothing asked, 409 the newest request waits for its approval."""
    config = app[keys.CONFIG]
    if not any(b.name == bot_name for b in config.bots):
        return 404, {"error": f"no bot {bot_name[:64]!r} in the configuration's bots: list"}
    ledger = app[keys.LEDGER]
    record = records.latest(ledger.engine, bot_name)
    asked = RequestStore(ledger).newest(LIVE_START, bot_name)
    if asked is not None and (record is None or record.request_id != asked["id"]):
        if asked["expires_at"] > utcnow():
            until = asked["expires_at"].isoformat()
            waits = f"request {asked['id']} by {asked['principal']} waits for its approval until {until}"
            return 409, {"error": f"no live_start decision for {bot_name} yet: {waits}"}
    if record is None or not record.decision:
        how = f"ask with `trading-ops readiness {bot_name} --record --reason TEXT`, then others approve it"
        return 404, {"error": f"no live_start decision for {bot_name}: {how}"}
    return 200, {"bot": bot_name, "record": record.to_dict(), "decision": record.decision}


async def get_live_start(request: web.Request) -> web.Response:
    """GET /api/v1/requests/live_start/{bot}: see decided."""
    token = asker(request, "fetching a live start decision")
    if isinstance(token, web.Response):
        return token
    status, answer = await asyncio.to_thread(decided, request.app, request.match_info["bot"])
    return web.json_response(answer, status=status)
