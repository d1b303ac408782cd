"""Maintenance windows: which Alertmanager silences count, and the exported state, refreshed from a real
Alertmanager between runs (needs prometheus-alertmanager; the session fixture starts it)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from alertmanager_server import Alertmanager
from reconciler_server import make_config

from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.maintenance import is_bot_maintenance

pytestmark = [pytest.mark.alertmanager]

NAMES = ("TradingBotDown", "TradingBotBrokerDisconnected")


def silence(*matchers: tuple[str, str, str], created_by: str = "ops", state: str = "active") -> dict[str, Any]:
    ops = {"=": (False, True), "!=": (False, False), "=~": (True, True), "!~": (True, False)}
    return {
        "status": {"state": state},
        "createdBy": created_by,
        "matchers": [{"name": n, "value": v, "isRegex": ops[op][0], "isEqual": ops[op][1]} for n, op, v in matchers],
    }


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        (silence(("service", "=", "tradingbot")), True),
        (silence(("alertname", "=", "TradingBotDown"), ("instance", "=", "anything")), True),
        (silence(("alertname", "=~", "TradingBot.*")), True),
        (silence(("alertname", "=~", "TradingBot(Down|HeartbeatStale)")), True),
        (silence(("instance", "=", "paper-bot:9101")), True),  # a configured bot target
        (silence(("job", "=", "tradingbot"), ("severity", "=", "critical")), True),
        # Not the bots:
        (silence(("instance", "=", "postgres:5432")), False),  # not a bot target
        (silence(("severity", "=", "info")), False),  # selects nothing of the bots' in particular
        (silence(("alertname", "=", "TradingOpsBackupFailed")), False),
        (silence(("alertname", "=~", "TradingOps.*")), False),
        (silence(("service", "=", "tradingbot"), ("alertname", "=", "TradingOpsBackupFailed")), False),
        (silence(("service", "=", "trading-ops")), False),
        (silence(("service", "!=", "tradingbot"), ("instance", "=", "paper-bot:9101")), False),
        (silence(("service", "=", "tradingbot"), created_by="trading-ops-reconciler"), False),  # our own
        (silence(("service", "=", "tradingbot"), state="expired"), False),
        (silence(("service", "=", "tradingbot"), state="pending"), False),
    ],
)
def test_which_silences_are_bot_maintenance_windows(s: dict[str, Any], expected: bool) -> None:
    assert is_bot_maintenance(s, "trading-ops-reconciler", ["paper-bot:9101"], NAMES) is expected


async def test_maintenance_state_is_refreshed_from_alertmanager_between_runs(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager
) -> None:
    target = f"bot-{uuid.uuid4().hex[:6]}"
    config = make_config(
        tmp_path,
        migrated_sqlite,
        alertmanager_url=alertmanager.url,
        check_silences=True,
        targets={target: {"url": "http://127.0.0.1:9"}},
    )
    client = await aiohttp_client(create_app(config))
    watcher = client.app[keys.MAINTENANCE]

    async def exported() -> tuple[float, float]:
        await watcher.refresh()  # what the 15 s refresh does, now
        text = await (await client.get("/metrics")).text()
        values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("tradingops_maint"))
        return (
            float(values["tradingops_maintenance_active"]),
            float(values["tradingops_maintenance_window_end_timestamp_seconds"]),
        )

    assert await exported() == (0.0, 0.0)
    ids = []
    try:
        now = time.time()
        # Not maintenance of the bots: the reconciler's own silence, another service, another host.
        ids.append(await asyncio.to_thread(alertmanager.silence, {"instance": target}, 7200, "trading-ops-reconciler"))
        ids.append(await asyncio.to_thread(alertmanager.silence, {"alertname": "TradingOpsBackupFailed"}, 7200))
        ids.append(await asyncio.to_thread(alertmanager.silence, {"instance": f"{target}-db"}, 7200))
        assert await exported() == (0.0, 0.0)
        # Two windows on this bot: the later end is exported.
        ids.append(await asyncio.to_thread(alertmanager.silence, {"instance": target}, 1800))
        ids.append(await asyncio.to_thread(alertmanager.silence, {"instance": target, "severity": "critical"}, 3600))
        active, end = await exported()
        assert active == 1.0 and now + 3590 < end < now + 3610
        await asyncio.to_thread(alertmanager.expire, ids[-1])
        active, end = await exported()
        assert active == 1.0 and now + 1790 < end < now + 1810
        await asyncio.to_thread(alertmanager.expire, ids[-2])
        assert await exported() == (0.0, 0.0)
    finally:
        for sid in ids:
            try:
                await asyncio.to_thread(alertmanager.expire, sid)
            except OSError:
                pass  # already expired


async def test_the_refresh_runs_on_its_own_and_keeps_the_last_state_when_alertmanager_is_away(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager
) -> None:
    target = f"bot-{uuid.uuid4().hex[:6]}"
    sid = await asyncio.to_thread(alertmanager.silence, {"instance": target}, 600)
    try:
        config = make_config(
            tmp_path,
            migrated_sqlite,
            alertmanager_url=alertmanager.url,
            check_silences=True,
            targets={target: {"url": "http://127.0.0.1:9"}},
        )
        client = await aiohttp_client(create_app(config))
        registry = client.app[keys.REGISTRY]
        end = time.monotonic() + 20
        while (
            registry.get_sample_value("tradingops_maintenance_active") != 1
        ):  # the background refresh, started with the app
            assert time.monotonic() < end, "the maintenance state was never refreshed"
            await asyncio.sleep(0.05)
        watcher = client.app[keys.MAINTENANCE]
        watcher.alertmanager.base_urls = ["http://127.0.0.1:9"]  # Alertmanager goes away
        with pytest.raises(Exception, match="127.0.0.1:9"):
            await watcher.refresh()
        assert registry.get_sample_value("tradingops_maintenance_active") == 1  # unknown is not "over"
    finally:
        await asyncio.to_thread(alertmanager.expire, sid)
