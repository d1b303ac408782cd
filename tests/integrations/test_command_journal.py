"""The journal of control commands of a bot we don't write (trading_ops/integrations/command_journal.py) on a real
migrated SQLite database: a run per start, each command a `control` event served by the bot's `control_events`, a
clean stop marked, and a database behind this version's schema refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from trading_ops.bot.control import CALLER, Caller
from trading_ops.integrations.command_journal import CommandJournal, SchemaProblem, open_engine


async def test_each_start_is_a_run_and_its_commands_are_served_in_pages(migrated_sqlite: str) -> None:
    engine = open_engine(migrated_sqlite)
    try:
        first = CommandJournal(engine, "ft-1", "freqtrade")
        run = first.begin()
        oncall = Caller("oncall", "10.0.0.7", "oncall")
        first.record("pause", oncall, "ok", {"before": "active", "after": "paused"})
        first.record("halt", oncall, "refused 403", {"error": "halt needs the 'destructive' scope"})
        await first.close()
        stopped = first.store.get_run(run)
        assert stopped is not None and stopped.clean_shutdown and stopped.stop_reason == "stopped"

        # Started again: a new run, every earlier event still served, in pages, to the caller that asked.
        second = CommandJournal(engine, "ft-1", "freqtrade")
        assert second.begin() != run
        second.record("resume", oncall, "ok", {"before": "paused", "after": "active"})
        await second.wait()
        CALLER.set(Caller("reconciler", "127.0.0.1", "reconciler"))
        page = await second.handler({"after": 0, "limit": 2})
        assert page["bot"] == "ft-1" and page["caller"] == "reconciler" and page["more"] is True
        assert [(e["command"], e["principal"], e["peer"], e["outcome"]) for e in page["events"]] == [
            ("pause", "oncall", "10.0.0.7", "ok"),
            ("halt", "oncall", "10.0.0.7", "refused 403"),
        ]
        rest = await second.handler({"after": page["events"][-1]["id"]})
        (resume,) = rest["events"]
        assert resume["command"] == "resume" and resume["run_id"] != run and rest["more"] is False
        assert rest["last_id"] == resume["id"]
        # Another bot's journal on the same database is its own.
        other = CommandJournal(engine, "ft-2", "freqtrade")
        assert (await other.handler({}))["events"] == []
        other.end()
        await second.close()
    finally:
        engine.dispose()


def test_a_database_not_migrated_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SchemaProblem, match="trading-ops db upgrade") as raised:
        open_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    assert len(str(raised.value).splitlines()) == 1


async def test_a_run_is_the_bots_it_ends_when_the_bot_stops_answering_and_begins_when_it_answers(
    migrated_sqlite: str,
) -> None:
    """The sidecar's process outlives freqtrade's: the runs it journals (what the daily report's uptime and the
    backup's "in use" check read) are freqtrade's, from an answer to its absence, never the time the sidecar waited."""
    engine = open_engine(migrated_sqlite)
    try:
        journal = CommandJournal(engine, "ft-1", "freqtrade")
        first = journal.begin()
        journal.answered()
        journal.absent("freqtrade does not answer")
        journal.absent("freqtrade does not answer")  # each poll it misses says so: the run ends once
        await journal.wait()
        ended = journal.store.get_run(first)
        assert ended is not None and ended.stopped_at is not None
        assert (ended.clean_shutdown, ended.stop_reason) == (False, "freqtrade does not answer")
        oncall = Caller("oncall", "10.0.0.7", "oncall")
        journal.record(
            "pause", oncall, "refused 503", {"error": "freqtrade does not answer"}
        )  # under the run that ended

        journal.answered()  # back: a run of its own, from now
        await journal.wait()
        second = journal.run_id
        assert second is not None and second != first
        again = journal.store.get_run(second)
        assert again is not None and again.stopped_at is None and again.started_at >= ended.stopped_at
        journal.record("resume", oncall, "ok", {"before": "paused", "after": "active"})
        await journal.wait()
        CALLER.set(oncall)
        events = (await journal.handler({}))["events"]
        assert [(e["command"], e["run_id"]) for e in events] == [("pause", first), ("resume", second)]
        await journal.close()
        stopped = journal.store.get_run(second)
        assert stopped is not None and stopped.clean_shutdown
        assert journal.store.get_run(first) == ended  # a clean stop leaves the run freqtrade's absence ended as it was
    finally:
        engine.dispose()


async def test_a_sidecar_that_stops_while_freqtrade_is_away_adds_no_time_to_the_ended_run(migrated_sqlite: str) -> None:
    engine = open_engine(migrated_sqlite)
    try:
        journal = CommandJournal(engine, "ft-1", "freqtrade")
        run = journal.begin()
        journal.absent("freqtrade does not answer")  # away from the first poll on
        await journal.wait()
        ended = journal.store.get_run(run)
        await journal.close()
        assert journal.store.get_run(run) == ended
    finally:
        engine.dispose()
