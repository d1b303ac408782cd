"""The audit chain on the reconciler: GET /api/v1/audit (scope read) and the console's page /ui/audit, the newest
entries first (trading_ops.audit)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from trading_ops import audit
from trading_ops.http_input import InputError, parse_limit, whole_number
from trading_ops.reconciler import keys
from trading_ops.reconciler.auth import authorized
from trading_ops.reconciler.console import PREFIX, Session, h, html_response, layout, page, when
from trading_ops.scopes import READ

PATH = "/api/v1/audit"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_SEQ = 2**62
# The chain's seq is an INTEGER (32-bit on PostgreSQL): `before` past the largest one is every entry, asked as that.
SEQ_CEILING = 2**31 - 1
# The filters GET /api/v1/audit and the console's page take (each matches one column exactly).
FILTERS = ("principal", "target", "action", "decision")
FILTER_MAX = 255


def setup_audit(app: web.Application) -> None:
    app.router.add_get(PATH, get_audit)
    app.router.add_get(f"{PREFIX}/audit", page(audit_page))


def _query(request: web.Request) -> dict[str, Any]:
    """The listing's arguments from the query (an InputError(400) naming the bad one)."""
    q = request.query
    args: dict[str, Any] = {"limit": parse_limit(q.get("limit"), DEFAULT_LIMIT, MAX_LIMIT)}
    if q.get("before"):
        args["before_seq"] = min(whole_number(q["before"], "before", 1, MAX_SEQ), SEQ_CEILING)
    for name in FILTERS:
        value = q.get(name)
        if value:
            if len(value) > FILTER_MAX or not value.isprintable():
                raise InputError(400, f"{name}: expected a name of at most {FILTER_MAX} printable characters")
            args[name] = value
    return args


def _listing(app: web.Application, args: dict[str, Any]) -> tuple[list[audit.Entry], tuple[int, str]]:
    engine = app[keys.LEDGER].engine
    if "target" in args:  # a bot by its name or its instance
        args = {
            **args,
            "target": audit.targets_of(((b.name, b.instance) for b in app[keys.CONFIG].bots), args["target"]),
        }
    return audit.entries(engine, **args), audit.head(engine)


async def get_audit(request: web.Request) -> web.Response:
    if isinstance(caller := authorized(request, READ, "reading the audit chain"), web.Response):
        return caller
    found, (seq, digest) = await asyncio.to_thread(_listing, request.app, _query(request))
    return web.json_response({"entries": [e.to_dict() for e in found], "head": {"seq": seq, "hash": digest}})


def _row(entry: audit.Entry) -> str:
    decision = f" <small>({h(entry.decision)})</small>" if entry.decision else ""
    comment = f'<div class="meta">comment: <q>{h(entry.comment)}</q></div>' if entry.comment else ""
    return (
        f'<li class="row" id="audit-{entry.seq}"><strong>#{entry.seq}</strong> {h(entry.action)} '
        f'<strong>{h(entry.target)}</strong>{decision} by <span class="principal">{h(entry.principal)}</span>'
        f' <small>from {h(entry.source)}</small><div class="meta">{when(entry.at)} · '
        f"<code>{h(audit.canonical(entry.before))}</code> → <code>{h(audit.canonical(entry.after))}</code></div>"
        f'{comment}<div class="meta"><small>hash {h(entry.hash[:16])}…</small></div></li>'
    )


async def audit_page(request: web.Request, session: Session) -> web.StreamResponse:
    try:
        args = _query(request)
    except InputError as exc:
        return html_response(layout("Audit", f'<p class="problem" role="alert">{h(exc.message)}</p>', session), 400)
    found, (seq, digest) = await asyncio.to_thread(_listing, request.app, args)
    items = "".join(_row(e) for e in found)
    more = (
        f'<p><a href="{PREFIX}/audit?before={found[-1].seq}">Older entries</a></p>'
        if found and found[-1].seq > 1 and len(found) == args["limit"]
        else ""
    )
    body = (
        f"<p>Every decision, newest first: who (the authenticated principal), from where, what changed. Head: entry "
        f"{seq}, hash <code>{h(digest[:16])}…</code>; <code>trading-ops audit verify</code> checks the whole chain.</p>"
        + (f'<ul class="list audit">{items}</ul>' if items else "<p>No entries.</p>")
        + more
    )
    return html_response(layout("Audit", body, session, "approvals"))
