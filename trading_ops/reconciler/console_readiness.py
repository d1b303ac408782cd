"""The readiness verdict on the reconciler: its API route, and the console's pages (/ui/readiness, /ui/readiness/{bot})
that show a bot's verdict criterion by criterion."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from trading_ops.reconciler import keys
from trading_ops.reconciler.console import PREFIX, Session, h, html_response, layout, page
from trading_ops.reconciler.readiness_api import PATH, bot_verdict, get_readiness

# The console's badge colours (console.css) of each status and verdict.
COLOURS = {"pass": "success", "fail": "failure", "unknown": "pending", "ready": "success", "not ready": "failure"}


def setup_readiness(app: web.Application) -> None:
    app.router.add_get(PATH, get_readiness)
    app.router.add_get(f"{PREFIX}/readiness", page(readiness_index))
    app.router.add_get(f"{PREFIX}/readiness/{{bot}}", page(readiness_page))


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


async def readiness_page(request: web.Request, session: Session) -> web.StreamResponse:
    name = request.match_info["bot"]
    status, answer = await bot_verdict(request.app, name, request.query.get("window"))
    if status != 200:
        body = f'<p class="problem" role="alert">{h(answer["error"])}</p>'
        return html_response(layout(f"Readiness of {name[:64]}", body, session, "readiness"), status)
    named = ""
    if answer["failing"]:
        named += f"<p>Failing: {h(', '.join(answer['failing']))}</p>"
    if answer["missing"]:
        named += f"<p>Missing data: {h(', '.join(answer['missing']))}</p>"
    rows = "".join(_row(r) for r in answer["results"])
    body = (
        f"<p>{_badge(answer['verdict'])} over {h(answer['window'])} "
        f"({h(answer['instance'])}, {answer['queries']} queries)</p>{named}"
        '<table class="readiness"><thead><tr><th>Status</th><th>Criterion</th><th>Value</th><th>Threshold</th>'
        f"<th>Window</th><th>Source</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return html_response(layout(f"Readiness of {answer['bot']}", body, session, "readiness"))
