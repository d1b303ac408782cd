"""PostgreSQL point-in-time recovery through pgBackRest: full and differential backups of the cluster that holds the
journal and the ledger (its WAL archived by the cluster's own `archive_command`), and restores of the cluster as of a
moment. pgBackRest runs from an argument list (`backup.pitr.command`, e.g. as the cluster's owner), never a shell."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trading_ops.config import BackupPitrConfig

log = logging.getLogger(__name__)

STDERR_LIMIT = 500
DAY_SECONDS = 86400


class PitrError(RuntimeError):
    """pgBackRest failed, could not start, or ran out of time; one line with its error."""


@dataclass(frozen=True)
class PitrBackup:
    label: str
    type: str  # full, diff
    duration_seconds: float


def _run(pitr: BackupPitrConfig, *args: str, command: list[str] | None = None) -> str:
    """pgBackRest (`command`, by default backup.pitr.command) with the configuration file, the stanza and `args`."""
    command = command or pitr.command
    argv = [*command, f"--config={pitr.config_file}", f"--stanza={pitr.stanza}", *args]
    verb = next((a for a in args if not a.startswith("-")), "")
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=pitr.timeout_seconds, check=False
        )
    except subprocess.TimeoutExpired:
        raise PitrError(f"pgbackrest {verb} did not finish within {pitr.timeout_seconds:g}s") from None
    except OSError as exc:
        raise PitrError(f"cannot start {command[0]}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln]
        detail = (errors or lines or [f"exit status {done.returncode}"])[0]
        raise PitrError(f"pgbackrest {verb} failed: {detail[:STDERR_LIMIT]}")
    return done.stdout


def info(pitr: BackupPitrConfig) -> dict[str, Any]:
    """The stanza's entry of `pgbackrest info --output=json` (empty when there is none)."""
    stanzas = json.loads(_run(pitr, "--output=json", "info") or "[]")
    return next((s for s in stanzas if s.get("name") == pitr.stanza), {})


def archive_push(pitr: BackupPitrConfig, wal: str) -> None:
    """`pgbackrest archive-push` of the WAL file `wal` (the archive_command's %p) into the local repository, run
    with backup.pitr.archive_push_command (the archiver is the cluster's owner already)."""
    _run(pitr, "archive-push", wal, command=pitr.archive_push_command)


def check_archiving(pitr: BackupPitrConfig, url: str) -> None:
    """PitrError unless the cluster archives its WAL and switches segments at least every archive_timeout_seconds
    (archive_timeout): otherwise a quiet hour's commits stay in pg_wal, on this host only."""
    from sqlalchemy import text

    from trading_ops.db.base import make_engine

    bound = pitr.archive_timeout_seconds
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT name, setting FROM pg_settings WHERE name IN ('archive_mode', 'archive_timeout')")
            )
            settings = {str(name): str(value) for name, value in rows}
    finally:
        engine.dispose()
    if settings.get("archive_mode", "off") == "off":
        raise PitrError("the cluster does not archive its WAL (archive_mode is off): see docs/backups.md")
    timeout = int(settings.get("archive_timeout", "0"))
    if timeout == 0 or timeout > bound:
        raise PitrError(
            f"the cluster's archive_timeout is {timeout}s{' (off)' if timeout == 0 else ''}: set it to at most "
            f"{bound:g}s (backup.pitr.archive_timeout_seconds), or WAL may stay on this host only for longer"
        )


def take(pitr: BackupPitrConfig, url: str) -> PitrBackup:
    """A pgBackRest backup of the cluster: full when there is none or the last is older than `full_every_days`,
    differential otherwise. Creates the stanza the first time (stanza-create is idempotent). Checks first that the
    cluster switches WAL segments often enough (check_archiving)."""
    started = time.monotonic()
    check_archiving(pitr, url)
    _run(pitr, "stanza-create")
    backups = info(pitr).get("backup", [])
    fulls = [b["timestamp"]["stop"] for b in backups if b.get("type") == "full"]
    age = time.time() - max(fulls) if fulls else None
    kind = "full" if age is None or age > pitr.full_every_days * DAY_SECONDS else "diff"
    _run(pitr, f"--type={kind}", "backup")
    newest = info(pitr).get("backup", [])
    label = str(newest[-1]["label"]) if newest else ""
    result = PitrBackup(label, kind, time.monotonic() - started)
    log.info("pgBackRest %s backup %s of stanza %s: %.2fs", kind, label, pitr.stanza, result.duration_seconds)
    return result


def restore_to_time(pitr: BackupPitrConfig, target: datetime, pg_data: Path) -> float:
    """Restore the cluster as of `target` into the data directory `pg_data` (empty, or a stopped cluster's: its files
    are replaced); the cluster promotes itself once it replayed the WAL up to `target`. Seconds it took."""
    started = time.monotonic()
    moment = target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    _run(
        pitr,
        f"--pg1-path={pg_data}",
        "--type=time",
        f"--target={moment}",
        "--target-action=promote",
        "--delta",
        "restore",
    )
    duration = time.monotonic() - started
    log.warning(
        "cluster restored as of %s into %s (pgBackRest, %.2fs): start it to replay the WAL", moment, pg_data, duration
    )
    return duration
