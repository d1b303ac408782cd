"""A ccxt bot's broker streamed against polled, in the same run, at Kraken's Starter and Pro tiers; prints JSON.

Per tier, the gateway (its own process, gateway_bench.serve) keeps Kraken's REST call counter of that tier per key
and a moving market (books change every 0.1 s). Two bots, each a process of its own with its own key of the same
account, run the same broker calls as the runtime would: a call budget of the tier, every fill answered by a balance
lookup (as the runtime's on_fill does), the dead man's switch refreshed every DMS_REFRESH_SECONDS:
- streamed: StreamingCcxtBroker (fills on the private WebSocket v2, books on the public one, the switch over the
  socket, REST polls as the fallback at STREAMED_POLL_SECONDS);
- polled: CcxtBroker (REST polls at the interval its call budget allows).
A third key places a market order every 0.3-1.5 s (jittered, so fills land anywhere in a poll's cycle). Measured per
bot: venue fill -> the broker's on_fill, p50 and p99 (the venue's execution time, one machine, one clock); private REST
calls per minute and the call budget's headroom (sampled every second); the process's CPU and peak RSS.
Goals (DESIGN): streamed p50 <= 100 ms and >= 5x better than polled; private REST calls halved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerError, BrokerEvents
from trading_ops.venues.call_counter import CallBudget
from trading_ops.venues.ccxt.rest import CcxtBroker
from trading_ops.venues.ccxt.streaming import StreamingCcxtBroker

# Run as a script, a benchmark has its own folder on the path: the repository's root too, for benchmarks.*.
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._shared.gateway_bench import (  # noqa: E402
    FillClock,
    bot_results,
    count_private_calls,
    gateway_process,
    kraken,
    new_keys,
    place_market_orders,
    running_bots,
    serve,
    summary,
    urls,
    wait_up,
)

KEYS = ("bench-placer", "bench-streamed", "bench-polled")
SYMBOLS = ["BTC-USD", "ETH-USD"]
DMS_REFRESH_SECONDS = 10.0
DMS_TIMEOUT_SECONDS = 60
GOAL_P50_MS = 100.0
GOAL_RATIO = 5.0
GOAL_CALLS = 0.5
STARTUP_SECONDS = 120.0


def make_broker(kind: str, base: str, key: str, secret: str, tier: str, registry: CollectorRegistry) -> CcxtBroker:
    exchange = kraken(base, key, secret)
    if kind == "streamed":
        ws = urls(base)["ws"]
        return StreamingCcxtBroker(
            exchange,
            SYMBOLS,
            private_url=ws["privateV2"],
            public_url=ws["publicV2"],
            registry=registry,
            call_budget=CallBudget(tier),
        )
    return CcxtBroker(exchange, SYMBOLS, call_budget=CallBudget(tier))


def stream_health(registry: CollectorRegistry) -> dict[str, Any]:
    value = registry.get_sample_value
    return {
        "fills_first_seen": {
            s: value("tradingbot_stream_fills_first_seen_total", {"source": s}) for s in ("stream", "poll")
        },
        "book_checksum_failures": sum(
            value("tradingbot_stream_checksum_failures_total", {"symbol": s}) or 0 for s in ("BTC/USD", "ETH/USD")
        ),
    }


async def bot(kind: str, base: str, key: str, secret: str, tier: str, seconds: float) -> dict[str, Any]:
    """One bot's broker for `seconds`: when each fill reached it, its private REST calls, headroom, CPU and memory."""
    registry = CollectorRegistry()
    broker = make_broker(kind, base, key, secret, tier, registry)
    calls = count_private_calls(broker.exchange)
    clock = FillClock(broker)
    await broker.connect(BrokerEvents(on_fill=clock.on_fill, on_quote=clock.on_quote))
    if isinstance(broker, StreamingCcxtBroker):  # subscribed before the first fill
        streams = [s for s in (broker.stream, broker.public) if s is not None]
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in streams)), 60)
        await asyncio.sleep(1.0)
    print("ready", flush=True)
    proc = psutil.Process()
    cpu = proc.cpu_times()
    started = next_switch = time.monotonic()
    before = sum(calls.values())
    headroom: list[float] = []
    rss = 0
    switch_over: Counter[str] = Counter()
    try:
        while time.monotonic() - started < seconds:
            if time.monotonic() >= next_switch:  # the runtime keeps the dead man's switch armed
                next_switch += DMS_REFRESH_SECONDS
                try:
                    await broker.cancel_all_orders_after(DMS_TIMEOUT_SECONDS)
                    switch_over[getattr(broker, "switch_over", "") or "rest"] += 1
                except BrokerError:
                    switch_over["failed"] += 1
            await asyncio.sleep(1.0)
            if (value := broker.rate_limit_headroom()) is not None:
                headroom.append(value)
            rss = max(rss, proc.memory_info().rss)
        elapsed = time.monotonic() - started
        used = proc.cpu_times()
        spent = sum(calls.values()) - before
        return {
            "seen": clock.seen,
            "private_rest_calls": spent,
            "private_rest_calls_per_minute": round(spent * 60 / elapsed, 1),
            "private_rest_calls_by_method": dict(calls),
            "headroom_min": round(min(headroom), 3) if headroom else None,
            "headroom_mean": round(statistics.fmean(headroom), 3) if headroom else None,
            "cpu_percent": round(100 * (used.user + used.system - cpu.user - cpu.system) / elapsed, 1),
            "peak_rss_mb": round(rss / 2**20, 1),
            "quotes": clock.quotes,
            "dead_man_switch_over": dict(switch_over),
            "orders_poll_interval_seconds": round(broker.orders_interval, 2),
            **(stream_health(registry) if kind == "streamed" else {}),
        }
    finally:
        await broker.close()


