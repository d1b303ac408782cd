"""WAL off host as it is archived: the cluster's archive_command, `trading-ops backup archive-wal %p`, pushes each WAL
segment into the local pgBackRest repository and copies the repository's WAL archive to the off-host repository over
SSH before it reports success, so PostgreSQL keeps the segment and retries until the off-host copy exists; and the
repository fetched back from there after the database host was lost (`backup restore --to-time --from-off-host`).

Why this design and not pgBackRest's own repository host (`repo1-host`): pgBackRest 2.45 then refuses `backup` on the
database host, so the backup must run on the backup host and reach back to the database host over SSH (a second sshd
on the database side, pgBackRest installed and configured on both, keys both ways). Here the backup host needs
nothing but sshd and rsync (what the pg_dump copies already need), `backup run` keeps running beside the database,
and the bound is PostgreSQL's own: a committed transaction leaves the host within archive_timeout (checked by
`backup run`, backup.pitr.archive_timeout_seconds) plus one copy. Nothing goes through a local shell: pgBackRest and
rsync get argument lists, and the WAL file's name must be one PostgreSQL makes before anything runs.

A shipment sends what the archive gained since the last one, not the whole archive (whose listing grows with
retention): a local record (wal-shipped.json beside the run record) holds the archive's files as of the last shipment
that succeeded, and rsync is given the files of the archive not in it (the pushed segment; any a failed or skipped
shipment left behind) and the archive's info files. Why a local record and not a listing there of the current
timeline's directory: that listing is a second SSH round trip per segment, and it misses what was left behind in an
earlier directory or timeline; the local listing costs microseconds per file. What the record cannot see (files
deleted off host by hand) the next `backup run`'s copy of the whole repository puts back."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from trading_ops.config import BackupConfig
from trading_ops.db.base import utcnow
from trading_ops.ops import backup_pitr
from trading_ops.ops.backup_errors import BackupError
from trading_ops.ops.backup_remote import PITR_REMOTE_DIRECTORY, Remote, remote_of
from trading_ops.ops.state import OpsState, add_count

log = logging.getLogger(__name__)

WAL_STATE_FILE = "wal-archive-state.json"
WAL_SHIPPED_FILE = "wal-shipped.json"
# The archive's own files that change in place (stanza-create, stanza-upgrade): sent with every shipment.
ARCHIVE_INFO_FILES = ("archive.info", "archive.info.copy")
# pgBackRest writes a repository file under this suffix and renames it when it is complete.
PGBACKREST_TEMPORARY = ".pgbackrest.tmp"
# What the archiver hands archive_command: a segment, a partial segment, a backup history file, a timeline history.
WAL_NAME = re.compile(r"[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history")
ERROR_LIMIT = 500


class WalNameError(ValueError):
    """archive-wal was given something that is not a WAL file PostgreSQL archives."""


def wal_state(settings: BackupConfig) -> OpsState:
    """The record of archive-wal's runs (backup.pitr.wal_state_file), which the metrics export."""
    configured = settings.pitr.wal_state_file
    path = Path(configured) if configured else Path(settings.directory) / WAL_STATE_FILE
    return OpsState(path)


def shipped_record(settings: BackupConfig) -> Path:
    """The record of the WAL archive's files already off host (wal-shipped.json beside wal_state's file)."""
    return wal_state(settings).path.with_name(WAL_SHIPPED_FILE)


def archive_files(archive: Path) -> list[str]:
    """The files of pgBackRest's WAL archive `archive`, as paths relative to it (pgBackRest's temporary files left
    out: a file there is complete once it has its name)."""
    found: list[str] = []
    root = str(archive)
    for folder, _, files in os.walk(root):
        prefix = "" if folder == root else f"{folder[len(root) + 1 :]}/"  # strings: Path objects cost per file
        found += [prefix + name for name in files if not name.endswith(PGBACKREST_TEMPORARY)]
    return sorted(found)


def ship_archive(remote: Remote, archive: Path, target: str, rsync: str, record: Path) -> list[str]:
    """Copy into `target` of the off-host repository what of the WAL archive `archive` is not there yet: the files
    not in `record` (the archive's files when a shipment of it to the same place last succeeded) and the archive's
    info files. Then the record is the archive's files as listed here before the copy. The files sent.

    The record only ever names files a successful copy left there: it is written after the copy, and a shipment to
    another host or directory starts from nothing (its first copy compares the whole archive, as rsync of the
    directory did). Losing it is always safe, so it is not synced: a record a crash left old, empty or unreadable,
    or two shipments at once, only make the next shipment compare and send more than it must."""
    here = archive_files(archive)
    place = {"remote": remote.location, "target": target, "archive": str(archive)}
    last = OpsState(record).read()
    known = set(last.get("files", [])) if all(last.get(k) == v for k, v in place.items()) else set()
    send = [name for name in here if name not in known or name in ARCHIVE_INFO_FILES]
    if send:
        remote.send_files(archive, send, target, rsync)
    partial = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({**place, "files": here}), encoding="utf-8")
        os.replace(partial, record)
    except OSError as exc:  # shipped all the same; the next shipment compares more than it must
        log.error("cannot record the WAL shipped in %s: %s", record, exc)
    return send


