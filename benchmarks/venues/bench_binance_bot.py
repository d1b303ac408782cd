"""A ccxt bot's broker on the gateway's Binance dialect, streamed against polled, in the same run; prints JSON.

The gateway (its own process, gateway_bench.serve) serves its Binance spot dialect (weights per IP, 6000 a minute, a
429 past them and a 418 for an IP that keeps calling) on a moving market (books change every 0.1 s). Two bots, each
a process of its own with its own key of the same account, get the broker a bot with `exchange: binance` gets from
its configuration (broker_from_config, the runtime's factory: ccxt's stock binance clients on the gateway's URLs, the
weight budget of Binance) and run the calls the runtime would: every fill answered by a balance lookup (as the
runtime's on_fill does):
- streamed (`ccxt.stream: true`, the default): ProStreamingCcxtBroker, fills over ccxt.pro's user data stream,
  books over the diff-depth stream, REST for the rest (the quote poll every second, the order poll every 15 s while
  the fills stream);
- polled (`ccxt.stream: false`): CcxtBroker, the order and quote polls every second.
Each bot's clients connect from a loopback address of their own (127.0.0.2, 127.0.0.3: Binance weighs per IP), so the
`X-MBX-USED-WEIGHT-1M` each broker's weight budget reads is that bot's alone, as on hosts of their own. A third key
places a market order every 0.3-1.5 s (jittered, so fills land anywhere in a poll's cycle) from 127.0.0.1.

Measured per bot: venue fill -> the broker's on_fill, p50 and p99 (the venue's execution time, one machine, one
clock); private REST calls per minute, by path; the weight used per minute (the largest `X-MBX-USED-WEIGHT-1M` the
weight budget read in each minute) against the limit, and the budget's headroom (sampled every second); the 429s and
418s; the process's CPU and peak RSS. Goals (DESIGN): streamed p50 <= 100 ms and >= 5x better than polled; private
REST calls halved; weight within the limit, never a 418.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import ccxt.pro as ccxtpro
import psutil
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerEvents
from trading_ops.config import parse_config
from trading_ops.paper.gateway.binance.client_urls import ccxt_urls
from trading_ops.venues.call_counter import BINANCE_WEIGHT_PER_MINUTE, WeightBudget
from trading_ops.venues.ccxt.factory import broker_from_config
from trading_ops.venues.ccxt.pro_broker import ProStreamingCcxtBroker
from trading_ops.venues.ccxt.rest import CcxtBroker

# Run as a script, a benchmark has its own folder on the path: the repository's root too, for benchmarks.*.
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._shared.gateway_bench import (  # noqa: E402
    FillClock,
    bot_results,
    count_private_calls,
    gateway_process,
    place_market_orders,
    running_bots,
    serve,
    summary,
    wait_up,
)

KEYS = ("benchPlacer", "benchStreamed", "benchPolled")
# Each bot's source address: Binance's weights are the IP's.
SOURCE = {"streamed": "127.0.0.2", "polled": "127.0.0.3"}
SYMBOLS = ["BTC-USD", "ETH-USD"]
GOAL_P50_MS = 100.0
GOAL_RATIO = 5.0
GOAL_CALLS = 0.5
STARTUP_SECONDS = 120.0
MINUTE = 60.0


def make_broker(kind: str, base: str) -> CcxtBroker:
    """The broker a bot with `exchange: binance` on the gateway gets from its configuration (the key and secret in
    the environment variables the configuration names by default)."""
    config = parse_config(
        {
            "ccxt": {
                "exchange": "binance",
                "urls": {"public": f"{base}/api/v3", "private": f"{base}/api/v3"},
                "symbols": SYMBOLS,
                "stream": kind == "streamed",
            }
        }
    )
    return broker_from_config(config)


def clients(broker: CcxtBroker) -> list[Any]:
    """The broker's ccxt clients: REST, and ccxt.pro's for the user stream and the books when it streams."""
    extra = [broker.pro, broker.book_pro] if isinstance(broker, ProStreamingCcxtBroker) else []
    return [broker.exchange, *(c for c in extra if c is not None)]


def from_address(client: Any, address: str) -> None:
    """`client`'s connections (REST and WebSocket: ccxt.pro opens its sockets on the same session) from `address`.
    ccxt closes the session with the client (it is its own: not given in its configuration)."""
    client.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


class WeightSeen:
    """The largest weight the budget read in each minute (Binance's windows are whole minutes)."""

    def __init__(self, budget: WeightBudget) -> None:
        self.budget = budget
        self.peaks: dict[float, int] = {}
        observe = budget.observe

        def observing(headers: Any) -> None:
            observe(headers)
            now = time.time()
            window = now - now % MINUTE
            self.peaks[window] = max(self.peaks.get(window, 0), budget.used())

        budget.observe = observing  # type: ignore[method-assign]

    def report(self, began: float, ended: float) -> dict[str, Any]:
        whole = [v for w, v in self.peaks.items() if w >= began and w + MINUTE <= ended]
        return {
            "weight_used_per_minute_max": max(self.peaks.values(), default=0),
            "weight_used_per_minute_mean": round(statistics.fmean(whole), 1) if whole else None,
            "weight_whole_minutes": len(whole),
            "weight_limit_per_minute": BINANCE_WEIGHT_PER_MINUTE,
            "refusals_429": self.budget.refusals,
            "bans_418": self.budget.bans,
            "calls_held": self.budget.held,
            "poll_cycles_skipped": self.budget.polls_skipped,
        }


def stream_health(registry: CollectorRegistry) -> dict[str, Any]:
    value = registry.get_sample_value
    return {
        "fills_first_seen": {
            s: value("tradingbot_stream_fills_first_seen_total", {"source": s}) for s in ("stream", "poll")
        },
    }


async def bot(kind: str, base: str, seconds: float) -> dict[str, Any]:
    """One bot's broker for `seconds`: when each fill reached it, its private REST calls, weight, CPU and memory."""
    registry = CollectorRegistry()
    broker = make_broker(kind, base)
    for client in clients(broker):
        from_address(client, SOURCE[kind])
    # After the weight budget's hook on the REST client: what it lets through. ccxt.pro's clients too (their REST).
    counters = [count_private_calls(client) for client in clients(broker)]
    assert broker.weight_budget is not None
    weight = WeightSeen(broker.weight_budget)
    broker.register_metrics(registry)  # as the runtime does before connecting
    clock = FillClock(broker)
    await broker.connect(BrokerEvents(on_fill=clock.on_fill, on_quote=clock.on_quote))
    if isinstance(broker, ProStreamingCcxtBroker):  # subscribed before the first fill
        assert broker.pro_fills is not None
        await asyncio.wait_for(broker.pro_fills.connected.wait(), 60)
        await asyncio.sleep(1.0)
    print("ready", flush=True)
    proc = psutil.Process()
    cpu = proc.cpu_times()
    began, started = time.time(), time.monotonic()
    before = sum(sum(c.values()) for c in counters)
    headroom: list[float] = []
    rss = 0
    try:
        while time.monotonic() - started < seconds:
            await asyncio.sleep(1.0)
            if (value := broker.rate_limit_headroom()) is not None:
                headroom.append(value)
            rss = max(rss, proc.memory_info().rss)
        elapsed = time.monotonic() - started
        used = proc.cpu_times()
        calls = sum(counters, Counter[str]())
        spent = sum(calls.values()) - before
        return {
            "seen": clock.seen,
            "private_rest_calls": spent,
            "private_rest_calls_per_minute": round(spent * 60 / elapsed, 1),
            "private_rest_calls_by_path": dict(calls),
            **weight.report(began, time.time()),
            "headroom_min": round(min(headroom), 3) if headroom else None,
            "headroom_mean": round(statistics.fmean(headroom), 3) if headroom else None,
            "cpu_percent": round(100 * (used.user + used.system - cpu.user - cpu.system) / elapsed, 1),
            "peak_rss_mb": round(rss / 2**20, 1),
            "quotes": clock.quotes,
            "orders_poll_interval_seconds": round(broker.orders_interval, 2),
            **(stream_health(registry) if kind == "streamed" else {}),
        }
    finally:
        await broker.close()


def placer_client(base: str, key: str, secret: str) -> Any:
    """ccxt's stock binance client on the gateway, no rate limiter of its own."""
    urls = ccxt_urls(base, ccxtpro.binance().urls["api"])
    return ccxt.binance({"apiKey": key, "secret": secret, "enableRateLimit": False, "urls": {"api": urls}})


async def place(base: str, keys: dict[str, str], seconds: float) -> dict[str, float]:
    """Market orders on ETH/USD for `seconds`; the venue's execution time of every trade of the account."""
    placer = placer_client(base, KEYS[0], keys[KEYS[0]])
    try:
        await place_market_orders(placer, seconds)
        executions: dict[str, float] = {}
        params: dict[str, Any] = {}
        while True:  # Binance's trades of a symbol, 1000 a page, from an id on
            page = await placer.fetch_my_trades("ETH/USD", None, 1000, params)
            executions |= {str(t["id"]): t["timestamp"] / 1000 for t in page}
            if len(page) < 1000:
                return executions
            params = {"fromId": max(int(t["id"]) for t in page) + 1}
    finally:
        await placer.close()


async def run(script: str, seconds: float, tail: float) -> dict[str, Any]:
    keys = {name: secrets.token_hex(16) for name in KEYS}
    with gateway_process(script, keys) as base:
        await wait_up(base, "bench", "YmVuY2g=")  # the gateway's markets (public: no key of its own needed)
        bots = {kind: (KEYS[i], keys[KEYS[i]]) for i, kind in ((1, "streamed"), (2, "polled"))}
        args = ("--seconds", str(seconds + tail), "--base", base)
        async with running_bots(script, bots, *args, startup=STARTUP_SECONDS) as procs:
            executions = await place(base, keys, seconds)
            results = await bot_results(procs)
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
    within = all(
        b["weight_used_per_minute_max"] <= b["weight_limit_per_minute"] and b["bans_418"] == 0
        for b in (streamed, polled)
    )
    return {
        "venue_fills": len(executions),
        "streamed": streamed,
        "polled": polled,
        "fill_seen_polled_over_streamed_p50": round(p50 / s50, 1) if s50 and p50 else None,
        "private_rest_calls_streamed_over_polled": calls_ratio,
        "weight_streamed_over_polled": (
            round(streamed["weight_used_per_minute_max"] / polled["weight_used_per_minute_max"], 2)
            if polled["weight_used_per_minute_max"]
            else None
        ),
        "goal_fill_met": bool(s50 is not None and p50 is not None and s50 <= GOAL_P50_MS and p50 >= GOAL_RATIO * s50),
        "goal_calls_met": calls_ratio is not None and calls_ratio <= GOAL_CALLS,
        "goal_weight_met": within,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="orders placed for this long")
    parser.add_argument(
        "--tail", type=float, default=20.0, help="the bots run this much longer than the orders (late polls)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30 s of orders, a 15 s tail")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bot", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base", default="", help=argparse.SUPPRESS)
    parser.add_argument("--key", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        # A moving market (books change every 0.1 s), the sells' ETH on the account, the keys the Binance dialect's.
        return serve(args.serve, {"ETH": Decimal(1000)}, tick_interval=0.1, volatility=0.0005, binance=True)
    if args.bot is not None:
        # The configuration's default variables for the key and secret; the secret never on the command line.
        os.environ["TRADING_OPS_CCXT_API_KEY"] = args.key
        os.environ["TRADING_OPS_CCXT_API_SECRET"] = sys.stdin.readline().strip()
        print(json.dumps(asyncio.run(bot(args.bot, args.base, args.seconds))))
        return 0
    seconds, tail = (30.0, 15.0) if args.quick else (args.seconds, args.tail)
    out = {
        "seconds": seconds,
        "tail_seconds": tail,
        "goal": f"streamed p50 <= {GOAL_P50_MS:g} ms and >= {GOAL_RATIO:g}x better than polled; private REST calls "
        f"<= {GOAL_CALLS:g}x polled; weight within the limit, never a 418",
        **asyncio.run(run(__file__, seconds, tail)),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
