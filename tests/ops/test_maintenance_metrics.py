"""The recorded maintenance windows' gauges: every reconciler replica reports what the shared database holds, whichever
replica's housekeeping opened or closed a window (real PostgreSQL, two real reconciler apps); figures the database can
no longer confirm are dropped, not kept."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from reconciler_server import make_config

from trading_ops.db import migrate
from trading_ops.db.base import make_engine, utcnow
from trading_ops.ops import maintenance, maintenance_metrics
from trading_ops.ops.maintenance import Maintenance
from trading_ops.ops.maintenance_metrics import MaintenanceWindowsCollector
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app

OPEN = "tradingops_maintenance_windows_open"
END = "tradingops_maintenance_window_recorded_end_timestamp_seconds"
DEADLINE_SECONDS = 20.0


async def scrape(client: Any) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in (OPEN, END)
    }


async def until_every_replica_reports(replicas: list[Any], expected: dict[str, float]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        seen = [await scrape(client) for client in replicas]
        if all(s == expected for s in seen):
            return
        assert time.monotonic() < deadline, f"replicas report {seen}, the database holds {expected}"
        await asyncio.sleep(0.05)


@pytest.mark.postgres
async def test_every_replica_reports_the_windows_whichever_one_closed_them(
    aiohttp_client: Any, tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, only the replica whose housekeeping ran updated its gauges: the other one went on showing a window
    open past its end, and TradingOpsMaintenanceWindowOverrun fired for nothing."""
    monkeypatch.setattr(maintenance_metrics, "REFRESH_SECONDS", 0.05)
    migrate.upgrade(postgres_url)
    config = make_config(tmp_path, postgres_url)
    replicas = [await aiohttp_client(create_app(config, registry=CollectorRegistry())) for _ in range(2)]
    await until_every_replica_reports(replicas, {OPEN: 0, END: 0})

    engine = make_engine(postgres_url)
    async with aiohttp.ClientSession() as session:
        # Opened from the CLI of a third machine (Alertmanager is not reachable here: recorded all the same).
        opened = await Maintenance(config, engine, session).start({"instance": "bot-x"}, 1, "two replicas")
    await until_every_replica_reports(replicas, {OPEN: 1, END: opened.window.ends_at.timestamp()})
    # Its end passes; one replica's housekeeping (the scheduler's job, run where the slot was claimed) closes it.
    while time.time() <= opened.window.ends_at.timestamp():
        await asyncio.sleep(0.05)
    await maintenance.housekeeping(config, replicas[0].app[keys.REGISTRY], utcnow())
    await until_every_replica_reports(replicas, {OPEN: 0, END: 0})
    engine.dispose()


async def test_figures_the_database_cannot_confirm_are_not_exported(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate.upgrade(sqlite_url)
    registry = CollectorRegistry()
    collector = MaintenanceWindowsCollector(make_engine(sqlite_url), refresh=3600, stale=3600)
    registry.register(collector)
    # Never read: nothing made up. The scrape asks a worker thread to read the table, and does not wait for it: the
    # read is held until the scrape has returned (a scrape that waited for it would get 0 after the gate's timeout).
    gate = threading.Event()
    read = collector.read

    def held_read() -> Any:
        gate.wait(5)
        return read()

    collector.read = held_read  # type: ignore[method-assign]
    assert registry.get_sample_value(OPEN) is None
    gate.set()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while collector.reading is None or collector._reading_now:
        assert time.monotonic() < deadline, "the scrape's read never finished"
        await asyncio.sleep(0.01)
    assert registry.get_sample_value(OPEN) == 0 and registry.get_sample_value(END) == 0
    # The database goes away: the last figures are served while they are younger than `stale`, then dropped.
    collector.engine = make_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    caplog.set_level(logging.WARNING, logger="trading_ops.ops.maintenance_metrics")
    assert collector.read() is None
    assert any("maintenance windows not readable" in r.getMessage() for r in caplog.records)
    assert registry.get_sample_value(OPEN) == 0
    collector.stale = 0.0
    assert registry.get_sample_value(OPEN) is None and registry.get_sample_value(END) is None
