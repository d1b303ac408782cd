"""Whether the ledger's commits land: a tiny write every few seconds, timed, so that `/readyz` and a metric say when
commits are held (PostgreSQL waiting for a synchronous standby that is gone) instead of answering 200 while no webhook
can be stored and nothing can be acted on."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from prometheus_client import CollectorRegistry, Gauge

from trading_ops.db.base import utcnow
from trading_ops.reconciler.ledger import Ledger

log = logging.getLogger(__name__)
# How often a replica writes its probe (one row of the settings table, its own), and how long a commit may take
# before it counts as held: a commit lands in milliseconds, a synchronous standby's round trip included; one held
# waits until Patroni drops the dead standby from synchronous_standby_names (its `ttl`, 30 s, at its next loop).
PROBE_INTERVAL_SECONDS = 2.0
HELD_AFTER_SECONDS = 2.0
KEY_PREFIX = "commit_probe:"


class CommitProbe:
    """Owns the probe's loop and what it found: since when the commit in flight has waited (None: none in flight).
    A probe that fails (the database away) is no held commit: `/readyz`'s own ping says that one."""

    def __init__(self, ledger: Ledger, owner: str, registry: CollectorRegistry) -> None:
        self.ledger = ledger
        # The settings table's key (64 characters at most): the owner's digest, one row per replica.
        self.key = KEY_PREFIX + hashlib.sha256(owner.encode()).hexdigest()[:32]
        self.pending_since: float | None = None
        gauge = Gauge(
            "tradingops_ledger_commit_wait_seconds",
            "How long the reconciler's probe commit in flight has waited (0: none waiting); seconds mean the ledger "
            "holds commits (a synchronous standby lost).",
            registry=registry,
        )
        gauge.set_function(self.waiting)

    def waiting(self) -> float:
        since = self.pending_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def held(self) -> float | None:
        """How long the commit in flight has waited, when that is past HELD_AFTER_SECONDS; else None."""
        waited = self.waiting()
        return waited if waited > HELD_AFTER_SECONDS else None

    def _write(self) -> None:
        self.ledger.set_setting(self.key, utcnow().isoformat())

    async def run_forever(self) -> None:
        while True:
            self.pending_since = time.monotonic()
            try:
                # In a thread of its own that may wait as long as the commit does; nothing else waits on it.
                await asyncio.to_thread(self._write)
            except Exception as exc:
                log.debug("commit probe failed (the database away?): %s", exc)
            finally:
                self.pending_since = None
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
