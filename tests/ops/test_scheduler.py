"""The scheduler: one run per slot across replicas (real PostgreSQL), catch-up after downtime, DST, retries.

The clock is frozen (freezegun) and moved by hand; the database is a real SQLite file or the local PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from ops_setup import ops_config
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, select

from trading_ops.config import Config, parse_config
from trading_ops.cron import CronSchedule
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models.ops import JobRun
from trading_ops.ops.scheduler import Job, Scheduler

NEW_YORK = "America/New_York"


class Recorder:
    """A job that records when it ran; it fails its first `failures` attempts."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[datetime] = []
        self.slots: list[datetime] = []
        self.failures = failures

    async def __call__(self, config: Config, registry: CollectorRegistry, slot: datetime) -> None:
        self.calls.append(utcnow())
        self.slots.append(slot)
        if len(self.calls) <= self.failures:
            raise RuntimeError(f"attempt {len(self.calls)} broke")


def make_scheduler(config: Config, jobs: list[Job], owner: str) -> Scheduler:
    return Scheduler(config, make_engine(config.database_url()), jobs, CollectorRegistry(), owner)


async def tick(*schedulers: Scheduler) -> None:
    """One tick of each scheduler at the same moment, concurrently, and the runs they started to their end."""
    started = await asyncio.gather(*(s.tick() for s in schedulers))
    await asyncio.gather(*(t for ts in started for t in ts))


def runs(config: Config) -> list[Any]:
    engine = make_engine(config.database_url())
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(JobRun).order_by(JobRun.scheduled_for)).all())
    finally:
        engine.dispose()


def fast(tmp_path: Path, url: str, **scheduler: Any) -> Config:
    return ops_config(tmp_path, url, scheduler={"retry_initial_seconds": 0.01, "retry_max_seconds": 0.05, **scheduler})


@pytest.mark.postgres
async def test_three_replicas_on_one_postgresql_run_every_slot_exactly_once(tmp_path: Path, postgres_url: str) -> None:
    from trading_ops.db import migrate

    migrate.upgrade(postgres_url)
    config = fast(tmp_path, postgres_url)
    job = Recorder()
    jobs = [Job("every_minute", CronSchedule.parse("* * * * *", NEW_YORK), job)]
    replicas = [make_scheduler(config, jobs, f"replica-{i}") for i in range(3)]
    with freeze_time("2026-03-08 06:00:30", real_asyncio=True) as clock:
        await tick(*replicas)  # a task never run before starts with the next slot
        for minute in range(1, 21):
            clock.move_to(datetime(2026, 3, 8, 6, minute, tzinfo=UTC))
            await tick(*replicas)
            await tick(*replicas)  # a second look at the same slot finds it done
    rows = runs(config)
    assert len(job.calls) == 20
    assert [r.scheduled_for for r in rows] == [datetime(2026, 3, 8, 6, m, tzinfo=UTC) for m in range(1, 21)]
    assert {r.state for r in rows} == {"success"}
    ran = sum(
        r.registry.get_sample_value("tradingops_scheduled_task_runs_total", {"task": "every_minute"}) for r in replicas
    )
    assert ran == 20


async def test_after_downtime_only_the_latest_missed_slot_runs_once(tmp_path: Path, migrated_sqlite: str) -> None:
    config = fast(tmp_path, migrated_sqlite)
    job = Recorder()
    jobs = [Job("daily", CronSchedule.parse("0 0 * * *", NEW_YORK), job, last_success_metric="test_daily_last_success")]
    with freeze_time("2026-03-05 12:00:00", real_asyncio=True) as clock:
        first = make_scheduler(config, jobs, "first-life")
        await tick(first)
        assert job.calls == []  # no history: nothing is backfilled
        assert first.registry.get_sample_value("test_daily_last_success") is None  # not a 0 that reads as "never"
        clock.move_to("2026-03-06 05:00:00")  # midnight EST
        await tick(first)
        assert len(job.calls) == 1
        # Down from March 6 to March 9 15:00 UTC: the slots of March 7, 8 and 9 were missed.
        clock.move_to("2026-03-09 15:00:00")
        second = make_scheduler(config, jobs, "second-life")
        await tick(second)
        await tick(second)
        # Its last success comes from the database, not from this process's memory.
        last = second.registry.get_sample_value("test_daily_last_success")
    assert len(job.calls) == 2
    assert [r.scheduled_for for r in runs(config)] == [
        datetime(2026, 3, 6, 5, tzinfo=UTC),
        datetime(2026, 3, 9, 4, tzinfo=UTC),  # midnight EDT: the latest missed slot, once
    ]
    assert last == datetime(2026, 3, 9, 15, tzinfo=UTC).timestamp()


