"""The operator console: a small server-rendered web UI under /ui/ (docs/reconciler.md, "The operator console").

Pages: the fleet (each configured bot's state from its `status`, last heartbeat, open episodes, circuit), episodes and
an episode's timeline, approvals (approve / reject with a reason), maintenance windows (start / end) and an emergency
halt per bot behind a confirmation page. HTML only, no JavaScript; one stylesheet served from here; every response
carries a strict Content-Security-Policy.

Login: a token of reconciler.api_tokens (or read_token) posted once to /ui/login; the console keeps an opaque random
session id in a cookie (HttpOnly, SameSite=Strict, Path=/ui, Secure over TLS or behind an https external_url, with
HSTS there) and the session in the ledger's database (ConsoleSessions: only a hash of the id), so every replica knows it
and a restart keeps it; a session of a token the configuration no longer has (removed, another value or scope) ends. A
token keeps MAX_SESSIONS_PER_TOKEN sessions (its own oldest go); logins are throttled (login_throttle). Every POST
carries the session's CSRF token in a hidden field, compared in constant time; the login form a pre-login one (its own
cookie). What a page offers follows the token's scope (trading_ops.scopes), and every POST checks it again: a form not
shown is also refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from trading_ops import http_input
from trading_ops.bot.control import SOURCE_HEADER, SOURCE_OPERATOR
from trading_ops.db.base import utcnow
from trading_ops.durations import parse_duration
from trading_ops.http_guard import API_HEADERS
from trading_ops.ops.maintenance import ACTIVE, Maintenance, MaintenanceError, parse_matchers, silences_own_pages
from trading_ops.reconciler import keys
from trading_ops.reconciler.actions.bot import target_token
from trading_ops.reconciler.approvals import DECIDER_MAX, DECISIONS, REASON_MAX, Refusal, attribution
from trading_ops.reconciler.ledger import StoredSession
from trading_ops.reconciler.login_throttle import LoginThrottle
from trading_ops.scopes import APPROVE, DESTRUCTIVE, OPERATE, READ, Token, TokenSet, refusal
from trading_ops.webconfig import app_ssl_context

log = logging.getLogger(__name__)

PREFIX = "/ui"
COOKIE = "tradingops_console"
LOGIN_COOKIE = "tradingops_console_login"
# A session lasts this long from its login (then log in again), and this many of one token live at once at most (its
# oldest go: logins with one token never end another token's sessions).
SESSION_SECONDS = 12 * 3600.0
MAX_SESSIONS_PER_TOKEN = 10
STATUS_TIMEOUT = aiohttp.ClientTimeout(total=3)
HALT_TIMEOUT = aiohttp.ClientTimeout(total=10)
MAX_FORM_BYTES = 16 * 1024
LIST_LIMIT = 100
# A bot's status as the fleet shows it: positions listed at most, and a heartbeat age past any real one (a century).
MAX_POSITIONS = 50
MAX_HEARTBEAT_AGE = 100 * 365 * 86400.0
# A page that shows something still going on (an open episode, an approval waiting) reloads itself this often
# (<meta http-equiv=refresh>: no JavaScript); never one with a decision form to fill in (a reload would lose it).
REFRESH_SECONDS = 5
# No script, no frame, no foreign origin: the console's own stylesheet and forms posting to itself only.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# Strict-Transport-Security where the console is on https (a year; the browser then never tries plain http).
HSTS = {"Strict-Transport-Security": "max-age=31536000"}
CSRF_REFUSED = "refused: missing or wrong CSRF token (reload the page and try again)"


@dataclass
class Session:
    """The session of one request: the token it was made with, its CSRF token, when it ends and its id's hash in the
    ledger; the messages of its last POSTs, and what this request showed of them and added."""

    token: Token
    csrf: str
    expires: datetime
    key: str
    # (done|problem, message) of the last POSTs, shown once by the next page.
    flash: list[tuple[str, str]] = field(default_factory=list)
    shown: int = 0
    added: list[tuple[str, str]] = field(default_factory=list)


def token_hash(token: Token) -> str:
    """What a session records of its token's value: a SHA-256 of the token's own digest (hex)."""
    return hashlib.sha256(token.digest).hexdigest()


def configured(tokens: TokenSet, stored: StoredSession) -> Token | None:
    """The configured token a stored session was made with, if the configuration still has it (same name, scope and
    value)."""
    for token in tokens.tokens:
        if token.name == stored.token_name and token.scope == stored.scope:
            return token if hmac.compare_digest(token_hash(token), stored.token_hash) else None
    return None


def h(value: Any) -> str:
    """Escaped text for HTML (element content and quoted attribute values)."""
    return html.escape("" if value is None else str(value), quote=True)


def setup_console(app: web.Application) -> None:
    app[keys.LOGIN_THROTTLE] = LoginThrottle()
    r = app.router
    r.add_get(f"{PREFIX}", to_fleet)
    r.add_get(f"{PREFIX}/", page(fleet))
    r.add_get(f"{PREFIX}/console.css", stylesheet)
    r.add_get(f"{PREFIX}/login", login_form)
    r.add_post(f"{PREFIX}/login", login)
    r.add_post(f"{PREFIX}/logout", action(READ, "logging out", logout))
    r.add_get(f"{PREFIX}/episodes", page(episodes))
    r.add_get(f"{PREFIX}/episodes/{{id}}", page(episode))
    r.add_get(f"{PREFIX}/approvals", page(approvals))
    r.add_post(f"{PREFIX}/approvals/{{id}}", action(APPROVE, "deciding an approval", decide))
    r.add_get(f"{PREFIX}/maintenance", page(maintenance))
    r.add_post(f"{PREFIX}/maintenance", action(OPERATE, "starting a maintenance window", start_window))
    r.add_post(f"{PREFIX}/maintenance/{{id}}/end", action(OPERATE, "ending a maintenance window", end_window))
    r.add_get(f"{PREFIX}/bots/{{bot}}/halt", page(halt_confirm))
    r.add_post(f"{PREFIX}/bots/{{bot}}/halt", action(DESTRUCTIVE, "halting a bot", halt))


async def to_fleet(_request: web.Request) -> web.Response:
    return redirect(f"{PREFIX}/")


def is_console(request: web.Request) -> bool:
    return request.path == PREFIX or request.path.startswith(f"{PREFIX}/")


def response_headers(request: web.Request) -> dict[str, str]:
    """The security headers of every answer of the reconciler (trading_ops.http_guard): the console's strict ones on
    /ui/, an API's elsewhere; HSTS wherever the console is reached over https."""
    headers = SECURITY_HEADERS if is_console(request) else API_HEADERS
    return {**headers, **HSTS} if secure(request) else headers


