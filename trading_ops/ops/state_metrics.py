"""Prometheus collectors over the persisted records of backups and upkeep: any process serving /metrics (the
reconciler) exports what every run, from the CLI or the schedule, did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trading_ops.config import Config
from trading_ops.ops.backup import Catalog
from trading_ops.ops.backup_wal import WAL_STATE_FILE, wal_state
from trading_ops.ops.restore_drill import drill_state
from trading_ops.ops.state import OpsState
from trading_ops.ops.upkeep import state_path

PREFIX = "tradingops"
BACKUP_GAUGES = (
    ("backup_last_success_timestamp_seconds", "last_success_timestamp_seconds", "When the last backup was taken."),
    (
        "backup_last_failure_timestamp_seconds",
        "last_failure_timestamp_seconds",
        "When a backup run last failed (TradingOpsBackupFailed fires while it is newer than the last backup).",
    ),
    ("backup_last_size_bytes", "last_size_bytes", "Size of the last successful backup."),
    ("backup_last_duration_seconds", "last_duration_seconds", "How long the last successful backup took."),
    (
        "backup_pitr_last_success_timestamp_seconds",
        "pitr_last_success_timestamp_seconds",
        "When the last pgBackRest backup of the PostgreSQL cluster finished (backup.pitr).",
    ),
    (
        "backup_pitr_last_duration_seconds",
        "pitr_last_duration_seconds",
        "How long the last pgBackRest backup took.",
    ),
    (
        "backup_last_verify_success_timestamp_seconds",
        "last_verify_success_timestamp_seconds",
        "When a backup last passed verification (restored into a scratch database and checked).",
    ),
)
BACKUP_COUNTERS = (
    ("backup_runs", "runs_total", "Backup runs, successful or not."),
    (
        "backup_failures",
        "failures_total",
        "Backup runs that failed, and WAL segments `backup archive-wal` could not archive or copy off host.",
    ),
    (
        "backup_off_host_failures",
        "off_host_failures_total",
        "Backup runs and WAL segments whose off-host copy could not be made or verified (counted in failures too).",
    ),
    (
        "backup_pitr_failures",
        "pitr_failures_total",
        "Backup runs whose pgBackRest backup failed (counted in failures too).",
    ),
    ("backup_verify_runs", "verify_runs_total", "Backup verifications."),
    ("backup_verify_failures", "verify_failures_total", "Backup verifications that failed."),
)


WAL_GAUGES = (
    (
        "backup_pitr_wal_off_host_last_success_timestamp_seconds",
        "last_success_timestamp_seconds",
        "When `backup archive-wal` last archived a WAL segment and copied it off host.",
    ),
    (
        "backup_pitr_wal_off_host_last_duration_seconds",
        "last_duration_seconds",
        "How long the last WAL segment took to be archived and copied off host.",
    ),
    (
        "backup_pitr_wal_last_failure_timestamp_seconds",
        "last_failure_timestamp_seconds",
        "When `backup archive-wal` last failed to archive a WAL segment or copy it off host.",
    ),
)
WAL_COUNTERS = (
    ("backup_pitr_wal_segments", "segments_total", "WAL segments `backup archive-wal` was given, archived or not."),
    (
        "backup_pitr_wal_failures",
        "failures_total",
        "WAL segments `backup archive-wal` could not archive or copy off host (PostgreSQL retries them).",
    ),
)


class BackupCollector(Collector):
    """Backup runs and the catalog, from the backup directory's state file and manifests, and WAL shipments from
    `backup archive-wal`'s record (`wal_state`, by default in the same directory), read at each scrape."""

    def __init__(self, directory: Path, wal_state: Path | None = None) -> None:
        self.catalog = Catalog(directory)
        self.wal = OpsState(wal_state or Path(directory) / WAL_STATE_FILE)

    def collect(self) -> Iterator[Metric]:
        state = self.catalog.state.read()
        wal = self.wal.read()
        for name, key, doc in BACKUP_GAUGES:
            gauge = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
            if key in state:  # never a made-up 0: "no backup yet" is the absence of the series
                gauge.add_metric([], float(state[key]))
            yield gauge
        for name, key, doc in BACKUP_COUNTERS:
            # A WAL segment that did not get off host fails the backup as a failed run does (TradingOpsBackupFailed).
            extra = float(wal.get(key, 0)) if key in ("failures_total", "off_host_failures_total") else 0.0
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=float(state.get(key, 0)) + extra)
        for name, key, doc in WAL_GAUGES:
            gauge = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
            if key in wal:
                gauge.add_metric([], float(wal[key]))
            yield gauge
        for name, key, doc in WAL_COUNTERS:
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=float(wal.get(key, 0)))
        manifests = self.catalog.manifests()
        yield GaugeMetricFamily(
            f"{PREFIX}_backup_catalog_backups", "Backups kept in the catalog.", value=len(manifests)
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_backup_catalog_size_bytes",
            "Total size of the backups kept in the catalog.",
            value=sum(m.size_bytes for m in manifests),
        )


