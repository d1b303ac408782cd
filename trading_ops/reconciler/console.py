"""The operator console: a small server-rendered web UI under /ui/ (docs/reconciler.md, "The operator console").

Pages: the fleet (the alerts Alertmanager holds; each configured bot by its name, its state from its `status`, last
heartbeat, the day's loss, positions and their value, open episodes, circuit), episodes and an episode's timeline
(outcomes in words, the PromQL behind a <details>), approvals (what is at stake, the deadline; approve / reject with a
reason; their count in the navigation), maintenance windows (start / end) and an emergency halt per bot behind a
confirmation page. Times in one format (console_text). HTML only, no JavaScript; one stylesheet served from here;
every response carries a strict Content-Security-Policy.

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
import functools
import hashlib
import hmac
import html
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from trading_ops import audit, http_input
from trading_ops.bot.control import SOURCE_HEADER, SOURCE_OPERATOR, SOURCE_RECONCILER
from trading_ops.clients.alertmanager import AlertmanagerError
from trading_ops.db.base import utcnow
from trading_ops.durations import parse_duration
from trading_ops.http_guard import API_HEADERS
from trading_ops.ops.maintenance import ACTIVE, MaintenanceError, parse_matchers, silences_own_pages
from trading_ops.reconciler import keys
from trading_ops.reconciler.actions.bot import target_token
from trading_ops.reconciler.approvals import (
    DECIDER_MAX,
    DECISIONS,
    REASON_MAX,
    Refusal,
    approvers_of,
    attribution,
    requester_of,
    was_decided,
)
from trading_ops.reconciler.console_text import (
    absolute,
    amount,
    as_utc,
    number,
    outcome,
    quantity,
    quote_of,
    relative,
    times_said,
)
from trading_ops.reconciler.ledger import StoredSession
from trading_ops.reconciler.login_throttle import LoginThrottle, LoginThrottleCollector
from trading_ops.reconciler.operator_api import maintenance_of
from trading_ops.reconciler.own_pages import own_alerts
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
STATUS_SECONDS = 3.0
STATUS_TIMEOUT = aiohttp.ClientTimeout(total=STATUS_SECONDS)
HALT_TIMEOUT = aiohttp.ClientTimeout(total=10)
MAX_FORM_BYTES = 16 * 1024
# Alert severities the fleet page colours (others are shown plain).
SEVERITIES = ("critical", "warning", "info")
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
    # Approvals waiting for a decision (the navigation's count).
    pending: int = 0


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
    app[keys.LOGIN_THROTTLE] = LoginThrottle(trusted_proxies=app[keys.CONFIG].reconciler.trusted_proxies)
    app[keys.REGISTRY].register(LoginThrottleCollector(app[keys.LOGIN_THROTTLE]))
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


def nav_label(key: str, label: str, session: Session) -> str:
    """A link's text; Approvals with the count of those waiting for a decision."""
    if key != "approvals" or not session.pending:
        return label
    waiting = f"{session.pending} waiting for a decision"
    return f'{label} <span class="count" title="{waiting}" aria-label="{waiting}">{session.pending}</span>'