def render_error(request: web.Request, status: int, message: str) -> web.StreamResponse:
    """A refused input or an internal error: one line on the console, JSON on the API."""
    if is_console(request):
        return one_line(status, f"refused: {message}" if status < 500 else message)
    return web.json_response({"error": message}, status=status)


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def secure(request: web.Request) -> bool:
    """Whether operators reach the console over https: served with TLS, or behind a TLS-terminating proxy that
    reconciler.external_url names (a plain listener there, the browser on https all the same)."""
    if app_ssl_context(request.app) is not None:
        return True
    config = request.app.get(keys.CONFIG)
    return config is not None and config.reconciler.external_url.lower().startswith("https://")


async def current(request: web.Request) -> Session | None:
    """The request's session (its cookie's id, looked up in the ledger), or None: no cookie, an unknown or expired id,
    or a token the configuration no longer has."""
    sid = request.cookies.get(COOKIE)
    if not sid:
        return None
    ledger = request.app[keys.LEDGER]
    stored = await asyncio.to_thread(ledger.console_session, sid, utcnow())
    if stored is None:
        return None
    token = configured(request.app[keys.API_TOKENS], stored)
    if token is None:
        log.warning("console session of token %r ended: the configuration no longer has that token", stored.token_name)
        await asyncio.to_thread(ledger.drop_console_session, sid)
        return None
    return Session(token, stored.csrf, stored.expires_at, stored.id_hash, stored.flash)


async def keep_flash(request: web.Request, session: Session) -> None:
    """Record in the ledger what this request showed of the session's messages and what it added."""
    if session.shown or session.added:
        await asyncio.to_thread(
            request.app[keys.LEDGER].update_console_flash, session.key, session.shown, session.added
        )


