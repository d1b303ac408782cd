"""The scheduler: runs each slot of each scheduled task exactly once across reconciler replicas, with retries."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import aliased

from trading_ops.config import Config
from trading_ops.cron import CronSchedule
from trading_ops.db.base import IMMEDIATE_OPTION, utcnow
from trading_ops.db.models.ops import JobRun
from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "tradingops"
# The loop wakes at the next fire time, and at least this often: a clock that jumps (a suspended VM, NTP) is
# noticed within this long, and expired leases of dead replicas are looked for.
MAX_SLEEP_SECONDS = 30.0
ERROR_LIMIT = 1000
# Finished runs older than reconciler.retention_days are deleted this often (a minutely task adds 1,440 a day).
PRUNE_EVERY = timedelta(hours=1)
# A tick that failed (the database away: a restart, a failover) is tried again this soon, not at the next fire time:
# a slot that fell due meanwhile runs as soon as the database takes writes again.
TICK_RETRY_SECONDS = 1.0
# A run's writes (its attempt, its outcome) are retried until they land, waiting this long between tries at first,
# doubling up to the most.
WRITE_RETRY_SECONDS = 0.2
WRITE_RETRY_MAX_SECONDS = 5.0

# A job gets the configuration, the registry it may export through, and the slot it runs for (UTC): a run retried
# or caught up later still does the work of its own slot.
JobFunc = Callable[[Config, CollectorRegistry, datetime], Awaitable[object]]


def database_away(exc: BaseException) -> bool:
    """Whether a call failed because the database could not be reached (restarting, stopped, failing over, the
    connection cut), not for what the statement did."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class RunTakenOver(Exception):
    """Another replica took the run over (its lease lapsed while this one could not renew it): write nothing more."""


@dataclass(frozen=True)
class Job:
    """A task on a schedule. `catch_up_within`: a missed slot older than this many seconds is skipped (None: whatever
    its age). `catch_up_slots`: after downtime, at most this many of the latest missed slots run, oldest first, each
    once (1: only the latest). `last_success_metric`: a gauge of its own (an alert's)."""

    name: str
    schedule: CronSchedule
    run: JobFunc
    catch_up_within: float | None = None
    last_success_metric: str = ""
    catch_up_slots: int = 1


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry, jobs: Iterable[Job]) -> None:
        self.runs = Counter(
            f"{PREFIX}_scheduled_task_runs",
            "Scheduled slots run by this replica, by task.",
            ["task"],
            registry=registry,
        )
        self.failures = Counter(
            f"{PREFIX}_scheduled_task_failures",
            "Failed attempts of scheduled tasks (each retry counts), by task.",
            ["task"],
            registry=registry,
        )
        self.last_success = Gauge(
            f"{PREFIX}_scheduled_task_last_success_timestamp_seconds",
            "When a scheduled task last succeeded (any replica; read from the database at start).",
            ["task"],
            registry=registry,
        )
        self.own = OwnLastSuccess({job.name: job.last_success_metric for job in jobs if job.last_success_metric})
        registry.register(self.own)
        for job in jobs:
            self.runs.labels(job.name)
            self.failures.labels(job.name)

    def succeeded(self, job: str, at: datetime) -> None:
        self.last_success.labels(job).set(at.timestamp())
        self.own.values[job] = at.timestamp()


