"""Benchmark a ramp's demotion: breach -> the narrower limits enforced, and -> TradingBotRampDemoted firing.

A real paper bot (the paper venue in-process) at the second stage of a three-stage ramp; a real Prometheus scrapes it
every second and evaluates the shipped prometheus/rules/tradingbot-trading.yml every second. The breach, by --cause:

- loss_limit: the bot holds a position allowed only at stage 2; the venue's price gaps down 5 % (about 100 lost
  against a daily loss limit of 40). The breach is the gap.
- stream_down: the venue drops both channels and keeps them down; bot.ramp.stream_down_for is 2 s. The breach is the
  moment the outage reaches 2 s.
- crash_loop: the bot's process dies without a clean shutdown (its heartbeat stops, as a kill -9's does) and starts
  again on the same port, twice since it took stage 2; bot.ramp.crash_loop_crashes is 2. The breach is the start that
  finds the second crash.

Measured from the breach: when the bot's order gate holds the first stage's limits (the ramp's change applied to the
RiskEngine), and when Prometheus has TradingBotRampDemoted pending, then firing (its `for:` is 1m). Alertmanager's
group_wait (10 s for a page) comes on top. Prints JSON.

Usage: python benchmarks/bot/bench_ramp_demotion.py [--rounds 1] [--cause loss_limit|stream_down|crash_loop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from paper_helpers import IdleStrategy, fast_config, placed, wait_for  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_server import start_prometheus  # noqa: E402
from server_process import stop, wait_http  # noqa: E402

from benchmarks._shared.loopback_ports import free_port  # noqa: E402
from trading_ops.bot.broker import OrderType, Side  # noqa: E402
from trading_ops.config import parse_config  # noqa: E402
from trading_ops.paper.bot import PaperBot  # noqa: E402

SYMBOL = "BTC-USD"
STAGES = [
    {"name": "small", "max_position_notional": 1000, "symbols": [SYMBOL], "daily_loss_limit": 40, "min_time": "1d"},
    {"name": "bigger", "max_position_notional": 2500, "symbols": [SYMBOL], "daily_loss_limit": 40, "min_time": "1d"},
    {"name": "two-pairs", "max_position_notional": 2500, "symbols": [SYMBOL, "ETH-USD"], "daily_loss_limit": 40},
]
ALERT = "TradingBotRampDemoted"


def size_for(bot: PaperBot, notional: float) -> Decimal:
    mid = bot.broker.quote(SYMBOL).mid  # type: ignore[attr-defined]
    return (Decimal(str(notional)) / mid).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)


async def alert_state(session: aiohttp.ClientSession, prometheus: str) -> str | None:
    async with session.get(f"{prometheus}/api/v1/alerts") as resp:
        alerts = (await resp.json())["data"]["alerts"]
    states = [a["state"] for a in alerts if a["labels"].get("alertname") == ALERT]
    return "firing" if "firing" in states else (states[0] if states else None)


async def alert_times(session: aiohttp.ClientSession, prometheus: str, start: float) -> tuple[float | None, float]:
    """Seconds from `start` until the alert was seen pending (None if never seen so), then firing."""
    pending: float | None = None
    deadline = time.monotonic() + 180
    while True:
        state = await alert_state(session, prometheus)
        now = time.perf_counter() - start
        if state == "pending" and pending is None:
            pending = now
        if state == "firing":
            return pending, now
        assert time.monotonic() < deadline, "TradingBotRampDemoted never fired"
        await asyncio.sleep(0.1)


STREAM_DOWN_FOR = 2.0
CRASH_TIMEOUT = 0.2


async def breach(bot: PaperBot, cause: str, new_bot: Any, port: int) -> tuple[PaperBot, float]:
    """Cause the breach; the bot that runs after it, and when the breach happened (perf_counter)."""
    if cause == "loss_limit":
        start = time.perf_counter()
        await bot.broker.gap_price(SYMBOL, -0.05)  # type: ignore[attr-defined]
    elif cause == "stream_down":
        await bot.broker.drop_connection()  # type: ignore[attr-defined]
        start = time.perf_counter() + STREAM_DOWN_FOR  # the outage reaches bot.ramp.stream_down_for
    else:  # crash_loop: the run at stage 2 and the next die without a clean shutdown; the start after finds the two
        # crashes since the stage was taken (the run that took it started before it: not counted)
        for started in range(3):
            await bot._abandon()
            bot = new_bot()
            if started < 2:
                await bot.start("127.0.0.1", port)
        start = time.perf_counter()
        await bot.start("127.0.0.1", port)
    return bot, start


def prometheus_for(tmp: Path, port: int, prom_port: int) -> Any:
    """A Prometheus scraping the bot's `port` every second, the shipped trading rules evaluated every second."""
    (tmp / "prom").mkdir()
    prom_config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "prometheus" / "rules" / "tradingbot-trading.yml")],
        "scrape_configs": [{"job_name": "tradingbot", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }
    (tmp / "prom" / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
    return start_prometheus(tmp / "prom" / "prometheus.yml", tmp / "prom" / "data", prom_port)


async def one_round(tmp: Path, cause: str) -> dict[str, Any]:
    port, prom_port = free_port(), free_port()
    proc = prometheus_for(tmp, port, prom_port)
    prometheus = f"http://127.0.0.1:{prom_port}"
    config = fast_config(tmp / "bot", partial_fill_probability=0.0)
    config.bot.risk.daily_loss_limit = 0.0
    ramp = {"stages": STAGES, "stream_down_for": f"{STREAM_DOWN_FOR:g}s", "crash_loop_crashes": 2}
    config.bot.ramp = parse_config({"bot": {"ramp": ramp}}).bot.ramp
    config.recovery.crash_timeout_seconds = CRASH_TIMEOUT
    applied: list[float] = []
    bots: list[PaperBot] = []

    def new_bot() -> PaperBot:
        bot = PaperBot(config, token="bench-token-0123456789", registry=CollectorRegistry())
        bot.strategy = IdleStrategy()  # type: ignore[assignment]
        on_change = bot.ramp.on_change
        assert on_change is not None

        def timed() -> None:
            on_change()
            applied.append(time.perf_counter())

        bot.ramp.on_change = timed
        bots.append(bot)
        return bot

    try:
        wait_http(f"{prometheus}/-/ready", proc=proc, deadline=30)
        bot = new_bot()
        await bot.start("127.0.0.1", port)
        await wait_for(lambda: bot.trading_allowed and not bot.market_data_stale(SYMBOL))
        bot.ramp.since -= 2 * 86400
        bot.ramp.promote("bigger", by="bench", why="bench")
        applied.clear()
        if cause == "loss_limit":
            await placed(bot, SYMBOL, Side.BUY, OrderType.MARKET, size_for(bot, 2000))
            await wait_for(lambda: bot.book.position(SYMBOL) > 0)
        async with aiohttp.ClientSession() as session:
            # Prometheus has seen the bot at stage 2 before the breach.
            deadline = time.monotonic() + 30
            while True:
                async with session.get(f"{prometheus}/api/v1/query", params={"query": "tradingbot_ramp_stage"}) as r:
                    result = (await r.json())["data"]["result"]
                if result and result[0]["value"][1] == "2":
                    break
                assert time.monotonic() < deadline, "Prometheus never saw stage 2"
                await asyncio.sleep(0.2)
            bot, start = await breach(bot, cause, new_bot, port)
            await wait_for(lambda: applied, timeout=30)
            enforced = applied[0] - start
            limit_after = bot.risk.limits.max_position_notional
            pending, firing = await alert_times(session, prometheus, start)
        return {
            "cause": cause,
            "breach_to_limits_enforced_seconds": round(enforced, 6),
            "stage_after": bot.ramp.number,
            "limit_after": limit_after,
            "history_last": {k: bot.ramp.history[-1][k] for k in ("from", "to", "cause", "why")},
            "breach_to_alert_pending_seconds": round(pending, 3) if pending is not None else None,
            "breach_to_alert_firing_seconds": round(firing, 3),
        }
    finally:
        await bots[-1].stop()
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cause", choices=("loss_limit", "stream_down", "crash_loop"), default="loss_limit")
    args = parser.parse_args()
    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            rounds.append(asyncio.run(one_round(Path(tmp), args.cause)))
    print(
        json.dumps(
            {
                "benchmark": "ramp_demotion",
                "cause": args.cause,
                "machine": platform.machine(),
                "rounds": rounds,
                "median_breach_to_limits_enforced_seconds": statistics.median(
                    r["breach_to_limits_enforced_seconds"] for r in rounds
                ),
                "median_breach_to_alert_firing_seconds": statistics.median(
                    r["breach_to_alert_firing_seconds"] for r in rounds
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