def layout(title: str, body: str, session: Session | None = None, current_nav: str = "", refresh: bool = False) -> str:
    """The page: a header with the navigation (one line, also on a phone) and, apart from it, who is logged in."""
    nav = ""
    if session is not None:
        links = "".join(
            f'<a href="{PREFIX}{path}"{" aria-current=page" if key == current_nav else ""}>'
            f"{nav_label(key, label, session)}</a>"
            for key, path, label in NAV
        )
        nav = (
            f"<nav>{links}</nav>"
            f'<div class="account"><span class="who">{h(session.token.name)} '
            f"<small>({h(session.token.scope)})</small></span>"
            f'<form method="post" action="{PREFIX}/logout" class="inline">{csrf_field(session)}'
            '<button type="submit" class="link">Log out</button></form></div>'
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
    now = utcnow()
    shown = "".join(
        f'<p class="{kind}" role="{"status" if kind == "done" else "alert"}">{h(times_said(message, now))}</p>'
        for kind, message in session.flash
    )
    session.shown += len(session.flash)
    session.flash.clear()
    return shown


def when(value: datetime | str | None, now: datetime | None = None) -> str:
    """A time in the console's one format: `2026-11-26 20:58:30 UTC`, and beside it how far from now
    (`in 12 min`, `3 min ago`)."""
    at = as_utc(value)
    if at is None:
        return "-" if value is None or value == "" else h(value)
    rel = relative(at, now or utcnow())
    return f'<time datetime="{h(at.isoformat())}">{h(absolute(at))}</time> <span class="rel">({h(rel)})</span>'


def said(detail: str | None, now: datetime | None = None) -> str:
    """An outcome's detail in words; the PromQL behind it (if any) in a <details>."""
    told = outcome(detail, now)
    if not told.query:
        return h(told.words)
    source = f" (the expression from {h(told.source)})" if told.source else ""
    return (
        f'{h(told.words)} <details class="query"><summary>Query</summary><pre>{h(told.query)}</pre>'
        f'<p class="hint">Asked of Prometheus after the action{source}: no result means the condition is gone.</p>'
        "</details>"
    )


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
    throttle = request.app[keys.LOGIN_THROTTLE]
    client = throttle.client(request.remote, request.headers.getall("X-Forwarded-For", []))
    wait = throttle.locked(client)
    if wait:  # refused unread and unlogged: login_throttle logs a lockout, and a flood, once
        response = one_line(429, f"refused: too many failed login attempts; try again in {wait} s")
        response.headers["Retry-After"] = str(wait)
        return response
    try:
        form = await read_form(request)
    except (http_input.InputError, web.HTTPException):  # a body no login form sends is a failed attempt too
        throttle.failed(client)
        raise
    expected = request.cookies.get(LOGIN_COOKIE, "")
    problem, refused = "", None
    if not expected or not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        problem, refused = "missing or wrong CSRF token", one_line(403, CSRF_REFUSED)
    token = request.app[keys.API_TOKENS].match(f"Bearer {form.get('token', '').strip()}")
    if refused is None and token is None:
        problem, refused = "unknown token", await login_form(request, "Unknown token.", 401)
    if refused is not None or token is None:
        if not throttle.flooding:  # during a flood its one line says it all
            log.warning("console login from %s refused: %s", client, problem)
        throttle.failed(client)
        return refused or one_line(401, "refused: unknown token")
    sid, _session = await asyncio.to_thread(
        request.app[keys.LEDGER].create_console_session,
        token.name,
        token.scope,
        token_hash(token),
        utcnow(),
        SESSION_SECONDS,
        MAX_SESSIONS_PER_TOKEN,
    )
    log.info("console login: token %r from %s", token.name, client)
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
        session.pending = await asyncio.to_thread(request.app[keys.ENGINE].approvals.pending_count)
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
    """The optional name a person gave (`by`), as free text: a comment beside the session's token, "" for none."""
    return " ".join(form.get("by", "").split())[: DECIDER_MAX - 80]


def console_principal(request: web.Request, session: Session) -> tuple[str, str]:
    """Who decides through the console, as an audit entry names it: the session's token, and where from."""
    return session.token.name, f"console {request.remote or '-'}"


def decider(session: Session, form: dict[str, str]) -> str:
    """Who decided or acted, in one line: the session's token, a name typed beside it only as a comment."""
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


def bot_names(app: web.Application) -> dict[str, str]:
    """Each target's name (configuration `bots[]`: instance -> name); a target of reconciler.targets is its own name."""
    return {b.instance: b.name for b in app[keys.CONFIG].bots}


def bot_name(names: dict[str, str], target: str) -> str:
    """A bot as the console names it: its name, its instance beside it (small) when that differs."""
    name = names.get(target, target)
    return h(name) if name == target else f'{h(name)} <small class="instance">{h(target)}</small>'


def held(status: dict[str, Any]) -> list[tuple[str, str, Decimal | None]]:
    """The positions a bot's status lists that are not flat: (symbol, size as shown, value in the quote asset or
    None). A size that is not a number is shown as the bot gave it (and counts as held)."""
    listed = status.get("positions")
    values = status.get("position_values")
    values = values if isinstance(values, dict) else {}
    if not isinstance(listed, dict):
        return []
    out: list[tuple[str, str, Decimal | None]] = []
    for symbol, size in list(listed.items())[:MAX_POSITIONS]:
        q = number(size)
        if q is None:
            out.append((str(symbol)[:40], str(size)[:40], None))
        elif q:
            out.append((str(symbol)[:40], quantity(q), number(values.get(symbol))))
    return out


def positions(status: dict[str, Any]) -> str:
    """A bot's open positions, one a line, each with its value at the mark: `ETH-USD -0.4065 (worth -40.65 USD)`."""
    if not isinstance(status.get("positions"), dict):
        return "-"
    shown = []
    for symbol, size, value in held(status):
        worth = "" if value is None else f' <span class="worth">(worth {amount(value)} {h(quote_of(symbol))})</span>'
        shown.append(f"{h(symbol)} {h(size)}{worth}")
    return "<br>".join(shown) or "flat"  # one position a line


def loss_today(status: dict[str, Any]) -> str:
    """The day's loss (realized and unrealized) beside the bot's daily loss limit; "" when the status does not say."""
    realized, unrealized = number(status.get("realized_pnl_today")), number(status.get("unrealized_pnl"))
    if realized is None or unrealized is None:
        return ""
    limits = status.get("risk_limits")
    limit = number(limits.get("daily_loss")) if isinstance(limits, dict) else None
    loss = -(realized + unrealized)
    text = amount(loss) if loss > 0 else f"none (up {amount(-loss)})"
    if limit:
        text += f" (limit {amount(limit)})"
        if loss >= limit:
            text += ' <strong class="breach">breached</strong>'
    return text


def stakes(status: dict[str, Any]) -> str:
    """What a bot has at stake, as <dt>/<dd> rows: the day's loss against its limit, the positions and their value,
    open orders. ValueError, TypeError or OverflowError for a status that is not one."""
    rows = []
    if loss := loss_today(status):
        rows.append(f"<dt>Loss today</dt><dd class=loss>{loss}</dd>")
    rows.append(f"<dt>Positions</dt><dd class=positions>{positions(status)}</dd>")
    orders = status.get("open_orders")
    if isinstance(orders, int) and not isinstance(orders, bool):
        rows.append(f"<dt>Open orders</dt><dd>{orders}</dd>")
    return "".join(rows)


def status_detail(status: dict[str, Any]) -> tuple[str, str]:
    """The state badge and the facts of a bot's `status` answer; ValueError, TypeError or OverflowError for an
    answer that is not one (bot_card then shows the bot as unknown)."""
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
        f"<dt>Last heartbeat</dt><dd>{h(beat)}</dd>{stakes(status)}"
    )