def _record(settings: BackupConfig, segment: str, duration: float, error: str = "", stage: str = "") -> None:
    now = utcnow().timestamp()

    def change(data: dict[str, object]) -> None:
        add_count(data, "segments_total")
        if error:
            add_count(data, "failures_total")
            if stage == "off_host":
                add_count(data, "off_host_failures_total")
            data["last_failure_timestamp_seconds"] = now
            data["last_error"] = f"{segment}: {error}"[:ERROR_LIMIT]
        else:
            data["last_success_timestamp_seconds"] = now
            data["last_duration_seconds"] = round(duration, 6)
            data["last_segment"] = segment

    try:
        wal_state(settings).update(change)
    except OSError as exc:  # the archiver sees the outcome either way (exit status, the server log)
        log.error("cannot record the WAL shipment in %s: %s", wal_state(settings).path, exc)


def archive_wal(settings: BackupConfig, wal: str) -> float:
    """Archive the WAL file `wal` (archive_command's %p, relative to the data directory): into the local repository
    (`pgbackrest archive-push`), then what the repository's WAL archive gained since the last shipment copied off host
    (ship_archive: rsync over backup.remote's SSH; nothing there is deleted). Seconds it took. Raises when either did
    not happen: the archiver then keeps the segment and tries again. Each run is recorded (wal_state)."""
    segment = Path(wal).name
    if not WAL_NAME.fullmatch(segment):
        raise WalNameError(f"{wal!r} is not a WAL file name (archive_command passes %p)")
    pitr = settings.pitr
    started = time.monotonic()
    stage = "push"
    try:
        backup_pitr.archive_push(pitr, wal)
        stage = "off_host"
        remote = remote_of(settings)
        if remote is None:
            if settings.remote.required:
                raise BackupError(
                    "no off-host repository (backup.remote.host): the WAL would stay on this host only "
                    "(backup.remote.required: false accepts that)"
                )
        elif pitr.repo_path:  # empty: the repository is on another host (or a mount of one) already
            archive = Path(pitr.repo_path) / "archive" / pitr.stanza
            target = f"{PITR_REMOTE_DIRECTORY}/archive/{pitr.stanza}"
            ship_archive(remote, archive, target, pitr.rsync, shipped_record(settings))
    except Exception as exc:
        _record(settings, segment, time.monotonic() - started, f"{type(exc).__name__}: {exc}", stage)
        raise
    duration = time.monotonic() - started
    _record(settings, segment, duration)
    log.debug("WAL %s archived and copied off host in %.3fs", segment, duration)  # the server log: failures only
    return duration


def check_shipping(settings: BackupConfig, url: str) -> None:
    """BackupError unless the WAL the cluster archived last (pg_stat_archiver) went through archive-wal: a cluster
    whose archive_command is plain `pgbackrest archive-push` keeps its WAL on this host between backup runs."""
    from sqlalchemy import text

    from trading_ops.db.base import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            segment, archived = conn.execute(
                text("SELECT last_archived_wal, extract(epoch FROM last_archived_time) FROM pg_stat_archiver")
            ).one()
    finally:
        engine.dispose()
    state = wal_state(settings).read()  # read after the archiver's record: newer, if anything
    shipped = state.get("last_success_timestamp_seconds")
    # The same segment; or a later one, shipped after the archiver recorded that one as archived.
    if segment is None or state.get("last_segment") == segment or float(shipped or 0) > float(archived):
        return
    when = (
        "never" if shipped is None else f"last at {datetime.fromtimestamp(float(shipped), UTC):%Y-%m-%d %H:%M:%S} UTC"
    )
    raise BackupError(
        f"WAL {segment} was archived but not by `trading-ops backup archive-wal` ({when}, {wal_state(settings).path}): "
        "set the cluster's archive_command to it, or its WAL stays on this host until the next backup run"
    )


def fetch_repository(settings: BackupConfig, pg_data: Path) -> Path:
    """Copy pgBackRest's repository from the off-host repository into backup.pitr.repo_path (a host rebuilt after the
    database host was lost, the pgBackRest configuration reinstalled): its backups and every WAL segment shipped by
    archive-wal. Run as root, the copy is given to the owner of `pg_data`, as whom pgBackRest restores. The path."""
    pitr = settings.pitr
    remote = remote_of(settings)
    if remote is None:
        raise BackupError("no off-host repository: backup.remote.host is not configured")
    if not pitr.repo_path:
        raise BackupError("backup.pitr.repo_path is empty: where pgBackRest's repository goes (its repo1-path)")
    repo = Path(pitr.repo_path)
    remote.fetch_directory(PITR_REMOTE_DIRECTORY, repo, pitr.rsync)
    if os.geteuid() == 0 and pg_data.exists():
        owner = pg_data.stat()
        for folder, _, files in os.walk(repo):
            for path in [folder, *(os.path.join(folder, f) for f in files)]:
                os.chown(path, owner.st_uid, owner.st_gid)
    log.warning("pgBackRest repository fetched from %s into %s", remote.location, repo)
    return repo
