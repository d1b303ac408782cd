"""What keeping the venue's dead man's switch armed costs a ccxt bot on Kraken's Starter tier; prints JSON.

A bot on the runtime (an idle strategy, the documented poll of a second) on CcxtBroker with ccxt's real kraken client,
on the Kraken-compatible gateway served in this process on a free loopback port with Kraken's Starter call counter
enforced per key. Measured twice in the same run, the switch on (the defaults: a 60 s timeout refreshed every 20 s)
and off, each for `--seconds` after the start's own spending has decayed: the switch's calls a minute, the points a
minute every private call spent from the bot's budget, its headroom (`tradingbot_rate_limit_headroom_ratio`, sampled
every 0.25 s: mean and minimum), and the calls the venue refused (0: the bot's estimate held).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt
from aiohttp import web
from prometheus_client import CollectorRegistry

# Run as a script, a benchmark has its own folder on the path: the repository's root too, for benchmarks.*.
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._shared.loopback_ports import free_port  # noqa: E402
from trading_ops.bot.runtime import BotRuntime  # noqa: E402
from trading_ops.config import parse_config  # noqa: E402
from trading_ops.db import migrate  # noqa: E402
from trading_ops.paper.gateway.kraken.gateway import KrakenGateway, create_app  # noqa: E402
from trading_ops.paper.venue import PaperVenue  # noqa: E402
from trading_ops.venues.call_counter import CallBudget, CounterLimiter  # noqa: E402
from trading_ops.venues.ccxt.rest import CcxtBroker  # noqa: E402

KEY, SECRET = "bench-key", base64.b64encode(b"the benchmark's gateway secret").decode()
TOKEN = "bench-control-token"
SETTLE_SECONDS = 20.0  # the start's reconciliation spends a burst; measured once it has decayed


class Idle:
    async def step(self, ctx: Any) -> None:
        return None


async def measure(tmp: Path, switch: bool, seconds: float) -> dict[str, Any]:
    url = f"sqlite:///{tmp / 'journal.db'}"
    migrate.upgrade(url)
    config = parse_config(
        {
            "database": {"url": url},
            "bot": {
                "venue": "kraken",
                "data_dir": str(tmp / "data"),
                "market_data_stale_seconds": 3600,
                "dead_man_switch": {"enabled": switch},
            },
        }
    )
    venue = PaperVenue(seed=7, volatility=0.0, tick_interval=1.0, partial_fill_probability=0.0)
    gateway = KrakenGateway(venue, {KEY: SECRET}, TOKEN, call_counter=CounterLimiter("starter"))
    runner = web.AppRunner(create_app(gateway))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    exchange = ccxt.kraken(
        {"apiKey": KEY, "secret": SECRET, "enableRateLimit": False, "urls": {"api": {"public": base, "private": base}}}
    )
    budget = CallBudget("starter")
    broker = CcxtBroker(exchange, ["BTC-USD"], poll_interval=1.0, quote_interval=1.0, call_budget=budget)
    bot = BotRuntime(config, broker, Idle(), symbols=["BTC-USD"], token=TOKEN, registry=CollectorRegistry())
    await bot.start("127.0.0.1", 0)
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        spent, calls = budget.spent, gateway.calls.get("CancelAllOrdersAfter", 0)
        samples = []
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            samples.append(budget.headroom())
            await asyncio.sleep(0.25)
        minutes = (time.monotonic() - started) / 60
        return {
            "switch": switch,
            "switch_calls_per_minute": round((gateway.calls.get("CancelAllOrdersAfter", 0) - calls) / minutes, 2),
            "points_per_minute": round((budget.spent - spent) / minutes, 2),
            "starter_decay_points_per_minute": round(budget.tier.decay * 60, 1),
            "headroom_mean": round(sum(samples) / len(samples), 3),
            "headroom_min": round(min(samples), 3),
            "venue_refused": gateway.call_counter.refused if gateway.call_counter else 0,
        }
    finally:
        await bot.stop()
        await runner.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="measured per run (default 120)")
    args = parser.parse_args()
    results = []
    for switch in (True, False):
        with tempfile.TemporaryDirectory(prefix="bench-dms-") as tmp:
            results.append(await measure(Path(tmp), switch, args.seconds))
    print(json.dumps({"benchmark": "dead_man_switch", "runs": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