async def place(base: str, keys: dict[str, str], seconds: float) -> dict[str, float]:
    """Market orders on ETH/USD for `seconds`; the venue's execution time of every trade of the account."""
    placer = kraken(base, KEYS[0], keys[KEYS[0]])
    try:
        await place_market_orders(placer, seconds)
        executions: dict[str, float] = {}
        while True:  # Kraken's trade history, 50 a page; on the placer's own counter
            page = await placer.fetch_my_trades(None, None, None, {"ofs": len(executions)})
            executions |= {str(t["id"]): float(t["info"]["time"]) for t in page}
            if len(page) < 50:
                return executions
    finally:
        await placer.close()


async def run_tier(script: str, tier: str, seconds: float, tail: float) -> dict[str, Any]:
    keys = new_keys(KEYS)
    with gateway_process(script, keys, "--tier", tier) as base:
        await wait_up(base, KEYS[0], keys[KEYS[0]])
        async with running_bots(
            script,
            {kind: (KEYS[i], keys[KEYS[i]]) for i, kind in ((1, "streamed"), (2, "polled"))},
            "--tier",
            tier,
            "--seconds",
            str(seconds + tail),
            "--base",
            base,
            startup=STARTUP_SECONDS,
        ) as bots:
            executions = await place(base, keys, seconds)
            results = await bot_results(bots)
    per_bot: dict[str, Any] = {}
    for kind, result in results.items():
        seen = result.pop("seen")
        latencies = [seen[t] - executions[t] for t in executions if t in seen]
        per_bot[kind] = {"fill_seen": summary(latencies), "fills_missed": len(executions) - len(latencies), **result}
    streamed, polled = per_bot["streamed"], per_bot["polled"]
    s50, p50 = streamed["fill_seen"].get("p50_ms"), polled["fill_seen"].get("p50_ms")
    calls_ratio = (
        round(streamed["private_rest_calls"] / polled["private_rest_calls"], 2)
        if polled["private_rest_calls"]
        else None
    )
    return {
        "venue_fills": len(executions),
        "streamed": streamed,
        "polled": polled,
        "fill_seen_polled_over_streamed_p50": round(p50 / s50, 1) if s50 and p50 else None,
        "private_rest_calls_streamed_over_polled": calls_ratio,
        "goal_fill_met": bool(s50 is not None and p50 is not None and s50 <= GOAL_P50_MS and p50 >= GOAL_RATIO * s50),
        "goal_calls_met": calls_ratio is not None and calls_ratio <= GOAL_CALLS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="orders placed for this long, per tier")
    parser.add_argument(
        "--tail", type=float, default=60.0, help="the bots run this much longer than the orders (late polls)"
    )
    parser.add_argument("--tiers", default="starter,pro")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tier", default="starter", help=argparse.SUPPRESS)
    parser.add_argument("--bot", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base", default="", help=argparse.SUPPRESS)
    parser.add_argument("--key", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        # A moving market (books change every 0.1 s), the sells' ETH on the account, the tier's call counter.
        return serve(args.serve, {"ETH": Decimal(1000)}, call_counter=args.tier, tick_interval=0.1, volatility=0.0005)
    if args.bot is not None:
        secret = sys.stdin.readline().strip()  # never on the command line
        result = asyncio.run(bot(args.bot, args.base, args.key, secret, args.tier, args.seconds))
        print(json.dumps(result))
        return 0
    out = {
        "seconds_per_tier": args.seconds,
        "goal": f"streamed p50 <= {GOAL_P50_MS:g} ms and >= {GOAL_RATIO:g}x better than polled; private REST calls "
        f"<= {GOAL_CALLS:g}x polled",
    }
    for tier in args.tiers.split(","):
        out[tier] = asyncio.run(run_tier(__file__, tier, args.seconds, args.tail))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
