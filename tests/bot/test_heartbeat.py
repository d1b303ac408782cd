"""Heartbeat and crash detection on a real database: a clean stop is no crash, a stale heartbeat without the
marker is, a heartbeat still moving means another instance runs; the shutdown deadline names what it cut off.
The single-instance guard: a lock file on this host, a PostgreSQL advisory lock across hosts (needs the local
PostgreSQL on 127.0.0.1:5432)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from paper_helpers import wait_for

from trading_ops.bot.heartbeat import AnotherInstanceRunning, Heartbeat
from trading_ops.bot.instance_lock import InstanceLock
from trading_ops.bot.journal import Journal
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.shutdown import ShutdownDeadlineExceeded, ShutdownSequence, run_steps
from trading_ops.db import migrate
from trading_ops.db.base import make_engine, utcnow


@pytest.fixture
def journal(sqlite_url):
    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    j = Journal(engine, "bot-1", "paper")
    yield j
    j.close()
    engine.dispose()


def heartbeat(journal: Journal, progressing: bool = True) -> Heartbeat:
    store = RecoveryStore(journal.engine, "bot-1", "paper")
    return Heartbeat(journal, store, interval=0.02, crash_timeout=0.3, progressing=lambda: progressing)


async def test_clean_stop_then_crash_then_detection(journal: Journal) -> None:
    first = heartbeat(journal)
    assert await first.begin() is None  # nothing before it
    first.start()
    await wait_for(lambda: first.beats >= 2)
    await first.stop(clean=True, reason="SIGTERM")
    second = heartbeat(journal)
    assert await second.begin() is None  # the marker: no crash
    second.start()
    await wait_for(lambda: second.beats >= 1)
    second._task.cancel()  # type: ignore[union-attr]  # the process dies: no final heartbeat, no marker
    third = heartbeat(journal)
    crash = await third.begin()  # waits until the dead run's heartbeat is crash_timeout old
    assert crash is not None and crash.previous.id == second.run_id and crash.heartbeat_age_seconds >= 0.3
    assert not crash.previous.clean_shutdown
    # What tradingbot_crashes_total says from this start on: the bot's runs before it that ended without the marker
    # (the clean stop of the first is no crash).
    store = RecoveryStore(journal.engine, "bot-1", "paper")
    assert await journal.call(store.crashed_runs, third.run_id) == 1
    assert await journal.call(RecoveryStore(journal.engine, "bot-2", "paper").crashed_runs, None) == 0


async def test_a_heartbeat_that_keeps_moving_is_another_instance(journal: Journal) -> None:
    running = heartbeat(journal)
    await running.begin()
    running.start()
    try:
        with pytest.raises(AnotherInstanceRunning, match="running elsewhere"):
            await heartbeat(journal).begin()
    finally:
        await running.stop(clean=True, reason="test")


async def test_no_heartbeat_while_the_loop_makes_no_progress(journal: Journal) -> None:
    looks = 0

    def hung_loop() -> bool:
        nonlocal looks
        looks += 1
        return False

    hung = heartbeat(journal)
    hung.progressing = hung_loop
    await hung.begin()
    before = (await journal.call(hung.store.last_run)).last_heartbeat_at  # type: ignore[union-attr]
    hung.start()
    await wait_for(lambda: looks >= 5)  # five intervals in which the heartbeat looked at a hung loop
    assert hung.beats == 0
    run = await journal.call(hung.store.last_run)
    assert run is not None and run.last_heartbeat_at == before <= utcnow()
    await hung.stop(clean=False, reason="test")


async def test_shutdown_deadline_names_the_unfinished_steps() -> None:
    done: list[str] = []

    async def quick() -> None:
        done.append("quick")

    async def broken() -> None:
        raise RuntimeError("boom")

    async def stuck() -> None:
        await asyncio.sleep(60)

    assert await run_steps([("quick", quick), ("broken", broken), ("quick again", quick)], 5) == ["broken"]
    with pytest.raises(ShutdownDeadlineExceeded) as info:
        await run_steps([("quick", quick), ("flush the journal", stuck), ("marker", quick)], 0.2)
    assert info.value.unfinished == ["flush the journal", "marker"]
    assert done == ["quick", "quick", "quick"]


async def test_a_database_error_is_counted_and_the_heartbeat_keeps_beating(journal: Journal, registry) -> None:
    store = RecoveryStore(journal.engine, "bot-1", "paper")
    beat = Heartbeat(
        journal, store, interval=0.02, crash_timeout=0.3, progressing=lambda: True, registry=registry, venue="paper"
    )
    await beat.begin()
    beat.start()
    try:
        await wait_for(lambda: beat.beats >= 2)
        with journal.engine.begin() as conn:  # the table disappears under it (a failover to a stale replica...)
            conn.exec_driver_sql("ALTER TABLE bot_runs RENAME TO bot_runs_away")
        await wait_for(lambda: beat.failures >= 3)
        failures = registry.get_sample_value("tradingbot_heartbeat_write_failures_total", {"venue": "paper"})
        assert failures is not None and failures >= 3
        with journal.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE bot_runs_away RENAME TO bot_runs")
        beats = beat.beats
        await wait_for(lambda: beat.beats > beats)  # the same task, still beating
        assert beat._task is not None and not beat._task.done()
    finally:
        await beat.stop(clean=True, reason="test")


async def test_a_later_step_sees_which_earlier_ones_failed() -> None:
    seen: list[list[str]] = []

    async def broken() -> None:
        raise RuntimeError("boom")

    async def marker() -> None:
        seen.append(list(sequence.failed))

    async def fine() -> None:
        pass

    sequence = ShutdownSequence([("flush", broken), ("marker", marker), ("close", fine)], 5)
    assert await sequence.run() == ["flush"]
    assert seen == [["flush"]] and sequence.unfinished() == []


# -- the single-instance guard (the heartbeat decides whether a previous run crashed; this keeps two runs apart) --
HOLD_LOCK = """
import sys, time
from pathlib import Path
from trading_ops.bot.instance_lock import InstanceLock
from trading_ops.db.base import make_engine
InstanceLock(Path(sys.argv[1]), "paper-1", make_engine(sys.argv[2])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_bot_on_another_host_is_kept_out_by_the_postgresql_advisory_lock(postgres_url: str, tmp_path) -> None:
    """Two hosts share the journal's PostgreSQL database, each with its own data directory (so the lock files do
    not meet): the second is refused, naming the holder's process; another bot name is not; when the holder dies
    (kill -9) the database releases its lock and the bot starts."""
    engine = make_engine(postgres_url)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "host-a"), postgres_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = InstanceLock(tmp_path / "host-b", "paper-1", engine)
        with pytest.raises(AnotherInstanceRunning, match=rf"trading-ops paper-1 pid {holder.pid}@"):
            second.acquire()
        assert not second.held
        other = InstanceLock(tmp_path / "host-b", "paper-2", engine)
        other.acquire()
        other.release()
        holder.kill()
        holder.wait(timeout=10)
        deadline = time.monotonic() + 30
        while True:  # the server notices the dead session when its socket closes
            try:
                second.acquire()
                break
            except AnotherInstanceRunning:
                assert time.monotonic() < deadline, "the advisory lock outlived its holder"
                time.sleep(0.05)
        assert second.held
        second.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()
        engine.dispose()


def test_the_lock_file_keeps_a_second_process_on_this_host_out(tmp_path) -> None:
    """Same host, same data directory: the flock refuses the second, naming the holder's pid from the lock file."""
    first = InstanceLock(tmp_path, "paper-1")
    first.acquire()
    try:
        second = InstanceLock(tmp_path, "paper-1")
        with pytest.raises(AnotherInstanceRunning, match=rf"pid {os.getpid()} on .* holds .*paper-1\.lock"):
            second.acquire()
        other = InstanceLock(tmp_path, "paper-2")
        other.acquire()  # another bot: its own lock
        other.release()
    finally:
        first.release()
    second.acquire()
    assert second.held
    second.release()