async def test_a_task_that_catches_up_runs_its_latest_missed_slots_oldest_first(
    tmp_path: Path, migrated_sqlite: str
) -> None:
    config = fast(tmp_path, migrated_sqlite)
    job = Recorder()
    jobs = [Job("daily", CronSchedule.parse("0 0 * * *", NEW_YORK), job, catch_up_slots=3)]
    with freeze_time("2026-03-05 04:30:00", real_asyncio=True) as clock:
        first = make_scheduler(config, jobs, "first-life")
        await tick(first)  # no history: nothing is backfilled
        clock.move_to("2026-03-05 05:00:00")  # midnight EST
        await tick(first)
        job.failures = 2  # the first caught-up slot fails once: the next one waits for its retry
        clock.move_to("2026-03-10 15:00:00")  # the slots of March 6 to 10 were missed
        second = make_scheduler(config, jobs, "second-life")
        await tick(second)
        await tick(second)
    march_5 = datetime(2026, 3, 5, 5, tzinfo=UTC)
    # The latest three, oldest first, each run with its own slot (midnight is 04:00 UTC from March 8, EDT).
    caught_up = [datetime(2026, 3, 8, 5, tzinfo=UTC), datetime(2026, 3, 9, 4, tzinfo=UTC)]
    caught_up.append(datetime(2026, 3, 10, 4, tzinfo=UTC))
    assert job.slots == [march_5, caught_up[0], *caught_up]  # the failed one retried before the next began
    assert [(r.scheduled_for, r.state) for r in runs(config)] == [(m, "success") for m in [march_5, *caught_up]]


async def test_a_slot_missed_longer_ago_than_its_window_is_skipped(tmp_path: Path, migrated_sqlite: str) -> None:
    config = fast(tmp_path, migrated_sqlite)
    late, too_late = Recorder(), Recorder()
    schedule = CronSchedule.parse("0 3 * * *", NEW_YORK)
    jobs = [Job("late", schedule, late, catch_up_within=1800), Job("too_late", schedule, too_late, catch_up_within=600)]
    with freeze_time("2026-06-01 07:20:00", real_asyncio=True):  # 03:20 EDT
        await tick(make_scheduler(config, jobs, "a"))
    assert len(late.calls) == 1 and too_late.calls == []
    assert [r.job for r in runs(config)] == ["late"]


@pytest.mark.parametrize(
    ("expression", "start", "end", "expected"),
    [
        # 02:30 does not exist on March 8: one run, at 03:30 EDT (07:30 UTC).
        ("30 2 * * *", "2026-03-07 12:00", "2026-03-09 12:00", ["2026-03-08 07:30", "2026-03-09 06:30"]),
        # 01:30 happens twice on November 1: one run, the first (EDT, 05:30 UTC).
        ("30 1 * * *", "2026-10-31 12:00", "2026-11-02 04:00", ["2026-11-01 05:30"]),
    ],
)
async def test_dst_change_runs_a_local_time_once(
    tmp_path: Path, migrated_sqlite: str, expression: str, start: str, end: str, expected: list[str]
) -> None:
    config = fast(tmp_path, migrated_sqlite)
    job = Recorder()
    scheduler = make_scheduler(config, [Job("nightly", CronSchedule.parse(expression, NEW_YORK), job)], "a")
    moment = datetime.fromisoformat(start).replace(tzinfo=UTC)
    with freeze_time(moment, real_asyncio=True) as clock:
        while moment < datetime.fromisoformat(end).replace(tzinfo=UTC):
            clock.move_to(moment)
            await tick(scheduler)
            moment += timedelta(minutes=5)
    slots = [r.scheduled_for.strftime("%Y-%m-%d %H:%M") for r in runs(config)]
    assert slots == expected and len(job.calls) == len(expected)


