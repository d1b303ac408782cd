"""The end of what the reconciler announced: a page that says an approval waits, that a bot was paused, or what a dead
host's bot still holds at the venue (the exposure page), is ended in Alertmanager (posted again with endsAt now) once
the approval is decided, the pause lifted, or the account flat or the host back, not 5 minutes later.

An exposure page stands until then, however long: its episode may close (the flatten rejected, or its approval
expired) with the account still holding what the page says, the host still down. Alertmanager would end a page posted
once after its resolve_timeout, so the reconciler posts it again (the same alert: nobody is paged again) every
EXPOSURE_REPOST_SECONDS while it stands. A reconciler that stops stops that too: its page ends by the timeout.

Alertmanager ends an alert posted without endsAt after its resolve_timeout (5m): until then the approval page kept
firing after the decision, and the pause page after the bot's resume. Ending is a courtesy on top of that timeout: a
post that fails is tried at the next round, and what a stopped reconciler announced still ends by the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import aiohttp
from sqlalchemy import Table, select

from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError
from trading_ops.config import Config
from trading_ops.db.base import utcnow
from trading_ops.db.models.ledger import Approval, Attempt, Episode, Escalation, Step
from trading_ops.reconciler.actions.bot import status_of
from trading_ops.reconciler.actions.escalate import APPROVAL_REQUESTED
from trading_ops.reconciler.actions.venue import FLAT
from trading_ops.reconciler.ledger import Ledger

log = logging.getLogger(__name__)
T = TypeVar("T")
AP = cast(Table, Approval.__table__)
E = cast(Table, Episode.__table__)
ESC = cast(Table, Escalation.__table__)
AT = cast(Table, Attempt.__table__)
ST = cast(Table, Step.__table__)
# Approval pages asked for this long ago at most are looked at (an older one ended in Alertmanager long since).
APPROVAL_PAGES_WINDOW = timedelta(hours=2)
# A paused bot's page is watched this long at most (Alertmanager ended it by its resolve_timeout long before).
PAUSE_WATCH_SECONDS = 3600.0
# A venue step (cancel_all, flatten, positions) done (or a flatten skipped as needless) whose output ends with the
# exposure "flat": the account holds nothing of the bot's symbols any more.
FLAT_OUTCOMES = ("success", "skipped")
FLAT_OUTPUT = f": {FLAT}"
STATUS_TIMEOUT_SECONDS = 5.0
# How often a standing exposure page is posted again: well inside Alertmanager's resolve_timeout (5m shipped), with
# room for a round or two that cannot reach it.
EXPOSURE_REPOST_SECONDS = 60.0
# The bot states in which a pause is lifted (a halt or a flatten after the pause still keeps it from trading: the page
# stands).
TRADING = ("active", "reduce_only")


def ended(alert: dict[str, Any], now: datetime) -> dict[str, Any]:
    """`alert` (its labels identify it in Alertmanager) with endsAt now: Alertmanager resolves it at once. Never
    before its startsAt: a page posted while the round ran (after its `now`) would be refused ("start time must be
    before end time") and stay firing until the next round."""
    ends = now
    with contextlib.suppress(KeyError, TypeError, ValueError):
        starts = datetime.fromisoformat(alert["startsAt"])
        starts = starts if starts.tzinfo is not None else starts.replace(tzinfo=UTC)
        ends = max(ends, starts)
    return {**alert, "endsAt": ends.isoformat()}


@dataclass
class Announced:
    """A page as posted (a pause page, an exposure page), the bot it is about, and when it was announced."""

    alert: dict[str, Any]
    instance: str
    since: float
    posted: float = 0.0  # time.monotonic() when it was last posted (an exposure page's, posted again while it stands)


class PageEnds:
    """Ends the approval pages whose approval stopped waiting (decided, expired, superseded, or its episode closed),
    read from the ledger, the pause pages this reconciler posted once their bot trades again (its control API's
    status), and the exposure pages once their episode's venue steps found the account flat or its alert resolved (the
    host back), posting those that stand again meanwhile; polled every `poll_interval` seconds."""

    def __init__(
        self,
        ledger: Ledger,
        config: Config,
        session: aiohttp.ClientSession,
        alertmanager: AlertmanagerClient,
        poll_interval: float,
    ) -> None:
        self.ledger = ledger
        self.config = config
        self.session = session
        self.alertmanager = alertmanager
        self.poll_interval = poll_interval
        self.pauses: dict[tuple[tuple[str, str], ...], Announced] = {}
        self.exposures: dict[tuple[tuple[str, str], ...], tuple[int, Announced]] = {}
        self.ended_pages: set[int] = set()
        self.wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="reconciler-page-ends")

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    def announced_exposure(self, alert: dict[str, Any], episode_id: int) -> None:
        """An exposure page (a dead host's bot, what it holds at the venue) was posted for episode `episode_id`: ended
        once that episode's venue steps leave the account flat (or find it flat), or its alert resolves (the host is
        back), not when the episode merely closes; posted again while it stands."""
        key = tuple(sorted(alert["labels"].items()))
        now = time.monotonic()
        self.exposures[key] = (episode_id, Announced(alert, alert["labels"].get("instance", ""), now, now))
        self.wake.set()

    def announced_pause(self, alert: dict[str, Any]) -> None:
        """A pause page was posted: ended once its bot (the alert's instance) trades again."""
        instance = alert["labels"].get("instance", "")
        if instance not in self.config.reconciler.targets:
            return  # no control API to ask: Alertmanager's timeout ends it
        key = tuple(sorted(alert["labels"].items()))
        self.pauses[key] = Announced(alert, instance, time.monotonic())
        self.wake.set()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.end_once()
            except Exception:
                log.exception("ending pages failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self.wake.wait()
            self.wake.clear()

    async def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def end_once(self) -> int:
        """One round: every page whose cause ended is ended in Alertmanager; how many were."""
        now = utcnow()
        pages = await self.db(self.approval_pages_to_end, now - APPROVAL_PAGES_WINDOW)
        lifted = await self._lifted_pauses()
        over = await self._exposures_over()
        await self._repost_exposures({key for key, _ in over})
        todo = [(page_id, alert) for page_id, alert in pages if page_id not in self.ended_pages]
        alerts = [ended(alert, now) for _, alert in todo] + [ended(a.alert, now) for _, a in [*lifted, *over]]
        if not alerts:
            return 0
        try:
            await self.alertmanager.post_alerts(alerts)
        except AlertmanagerError as exc:
            log.warning("could not end %d page(s) in Alertmanager (tried again next round): %s", len(alerts), exc)
            return 0
        self.ended_pages.update(page_id for page_id, _ in todo)
        for key, announced in lifted:
            self.pauses.pop(key, None)
            name = announced.alert["labels"]["alertname"]
            log.info("bot %s trades again: its page %s ended", announced.instance, name)
        for key, announced in over:
            self.exposures.pop(key, None)
            log.info("bot %s: flat at the venue, or its host back: its exposure page ended", announced.instance)
        for page_id, alert in todo:
            log.info("approval %s no longer waits: its page (%s) ended", alert["labels"].get("approval"), page_id)
        return len(alerts)

    async def _repost_exposures(self, over: set[tuple[tuple[str, str], ...]]) -> None:
        """Post again each exposure page that stands (not `over`) and was last posted EXPOSURE_REPOST_SECONDS ago,
        so that Alertmanager's resolve_timeout does not end it; one that fails is tried at the next round."""
        due = [
            a
            for key, (_, a) in self.exposures.items()
            if key not in over and time.monotonic() - a.posted >= EXPOSURE_REPOST_SECONDS
        ]
        if not due:
            return
        try:
            await self.alertmanager.post_alerts([a.alert for a in due])
        except AlertmanagerError as exc:
            log.warning("could not post %d standing exposure page(s) again (next round): %s", len(due), exc)
            return
        for announced in due:
            announced.posted = time.monotonic()

    async def _exposures_over(self) -> list[tuple[tuple[tuple[str, str], ...], Announced]]:
        """The exposure pages whose host is back (the episode's alert resolved) or whose venue steps found the
        account flat. Not those whose episode merely closed: a rejected or expired flatten leaves the exposure the
        page tells of."""
        if not self.exposures:
            return []
        done = await self.db(self.episodes_over, {episode for episode, _ in self.exposures.values()})
        return [(key, announced) for key, (episode, announced) in self.exposures.items() if episode in done]

    def episodes_over(self, episodes: set[int]) -> set[int]:
        """Of `episodes`, those whose alert resolved (the host is back), or whose venue steps left (or found) the
        account flat."""
        with self.ledger.engine.connect() as conn:
            back = {
                row.id for row in conn.execute(select(E.c.id).where(E.c.id.in_(episodes), E.c.resolved_at.is_not(None)))
            }
            flat = {
                row.episode_id
                for row in conn.execute(
                    select(AT.c.episode_id)
                    .join(ST, ST.c.attempt_id == AT.c.id)
                    .where(
                        AT.c.episode_id.in_(episodes),
                        ST.c.action == "venue",
                        ST.c.outcome.in_(FLAT_OUTCOMES),
                        ST.c.output.endswith(FLAT_OUTPUT),
                    )
                )
            }
        return back | flat

    def approval_pages_to_end(self, since: datetime) -> list[tuple[int, dict[str, Any]]]:
        """(page id, alert as posted) of the approval pages Alertmanager took since `since` whose approval no longer
        waits, or whose episode closed."""
        with self.ledger.engine.connect() as conn:
            pages = conn.execute(
                select(ESC.c.id, ESC.c.episode_id, ESC.c.labels, ESC.c.annotations, ESC.c.starts_at).where(
                    ESC.c.alertname == APPROVAL_REQUESTED, ESC.c.posted_at.is_not(None), ESC.c.created_at >= since
                )
            ).all()
            if not pages:
                return []
            labels = {page.id: json.loads(page.labels) for page in pages}
            ids = {int(value) for value in (lab.get("approval") for lab in labels.values()) if str(value).isdigit()}
            decided = conn.execute(select(AP.c.id, AP.c.status).where(AP.c.id.in_(ids)))
            statuses = {row.id: row.status for row in decided}
            episodes = {page.episode_id for page in pages}
            closed = {
                row.id
                for row in conn.execute(select(E.c.id, E.c.closed_at).where(E.c.id.in_(episodes)))
                if row.closed_at is not None
            }
        out = []
        for page in pages:
            approval = str(labels[page.id].get("approval", ""))
            waits = approval.isdigit() and statuses.get(int(approval)) == "pending"
            if not waits or page.episode_id in closed:
                alert = {
                    "labels": labels[page.id],
                    "annotations": json.loads(page.annotations),
                    "startsAt": page.starts_at.isoformat(),
                }
                out.append((page.id, alert))
        return out

    async def _lifted_pauses(self) -> list[tuple[tuple[tuple[str, str], ...], Announced]]:
        """The pause pages whose bot trades again (those watched too long are dropped: Alertmanager ended them)."""
        lifted = []
        for key, announced in list(self.pauses.items()):
            if time.monotonic() - announced.since > PAUSE_WATCH_SECONDS:
                self.pauses.pop(key, None)
                continue
            status = await status_of(self.config, self.session, announced.instance, STATUS_TIMEOUT_SECONDS)
            if status is not None and status.get("state") in TRADING:
                lifted.append((key, announced))
        return lifted
