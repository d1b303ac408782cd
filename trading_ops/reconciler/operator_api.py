"""The operator's decisions over the API, each under the principal of the token that asked (an audit entry with its
address): the reconciler's pause and resume, maintenance windows opened and ended, and the stop drill on a paper bot.
`trading-ops reconciler pause|resume`, `trading-ops maintenance start|end` and `trading-ops readiness BOT --stop-drill`
ask through here with the person's own token, as the console does with its session's."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from aiohttp import web

from trading_ops import audit
from trading_ops.config import BotEntryConfig, Config
from trading_ops.durations import parse_duration
from trading_ops.http_input import parse_id, parse_limit, read_json_object
from trading_ops.ops.maintenance import (
    BOT_SERVICE,
    LABEL_NAME,
    MAX_DURATION_SECONDS,
    Maintenance,
    MaintenanceError,
    parse_matchers,
    silences_own_pages,
)
from trading_ops.reconciler import keys
from trading_ops.reconciler.auth import authorized
from trading_ops.reconciler.own_pages import own_alerts
from trading_ops.scopes import DESTRUCTIVE, OPERATE, READ, refusal

log = logging.getLogger(__name__)

PAUSE_PATH = "/api/v1/pause"
RESUME_PATH = "/api/v1/resume"
MAINTENANCE_PATH = "/api/v1/maintenance"
MAINTENANCE_END_PATH = "/api/v1/maintenance/{id}/end"
STOP_DRILL_PATH = "/api/v1/bots/{bot}/stop_drill"
# A window's reason (the console's form takes as much), its matchers (how many, each value's length: a label value).
REASON_MAX = 500
MATCHERS_MAX = 16
MATCHER_VALUE_MAX = 128
DURATION_MAX_CHARS = 32
# GET /api/v1/maintenance: the newest windows, this many unless `limit` says (at most WINDOWS_MAX).
WINDOWS_DEFAULT = 20
WINDOWS_MAX = 200
# The drill's steps as the audit keeps them.
DRILL_COMMENT = "halt, flatten, clear the drill's halt, resume"


def who(request: web.Request, name: str) -> tuple[str, str]:
    """(principal, source) of a decision over the API: the token's name and the address it came from."""
    return name, request.remote or "-"


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# ---- the reconciler's pause ------------------------------------------------------------------------------------------


async def _set_pause(request: web.Request, paused: bool) -> web.Response:
    word = "pausing" if paused else "resuming"
    if isinstance(token := authorized(request, OPERATE, f"{word} the reconciler"), web.Response):
        return token
    ledger = request.app[keys.LEDGER]
    woken = await asyncio.to_thread(ledger.set_paused, paused, who(request, token.name))
    log.warning("reconciler %s by %s from %s", "paused" if paused else "resumed", token.name, request.remote)
    if not paused:
        request.app[keys.ENGINE].wake.set()
        return web.json_response({"paused": False, "episodes_woken": woken, "by": token.name})
    return web.json_response({"paused": True, "by": token.name})


async def pause(request: web.Request) -> web.Response:
    """POST /api/v1/pause (scope operate): every replica stops acting; episodes are parked and recorded."""
    return await _set_pause(request, True)


async def resume(request: web.Request) -> web.Response:
    """POST /api/v1/resume (scope operate): act again; the parked episodes are looked at at once."""
    return await _set_pause(request, False)


# ---- maintenance windows ---------------------------------------------------------------------------------------------


def maintenance_of(app: web.Application) -> Maintenance:
    return Maintenance(app[keys.CONFIG], app[keys.LEDGER].engine, app[keys.SESSION])


def window_json(w: Any) -> dict[str, Any]:
    return {
        "id": w.id,
        "state": w.state,
        "matchers": json.loads(w.matchers),
        "reason": w.reason,
        "created_by": w.created_by,
        "starts_at": w.starts_at.isoformat(),
        "ends_at": w.ends_at.isoformat(),
        "ended_at": w.ended_at.isoformat() if w.ended_at else None,
        "silence_id": w.silence_id,
        "paused_bots": json.loads(w.paused_bots),
        "problems": [line for line in (w.problems or "").splitlines() if line],
    }