def one_line(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")


# ---- layout ---------------------------------------------------------------------------------------------------------

NAV = (("fleet", "/", "Fleet"), ("episodes", "/episodes", "Episodes"), ("approvals", "/approvals", "Approvals"),
       ("maintenance", "/maintenance", "Maintenance"), ("readiness", "/readiness", "Readiness"))  # fmt: skip


def layout(title: str, body: str, session: Session | None = None, current_nav: str = "", refresh: bool = False) -> str:
    nav = ""
    if session is not None:
        links = "".join(
            f'<a href="{PREFIX}{path}"{" aria-current=page" if key == current_nav else ""}>{label}</a>'
            for key, path, label in NAV
        )
        nav = (
            f'<nav>{links}<span class="who">{h(session.token.name)} <small>({h(session.token.scope)})</small></span>'
            f'<form method="post" action="{PREFIX}/logout" class="inline">{csrf_field(session)}'
            '<button type="submit" class="link">Log out</button></form></nav>'
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        + (f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else "")
        + f"<title>{h(title)} · trading-ops console</title>"
        f'<link rel="stylesheet" href="{PREFIX}/console.css"></head><body>'
        f'<header><a class="brand" href="{PREFIX}/">trading-ops</a>{nav}</header>'
        f"<main><h1>{h(title)}</h1>{body}</main></body></html>"
    )


def html_response(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def csrf_field(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{h(session.csrf)}">'


def flash(session: Session) -> str:
    """The outcome of the session's last POST (kept server-side, shown once), escaped."""
    shown = "".join(
        f'<p class="{kind}" role="{"status" if kind == "done" else "alert"}">{h(message)}</p>'
        for kind, message in session.flash
    )
    session.shown += len(session.flash)
    session.flash.clear()
    return shown


def when(value: datetime | str | None) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        return h(value)
    return f'<time datetime="{h(value.isoformat())}">{h(value.strftime("%Y-%m-%d %H:%M:%S"))}Z</time>'


def badge(text: str) -> str:
    return f'<span class="badge s-{h(text)}">{h(text)}</span>'


def with_flash(session: Session, location: str, kind: str, message: str) -> web.Response:
    """Redirect after a POST (303), the outcome shown once on the next page."""
    session.added.append((kind, message[:500]))
    return redirect(location)


# ---- login ----------------------------------------------------------------------------------------------------------


async def login_form(request: web.Request, problem: str = "", status: int = 200) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    body = (
        (f'<p class="problem" role="alert">{h(problem)}</p>' if problem else "")
        + f'<form method="post" action="{PREFIX}/login" class="card">'
        f'<input type="hidden" name="csrf" value="{h(nonce)}">'
        '<label for="token">API token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
        '<p class="hint">A token of reconciler.api_tokens: its scope (read, operate, destructive, approve) decides '
        "what this console lets you do.</p>"
        '<button type="submit">Log in</button></form>'
    )
    response = html_response(layout("Log in", body), status)
    response.set_cookie(
        LOGIN_COOKIE, nonce, path=f"{PREFIX}/login", httponly=True, samesite="Strict", secure=secure(request)
    )
    return response


async def read_form(request: web.Request) -> dict[str, str]:
    """The posted form, at most MAX_FORM_BYTES whatever its framing (InputError: a one-line 4xx)."""
    return await http_input.read_form(request, MAX_FORM_BYTES)


async def login(request: web.Request) -> web.StreamResponse:
    wait = request.app[keys.LOGIN_THROTTLE].admit(request.remote or "-")
    if wait:
        log.warning("console login from %s refused: too many attempts (retry in %d s)", request.remote, wait)
        response = one_line(429, f"refused: too many login attempts; try again in {wait} s")
        response.headers["Retry-After"] = str(wait)
        return response
    form = await read_form(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        log.warning("console login from %s refused: missing or wrong CSRF token", request.remote)
        return one_line(403, CSRF_REFUSED)
    token = request.app[keys.API_TOKENS].match(f"Bearer {form.get('token', '').strip()}")
    if token is None:
        log.warning("console login from %s refused: unknown token", request.remote)
        return await login_form(request, "Unknown token.", 401)
    sid, _session = await asyncio.to_thread(
        request.app[keys.LEDGER].create_console_session,
        token.name,
        token.scope,
        token_hash(token),
        utcnow(),
        SESSION_SECONDS,
        MAX_SESSIONS_PER_TOKEN,
    )
    log.info("console login: token %r from %s", token.name, request.remote)
    response = redirect(f"{PREFIX}/")
    response.set_cookie(
        COOKIE, sid, path=PREFIX, httponly=True, samesite="Strict", secure=secure(request), max_age=int(SESSION_SECONDS)
    )
    response.del_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
    return response


async def logout(request: web.Request, session: Session, form: dict[str, str]) -> web.StreamResponse:
    await asyncio.to_thread(request.app[keys.LEDGER].drop_console_session, request.cookies.get(COOKIE))
    response = redirect(f"{PREFIX}/login")
    response.del_cookie(COOKIE, path=PREFIX)
    return response


# ---- guards ---------------------------------------------------------------------------------------------------------

View = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
Act = Callable[[web.Request, Session, dict[str, str]], Awaitable[web.StreamResponse]]


def page(view: View) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A page for any logged-in token (each shows what its scope may do); the login page for no session."""

    async def handler(request: web.Request) -> web.StreamResponse:
        session = await current(request)
        if session is None:
            return redirect(f"{PREFIX}/login")
        response = await view(request, session)
        await keep_flash(request, session)
        return response

    return handler


def action(scope: str, what: str, act: Act) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A POST: a session, its CSRF token (constant-time comparison), then the scope `scope`; each refusal one line."""

    async def handler(request: web.Request) -> web.StreamResponse:
        session = await current(request)
        if session is None:
            return one_line(403, "refused: not logged in (log in at /ui/login)")
        form = await read_form(request)
        if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            log.warning("console %s %s from %s refused: CSRF token", request.method, request.path, request.remote)
            return one_line(403, CSRF_REFUSED)
        if not session.token.allows(scope):
            message = refusal(what, scope, session.token)
            log.warning("console %s from %s refused: %s", request.path, request.remote, message)
            return one_line(403, f"refused: {message}")
        response = await act(request, session, form)
        await keep_flash(request, session)
        return response

    return handler


def typed_name(form: dict[str, str]) -> str:
    """The optional name a person gave (`by`), as free text."""
    return " ".join(form.get("by", "").split())[: DECIDER_MAX - 80] or "console"


def decider(session: Session, form: dict[str, str]) -> str:
    """Who decided or acted, in one line: the name given, quoted, and the session's token apart (attribution)."""
    return attribution(typed_name(form), session.token.name)


# ---- the fleet ------------------------------------------------------------------------------------------------------


async def bot_status(app: web.Application, bot: str) -> dict[str, Any]:
    """The bot's own `status` (its control API, with the target's least token), or {"error": ...}."""
    config = app[keys.CONFIG]
    target = config.reconciler.targets[bot]
    url = f"{target.url.rstrip('/')}/control/status"
    headers = {"Authorization": f"Bearer {target_token(config, bot, 'status')}", SOURCE_HEADER: SOURCE_OPERATOR}
    try:
        async with app[keys.SESSION].post(url, json={}, headers=headers, timeout=STATUS_TIMEOUT) as resp:
            text = await resp.text()
            if resp.status != 200:
                return {"error": f"status answered HTTP {resp.status}"}
            answer = json.loads(text)
            return answer if isinstance(answer, dict) else {"error": "status answered no object"}
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"error": f"no answer ({type(exc).__name__})"}


def positions(status: dict[str, Any]) -> str:
    held = status.get("positions")
    if not isinstance(held, dict):
        return "-"
    open_ = {k: v for k, v in list(held.items())[:MAX_POSITIONS] if str(v) not in ("0", "0.0", "")}
    return ", ".join(f"{h(k)} {h(v)}" for k, v in open_.items()) or "flat"


def status_detail(status: dict[str, Any]) -> tuple[str, str]:
    """The state badge and the facts of a bot's `status` answer; ValueError, TypeError or OverflowError for an
    answer that is not one (fleet_card then shows the bot as unknown)."""
    if "error" in status:
        return badge("unknown"), f'<dt>Status</dt><dd class="problem">{h(status["error"])}</dd>'
    state = status.get("state", "?")
    if not isinstance(state, str):
        raise TypeError(f"state is {type(state).__name__}")
    age = status.get("heartbeat_age_seconds")
    beat = "-"
    if isinstance(age, int | float) and not isinstance(age, bool):
        seconds = float(age)
        if not 0 <= seconds < MAX_HEARTBEAT_AGE:
            raise ValueError(f"heartbeat_age_seconds {str(age)[:40]}")
        beat = f"{seconds:.1f} s ago"
    return badge(state[:40]), (
        f"<dt>Reason</dt><dd>{h(str(status.get('state_reason') or '-')[:500])}</dd>"
        f"<dt>Last heartbeat</dt><dd>{h(beat)}</dd>"
        f"<dt>Positions</dt><dd class=positions>{positions(status)}</dd>"
    )


def bot_card(bot: str, status: dict[str, Any], opened: int, asks: int, until: Any, session: Session) -> str:
    """One bot on the fleet page. Whatever its `status` answered, the card is drawn (the page holds every bot's
    emergency halt): an answer that cannot be read shows the bot as unknown, saying why."""
    try:
        state, detail = status_detail(status)
    except (ValueError, TypeError, OverflowError) as exc:
        log.warning("console: status of %s not shown: %s", bot, exc)
        state = badge("unknown")
        detail = f'<dt>Status</dt><dd class="problem">{h(f"status answered what is not a status ({exc})")}</dd>'
    episodes_link = f'<a href="{PREFIX}/episodes?target={h(bot)}">{opened} open</a>'
    breaker = f"open until {when(until)}" if until else "closed"
    halt = (
        f'<a class="button danger" href="{PREFIX}/bots/{h(bot)}/halt">Emergency halt</a>'
        if session.token.allows(DESTRUCTIVE)
        else ""
    )
    approvals_link = f'<a href="{PREFIX}/approvals">{asks} waiting</a>' if asks else "none waiting"
    return (
        f'<section class="card bot" id="bot-{h(bot)}"><h2>{h(bot)} {state}</h2><dl>{detail}'
        f"<dt>Episodes</dt><dd>{episodes_link}</dd><dt>Approvals</dt><dd>{approvals_link}</dd>"
        f"<dt>Circuit</dt><dd>{breaker}</dd></dl>{halt}</section>"
    )


async def fleet(request: web.Request, session: Session) -> web.StreamResponse:
    app = request.app
    targets = sorted(app[keys.CONFIG].reconciler.targets)
    ledger = app[keys.LEDGER]
    now = utcnow()
    statuses, open_by, circuits, waiting = await asyncio.gather(
        asyncio.gather(*(bot_status(app, b) for b in targets)),
        asyncio.to_thread(ledger.open_episodes_by_target),
        asyncio.to_thread(ledger.open_circuits, now),
        asyncio.to_thread(app[keys.ENGINE].approvals.recent, "pending", LIST_LIMIT),
    )
    waiting_by: dict[str, int] = {}
    for row in waiting:
        waiting_by[row["target"]] = waiting_by.get(row["target"], 0) + 1
    circuit = {c["target"]: c["open_until"] for c in circuits}
    cards = [
        bot_card(bot, status, open_by.get(bot, 0), waiting_by.get(bot, 0), circuit.get(bot), session)
        for bot, status in zip(targets, statuses, strict=True)
    ]
    if "__global__" in circuit or any(c["target"] not in targets for c in circuits):
        others = ", ".join(h(c["target"]) for c in circuits if c["target"] not in targets)
        cards.append(f'<p class="problem">Open circuits: {others}</p>')
    body = flash(session) + ("".join(cards) or "<p>No bots configured (reconciler.targets).</p>")
    going_on = bool(waiting) or any(open_by.get(bot, 0) for bot in targets)
    return html_response(layout("Fleet", f'<div class="grid">{body}</div>', session, "fleet", refresh=going_on))


# ---- episodes -------------------------------------------------------------------------------------------------------


async def episodes(request: web.Request, session: Session) -> web.StreamResponse:
    ledger = request.app[keys.LEDGER]
    target = request.query.get("target", "")[:255]
    rows = await asyncio.to_thread(ledger.list_episodes, LIST_LIMIT, None, target or None)
    items = "".join(
        f'<li class="row"><a href="{PREFIX}/episodes/{e["id"]}"><span class="id">#{e["id"]}</span> '
        f"<strong>{h(e['alertname'])}</strong> on {h(e['target'])}</a> {badge(e['state'])}"
        f'<div class="meta">{when(e["received_at"])} · {h(e["rule"] or "no rule")} · {h(e["detail"] or "")}</div></li>'
        for e in rows
    )
    title = f"Episodes of {target}" if target else "Episodes"
    body = f'<ul class="list">{items}</ul>' if items else "<p>No episodes.</p>"
    return html_response(layout(title, body, session, "episodes"))


def approval_card(row: dict[str, Any], session: Session) -> str:
    """One approval: what it asks, its state, and (pending, for an `approve` token) the decision forms."""
    try:
        arguments = json.dumps(json.loads(row["arguments"]), indent=1)
    except ValueError:
        arguments = row["arguments"]
    decided = (
        f"<dt>Decided</dt><dd>{deciders(row)} at {when(row['decided_at'])}: {h(row['reason'])}</dd>"
        if row["decided_by"]
        else ""
    )
    forms = ""
    if row["status"] == "pending":
        if session.token.allows(APPROVE):
            forms = (
                f'<form method="post" action="{PREFIX}/approvals/{row["id"]}" class="decide">{csrf_field(session)}'
                f'<label>Reason <small>(required)</small><input name="reason" required maxlength="{REASON_MAX}">'
                '</label><label>Your name <small>(optional)</small><input name="by" maxlength="80"></label>'
                '<button type="submit" name="decision" value="approve" class="good">Approve</button>'
                '<button type="submit" name="decision" value="reject" class="danger">Reject</button></form>'
            )
        else:
            forms = (
                f'<p class="hint">Deciding needs a token with the approve scope (yours: {h(session.token.scope)}).</p>'
            )
    return (
        f'<section class="card approval" id="approval-{row["id"]}">'
        f"<h2>Approval #{row['id']} {badge(row['status'])}</h2><dl>"
        f'<dt>Episode</dt><dd><a href="{PREFIX}/episodes/{row["episode_id"]}">#{row["episode_id"]}</a> '
        f"{h(row.get('alertname') or '')} on {h(row['target'])}</dd>"
        f"<dt>Step</dt><dd>{row['position'] + 1}: {h(row['step_name'])}</dd>"
        f"<dt>Rule</dt><dd>{h(row['rule'])}</dd>"
        f"<dt>Deadline</dt><dd>{when(row['deadline'])} (then {h(row['on_timeout'])})</dd>{decided}</dl>"
        f"<details><summary>Arguments</summary><pre>{h(arguments)}</pre></details>{forms}</section>"
    )


async def episode(request: web.Request, session: Session) -> web.StreamResponse:
    try:
        episode_id = http_input.parse_id(request.match_info["id"], "episode")
    except http_input.InputError:
        return html_response(layout("Not found", "<p>No such episode.</p>", session), 404)
    app = request.app
    row = await asyncio.to_thread(app[keys.LEDGER].get_episode_full, episode_id)
    if row is None:
        return html_response(layout("Not found", f"<p>No episode {episode_id}.</p>", session), 404)
    asked = await asyncio.to_thread(app[keys.ENGINE].approvals.of_episode, row["id"])
    labels = json.loads(row["labels"])
    annotations = json.loads(row["annotations"])
    facts = (
        f"<dl><dt>State</dt><dd>{badge(row['state'])} {h(row['detail'] or '')}</dd>"
        f"<dt>Target</dt><dd>{h(row['target'])}</dd><dt>Rule</dt><dd>{h(row['rule'] or '-')}</dd>"
        f"<dt>Alert started</dt><dd>{when(row['starts_at'])}</dd><dt>Received</dt><dd>{when(row['received_at'])}</dd>"
        f"<dt>Resolved</dt><dd>{when(row['resolved_at'])}</dd><dt>Closed</dt><dd>{when(row['closed_at'])}</dd></dl>"
        "<details><summary>Labels and annotations</summary><dl>"
        + "".join(f"<dt>{h(k)}</dt><dd>{h(v)}</dd>" for k, v in {**labels, **annotations}.items())
        + "</dl></details>"
    )
    timeline = []
    for a in row["attempt_list"]:
        steps = "".join(
            f'<li class="step"><div>{badge(s["outcome"] or "running")} <strong>{s["position"] + 1}. '
            f"{h(s['description'])}</strong> <small>[{h(s['risk'])}]</small></div>"
            f'<div class="meta">{when(s["started_at"])} → {when(s["finished_at"])}</div>'
            + (f"<pre>{h(s['output'])}</pre>" if s["output"] else "")
            + "</li>"
            for s in a["steps"]
        )
        timeline.append(
            f'<li class="attempt"><h3>Attempt {a["number"]} {badge(a["outcome"] or "running")}</h3>'
            f'<div class="meta">{when(a["started_at"])} → {when(a["finished_at"])} · {h(a["detail"] or "")}</div>'
            f'<ol class="steps">{steps}</ol></li>'
        )
    pages = "".join(
        f"<li class=row><strong>{h(p['alertname'])}</strong> · {when(p['created_at'])} · "
        + (f"posted {when(p['posted_at'])}" if p["posted_at"] else f"not posted yet ({h(p['last_error'] or '')})")
        + "</li>"
        for p in row["escalation_list"]
    )
    body = (
        f'<section class="card">{facts}</section>'
        + "".join(approval_card(a, session) for a in asked if a["status"] == "pending")
        + "<h2>Timeline</h2>"
        + (f'<ol class="timeline">{"".join(timeline)}</ol>' if timeline else "<p>No attempt yet.</p>")
        + (
            f'<h2>Approvals</h2><ul class="list">{"".join(decided_row(a) for a in decided)}</ul>'
            if (decided := [a for a in asked if a["status"] != "pending"])
            else ""
        )
        + (f'<h2>Pages</h2><ul class="list">{pages}</ul>' if pages else "")
    )
    title = f"Episode #{row['id']}: {row['alertname']}"
    waits = any(a["status"] == "pending" for a in asked)
    going_on = row["closed_at"] is None and not (waits and session.token.allows(APPROVE))
    return html_response(layout(title, flash(session) + body, session, "episodes", refresh=going_on))


# ---- approvals ------------------------------------------------------------------------------------------------------


def deciders(row: dict[str, Any]) -> str:
    """Who decided an approval, the typed name and the token apart: the name as quoted text, the token in its own
    element (the CLI's decisions have none)."""
    token = row.get("decided_token")
    via = f'<span class="token">token {h(token)}</span>' if token else '<span class="token">the CLI</span>'
    return f'<q class="decider">{h(row["decided_by"])}</q> {via}'


def decided_row(row: dict[str, Any]) -> str:
    who = f" by {deciders(row)}: {h(row['reason'])}" if row["decided_by"] else ""
    return (
        f'<li class="row" id="approval-{row["id"]}"><strong>#{row["id"]}</strong> {badge(row["status"])} '
        f'<a href="{PREFIX}/episodes/{row["episode_id"]}">episode #{row["episode_id"]}</a> · step '
        f"{row['position'] + 1}: {h(row['step_name'])}"
        f'<div class="meta">{when(row["decided_at"] or row["requested_at"])}{who}</div></li>'
    )


async def approvals(request: web.Request, session: Session) -> web.StreamResponse:
    store = request.app[keys.ENGINE].approvals
    pending, recent = await asyncio.gather(
        asyncio.to_thread(store.recent, "pending", LIST_LIMIT), asyncio.to_thread(store.recent, None, 20)
    )
    decided = [a for a in recent if a["status"] != "pending"]
    body = (
        flash(session)
        + "<h2>Pending</h2>"
        + ("".join(approval_card(a, session) for a in pending) or "<p>Nothing waits for a decision.</p>")
        + "<h2>Recent decisions</h2>"
        + (f'<ul class="list">{"".join(decided_row(a) for a in decided)}</ul>' if decided else "<p>None yet.</p>")
    )
    going_on = bool(pending) and not session.token.allows(APPROVE)  # an approver's forms are never reloaded away
    return html_response(layout("Approvals", body, session, "approvals", refresh=going_on))


async def decide(request: web.Request, session: Session, form: dict[str, str]) -> web.StreamResponse:
    raw = str(http_input.parse_id(request.match_info["id"], "approval"))
    decision, reason = form.get("decision", ""), " ".join(form.get("reason", "").split())
    if decision not in DECISIONS:
        return one_line(400, "refused: decision must be approve or reject")
    if not reason:
        return with_flash(session, f"{PREFIX}/approvals", "problem", f"approval {raw}: a reason is required")
    app = request.app
    engine = app[keys.ENGINE]
    who = decider(session, form)
    result = await asyncio.to_thread(
        engine.approvals.decide,
        int(raw),
        decision,
        typed_name(form),
        reason[:REASON_MAX],
        app[keys.PLAYBOOK].version,
        utcnow(),
        session.token.name,
    )
    if isinstance(result, Refusal):
        log.warning("console: approval %s %s by %s refused: %s", raw, decision, who, result.message)
        return with_flash(session, f"{PREFIX}/approvals", "problem", result.message)
    engine.wake.set()
    log.info("approval %s %s by %s (console): %s", raw, result["status"], who, reason)
    return with_flash(session, f"{PREFIX}/approvals", "done", f"approval {raw} {result['status']} by {who}")


# ---- maintenance windows --------------------------------------------------------------------------------------------


def maintenance_of(app: web.Application) -> Maintenance:
    return Maintenance(app[keys.CONFIG], app[keys.LEDGER].engine, app[keys.SESSION])


async def maintenance(request: web.Request, session: Session) -> web.StreamResponse:
    rows = await asyncio.to_thread(maintenance_of(request.app).windows, open_only=False, limit=50)
    can = session.token.allows(OPERATE)
    items = []
    for w in rows:
        matchers = ", ".join(f"{k}={v}" for k, v in json.loads(w.matchers).items())
        end = (
            f'<form method="post" action="{PREFIX}/maintenance/{w.id}/end" class="end">{csrf_field(session)}'
            '<button type="submit">End now</button></form>'
            if can and w.state == ACTIVE
            else ""
        )
        items.append(
            f'<li class="row" id="window-{w.id}">{end}<strong>#{w.id}</strong> {badge(w.state)} {h(matchers)}'
            f'<div class="meta">{when(w.starts_at)} → {when(w.ends_at)} · {h(w.reason)} · {h(w.created_by)}</div></li>'
        )
    start = (
        f'<form method="post" action="{PREFIX}/maintenance" class="card">{csrf_field(session)}'
        '<label>Duration <small>(30m, 2h)</small><input name="duration" required value="30m"></label>'
        '<label>Reason<input name="reason" required maxlength="500"></label>'
        "<label>Matchers <small>(label=value, one per line; empty: every bot)</small>"
        '<textarea name="matchers" rows="2"></textarea></label>'
        '<p class="hint">A window that would silence the reconciler&#39;s own pages (service=trading-ops, '
        "TradingOps… alerts, a bot's instance alone) or the Watchdog needs the destructive scope.</p>"
        '<label>Your name <small>(optional)</small><input name="by" maxlength="80"></label>'
        '<button type="submit">Start window</button></form>'
        if can
        else '<p class="hint">Starting and ending windows needs the operate scope '
        f"(yours: {h(session.token.scope)}).</p>"
    )
    listed = f'<ul class="list">{"".join(items)}</ul>' if items else "<p>None.</p>"
    body = flash(session) + listed + "<h2>Start a window</h2>" + start
    return html_response(layout("Maintenance", body, session, "maintenance"))


async def start_window(request: web.Request, session: Session, form: dict[str, str]) -> web.StreamResponse:
    back = f"{PREFIX}/maintenance"
    try:
        seconds = parse_duration(form.get("duration", "").strip())
        matchers = parse_matchers([m.strip() for m in form.get("matchers", "").splitlines() if m.strip()])
        reason = " ".join(form.get("reason", "").split())
        if not reason:
            raise MaintenanceError("a reason is required")
        own = silences_own_pages(matchers)
        if own is not None and not session.token.allows(DESTRUCTIVE):
            log.warning("console maintenance window by %s refused: it would silence %s", decider(session, form), own)
            raise MaintenanceError(f"this window would silence {own}: {refusal('that', DESTRUCTIVE, session.token)}")
        outcome = await maintenance_of(request.app).start(
            matchers, seconds, reason, f"console: {decider(session, form)}"
        )
    except (ValueError, MaintenanceError) as exc:
        return with_flash(session, back, "problem", str(exc))
    note = "; ".join([*outcome.done, *outcome.problems])
    log.warning("maintenance window %d started from the console by %s", outcome.window.id, decider(session, form))
    return with_flash(
        session, back, "problem" if outcome.problems else "done", f"window {outcome.window.id} started: {note}"
    )


async def end_window(request: web.Request, session: Session, form: dict[str, str]) -> web.StreamResponse:
    back = f"{PREFIX}/maintenance"
    raw = str(http_input.parse_id(request.match_info["id"], "window"))
    try:
        outcome = await maintenance_of(request.app).end(int(raw))
    except MaintenanceError as exc:
        return with_flash(session, back, "problem", str(exc))
    log.warning("maintenance window %s ended from the console by %s", raw, decider(session, form))
    note = "; ".join([*outcome.done, *outcome.problems]) or "nothing to undo"
    return with_flash(session, back, "problem" if outcome.problems else "done", f"window {raw} ended: {note}")


# ---- emergency halt -------------------------------------------------------------------------------------------------


async def halt_confirm(request: web.Request, session: Session) -> web.StreamResponse:
    bot = request.match_info["bot"]
    if bot not in request.app[keys.CONFIG].reconciler.targets:
        return html_response(layout("Not found", "<p>No such bot.</p>", session), 404)
    if not session.token.allows(DESTRUCTIVE):
        body = f'<p class="problem">{h(refusal("halting a bot", DESTRUCTIVE, session.token))}</p>'
        return html_response(layout(f"Halt {bot}", body, session), 403)
    body = flash(session) + (
        f'<section class="card warn"><p>Halting <strong>{h(bot)}</strong> stops its trading at once: it sends no new '
        "orders until someone clears the halt (<code>clear_halt</code>). Open orders and positions stay as they "
        "are.</p>"
        f'<form method="post" action="{PREFIX}/bots/{h(bot)}/halt">{csrf_field(session)}'
        '<label>Reason<input name="reason" required maxlength="500"></label>'
        '<label>Your name <small>(optional)</small><input name="by" maxlength="80"></label>'
        f'<button type="submit" class="danger">Yes, halt {h(bot)}</button> '
        f'<a class="button" href="{PREFIX}/">Cancel</a></form></section>'
    )
    return html_response(layout(f"Halt {bot}?", body, session, "fleet"))


async def halt(request: web.Request, session: Session, form: dict[str, str]) -> web.StreamResponse:
    app = request.app
    config = app[keys.CONFIG]
    bot = request.match_info["bot"]
    if bot not in config.reconciler.targets:
        return one_line(404, "refused: no such bot")
    reason = " ".join(form.get("reason", "").split())
    if not reason:
        return with_flash(session, f"{PREFIX}/bots/{bot}/halt", "problem", "a reason is required")
    who = decider(session, form)
    target = config.reconciler.targets[bot]
    url = f"{target.url.rstrip('/')}/control/halt"
    # The target's destructive token when it has one (target_token): halt is a destructive command.
    headers = {"Authorization": f"Bearer {target_token(config, bot, 'halt')}", SOURCE_HEADER: SOURCE_OPERATOR}
    body = {"reason": f"emergency halt from the console by {who}: {reason}"[:500]}
    try:
        async with app[keys.SESSION].post(url, json=body, headers=headers, timeout=HALT_TIMEOUT) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        status, text = 0, f"no answer ({type(exc).__name__})"
    if status != 200:
        log.error("console: halt of %s by %s failed: HTTP %s %s", bot, who, status, text[:200])
        return with_flash(session, f"{PREFIX}/", "problem", f"halt of {bot} failed: HTTP {status} {text[:200]}")
    log.warning("console: %s halted by %s: %s", bot, who, reason)
    return with_flash(session, f"{PREFIX}/", "done", f"{bot} halted by {who}")


# ---- the stylesheet -------------------------------------------------------------------------------------------------

# The one stylesheet (no external font, no framework): served from the package, read once.
CSS = (Path(__file__).parent / "console.css").read_text(encoding="utf-8")


async def stylesheet(_request: web.Request) -> web.Response:
    return web.Response(text=CSS, content_type="text/css", headers={"Cache-Control": "max-age=300"})
