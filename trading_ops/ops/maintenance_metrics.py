"""The recorded maintenance windows as gauges, read from the database by every replica that serves /metrics."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from trading_ops.db.models.ops import MaintenanceWindow
from trading_ops.ops.maintenance import ACTIVE

log = logging.getLogger(__name__)

PREFIX = "tradingops"
# A scrape reads the latest figures and, when they are older than this, has a worker thread read the table again
# (one aggregate query over a table of a few rows a week): a scrape never waits for the database, and however often
# Prometheus scrapes, each replica queries at most this often.
REFRESH_SECONDS = 5.0
# Figures older than this (the database does not answer) are not exported: a window shown open long after it was
# closed would fire TradingOpsMaintenanceWindowOverrun; no series keeps that alert quiet instead.
STALE_SECONDS = 60.0


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic() of the query
    open: int
    latest_end: float  # Unix time, 0 when no window is open


class MaintenanceWindowsCollector(Collector):
    """tradingops_maintenance_windows_open and tradingops_maintenance_window_recorded_end_timestamp_seconds, from the
    maintenance_windows table that every replica shares: the same figures on every replica, whichever one's
    housekeeping closed a window (the overrun alert reads whichever replica Prometheus scrapes)."""

    def __init__(self, engine: Engine, refresh: float = REFRESH_SECONDS, stale: float = STALE_SECONDS) -> None:
        self.engine = engine
        self.refresh = refresh
        self.stale = stale
        self.reading: Reading | None = None
        self._lock = threading.Lock()
        self._reading_now = False
        self._failing = False

    def read(self) -> Reading | None:
        """Query the table now (blocking: off the event loop); None when the database does not answer."""
        open_or_paused = (MaintenanceWindow.state == ACTIVE) | (MaintenanceWindow.paused_bots != "[]")
        try:
            with self.engine.connect() as conn:
                count, latest = conn.execute(
                    select(func.count(), func.max(MaintenanceWindow.ends_at)).where(open_or_paused)
                ).one()
        except Exception as exc:
            if not self._failing:
                log.warning("maintenance windows not readable for the metrics: %s", exc)
            self._failing = True
            return None
        if self._failing:
            log.info("maintenance windows readable again for the metrics")
        self._failing = False
        reading = Reading(time.monotonic(), int(count), _timestamp(latest))
        self.reading = reading
        return reading

    def _read_in_background(self) -> None:
        try:
            self.read()
        finally:
            with self._lock:
                self._reading_now = False

    def _refresh_if_due(self) -> None:
        reading = self.reading
        if reading is not None and time.monotonic() - reading.at < self.refresh:
            return
        with self._lock:
            if self._reading_now:
                return
            self._reading_now = True
        threading.Thread(target=self._read_in_background, name="maintenance-windows-metrics", daemon=True).start()

    def describe(self) -> Iterator[Metric]:
        """The families without a query (the registry asks when the collector is registered)."""
        return iter(_families())

    def collect(self) -> Iterator[Metric]:
        self._refresh_if_due()
        reading = self.reading
        opened, end = _families()
        if reading is not None and time.monotonic() - reading.at <= self.stale:
            opened.add_metric([], reading.open)
            end.add_metric([], reading.latest_end)
        yield opened
        yield end


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            f"{PREFIX}_maintenance_windows_open",
            "Maintenance windows recorded by `trading-ops maintenance` that are not closed yet.",
        ),
        GaugeMetricFamily(
            f"{PREFIX}_maintenance_window_recorded_end_timestamp_seconds",
            "When the latest-ending recorded maintenance window not closed yet ends (0 when there is none).",
        ),
    )


def _timestamp(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment).timestamp()


def register_maintenance_metrics(registry: CollectorRegistry, engine: Engine) -> MaintenanceWindowsCollector:
    """Export the recorded windows of `engine`'s database on `registry`; the caller reads once before serving."""
    collector = MaintenanceWindowsCollector(engine, REFRESH_SECONDS, STALE_SECONDS)
    registry.register(collector)
    return collector
