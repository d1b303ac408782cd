"""Benchmark a ramp's demotion: loss-limit breach -> the narrower limits enforced, and -> TradingBotRampDemoted firing.

A real paper bot (the paper venue in-process) at the second stage of a three-stage ramp holds a position allowed only
there; the venue's price gaps down 5 % (about 100 lost against a daily loss limit of 40). Measured from the gap: when
the bot's order gate holds the first stage's limits (the ramp's change applied to the RiskEngine), when the gate
refuses an order the second stage allowed, and when a real Prometheus (scraping the bot every second, evaluating the
shipped prometheus/rules/tradingbot-trading.yml every second) has TradingBotRampDemoted pending, then firing (its
`for:` is 1m). Alertmanager's group_wait (10 s for a page) comes on top. Prints JSON.

Usage: python benchmarks/bench_ramp_demotion.py [--rounds 1]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from paper_helpers import IdleStrategy, fast_config, placed, wait_for  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_server import start_prometheus  # noqa: E402
from server_process import stop, wait_http  # noqa: E402

from benchmarks.bench_ports import free_port  # noqa: E402
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


async def one_round(tmp: Path) -> dict[str, Any]:
    port, prom_port = free_port(), free_port()
    (tmp / "prom").mkdir()
    prom_config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "prometheus" / "rules" / "tradingbot-trading.yml")],
        "scrape_configs": [{"job_name": "tradingbot", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }
    (tmp / "prom" / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
    proc = start_prometheus(tmp / "prom" / "prometheus.yml", tmp / "prom" / "data", prom_port)
    prometheus = f"http://127.0.0.1:{prom_port}"
    config = fast_config(tmp / "bot", partial_fill_probability=0.0)
    config.bot.risk.daily_loss_limit = 0.0
    config.bot.ramp = parse_config({"bot": {"ramp": {"stages": STAGES}}}).bot.ramp
    bot = PaperBot(config, token="bench-token-0123456789", registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    applied: list[float] = []
    try:
        wait_http(f"{prometheus}/-/ready", proc=proc, deadline=30)
        await bot.start("127.0.0.1", port)
        await wait_for(lambda: bot.trading_allowed and not bot.market_data_stale(SYMBOL))
        bot.ramp.since -= 2 * 86400
        bot.ramp.promote("bigger", by="bench", why="bench")
        on_change = bot.ramp.on_change
        assert on_change is not None

        def timed() -> None:
            on_change()
            applied.append(time.perf_counter())

        bot.ramp.on_change = timed
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
            start = time.perf_counter()
            await bot.broker.gap_price(SYMBOL, -0.05)  # type: ignore[attr-defined]
            await wait_for(lambda: applied, timeout=30)
            enforced = applied[0] - start
            gate = bot.gate.refusal(SYMBOL, False, bot.book, None)
            refused_at = time.perf_counter() - start
            pending, firing = await alert_times(session, prometheus, start)
        return {
            "breach_to_limits_enforced_seconds": round(enforced, 6),
            "breach_to_gate_refusal_checked_seconds": round(refused_at, 6),
            "gate_refusal_after_demotion": gate.reason if gate else None,
            "stage_after": bot.ramp.number,
            "limit_after": bot.risk.limits.max_position_notional,
            "breach_to_alert_pending_seconds": round(pending, 3) if pending is not None else None,
            "breach_to_alert_firing_seconds": round(firing, 3),
        }
    finally:
        await bot.stop()
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            rounds.append(asyncio.run(one_round(Path(tmp))))
    print(
        json.dumps(
            {
                "benchmark": "ramp_demotion",
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
