"""Backups of the trading-ops database (journal, recovery records, ledger): take, list, verify, restore, retention.

Each backup is a file in `backup.directory` with a manifest beside it (checksum, size, row counts per table, schema
revision, source, duration); a backup without its manifest is unfinished and never listed. Every run is recorded
in the directory's state file (trading_ops.ops.state), which the metrics collector (backup_metrics) exports."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import make_url

from trading_ops.config import BackupConfig, Config
from trading_ops.db.base import make_engine, utcnow
from trading_ops.ops import backup_pitr, backup_postgres, backup_sqlite, backup_wal
from trading_ops.ops.backup_errors import BackupError
from trading_ops.ops.backup_live import live_users
from trading_ops.ops.backup_remote import PITR_REMOTE_DIRECTORY, Remote, remote_of
from trading_ops.ops.state import OpsState, add_count, write_json_atomic

log = logging.getLogger(__name__)

FILE_PREFIX = "trading-ops-"
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"
STATE_FILE = "backup-state.json"
DATA_SUFFIX = {"sqlite": ".sqlite", "postgresql": ".pgdump"}
ID_FORMAT = "%Y%m%dT%H%M%S%fZ"
ID_RE = re.compile(r"^\d{8}T\d{12}Z$")
MANIFEST_VERSION = 1
HASH_CHUNK = 1 << 20
# A terminal progress line is rewritten at most this often.
PROGRESS_INTERVAL_SECONDS = 0.2
TRIGGERS = ("manual", "scheduled", "safety")
# A file of pgBackRest's WAL archive as the off-host listing names it: nothing else is ever deleted there (no `..`,
# and not rsync's temporary `.name.XXXXXX` of a copy in progress).
SAFE_PATH = re.compile(r"\w[\w.-]*(/\w[\w.-]*)*")

Progress = Callable[[int, int], None]


class LiveDatabase(BackupError):
    """`restore` without --force on a database something is using."""


@dataclass
class Manifest:
    id: str
    created_at: datetime
    dialect: str  # sqlite, postgresql
    file: str  # the data file's name, in the same directory
    size_bytes: int
    sha256: str
    duration_seconds: float
    row_counts: dict[str, int]
    schema_revision: str | None
    source: str  # the database URL, password masked
    trigger: str = "manual"
    version: int = MANIFEST_VERSION
    # Where the off-host copy is, once its checksum was verified there ("" while there is none).
    off_host: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """A manifest as read from disk; ValueError when it names anything but a backup file of this catalog (a
        manifest must never make retention delete, or restore read, a file elsewhere)."""
        values = dict(data)
        name, backup_id = str(values.get("file", "")), str(values.get("id", ""))
        if not ID_RE.match(backup_id) or name not in {f"{FILE_PREFIX}{backup_id}{s}" for s in DATA_SUFFIX.values()}:
            raise ValueError(f"the manifest names {name[:80]!r}, not a backup file of its own")
        values["created_at"] = datetime.fromisoformat(values["created_at"]).astimezone(UTC)
        values["row_counts"] = {str(k): int(v) for k, v in values["row_counts"].items()}
        return cls(**values)


@dataclass
class BackupResult:
    manifest: Manifest
    pruned: list[str] = field(default_factory=list)  # ids deleted by retention
    copied_to: Path | None = None
    remote_pruned: list[str] = field(default_factory=list)  # ids retention deleted from the off-host repository
    pitr: backup_pitr.PitrBackup | None = None  # the pgBackRest backup taken with it (backup.pitr)


@dataclass
class VerifyResult:
    manifest: Manifest
    duration_seconds: float
    tables: int
    rows: int


@dataclass
class RestoreResult:
    manifest: Manifest
    safety: Manifest | None
    duration_seconds: float


class Catalog:
    """The backups in one directory, newest first, as their manifests say."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.state = OpsState(self.directory / STATE_FILE)

    def manifests(self) -> list[Manifest]:
        found = []
        for path in self.directory.glob(f"{FILE_PREFIX}*{MANIFEST_SUFFIX}"):
            try:
                found.append(Manifest.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable backup manifest %s: %s", path, exc)
        return sorted(found, key=lambda m: m.created_at, reverse=True)

    def get(self, backup_id: str, schema: str | None = None) -> Manifest:
        """The backup `backup_id` (or `latest`); BackupError naming what exists when there is no such backup.
        `schema`: only a backup at that schema revision (`latest` then is the newest of those)."""
        manifests = self.manifests()
        if not manifests:
            raise BackupError(f"no backups in {self.directory}")
        if schema is not None:
            manifests = [m for m in manifests if m.schema_revision == schema]
            if not manifests:
                raise BackupError(f"no backup at schema revision {schema} in {self.directory}")
        if backup_id == "latest":
            return manifests[0]
        for manifest in manifests:
            if manifest.id == backup_id:
                return manifest
        raise BackupError(f"no backup {backup_id!r} in {self.directory} (`trading-ops backup list` shows them)")

    def data_path(self, manifest: Manifest) -> Path:
        return self.directory / manifest.file

    def manifest_path(self, backup_id: str) -> Path:
        return self.directory / f"{FILE_PREFIX}{backup_id}{MANIFEST_SUFFIX}"

    def delete(self, manifest: Manifest) -> None:
        """Remove a backup: its manifest first (it stops being listed), then its data."""
        self.manifest_path(manifest.id).unlink(missing_ok=True)
        self.data_path(manifest).unlink(missing_ok=True)

    def remove_partials(self) -> None:
        """Data files an interrupted run left behind (never listed: they have no manifest)."""
        for path in self.directory.glob(f".{FILE_PREFIX}*{PARTIAL_SUFFIX}"):
            log.info("removing %s, left by an interrupted backup", path)
            path.unlink(missing_ok=True)


class TerminalProgress:
    """A progress line on stderr rewritten in place, only when stderr is a terminal (never in logs)."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < PROGRESS_INTERVAL_SECONDS and done != total):
            return
        self._last = now
        if total:
            line = f"{self.label}: {100 * done // max(total, 1)}% ({done}/{total} pages)"
        else:
            line = f"{self.label}: {done / (1 << 20):.1f} MiB"
        self.stream.write(f"\r\x1b[K{line}")
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def mask_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up")
    return Path(database)


def dialect_of(url: str) -> str:
    return "sqlite" if make_url(url).get_backend_name() == "sqlite" else "postgresql"


def row_counts(conn: Connection) -> dict[str, int]:
    """Rows per table of the database (every table, alembic_version included), by name."""
    quote = conn.dialect.identifier_preparer.quote
    counts = {}
    for name in sorted(inspect(conn).get_table_names()):
        counts[name] = int(conn.execute(text(f"SELECT count(*) FROM {quote(name)}")).scalar_one())
    return counts


def schema_revision(conn: Connection) -> str | None:
    if "alembic_version" not in inspect(conn).get_table_names():
        return None
    value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _sqlite_counts(path: Path) -> tuple[dict[str, int], str | None]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            return row_counts(conn), schema_revision(conn)
    finally:
        engine.dispose()


def take_backup(
    settings: BackupConfig, url: str, trigger: str = "manual", progress: Progress | None = None
) -> Manifest:
    """Back the database at `url` up into the catalog of `settings` and return the new backup's manifest."""
    catalog = Catalog(settings.directory)
    catalog.directory.mkdir(parents=True, exist_ok=True)
    catalog.remove_partials()
    started = time.monotonic()
    created = utcnow()
    backup_id = created.strftime(ID_FORMAT)
    dialect = dialect_of(url)
    name = f"{FILE_PREFIX}{backup_id}{DATA_SUFFIX[dialect]}"
    partial = catalog.directory / f".{name}{PARTIAL_SUFFIX}"
    try:
        if dialect == "sqlite":
            backup_sqlite.backup(sqlite_path(url), partial, progress)
            counts, revision = _sqlite_counts(partial)
        else:
            engine = make_engine(url)
            try:
                with backup_postgres.exported_snapshot(engine) as (conn, snapshot):
                    counts, revision = row_counts(conn), schema_revision(conn)
                    backup_postgres.dump(url, snapshot, partial, settings.pg_dump, settings.timeout_seconds, progress)
            finally:
                engine.dispose()
        _fsync(partial)
        os.replace(partial, catalog.directory / name)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    data = catalog.directory / name
    manifest = Manifest(
        id=backup_id,
        created_at=created,
        dialect=dialect,
        file=name,
        size_bytes=data.stat().st_size,
        sha256=sha256_of(data),
        duration_seconds=round(time.monotonic() - started, 6),
        row_counts=counts,
        schema_revision=revision,
        source=mask_url(url),
        trigger=trigger,
    )
    write_json_atomic(catalog.manifest_path(backup_id), manifest.to_json())
    log.info(
        "backup %s (%s) of %s: %d bytes, %d rows in %d tables, %.2fs",
        backup_id,
        trigger,
        manifest.source,
        manifest.size_bytes,
        sum(counts.values()),
        len(counts),
        manifest.duration_seconds,
    )
    return manifest


def check_file(catalog: Catalog, manifest: Manifest) -> Path:
    path = catalog.data_path(manifest)
    if not path.is_file():
        raise BackupError(f"backup {manifest.id}: data file {path} is missing")
    if path.stat().st_size != manifest.size_bytes or sha256_of(path) != manifest.sha256:
        raise BackupError(f"backup {manifest.id}: {path} does not match its manifest's checksum (damaged)")
    return path


def _compare_counts(manifest: Manifest, counts: dict[str, int], where: str) -> None:
    if counts != manifest.row_counts:
        differ = sorted(
            f"{t}: {manifest.row_counts.get(t, 'absent')} in the manifest, {counts.get(t, 'absent')} {where}"
            for t in set(counts) | set(manifest.row_counts)
            if counts.get(t) != manifest.row_counts.get(t)
        )
        raise BackupError(f"backup {manifest.id}: row counts differ ({'; '.join(differ[:5])})")


def verify_backup(config: Config, manifest: Manifest, progress: Progress | None = None) -> VerifyResult:
    """Restore a backup into a scratch database and check it: checksum, integrity, row counts per table."""
    catalog = Catalog(config.backup.directory)
    started = time.monotonic()
    try:
        path = check_file(catalog, manifest)
        if manifest.dialect == "sqlite":
            with tempfile.TemporaryDirectory(prefix=".verify-", dir=catalog.directory) as scratch_dir:
                scratch = Path(scratch_dir) / "scratch.sqlite"
                backup_sqlite.restore(path, scratch, progress)
                problems = backup_sqlite.integrity_problems(scratch)
                if problems:
                    raise BackupError(f"backup {manifest.id}: integrity check failed: {'; '.join(problems[:3])}")
                counts, _ = _sqlite_counts(scratch)
        else:
            url = config.database_url()
            with backup_postgres.scratch_database(url) as scratch_url:
                backup_postgres.restore(
                    scratch_url, path, config.backup.pg_restore, config.backup.timeout_seconds, clean=False
                )
                engine = create_engine(scratch_url)
                try:
                    with engine.connect() as conn:
                        counts = row_counts(conn)
                finally:
                    engine.dispose()
        _compare_counts(manifest, counts, "restored")
        remote = remote_of(config.backup)
        if manifest.off_host and remote is not None and remote.sha256(manifest.file) != manifest.sha256:
            raise BackupError(f"backup {manifest.id}: its off-host copy on {remote.location} is missing or damaged")
    except Exception as exc:
        _record(catalog, verified=False, error=str(exc))
        raise
    result = VerifyResult(manifest, time.monotonic() - started, len(counts), sum(counts.values()))
    _record(catalog, verified=True)
    log.info(
        "backup %s verified: %d rows in %d tables, %.2fs",
        manifest.id,
        result.rows,
        result.tables,
        result.duration_seconds,
    )
    return result


def restore_backup(config: Config, manifest: Manifest, *, force: bool = False) -> RestoreResult:
    """Replace the configured database's content with a backup's, after a safety backup of what it holds now.

    Refuses (LiveDatabase) while a bot or the reconciler uses the database, unless `force`."""
    url = config.database_url()
    catalog = Catalog(config.backup.directory)
    if manifest.dialect != dialect_of(url):
        raise BackupError(f"backup {manifest.id} is of a {manifest.dialect} database; the configured one is not")
    path = check_file(catalog, manifest)
    started = time.monotonic()
    exists = dialect_of(url) == "postgresql" or sqlite_path(url).is_file()
    if exists:
        users = live_users(config, url)
        if users and not force:
            raise LiveDatabase(f"the database is in use ({'; '.join(users)}): stop it first, or give --force")
        if users:
            log.warning("restoring over a database in use (--force): %s", "; ".join(users))
    safety = take_backup(config.backup, url, trigger="safety") if exists else None
    if dialect_of(url) == "sqlite":
        backup_sqlite.restore(path, sqlite_path(url))
        counts, _ = _sqlite_counts(sqlite_path(url))
    else:
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                # pg_restore --clean drops only what the dump holds: tables a later migration added are dropped
                # too, so the database is the backup's (and `db upgrade` can bring it forward again). Before the
                # restore: a newer table's foreign key on a table of the dump would stop --clean from dropping its
                # primary key. (The safety backup above holds them.)
                quote = conn.dialect.identifier_preparer.quote
                for table in sorted(set(inspect(conn).get_table_names()) - set(manifest.row_counts)):
                    log.warning("restore: dropping table %s, which backup %s does not have", table, manifest.id)
                    conn.execute(text(f"DROP TABLE {quote(table)} CASCADE"))
            backup_postgres.restore(url, path, config.backup.pg_restore, config.backup.timeout_seconds, clean=True)
            with engine.connect() as conn:
                counts = row_counts(conn)
        finally:
            engine.dispose()
    _compare_counts(manifest, counts, "after the restore")
    result = RestoreResult(manifest, safety, time.monotonic() - started)
    log.warning(
        "database %s restored from backup %s (safety backup: %s)",
        mask_url(url),
        manifest.id,
        safety.id if safety else "none, there was no database",
    )
    return result


class Dated(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...


def kept_backups(
    manifests: Sequence[Dated], hourly: int, daily: int, weekly: int, time_zone: str = "UTC", last: int = 1
) -> set[str]:
    """Grandfather-father-son: the newest backup of each of the `hourly` newest hours that have one, of the `daily`
    newest days and of the `weekly` newest ISO weeks (in `time_zone`), and always the `last` newest of all (at least
    the newest)."""
    ordered = sorted(manifests, key=lambda m: m.created_at, reverse=True)
    zone = zoneinfo.ZoneInfo(time_zone)
    keep = {m.id for m in ordered[: max(last, 1)]}
    buckets: tuple[tuple[Callable[[datetime], Any], int], ...] = (
        (lambda t: (t.date(), t.hour), hourly),
        (lambda t: t.date(), daily),
        (lambda t: t.isocalendar()[:2], weekly),
    )
    for bucket, count in buckets:
        seen: set[Any] = set()
        for manifest in ordered:
            key = bucket(manifest.created_at.astimezone(zone))
            if key in seen:
                continue
            if len(seen) >= count:
                break
            seen.add(key)
            keep.add(manifest.id)
    return keep


def apply_retention(settings: BackupConfig) -> list[str]:
    """Delete the backups retention does not keep (kept_backups, and the newest at each schema revision); their ids."""
    catalog = Catalog(settings.directory)
    manifests = catalog.manifests()
    keep = kept_backups(
        manifests,
        settings.keep_hourly,
        settings.keep_daily,
        settings.keep_weekly,
        settings.time_zone,
        settings.keep_last,
    )
    # And the newest backup at each schema revision: what a bad migration goes back to (the backup taken before an
    # upgrade stays, whatever the hour's scheduled backups after it).
    keep |= {next(m.id for m in manifests if m.schema_revision == r) for r in {m.schema_revision for m in manifests}}
    pruned = []
    for manifest in manifests:
        if manifest.id not in keep:
            catalog.delete(manifest)
            pruned.append(manifest.id)
    if pruned:
        log.info("backup retention deleted %d backup(s): %s", len(pruned), ", ".join(pruned))
    return pruned


def copy_off_machine(settings: BackupConfig, manifest: Manifest) -> Path:
    """Copy a backup and then its manifest to backup.copy_to (each written under a temporary name first)."""
    catalog = Catalog(settings.directory)
    target = Path(settings.copy_to)
    target.mkdir(parents=True, exist_ok=True)
    for source in (catalog.data_path(manifest), catalog.manifest_path(manifest.id)):
        partial = target / f".{source.name}{PARTIAL_SUFFIX}"
        shutil.copyfile(source, partial)
        _fsync(partial)
        os.replace(partial, target / source.name)
    return target


def copy_off_host(settings: BackupConfig, manifest: Manifest) -> Manifest:
    """Copy a backup and then its manifest to the off-host repository; the data's checksum is computed there and must
    be the manifest's. Returns the manifest with `off_host` set (also written to the local catalog)."""
    remote = remote_of(settings)
    if remote is None:
        raise BackupError("no off-host repository: backup.remote.host is not configured")
    catalog = Catalog(settings.directory)
    copied = remote.put(catalog.data_path(manifest))
    if copied != manifest.sha256:
        raise BackupError(
            f"backup {manifest.id}: the copy on {remote.location} has sha256 {copied[:16] or 'none'}..., "
            f"not the manifest's {manifest.sha256[:16]}... (damaged on the way)"
        )
    done = dataclasses.replace(manifest, off_host=remote.location)
    write_json_atomic(catalog.manifest_path(manifest.id), done.to_json())
    remote.put(catalog.manifest_path(manifest.id))
    log.info("backup %s copied off host to %s (checksum verified there)", manifest.id, remote.location)
    return done


@dataclass(frozen=True)
class RemoteEntry:
    id: str
    created_at: datetime


def remote_backups(remote: Remote) -> list[RemoteEntry]:
    """The backups in the off-host repository (those whose manifest is there), newest first."""
    found = []
    for name in remote.names():
        backup_id = name.removeprefix(FILE_PREFIX).removesuffix(MANIFEST_SUFFIX)
        if name.startswith(FILE_PREFIX) and name.endswith(MANIFEST_SUFFIX) and ID_RE.match(backup_id):
            found.append(RemoteEntry(backup_id, datetime.strptime(backup_id, ID_FORMAT).replace(tzinfo=UTC)))
    return sorted(found, key=lambda e: e.created_at, reverse=True)


def apply_remote_retention(settings: BackupConfig, remote: Remote) -> list[str]:
    """The same retention in the off-host repository, over the backups that are there (it may hold backups this
    host's catalog no longer has, or never had: a new host after the old one was lost); their ids. Partial files of
    interrupted copies go too."""
    names = remote.names()
    entries = remote_backups(remote)
    keep = kept_backups(
        entries, settings.keep_hourly, settings.keep_daily, settings.keep_weekly, settings.time_zone, settings.keep_last
    )
    keep |= {m.id for m in Catalog(settings.directory).manifests()}  # what this host keeps
    pruned = [e.id for e in entries if e.id not in keep]
    doomed = [n for n in names if n.startswith(f".{FILE_PREFIX}") and n.endswith(".partial")]
    for backup_id in pruned:  # the manifest first: a backup without its manifest is not listed
        doomed.append(f"{FILE_PREFIX}{backup_id}{MANIFEST_SUFFIX}")
        doomed += [f"{FILE_PREFIX}{backup_id}{suffix}" for suffix in DATA_SUFFIX.values()]
    remote.delete([n for n in doomed if n in names])
    if pruned:
        log.info("backup retention deleted %d backup(s) on %s: %s", len(pruned), remote.location, ", ".join(pruned))
    return pruned


def fetch_backup(settings: BackupConfig, backup_id: str = "latest") -> Manifest:
    """Copy a backup from the off-host repository into the local catalog (a host rebuilt after the old one was lost:
    then `restore`); checked against its manifest's checksum. Returns its manifest."""
    remote = remote_of(settings)
    if remote is None:
        raise BackupError("no off-host repository: backup.remote.host is not configured")
    entries = remote_backups(remote)
    if not entries:
        raise BackupError(f"no backups in the off-host repository {remote.location}")
    chosen = entries[0] if backup_id == "latest" else next((e for e in entries if e.id == backup_id), None)
    if chosen is None:
        raise BackupError(f"no backup {backup_id!r} in the off-host repository {remote.location}")
    try:
        manifest = Manifest.from_json(json.loads(remote.read_text(f"{FILE_PREFIX}{chosen.id}{MANIFEST_SUFFIX}")))
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"backup {chosen.id}: its manifest on {remote.location} is unreadable: {exc}") from exc
    catalog = Catalog(settings.directory)
    catalog.directory.mkdir(parents=True, exist_ok=True)
    partial = catalog.directory / f".{manifest.file}{PARTIAL_SUFFIX}"
    try:
        remote.get(manifest.file, partial)
        if partial.stat().st_size != manifest.size_bytes or sha256_of(partial) != manifest.sha256:
            raise BackupError(
                f"backup {manifest.id}: the copy fetched from {remote.location} does not match its checksum"
            )
        _fsync(partial)
        os.replace(partial, catalog.data_path(manifest))
    finally:
        partial.unlink(missing_ok=True)
    write_json_atomic(catalog.manifest_path(manifest.id), manifest.to_json())
    log.info("backup %s fetched from %s", manifest.id, remote.location)
    return manifest


def _record(
    catalog: Catalog,
    *,
    manifest: Manifest | None = None,
    error: str = "",
    verified: bool | None = None,
    stage: str = "backup",
    pitr: backup_pitr.PitrBackup | None = None,
) -> None:
    """Add a run to the catalog's state: what the metrics export (and the alerts watch)."""
    now = utcnow().timestamp()

    def change(data: dict[str, Any]) -> None:
        if verified is not None:
            add_count(data, "verify_runs_total")
            if verified:
                data["last_verify_success_timestamp_seconds"] = now
            else:
                add_count(data, "verify_failures_total")
            return
        add_count(data, "runs_total")
        if manifest is not None and not error:
            data["last_success_timestamp_seconds"] = manifest.created_at.timestamp()
            data["last_size_bytes"] = manifest.size_bytes
            data["last_duration_seconds"] = manifest.duration_seconds
            data["last_id"] = manifest.id
            if pitr is not None:
                data["pitr_last_success_timestamp_seconds"] = now
                data["pitr_last_duration_seconds"] = round(pitr.duration_seconds, 6)
        else:
            add_count(data, "failures_total")
            if stage == "off_host":  # the off-host copy (or its retention) failed: the backup is not complete
                add_count(data, "off_host_failures_total")
            if stage == "pitr":
                add_count(data, "pitr_failures_total")
            data["last_failure_timestamp_seconds"] = now
            data["last_error"] = error[:500]

    with contextlib.suppress(OSError):
        catalog.directory.mkdir(parents=True, exist_ok=True)
    try:
        catalog.state.update(change)
    except OSError as exc:  # the run's own outcome is reported either way; only the record is lost
        log.error("cannot record the backup run in %s: %s", catalog.state.path, exc)


def sync_pitr_repository(remote: Remote, repo: Path, rsync: str) -> None:
    """Make <remote>/pgbackrest a copy of pgBackRest's repository `repo`. The WAL archive is copied without rsync's
    deletions, which would race `backup archive-wal` (a segment pushed here and shipped there after this rsync listed
    `repo` would be deleted there); the WAL retention expired here is deleted there after, from a listing taken there
    before the one here: every segment shipped by then is here too, so only expired ones go."""
    archive = f"{PITR_REMOTE_DIRECTORY}/archive"
    remote.sync_directory(repo, PITR_REMOTE_DIRECTORY, rsync, protect=("/archive/**",))
    there = remote.files(archive)
    here = {str(p.relative_to(repo / "archive")) for p in (repo / "archive").rglob("*") if p.is_file()}
    expired = [name for name in there if name not in here and SAFE_PATH.fullmatch(name)]
    remote.delete([f"{archive}/{name}" for name in expired])
    if expired:
        log.info("deleted %d WAL file(s) pgBackRest expired from %s", len(expired), remote.location)


def run_backup(config: Config, trigger: str = "manual", progress: Progress | None = None) -> BackupResult:
    """A whole backup run: take it, copy it off the machine when configured, apply retention, record the run.
    A failure anywhere is recorded (tradingops_backup_failures_total) and raised."""
    settings = config.backup
    catalog = Catalog(settings.directory)
    remote = remote_of(settings)
    stage = "backup"
    pitr: backup_pitr.PitrBackup | None = None
    try:
        url = config.database_url()
        manifest = take_backup(settings, url, trigger, progress)
        copied = copy_off_machine(settings, manifest) if settings.copy_to else None
        stage = "off_host"
        if remote is not None:
            manifest = copy_off_host(settings, manifest)
        elif settings.remote.required:
            raise BackupError(
                f"backup {manifest.id} is on this host only: no off-host repository is configured "
                "(backup.remote.host; or backup.remote.required: false to accept that)"
            )
        if settings.pitr.enabled and manifest.dialect == "postgresql":
            stage = "pitr"
            pitr = backup_pitr.take(settings.pitr, url)
            if remote is not None and settings.pitr.repo_path:
                stage = "off_host"
                backup_wal.check_shipping(settings, url)  # the WAL goes off host as it is archived, not only now
                repo = Path(settings.pitr.repo_path)
                sync_pitr_repository(remote, repo, settings.pitr.rsync)
                log.info("pgBackRest repository %s copied off host to %s", repo, remote.location)
        stage = "backup"
        pruned = apply_retention(settings)
        stage = "off_host"
        remote_pruned = apply_remote_retention(settings, remote) if remote is not None else []
    except Exception as exc:  # reported by the caller (one line on the CLI, a log line from the schedule)
        _record(catalog, error=f"{type(exc).__name__}: {exc}", stage=stage)
        raise
    _record(catalog, manifest=manifest, pitr=pitr)
    return BackupResult(manifest, pruned, copied, remote_pruned, pitr)


async def run_scheduled_backup(config: Config) -> BackupResult:
    """The scheduled job: a backup run off the event loop (the reconciler keeps serving meanwhile). A failure is
    recorded (tradingops_backup_failures_total), logged and raised for the scheduler to record too."""
    try:
        return await asyncio.to_thread(run_backup, config, "scheduled")
    except Exception as exc:
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        log.error("scheduled backup failed: %s", lines[0] if lines else type(exc).__name__)
        raise
