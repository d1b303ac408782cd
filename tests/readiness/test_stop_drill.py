"""`trading-ops readiness BOT --stop-drill` on a real paper bot (in-process, on a loopback port), run by the reconciler
(its app on a loopback port of this process, on a real migrated SQLite ledger) for a person's own token: halted,
flattened, seen flat, then trading again, each step counted where the readiness criterion reads it, an audit entry
under the token's name; refused on a bot that is not paper or to a token without the destructive scope, and one line
when the bot refuses a step. It never lifts a halt it did not set: a bot halted by its loss limit, paused by someone,
or with an approval pending in the ledger refuses the drill in one line (the CLI run as a subprocess), with nothing
changed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from ledger_rows import ask_approval
from paper_helpers import TOKEN, control, fast_config, wait_for
from prometheus_client import CollectorRegistry
from secret_file import write_secret

from trading_ops import audit
from trading_ops.cli import main
from trading_ops.config import load_config
from trading_ops.db import migrate
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models.ledger import Episode
from trading_ops.paper.bot import PaperBot
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.control_audit import ControlAudit
from trading_ops.reconciler.ledger import Ledger


def commands_counted(bot: PaperBot, command: str, source: str | None = None) -> float:
    return sum(
        s.value
        for f in bot.inst.registry.collect()
        if f.name == "tradingbot_control_commands"
        for s in f.samples
        if s.name.endswith("_total")
        and s.labels["command"] == command
        and s.labels["source"] != "unauthenticated"
        and source in (None, s.labels["source"])
    )


# The people's tokens the reconciler knows (name, scope), each in tmp_path/NAME-token.
PEOPLE = (("oncall", "destructive"), ("ops", "operate"))


def drill_config(tmp_path: Path, port: int, token: str = TOKEN, kind: str = "paper") -> Path:
    """The configuration the command and the reconciler read: the bot, a migrated SQLite ledger (tmp_path/ledger.db,
    made once), the webhook token and the PEOPLE's tokens."""
    write_secret(tmp_path / "bot-token", token)
    write_secret(tmp_path / "webhook-token", "webhook-token")
    for name, _scope in PEOPLE:
        write_secret(tmp_path / f"{name}-token", f"{name}-secret-token")
    bot = {
        "name": "paper-1",
        "kind": kind,
        "instance": f"127.0.0.1:{port}",
        "url": f"http://127.0.0.1:{port}",
        "token_file": str(tmp_path / "bot-token"),
    }
    ledger = tmp_path / "ledger.db"
    if not ledger.exists():
        migrate.upgrade(f"sqlite:///{ledger}")
    reconciler = {
        "token_file": str(tmp_path / "webhook-token"),
        "api_tokens": [{"name": n, "scope": s, "token_file": str(tmp_path / f"{n}-token")} for n, s in PEOPLE],
        "check_silences": False,
        "watchdog": {"window_seconds": 0},
    }
    data: dict[str, Any] = {
        "bots": [bot],
        "database": {"url": f"sqlite:///{ledger}"},
        "reconciler": reconciler,
        "scheduler": {"enabled": False},
    }
    path = tmp_path / "drill.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def drill(aiohttp_client: Any) -> Any:
    """`trading-ops --config CONFIG readiness paper-1 --stop-drill` as `person` runs it with their own token, against
    a reconciler serving CONFIG (on this event loop): in a thread of this process, or (`process`) as a process of its
    own. Its exit status, stdout and stderr."""
    served: dict[Path, str] = {}

    async def run(config: Path, *, person: str = "oncall", process: bool = False) -> tuple[int, str, str]:
        if config not in served:
            app = create_app(load_config(config), registry=CollectorRegistry())
            served[config] = str((await aiohttp_client(app)).make_url("")).rstrip("/")
        argv = ["--config", str(config), "readiness", "paper-1", "--stop-drill"]
        argv += ["--token-file", str(config.parent / f"{person}-token"), "--url", served[config]]
        if not process:
            return int(await asyncio.to_thread(main, argv)), "", ""
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "trading_ops", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    return run


