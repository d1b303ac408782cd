"""`trading-ops backup run|list|verify|restore|fetch|drill` (`trading-ops upkeep`: trading_ops.commands.upkeep_cmd)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trading_ops.config import Config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def register(sub: Any) -> None:
    backup = sub.add_parser("backup", help="back the database up, list, verify and restore backups")
    inner = backup.add_subparsers(dest="backup_command", metavar="ACTION", required=True)
    run = inner.add_parser("run", help="take a backup now (then copy it off the machine and apply retention)")
    run.add_argument("--verify", action="store_true", help="verify the new backup in a scratch database")
    run.set_defaults(handler=backup_run)
    listing = inner.add_parser("list", help="the backups in the catalog, newest first")
    listing.add_argument("--json", action="store_true", help="print the manifests as JSON")
    listing.set_defaults(handler=backup_list)
    verify = inner.add_parser("verify", help="restore a backup into a scratch database and check it")
    verify.add_argument("backup_id", nargs="?", default="latest", metavar="ID", help="a backup id (default: latest)")
    verify.set_defaults(handler=backup_verify)
    restore = inner.add_parser("restore", help="replace the database with a backup (a safety backup is taken first)")
    restore.add_argument("backup_id", nargs="?", metavar="ID", help="a backup id, or latest")
    restore.add_argument(
        "--to-time",
        metavar="TIME",
        help="PostgreSQL with backup.pitr: restore the cluster as of TIME (ISO 8601, e.g. 2026-11-25T09:10:00Z) "
        "with pgBackRest into --pg-data, instead of a backup ID",
    )
    restore.add_argument("--pg-data", metavar="DIR", help="with --to-time: the data directory to restore into")
    restore.add_argument(
        "--from-off-host",
        action="store_true",
        help="with --to-time: first fetch pgBackRest's repository (backups and WAL) from the off-host repository "
        "into backup.pitr.repo_path (the database host and its repository were lost)",
    )
    restore.add_argument("--force", action="store_true", help="restore even while a bot or the reconciler uses it")
    restore.add_argument(
        "--schema",
        metavar="REV",
        help="only a backup at this schema revision (`head`: this release's newest; with latest: the newest such)",
    )
    restore.set_defaults(handler=backup_restore)
    archive = inner.add_parser(
        "archive-wal",
        help="PostgreSQL's archive_command: push a WAL segment into pgBackRest's repository and copy it off host",
    )
    archive.add_argument("wal", metavar="WAL", help="the WAL file (archive_command's %%p)")
    archive.set_defaults(handler=backup_archive_wal)
    fetch = inner.add_parser("fetch", help="copy a backup from the off-host repository into the local catalog")
    fetch.add_argument("backup_id", nargs="?", default="latest", metavar="ID", help="a backup id (default: latest)")
    fetch.set_defaults(handler=backup_fetch)
    drill = inner.add_parser(
        "drill",
        help="restore a backup into a scratch database, migrate it to head and check the journal (a restore drill)",
    )
    drill.add_argument("backup_id", nargs="?", default="latest", metavar="ID", help="a backup id (default: latest)")
    drill.add_argument(
        "--schema",
        metavar="REV",
        help="only a backup at this schema revision (`head`: this release's newest; with latest: the newest such)",
    )
    drill.add_argument("--last", action="store_true", help="print the last drill's recorded result; run none")
    drill.set_defaults(handler=backup_drill)


def expected_errors(*more: type[Exception]) -> tuple[type[Exception], ...]:
    """What a backup or upkeep command reports as one line (exit 1) instead of a traceback, `more` included. A
    function, which `except` calls only once something was raised: the commands that never touch the database do
    not import SQLAlchemy for it."""
    from sqlalchemy.exc import SQLAlchemyError

    from trading_ops.ops.backup_pitr import PitrError
    from trading_ops.ops.backup_postgres import ClientProgramError
    from trading_ops.ops.backup_remote import RemoteError

    return (*more, ClientProgramError, PitrError, RemoteError, OSError, SQLAlchemyError, sqlite3.Error)


def fail(action: str, exc: BaseException) -> int:
    message = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    print(f"trading-ops: {action}: {message[0] if message else type(exc).__name__}", file=sys.stderr)
    return EXIT_FAILURE


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop returns


def backup_run(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.ops.backup import BackupError, TerminalProgress, run_backup, verify_backup

    progress = TerminalProgress("backup")
    try:
        result = run_backup(config, "manual", progress)
    except expected_errors(BackupError) as exc:
        return fail("backup run", exc)
    finally:
        progress.finish()
    m = result.manifest
    print(
        f"backup {m.id}: {human(m.size_bytes)}, {sum(m.row_counts.values())} rows in {len(m.row_counts)} tables, "
        f"schema {m.schema_revision or 'none'}, {m.duration_seconds:.2f}s -> {Path(config.backup.directory)}"
    )
    if result.copied_to:
        print(f"copied to {result.copied_to}")
    if m.off_host:
        print(f"off host: {m.off_host} (checksum verified there)")
    else:
        print("off host: none (backup.remote.required is false): this backup is lost with this host")
    if result.pitr:
        print(f"pgBackRest {result.pitr.type} backup {result.pitr.label} ({result.pitr.duration_seconds:.2f}s)")
    if result.pruned:
        print(f"retention deleted {len(result.pruned)} older backup(s)")
    if result.remote_pruned:
        print(f"retention deleted {len(result.remote_pruned)} older backup(s) off host")
    if args.verify:
        try:
            verified = verify_backup(config, m)
        except expected_errors(BackupError) as exc:
            return fail("backup verify", exc)
        print(f"backup {m.id} verified: {verified.rows} rows in {verified.tables} tables match the manifest")
    return EXIT_OK


def backup_list(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.ops.backup import Catalog

    manifests = Catalog(config.backup.directory).manifests()
    if args.json:
        print(json.dumps([m.to_json() for m in manifests], indent=2))
        return EXIT_OK
    if not manifests:
        print(f"no backups in {Path(config.backup.directory)}")
        return EXIT_OK
    print(f"{'ID':<24} {'CREATED (UTC)':<20} {'TRIGGER':<9} {'SIZE':>10} {'ROWS':>9} {'SCHEMA':<8} OFF-HOST  SOURCE")
    for m in manifests:
        print(
            f"{m.id:<24} {m.created_at:%Y-%m-%d %H:%M:%S} {m.trigger:<9} {human(m.size_bytes):>10} "
            f"{sum(m.row_counts.values()):>9} {m.schema_revision or '-':<8} {'yes' if m.off_host else 'no':<9} "
            f"{m.source}"
        )
    return EXIT_OK


def backup_verify(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.ops.backup import BackupError, Catalog, TerminalProgress, verify_backup

    progress = TerminalProgress("verify")
    try:
        manifest = Catalog(config.backup.directory).get(args.backup_id)
        result = verify_backup(config, manifest, progress)
    except expected_errors(BackupError) as exc:
        return fail("backup verify", exc)
    finally:
        progress.finish()
    print(
        f"backup {manifest.id} verified: checksum ok, integrity ok, {result.rows} rows in {result.tables} tables "
        f"match the manifest ({result.duration_seconds:.2f}s)"
    )
    return EXIT_OK


def backup_restore(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.ops.backup import BackupError, Catalog, restore_backup

    if args.to_time is not None or args.pg_data is not None or args.from_off_host:
        return _restore_to_time(args, config)
    if args.backup_id is None:
        return usage("backup restore", "give a backup ID (or latest), or --to-time TIME --pg-data DIR")

    try:
        manifest = Catalog(config.backup.directory).get(args.backup_id, _schema(config, args.schema))
        result = restore_backup(config, manifest, force=args.force)
    except expected_errors(BackupError) as exc:
        return fail("backup restore", exc)
    safety = f"safety backup {result.safety.id}" if result.safety else "no safety backup (there was no database)"
    print(
        f"database restored from backup {manifest.id} ({sum(manifest.row_counts.values())} rows), {safety}; "
        f"{result.duration_seconds:.2f}s"
    )
    head = _schema_head(config)
    if manifest.schema_revision != head:
        print(
            f"the restored schema is at revision {manifest.schema_revision}: run `trading-ops db upgrade` (to {head})"
        )
    return EXIT_OK


def backup_archive_wal(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.ops.backup import BackupError
    from trading_ops.ops.backup_wal import WalNameError, archive_wal

    if not config.backup.pitr.enabled:
        return usage("backup archive-wal", "backup.pitr.enabled is false")
    try:
        archive_wal(config.backup, args.wal)
    except WalNameError as exc:
        return usage("backup archive-wal", str(exc))
    except expected_errors(BackupError) as exc:
        return fail("backup archive-wal", exc)
    return EXIT_OK


def backup_fetch(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.ops.backup import BackupError, fetch_backup

    try:
        manifest = fetch_backup(config.backup, args.backup_id)
    except expected_errors(BackupError) as exc:
        return fail("backup fetch", exc)
    print(
        f"backup {manifest.id} fetched from {manifest.off_host or 'the off-host repository'}: "
        f"{human(manifest.size_bytes)}, checksum ok -> {Path(config.backup.directory)}"
    )
    return EXIT_OK


def backup_drill(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.ops.backup import BackupError
    from trading_ops.ops.restore_drill import drill_state, run_drill

    if args.last:
        return _last_drill(drill_state(config.backup).read())
    try:
        result = run_drill(config, args.backup_id, _schema(config, args.schema))
    except expected_errors(BackupError) as exc:
        return fail("backup drill", exc)
    m = result.manifest
    print(
        f"restore drill passed: backup {m.id} ({m.created_at:%Y-%m-%d %H:%M:%S} UTC) restored into a scratch "
        f"database, migrated to {result.schema_revision}, {result.rows} rows; checked: {', '.join(result.checks)} "
        f"({result.duration_seconds:.2f}s)"
    )
    return EXIT_OK


def _last_drill(state: dict[str, Any]) -> int:
    """The recorded result of the last drill: exit 0 when it passed, 1 when it failed or there was none."""
    from datetime import UTC, datetime

    def when(key: str) -> str:
        return f"{datetime.fromtimestamp(float(state[key]), UTC):%Y-%m-%d %H:%M:%S} UTC"

    if not state.get("runs_total"):
        print(
            "trading-ops: backup drill: no restore drill has run yet (`trading-ops backup drill` runs one)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    passed = not state.get("last_error")
    success = "last_success_timestamp_seconds"
    print(
        f"last restore drill {'passed' if passed else 'FAILED'} at {when('last_run_timestamp_seconds')} "
        f"on backup {state.get('last_backup_id', '?')} ({float(state.get('last_duration_seconds', 0)):.2f}s); "
        f"last passed: {when(success) if success in state else 'never'}"
        f"; {int(state.get('failures_total', 0))} of {int(state['runs_total'])} drills failed"
        + ("" if passed else f"; error: {state['last_error']}")
    )
    return EXIT_OK if passed else EXIT_FAILURE


def _schema(config: Config, schema: str | None) -> str | None:
    return _schema_head(config) if schema == "head" else schema


def usage(action: str, problem: str) -> int:
    print(f"trading-ops: {action}: {problem}", file=sys.stderr)
    return EXIT_USAGE


def _restore_to_time_problem(args: argparse.Namespace, config: Config) -> str | None:
    """What is wrong with a `backup restore --to-time` command line (None: nothing)."""
    if args.from_off_host and args.to_time is None:
        return "--from-off-host goes with --to-time TIME --pg-data DIR"
    if args.backup_id is not None or args.to_time is None or args.pg_data is None:
        return "--to-time TIME and --pg-data DIR go together, without a backup ID"
    if not config.backup.pitr.enabled:
        return "--to-time needs point-in-time recovery: backup.pitr.enabled is false"
    return None


def _moment(text: str) -> datetime | str:
    """The moment `--to-time` names, or what is wrong with it."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return f"--to-time: expected an ISO 8601 time such as 2026-11-25T09:10:00Z, got {text!r}"
    if moment.tzinfo is None:
        return f"--to-time: give the time zone (Z or +HH:MM) of {text!r}"
    return moment


def _restore_to_time(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.ops.backup import BackupError
    from trading_ops.ops.backup_pitr import PitrError, restore_to_time

    problem = _restore_to_time_problem(args, config)
    if problem is not None:
        return usage("backup restore", problem)
    moment = _moment(args.to_time)
    if isinstance(moment, str):
        return usage("backup restore", moment)
    try:
        if args.from_off_host:
            from trading_ops.ops.backup_wal import fetch_repository

            repo = fetch_repository(config.backup, Path(args.pg_data))
            print(f"pgBackRest repository fetched from off host into {repo}")
        duration = restore_to_time(config.backup.pitr, moment, Path(args.pg_data))
    except expected_errors(PitrError, BackupError) as exc:
        return fail("backup restore", exc)
    print(
        f"cluster restored as of {moment.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f} UTC into {args.pg_data} "
        f"({duration:.2f}s): start PostgreSQL on it; it replays the WAL to that moment and promotes itself"
    )
    return EXIT_OK


def _schema_head(config: Config) -> str | None:
    from alembic.script import ScriptDirectory

    from trading_ops.db.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config(config.database_url())).get_current_head()