def outcome_json(outcome: Any) -> dict[str, Any]:
    return {"window": window_json(outcome.window), "done": outcome.done, "problems": outcome.problems}


def _window_request(body: dict[str, Any]) -> tuple[float, dict[str, str], str]:
    """(seconds, matchers, reason) of a window asked for; MaintenanceError (a 400) saying what is wrong."""
    duration, reason, matchers = body.get("duration"), body.get("reason"), body.get("matchers", {})
    if not isinstance(duration, str) or not 0 < len(duration) <= DURATION_MAX_CHARS:
        raise MaintenanceError("duration: expected a duration such as 30m or 2h")
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise MaintenanceError(f"duration: {exc}") from None
    if not 0 < seconds <= MAX_DURATION_SECONDS:
        raise MaintenanceError(f"duration: more than 0s and at most {MAX_DURATION_SECONDS / 86400:g}d")
    if not isinstance(reason, str) or not reason.isprintable() or not 0 < len(reason.strip()) <= REASON_MAX:
        raise MaintenanceError(f"reason: expected printable text of {REASON_MAX} characters at most")
    if not isinstance(matchers, dict) or len(matchers) > MATCHERS_MAX:
        raise MaintenanceError(f"matchers: expected an object of label: value, {MATCHERS_MAX} at most")
    for name, value in matchers.items():
        if not LABEL_NAME.match(name) or len(name) > MATCHER_VALUE_MAX:
            raise MaintenanceError(f"matchers: {name[:60]!r} is not a label name")
        if not isinstance(value, str) or not value.isprintable() or not 0 < len(value) <= MATCHER_VALUE_MAX:
            raise MaintenanceError(f"matchers: {name}: expected printable text of {MATCHER_VALUE_MAX} characters")
    return seconds, parse_matchers([f"{k}={v}" for k, v in matchers.items()]), " ".join(reason.split())


async def list_windows(request: web.Request) -> web.Response:
    """GET /api/v1/maintenance (scope read): the newest windows, open and closed (`open=1`: only open ones)."""
    if isinstance(token := authorized(request, READ, "reading maintenance windows"), web.Response):
        return token
    limit = parse_limit(request.query.get("limit"), WINDOWS_DEFAULT, WINDOWS_MAX)
    open_only = request.query.get("open", "0")
    if open_only not in ("0", "1"):
        return error(400, "open: expected 0 or 1")
    rows = await asyncio.to_thread(
        functools.partial(maintenance_of(request.app).windows, open_only=open_only == "1", limit=limit)
    )
    return web.json_response({"windows": [window_json(w) for w in rows]})


async def start_window(request: web.Request) -> web.Response:
    """POST /api/v1/maintenance {"duration", "reason", "matchers"} (scope operate; destructive for a window that would
    silence the alerting pipeline's own pages): the window opened under the token's name."""
    if isinstance(token := authorized(request, OPERATE, "opening a maintenance window"), web.Response):
        return token
    body = await read_json_object(request, request.app[keys.CONFIG].reconciler.max_body_bytes)
    try:
        seconds, matchers, reason = _window_request(body)
    except MaintenanceError as exc:
        return error(400, str(exc))
    own = silences_own_pages(matchers, own_alerts(request.app.get(keys.PLAYBOOK)))
    if own is not None and not token.allows(DESTRUCTIVE):
        message = (
            f"this window would silence {own}: {refusal('that', DESTRUCTIVE, token)} (a window of bots' alerts only "
            f"matches service={BOT_SERVICE} too)"
        )
        log.warning("maintenance window by %s from %s refused: %s", token.name, request.remote, message)
        return error(403, message)
    try:
        outcome = await maintenance_of(request.app).start(
            matchers, seconds, reason, f"api: {token.name}"[:128], who=who(request, token.name)
        )
    except MaintenanceError as exc:
        return error(409, str(exc))
    log.warning("maintenance window %d opened by %s from %s", outcome.window.id, token.name, request.remote)
    return web.json_response(outcome_json(outcome))