@dataclass
class BotView:
    """What the fleet page knows of one bot besides its status: open episodes, approvals waiting, firing alerts, and
    until when its circuit is open."""

    opened: int = 0
    asks: int = 0
    alerts: int = 0
    until: Any = None


def unhandled(status: dict[str, Any], view: BotView) -> bool:
    """Halted (or kept from trading) with a position, and no open episode or approval about it: a person must act."""
    blocked = status.get("state") == "halted" or status.get("trading_allowed") is False
    return blocked and bool(held(status)) and not view.opened and not view.asks


def bot_card(bot: str, name: str, status: dict[str, Any], view: BotView, session: Session) -> str:
    """One bot on the fleet page. Whatever its `status` answered, the card is drawn (the page holds every bot's
    emergency halt): an answer that cannot be read shows the bot as unknown, saying why."""
    try:
        state, detail = status_detail(status)
    except (ValueError, TypeError, OverflowError) as exc:
        log.warning("console: status of %s not shown: %s", bot, exc)
        state = badge("unknown")
        detail = f'<dt>Status</dt><dd class="problem">{h(f"status answered what is not a status ({exc})")}</dd>'
    episodes_link = f'<a href="{PREFIX}/episodes?target={h(bot)}">{view.opened} open</a>'
    breaker = f"open until {when(view.until)}" if view.until else "closed"
    if session.token.allows(DESTRUCTIVE):
        halt = f'<a class="button danger" href="{PREFIX}/bots/{h(bot)}/halt">Emergency halt</a>'
    else:
        halt = f'<p class="hint">Emergency halt: needs the destructive scope (yours: {h(session.token.scope)}).</p>'
    approvals_link = f'<a href="{PREFIX}/approvals">{view.asks} waiting</a>' if view.asks else "none waiting"
    alerts = f'<a href="#alerts">{view.alerts} firing</a>' if view.alerts else "none firing"
    warning = (
        '<p class="problem" role="alert">Kept from trading with a position open, and no episode or approval is '
        "handling it: decide whether to flatten it (docs/reconciler.md, Approvals) or clear the halt.</p>"
        if unhandled(status, view)
        else ""
    )
    return (
        f'<section class="card bot" id="bot-{h(bot)}"><h2>{bot_name({bot: name}, bot)} {state}</h2>{warning}'
        f"<dl>{detail}<dt>Alerts</dt><dd>{alerts}</dd>"
        f"<dt>Episodes</dt><dd>{episodes_link}</dd><dt>Approvals</dt><dd>{approvals_link}</dd>"
        f"<dt>Circuit</dt><dd>{breaker}</dd></dl>{halt}</section>"
    )


