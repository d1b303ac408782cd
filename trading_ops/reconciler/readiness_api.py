"""GET /api/v1/readiness/{bot}: a bot's readiness verdict over the API (scope read), as `trading-ops readiness`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from trading_ops.clients.alertmanager import AlertmanagerClient
from trading_ops.clients.prometheus import PrometheusClient, PrometheusError
from trading_ops.durations import format_duration
from trading_ops.readiness.criteria import parse_window, retention_problem
from trading_ops.readiness.verdict import evaluate
from trading_ops.reconciler import keys
from trading_ops.reconciler.auth import authorized
from trading_ops.scopes import READ

PATH = "/api/v1/readiness/{bot}"
MAX_WINDOW_CHARS = 64


async def bot_verdict(app: web.Application, name: str, window: str | None) -> tuple[int, dict[str, Any]]:
    """The verdict of the bot named (bots[].name) over `window` (readiness.window when None or empty), as an HTTP
    status and its JSON: 200 and the verdict; 404 for a bot the configuration does not list; 400 for a bad window or
    one longer than Prometheus keeps."""
    config = app[keys.CONFIG]
    bot = next((b for b in config.bots if b.name == name), None)
    if bot is None:
        return 404, {"error": f"no bot {name[:64]!r} in the configuration's bots: list"}
    text = (window or config.readiness.window)[:MAX_WINDOW_CHARS]
    # What a refusal names: the window asked for, or (without one) the configuration's default.
    given = "window" if window else "readiness.window"
    try:
        seconds = parse_window(text)
    except ValueError as exc:
        return 400, {"error": f"{given}: {exc}"}
    session = app[keys.SESSION]
    prometheus = PrometheusClient(session, config.reconciler.prometheus_urls)
    try:
        retention = await prometheus.retention_seconds()
    except PrometheusError:
        retention = None  # its criteria say so: the verdict is unknown
    problem = retention_problem(seconds, text, retention)
    if problem is not None:
        return 400, {"error": f"{given} {problem}"}
    alertmanager = AlertmanagerClient(session, config.reconciler.alertmanager_urls)
    (verdict,) = await evaluate(config, [bot], format_duration(seconds), prometheus, alertmanager)
    verdict.queries += 1  # the retention
    return 200, verdict.to_dict()


async def get_readiness(request: web.Request) -> web.Response:
    if isinstance(caller := authorized(request, READ, "reading a readiness verdict"), web.Response):
        return caller
    status, answer = await bot_verdict(request.app, request.match_info["bot"], request.query.get("window"))
    return web.json_response(answer, status=status)