async def test_the_drill_halts_flattens_and_resumes_a_paper_bot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], drill: Any
) -> None:
    bot = PaperBot(fast_config(tmp_path), token=TOKEN, registry=CollectorRegistry())
    port = await bot.start("127.0.0.1", 0)
    try:
        await wait_for(lambda: any(bot.book.position(s) != 0 for s in bot.symbols), 20)
        config = drill_config(tmp_path, port)
        # A token without the destructive scope: the reconciler's 403 in one line, nothing done.
        capsys.readouterr()
        assert (await drill(config, person="ops"))[0] == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops:")]
        assert err == ["trading-ops: readiness: running a stop drill needs the 'destructive' scope; token 'ops' has "
                       "'operate'"]  # fmt: skip
        assert commands_counted(bot, "halt") == 0
        status, _, _ = await drill(config)
        out = capsys.readouterr().out
        assert status == 0, out
        assert "paper-1: flat with no order working" in out
        assert out.endswith("paper-1: emergency stop exercised (by oncall)\n")
        assert commands_counted(bot, "halt") == 1 and commands_counted(bot, "flatten") == 1
        _, answer = await control(port, "status")
        assert answer["state"] == "active"
        # The drill is an audit entry under the person's token that asked, from its address.
        engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
        try:
            (entry,) = audit.entries(engine, action="stop_drill")
            assert (entry.principal, entry.source, entry.target) == ("oncall", "127.0.0.1", "paper-1")
            assert entry.after["steps"][-1] == "halt cleared and trading resumed"
            # The drill's commands are the reconciler's, on that person's drill: the bot counts them so, and the
            # reconciler's pull of the bot's journal never adds them as commands an operator sent straight to it.
            assert commands_counted(bot, "halt", source="reconciler") == 1
            async with aiohttp.ClientSession() as session:
                await ControlAudit(load_config(config), Ledger(engine), session).pull()
            assert [e.action for e in audit.entries(engine, target="paper-1")] == ["stop_drill"]
            assert audit.verify(engine).whole
        finally:
            engine.dispose()
    finally:
        await bot.stop()


async def test_a_step_the_bot_refuses_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], drill: Any
) -> None:
    bot = PaperBot(fast_config(tmp_path), token=TOKEN, registry=CollectorRegistry())
    port = await bot.start("127.0.0.1", 0)
    try:
        config = drill_config(tmp_path, port, token="wrong")
        status, _, _ = await drill(config)
        # The bot runs in this process: its own log lines (the refusal it logged) are on stderr too.
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops:")]
        # The drill reads the bot's state first (what it may lift): the wrong token fails there.
        assert status == 1 and len(err) == 1 and "stop drill of paper-1 failed at status: HTTP 401" in err[0], err
        assert commands_counted(bot, "flatten") == 0
    finally:
        await bot.stop()