async def firing_alerts(app: web.Application) -> list[dict[str, Any]] | str:
    """The alerts Alertmanager holds (API v2: firing, silenced or inhibited; never the Watchdog, which always fires),
    most severe and oldest first; or why it did not say."""
    try:
        async with asyncio.timeout(STATUS_SECONDS):
            answer = await app[keys.ENGINE].alertmanager.alerts(active=True)
    except (AlertmanagerError, TimeoutError) as exc:
        return f"Alertmanager did not answer: {str(exc) or type(exc).__name__}"[:500]
    alerts = [
        a
        for a in answer
        if isinstance(a, dict) and isinstance(a.get("labels"), dict) and a["labels"].get("alertname") != "Watchdog"
    ]
    rank = {"critical": 0, "warning": 1}
    return sorted(alerts, key=lambda a: (rank.get(str(a["labels"].get("severity")), 2), str(a.get("startsAt", ""))))


def alert_row(alert: dict[str, Any], names: dict[str, str], now: datetime) -> str:
    labels, annotations = alert["labels"], alert.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    severity = str(labels.get("severity") or "none")
    instance = labels.get("instance")
    on = f" on {bot_name(names, str(instance))}" if instance else ""
    state = alert.get("status", {}).get("state") if isinstance(alert.get("status"), dict) else None
    quiet = ' <span class="badge s-silenced">silenced</span>' if state == "suppressed" else ""
    summary = annotations.get("summary") or annotations.get("description") or ""
    return (
        f'<li class="row alert"><span class="badge sev sev-{h(severity if severity in SEVERITIES else "other")}">'
        f"{h(severity[:20])}</span> <strong>{h(labels.get('alertname'))}</strong>{on}{quiet}"
        f'<div class="meta">{h(str(summary)[:300])} · firing since {when(alert.get("startsAt"), now)}</div></li>'
    )


def alerts_section(alerts: list[dict[str, Any]] | str, names: dict[str, str], now: datetime) -> str:
    if isinstance(alerts, str):
        listed = f'<p class="problem">{h(alerts)}</p>'
    elif alerts:
        listed = f'<ul class="list">{"".join(alert_row(a, names, now) for a in alerts[:LIST_LIMIT])}</ul>'
    else:
        listed = "<p>None (the Watchdog aside, which always fires).</p>"
    count = f" ({len(alerts)})" if isinstance(alerts, list) and alerts else ""
    return f'<section class="alerts" id="alerts"><h2>Firing alerts{count}</h2>{listed}</section>'


