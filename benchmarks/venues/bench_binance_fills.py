"""A fill on the gateway's Binance dialect, seen by a client streaming it against one polling for it, in the same run;
with the request weight and private REST calls each spends; prints JSON.

The gateway (its own process: its work is not on the clients' event loop) fills a market order placed over REST by
one Binance key every 0.2-0.6 s (jittered, so a fill lands anywhere in a poll's cycle). Two more keys of the same
account watch for the fills:
- streamed: ccxt.pro's stock binance client, `watch_my_trades` over the WebSocket API's user data stream;
- polled: ccxt's stock binance client calling `fetch_my_trades` every `--poll-interval` seconds (CcxtBroker's default).
Each fill's latency is the time a watcher first saw its trade id minus the venue's execution time (one machine, one
clock). Weight: the largest `X-MBX-USED-WEIGHT-1M` the gateway reported to each client in a minute (all the clients
share one IP: the figure is the IP's), against the limit; a 418 would end the run. Goal (DESIGN): streamed p50 <= 100
ms, >= 5x better than polled; weight within the limit, never a 418.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt
import ccxt.pro as ccxtpro

from trading_ops.paper.gateway.binance.client_urls import ccxt_urls
from trading_ops.venues.ccxt.rest import POLL_INTERVAL_SECONDS

# Run as a script, a benchmark has its own folder on the path: the repository's root too, for benchmarks.*.
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._shared.gateway_bench import gateway_process, serve, summary  # noqa: E402

STARTUP_SECONDS = 60.0
GOAL_P50_MS = 100.0
GOAL_RATIO = 5.0
KEYS = ("benchPlacer", "benchStream", "benchPoll")


def client(base: str, key: str, secret: str, *, pro: bool = False) -> Any:
    make = ccxtpro.binance if pro else ccxt.binance
    urls = ccxt_urls(base, ccxtpro.binance().urls["api"])
    return make({"apiKey": key, "secret": secret, "enableRateLimit": False, "timeout": 10000, "urls": {"api": urls}})


def weight(ex: Any, peak: dict[str, int]) -> None:
    headers = ex.last_response_headers or {}
    used = headers.get("X-MBX-USED-WEIGHT-1M") or headers.get("x-mbx-used-weight-1m")
    if used is not None:
        peak["max"] = max(peak["max"], int(used))


async def stream(ex: Any, seen: dict[str, float], execs: dict[str, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for trade in await ex.watch_my_trades("ETH/USD"):
            now = time.time()
            if trade["id"] not in seen:
                seen[trade["id"]] = now
                execs[trade["id"]] = trade["timestamp"] / 1000


async def poll(ex: Any, interval: float, seen: dict[str, float], stop: asyncio.Event, peak: dict[str, int]) -> int:
    calls = 0
    while not stop.is_set():
        started = time.monotonic()
        trades = await ex.fetch_my_trades("ETH/USD", int((time.time() - 30) * 1000))
        calls += 1
        weight(ex, peak)
        now = time.time()
        for trade in trades:
            seen.setdefault(trade["id"], now)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    return calls


async def run(base: str, keys: dict[str, str], fills: int, interval: float) -> dict[str, Any]:
    placer, poller = client(base, KEYS[0], keys[KEYS[0]]), client(base, KEYS[2], keys[KEYS[2]])
    streamer = client(base, KEYS[1], keys[KEYS[1]], pro=True)
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            await placer.load_markets()
            break
        except ccxt.NetworkError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    streamed: dict[str, float] = {}
    polled: dict[str, float] = {}
    execs: dict[str, float] = {}
    peak = {"max": 0}
    stop = asyncio.Event()
    began = time.monotonic()
    try:
        watching = asyncio.create_task(stream(streamer, streamed, execs, stop))
        await asyncio.sleep(1.0)  # subscribed before the first fill
        polling = asyncio.create_task(poll(poller, interval, polled, stop, peak))
        rng = secrets.SystemRandom()
        for i in range(fills):
            await placer.create_order("ETH/USD", "market", "buy" if i % 2 == 0 else "sell", 0.01)
            weight(placer, peak)
            await asyncio.sleep(rng.uniform(0.2, 0.6))
        end = time.monotonic() + 30
        while time.monotonic() < end and min(len(streamed), len(polled)) < fills:
            await asyncio.sleep(0.1)
        stop.set()
        calls = await polling
        watching.cancel()
    finally:
        await placer.close()
        await poller.close()
        await streamer.close()
    minutes = (time.monotonic() - began) / 60
    common = [t for t in execs if t in polled]
    s = summary([streamed[t] - execs[t] for t in common])
    p = summary([polled[t] - execs[t] for t in common])
    return {
        "fills": fills,
        "fills_streamed": len(streamed),
        "fills_polled": len(polled),
        "streamed": s,
        "polled": {**p, "interval_seconds": interval},
        "polled_over_streamed_p50": round(p["p50_ms"] / s["p50_ms"], 1) if s["p50_ms"] else None,
        "private_rest_calls_per_minute": {
            "polling_client": round(calls / minutes, 1),
            "streaming_client": 0,  # its fills come over the user data stream; it subscribed once
        },
        "weight_used_per_minute_max": peak["max"],
        "weight_limit_per_minute": 6000,
        "goal": f"streamed p50 <= {GOAL_P50_MS:g} ms and >= {GOAL_RATIO:g}x better than polled; weight within limit",
        "goal_met": s["p50_ms"] <= GOAL_P50_MS and p["p50_ms"] >= GOAL_RATIO * s["p50_ms"] and peak["max"] <= 6000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL_SECONDS)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        # A still market, ETH on the account (a spot account sells what it holds), the keys the Binance dialect's.
        return serve(args.serve, {"ETH": Decimal(1000)}, binance=True)
    keys = {name: secrets.token_hex(16) for name in KEYS}
    with gateway_process(__file__, keys) as base:
        result = asyncio.run(run(base, keys, args.fills, args.poll_interval))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