def test_the_drill_runs_on_paper_bots_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = drill_config(tmp_path, 9, kind="freqtrade")
    assert main(["--config", str(config), "readiness", "paper-1", "--stop-drill", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["trading-ops: readiness: --stop-drill: runs on a paper bot only; paper-1 is of kind freqtrade"]


async def test_a_bot_halted_by_its_loss_limit_refuses_the_drill_and_stays_halted(tmp_path: Path, drill: Any) -> None:
    """The issue's case: a loss-limit halt is a person's to clear (four eyes), never the drill's: refused in one line,
    no flatten, no clear_halt, no resume; the bot stays halted with the limit's reason and its positions."""
    bot = PaperBot(fast_config(tmp_path, daily_loss_limit=40), token=TOKEN, registry=CollectorRegistry(), chaos=True)
    port = await bot.start("127.0.0.1", 0)
    try:
        await wait_for(lambda: sum(abs(bot.book.notional(s)) for s in bot.symbols) > 500, 20)
        status, body = await control(port, "loss_spike")
        assert status == 200, body
        await wait_for(lambda: bot.inst.state.state.value == "halted", 10)
        reason = bot.inst.state.reason
        assert reason.startswith("risk limit daily_loss"), reason

        async def nothing_working() -> bool:
            """The halt cancels what works; what was on its way (a partly filled order's rest) fills first: settled
            once no order works and the positions held still over half a second of the bot's fast loop."""
            before = {s: bot.book.position(s) for s in bot.symbols}
            await asyncio.sleep(0.5)
            working = (await control(port, "status"))[1].get("open_orders")
            return not working and {s: bot.book.position(s) for s in bot.symbols} == before

        await wait_for(nothing_working, 30)
        positions = {s: bot.book.position(s) for s in bot.symbols}
        assert any(positions.values())
        code, out, err = await drill(drill_config(tmp_path, port), process=True)
        assert (code, out) == (1, ""), err
        lines = err.strip().splitlines()
        assert len(lines) == 1, lines
        refused = "trading-ops: readiness: stop drill of paper-1 refused, nothing changed: "
        assert lines[0].startswith(refused + "it is halted (risk limit daily_loss"), lines
        assert "runs on an active bot only" in lines[0]
        _, answer = await control(port, "status")
        assert answer["state"] == "halted" and answer["state_reason"] == reason
        assert answer["flatten_while_halted"] is False
        assert {s: bot.book.position(s) for s in bot.symbols} == positions
        assert commands_counted(bot, "flatten") == 0 and commands_counted(bot, "clear_halt") == 0
        assert commands_counted(bot, "resume") == 0
    finally:
        await bot.stop()


async def test_a_paused_bot_refuses_the_drill_and_stays_paused(tmp_path: Path, drill: Any) -> None:
    """The drill ends by resuming: on a bot someone paused it would lift their pause."""
    bot = PaperBot(fast_config(tmp_path), token=TOKEN, registry=CollectorRegistry())
    port = await bot.start("127.0.0.1", 0)
    try:
        assert (await control(port, "pause", {"reason": "desk review"}))[0] == 200
        code, _, err = await drill(drill_config(tmp_path, port), process=True)
        assert code == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "refused, nothing changed: it is paused (desk review)" in lines[0], lines
        _, answer = await control(port, "status")
        assert answer["state"] == "paused" and answer["state_reason"] == "desk review"
        assert commands_counted(bot, "halt") == 0 and commands_counted(bot, "flatten") == 0
    finally:
        await bot.stop()


async def test_an_approval_pending_for_the_bot_refuses_the_drill(tmp_path: Path, drill: Any) -> None:
    """A flatten waiting for a person's approval in the ledger is theirs to decide: the drill does not flatten in its
    place. Once the episode is closed (nothing waits), the drill runs."""
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    bot = PaperBot(fast_config(tmp_path), token=TOKEN, registry=CollectorRegistry())
    port = await bot.start("127.0.0.1", 0)
    try:
        config = drill_config(tmp_path, port)  # migrates the ledger
        approval = ask_approval(ledger, f"127.0.0.1:{port}")
        ask_approval(ledger, "127.0.0.1:1")  # another bot's: not this one's business
        code, _, err = await drill(config, process=True)
        assert code == 1, err
        lines = err.strip().splitlines()
        assert lines == [
            "trading-ops: readiness: stop drill of paper-1 refused, nothing changed: "
            f"approval {approval} (venue flatten for TradingBotUnhandledExposure) waits for a person's decision: "
            "decide it first (`trading-ops reconciler approvals`)"
        ], lines
        _, answer = await control(port, "status")
        assert answer["state"] == "active"
        assert commands_counted(bot, "halt") == 0 and commands_counted(bot, "flatten") == 0

        engine = make_engine(ledger)
        try:
            with engine.begin() as conn:
                conn.execute(Episode.__table__.update().values(state="resolved", closed_at=utcnow()))
        finally:
            engine.dispose()
        await wait_for(lambda: any(bot.book.position(s) != 0 for s in bot.symbols), 20)
        code, out, err = await drill(config, process=True)
        assert code == 0, err
        assert out.endswith("paper-1: emergency stop exercised (by oncall)\n")
        assert commands_counted(bot, "halt") == 1 and commands_counted(bot, "clear_halt") == 1
    finally:
        await bot.stop()