async def fleet(request: web.Request, session: Session) -> web.StreamResponse:
    app = request.app
    targets = sorted(app[keys.CONFIG].reconciler.targets)
    names = bot_names(app)
    ledger = app[keys.LEDGER]
    now = utcnow()
    statuses, open_by, circuits, waiting, alerts = await asyncio.gather(
        asyncio.gather(*(bot_status(app, b) for b in targets)),
        asyncio.to_thread(ledger.open_episodes_by_target),
        asyncio.to_thread(ledger.open_circuits, now),
        asyncio.to_thread(app[keys.ENGINE].approvals.recent, "pending", LIST_LIMIT),
        firing_alerts(app),
    )
    views = {bot: BotView(opened=open_by.get(bot, 0), until=None) for bot in targets}
    for row in waiting:
        if row["target"] in views:
            views[row["target"]].asks += 1
    for alert in alerts if isinstance(alerts, list) else []:
        if (instance := alert["labels"].get("instance")) in views:
            views[instance].alerts += 1
    circuit = {c["target"]: c["open_until"] for c in circuits}
    for bot, view in views.items():
        view.until = circuit.get(bot)
    cards = [
        bot_card(bot, names.get(bot, bot), status, views[bot], session)
        for bot, status in zip(targets, statuses, strict=True)
    ]
    if "__global__" in circuit or any(c["target"] not in targets for c in circuits):
        others = ", ".join(h(c["target"]) for c in circuits if c["target"] not in targets)
        cards.append(f'<p class="problem">Open circuits: {others}</p>')
    grid = "".join(cards) or "<p>No bots configured (bots, or reconciler.targets).</p>"
    body = flash(session) + alerts_section(alerts, names, now) + f'<h2>Bots</h2><div class="grid">{grid}</div>'
    going_on = bool(waiting) or any(v.opened for v in views.values())
    return html_response(layout("Fleet", body, session, "fleet", refresh=going_on))


# ---- episodes -------------------------------------------------------------------------------------------------------


async def episodes(request: web.Request, session: Session) -> web.StreamResponse:
    ledger = request.app[keys.LEDGER]
    target = request.query.get("target", "")[:255]
    rows = await asyncio.to_thread(ledger.list_episodes, LIST_LIMIT, None, target or None)
    names = bot_names(request.app)
    now = utcnow()
    items = "".join(
        f'<li class="row"><a href="{PREFIX}/episodes/{e["id"]}"><span class="id">#{e["id"]}</span> '
        f"<strong>{h(e['alertname'])}</strong></a> on {bot_name(names, e['target'])} {badge(e['state'])}"
        f'<div class="meta">{when(e["received_at"], now)} · {h(e["rule"] or "no rule")}</div>'
        + (f'<div class="outcome">{said(e["detail"], now)}</div>' if e["detail"] else "")
        + "</li>"
        for e in rows
    )
    title = f"Episodes of {names.get(target, target)}" if target else "Episodes"
    body = f'<ul class="list">{items}</ul>' if items else "<p>No episodes.</p>"
    return html_response(layout(title, body, session, "episodes"))


def at_stake(status: dict[str, Any] | None) -> str:
    """The <dt>/<dd> rows of what a pending approval's bot has at stake now (its own status), or why they are not
    known."""
    if status is None:
        return ""
    if "error" in status:
        return f'<dt>At stake</dt><dd class="problem">unknown: the bot\'s {h(status["error"])}</dd>'
    try:
        state = status.get("state")
        return (f"<dt>Bot state</dt><dd>{badge(str(state)[:40])}</dd>" if isinstance(state, str) else "") + stakes(
            status
        )
    except (ValueError, TypeError, OverflowError) as exc:
        return f'<dt>At stake</dt><dd class="problem">unknown: status answered what is not a status ({h(exc)})</dd>'


