"""Crash reports through apprise's json:// to a real aiohttp receiver: one that fails is retried until it is sent,
and one still unsent when the bot stops goes out at its next start."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from paper_helpers import TOKEN, fast_config, wait_for
from ports import free_port
from prometheus_client import CollectorRegistry

from trading_ops.bot.crash_report import CrashReporter
from trading_ops.bot.journal import Journal
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.db import migrate
from trading_ops.db.base import make_engine, utcnow
from trading_ops.paper.bot import PaperBot
from trading_ops.tasks import stop_tasks


class Receiver:
    """A notification endpoint that answers 500 to the first `failures` posts, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.posts.append(await request.json())
            if len(self.posts) <= self.failures:
                return web.Response(status=500, text="down")
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def receiver():
    r = Receiver(failures=2)
    await r.start()
    yield r
    await r.stop()


def crash_event(journal: Journal, store: RecoveryStore) -> int:
    dead = store.begin_run(4242, "host-a")
    run = store.begin_run(4343, "host-a")
    previous = store.get_run(dead)
    assert previous is not None
    return store.record_event(run, "crash", previous, {"previous_run": previous.to_dict(), "state": "active"})


async def test_a_failed_report_is_retried_until_it_is_sent(tmp_path: Path, receiver: Receiver) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    journal = Journal(engine, "paper-1", "paper")
    store = RecoveryStore(engine, "paper-1", "paper")
    try:
        event_id = await journal.call(crash_event, journal, store)
        reporter = CrashReporter(journal, store, [receiver.url], bot="paper-1", venue="paper", retry_seconds=0.01)
        await reporter.run()  # returns once sent: two 500s, then a 200
        assert (reporter.attempts, reporter.sent, len(receiver.posts)) == (3, 1, 3)
        assert "restarted after a crash" in receiver.posts[-1]["title"]
        [event] = await journal.call(store.events)
        assert event.id == event_id and event.notified
        assert await journal.call(store.unnotified_events, 10) == []
    finally:
        journal.close()
        engine.dispose()


async def test_a_report_unsent_when_the_bot_stopped_goes_out_at_the_next_start(tmp_path: Path, monkeypatch) -> None:
    config = fast_config(tmp_path)
    config.recovery.crash_timeout_seconds = 0.1
    # The previous run crashed: its heartbeat is an hour old and it has no clean-shutdown marker.
    engine = make_engine(config.database_url())
    store = RecoveryStore(engine, config.bot.name, config.bot.venue)
    dead = store.begin_run(4242, "host-a")
    store.heartbeat(dead, utcnow() - timedelta(hours=1))
    engine.dispose()

    down = Receiver(failures=10**6)  # the notification service is down during the whole first run
    await down.start()
    monkeypatch.setenv("TRADING_OPS_APPRISE_URLS", down.url)
    first = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    first.crash_report_retry_seconds = 0.01
    await first.start("127.0.0.1", 0)
    try:
        assert first.crash is not None and first.crash.previous.id == dead
        assert first.crash_reporter is not None
        await wait_for(lambda: first.crash_reporter is not None and first.crash_reporter.attempts >= 3)
    finally:
        await first.stop()
        await down.stop()
    engine = make_engine(config.database_url())
    events = RecoveryStore(engine, config.bot.name, config.bot.venue).events()
    engine.dispose()
    assert [(e.kind, e.notified) for e in events] == [("crash", False)]
    # The journal at the crash, before the startup reconciliation adopted anything.
    assert json.loads(events[0].detail)["journal_positions"] == {}

    up = Receiver(failures=0)
    await up.start()
    monkeypatch.setenv("TRADING_OPS_APPRISE_URLS", up.url)
    second = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    await second.start("127.0.0.1", 0)
    try:
        assert second.crash is None  # the first run stopped cleanly
        await wait_for(lambda: up.posts, timeout=20)
        assert f"crash of run {dead}" in up.posts[0]["message"]
        await wait_for(lambda: second.crash_reporter is not None and second.crash_reporter.sent == 1)
        [event] = await second.journal.call(second.recovery_store.events)
        assert event.notified
    finally:
        await second.stop()
        await up.stop()


async def test_a_database_error_is_retried_and_never_ends_the_reporter(tmp_path: Path, receiver: Receiver) -> None:
    """The recovery events table is out of reach for a while (a failover, a lock): each attempt fails on the
    database, is logged and retried with the same back-off; the report still goes out once the database is back."""
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    journal = Journal(engine, "paper-1", "paper")
    store = RecoveryStore(engine, "paper-1", "paper")
    try:
        event_id = await journal.call(crash_event, journal, store)
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE recovery_events RENAME TO recovery_events_away")
        reporter = CrashReporter(journal, store, [receiver.url], bot="paper-1", venue="paper", retry_seconds=0.01)
        task = asyncio.create_task(reporter.run())
        try:
            await wait_for(lambda: reporter.failures >= 3)
            assert not task.done() and reporter.sent == 0
            with engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE recovery_events_away RENAME TO recovery_events")
            async with asyncio.timeout(30):
                await task  # returns once sent (after the receiver's own two failures)
        finally:
            await stop_tasks([task])
        assert reporter.sent == 1 and "restarted after a crash" in receiver.posts[-1]["title"]
        [event] = await journal.call(store.events)
        assert event.id == event_id and event.notified
    finally:
        journal.close()
        engine.dispose()
