"""The readiness verdict on the reconciler: its API route, and the console's pages (/ui/readiness, /ui/readiness/{bot})
that show a bot's verdict criterion by criterion, its ramp (the current stage, its history, a request for the next
stage) and its recorded verdicts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from trading_ops.config import BotEntryConfig
from trading_ops.db import readiness_records as records
from trading_ops.reconciler import keys
from trading_ops.reconciler.console import (
    PREFIX,
    Session,
    action,
    bot_status,
    csrf_field,
    decider,
    flash,
    h,
    html_response,
    layout,
    one_line,
    page,
    when,
    with_flash,
)
from trading_ops.reconciler.ramp_api import ask_promotion
from trading_ops.reconciler.readiness_api import PATH, bot_verdict, get_readiness
from trading_ops.scopes import APPROVE, OPERATE, READ

# The recorded verdicts shown on a bot's page (the newest).
RECORDS_SHOWN = 5

# The console's badge colours (console.css) of each status and verdict.
COLOURS = {
    "pass": "success",
    "fail": "failure",
    "unknown": "pending",
    "n/a": "pending",
    "ready": "success",
    "not ready": "failure",
}


def setup_readiness(app: web.Application) -> None:
    app.router.add_get(PATH, get_readiness)
    app.router.add_get(f"{PREFIX}/readiness", page(readiness_index))
    app.router.add_get(f"{PREFIX}/readiness/{{bot}}", page(readiness_page))
    app.router.add_post(
        f"{PREFIX}/readiness/{{bot}}/promote", action(READ, "asking for a bot's next ramp stage", promote_request)
    )


def _badge(text: str) -> str:
    return f'<span class="badge s-{h(COLOURS.get(text, "pending"))}">{h(text)}</span>'


def _row(r: dict[str, Any]) -> str:
    value = "-" if r["value"] is None else f"{r['value']:.6g}"
    threshold = f"{r['op']} {r['threshold']:g} {r['unit']}"
    return (
        f"<tr><td>{_badge(r['status'])}</td><td><strong>{h(r['name'])}</strong>"
        f'<div class="meta">{h(r["what"])}</div></td><td>{h(value)}</td><td>{h(threshold)}</td>'
        f'<td>{h(r["window"])}</td><td><code>{h(r["source"])}</code><div class="meta">{h(r["detail"])}</div></td></tr>'
    )


async def readiness_index(request: web.Request, session: Session) -> web.StreamResponse:
    bots = request.app[keys.CONFIG].bots
    items = "".join(
        f'<li class="row"><a href="{PREFIX}/readiness/{h(b.name)}"><strong>{h(b.name)}</strong></a> '
        f'<span class="meta">{h(b.instance)} · {h(b.kind)}</span></li>'
        for b in bots
    )
    body = f'<ul class="list">{items}</ul>' if items else "<p>No bots configured (bots:).</p>"
    return html_response(layout("Readiness", body, session, "readiness"))


def window_form(bot: str, window: str, default: str) -> str:
    """The verdict's window, asked again on a click (a GET: nothing changes): empty for the configuration's default."""
    return (
        f'<form method="get" action="{PREFIX}/readiness/{h(bot)}" class="window">'
        f'<label>Window <input name="window" value="{h(window)}" placeholder="{h(default)}" maxlength="64" '
        f'size="8"></label> <button type="submit">Judge over this window</button> '
        f'<span class="hint">empty: readiness.window ({h(default)}); longer than 1h, at most what Prometheus keeps'
        "</span></form>"
    )


async def readiness_page(request: web.Request, session: Session) -> web.StreamResponse:
    name = request.match_info["bot"]
    asked = request.query.get("window", "")[:64]
    status, answer = await bot_verdict(request.app, name, asked or None)
    default = request.app[keys.CONFIG].readiness.window
    if status != 200:
        # The problem and the window field to judge again (a window Prometheus holds), never a bare refusal.
        form = window_form(name[:64], asked, default) if status == 400 else ""
        body = f'<p class="problem" role="alert">{h(answer["error"])}</p>{form}'
        return html_response(layout(f"Readiness of {name[:64]}", body, session, "readiness"), status)
    entry = next(b for b in request.app[keys.CONFIG].bots if b.name == answer["bot"])
    ramp, recorded = await asyncio.gather(
        ramp_section(request.app, entry, session), records_section(request.app, entry)
    )
    named = ""
    if answer["failing"]:
        named += f"<p>Failing: {h(', '.join(answer['failing']))}</p>"
    if answer["missing"]:
        named += f"<p>Missing data: {h(', '.join(answer['missing']))}</p>"
    rows = "".join(_row(r) for r in answer["results"])
    body = flash(session) + (
        f"<p>{_badge(answer['verdict'])} over {h(answer['window'])} "
        f"({h(answer['instance'])}, {answer['queries']} queries)</p>{named}"
        f"{window_form(answer['bot'], asked, default)}"
        '<table class="readiness"><thead><tr><th>Status</th><th>Criterion</th><th>Value</th><th>Threshold</th>'
        f"<th>Window</th><th>Source</th></tr></thead><tbody>{rows}</tbody></table>"
        f"{ramp}{recorded}"
    )
    return html_response(layout(f"Readiness of {answer['bot']}", body, session, "readiness"))


def _at(value: Any) -> str:
    try:
        return when(datetime.fromtimestamp(float(value), UTC))
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


async def ramp_section(app: web.Application, bot: BotEntryConfig, session: Session) -> str:
    """The bot's ramp as the bot itself says it (its control API's `status`): the current stage, its latest changes
    (promotions and falls back, with who, the cause and why), and the form that asks for the next stage."""
    stages = [s.name for s in app[keys.CONFIG].bot.ramp.stages]
    if bot.instance in app[keys.CONFIG].reconciler.targets:
        status = await bot_status(app, bot.instance)
    else:
        status = {"error": "not a target of the reconciler (reconciler.targets)"}
    ramp = status.get("ramp") if isinstance(status.get("ramp"), dict) else None
    if ramp is None or not ramp.get("stages"):
        why = status.get("error") or "the bot has no ramp (bot.ramp.stages)"
        return f'<section class="card ramp" id="ramp"><h2>Ramp</h2><p>{h(str(why))}</p></section>'
    number, names = int(ramp.get("stage") or 0), [str(n) for n in ramp["stages"]]
    current = (
        f"Stage {number} of {len(names)}: <strong>{h(str(ramp.get('name')))}</strong> since {_at(ramp.get('since'))}"
    )
    rows = "".join(
        f"<tr><td>{_at(c.get('at'))}</td><td>{h(str(c.get('from')))} → {h(str(c.get('to')))}</td>"
        f"<td>{h(str(c.get('by')))}</td><td>{h(str(c.get('cause', 'promotion')))}</td><td>{h(str(c.get('why')))}</td>"
        "</tr>"
        for c in reversed([c for c in ramp.get("history") or [] if isinstance(c, dict)])
    )
    history = (
        '<table class="ramp-history"><thead><tr><th>When</th><th>Stage</th><th>By</th><th>Cause</th><th>Why</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
        if rows
        else "<p>No change since the first stage.</p>"
    )
    ask_form = ""
    if number < len(names) and names[number] in stages:
        nxt = names[number]
        if may_ask(session):
            ask_form = (
                f'<form method="post" action="{PREFIX}/readiness/{h(bot.name)}/promote" class="promote">'
                f'{csrf_field(session)}<input type="hidden" name="stage" value="{h(nxt)}">'
                '<label>Your name <small>(optional)</small><input name="by" maxlength="80"></label>'
                f'<button type="submit">Ask for stage {h(nxt)}</button>'
                '<p class="hint">The criteria of the current stage are judged over its window first; then another '
                "person approves the request under Approvals.</p></form>"
            )
        else:
            ask_form = f'<p class="hint">Asking for stage {h(nxt)} needs a token of the operate or approve scope.</p>'
    return (
        f'<section class="card ramp" id="ramp"><h2>Ramp</h2><p class="stage">{current}</p>{history}{ask_form}</section>'
    )


async def records_section(app: web.Application, bot: BotEntryConfig) -> str:
    """The bot's recorded verdicts (the ledger's readiness_records; what a live start reads), the newest first."""
    try:
        rows = await asyncio.to_thread(records.history, app[keys.LEDGER].engine, bot.name, RECORDS_SHOWN)
    except records.LedgerUnreachable as exc:
        return f'<section class="card" id="records"><h2>Recorded verdicts</h2><p>{h(str(exc))}</p></section>'
    if not rows:
        listed = (
            f"<p>None yet: a live start asked with <code>trading-ops readiness {h(bot.name)} --record --reason "
            "TEXT</code> and approved by others keeps one.</p>"
        )
    else:
        items = "".join(
            f"<li>{when(r.recorded_at)} {_badge(r.verdict)} over {h(r.window)}, "
            + (f"live start asked by {h(r.recorded_by)}" if r.request_id else f"recorded by {h(r.recorded_by)}")
            + (f"; approved by {h(r.approved_by)}: {h(r.reason)}" if r.approved_by else "")
            + (" (decision signed)" if r.decision else "")
            + "</li>"
            for r in rows
        )
        listed = f'<ul class="list">{items}</ul>'
    return f'<section class="card" id="records"><h2>Recorded verdicts</h2>{listed}</section>'


def may_ask(session: Session) -> bool:
    """Asking for a ramp promotion takes a token of the operate or the approve scope (a person asks with the one token
    they also approve others' requests with: the same principal, which never approves its own request)."""
    return session.token.allows(OPERATE) or session.token.allows(APPROVE)


async def promote_request(request: web.Request, session: Session, form: dict[str, str]) -> web.StreamResponse:
    """Ask for the bot's next stage as `trading-ops ramp promote` does (POST /api/v1/ramp/{bot}/promote): the session's
    token is the requester; the name typed is a comment beside it."""
    if not may_ask(session):
        message = (
            "asking for a bot's next ramp stage needs the 'operate' or 'approve' scope; "
            f"token {session.token.name!r} has {session.token.scope!r}"
        )
        return one_line(403, f"refused: {message}")
    name = request.match_info["bot"]
    if not any(b.name == name for b in request.app[keys.CONFIG].bots):
        return web.Response(status=404, text="refused: no such bot\n")
    here = f"{PREFIX}/readiness/{name}"
    comment = " ".join(form.get("by", "").split())[:80]
    asked = await ask_promotion(
        request.app, name, form.get("stage", "")[:64], session.token.name, f"console {request.remote or '-'}", comment
    )
    if asked.status != 200:
        return with_flash(session, here, "problem", str(asked.answer["error"]))
    return with_flash(
        session,
        here,
        "done",
        f"stage {asked.answer['stage']} of {name} asked by {decider(session, form)} (request "
        f"{asked.answer['request']}): waiting for another person's approval",
    )
