"""A bot's journaled control commands read back over its control API (trading_ops/bot/control_journal.py), on a real
paper bot and its SQLite journal: `control_events` pages them by event id for any token of the read scope, names the
token that asked, refuses bad arguments in one line, and is itself no journaled command."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from paper_helpers import IdleStrategy, control, fast_config, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.bot.api_spec import bot_document
from trading_ops.paper.bot import PaperBot
from trading_ops.scopes import DESTRUCTIVE, OPERATE, READ, TokenSet

ONCALL = "oncall-secret-token-0123456789"
WATCHER = "watcher-read-token-0123456789"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_control_events_pages_the_journaled_commands_for_a_read_token(tmp_path: Path) -> None:
    tokens = TokenSet([("oncall", OPERATE, ONCALL), ("watcher", READ, WATCHER)])
    bot = PaperBot(fast_config(tmp_path, partial_fill_probability=0.0), token=tokens, registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    port = await bot.start("127.0.0.1", 0)
    oncall, watcher = bearer(ONCALL), bearer(WATCHER)
    try:
        assert (await control(port, "pause", {"reason": "desk"}, headers=oncall))[0] == 200
        assert (await control(port, "resume", headers=oncall))[0] == 200
        assert (await control(port, "halt", headers=oncall))[0] == 403  # operate: refused, journaled
        assert (await control(port, "pause", headers=watcher))[0] == 403  # read: refused, journaled
        await bot.journal_writes.wait()

        status, first = await control(port, "control_events", {"limit": 2}, headers=watcher)
        assert status == 200, first
        assert first["caller"] == "watcher" and first["bot"] == bot.recovery_store.bot
        assert [e["command"] for e in first["events"]] == ["pause", "resume"]
        assert first["more"] is True and first["last_id"] > first["events"][-1]["id"]
        pause = first["events"][0]
        assert (pause["principal"], pause["source"], pause["peer"], pause["outcome"]) == (
            "oncall",
            "oncall",
            "127.0.0.1",
            "ok",
        )
        assert (pause["before"], pause["after"]) == ("active", "paused")  # the change, as the audit shows it
        assert pause["run_id"] > 0 and pause["at"].endswith("+00:00")

        status, rest = await control(port, "control_events", {"after": first["events"][-1]["id"]}, headers=oncall)
        assert status == 200 and rest["caller"] == "oncall"
        refused = [(e["command"], e["outcome"]) for e in rest["events"]]
        assert refused == [("halt", "refused 403"), ("pause", "refused 403")]
        assert rest["more"] is False and rest["last_id"] == rest["events"][-1]["id"]
        status, none = await control(port, "control_events", {"after": rest["last_id"]}, headers=watcher)
        assert (status, none["events"], none["more"]) == (200, [], False)

        for bad in ({"after": -1}, {"limit": 501}, {"after": "3"}, {"limit": True}, {"since": 1}):
            status, answer = await control(port, "control_events", bad, headers=watcher)
            assert status == 400, bad
            assert len(answer["error"].splitlines()) == 1, answer
        await bot.journal_writes.wait()
        # Reads decide nothing: neither control_events (answered or refused) nor status is journaled.
        assert [c["command"] for c in bot.recovery_store.commands()] == ["pause", "resume", "halt", "pause"]
        served = bot_document(bot.inst.control)["paths"]["/control/control_events"]["post"]
        assert served["security"] == [{"read": []}]
    finally:
        await bot.stop()


async def test_a_bot_with_only_the_single_shared_token_answers_its_events_too(tmp_path: Path) -> None:
    secret = "shared-control-token-0123456789"
    tokens = TokenSet([], legacy=("control_token", DESTRUCTIVE, secret))
    bot = PaperBot(fast_config(tmp_path, partial_fill_probability=0.0), token=tokens, registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    port = await bot.start("127.0.0.1", 0)
    try:
        assert (await control(port, "pause", headers=bearer(secret)))[0] == 200
        await bot.journal_writes.wait()
        status, answer = await control(port, "control_events", headers=bearer(secret))
    finally:
        await bot.stop()
    assert status == 200 and answer["caller"] == "control_token"
    assert [(e["command"], e["principal"], e["source"]) for e in answer["events"]] == [
        ("pause", "control_token", "operator")
    ]


async def test_a_carried_out_command_is_answered_once_it_is_in_the_journal(tmp_path: Path) -> None:
    """The answer waits for the journal's write: a caller who saw 200 finds the command in the audit even when the
    bot's process died right after answering. Here the journal's one worker is held busy: the pause is carried out at
    once, its answer comes only after the worker is free and has written it, and the database holds it by then."""
    tokens = TokenSet([("oncall", OPERATE, ONCALL)])
    bot = PaperBot(fast_config(tmp_path, partial_fill_probability=0.0), token=tokens, registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    port = await bot.start("127.0.0.1", 0)
    released = threading.Event()
    busy = asyncio.ensure_future(bot.journal.call(released.wait, 30.0))
    try:
        answer = asyncio.ensure_future(control(port, "pause", {"reason": "desk"}, headers=bearer(ONCALL)))
        await wait_for(lambda: bot.inst.state.state.value == "paused")
        await asyncio.sleep(0.5)
        assert not answer.done(), "answered while its journal write was queued"
        assert bot.recovery_store.commands() == []
        released.set()
        status, body = await asyncio.wait_for(answer, 10)
        assert status == 200 and body["state"] == "paused", body
        assert [(c["command"], c["principal"], c["outcome"]) for c in bot.recovery_store.commands()] == [
            ("pause", "oncall", "ok")
        ]
    finally:
        released.set()
        await busy
        await bot.stop()
