"""SQLite backups through the online backup API: a consistent copy while the bot writes, and restores from one."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

# Pages copied per step of the backup API (4 KiB pages: 4 MiB per step), so a long copy reports progress.
PAGES_PER_STEP = 1024
BUSY_TIMEOUT_MS = 10_000

Progress = Callable[[int, int], None]  # (pages done, pages in all)


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        yield conn
    finally:
        conn.close()


def _copy(source: sqlite3.Connection, target: sqlite3.Connection, progress: Progress | None) -> None:
    def report(_status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress(total - remaining, total)

    source.backup(target, pages=PAGES_PER_STEP, progress=report)


def backup(source_path: Path, target_path: Path, progress: Progress | None = None) -> None:
    """Copy the database at `source_path` into a new file `target_path`, consistent as of one moment.

    The source connection holds one read transaction for the whole copy: in WAL mode writers go on, and the backup
    sees (and copies) the snapshot its transaction started with instead of restarting at every write."""
    if not source_path.is_file():
        raise FileNotFoundError(f"no SQLite database at {source_path}")
    with _connect(source_path) as source, _connect(target_path) as target:
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # starts the read transaction
        try:
            _copy(source, target, progress)
        finally:
            source.execute("COMMIT")
        # A self-contained file: no -wal beside it, whatever the copied pages say about the journal mode.
        target.execute("PRAGMA journal_mode=DELETE")


def restore(backup_path: Path, target_path: Path, progress: Progress | None = None) -> None:
    """Overwrite the database at `target_path` with the backup's content, through the backup API (in place, so the
    target's WAL and locks are handled by SQLite, not by replacing files under it)."""
    target_path.parent.mkdir(parents=True, exist_ok=True)
    with _connect(backup_path) as source, _connect(target_path) as target:
        _copy(source, target, progress)


def integrity_problems(path: Path) -> list[str]:
    """What `PRAGMA integrity_check` finds wrong with the database at `path` (empty: it is sound)."""
    with _connect(path) as conn:
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    return [] if rows == ["ok"] else rows
