"""A run's hold on its episode: its claim and lease, the ledger's threads its calls go through, and how it ends."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from trading_ops.reconciler.ledger import Ledger, RecentWrites, Written
from trading_ops.reconciler.metrics import ReconcilerMetrics

# Every module of the engine logs under the engine's one name, as it always did: each line says `logger`, and operators
# filter and route on it.
ENGINE_LOGGER = "trading_ops.reconciler.engine"
log = logging.getLogger(ENGINE_LOGGER)
T = TypeVar("T")
# Ledger calls of the dispatch loop (and the pruner's) beside those of the runs.
EXTRA_LEDGER_THREADS = 2
CLAIM_LOST = "claim lost"
# A step's outcome the ledger did not take (the database unreachable) is written again after these delays, doubling
# up to the last, for as long as the run holds its claim (the spool keeps it meanwhile, and past the process's end);
# and at once when any ledger call of this replica answers again (`RunHolder.ledger_back`): a promotion costs no wait.
OUTCOME_RETRY_INITIAL_SECONDS = 0.2
OUTCOME_RETRY_MAX_SECONDS = 1.0
# How a run the database left mid-way hands itself back (its attempt's and the episode's detail).
LEDGER_AWAY = "ledger unreachable during the run"


def ledger_unreachable(exc: BaseException) -> bool:
    """Whether a ledger call failed because the database could not be reached (restarting, stopped, the connection
    cut), not for what the statement did: the run waits for it instead of giving up."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class LostClaim(Exception):
    """Another replica took the episode over (our lease lapsed): stop without writing more."""


class LedgerWentBack(Exception):
    """A row this run wrote is gone from the ledger: the database went back in time (a failover that lost commits).
    The run stops and the ledger's check of this replica's writes (trading_ops.reconciler.rollback) escalates."""


@dataclass
class Claim:
    """A run's hold on its episode and target, as its lease renewer sees it."""

    lost: bool = False
    # True while the run writes a step's outcome: a renewal finding the claim lost then does not cancel the run (the
    # outcome is written first, then the run stops).
    recording: bool = False
    # False once the run gives its claim back (closing or parking the episode): a renewal failing from then on
    # means nothing, and cancels nothing.
    active: bool = True