class OwnLastSuccess(Collector):
    """A task's last success under a name of its own (an alert reads it), exported only once there is one: a 0
    would read as "never" and fire a staleness alert on a fresh deployment."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.values: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        for job, name in self.names.items():
            if job in self.values:
                yield GaugeMetricFamily(name, f"When the {job} task last succeeded.", value=self.values[job])

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Scheduler:
    """Claims a slot with INSERT ... ON CONFLICT DO NOTHING on (job, scheduled_for): the replica whose insert went
    in runs it, the others skip it. After downtime the latest missed slot of a task runs (once), or its latest
    `catch_up_slots` ones, oldest first.

    Across a database outage (a restart, a failover to a promoted standby on the multi-host URL) every slot still
    runs once. A claim whose commit landed while its answer was lost is found again as this replica's own, never
    started, and run. A run's writes (its attempt, its outcome) are retried until they land, and a run taken over
    meanwhile writes nothing more (its updates name their owner). A lease that lapsed proves its owner dead only to
    a replica that has reached the database for a whole lease without a break (asking it at least every third of
    one): a live owner renews every third of one whenever the database takes writes, so a lease that lapsed while
    the database was away for everyone says nothing of its owner, and its run is not taken over and run a second
    time."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        jobs: Iterable[Job],
        registry: CollectorRegistry,
        owner: str,
    ) -> None:
        self.config = config
        self.engine = engine
        # Read-then-write transactions (a take-over) hold SQLite's write lock from BEGIN: see make_sessionmaker.
        self._writer = engine.execution_options(**{IMMEDIATE_OPTION: True})
        self.jobs = {job.name: job for job in jobs}
        self.registry = registry
        self.owner = owner
        self.metrics = SchedulerMetrics(registry, self.jobs.values())
        sc = config.scheduler
        self.max_attempts = sc.max_attempts
        self.retry_initial = sc.retry_initial_seconds
        self.retry_max = sc.retry_max_seconds
        self.lease = timedelta(seconds=sc.lease_seconds)
        self.retention = timedelta(days=config.reconciler.retention_days)
        self.pruned_at: datetime | None = None
        self.done_through: dict[str, datetime | None] = {}
        self.loaded = False
        self.running: set[asyncio.Task[None]] = set()
        self.active: set[int] = set()  # ids of the runs this replica holds (running or waiting their turn)
        # Since when (monotonic) every database call of this scheduler answered; None until one does and after one
        # failed for the database being away.
        self.reachable_since: float | None = None
        self.answered_at: float | None = None  # when (monotonic) the database last answered a call of this scheduler
        # How a retry waits out its backoff (a test records the delays instead).
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # ---- database ------------------------------------------------------------------------------------

    def _load(self, now: datetime) -> None:
        """What the database knows: the latest slot handled and the last success of each task."""
        with self.engine.connect() as conn:
            handled = dict(conn.execute(select(JobRun.job, func.max(JobRun.scheduled_for)).group_by(JobRun.job)).all())
            success = dict(
                conn.execute(
                    select(JobRun.job, func.max(JobRun.finished_at))
                    .where(JobRun.state == "success")
                    .group_by(JobRun.job)
                ).all()
            )
        for name, job in self.jobs.items():
            last = handled.get(name)
            if last is not None:
                self.done_through[name] = _utc(last)
            elif job.catch_up_within is None:
                # A task never run before starts with the next slot: its history is not backfilled.
                self.done_through[name] = job.schedule.latest_at_or_before(now)
            else:
                self.done_through[name] = None
            succeeded = success.get(name)
            if succeeded is not None:
                self.metrics.succeeded(name, _utc(succeeded))

    def _claim(self, job: str, slot: datetime, now: datetime) -> int | None:
        values = {
            "job": job,
            "scheduled_for": slot,
            "owner": self.owner,
            "state": "running",
            "attempts": 0,
            "started_at": now,
            "lease_until": now + self.lease,
            "error": "",
        }
        dialect = self.engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(JobRun).values(**values).on_conflict_do_nothing(index_elements=["job", "scheduled_for"])
        with self.engine.begin() as conn:
            row = conn.execute(stmt.returning(JobRun.id)).first()
            if row is None:
                # Our own claim, never started: its commit landed as the database went away and its answer was lost
                # (the tick failed and tries the slot again). Anyone else's is theirs.
                row = conn.execute(
                    select(JobRun.id).where(
                        JobRun.job == job,
                        JobRun.scheduled_for == slot,
                        JobRun.owner == self.owner,
                        JobRun.state == "running",
                        JobRun.attempts == 0,
                    )
                ).first()
                if row is not None and int(row[0]) in self.active:
                    row = None
        return None if row is None else int(row[0])

    def _take_over_expired(self, now: datetime, lapsed_is_dead: bool) -> list[tuple[int, str, datetime, int]]:
        """Runs of a dead replica (lease passed while running): taken over one by one, compare-and-set. Only with
        `lapsed_is_dead` (see the class); never a run this replica holds itself. The runs are read in any case: the
        read is how each tick learns whether the database answers."""
        taken = []
        with self._writer.begin() as conn:
            rows = conn.execute(
                select(JobRun.id, JobRun.job, JobRun.scheduled_for, JobRun.attempts, JobRun.owner).where(
                    JobRun.state == "running", JobRun.lease_until < now, JobRun.job.in_(list(self.jobs))
                )
            ).all()
            if not lapsed_is_dead:
                return []
            for run_id, job, slot, attempts, old_owner in rows:
                if int(run_id) in self.active:
                    continue  # ours and under way: its renewals were late, it is not dead
                result = conn.execute(
                    update(JobRun)
                    .where(JobRun.id == run_id, JobRun.owner == old_owner, JobRun.state == "running")
                    .where(JobRun.lease_until < now)
                    .values(owner=self.owner, lease_until=now + self.lease)
                )
                if result.rowcount == 1:
                    log.warning("task %s slot %s: taking over the run of %s (its lease expired)", job, slot, old_owner)
                    taken.append((int(run_id), str(job), _utc(slot), int(attempts)))
        return taken

    def _prune(self, before: datetime) -> int:
        """Delete finished runs older than `before`, except each task's latest (where a restart resumes from)."""
        latest = aliased(JobRun)
        newest = select(func.max(latest.scheduled_for)).where(latest.job == JobRun.job).scalar_subquery()
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(JobRun).where(
                    JobRun.state.in_(("success", "failed")),
                    JobRun.scheduled_for < before,
                    JobRun.scheduled_for < newest,
                )
            )
        return int(result.rowcount or 0)

    def _update(self, run_id: int, **values: object) -> bool:
        """Update a run of ours; False when it is not ours any more (taken over)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(JobRun).where(JobRun.id == run_id, JobRun.owner == self.owner).values(**values)
            )
        return bool(result.rowcount)

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A database call in a thread, noting whether the database answered (`lapsed_is_dead`)."""
        try:
            result = await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
        except Exception as exc:
            if database_away(exc):
                self.reachable_since = None
            raise
        now = time.monotonic()
        if self.reachable_since is None or self.answered_at is None or now - self.answered_at > self._sample_seconds:
            self.reachable_since = now  # the first answer, or one after a gap nobody looked into: a window starts
        self.answered_at = now
        return result

    @property
    def _sample_seconds(self) -> float:
        """How often the database is asked (a tick, a renewal) at least: a longer gap between two answers may have
        hidden an outage."""
        return self.lease.total_seconds() / 3

    def lapsed_is_dead(self) -> bool:
        """Whether a lapsed lease says its owner is gone: only once this replica has reached the database for a whole
        lease without a break, asking it at least every third of a lease (the owner's renewal interval), the last
        time within that (see the class)."""
        since, answered = self.reachable_since, self.answered_at
        if since is None or answered is None:
            return False
        now = time.monotonic()
        return now - answered <= self._sample_seconds and now - since >= self.lease.total_seconds()

    async def _write(self, run_id: int, **values: object) -> None:
        """Write a run's attempt or outcome, retried until it lands while the database is away; raises RunTakenOver
        when the run is not ours any more."""
        delay = WRITE_RETRY_SECONDS
        failures = 0
        while True:
            try:
                ours = await self._db(self._update, run_id, **values)
            except Exception as exc:
                if not database_away(exc):
                    raise
                failures += 1
                if failures == 1:
                    log.warning("run %d: writing %s failed, retrying until it lands: %s", run_id, sorted(values), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_MAX_SECONDS)
                continue
            if failures:
                log.info("run %d: %s written after %d failed tries", run_id, sorted(values), failures)
            if not ours:
                raise RunTakenOver(f"run {run_id} was taken over by another replica")
            return

    # ---- loop ----------------------------------------------------------------------------------------

    async def tick(self, now: datetime | None = None) -> list[asyncio.Task[None]]:
        """Start the runs that are due at `now` (default: the clock) and that this replica claims; returns them."""
        now = now or utcnow()
        if not self.loaded:
            await self._db(self._load, now)
            self.loaded = True
        if self.pruned_at is None or now - self.pruned_at >= PRUNE_EVERY:
            deleted = await self._db(self._prune, now - self.retention)
            self.pruned_at = now
            if deleted:
                log.info("scheduler: %d finished run(s) older than %s pruned", deleted, self.retention)
        started = []
        for run_id, name, slot, attempts in await self._db(self._take_over_expired, now, self.lapsed_is_dead()):
            started.append(self._start(self.jobs[name], [(slot, run_id, attempts)]))
        for name, job in self.jobs.items():
            latest = job.schedule.latest_at_or_before(now)
            done = self.done_through.get(name)
            if done is not None and latest <= done:
                continue
            due = self._due_slots(job, latest, done, now)
            # Marked done only once the claims went through (a database error leaves the slots to the next tick).
            claimed = []
            for due_slot in due:
                claim: int | None = await self._db(self._claim, name, due_slot, now)
                if claim is None:
                    log.debug("task %s slot %s: claimed by another replica", name, due_slot)
                else:
                    claimed.append((due_slot, claim, 0))
            self.done_through[name] = latest
            if claimed:
                started.append(self._start(job, claimed))
        return started

    def _due_slots(self, job: Job, latest: datetime, done: datetime | None, now: datetime) -> list[datetime]:
        """The slots after `done` up to `latest` this tick runs, oldest first: the latest `job.catch_up_slots` of
        them, without those missed by more than `job.catch_up_within`."""
        slots = [latest]
        while len(slots) < job.catch_up_slots:
            earlier = job.schedule.latest_at_or_before(slots[-1] - timedelta(microseconds=1))
            if done is not None and earlier <= done:
                break
            slots.append(earlier)
        if done is None:
            slots = slots[:1]  # nothing recorded yet: no history to catch up on
        if job.catch_up_within is not None:
            late = [s for s in slots if (now - s).total_seconds() > job.catch_up_within]
            for slot in late:
                log.info("task %s: slot %s missed by more than %gs; skipped", job.name, slot, job.catch_up_within)
            slots = [s for s in slots if s not in late]
        if len(slots) > 1:
            log.info("task %s: catching up on %d missed slots from %s", job.name, len(slots), slots[-1])
        return sorted(slots)

    def _start(self, job: Job, runs: list[tuple[datetime, int, int]]) -> asyncio.Task[None]:
        """One task running the claimed `runs` (slot, run id, attempts so far) one after another, in order."""
        ids = {run_id for _, run_id, _ in runs}
        self.active |= ids
        task = asyncio.create_task(self._run_in_order(job, runs), name=f"job:{job.name}")
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        task.add_done_callback(lambda _: self.active.difference_update(ids))
        return task

    async def _run_in_order(self, job: Job, runs: list[tuple[datetime, int, int]]) -> None:
        """The slots one tick claimed for a task run one after another, oldest first (a caught-up day's summary is
        sent before the next day's). The leases of the runs still waiting are renewed meanwhile, so no other replica
        takes them over as a dead replica's."""
        waiting = {run_id: asyncio.create_task(self._renew(run_id)) for _, run_id, _ in runs[1:]}
        try:
            for slot, run_id, attempts in runs:
                renewal = waiting.pop(run_id, None)
                if renewal is not None:
                    renewal.cancel()
                await self._run(job, slot, run_id, attempts)
        finally:
            await stop_tasks(list(waiting.values()))

    async def _run(self, job: Job, slot: datetime, run_id: int, attempts: int) -> None:
        self.metrics.runs.labels(job.name).inc()
        renew = asyncio.create_task(self._renew(run_id))
        delay = self.retry_initial
        try:
            for attempt in range(attempts + 1, max(self.max_attempts, attempts + 1) + 1):
                await self._write(run_id, attempts=attempt)
                try:
                    await job.run(self.config, self.registry, slot)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.metrics.failures.labels(job.name).inc()
                    error = f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]
                    if attempt >= self.max_attempts:
                        log.error("task %s slot %s failed (attempt %d, giving up): %s", job.name, slot, attempt, error)
                        await self._write(run_id, state="failed", error=error, finished_at=utcnow())
                        return
                    log.warning(
                        "task %s slot %s failed (attempt %d, retry in %gs): %s", job.name, slot, attempt, delay, error
                    )
                    await self._write(run_id, error=error)
                    await self.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                finished = utcnow()
                await self._write(run_id, state="success", error="", finished_at=finished)
                self.metrics.succeeded(job.name, finished)
                log.info("task %s slot %s done (attempt %d)", job.name, slot, attempt)
                return
        except RunTakenOver as exc:
            log.error("task %s slot %s: %s; this replica writes and runs nothing more of it", job.name, slot, exc)
        finally:
            renew.cancel()

    async def _renew(self, run_id: int) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                await self._db(self._update, run_id, lease_until=utcnow() + self.lease)
            except Exception as exc:
                log.warning("cannot renew the lease of run %d: %s", run_id, exc)

    def next_wake(self, now: datetime) -> float:
        """Seconds until the next fire time of any task (at most MAX_SLEEP_SECONDS)."""
        soonest = min((job.schedule.next_after(now) for job in self.jobs.values()), default=None)
        if soonest is None:
            return MAX_SLEEP_SECONDS
        return max(0.0, min(MAX_SLEEP_SECONDS, (soonest - now).total_seconds()))

    async def run_forever(self) -> None:
        if self.jobs:
            log.info(
                "scheduler: %s",
                ", ".join(f"{j.name} [{j.schedule.expression} {j.schedule.timezone}]" for j in self.jobs.values()),
            )
        try:
            while True:
                try:
                    await self.tick()
                except Exception as exc:
                    retry = min(TICK_RETRY_SECONDS, self.next_wake(utcnow()))
                    if database_away(exc):
                        log.warning("scheduler tick failed, the database is away; next one in %gs: %s", retry, exc)
                    else:
                        log.exception("scheduler tick failed; next one in %gs", retry)
                    await asyncio.sleep(retry + 0.01)
                    continue
                # A few milliseconds late, so the slot is at or before the clock when the loop wakes; and at least every
                # third of a lease, so a replica knows the database answered all along when a lapsed run is to be
                # taken over (lapsed_is_dead).
                await asyncio.sleep(min(self.next_wake(utcnow()), self._sample_seconds) + 0.01)
        finally:
            await stop_tasks(list(self.running))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
