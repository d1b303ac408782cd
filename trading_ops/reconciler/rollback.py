"""A ledger that went back in time: after the database was away, a replica checks that what it wrote lately is still
there, and pages a human about every episode whose record a failover lost instead of acting on it blindly."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime

from trading_ops.config import ReconcilerConfig
from trading_ops.db.base import utcnow
from trading_ops.reconciler.actions.escalate import FAILED, escalation_alert
from trading_ops.reconciler.ledger import Written
from trading_ops.reconciler.ledger.rollback import PAGE
from trading_ops.reconciler.outbox import OutboxStore
from trading_ops.reconciler.runs import ENGINE_LOGGER, RunHolder, RunPart

log = logging.getLogger(ENGINE_LOGGER)
# What the episode's detail and its page begin with (an operator greps for it; the tests too).
GONE = "gone from the ledger"


class Rollback(RunPart):
    """Owns the check of this replica's recent writes (`RunHolder.recent`: claims, attempts, step rows and outcomes,
    pages owed) once the ledger answers after being away, or once a run found a row of its own gone. What is gone is
    said in one log line and counted; each episode it belongs to is held back from every run (`escalating`, its steps
    still running `unknown`) and a human paged about it once, naming what was lost: a step whose row or outcome the
    ledger forgot may have acted, and only a person who looked at the target knows whether to run it again. A page
    that was lost is owed again in that page."""

    def __init__(self, holder: RunHolder, rc: ReconcilerConfig, escalations: asyncio.Event) -> None:
        super().__init__(holder)
        self.rc = rc
        self.escalations = escalations
        # Episodes paged about already: once each, whatever later checks find.
        self.paged: set[int] = set()
        # Writes said gone already (logged and counted).
        self.said: set[Written] = set()

    async def check(self) -> list[Written]:
        """Check every remembered write; what was gone. Done once the check answered: one the ledger's absence
        interrupts is made again on the next poll."""
        self.holder.recheck = False
        try:
            writes = self.holder.recent.recent()
            gone = await self.db(self.ledger.rollbacks.missing, writes) if writes else []
            if gone:
                await self.report(gone)
            elif writes:
                log.info(
                    "the ledger is back: the %d write(s) of ours of the last %gs are all there",
                    len(writes),
                    self.holder.recent.seconds,
                )
        except BaseException:
            self.holder.recheck = True
            raise
        return gone

    async def report(self, gone: list[Written]) -> None:
        """Say what is gone (one line, the counters: once for each write, though a report the ledger's absence
        interrupted is made again), and page once about each episode it touched."""
        new = [w for w in gone if w not in self.said]
        if new:
            self.said.update(new)
            self.metrics.ledger_rollbacks.inc()
            for w in new:
                self.metrics.ledger_lost_writes.labels(w.kind).inc()
            log.error(
                "the ledger went back in time (a failover to a standby without the last commits?): %s: %s",
                GONE,
                "; ".join(str(w) for w in new),
            )
        by_episode: dict[int, list[Written]] = {}
        for w in gone:
            by_episode.setdefault(w.episode_id, []).append(w)
        for episode_id, lost in sorted(by_episode.items()):
            if episode_id not in self.paged:
                await self._page(episode_id, lost)
                self.paged.add(episode_id)
        self.holder.recent.forget(gone)

    async def _page(self, episode_id: int, lost: list[Written]) -> None:
        """Hold the episode back and owe its page, in one write (`_hold_back`); a run of it here is fenced by it."""
        what = "; ".join(str(w) for w in lost)
        detail = (
            f"{GONE} after the database was away: {what} (written by reconciler {self.owner}). Not acted on again: a "
            "step may have acted although the ledger does not say so; look at the target, then `reconciler retry` "
            "or close it."
        )
        held = await self.db(self._hold_back, episode_id, detail, utcnow(), [w for w in lost if w.kind == PAGE])
        if held is None:
            log.error("episode %s: %s, and the episode itself: nothing to page about", episode_id, GONE)
            return
        self.escalations.set()
        log.warning("episode %s: escalating (%s)%s: %s", episode_id, FAILED, held, detail)

    def _hold_back(self, episode_id: int, detail: str, now: datetime, lost_pages: list[Written]) -> str | None:
        """The episode held back and its page owed, in one transaction: "" (or why it is not held back), None when the
        episode is gone too. A page the rollback lost is owed again in this one (its alert said why the episode
        escalated)."""
        episode = self.ledger.episode(episode_id)
        if episode is None:
            return None
        description = (
            f"The reconciler's ledger lost writes of {episode['alertname']} on {episode['target']} (episode "
            f"{episode_id}, rule {episode['rule']}) in a database failover: {detail}"
        )
        if lost_pages:
            description += f" The page it owed before ({', '.join(w.what for w in lost_pages)}) was lost with them."
        labels = json.loads(episode["labels"])
        alert = escalation_alert(FAILED, labels, episode["target"], description, episode=episode_id)
        if self.rc.external_url:
            alert["annotations"]["console_url"] = f"{self.rc.external_url.rstrip('/')}/ui/episodes/{episode_id}"
        with self.ledger.tx() as conn:
            held = self.ledger.rollbacks.hold_back(conn, episode_id, self.owner, detail, now)
            if held is None:
                return None
            OutboxStore.owe(conn, episode_id, alert, now)
        return "" if held else " (not held back: another replica has claimed it again already)"