DRILL_GAUGES = (
    (
        "restore_drill_last_success_timestamp_seconds",
        "last_success_timestamp_seconds",
        "When a restore drill last passed (the latest backup restored, migrated to head and its journal checked).",
    ),
    (
        "restore_drill_last_failure_timestamp_seconds",
        "last_failure_timestamp_seconds",
        "When a restore drill last failed.",
    ),
    ("restore_drill_last_duration_seconds", "last_duration_seconds", "How long the last restore drill took."),
    (
        "restore_drill_last_backup_timestamp_seconds",
        "last_backup_timestamp_seconds",
        "When the backup the last restore drill restored was taken.",
    ),
)
DRILL_COUNTERS = (
    ("restore_drill_runs", "runs_total", "Restore drills, passed or not."),
    ("restore_drill_failures", "failures_total", "Restore drills that failed."),
)


class RestoreDrillCollector(Collector):
    """Restore drills, from their state file in the backup directory, read at each scrape."""

    def __init__(self, path: Path) -> None:
        self.state = OpsState(path)

    def collect(self) -> Iterator[Metric]:
        state = self.state.read()
        for name, key, doc in DRILL_GAUGES:
            gauge = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
            if key in state:  # absent until there is one: "never" is not 1970
                gauge.add_metric([], float(state[key]))
            yield gauge
        for name, key, doc in DRILL_COUNTERS:
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=float(state.get(key, 0)))


class UpkeepCollector(Collector):
    """Database and disk upkeep runs: rows deleted by table, bytes and files freed by directory, failures."""

    def __init__(self, path: Path) -> None:
        self.state = OpsState(path)

    def collect(self) -> Iterator[Metric]:
        state = self.state.read()
        yield CounterMetricFamily(f"{PREFIX}_upkeep_runs", "Upkeep runs.", value=float(state.get("runs_total", 0)))
        yield CounterMetricFamily(
            f"{PREFIX}_upkeep_failures",
            "Upkeep runs with a failed task (vacuum, retention or a directory's cleanup).",
            value=float(state.get("failures_total", 0)),
        )
        last = GaugeMetricFamily(
            f"{PREFIX}_upkeep_last_success_timestamp_seconds", "When an upkeep run last finished without a failure."
        )
        if "last_success_timestamp_seconds" in state:
            last.add_metric([], float(state["last_success_timestamp_seconds"]))
        yield last
        rows = CounterMetricFamily(
            f"{PREFIX}_upkeep_rows_deleted", "Rows deleted by retention, by table.", labels=["table"]
        )
        for table, count in sorted(dict(state.get("rows_deleted", {})).items()):
            rows.add_metric([table], float(count))
        yield rows
        freed = CounterMetricFamily(
            f"{PREFIX}_cleanup_deleted_bytes", "Bytes freed by directory cleanup, by directory.", labels=["directory"]
        )
        files = CounterMetricFamily(
            f"{PREFIX}_cleanup_deleted_files", "Files deleted by directory cleanup, by directory.", labels=["directory"]
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_cleanup_failures", "Files a cleanup could not delete, by directory.", labels=["directory"]
        )
        for directory, counts in sorted(dict(state.get("cleanup", {})).items()):
            freed.add_metric([directory], float(counts.get("bytes", 0)))
            files.add_metric([directory], float(counts.get("files", 0)))
            failures.add_metric([directory], float(counts.get("failures", 0)))
        yield freed
        yield files
        yield failures


def register_ops_metrics(config: Config, registry: CollectorRegistry) -> None:
    """Export the backup and upkeep records of `config` on `registry`."""
    registry.register(BackupCollector(Path(config.backup.directory), wal_state(config.backup).path))
    registry.register(RestoreDrillCollector(drill_state(config.backup).path))
    registry.register(UpkeepCollector(state_path(config.bot.data_dir)))
