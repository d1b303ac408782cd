"""`trading-ops readiness BOT --stop-drill` on a real paper bot (in-process, on a loopback port): halted, flattened,
seen flat, then trading again, each step counted where the readiness criterion reads it; refused on a bot that is
not paper, and one line when the bot refuses a step."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from paper_helpers import TOKEN, control, fast_config, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.cli import main
from trading_ops.paper.bot import PaperBot


def commands_counted(bot: PaperBot, command: str) -> float:
    return sum(
        s.value
        for f in bot.inst.registry.collect()
        if f.name == "tradingbot_control_commands"
        for s in f.samples
        if s.name.endswith("_total") and s.labels["command"] == command and s.labels["source"] != "unauthenticated"
    )


def drill_config(tmp_path: Path, port: int, token: str = TOKEN, kind: str = "paper") -> Path:
    (tmp_path / "bot-token").write_text(token)
    (tmp_path / "bot-token").chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
    bot = {
        "name": "paper-1",
        "kind": kind,
        "instance": f"127.0.0.1:{port}",
        "url": f"http://127.0.0.1:{port}",
        "token_file": str(tmp_path / "bot-token"),
    }
    path = tmp_path / "drill.yaml"
    path.write_text(yaml.safe_dump({"bots": [bot]}))
    return path


async def test_the_drill_halts_flattens_and_resumes_a_paper_bot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bot = PaperBot(fast_config(tmp_path), token=TOKEN, registry=CollectorRegistry())
    port = await bot.start("127.0.0.1", 0)
    try:
        await wait_for(lambda: any(bot.book.position(s) != 0 for s in bot.symbols), 20)
        status = await asyncio.to_thread(
            main, ["--config", str(drill_config(tmp_path, port)), "readiness", "paper-1", "--stop-drill"]
        )
        out = capsys.readouterr().out
        assert status == 0, out
        assert "paper-1: flat with no order working" in out and out.endswith("paper-1: emergency stop exercised\n")
        assert commands_counted(bot, "halt") == 1 and commands_counted(bot, "flatten") == 1
        _, answer = await control(port, "status")
        assert answer["state"] == "active"
    finally:
        await bot.stop()


async def test_a_step_the_bot_refuses_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bot = PaperBot(fast_config(tmp_path), token=TOKEN, registry=CollectorRegistry())
    port = await bot.start("127.0.0.1", 0)
    try:
        config = drill_config(tmp_path, port, token="wrong")
        status = await asyncio.to_thread(main, ["--config", str(config), "readiness", "paper-1", "--stop-drill"])
        # The bot runs in this process: its own log lines (the refusal it logged) are on stderr too.
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops:")]
        assert status == 1 and len(err) == 1 and "stop drill of paper-1 failed at halt: HTTP 401" in err[0], err
        assert commands_counted(bot, "flatten") == 0
    finally:
        await bot.stop()


def test_the_drill_runs_on_paper_bots_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = drill_config(tmp_path, 9, kind="freqtrade")
    assert main(["--config", str(config), "readiness", "paper-1", "--stop-drill"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["trading-ops: readiness: --stop-drill: runs on a paper bot only; paper-1 is of kind freqtrade"]