async def test_a_failing_task_is_retried_with_backoff_and_counted(tmp_path: Path, migrated_sqlite: str) -> None:
    config = fast(tmp_path, migrated_sqlite, max_attempts=4)
    flaky, broken = Recorder(failures=2), Recorder(failures=99)
    schedule = CronSchedule.parse("*/5 * * * *")
    scheduler = make_scheduler(
        config,
        [Job("flaky", schedule, flaky, catch_up_within=60), Job("broken", schedule, broken, catch_up_within=60)],
        "a",
    )
    waits: list[float] = []

    async def wait(seconds: float) -> None:
        waits.append(seconds)

    scheduler.sleep = wait
    with freeze_time("2026-05-01 10:00:10", real_asyncio=True):
        await tick(scheduler)
    by_job = {r.job: r for r in runs(config)}
    assert (by_job["flaky"].state, by_job["flaky"].attempts, by_job["flaky"].error) == ("success", 3, "")
    assert (by_job["broken"].state, by_job["broken"].attempts) == ("failed", 4)
    assert by_job["broken"].error == "RuntimeError: attempt 4 broke"
    sample = scheduler.registry.get_sample_value
    assert sample("tradingops_scheduled_task_failures_total", {"task": "flaky"}) == 2
    assert sample("tradingops_scheduled_task_failures_total", {"task": "broken"}) == 4
    assert sample("tradingops_scheduled_task_last_success_timestamp_seconds", {"task": "flaky"}) > 0
    assert sample("tradingops_scheduled_task_last_success_timestamp_seconds", {"task": "broken"}) is None
    # Backoff doubles up to retry_max_seconds: flaky waited twice, broken three times (none after the last).
    assert sorted(waits) == [0.01, 0.01, 0.02, 0.02, 0.04]


def running_elsewhere(url: str, owner: str, slot: datetime) -> None:
    """The daily job's run of `slot`, started at the slot by `owner`, its lease two minutes long."""
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(JobRun).values(
                job="daily",
                scheduled_for=slot,
                owner=owner,
                state="running",
                attempts=1,
                started_at=slot,
                lease_until=slot + timedelta(minutes=2),
                error="",
            )
        )
    engine.dispose()


async def test_a_dead_replicas_run_is_taken_over_when_its_lease_expires(tmp_path: Path, migrated_sqlite: str) -> None:
    config = fast(tmp_path, migrated_sqlite)
    job = Recorder()
    slot = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
    running_elsewhere(migrated_sqlite, "dead-replica", slot)
    jobs = [Job("daily", CronSchedule.parse("0 0 * * *"), job)]
    with freeze_time(slot + timedelta(minutes=1), real_asyncio=True) as clock:
        scheduler = make_scheduler(config, jobs, "survivor")
        # Ticks every 30 s, as the loop wakes at least every third of a lease: the database answered all along.
        for seconds in range(60, 180, 30):
            clock.move_to(slot + timedelta(seconds=seconds))
            await tick(scheduler)
            assert job.calls == []  # its lease still runs (or lapsed less than a lease after this one first looked)
        clock.move_to(slot + timedelta(minutes=3))
        await tick(scheduler)
    (row,) = runs(config)
    assert (row.owner, row.state, row.attempts, len(job.calls)) == ("survivor", "success", 2, 1)


async def test_a_lease_that_lapsed_while_nobody_looked_is_not_taken_for_its_owners_death(
    tmp_path: Path, migrated_sqlite: str
) -> None:
    """A replica that last reached the database more than a third of a lease ago cannot tell whether the database
    was away meanwhile (the owner then could not renew): it takes no lapsed run over until it has watched the database
    answer for a whole lease again."""
    config = fast(tmp_path, migrated_sqlite)
    job = Recorder()
    slot = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
    running_elsewhere(migrated_sqlite, "quiet-replica", slot)
    jobs = [Job("daily", CronSchedule.parse("0 0 * * *"), job)]
    with freeze_time(slot + timedelta(seconds=10), real_asyncio=True) as clock:
        scheduler = make_scheduler(config, jobs, "survivor")
        await tick(scheduler)
        clock.move_to(slot + timedelta(minutes=3))  # lapsed a minute ago; nobody asked the database for 170 s
        await tick(scheduler)
        assert job.calls == []
        for seconds in range(210, 300, 30):
            clock.move_to(slot + timedelta(seconds=seconds))
            await tick(scheduler)
        assert job.calls == []  # 90 s of answers after the gap are not yet a whole lease
        clock.move_to(slot + timedelta(seconds=300))
        await tick(scheduler)
    (row,) = runs(config)
    assert (row.owner, row.state, len(job.calls)) == ("survivor", "success", 1)


