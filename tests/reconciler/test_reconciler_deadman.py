"""Dead man's switch: no Watchdog within the window notifies through apprise directly, and exports the state."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from trading_ops.clients.notify import Notifier
from trading_ops.reconciler.deadman import DeadMansSwitch
from trading_ops.reconciler.metrics import ReconcilerMetrics


async def test_missing_watchdog_notifies_once_and_recovery_is_announced(aiohttp_server: Any) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    now = [1000.0]
    registry = CollectorRegistry()
    metrics = ReconcilerMetrics(registry)
    switch = DeadMansSwitch(60, 1, Notifier([f"json://127.0.0.1:{server.port}/hook"]), metrics, clock=lambda: now[0])
    now[0] += 30
    switch.seen()
    now[0] += 59
    assert await switch.check() is False and received == []
    now[0] += 2
    assert await switch.check() is True
    assert await switch.check() is True  # no second notification while it stays broken
    assert len(received) == 1 and "alerting pipeline broken" in received[0]["title"]
    assert registry.get_sample_value("tradingops_deadman_triggered") == 1
    assert registry.get_sample_value("tradingops_watchdog_last_received_timestamp_seconds") == 1030
    switch.seen()
    assert registry.get_sample_value("tradingops_deadman_triggered") == 0
    await switch._pending.pop()  # the "restored" notification
    assert "restored" in received[1]["title"]


async def test_a_zero_window_disables_the_switch() -> None:
    switch = DeadMansSwitch(0, 1, Notifier([]), ReconcilerMetrics(CollectorRegistry()), clock=lambda: 1e12)
    assert await switch.check() is False
