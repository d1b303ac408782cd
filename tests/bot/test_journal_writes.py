"""The journal writes a bot makes in the background (trading_ops/bot/journal_writes.py), on real SQLite: every change of
trading state lands in the journal with its reason and who asked, and the shutdown's flush (`wait`) returns only once
every write started before it has landed."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from trading_ops.bot.journal import Journal
from trading_ops.bot.journal_writes import JournalWrites, journal_transitions
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.state import StateMachine
from trading_ops.db import migrate
from trading_ops.db.base import make_engine


@pytest.fixture
def parts(sqlite_url: str) -> Iterator[tuple[Journal, RecoveryStore]]:
    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    journal = Journal(engine, "bot-1", "paper")
    yield journal, RecoveryStore(engine, "bot-1", "paper")
    journal.close()
    engine.dispose()


async def test_every_state_change_is_journaled_in_order_and_the_flush_waits_for_it(
    parts: tuple[Journal, RecoveryStore],
) -> None:
    journal, store = parts
    state = StateMachine(CollectorRegistry())
    writes = JournalWrites()
    run: list[int] = []
    journal_transitions(state, writes, journal, store, lambda: run[0] if run else None)
    state.apply("pause", reason="before the run has an id: not journaled")
    run.append(await journal.call(store.begin_run, os.getpid(), "host"))
    state.apply("resume", reason="operator", by="token 'ops' from 127.0.0.1")
    state.apply("halt", reason="max_drawdown: 5% from the peak")
    await writes.wait()  # what the shutdown's flush does before the journal closes
    events = await asyncio.to_thread(store.events, "state")
    assert [(json.loads(e.detail)["before"], json.loads(e.detail)["after"]) for e in events] == [
        ("paused", "active"),
        ("active", "halted"),
    ]
    assert json.loads(events[0].detail)["by"] == "token 'ops' from 127.0.0.1"  # who asked, for a control command
    last = await journal.call(store.last_transition)
    assert last is not None and last["after"] == "halted" and last["reason"] == "max_drawdown: 5% from the peak"


def test_a_state_change_outside_an_event_loop_is_not_journaled(parts: tuple[Journal, RecoveryStore]) -> None:
    journal, store = parts
    state = StateMachine(CollectorRegistry())
    writes = JournalWrites()
    run_id = store.begin_run(os.getpid(), "host")
    journal_transitions(state, writes, journal, store, lambda: run_id)
    state.apply("pause", reason="set-up, before the bot runs")
    assert store.events("state") == []
