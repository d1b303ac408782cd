"""Database and disk upkeep: VACUUM/ANALYZE, retention of old journal, recovery and ledger rows, and directory
cleanup; each run logged, recorded in `<data_dir>/upkeep-state.json` and exported (state_metrics)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trading_ops.config import Config
from trading_ops.ops.cleanup import CleanupResult, cleanup_targets, run_cleanup
from trading_ops.ops.state import OpsState, add_count

# The database's side (engines, the models) is imported by the tasks that use it: the disk rule's step runs
# `trading-ops upkeep cleanup` as a process of its own, which needs none of it.
if TYPE_CHECKING:
    from sqlalchemy import Engine

# What another part of trading-ops prunes of its own tables in the retention task (engine, now) -> rows deleted per
# table: the reconciler's ledger (trading_ops.reconciler.retention.ledger_retention), given by whoever runs upkeep.
RetentionHook = Callable[["Engine", datetime], dict[str, int]]

log = logging.getLogger(__name__)

UPKEEP_STATE_FILE = "upkeep-state.json"
TASKS = ("vacuum", "retention", "cleanup")


@dataclass
class UpkeepResult:
    rows_deleted: dict[str, int] = field(default_factory=dict)
    cleanup: list[CleanupResult] = field(default_factory=list)
    vacuumed: bool = False
    database_bytes_before: int | None = None  # SQLite file size around the VACUUM
    database_bytes_after: int | None = None
    failures: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def bytes_freed(self) -> int:
        return sum(r.bytes_freed for r in self.cleanup)


def state_path(data_dir: str) -> Path:
    """The record of upkeep's runs, in the bot's data directory (bot.data_dir)."""
    return Path(data_dir) / UPKEEP_STATE_FILE


def _sqlite_size(engine: Engine) -> int | None:
    from sqlalchemy.engine import make_url

    url = make_url(str(engine.url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return sum(p.stat().st_size for p in Path(url.database).parent.glob(Path(url.database).name + "*") if p.is_file())


def vacuum(engine: Engine) -> None:
    """SQLite: PRAGMA optimize, ANALYZE, VACUUM and a WAL checkpoint that truncates it; PostgreSQL: VACUUM (ANALYZE).
    Both outside a transaction, as they must be."""
    from sqlalchemy import text

    if engine.dialect.name == "sqlite":
        # The raw connection: the engine's begin hook would wrap even an autocommit statement in BEGIN.
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            for statement in ("PRAGMA optimize", "ANALYZE", "VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"):
                cursor.execute(statement)
            cursor.close()
        finally:
            raw.close()
        return
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM (ANALYZE)"))


def _retention(config: Config, engine: Engine, more: Sequence[RetentionHook]) -> dict[str, int]:
    from trading_ops.db.base import utcnow
    from trading_ops.ops.journal_retention import prune_journal, prune_recovery

    now = utcnow()
    deleted: dict[str, int] = {}
    days = config.upkeep.journal_retention_days
    if days:
        # Never inside the window reconciliation compares with the venue: a fill pruned there would be adopted again.
        cutoff = min(now - timedelta(days=days), now - timedelta(seconds=config.recovery.fills_lookback_seconds))
        deleted.update(prune_journal(engine, cutoff))
    if config.upkeep.recovery_retention_days:
        deleted.update(prune_recovery(engine, now - timedelta(days=config.upkeep.recovery_retention_days)))
    # The tables of other parts, by their own rules: the reconciler's ledger (reconciler.retention.ledger_retention).
    for prune in more:
        deleted.update(prune(engine, now))
    return deleted


def run_upkeep_sync(
    config: Config, tasks: tuple[str, ...] = TASKS, retention: Sequence[RetentionHook] = ()
) -> UpkeepResult:
    """Run the chosen tasks; a failing task is recorded and the others still run. `retention`: the pruners of the
    tables this package does not own (the reconciler's ledger), run with the retention task after the journal's."""
    started = time.monotonic()
    result = UpkeepResult()
    if "cleanup" in tasks:
        cleanup_targets(config)  # a directory too close to the root is a configuration error, before anything runs
    engine = None
    if "retention" in tasks or "vacuum" in tasks:
        from trading_ops.db.base import make_engine

        engine = make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
    try:
        if "retention" in tasks and engine is not None:
            try:
                result.rows_deleted = _retention(config, engine, retention)
            except Exception as exc:
                result.failures.append(f"retention: {_one_line(exc)}")
        if "vacuum" in tasks and engine is not None and config.upkeep.vacuum:
            try:
                result.database_bytes_before = _sqlite_size(engine)
                vacuum(engine)
                result.vacuumed = True
                result.database_bytes_after = _sqlite_size(engine)
            except Exception as exc:
                result.failures.append(f"vacuum: {_one_line(exc)}")
    finally:
        if engine is not None:
            engine.dispose()
    if "cleanup" in tasks:
        try:
            result.cleanup = run_cleanup(config)
        except Exception as exc:
            result.failures.append(f"cleanup: {_one_line(exc)}")
        result.failures += [f"cleanup {r.name}: {e}" for r in result.cleanup for e in r.errors[:3]]
    result.duration_seconds = time.monotonic() - started
    _record(config.bot.data_dir, result)
    deleted = {t: n for t, n in result.rows_deleted.items() if n}
    log.log(
        logging.WARNING if result.failures else logging.INFO,
        "upkeep (%s): rows deleted %s, vacuum %s, %d bytes freed in %d file(s), %d failure(s) in %.2fs%s",
        ", ".join(tasks),
        deleted or "none",
        "done" if result.vacuumed else "not run",
        result.bytes_freed,
        sum(r.files_deleted for r in result.cleanup),
        len(result.failures),
        result.duration_seconds,
        (": " + "; ".join(result.failures)) if result.failures else "",
    )
    return result


def _one_line(exc: BaseException) -> str:
    """An error as one line: a database error's own message without SQLAlchemy's statement and link."""
    text_ = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text_[0] if text_ else ''}"


def _record(data_dir: str, result: UpkeepResult) -> None:
    now = time.time()

    def change(data: dict[str, Any]) -> None:
        add_count(data, "runs_total")
        if result.failures:
            add_count(data, "failures_total")
            data["last_error"] = "; ".join(result.failures)[:500]
        else:
            data["last_success_timestamp_seconds"] = now
        rows = data.setdefault("rows_deleted", {})
        for table, count in result.rows_deleted.items():
            add_count(rows, table, count)
        cleaned = data.setdefault("cleanup", {})
        for r in result.cleanup:
            counts = cleaned.setdefault(r.name, {})
            add_count(counts, "bytes", r.bytes_freed)
            add_count(counts, "files", r.files_deleted)
            add_count(counts, "failures", r.failures)

    try:
        OpsState(state_path(data_dir)).update(change)
    except OSError as exc:
        log.error("cannot record the upkeep run in %s: %s", state_path(data_dir), exc)


async def run_upkeep(
    config: Config, tasks: tuple[str, ...] = TASKS, retention: Sequence[RetentionHook] = ()
) -> UpkeepResult:
    """The scheduled job: every upkeep task, off the event loop."""
    import asyncio

    return await asyncio.to_thread(run_upkeep_sync, config, tasks, retention)
