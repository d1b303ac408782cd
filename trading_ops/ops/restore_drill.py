"""The restore drill: the latest backup restored into a scratch database (a SQLite file; a new database on the
PostgreSQL server), brought to the migrations' head and checked (`alembic check`, then the journal's own invariants:
orders, fills and positions agree), then dropped. Every drill is recorded in the backup directory's drill state,
which the metrics export (tradingops_restore_drill_*) and the restore-drill alerts watch: evidence that the system
comes back from its backups, not only that a backup file is intact (`backup verify`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.orm import aliased

from trading_ops.bot.broker import Side
from trading_ops.config import BackupConfig, Config
from trading_ops.db.base import utcnow
from trading_ops.db.models import Fill, Order, Position
from trading_ops.ops import backup_postgres, backup_sqlite
from trading_ops.ops.backup import BackupError, Catalog, Manifest, check_file, row_counts
from trading_ops.ops.state import OpsState, add_count

log = logging.getLogger(__name__)

DRILL_STATE_FILE = "restore-drill-state.json"
# Problems named in a failed drill's one-line message (all are logged).
PROBLEMS_SHOWN = 3


class DrillFailed(BackupError):
    """The drill restored the backup but the result is not a working database; the message names the problems."""


@dataclass
class DrillResult:
    manifest: Manifest
    duration_seconds: float
    schema_revision: str  # the scratch database's revision after the migrations ran (head)
    rows: int
    checks: list[str] = field(default_factory=list)  # what was checked, for the report


def drill_state(settings: BackupConfig) -> OpsState:
    return OpsState(Path(settings.directory) / DRILL_STATE_FILE)


def journal_problems(url: str) -> list[str]:
    """What the journal at `url` has wrong by its own rules (empty: consistent): each position is the signed sum of
    its fills (bot, venue, symbol); every fill of one of the bot's orders has that order; quantities are positive and
    no order is filled past its size."""
    engine = create_engine(url)
    problems: list[str] = []
    try:
        with engine.connect() as conn:
            if not {Fill.__tablename__, Order.__tablename__, Position.__tablename__} <= set(
                inspect(conn).get_table_names()
            ):
                return ["the journal's tables (orders, fills, positions) are missing"]
            sums: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
            # Summed here, not by SQL: SQLite's sum() of NUMERIC columns is a float's.
            fills = conn.execute(select(Fill.bot, Fill.venue, Fill.symbol, Fill.side, Fill.quantity))
            for bot, venue, symbol, side, quantity in fills:
                sums[(bot, venue, symbol)] += Side(side).sign * Decimal(quantity)
            positions = {
                (bot, venue, symbol): Decimal(quantity)
                for bot, venue, symbol, quantity in conn.execute(
                    select(Position.bot, Position.venue, Position.symbol, Position.quantity)
                )
            }
            for key in sorted(set(sums) | set(positions)):
                held, filled = positions.get(key, Decimal(0)), sums.get(key, Decimal(0))
                if held != filled:
                    problems.append(
                        f"position {'/'.join(key)} is {held.normalize():f}, its fills sum to {filled.normalize():f}"
                    )
            order = aliased(Order)
            orphans = conn.execute(
                select(Fill.bot, Fill.client_order_id, func.count())
                .where(
                    Fill.client_order_id.is_not(None),
                    Fill.client_order_id != "",
                    ~select(order.id)
                    .where(order.bot == Fill.bot, order.client_order_id == Fill.client_order_id)
                    .exists(),
                )
                .group_by(Fill.bot, Fill.client_order_id)
            ).all()
            problems += [
                f"{count} fill(s) of bot {bot} name order {cid!r}, which is not journaled"
                for bot, cid, count in orphans
            ]
            bad_fills = conn.execute(select(func.count()).where(Fill.quantity <= 0)).scalar_one()
            if bad_fills:
                problems.append(f"{bad_fills} fill(s) with a quantity that is not positive")
            overfilled = conn.execute(select(func.count()).where(Order.filled_quantity > Order.quantity)).scalar_one()
            if overfilled:
                problems.append(f"{overfilled} order(s) filled past their quantity")
    finally:
        engine.dispose()
    return problems


@contextlib.contextmanager
def _scratch(config: Config, manifest: Manifest, data: Path) -> Iterator[str]:
    """The backup restored into a scratch database; its URL. The database is gone when the block ends."""
    if manifest.dialect == "sqlite":
        directory = Path(config.backup.directory)
        with tempfile.TemporaryDirectory(prefix=".drill-", dir=directory) as scratch_dir:
            scratch = Path(scratch_dir) / "drill.sqlite"
            backup_sqlite.restore(data, scratch)
            yield f"sqlite:///{scratch}"
        return
    with backup_postgres.scratch_database(config.database_url()) as url:
        backup_postgres.restore(url, data, config.backup.pg_restore, config.backup.timeout_seconds, clean=False)
        yield url


def run_drill(config: Config, backup_id: str = "latest", schema: str | None = None) -> DrillResult:
    """Drill the restore of a backup (default: the latest); recorded either way. DrillFailed (or BackupError,
    or what the database raised) when the system would not come back from it."""
    catalog = Catalog(config.backup.directory)
    started = time.monotonic()
    manifest: Manifest | None = None
    try:
        if backup_id == "latest":
            # The newest backup a restore would use: not a safety backup (what a restore replaced, kept for a
            # post-mortem, a broken database maybe), unless there is nothing else.
            manifest = catalog.get(backup_id, schema)
            kept = [m for m in catalog.manifests() if m.trigger != "safety" and schema in (None, m.schema_revision)]
            manifest = kept[0] if kept else manifest
        else:
            manifest = catalog.get(backup_id, schema)
        data = check_file(catalog, manifest)
        from trading_ops.db import migrate  # Alembic: only a drill needs it, not every process that imports the jobs

        with _scratch(config, manifest, data) as url:
            migrate.upgrade(url)  # what `db upgrade` does after a restore of an older schema
            migrate.check(url)  # the schema is the models' (alembic check)
            revision = ",".join(sorted(migrate.current(url)))
            problems = journal_problems(url)
            if problems:
                for problem in problems:
                    log.error("restore drill of backup %s: %s", manifest.id, problem)
                shown = "; ".join(problems[:PROBLEMS_SHOWN])
                more = f" (and {len(problems) - PROBLEMS_SHOWN} more)" if len(problems) > PROBLEMS_SHOWN else ""
                raise DrillFailed(f"backup {manifest.id} restored, but its journal is inconsistent: {shown}{more}")
            engine = create_engine(url)
            try:
                with engine.connect() as conn:
                    rows = sum(row_counts(conn).values())
            finally:
                engine.dispose()
    except Exception as exc:
        _record(config.backup, started, manifest, error=_one_line(exc))
        raise
    result = DrillResult(
        manifest,
        time.monotonic() - started,
        revision,
        rows,
        ["restored", "migrated to head", "alembic check", "positions = fills", "fills -> orders", "quantities"],
    )
    _record(config.backup, started, manifest)
    log.info(
        "restore drill of backup %s passed: %d rows, schema %s, %.2fs",
        manifest.id,
        rows,
        revision,
        result.duration_seconds,
    )
    return result


def _one_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def _record(settings: BackupConfig, started: float, manifest: Manifest | None, error: str = "") -> None:
    now = utcnow().timestamp()
    duration = time.monotonic() - started

    def change(data: dict[str, Any]) -> None:
        add_count(data, "runs_total")
        data["last_duration_seconds"] = round(duration, 6)
        data["last_run_timestamp_seconds"] = now
        if manifest is not None:
            data["last_backup_id"] = manifest.id
            data["last_backup_timestamp_seconds"] = manifest.created_at.timestamp()
        if error:
            add_count(data, "failures_total")
            data["last_failure_timestamp_seconds"] = now
            data["last_error"] = error
        else:
            data["last_success_timestamp_seconds"] = now
            data["last_error"] = ""

    state = drill_state(settings)
    try:
        state.path.parent.mkdir(parents=True, exist_ok=True)
        state.update(change)
    except OSError as exc:  # the drill's own outcome is reported either way
        log.error("cannot record the restore drill in %s: %s", state.path, exc)


async def run_scheduled_drill(config: Config) -> DrillResult:
    """The scheduled job: a drill off the event loop; a failure is logged (one line) and raised for the scheduler."""
    try:
        return await asyncio.to_thread(run_drill, config)
    except Exception as exc:
        log.error("scheduled restore drill failed: %s", _one_line(exc))
        raise