async def statuses_of(app: web.Application, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The status of each bot a pending approval is about (what is at stake), asked at once."""
    targets = sorted({r["target"] for r in rows if r["status"] == "pending"} & set(app[keys.CONFIG].reconciler.targets))
    answers = await asyncio.gather(*(bot_status(app, t) for t in targets))
    return dict(zip(targets, answers, strict=True))


def approval_card(
    row: dict[str, Any],
    session: Session,
    names: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> str:
    """One approval: what it asks, what is at stake (the bot's loss, positions and their value), its deadline, its
    state, and (pending, for an `approve` token) the decision forms."""
    try:
        arguments = json.dumps(json.loads(row["arguments"]), indent=1)
    except ValueError:
        arguments = row["arguments"]
    decided = (
        f"<dt>Decided</dt><dd>{deciders(row)} at {when(row['decided_at'], now)}: {h(row['reason'])}</dd>"
        if was_decided(row)
        else ""
    )
    forms = ""
    if row["status"] == "pending":
        if session.token.allows(APPROVE):
            forms = (
                f'<form method="post" action="{PREFIX}/approvals/{row["id"]}" class="decide">{csrf_field(session)}'
                f'<label>Reason <small>(required)</small><input name="reason" required maxlength="{REASON_MAX}">'
                f"</label><label>Comment <small>(optional; you decide as {h(session.token.name)})</small>"
                '<input name="by" maxlength="80"></label>'
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
        f"<dt>Bot</dt><dd>{bot_name(names or {}, row['target'])}</dd>"
        f"<dt>Asks for</dt><dd>step {row['position'] + 1}: {h(row['step_name'])}</dd>"
        + (at_stake(status) if row["status"] == "pending" else "")
        + f'<dt>Deadline</dt><dd class="deadline">{when(row["deadline"], now)}, then {h(row["on_timeout"])}</dd>'
        f'<dt>Episode</dt><dd><a href="{PREFIX}/episodes/{row["episode_id"]}">#{row["episode_id"]}</a> '
        f"{h(row.get('alertname') or '')}</dd>"
        f"<dt>Rule</dt><dd>{h(row['rule'])}</dd>{four_eyes(row)}{decided}</dl>"
        f"<details><summary>Arguments</summary><pre>{h(arguments)}</pre></details>{forms}</section>"
    )


def four_eyes(row: dict[str, Any]) -> str:
    """Who asked (the requester's principal) and who approved so far, against how many other people it needs."""
    approvers = approvers_of(row)
    listed = ", ".join(h(p) for p in approvers) or "nobody yet"
    required = int(row.get("required", 1))
    needs = "its requester's own approval (allowed by configuration)" if required == 0 else f"{required} other"
    return (
        f'<dt>Requested by</dt><dd class="requester">{h(requester_of(row))}</dd>'
        f'<dt>Approvers</dt><dd class="approvers">{listed} <small>(needs {needs}; '
        f"{h(row.get('kind') or 'step')})</small></dd>"
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
    names = bot_names(app)
    now = utcnow()
    facts = (
        f"<dl><dt>State</dt><dd>{badge(row['state'])} {said(row['detail'], now)}</dd>"
        f"<dt>Bot</dt><dd>{bot_name(names, row['target'])}</dd><dt>Rule</dt><dd>{h(row['rule'] or '-')}</dd>"
        f"<dt>Alert started</dt><dd>{when(row['starts_at'], now)}</dd>"
        f"<dt>Received</dt><dd>{when(row['received_at'], now)}</dd>"
        f"<dt>Resolved</dt><dd>{when(row['resolved_at'], now)}</dd>"
        f"<dt>Closed</dt><dd>{when(row['closed_at'], now)}</dd></dl>"
        "<details><summary>Labels and annotations</summary><dl>"
        + "".join(f"<dt>{h(k)}</dt><dd>{h(v)}</dd>" for k, v in {**labels, **annotations}.items())
        + "</dl></details>"
    )
    timeline = []
    for a in row["attempt_list"]:
        steps = "".join(
            f'<li class="step"><div>{badge(s["outcome"] or "running")} <strong>{s["position"] + 1}. '
            f"{h(s['description'])}</strong> <small>[{h(s['risk'])}]</small></div>"
            f'<div class="meta">{when(s["started_at"], now)} → {when(s["finished_at"], now)}</div>'
            + (f"<pre>{h(s['output'])}</pre>" if s["output"] else "")
            + "</li>"
            for s in a["steps"]
        )
        timeline.append(
            f'<li class="attempt"><h3>Attempt {a["number"]} {badge(a["outcome"] or "running")}</h3>'
            f'<div class="meta">{when(a["started_at"], now)} → {when(a["finished_at"], now)}</div>'
            + (f'<div class="outcome">{said(a["detail"], now)}</div>' if a["detail"] else "")
            + f'<ol class="steps">{steps}</ol></li>'
        )
    pages = "".join(
        f"<li class=row><strong>{h(p['alertname'])}</strong> · {when(p['created_at'], now)} · "
        + (f"posted {when(p['posted_at'], now)}" if p["posted_at"] else f"not posted yet ({h(p['last_error'] or '')})")
        + "</li>"
        for p in row["escalation_list"]
    )
    waiting = [a for a in asked if a["status"] == "pending"]
    statuses = await statuses_of(app, waiting)
    body = (
        f'<section class="card">{facts}</section>'
        + "".join(approval_card(a, session, names, statuses.get(a["target"]), now) for a in waiting)
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
    going_on = row["closed_at"] is None and not (waiting and session.token.allows(APPROVE))
    return html_response(layout(title, flash(session) + body, session, "episodes", refresh=going_on))


# ---- approvals ------------------------------------------------------------------------------------------------------


def deciders(row: dict[str, Any]) -> str:
    """Who decided an approval: the principal (the token that authenticated it) first, in its own element; a name
    typed beside it only after it, as quoted text (approvals.attribution). An old decision of the CLI's database
    access has no token: its typed name and "the CLI"."""
    token, typed = row.get("decided_token"), row.get("decided_by")
    if not token:
        return f'<q class="decider">{h(typed or "")}</q> <span class="token">the CLI</span>'
    comment = f' (as <q class="decider">{h(typed)}</q>)' if typed else ""
    return f'<span class="token">{h(token)}</span>{comment}'


def decided_row(row: dict[str, Any], now: datetime | None = None) -> str:
    who = f" by {deciders(row)}: {h(row['reason'])}" if was_decided(row) else ""
    return (
        f'<li class="row" id="approval-{row["id"]}"><strong>#{row["id"]}</strong> {badge(row["status"])} '
        f'<a href="{PREFIX}/episodes/{row["episode_id"]}">episode #{row["episode_id"]}</a> · step '
        f"{row['position'] + 1}: {h(row['step_name'])}"
        f'<div class="meta">{when(row["decided_at"] or row["requested_at"], now)}{who}</div></li>'
    )


async def approvals(request: web.Request, session: Session) -> web.StreamResponse:
    store = request.app[keys.ENGINE].approvals
    pending, recent = await asyncio.gather(
        asyncio.to_thread(store.recent, "pending", LIST_LIMIT), asyncio.to_thread(store.recent, None, 20)
    )
    decided = [a for a in recent if a["status"] != "pending"]
    statuses = await statuses_of(request.app, pending)
    names, now = bot_names(request.app), utcnow()
    cards = "".join(approval_card(a, session, names, statuses.get(a["target"]), now) for a in pending)
    body = (
        flash(session)
        + "<h2>Pending</h2>"
        + (cards or "<p>Nothing waits for a decision.</p>")
        + "<h2>Recent decisions</h2>"
        + (f'<ul class="list">{"".join(decided_row(a, now) for a in decided)}</ul>' if decided else "<p>None yet.</p>")
        + f'<p><a href="{PREFIX}/audit">Audit: every decision, who made it, what changed</a></p>'
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
        functools.partial(
            engine.approvals.decide,
            int(raw),
            decision,
            session.token.name,
            reason[:REASON_MAX],
            app[keys.PLAYBOOK].version,
            utcnow(),
            source=f"console {request.remote or '-'}",
            comment=" ".join(form.get("by", "").split())[: DECIDER_MAX - 80],
        )
    )
    if isinstance(result, Refusal):
        log.warning("console: approval %s %s by %s refused: %s", raw, decision, who, result.message)
        return with_flash(session, f"{PREFIX}/approvals", "problem", result.message)
    engine.wake.set()
    log.info("approval %s %s by %s (console): %s", raw, result["status"], who, reason)
    if result["status"] == "pending":
        got = len([p for p in approvers_of(result) if p != requester_of(result)])
        return with_flash(
            session,
            f"{PREFIX}/approvals",
            "done",
            f"approval {raw} approved by {who}: {got} of {result['required']} other approvers, it waits for more",
        )
    return with_flash(session, f"{PREFIX}/approvals", "done", f"approval {raw} {result['status']} by {who}")


# ---- maintenance windows --------------------------------------------------------------------------------------------


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
        own = silences_own_pages(matchers, own_alerts(request.app.get(keys.PLAYBOOK)))
        if own is not None and not session.token.allows(DESTRUCTIVE):
            log.warning("console maintenance window by %s refused: it would silence %s", decider(session, form), own)
            raise MaintenanceError(f"this window would silence {own}: {refusal('that', DESTRUCTIVE, session.token)}")
        outcome = await maintenance_of(request.app).start(
            matchers, seconds, reason, f"console: {decider(session, form)}", who=console_principal(request, session)
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
        outcome = await maintenance_of(request.app).end(int(raw), who=console_principal(request, session))
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
    name = bot_names(request.app).get(bot, bot)
    body = flash(session) + (
        f'<section class="card warn"><p>Halting <strong>{bot_name({bot: name}, bot)}</strong> stops its trading at '
        "once: it sends no new "
        "orders until someone clears the halt (<code>clear_halt</code>). Open orders and positions stay as they "
        "are.</p>"
        f'<form method="post" action="{PREFIX}/bots/{h(bot)}/halt">{csrf_field(session)}'
        '<label>Reason<input name="reason" required maxlength="500"></label>'
        '<label>Your name <small>(optional)</small><input name="by" maxlength="80"></label>'
        f'<button type="submit" class="danger">Yes, halt {h(name)}</button> '
        f'<a class="button" href="{PREFIX}/">Cancel</a></form></section>'
    )
    return html_response(layout(f"Halt {name}?", body, session, "fleet"))


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
    name = bot_names(app).get(bot, bot)
    target = config.reconciler.targets[bot]
    url = f"{target.url.rstrip('/')}/control/halt"
    # The target's destructive token when it has one (target_token): halt is a destructive command. Sent by the
    # reconciler on the person's decision, which is audited below under their token: with a bot's single shared token
    # it says so (its source header), or the control audit would add it again as a command sent straight to the bot.
    headers = {"Authorization": f"Bearer {target_token(config, bot, 'halt')}", SOURCE_HEADER: SOURCE_RECONCILER}
    body = {"reason": f"emergency halt from the console by {who}: {reason}"[:500]}
    try:
        async with app[keys.SESSION].post(url, json=body, headers=headers, timeout=HALT_TIMEOUT) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        status, text = 0, f"no answer ({type(exc).__name__})"
    if status != 200:
        log.error("console: halt of %s by %s failed: HTTP %s %s", bot, who, status, text[:200])
        return with_flash(session, f"{PREFIX}/", "problem", f"halt of {name} failed: HTTP {status} {text[:200]}")
    log.warning("console: %s halted by %s: %s", bot, who, reason)
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {}
    answer = answer if isinstance(answer, dict) else {}
    principal, source = console_principal(request, session)
    await asyncio.to_thread(
        audit.append,
        app[keys.LEDGER].engine,
        principal=principal,
        source=source,
        action="halt",
        target=bot,
        before={"state": answer.get("previous_state")},
        after={"state": answer.get("state", "halted")},
        comment=f"emergency halt: {reason}"[:500],
    )
    return with_flash(session, f"{PREFIX}/", "done", f"{name} halted by {who}")


# ---- the stylesheet -------------------------------------------------------------------------------------------------

# The one stylesheet (no external font, no framework): served from the package, read once.
CSS = (Path(__file__).parent / "console.css").read_text(encoding="utf-8")


async def stylesheet(_request: web.Request) -> web.Response:
    return web.Response(text=CSS, content_type="text/css", headers={"Cache-Control": "max-age=300"})
