"""BotRuntime for a bot we did not write: the README's whole bot runs as a process of its own, and a custom strategy
on the paper venue gets the journal, the control API, the gate and a clean shutdown from the runtime alone."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import aiohttp
import yaml
from prometheus_client import CollectorRegistry
from system_binaries import REPO_ROOT

from tests.conftest import free_port
from tests.paper_helpers import TOKEN, control, counter_total, fast_config, get, wait_for
from trading_ops.bot.broker import OrderType, Side
from trading_ops.bot.runtime import BotRuntime
from trading_ops.bot.strategy import StrategyContext
from trading_ops.db import migrate
from trading_ops.paper.bot import make_venue

README = REPO_ROOT / "README.md"


def readme_bot() -> str:
    """The first Python block of the README's "Using the library in a bot" section."""
    section = README.read_text().split("## Using the library in a bot", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the section has no Python block"
    return match.group(1)


async def fills_of(port: int) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("tradingbot_fills_total"))


async def test_the_readme_bot_runs_trades_and_stops_cleanly(tmp_path: Path) -> None:
    """Needs nothing but the package: the README's bot, started as `python dip_bot.py config.yaml`."""
    source = readme_bot()
    assert "trading_ops.paper.bot import PaperBot" not in source and len(source.splitlines()) < 60
    script = tmp_path / "dip_bot.py"
    script.write_text(source)
    port = free_port()
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    migrate.upgrade(url)
    (tmp_path / "token").write_text(TOKEN)
    config = tmp_path / "config.yaml"
    settings = {
        "database": {"url": url},
        "bot": {
            "name": "dip-1",
            "strategy": "dip",
            "listen": {"host": "127.0.0.1", "port": port},
            "control_token_file": str(tmp_path / "token"),
            "data_dir": str(tmp_path / "data"),
            "market_data_stale_seconds": 2,
        },
        "paper": {"seed": 11, "tick_interval_seconds": 0.01, "volatility": 0.002, "reject_probability": 0},
    }
    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(config)], env=env, stderr=subprocess.PIPE)
    try:

        async def trading() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                return await fills_of(port) >= 2
            except aiohttp.ClientError:
                return False

        await wait_for(trading, timeout=60, interval=0.2)
        status, body = await control(port, "status")
        assert status == 200 and body["bot"] == "dip-1" and body["trading_allowed"] is True
        assert (await control(port, "pause"))[1]["state"] == "paused"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


class OneShot:
    """A third-party strategy: one buy, then nothing; it records what the runtime showed it."""

    def __init__(self) -> None:
        self.started = False
        self.steps = 0
        self.sent: list[object] = []

    async def on_start(self, ctx: StrategyContext) -> None:
        self.started = True

    async def step(self, ctx: StrategyContext) -> None:
        self.steps += 1
        quote = ctx.quote("ETH-USD")
        if quote is not None and not self.sent and ctx.order_refusal("ETH-USD", False) is None:
            self.sent.append(await ctx.submit("ETH-USD", Side.BUY, OrderType.MARKET, Decimal("0.1")))


async def test_a_custom_strategy_gets_journal_control_and_clean_shutdown_from_the_runtime(tmp_path: Path) -> None:
    config = fast_config(tmp_path)
    strategy = OneShot()
    venue = make_venue(config)
    bot = BotRuntime(
        config,
        venue,
        strategy,
        symbols=["ETH-USD"],
        token=TOKEN,
        registry=CollectorRegistry(),
        venue_task=venue.run,
    )
    port = await bot.start("127.0.0.1", 0)
    try:
        assert strategy.started

        async def journaled() -> bool:
            fills = await bot.journal.call(bot.journal.fills)
            return sum(f.quantity for f in fills) == Decimal("0.1")

        # Each fill is booked, journaled, then exported (the counter moves last); a market order may fill in parts.
        await wait_for(journaled)
        await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= 1)
        assert bot.book.position("ETH-USD") == Decimal("0.1")
        assert (await get(port, "/readyz"))[0] == 200
        status, body = await control(port, "flatten")
        assert status == 200 and body["state"] == "flattening"
        await wait_for(lambda: bot.inst.state.state.value == "paused", timeout=20)  # the runtime flattened it
        assert bot.book.position("ETH-USD") == 0
        assert (await control(port, "halt"))[0] == 200
        steps = strategy.steps
        await wait_for(lambda: strategy.steps > steps + 3)
        assert len(strategy.sent) == 1  # halted: the strategy still steps, nothing it may send goes out
    finally:
        await bot.stop()
    last = await asyncio.to_thread(bot.recovery_store.last_run)
    assert last is not None and last.clean_shutdown
    transitions = await asyncio.to_thread(bot.recovery_store.events, "state")
    assert [json.loads(e.detail)["after"] for e in transitions] == ["flattening", "paused", "halted"]
