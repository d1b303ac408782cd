"""The journal writes a bot makes in the background (trading_ops/bot/journal_writes.py), on real SQLite: every change of
trading state lands in the journal with its reason and who asked, and the shutdown's flush (`wait`) returns only once
every write started before it has landed."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from decision_helpers import clear_halt
from paper_helpers import AUTH, TOKEN, IdleStrategy, control, fast_config
from prometheus_client import CollectorRegistry

from trading_ops.bot.control import SOURCE_HEADER
from trading_ops.bot.journal import Journal
from trading_ops.bot.journal_writes import JournalWrites, journal_transitions
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.state import StateMachine
from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.paper.bot import PaperBot
from trading_ops.scopes import DESTRUCTIVE, OPERATE, TokenSet

# The named token of the person on call (scope operate), beside the bot's single shared token.
ONCALL = "oncall-secret-token-0123456789"


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


async def test_every_control_command_is_journaled_with_the_principal_that_sent_it(tmp_path: Path) -> None:
    """A paper bot's real control API: every command an authenticated caller sends (`status` aside) is a `control`
    event of its journal naming the token that authenticated it (a named token; the single shared token, whatever its
    caller's header claims), the source it was counted under, the outcome (refusals too) and, for a command that
    widened nothing without people, the signed decision's requester and approvers. A request without a valid token is
    counted and logged, and journals nothing: it has no principal."""
    tokens = TokenSet([("oncall", OPERATE, ONCALL)], legacy=("control_token", DESTRUCTIVE, TOKEN))
    bot = PaperBot(fast_config(tmp_path, partial_fill_probability=0.0), token=tokens, registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    port = await bot.start("127.0.0.1", 0)
    oncall = {"Authorization": f"Bearer {ONCALL}"}
    shared = {**AUTH, SOURCE_HEADER: "reconciler"}
    try:
        assert (await control(port, "pause", headers=oncall))[0] == 200
        assert (await control(port, "resume", headers=oncall))[0] == 200
        assert (await control(port, "halt", {"reason": "mine"}, headers=oncall))[0] == 403  # operate: no halt
        assert (await control(port, "status", headers=oncall))[0] == 200
        assert (await control(port, "resume", headers={"Authorization": "Bearer guessed"}))[0] == 401
        assert (await control(port, "reduce_only", headers=shared))[0] == 200
        bot.inst.state.apply("halt", reason="risk limit daily_loss: the day's loss 41 reached the limit 40")
        assert (await control(port, "clear_halt", headers=shared))[0] == 403  # no decision: the token alone
        got, answer = await control(port, "clear_halt", clear_halt(), headers=shared)
        assert got == 200, answer
        await bot.journal_writes.wait()
        journaled = bot.recovery_store.commands()
    finally:
        await bot.stop()
    seen = [(c["command"], c["principal"], c["source"], c["outcome"]) for c in journaled]
    assert seen == [
        ("pause", "oncall", "oncall", "ok"),
        ("resume", "oncall", "oncall", "ok"),
        ("halt", "oncall", "oncall", "refused 403"),
        ("reduce_only", "control_token", "reconciler", "ok"),
        ("clear_halt", "control_token", "reconciler", "refused 403"),
        ("clear_halt", "control_token", "reconciler", "ok"),
    ]
    assert journaled[2]["error"] == "halt needs the 'destructive' scope; token 'oncall' has 'operate'"
    assert journaled[4]["error"].startswith('clear_halt needs a signed decision ("decision")')
    assert "decision" not in journaled[4]
    decided = journaled[5]["decision"]
    assert (decided["kind"], decided["requested_by"], decided["approvers"]) == ("clear_halt", "alice", ["bob"])
    assert journaled[0]["peer"] == "127.0.0.1" and journaled[1]["result"].startswith("state=active")
    registry = bot.inst.registry
    for source in ("oncall", "unauthenticated"):
        labels = {"command": "resume", "source": source}
        assert registry.get_sample_value("tradingbot_control_commands_total", labels) == 1, labels
