"""The escalation outbox: every page the reconciler owes is a ledger row before it is sent, and is sent until
Alertmanager takes it (the apprise notifications are a second channel after a delay, not the end of the road)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Table, func, insert, or_, select, update

from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError
from trading_ops.clients.notify import Notifier
from trading_ops.config import EscalationConfig
from trading_ops.db.base import utcnow
from trading_ops.db.models.ledger import Episode, Escalation
from trading_ops.reconciler.ledger import Ledger
from trading_ops.reconciler.ledger_reading import BackgroundReading
from trading_ops.reconciler.metrics import PREFIX, ReconcilerMetrics
from trading_ops.reconciler.processes import owner_is_dead

log = logging.getLogger(__name__)
T = TypeVar("T")
ESC = cast(Table, Escalation.__table__)
E = cast(Table, Episode.__table__)
# Pages claimed and posted (in one POST) at a time.
BATCH = 100
# What an episode's detail gets when its page was delivered through the apprise notifications first.
VIA_APPRISE = " (Alertmanager did not take the page in time: sent through the apprise notifications)"
LAST_ERROR_MAX = 1000
ESCALATING = "escalating"
PENDING_HELP = "Pages the reconciler owes that Alertmanager has not taken yet (the escalation outbox)."
OLDEST_HELP = "How long the oldest page of the escalation outbox has been waiting for Alertmanager (0 when none)."


@dataclass
class Page:
    """One outbox row as its sender sees it."""

    id: int
    episode_id: int
    alertname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    created_at: datetime
    attempts: int
    notified_at: datetime | None
    fallback_failed_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> Page:
        return cls(
            id=row["id"],
            episode_id=row["episode_id"],
            alertname=row["alertname"],
            labels=json.loads(row["labels"]),
            annotations=json.loads(row["annotations"]),
            starts_at=row["starts_at"],
            created_at=row["created_at"],
            attempts=row["attempts"],
            notified_at=row["notified_at"],
            fallback_failed_at=row["fallback_failed_at"],
        )

    def alert(self) -> dict[str, Any]:
        """The alert as posted: the same labels and startsAt on every resend, so Alertmanager holds (and pages for)
        one alert however often it is posted, by whichever replica."""
        return {"labels": self.labels, "annotations": self.annotations, "startsAt": self.starts_at.isoformat()}


@dataclass
class OutboxStats:
    pending: int
    oldest: datetime | None


class OutboxStore:
    """The outbox's rows, in the ledger's database."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def enqueue(self, episode_id: int, holder: str, alert: dict[str, Any], detail: str, now: datetime) -> int | None:
        """Owe a page: the episode (still held by `holder`) becomes `escalating` and its page an outbox row, in one
        transaction; the row's id. None when `holder` no longer held the episode (nothing is written)."""
        with self.ledger.tx() as conn:
            took = conn.execute(
                update(E)
                .where(E.c.id == episode_id, E.c.owner == holder)
                .values(state=ESCALATING, owner=None, lease_until=None, next_run_at=None, detail=detail, updated_at=now)
            ).rowcount
            if not took:
                return None
            return self.owe(conn, episode_id, alert, now)

    @staticmethod
    def owe(conn: Connection, episode_id: int, alert: dict[str, Any], now: datetime) -> int:
        """A page as an outbox row, in the caller's transaction (the episode's state is the caller's business: an
        approval's page leaves it waiting); its id."""
        return conn.execute(
            insert(ESC)
            .values(
                episode_id=episode_id,
                alertname=alert["labels"]["alertname"],
                labels=json.dumps(alert["labels"], sort_keys=True),
                annotations=json.dumps(alert["annotations"], sort_keys=True),
                starts_at=now,
                created_at=now,
                attempts=0,
                next_attempt_at=now,
                last_error="",
            )
            .returning(ESC.c.id)
        ).scalar_one()

    def claim_due(
        self,
        owner: str,
        now: datetime,
        lease: float,
        limit: int = BATCH,
        is_dead: Callable[[str | None], bool] = owner_is_dead,
    ) -> list[Page]:
        """Take up to `limit` due pages for `lease` seconds: those nobody holds, held past their lease, or held by
        an owner that is provably dead (a replica killed while sending; our own previous life). A conditional
        UPDATE: of two replicas claiming at once, the second matches nothing the first took."""
        pending = ESC.c.posted_at.is_(None)
        with self.ledger.engine.connect() as conn:  # read first: an idle poll takes no write lock
            holders = conn.execute(
                select(ESC.c.owner).distinct().where(pending, ESC.c.owner.is_not(None), ESC.c.lease_until >= now)
            ).scalars()
            dead = [h for h in holders if h != owner and is_dead(h)]
            free = or_(ESC.c.owner.is_(None), ESC.c.lease_until < now, ESC.c.owner.in_(dead))
            ids = list(
                conn.execute(
                    select(ESC.c.id)
                    .where(pending, ESC.c.next_attempt_at <= now, free)
                    .order_by(ESC.c.next_attempt_at, ESC.c.id)
                    .limit(limit)
                ).scalars()
            )
        if not ids:
            return []
        until = now + timedelta(seconds=lease)
        with self.ledger.tx() as conn:
            conn.execute(update(ESC).where(ESC.c.id.in_(ids), pending, free).values(owner=owner, lease_until=until))
            rows = conn.execute(
                select(ESC).where(ESC.c.id.in_(ids), ESC.c.owner == owner, pending).order_by(ESC.c.id)
            ).mappings()
            return [Page.of(r) for r in rows]

    def renew(self, ids: list[int], owner: str, lease: float) -> list[int]:
        """Extend `owner`'s hold on these pages; the ids it still holds."""
        until = utcnow() + timedelta(seconds=lease)
        held = [ESC.c.id.in_(ids), ESC.c.owner == owner, ESC.c.posted_at.is_(None)]
        with self.ledger.tx() as conn:
            conn.execute(update(ESC).where(*held).values(lease_until=until))
            return list(conn.execute(select(ESC.c.id).where(*held)).scalars())

    def posted(self, ids: list[int], owner: str, now: datetime) -> list[int]:
        """Alertmanager took these pages (held by `owner`): done. The episodes they delivered first (escalated now)."""
        held = [ESC.c.id.in_(ids), ESC.c.owner == owner]
        with self.ledger.tx() as conn:
            episode_ids = list(conn.execute(select(ESC.c.episode_id).where(*held)).scalars())
            conn.execute(update(ESC).where(*held).values(posted_at=now, owner=None, lease_until=None, last_error=""))
            return self._delivered(conn, episode_ids, now, "")

    def hurry(self, now: datetime) -> int:
        """Alertmanager takes pages again: every page waiting out its backoff (and held by nobody) is due now, so
        the outbox drains at once instead of within a backoff cap. How many."""
        with self.ledger.tx() as conn:
            return int(
                conn.execute(
                    update(ESC)
                    .where(
                        ESC.c.posted_at.is_(None),
                        ESC.c.next_attempt_at > now,
                        or_(ESC.c.owner.is_(None), ESC.c.lease_until < now),
                    )
                    .values(next_attempt_at=now)
                ).rowcount
            )

    def notified(self, page_id: int, owner: str, now: datetime) -> bool:
        """The apprise fallback delivered the page: its episode is escalated (True when that happened now). The row
        stays in the outbox until Alertmanager takes it too."""
        held = [ESC.c.id == page_id, ESC.c.owner == owner]
        with self.ledger.tx() as conn:
            episode_ids = list(conn.execute(select(ESC.c.episode_id).where(*held)).scalars())
            conn.execute(update(ESC).where(*held).values(notified_at=now))
            return bool(self._delivered(conn, episode_ids, now, VIA_APPRISE))

    def fallback_failed(self, page_id: int, owner: str, now: datetime) -> bool:
        """The apprise fallback did not deliver the page; True the first time (counted once)."""
        with self.ledger.tx() as conn:
            return bool(
                conn.execute(
                    update(ESC)
                    .where(ESC.c.id == page_id, ESC.c.owner == owner, ESC.c.fallback_failed_at.is_(None))
                    .values(fallback_failed_at=now)
                ).rowcount
            )

    def retry_later(self, schedule: list[tuple[int, datetime]], owner: str, error: str) -> None:
        """Give pages Alertmanager did not take back to the outbox, each due again at its time."""
        with self.ledger.tx() as conn:
            for page_id, when in schedule:
                conn.execute(
                    update(ESC)
                    .where(ESC.c.id == page_id, ESC.c.owner == owner)
                    .values(
                        attempts=ESC.c.attempts + 1,
                        next_attempt_at=when,
                        owner=None,
                        lease_until=None,
                        last_error=error[:LAST_ERROR_MAX],
                    )
                )

    @staticmethod
    def _delivered(conn: Connection, episode_ids: list[int], now: datetime, note: str) -> list[int]:
        if not episode_ids:
            return []
        escalating = [E.c.id.in_(episode_ids), E.c.state == ESCALATING]
        ids = list(conn.execute(select(E.c.id).where(*escalating)).scalars())
        if ids:
            conn.execute(
                update(E)
                .where(E.c.id.in_(ids), E.c.state == ESCALATING)
                .values(state="escalated", closed_at=now, updated_at=now, detail=E.c.detail + note)
            )
        return ids

    def stats(self) -> OutboxStats:
        """Pages Alertmanager has not taken yet, and when the oldest of them was owed."""
        with self.ledger.engine.connect() as conn:
            count, oldest = conn.execute(
                select(func.count(), func.min(ESC.c.created_at)).where(ESC.c.posted_at.is_(None))
            ).one()
        return OutboxStats(int(count), oldest)

    def of_episode(self, episode_id: int) -> list[dict[str, Any]]:
        with self.ledger.engine.connect() as conn:
            rows = conn.execute(select(ESC).where(ESC.c.episode_id == episode_id).order_by(ESC.c.id)).mappings()
            return [dict(r) for r in rows]


