"""GET /api/v1/readiness/{bot}: a bot's readiness verdict over the API (scope read), as `trading-ops readiness`."""

from __future__ import annotations

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


async def get_readiness(request: web.Request) -> web.Response:
    """The verdict of the bot named (bots[].name) over `window` (readiness.window when not given); a 404 for a bot
    the configuration does not list, a 400 for a bad window or one longer than Prometheus keeps."""
    if isinstance(caller := authorized(request, READ, "reading a readiness verdict"), web.Response):
        return caller
    config = request.app[keys.CONFIG]
    name = request.match_info["bot"]
    bot = next((b for b in config.bots if b.name == name), None)
    if bot is None:
        return web.json_response({"error": f"no bot {name[:64]!r} in the configuration's bots: list"}, status=404)
    text = request.query.get("window") or config.readiness.window
    try:
        seconds = parse_window(text[:MAX_WINDOW_CHARS])
    except ValueError as exc:
        return web.json_response({"error": f"window: {exc}"}, status=400)
    session = request.app[keys.SESSION]
    prometheus = PrometheusClient(session, config.reconciler.prometheus_urls)
    try:
        retention = await prometheus.retention_seconds()
    except PrometheusError:
        retention = None  # its criteria say so: the verdict is unknown
    problem = retention_problem(seconds, text, retention)
    if problem is not None:
        return web.json_response({"error": f"window: {problem}"}, status=400)
    alertmanager = AlertmanagerClient(session, config.reconciler.alertmanager_urls)
    (verdict,) = await evaluate(config, [bot], format_duration(seconds), prometheus, alertmanager)
    verdict.queries += 1  # the retention
    return web.json_response(verdict.to_dict())
