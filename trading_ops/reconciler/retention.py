"""Ledger retention: notifications and closed episodes older than reconciler.retention_days, and expired console
sessions, pruned hourly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine

from trading_ops.config import Config
from trading_ops.db.base import utcnow
from trading_ops.reconciler.ledger import PRUNED_TABLES, Ledger
from trading_ops.reconciler.metrics import ReconcilerMetrics

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 3600.0
# Rows per transaction: each batch holds SQLite's write lock for milliseconds, so intake never waits long; the
# pruner yields between batches.
PRUNE_BATCH = 500


class Pruner:
    """Deletes what the ledger no longer needs to keep, in small batches; never an open episode."""

    def __init__(
        self,
        ledger: Ledger,
        retention_days: float,
        metrics: ReconcilerMetrics | None,
        interval: float = PRUNE_INTERVAL_SECONDS,
        batch: int = PRUNE_BATCH,
    ) -> None:
        self.ledger = ledger
        self.retention = timedelta(days=retention_days)
        self.metrics = metrics
        self.interval = interval
        self.batch = batch

    async def run_forever(self) -> None:
        while True:
            try:
                await self.prune_once(utcnow())
            except Exception:
                if self.metrics is not None:
                    self.metrics.ledger_prune_failures.inc()
                log.exception("ledger retention failed; tried again in %gs", self.interval)
            await asyncio.sleep(self.interval)

    async def prune_once(self, now: datetime) -> dict[str, int]:
        """Delete everything older than the retention as of `now`, and the console sessions expired at `now`, batch
        by batch; rows deleted by table."""
        cutoff = now - self.retention
        pruned = dict.fromkeys(PRUNED_TABLES, 0)
        await self._drain(pruned, "notifications", self.ledger.prune_notifications, cutoff)
        while True:
            counts = await asyncio.to_thread(self.ledger.prune_episodes, cutoff, self.batch)
            self._count(pruned, counts)
            if counts["episodes"] < self.batch:
                break
        await self._drain(pruned, "console_sessions", self.ledger.prune_console_sessions, now)
        if any(pruned.values()):
            log.info("ledger retention (%s): pruned %s", self.retention, pruned)
        return pruned

    async def _drain(
        self, pruned: dict[str, int], table: str, prune: Callable[[datetime, int], int], when: datetime
    ) -> None:
        """`prune(when, batch)` until a batch comes back short: the rows of `table` it deleted counted in `pruned`."""
        while True:
            count = await asyncio.to_thread(prune, when, self.batch)
            self._count(pruned, {table: count})
            if count < self.batch:
                return

    def _count(self, pruned: dict[str, int], counts: dict[str, int]) -> None:
        for table, count in counts.items():
            pruned[table] += count
            if count and self.metrics is not None:
                self.metrics.ledger_pruned_rows.labels(table).inc(count)


def ledger_retention(config: Config) -> Callable[[Engine, datetime], dict[str, int]]:
    """The ledger's pruner for `trading-ops upkeep` (trading_ops.ops.upkeep's retention task, run by the scheduler
    and the command line): the same pruning the reconciler does hourly, its rows counted as reconciler_<table>."""

    def prune(engine: Engine, now: datetime) -> dict[str, int]:
        pruner = Pruner(Ledger(engine), config.reconciler.retention_days, metrics=None)
        deleted = asyncio.run(pruner.prune_once(now))
        return {f"reconciler_{table}": count for table, count in deleted.items()}

    return prune
