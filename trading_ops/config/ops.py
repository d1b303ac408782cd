"""Scheduled operations' sections: backup (remote, PITR), upkeep, the scheduler, maintenance windows and the daily
report."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from trading_ops.config.fields import (
    ConfigError,
    bounded,
    check_command,
    check_cron,
    check_name,
    check_nonempty,
    check_optional_duration,
    check_optional_host,
    check_positive_duration,
    check_remote_path,
    check_remote_user,
    check_schedule,
    check_schedule_time_zone,
    check_time_of_day,
    check_time_zone,
    checked,
    path_field,
)


@dataclass
class BackupRemoteConfig:
    # The off-host repository: a directory on another host, reached over SSH with OpenSSH's `ssh` (key auth only,
    # BatchMode). The remote needs a POSIX shell with cat, mkdir, mv, rm, ls and sha256sum (any Linux host).
    host: str = checked("", check_optional_host)
    port: int = bounded(22, min=1, max=65535)
    user: str = checked("", check_remote_user)  # empty: ssh's default (the local user, or ~/.ssh/config's)
    path: str = checked("trading-ops-backups", check_remote_path)  # relative paths are in the user's home
    identity_file: str = path_field()  # a private key (relative to this file); empty: ssh's default keys
    known_hosts_file: str = path_field()  # the remote's host key (StrictHostKeyChecking=yes); empty: ~/.ssh/known_hosts
    ssh: str = checked("ssh", check_nonempty)
    connect_timeout_seconds: float = bounded(10.0, min=1)
    # true: a backup is complete only once its off-host copy exists and its checksum verified there; with no host
    # every backup run fails (loudly: TradingOpsBackupFailed). false: local-only backups are accepted.
    required: bool = True


@dataclass
class BackupPitrConfig:
    # PostgreSQL point-in-time recovery with pgBackRest: `backup run` also takes a pgBackRest backup of the cluster
    # that holds the database (differential; full when the last full is older than full_every_days), and the
    # cluster archives its WAL with `archive_command = 'pgbackrest --config=… --stanza=… archive-push %p'`.
    # `backup restore --to-time T --pg-data DIR` restores the cluster as of T into DIR (a stopped or new cluster).
    enabled: bool = False
    stanza: str = checked("trading-ops", check_nonempty)
    # pgBackRest's own configuration (repo1-path, pg1-path, …).
    config_file: str = path_field("/etc/pgbackrest/pgbackrest.conf")
    # How pgBackRest runs. It reads the data directory: the cluster's owner, or a user in its group when the cluster
    # has group access (initdb --allow-group-access), as the reconciler's user under systemd (no sudo there).
    command: list[str] = checked(["pgbackrest"], check_command)
    full_every_days: float = bounded(7.0, min=0)
    timeout_seconds: float = bounded(3600.0, min=1)
    # pgBackRest's repository (its repo1-path), when this host's user can read it: copied after each pgBackRest
    # backup into <backup.remote.path>/pgbackrest with rsync over SSH (the backups and the WAL archived so far).
    # Empty: not copied (the repository is on another host or a mount of one already), by archive-wal either.
    repo_path: str = path_field()
    rsync: str = checked("rsync", check_nonempty)
    # WAL leaves this host continuously, not only at backup runs: the cluster's archive_command is
    # `trading-ops --config=… backup archive-wal %p`, which pushes each segment into the local repository with
    # `<archive_push_command> archive-push` and copies the repository's WAL archive to <backup.remote.path>/pgbackrest
    # over SSH before it reports success (PostgreSQL keeps the segment and retries until then). The archiver runs as
    # the cluster's owner already: pgBackRest as it is, no runuser.
    archive_push_command: list[str] = checked(["pgbackrest"], check_command)
    # The longest a committed transaction may stay on this host only: the cluster's archive_timeout must be set and
    # at most this (`backup run` fails otherwise), so a segment is switched, archived and shipped within it.
    archive_timeout_seconds: float = bounded(60.0, min=1)
    # Where `backup archive-wal` records its shipments (metrics, alerts); empty: wal-archive-state.json in
    # backup.directory. The cluster's owner must be able to write it.
    wal_state_file: str = path_field()


@dataclass
class BackupConfig:
    # Where backups and their manifests are kept (relative to this file's directory).
    directory: str = path_field("var/backups", check_nonempty, state=True)
    # When the scheduled backup runs (cron, in time_zone).
    schedule: str = checked("0 * * * *", check_cron)
    time_zone: str = checked("UTC", check_time_zone)
    # Grandfather-father-son retention: the newest backup of each of the last N hours, days and ISO weeks.
    keep_hourly: int = bounded(24, min=0)
    keep_daily: int = bounded(7, min=0)
    keep_weekly: int = bounded(4, min=0)
    # And always the N newest backups, whatever their hours: a backup taken by hand just before the scheduled one (or
    # twice in a minute) is never deleted by the next run's retention.
    keep_last: int = bounded(3, min=1)
    # Also copy each backup and its manifest to this directory (another disk, a mounted remote); empty = no copy.
    copy_to: str = path_field()
    # The second copy of every backup, on another host (see BackupRemoteConfig).
    remote: BackupRemoteConfig = field(default_factory=BackupRemoteConfig)
    pitr: BackupPitrConfig = field(default_factory=BackupPitrConfig)
    # The restore drill (`trading-ops backup drill`): the latest backup restored into a scratch database, migrated
    # to head and checked (journal consistency), on this schedule (cron, in time_zone); false: not scheduled.
    drill: bool = True
    drill_schedule: str = checked("30 4 * * *", check_cron)
    # `restore` refuses a database a bot or the reconciler used this recently (heartbeat, lease) without --force.
    live_seconds: float = bounded(60.0, min=0)
    # PostgreSQL client programs (from postgresql-client), found on PATH unless a path is given.
    pg_dump: str = checked("pg_dump", check_nonempty)
    pg_restore: str = checked("pg_restore", check_nonempty)
    timeout_seconds: float = bounded(3600.0, min=1)


@dataclass
class CleanupDirConfig:
    # `{data_dir}` in path is bot.data_dir. Only regular files under path matching pattern are ever deleted.
    path: str = path_field("{data_dir}/scratch", check_nonempty)
    pattern: str = checked("*", check_nonempty)
    # Files older than this are deleted ("" = no age rule) ...
    max_age: str = checked("", check_optional_duration)
    # ... then the oldest until the matching files total at most this many bytes (-1 = no size rule).
    max_bytes: int = bounded(-1, min=-1)


def _default_cleanup() -> dict[str, CleanupDirConfig]:
    return {
        # The paper bot's fill_disk chaos and other throwaway files: disposable, all of it.
        "scratch": CleanupDirConfig(path="{data_dir}/scratch", pattern="*", max_bytes=0),
        # Rotated logs: a week, at most 1 GiB.
        "logs": CleanupDirConfig(path="{data_dir}/log", pattern="*.log.*", max_age="7d", max_bytes=1 << 30),
        "tmp": CleanupDirConfig(path="{data_dir}/tmp", pattern="*", max_age="1d"),
    }


@dataclass
class UpkeepConfig:
    schedule: str = checked("30 3 * * *", check_cron)
    time_zone: str = checked("UTC", check_time_zone)
    # VACUUM/ANALYZE (SQLite: PRAGMA optimize, VACUUM, ANALYZE; PostgreSQL: VACUUM (ANALYZE)).
    vacuum: bool = True
    # Journal rows (closed orders, fills of positions since flat again) older than this many days are deleted;
    # 0 keeps them forever. Never an open order, never the fills of a position that is still open.
    journal_retention_days: int = bounded(0, min=0)
    # Bot runs, recovery events and reconciliation runs older than this many days (0 = forever); a bot's last
    # run and unnotified events are kept. Ledger rows follow reconciler.retention_days.
    recovery_retention_days: int = bounded(90, min=0)
    # Directories cleaned by age and size, by name (the name labels the metrics).
    cleanup: dict[str, CleanupDirConfig] = field(default_factory=_default_cleanup)

    def validate(self, prefix: str, given: set[str]) -> None:
        for name in self.cleanup:
            if problem := check_name(name):
                raise ConfigError(f"{prefix}.cleanup.{name}", problem)


@dataclass
class SchedulerConfig:
    # Backups, upkeep, the daily summary and maintenance windows run inside the reconciler. Every replica runs the
    # scheduler; each slot is claimed in the database by exactly one of them.
    enabled: bool = True
    # A failed run is tried this many times in all, waiting retry_initial_seconds, then twice as long each time
    # up to retry_max_seconds.
    max_attempts: int = bounded(4, min=1)
    retry_initial_seconds: float = bounded(30.0, min=0.01)
    retry_max_seconds: float = bounded(900.0, min=0.01)
    # A claimed run renews its lease while it runs; a run whose lease passed belongs to a dead replica and is
    # taken over.
    lease_seconds: float = bounded(120.0, min=1)


@dataclass
class MaintenanceWindowConfig:
    # Cron-like "M H DOM MON DOW" in maintenance.time_zone: when the window opens.
    schedule: str = checked("0 3 * * sun", check_schedule)
    duration: str = checked("30m", check_positive_duration)
    reason: str = checked("scheduled maintenance", check_nonempty)
    # Alerts matching these are silenced; the reconciler.targets they match are paused.
    matchers: dict[str, str] = field(default_factory=lambda: {"service": "tradingbot"})

    def validate(self, prefix: str, given: set[str]) -> None:
        if not self.matchers:
            raise ConfigError(f"{prefix}.matchers", "must name at least one label")
        for name, value in self.matchers.items():
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
                raise ConfigError(f"{prefix}.matchers.{name}", "not a label name")
            if not value:
                raise ConfigError(f"{prefix}.matchers.{name}", "must not be empty")


@dataclass
class MaintenanceConfig:
    time_zone: str = checked("UTC", check_schedule_time_zone)
    # Scheduled windows by name.
    windows: dict[str, MaintenanceWindowConfig] = field(default_factory=dict)


@dataclass
class ReportConfig:
    # The daily summary, sent through notifications.urls at daily_at (local time in `time_zone`); it covers the
    # 24 hours before that moment.
    enabled: bool = True
    daily_at: str = checked("00:00", check_time_of_day)
    time_zone: str = checked("UTC", check_schedule_time_zone)
    # The weekly review (docs/readiness.md), sent beside the daily summary at daily_at on weekly_on: the seven days
    # before, each bot against the readiness criteria day by day, its ramp's stages, the alerts and recoveries.
    weekly: bool = True
    weekly_on: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] = "monday"