async def end_window(request: web.Request) -> web.Response:
    """POST /api/v1/maintenance/{id}/end (scope operate): the window ended under the token's name (its silence expired,
    the bots it paused resumed)."""
    if isinstance(token := authorized(request, OPERATE, "ending a maintenance window"), web.Response):
        return token
    window_id = parse_id(request.match_info["id"], "window")
    maintenance = maintenance_of(request.app)
    window = await asyncio.to_thread(maintenance.get, window_id)
    if window is None:
        return error(404, f"no maintenance window {window_id}")
    try:
        outcome = await maintenance.end(window_id, who=who(request, token.name))
    except MaintenanceError as exc:
        return error(409, str(exc))
    log.warning("maintenance window %d ended by %s from %s", window_id, token.name, request.remote)
    return web.json_response(outcome_json(outcome))


# ---- the stop drill --------------------------------------------------------------------------------------------------


async def stop_drill(request: web.Request) -> web.Response:
    """POST /api/v1/bots/{bot}/stop_drill (scope destructive): halt, flatten, wait until flat, clear the drill's own
    halt, resume, on an active paper bot with no approval pending (trading_ops.readiness.stop_drill). 200 the steps; 409
    refused, nothing changed; 502 a step failed (the bot may have changed: recorded). A drill that ran is an audit
    entry under the token's name."""
    from trading_ops.readiness.stop_drill import DrillFailed, DrillRefused, run_drill

    if isinstance(token := authorized(request, DESTRUCTIVE, "running a stop drill"), web.Response):
        return token
    config = request.app[keys.CONFIG]
    bot = _paper_bot(config, request.match_info["bot"])
    if isinstance(bot, web.Response):
        return bot
    principal, source = who(request, token.name)
    try:
        steps = await run_drill(config, bot)
    except DrillRefused as exc:
        log.warning("stop drill of %s by %s refused: %s", bot.name, principal, exc)
        return error(409, f"stop drill of {bot.name} refused, nothing changed: {exc}")
    except DrillFailed as exc:
        log.error("stop drill of %s by %s failed at %s", bot.name, principal, exc)
        if exc.changed:
            await _audit_drill(request, bot.name, principal, source, {"failed": str(exc)[:500]})
        return error(502, f"stop drill of {bot.name} failed at {exc}")
    if not await _audit_drill(request, bot.name, principal, source, {"state": "active", "steps": steps}):
        return error(503, f"stop drill of {bot.name} ran ({'; '.join(steps)}), but its audit entry was not written")
    log.warning("stop drill of %s run by %s from %s", bot.name, principal, source)
    return web.json_response({"bot": bot.name, "steps": steps, "by": principal})


def _paper_bot(config: Config, name: str) -> BotEntryConfig | web.Response:
    """The paper bot of that name, or the 404 (no such bot) or 409 (not a paper bot) to send."""
    bot = next((b for b in config.bots if b.name == name), None)
    if bot is None:
        return error(404, f"no bot {name[:64]!r} in the configuration's bots: list")
    if bot.kind != "paper":
        return error(409, f"the stop drill runs on a paper bot only; {bot.name} is of kind {bot.kind}")
    return bot


async def _audit_drill(request: web.Request, bot: str, principal: str, source: str, after: dict[str, Any]) -> bool:
    """The drill's audit entry; False (logged) when the ledger did not take it."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        await asyncio.to_thread(
            functools.partial(
                audit.append,
                request.app[keys.LEDGER].engine,
                principal=principal,
                source=source,
                action="stop_drill",
                target=bot,
                before={"state": "active"},
                after=after,
                comment=DRILL_COMMENT,
            )
        )
    except SQLAlchemyError as exc:
        log.error("stop drill of %s by %s: its audit entry was not written: %s", bot, principal, exc)
        return False
    return True


def add_operator_routes(app: web.Application) -> None:
    app.router.add_post(PAUSE_PATH, pause)
    app.router.add_post(RESUME_PATH, resume)
    app.router.add_get(MAINTENANCE_PATH, list_windows)
    app.router.add_post(MAINTENANCE_PATH, start_window)
    app.router.add_post(MAINTENANCE_END_PATH, end_window)
    app.router.add_post(STOP_DRILL_PATH, stop_drill)