class RunHolder:
    """Owns what the runs in progress hold: the ledger's threads every ledger call of the engine goes through, each
    run's claim (its lease renewed beside it, lost to another replica, given back) and resolved event, the way a run
    stops (claim lost, shutdown, the ledger away) and the writes that end a run or hand its episode back (closed,
    deferred). Nothing here decides what a run does."""

    def __init__(
        self, ledger: Ledger, metrics: ReconcilerMetrics, owner: str, lease_seconds: float, max_runs: int
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.owner = owner
        self.lease_seconds = lease_seconds
        # Running episode -> set when intake stored a resolved notification for it (wakes its verification).
        self.resolved: dict[int, asyncio.Event] = {}
        self.claims: dict[int, Claim] = {}
        # The ledger's own threads, not asyncio's default pool: apprise notifications (blocking, possibly slow)
        # and leftover kills run there and must never delay a write, least of all a lease renewal, which has
        # its own threads (one per possible run) so no run's renewal waits behind another run's work.
        self.executor = ThreadPoolExecutor(max_runs + EXTRA_LEDGER_THREADS, thread_name_prefix="reconciler-ledger")
        # Since when (monotonic) every ledger call of ours answered; None until one does, and after one failed for
        # the database being away (`lapsed_is_dead`).
        self.reachable_since: float | None = None
        # What this replica wrote lately, and whether to check it is all still there: set when the ledger answers
        # again after being away (a failover, a restart: either may have lost the last commits), or when a run found
        # a row of its own gone; cleared by the check (trading_ops.reconciler.rollback).
        self.recent = RecentWrites()
        self.recheck = False
        self.away = False
        # Until when (monotonic) this replica claims nothing new after the ledger came back (see `settling`).
        self.settle_until = 0.0
        self.settle_seconds = 0.0
        # Set (and replaced) when a ledger call answers after calls failed for the database being away: wakes every
        # write waiting to be tried again (`ledger_back`).
        self.back = asyncio.Event()
        self.lease_executor = ThreadPoolExecutor(max_runs, thread_name_prefix="reconciler-lease")

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        except Exception as exc:
            self.saw_ledger(exc)
            raise
        self.saw_ledger(None)
        return result

    def saw_ledger(self, exc: BaseException | None) -> None:
        """A ledger call answered (None) or failed: when it failed for the database being away, the ledger counts
        as unreachable from here until a call answers again."""
        if exc is not None:
            if ledger_unreachable(exc):
                self.reachable_since = None
                self.away = True
        elif self.reachable_since is None:
            self.reachable_since = time.monotonic()
            self.back.set()
            self.back = asyncio.Event()
            if self.away:  # back (not the first answer since the start: nothing was written before it)
                self.away = False
                self.recheck = True
                self.settle_until = self.reachable_since + self.settle_seconds

    async def ledger_back(self, delay: float) -> None:
        """Wait `delay` before a ledger write is tried again, or less: until a ledger call of this replica (the
        dispatch loop's poll, a lease renewal, another run's retry) answers again. A write the database refused
        while it was away lands as soon as it takes writes, not after a backoff that grew during the outage."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.back.wait()

    def wrote(self, written: Written) -> None:
        """A write of ours the ledger acknowledged: remembered, to be found again after a failover."""
        self.recent.remember(written)

    def settling(self) -> bool:
        """Whether the ledger came back too recently for this replica to claim anything: every replica that wrote
        in the moment before a failover first checks its writes are there (one poll), and holds back what lost them;
        until then a claim could run again what the ledger forgot was run."""
        return time.monotonic() < self.settle_until

    def settling_left(self) -> float:
        """Seconds until this replica claims again after the ledger came back (0: it claims now; `settling`)."""
        return max(0.0, self.settle_until - time.monotonic())

    def lapsed_is_dead(self) -> bool:
        """Whether a lease that lapsed says its owner is gone: only once this replica has reached the ledger for a
        whole lease without a break. A live owner renews its lease every third of one whenever the database takes
        writes, so a lease lapsed while the database was away (for everyone: a restart, a failover) says nothing of
        its owner, and a run whose owner still holds its outcome is not taken over (the sweep's `lapsed_is_dead`)."""
        since = self.reachable_since
        return since is not None and time.monotonic() - since >= self.lease_seconds

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.lease_executor.shutdown(wait=False, cancel_futures=True)

    async def hold(
        self,
        episode: dict[str, Any],
        run: Callable[[dict[str, Any]], Awaitable[None]],
        internal_error: Callable[[dict[str, Any], Exception], Awaitable[None]],
    ) -> None:
        """Run `run(episode)` under the episode's claim, renewed meanwhile; whatever stops it, the claim and the
        target are given back (`internal_error` pages a human for a bug or a broken database)."""
        episode_id, target = episode["id"], episode["target"]
        claim = self.claims[episode_id] = Claim()
        renewer = asyncio.create_task(self._renew(episode_id, target, asyncio.current_task(), claim))
        self.resolved[episode_id] = asyncio.Event()
        try:
            await run(episode)
        except LostClaim:
            claim.lost = True
            log.warning("episode %s: claim lost to another replica; stopped", episode_id)
        except LedgerWentBack as exc:
            # Not this run's to page: the check of every recent write of ours pages once, for all it finds gone.
            self.recheck = True
            log.warning("episode %s: the run stopped: %s", episode_id, exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Shutting down: leave the run to the sweep after restart (marked interrupted there) ...
            if not claim.lost or task is None or task.cancelling() > 1:
                raise
            # ... but this cancellation is the renewer's alone: the claim is gone, so the run stops here.
            task.uncancel()
            log.warning("episode %s: lease renewal found the claim lost; run stopped", episode_id)
        except Exception as exc:
            if ledger_unreachable(exc):
                await self._interrupt_when_reachable(episode, claim, exc)
            else:
                log.exception("episode %s: run failed", episode_id)
                with contextlib.suppress(Exception):
                    await internal_error(episode, exc)
        finally:
            claim.active = False
            renewer.cancel()
            self.resolved.pop(episode_id, None)
            self.claims.pop(episode_id, None)
            if claim.lost:
                # Whoever took the claim over may not close what this run left `running` (an attempt and steps
                # that count against the budgets): this run does.
                with contextlib.suppress(Exception):
                    await self.db(self.ledger.abandon_run, episode_id, self.owner, f"{CLAIM_LOST}: run stopped")
            with contextlib.suppress(Exception):
                await self.db(self.ledger.release_target, target, self.owner)

    async def _interrupt_when_reachable(self, episode: dict[str, Any], claim: Claim, exc: Exception) -> None:
        """The database went away mid-run: not an internal error (nobody is paged for it). What the run's steps did
        is recorded (`Steps._record_outcome`); once the ledger answers again the run is handed back `interrupted`, due
        at once, and its next run carries on from there (`Resumption._resumption`): nothing done is done again. The
        lease is renewed meanwhile; a replica that takes it over after all has the same record to carry on from."""
        log.warning(
            "episode %s: the ledger is unreachable; the run is handed back once it answers: %s", episode["id"], exc
        )
        delay = OUTCOME_RETRY_INITIAL_SECONDS
        while not claim.lost:
            try:
                await self.db(self.ledger.abandon_run, episode["id"], self.owner, LEDGER_AWAY)
                return
            except Exception as again:
                if not ledger_unreachable(again):
                    log.exception("episode %s: handing the run back failed", episode["id"])
                    return
            await self.ledger_back(delay)
            delay = min(delay * 2, OUTCOME_RETRY_MAX_SECONDS)

    async def _renew(self, episode_id: int, target: str, run: asyncio.Task[Any] | None, claim: Claim) -> None:
        loop = asyncio.get_running_loop()
        lease = self.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                renew = functools.partial(self.ledger.renew, episode_id, target, self.owner, lease)
                ok = await loop.run_in_executor(self.lease_executor, renew)
            except Exception as exc:
                self.saw_ledger(exc)
                log.exception("episode %s: lease renewal failed", episode_id)
                continue
            self.saw_ledger(None)
            if not ok:
                if claim.active:
                    claim.lost = True
                    if run is not None and not claim.recording:
                        run.cancel(msg=CLAIM_LOST)
                return

    async def is_resolved(self, episode_id: int) -> bool:
        event = self.resolved.get(episode_id)
        if event is not None and event.is_set():
            return True
        row = await self.db(self.ledger.episode, episode_id)
        if row is None or row["owner"] != self.owner:
            raise LostClaim
        return row["resolved_at"] is not None

    async def _hand_back(self, episode: dict[str, Any], **values: Any) -> bool:
        """The run's last write: the episode closed, parked or due again later, its claim given back (False when
        it was no longer ours)."""
        self.end_claim(episode)
        return await self.db(self.ledger.set_episode, episode["id"], self.owner, **values)

    def end_claim(self, episode: dict[str, Any]) -> None:
        """The run is about to give its claim back: stop renewing its lease."""
        claim = self.claims.get(episode["id"])
        if claim is not None:
            claim.active = False

    async def defer(self, episode: dict[str, Any], state: str, until: datetime, detail: str) -> str:
        """Hand the episode back to run again at `until`, unless its alert resolved while we held it: then it is
        closed resolved (Ledger.defer). The state written."""
        self.end_claim(episode)
        written: str | None = await self.db(self.ledger.defer, episode["id"], self.owner, state, until, detail)
        if written is None:
            raise LostClaim
        if written == "resolved":
            self.metrics.episodes_total.labels("resolved").inc()
            log.info(
                "episode %s (%s on %s): resolved while held: not deferred (%s)",
                episode["id"],
                episode["alertname"],
                episode["target"],
                detail,
            )
        return written

    async def close(self, episode: dict[str, Any], state: str, detail: str, **values: Any) -> None:
        if not await self._hand_back(episode, state=state, detail=detail, **values):
            raise LostClaim
        self.metrics.episodes_total.labels(state).inc()
        log.info("episode %s (%s on %s): %s: %s", episode["id"], episode["alertname"], episode["target"], state, detail)


class RunPart:
    """A part of the engine that acts within runs: its ledger calls go through the holder's threads, as its owner."""

    def __init__(self, holder: RunHolder) -> None:
        self.holder = holder
        self.ledger = holder.ledger
        self.metrics = holder.metrics
        self.owner = holder.owner
        self.db = holder.db
