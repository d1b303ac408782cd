"""Commands sent straight to a bot, pulled from its journal into the reconciler's audit chain
(trading_ops/reconciler/control_audit.py): a real paper bot's control API and journal, the real reconciler app (two
replicas on one ledger, SQLite and the local PostgreSQL), a playbook step the reconciler sends itself, a bot that is
down and a control API without a journal (an older bot, a sidecar) beside them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from console_client import log_in, post_form
from engine_runs import engine_settled
from fake_bot import FakeBot
from paper_helpers import IdleStrategy, control, fast_config, wait_for
from ports import free_port
from prometheus_client import CollectorRegistry
from reconciler_server import AUTH, BOT_TOKEN, READ_AUTH, READ_TOKEN, TOKEN
from secret_file import write_secret
from webhook_payloads import alert, payload

from trading_ops import audit
from trading_ops.cli import main
from trading_ops.config import load_config
from trading_ops.paper.bot import PaperBot
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.control_audit import Page, held, record
from trading_ops.reconciler.ledger import Ledger
from trading_ops.scopes import DESTRUCTIVE, OPERATE, TokenSet

# The bot's named tokens: the reconciler's two (what bots[].token and destructive_token hold) and a person's.
RECONCILER = "reconciler-operate-token-0123456789"
RECONCILER_DESTRUCTIVE = "reconciler-destroy-token-0123456789"
ONCALL = "oncall-operate-token-0123456789"
PAUSE_ALERT = "TestBotPauseWanted"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_config(tmp_path: Path, db_url: str, bots: list[dict[str, Any]], interval: float = 0) -> Path:
    """A reconciler over `bots` with one rule (PAUSE_ALERT: pause the alert's bot once, unverified); the pull every
    `interval` seconds (0: driven by the test)."""
    write_secret(tmp_path / "secrets" / "webhook-token", TOKEN)
    write_secret(tmp_path / "secrets" / "read-token", READ_TOKEN)
    write_secret(tmp_path / "secrets" / "reconciler-token", RECONCILER)
    write_secret(tmp_path / "secrets" / "reconciler-destructive-token", RECONCILER_DESTRUCTIVE)
    write_secret(tmp_path / "secrets" / "bot-token", BOT_TOKEN)
    rule = {
        "name": "pause-wanted",
        "match": [f'alertname="{PAUSE_ALERT}"'],
        "max_attempts": 1,
        "cooldown": 0,
        "verify": False,
        "steps": [{"action": "bot", "command": "pause"}],
    }
    (tmp_path / "playbook.yml").write_text(yaml.safe_dump({"version": 1, "rules": [rule]}))
    rc = {
        "token_file": "secrets/webhook-token",
        "read_token_file": "secrets/read-token",
        "playbook": "playbook.yml",
        "poll_interval_seconds": 0.05,
        "check_silences": False,
        "prometheus_url": "http://127.0.0.1:9",
        "alertmanager_url": "http://127.0.0.1:9",
        "watchdog": {"window_seconds": 0},
        "control_audit_interval_seconds": interval,
    }
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": db_url}, "reconciler": rc, "bots": bots}))
    return path


def paper_entry(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "instance": f"127.0.0.1:{port}",
        "url": f"http://127.0.0.1:{port}",
        "token_file": "secrets/reconciler-token",
        "destructive_token_file": "secrets/reconciler-destructive-token",
    }


async def start_paper_bot(tmp_path: Path) -> tuple[PaperBot, int]:
    tokens = TokenSet(
        [
            ("reconciler-operate", OPERATE, RECONCILER),
            ("reconciler-destructive", DESTRUCTIVE, RECONCILER_DESTRUCTIVE),
            ("oncall", OPERATE, ONCALL),
        ]
    )
    bot = PaperBot(fast_config(tmp_path, partial_fill_probability=0.0), token=tokens, registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    return bot, await bot.start("127.0.0.1", 0)


async def garbage_bot(aiohttp_server: Any) -> str:
    """A control API whose every answer is a 200 that is no page of events (a proxy's error page, a broken bot)."""

    async def answer(_request: web.Request) -> web.Response:
        return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/control/{command}", answer)
    return str((await aiohttp_server(app)).make_url("")).rstrip("/")


async def test_a_command_sent_straight_to_a_bot_is_audited_once_and_the_reconcilers_own_not_again(
    aiohttp_client: Any,
    aiohttp_server: Any,
    tmp_path: Path,
    migrated_db: str,
    fake_bot: FakeBot,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trading_ops.reconciler.control_audit")
    bot, port = await start_paper_bot(tmp_path / "bot")
    down = free_port()  # nothing listens there
    fake_port = int(fake_bot.url.rsplit(":", 1)[1])
    garbage = await garbage_bot(aiohttp_server)
    bots = [
        paper_entry("paper-1", port),
        {**paper_entry("paper-down", down)},
        {
            "name": "sidecar-1",
            "instance": f"127.0.0.1:{fake_port}",
            "url": fake_bot.url,
            "token_file": "secrets/bot-token",
        },
        {**paper_entry("paper-garbage", 1), "instance": garbage.removeprefix("http://"), "url": garbage},
    ]
    config = write_config(tmp_path, migrated_db, bots)
    # Two replicas on one ledger.
    first = await aiohttp_client(create_app(load_config(config)))
    second = await aiohttp_client(create_app(load_config(config), registry=CollectorRegistry()))
    instance = f"127.0.0.1:{port}"
    try:
        # The reconciler's own command: a playbook step pauses the bot (the episode's history, not a bot_control entry).
        body = payload(alert(PAUSE_ALERT, fingerprint="p1", instance=instance))
        assert (await first.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
        await wait_for(lambda: bot.inst.state.state.value == "paused")
        await engine_settled(first.app)
        # A person's commands, straight to the bot with its own token: a resume, and a halt its scope refuses.
        assert (await control(port, "resume", {"reason": "checked"}, headers=bearer(ONCALL)))[0] == 200
        assert (await control(port, "halt", headers=bearer(ONCALL)))[0] == 403
        await bot.journal_writes.wait()
        journaled = [(c["command"], c["principal"]) for c in bot.recovery_store.commands()]
        assert journaled == [("pause", "reconciler-operate"), ("resume", "oncall"), ("halt", "oncall")]

        # Both replicas pull at once: each command is appended once; the bots that give no page hold nothing back.
        counts = await asyncio.gather(first.app[keys.CONTROL_AUDIT].pull(), second.app[keys.CONTROL_AUDIT].pull())
        assert counts[0]["paper-1"] + counts[1]["paper-1"] == 2
        assert all(c["paper-down"] == c["sidecar-1"] == c["paper-garbage"] == 0 for c in counts)
        again = await first.app[keys.CONTROL_AUDIT].pull()
        assert again == {"paper-1": 0, "paper-down": 0, "sidecar-1": 0, "paper-garbage": 0}

        resp = await first.get("/api/v1/audit?target=paper-1", headers=READ_AUTH)
        assert resp.status == 200
        entries = (await resp.json())["entries"]
        seen = [(e["action"], e["principal"], e["source"], e["before"], e["after"]) for e in reversed(entries)]
        assert seen == [
            ("bot_control:resume", "oncall", "127.0.0.1", {"state": "paused"}, {"state": "active", "outcome": "ok"}),
            ("bot_control:halt", "oncall", "127.0.0.1", {}, {"outcome": "refused 403"}),
        ]
        assert "halt needs the 'destructive' scope" in entries[0]["comment"]
        # The bot's own time of each command, and the target found by the bot's instance too.
        journal_times = [c["at"] for c in bot.recovery_store.commands()[1:]]
        assert [e["at"] for e in reversed(entries)] == [t.isoformat() for t in journal_times]
        by_instance = await first.get(f"/api/v1/audit?target={instance}", headers=READ_AUTH)
        assert len((await by_instance.json())["entries"]) == 2
        verdict = await asyncio.to_thread(audit.verify, first.app[keys.LEDGER].engine)
        assert verdict.whole and verdict.checked == 2

        # A bot that gives no page is logged once, not at every pull.
        await first.app[keys.CONTROL_AUDIT].pull()
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        first_replica = [line for line in lines if "paper-down" in line]
        assert len(first_replica) == 2, lines  # once per replica
        assert "not reached" in first_replica[0]
        no_journal = [line for line in lines if "sidecar-1" in line]
        assert len(no_journal) == 2 and "has no control_events" in no_journal[0], lines
        nonsense = [line for line in lines if "paper-garbage" in line]
        assert len(nonsense) == 2 and "answered what is not JSON" in nonsense[0], lines
    finally:
        await bot.stop()


async def test_the_console_s_emergency_halt_over_the_shared_token_is_audited_once_under_the_person(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    """The local stack's shape: the bot knows one shared control_token, which the reconciler holds for it. A person
    halts the bot from the console: one audit entry under that person's token, never a second one saying the shared
    token sent the halt straight to the bot (counted as operator)."""
    bot = PaperBot(fast_config(tmp_path / "bot", partial_fill_probability=0.0), token=RECONCILER,
                   registry=CollectorRegistry())  # fmt: skip
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    port = await bot.start("127.0.0.1", 0)
    entry = {k: v for k, v in paper_entry("paper-1", port).items() if k != "destructive_token_file"}
    config = write_config(tmp_path, migrated_sqlite, [entry])
    data = yaml.safe_load(config.read_text())
    write_secret(tmp_path / "secrets" / "oncall-token", ONCALL)
    data["reconciler"]["api_tokens"] = [
        {"name": "oncall", "scope": "destructive", "token_file": "secrets/oncall-token"}
    ]  # fmt: skip
    config.write_text(yaml.safe_dump(data))
    client = await aiohttp_client(create_app(load_config(config)))
    try:
        sid = await log_in(client, ONCALL)
        done = await post_form(client, f"/ui/bots/127.0.0.1:{port}/halt", sid, reason="drill of our own")
        assert done.status == 303, await done.text()
        await wait_for(lambda: bot.inst.state.state.value == "halted")
        await bot.journal_writes.wait()
        assert [c["command"] for c in bot.recovery_store.commands()] == ["halt"]
        await client.app[keys.CONTROL_AUDIT].pull()
        resp = await client.get("/api/v1/audit?target=paper-1", headers=READ_AUTH)
        seen = [(e["action"], e["principal"]) for e in (await resp.json())["entries"]]
        assert seen == [("halt", "oncall")], seen
    finally:
        await bot.stop()


async def test_the_reconciler_pulls_by_itself_and_the_cli_lists_and_verifies_it(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The app's own background pull (a short interval here): a person's pause reaches `trading-ops audit --target`
    without the test driving it, and `trading-ops audit verify` finds the chain whole."""
    bot, port = await start_paper_bot(tmp_path / "bot")
    config = write_config(tmp_path, migrated_sqlite, [paper_entry("paper-1", port)], interval=0.1)
    client = await aiohttp_client(create_app(load_config(config)))
    engine = client.app[keys.LEDGER].engine
    try:
        assert (await control(port, "pause", {"reason": "lunch"}, headers=bearer(ONCALL)))[0] == 200
        await wait_for(lambda: [e.action for e in audit.entries(engine, target="paper-1")] == ["bot_control:pause"])
        assert (await client.get("/healthz")).status == 200  # the pulling task is one of the workers, alive
    finally:
        await bot.stop()
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["-c", str(config), "audit", "--target", f"127.0.0.1:{port}"]) == 0
    listed = capsys.readouterr().out
    said = 'oncall from 127.0.0.1  bot_control:pause paper-1: outcome null -> "ok", state "active" -> "paused"'
    assert said in listed and "journal event" in listed, listed
    assert await asyncio.to_thread(main, ["-c", str(config), "audit", "verify"]) == 0
    assert capsys.readouterr().out.startswith("audit chain whole: 1 entries"), listed


def test_a_journal_restored_from_an_older_backup_is_not_audited_twice(migrated_sqlite: str) -> None:
    """A bot's journal restored from a backup taken before its last commands: read from its start, the events up to
    the backup are those the chain holds already and are skipped; the restored bot's new commands, which take the
    lost part's event ids and run number again, are appended (their moment is their own)."""
    from trading_ops.db.base import make_engine

    engine = make_engine(migrated_sqlite)
    ledger = Ledger(engine)

    def event(event_id: int, at: str, command: str = "resume") -> dict[str, Any]:
        fields = {"command": command, "principal": "oncall", "source": "oncall", "peer": "10.0.0.7", "outcome": "ok"}
        return {**fields, "id": event_id, "run_id": 2, "at": at}

    before = [event(i, f"2026-11-28T03:0{i}:00+00:00") for i in range(1, 5)]
    try:
        assert record(ledger, "paper-1", Page(0, before, 4, False, "r"), set()) == (4, 4)
        # Restored from the backup of event 2: the journal ends before the cursor, read again from its start.
        assert record(ledger, "paper-1", Page(4, [], 2, False, "r"), set()) == (0, 0)
        # Events 1 and 2 are the chain's already; 3 and 4 are new commands (a later moment) of the restored bot.
        after = [*before[:2], event(3, "2026-11-28T05:00:00+00:00", "pause"), event(4, "2026-11-28T05:01:00+00:00")]
        assert record(ledger, "paper-1", Page(0, after, 4, False, "r"), set()) == (2, 4)
        listed = [(e.action, e.at.replace(tzinfo=None).isoformat()) for e in reversed(audit.entries(engine))]
        assert listed == [
            ("bot_control:resume", "2026-11-28T03:01:00"),
            ("bot_control:resume", "2026-11-28T03:02:00"),
            ("bot_control:resume", "2026-11-28T03:03:00"),
            ("bot_control:resume", "2026-11-28T03:04:00"),
            ("bot_control:pause", "2026-11-28T05:00:00"),
            ("bot_control:resume", "2026-11-28T05:01:00"),
        ]
        assert audit.verify(engine).whole
    finally:
        engine.dispose()


def test_another_journal_is_read_from_its_start_and_a_late_page_appends_nothing_twice(migrated_sqlite: str) -> None:
    """The cursor under the chain's lock, on a real ledger: a page is appended past what the chain holds only; a bot
    whose journal ends before the event a page was asked after has another journal (read from its start), unless
    another replica moved the cursor since (a late page then changes nothing)."""
    from trading_ops.db.base import make_engine

    engine = make_engine(migrated_sqlite)
    ledger = Ledger(engine)

    def event(event_id: int, command: str = "resume") -> dict[str, Any]:
        at = "2026-11-28T03:00:00+00:00"
        fields = {"command": command, "principal": "oncall", "source": "oncall", "peer": "10.0.0.7", "outcome": "ok"}
        return {**fields, "id": event_id, "run_id": 1, "at": at}

    try:
        assert record(ledger, "paper-1", Page(0, [event(1), event(2)], 2, False, "r"), set()) == (2, 2)
        # A page of a replica that asked before: held already.
        assert record(ledger, "paper-1", Page(0, [event(1), event(2), event(3)], 3, False, "r"), set()) == (1, 3)
        # The reconciler's own command moves the cursor and appends nothing.
        own = {**event(4), "principal": "reconciler-operate", "source": "reconciler-operate"}
        assert record(ledger, "paper-1", Page(3, [own], 4, False, "r"), {"reconciler-operate"}) == (0, 4)
        # A late page that finds the journal shorter than what it asked after, once the cursor moved on: nothing.
        assert record(ledger, "paper-1", Page(2, [], 1, False, "r"), set()) == (0, 4)
        # Another journal: from its start; its first event is appended though an event 1 was before.
        assert record(ledger, "paper-1", Page(4, [], 1, False, "r"), set()) == (0, 0)
        assert record(ledger, "paper-1", Page(0, [event(1, "pause")], 1, False, "r"), set()) == (1, 1)
        assert held(ledger, "paper-1") == 1 and held(ledger, "paper-2") == 0
        # The single shared token, the reconciler's too: what the reconciler or a maintenance window sent with it is
        # its own; a person's curl with it (counted as operator) is audited.
        shared = {"principal": "control_token"}
        page = [
            {**event(2, "pause"), **shared, "source": "reconciler"},
            {**event(3, "resume"), **shared, "source": "maintenance"},
            {**event(4, "flatten"), **shared, "source": "operator"},
        ]
        assert record(ledger, "paper-1", Page(1, page, 4, False, "r"), {"control_token"}) == (1, 4)
        actions = [(e.principal, e.action) for e in reversed(audit.entries(engine))]
        assert actions == [("oncall", "bot_control:resume")] * 3 + [
            ("oncall", "bot_control:pause"),
            ("control_token", "bot_control:flatten"),
        ]
        assert audit.verify(engine).whole
    finally:
        engine.dispose()