async def test_a_claim_whose_answer_was_lost_is_run_by_its_owner_once(tmp_path: Path, migrated_sqlite: str) -> None:
    """The claim's INSERT committed as the database went away (a failover) and its answer never came back: the tick
    failed and tries the slot again, finds the claim its own and never started, and runs it; another replica's tick
    leaves it alone."""
    config = fast(tmp_path, migrated_sqlite)
    job = Recorder()
    slot = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
    engine = make_engine(migrated_sqlite)
    with engine.begin() as conn:
        for day, owner, state, attempts in ((slot - timedelta(days=1), "a", "success", 1), (slot, "a", "running", 0)):
            conn.execute(
                insert(JobRun).values(
                    job="daily",
                    scheduled_for=day,
                    owner=owner,
                    state=state,
                    attempts=attempts,
                    started_at=day,
                    lease_until=day + timedelta(minutes=2),
                    error="",
                )
            )
    engine.dispose()
    jobs = [Job("daily", CronSchedule.parse("0 0 * * *"), job)]
    with freeze_time(slot + timedelta(seconds=5), real_asyncio=True):
        other, owner = make_scheduler(config, jobs, "b"), make_scheduler(config, jobs, "a")
        owner.done_through["daily"] = slot - timedelta(days=1)  # what its failed tick left: the slot not yet done
        owner.loaded = other.loaded = True
        await tick(other)
        assert job.calls == []  # a's claim, not b's
        await tick(owner)
        await tick(owner, other)
    rows = runs(config)
    assert [(r.owner, r.state, r.attempts) for r in rows] == [("a", "success", 1), ("a", "success", 1)]
    assert job.slots == [slot]


async def test_the_reconciler_runs_the_scheduler(aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str) -> None:
    from reconciler_server import make_config

    from trading_ops.reconciler import keys
    from trading_ops.reconciler.app import create_app

    config = make_config(tmp_path, migrated_sqlite)
    config.maintenance = parse_config({"maintenance": {"windows": {"weekly": {"schedule": "0 3 * * sun"}}}}).maintenance
    client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    scheduler = client.app[keys.SCHEDULER]
    assert set(scheduler.jobs) == {
        "daily_summary",
        "weekly_review",
        "maintenance_housekeeping",
        "backup",
        "restore_drill",
        "upkeep",
        "maintenance_window:weekly",
    }
    text = await (await client.get("/metrics")).text()
    assert 'tradingops_scheduled_task_runs_total{task="daily_summary"} 0.0' in text
    assert (await client.get("/healthz")).status == 200


async def test_finished_runs_older_than_the_retention_are_pruned(tmp_path: Path, migrated: str) -> None:
    """On SQLite and PostgreSQL: old finished runs go, each task's latest stays (a restart resumes from it)."""
    config = fast(tmp_path, migrated)
    config.reconciler.retention_days = 30
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    engine = make_engine(migrated)
    rows = [("minutely", now - timedelta(days=40, minutes=m), "success") for m in range(3)]
    rows += [("minutely", now - timedelta(minutes=1), "success"), ("weekly", now - timedelta(days=60), "failed")]
    rows += [("stuck", now - timedelta(days=50), "running"), ("stuck", now - timedelta(days=45), "success")]
    with engine.begin() as conn:
        for job, slot, state in rows:
            conn.execute(
                insert(JobRun).values(
                    job=job,
                    scheduled_for=slot,
                    owner="x",
                    state=state,
                    started_at=slot,
                    lease_until=now + timedelta(hours=1),
                )
            )
    engine.dispose()
    with freeze_time(now, real_asyncio=True):
        await tick(make_scheduler(config, [], "pruner"))
    left = sorted((r.job, r.scheduled_for) for r in runs(config))
    assert left == sorted(
        [
            ("minutely", now - timedelta(minutes=1)),
            ("weekly", now - timedelta(days=60)),  # its latest, however old
            ("stuck", now - timedelta(days=50)),  # a run not finished is never pruned
            ("stuck", now - timedelta(days=45)),
        ]
    )