class Outbox:
    """The sender: posts due pages to every Alertmanager member (one POST per batch) until one takes them, with a
    capped backoff; past `fallback_after_seconds` a page also goes out through the apprise notifications."""

    def __init__(
        self,
        store: OutboxStore,
        client: AlertmanagerClient,
        notifier: Notifier,
        metrics: ReconcilerMetrics,
        owner: str,
        settings: EscalationConfig,
        lease_seconds: float,
        poll_interval: float,
        wake: asyncio.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.notifier = notifier
        self.metrics = metrics
        self.owner = owner
        self.settings = settings
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.rng = rng or random.Random()
        # Set when a page is owed (the engine wrote a row): sent at once, not at the next poll.
        self.wake = wake or asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="reconciler-outbox")

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def run_forever(self) -> None:
        while True:
            try:
                full = await self.send_due() >= BATCH
            except Exception:
                log.exception("escalation outbox: sending failed; retrying")
                full = False
            if full:
                continue  # more are due: no wait
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self.wake.wait()
            self.wake.clear()

    async def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def send_due(self) -> int:
        """Post the due pages once; how many were claimed (BATCH: more are due at once)."""
        pages = await self.db(self.store.claim_due, self.owner, utcnow(), self.lease_seconds)
        if not pages:
            return 0
        try:
            await self.client.post_alerts([p.alert() for p in pages])
        except AlertmanagerError as exc:
            await self._not_taken(pages, exc)
            return len(pages)
        delivered = await self.db(self.store.posted, [p.id for p in pages], self.owner, utcnow())
        for page in pages:
            self.metrics.escalations.labels(page.alertname).inc()
        if delivered:
            self.metrics.episodes_total.labels("escalated").inc(len(delivered))
        log.info("escalation outbox: Alertmanager took %d page(s) (episodes escalated now: %s)", len(pages), delivered)
        if any(p.attempts for p in pages):
            # Back after failed posts: the pages still backing off are due now, and sent at once.
            hurried: int = await self.db(self.store.hurry, utcnow())
            if hurried:
                return BATCH
        return len(pages)

    async def _not_taken(self, pages: list[Page], error: AlertmanagerError) -> None:
        log.warning("escalation outbox: Alertmanager did not take %d page(s): %s", len(pages), error)
        fallback_after = timedelta(seconds=self.settings.fallback_after_seconds)
        schedule = []
        for page in pages:
            now = utcnow()
            fallback_at = page.created_at + fallback_after
            if page.notified_at is None and now >= fallback_at:
                # The batch's hold renewed first (apprise may be slow): no page of it lapses to another replica
                # meanwhile, which would post it beside us.
                held = await self.db(self.store.renew, [p.id for p in pages], self.owner, self.lease_seconds)
                if page.id not in held:
                    continue  # lost to another replica meanwhile: it sends
                await self._fallback(page, error)
            when = now + timedelta(seconds=self._delay(page.attempts + 1))
            if page.notified_at is None and fallback_at > now:
                when = min(when, fallback_at)  # the fallback goes out on time, whatever the backoff reached
            schedule.append((page.id, when))
        await self.db(self.store.retry_later, schedule, self.owner, str(error))

    def _delay(self, failures: int) -> float:
        s = self.settings
        return min(s.retry_max_seconds, s.retry_initial_seconds * 2 ** min(failures - 1, 30)) * self.rng.uniform(
            0.8, 1.0
        )

    async def _fallback(self, page: Page, error: AlertmanagerError) -> None:
        """Send the page through the apprise notifications (it stays in the outbox for Alertmanager)."""
        labels = page.labels
        title = f"[trading-ops] {page.alertname}: {labels.get('original_alertname') or '?'} on {labels.get('target')}"
        body = (
            f"{page.annotations.get('description', '')}\n\nAlertmanager has not taken this page since "
            f"{page.created_at.isoformat()} ({error}), so it did not go through its routing: it is sent to the "
            "trading-ops notification URLs directly (and still posted to Alertmanager until it takes it)."
        )
        sent = False
        if self.notifier.urls:
            try:
                sent = await self.notifier.notify(title, body, failure=True)
            except Exception:
                log.exception("escalation %s: the apprise fallback failed", page.id)
        if sent:
            self.metrics.escalation_fallbacks.labels(page.alertname).inc()
            if await self.db(self.store.notified, page.id, self.owner, utcnow()):
                self.metrics.episodes_total.labels("escalated").inc()
            log.error("escalation %s (episode %s): sent through apprise", page.id, page.episode_id)
            page.notified_at = utcnow()
            return
        if await self.db(self.store.fallback_failed, page.id, self.owner, utcnow()):
            self.metrics.escalation_failures.labels(page.alertname).inc()
            log.error(
                "escalation %s (episode %s) reached nobody yet: Alertmanager does not take it and no notification "
                "was delivered (notifications.urls%s); still trying",
                page.id,
                page.episode_id,
                "" if self.notifier.urls else " is empty",
            )


class OutboxCollector(Collector):
    """tradingops_escalations_pending and _oldest_pending_seconds, read from the ledger in the background
    (trading_ops.reconciler.ledger_reading: a scrape never waits on the database; every replica exports the same shared
    outbox)."""

    def __init__(self, stats: BackgroundReading[OutboxStats], now: Callable[[], datetime] = utcnow) -> None:
        self.stats = stats
        self.now = now

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{PREFIX}_escalations_pending", PENDING_HELP)
        yield GaugeMetricFamily(f"{PREFIX}_escalation_oldest_pending_seconds", OLDEST_HELP)

    def collect(self) -> Iterator[Metric]:
        stats = self.stats.latest()
        if stats is None:
            return  # not read yet, or the database has not answered for a while
        yield GaugeMetricFamily(f"{PREFIX}_escalations_pending", PENDING_HELP, value=stats.pending)
        age = 0.0 if stats.oldest is None else max(0.0, (self.now() - stats.oldest).total_seconds())
        yield GaugeMetricFamily(f"{PREFIX}_escalation_oldest_pending_seconds", OLDEST_HELP, value=age)
