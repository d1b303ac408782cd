"""Directory cleanup by age and total size: the bot's rotated logs, scratch and temp files (the paper bot's
`fill_disk` chaos included). Only regular files matching the pattern, never through a symlink, never the database,
its journal files, the backups or a bot's lock."""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from trading_ops.bot.instance_lock import LOCK_SUFFIX
from trading_ops.config import CleanupDirConfig, Config, ConfigError, sqlite_file
from trading_ops.durations import parse_duration

log = logging.getLogger(__name__)

DATA_DIR_PLACEHOLDER = "{data_dir}"
# The first bytes of every SQLite database: such a file is never deleted, whatever its name or place.
SQLITE_HEADER = b"SQLite format 3\x00"
# Beside an SQLite database: its WAL, shared memory and rollback journal.
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


@dataclass
class CleanupResult:
    name: str
    path: Path
    files_deleted: int = 0
    bytes_freed: int = 0
    failures: int = 0
    bytes_left: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CleanupTarget:
    name: str
    path: Path
    pattern: str
    max_age_seconds: float | None
    max_bytes: int  # -1: no size rule


def cleanup_targets(config: Config) -> list[CleanupTarget]:
    """The configured directories, `{data_dir}` expanded and paths resolved; a directory that could hold the system
    or a home directory is a configuration error, never cleaned."""
    data_dir = config.bot.data_dir
    targets = []
    for name, settings in config.upkeep.cleanup.items():
        targets.append(_target(name, settings, data_dir))
    return targets


def _target(name: str, settings: CleanupDirConfig, data_dir: str) -> CleanupTarget:
    path = Path(settings.path.replace(DATA_DIR_PLACEHOLDER, data_dir)).resolve()
    if path == Path(path.anchor) or path == Path.home().resolve() or len(path.parts) < 3:
        raise ConfigError(f"upkeep.cleanup.{name}.path", f"refusing to clean {path}: too close to the root")
    max_age = parse_duration(settings.max_age) if settings.max_age else None
    return CleanupTarget(name, path, settings.pattern, max_age, settings.max_bytes)


def protected_paths(config: Config) -> tuple[set[Path], list[Path]]:
    """Files cleanup never deletes (the SQLite database and its companions) and directories it never enters
    (the backups and their off-machine copy)."""
    files: set[Path] = set()
    try:
        database = sqlite_file(config.database_url())
    except ConfigError as exc:  # e.g. url_env unset in a step's environment: SQLITE_HEADER still guards
        log.warning("cleanup: the database URL cannot be read (%s); databases are known by their header", exc)
        database = None
    if database is not None:
        base = str(Path(database).resolve())
        files.update(Path(base + suffix) for suffix in SQLITE_COMPANIONS)
    dirs = [Path(config.backup.directory).resolve()]
    if config.backup.copy_to:
        dirs.append(Path(config.backup.copy_to).resolve())
    return files, dirs


def clean_directory(
    target: CleanupTarget, protected_files: set[Path], protected_dirs: list[Path], now: float | None = None
) -> CleanupResult:
    """Delete the matching files older than the age limit, then the oldest until the rest fit the size limit."""
    now = time.time() if now is None else now
    result = CleanupResult(target.name, target.path)
    if not target.path.is_dir():
        return result
    candidates = sorted(_candidates(target, protected_files, protected_dirs))
    keep: list[tuple[float, int, Path]] = []
    for mtime, size, path in candidates:
        if target.max_age_seconds is not None and now - mtime > target.max_age_seconds:
            _delete(path, size, result)
        else:
            keep.append((mtime, size, path))
    total = sum(size for _, size, _ in keep)
    if target.max_bytes >= 0:
        for _, size, path in keep:  # oldest first
            if total <= target.max_bytes:
                break
            if _delete(path, size, result):
                total -= size
    result.bytes_left = total
    if result.files_deleted or result.failures:
        log.info(
            "cleanup %s (%s): deleted %d file(s), freed %d bytes, %d bytes left, %d failure(s)",
            target.name,
            target.path,
            result.files_deleted,
            result.bytes_freed,
            total,
            result.failures,
        )
    return result


def _candidates(
    target: CleanupTarget, protected_files: set[Path], protected_dirs: list[Path]
) -> list[tuple[float, int, Path]]:
    """The files cleanup may delete in the target's directory, as (modification time, size, path): regular files
    matching its pattern, outside the protected directories, never a protected file, a lock or an SQLite database."""
    candidates: list[tuple[float, int, Path]] = []
    for root, dirs, names in os.walk(target.path, followlinks=False):
        here = Path(root)
        dirs[:] = [d for d in dirs if not any((here / d).resolve() == p for p in protected_dirs)]
        for filename in names:
            path = here / filename
            if not fnmatch.fnmatch(filename, target.pattern) or filename.endswith(LOCK_SUFFIX):
                continue
            if path.resolve() in protected_files:
                continue
            try:
                info = path.lstat()
            except OSError:
                continue  # gone meanwhile
            if stat.S_ISREG(info.st_mode) and not _is_sqlite(path):
                candidates.append((info.st_mtime, info.st_size, path))
    return candidates


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _delete(path: Path, size: int, result: CleanupResult) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return True  # someone else removed it: the space is free all the same, but not our doing
    except OSError as exc:
        result.failures += 1
        result.errors.append(f"{path}: {exc.strerror or exc}")
        log.warning("cleanup %s: cannot delete %s: %s", result.name, path, exc.strerror or exc)
        return False
    result.files_deleted += 1
    result.bytes_freed += size
    return True


def run_cleanup(config: Config, now: float | None = None) -> list[CleanupResult]:
    """Clean every configured directory."""
    files, dirs = protected_paths(config)
    return [clean_directory(target, files, dirs, now) for target in cleanup_targets(config)]
