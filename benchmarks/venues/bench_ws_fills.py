"""A fill at the venue, seen by a client streaming it against one polling for it, in the same run; prints JSON.

The gateway (`KrakenGateway`, its own process: its work is not on the clients' event loop) fills a market order
placed over REST by one key every 0.2-0.6 s (jittered, so a fill lands anywhere in a poll's cycle). Two more keys of
the same account watch for the fills:
- streamed: ccxt.pro's stock kraken client, `watch_my_trades` on the gateway's private WebSocket v2;
- polled: ccxt's REST client calling `fetch_my_trades` every `--poll-interval` seconds (CcxtBroker's default poll);
- and as a bot sees them (its broker's on_fill): StreamingCcxtBroker (fills streamed, polls at the same interval)
  against CcxtBroker (polls only).
Each fill's latency is the time a watcher first saw its trade id minus the venue's execution time (one machine, one
clock). Goal (DESIGN): streamed p50 <= 100 ms and >= 5x better than polled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt
import ccxt.pro as ccxtpro
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerEvents, VenueFill
from trading_ops.venues.ccxt.rest import POLL_INTERVAL_SECONDS, CcxtBroker
from trading_ops.venues.ccxt.streaming import StreamingCcxtBroker

# Run as a script, a benchmark has its own folder on the path: the repository's root too, for benchmarks.*.
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._shared.gateway_bench import gateway_process, kraken, new_keys, serve, summary, urls  # noqa: E402

STARTUP_SECONDS = 60.0
GOAL_P50_MS = 100.0
GOAL_RATIO = 5.0
KEYS = ("bench-placer", "bench-stream", "bench-poll", "bench-broker-stream", "bench-broker-poll")


def executed(info_time: Any) -> float:
    """A trade's execution time: v2's RFC 3339 string, or REST's Unix seconds."""
    if isinstance(info_time, str):
        return datetime.fromisoformat(info_time.replace("Z", "+00:00")).timestamp()
    return float(info_time)


async def stream(ex: ccxtpro.kraken, seen: dict[str, float], execs: dict[str, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for trade in await ex.watch_my_trades():
            now = time.time()
            if trade["id"] not in seen:
                seen[trade["id"]] = now
                execs[trade["id"]] = executed(trade["info"]["timestamp"])


async def poll(ex: ccxt.kraken, interval: float, seen: dict[str, float], stop: asyncio.Event) -> int:
    calls = 0
    while not stop.is_set():
        started = time.monotonic()
        trades = await ex.fetch_my_trades(None, int((time.time() - 30) * 1000))
        calls += 1
        now = time.time()
        for trade in trades:
            seen.setdefault(trade["id"], now)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    return calls


async def connected_bots(
    base: str, keys: dict[str, str], interval: float, by_bot: dict[str, dict[str, float]]
) -> list[CcxtBroker]:
    """The two bots' brokers, connected: each records when its on_fill first told it of a trade."""

    def recorder(seen: dict[str, float]) -> BrokerEvents:
        async def on_fill(fill: VenueFill) -> None:
            seen.setdefault(fill.trade_id, time.time())

        return BrokerEvents(on_fill=on_fill)

    def exchange(key: str) -> ccxt.kraken:
        return kraken(base, key, keys[key])

    streaming = StreamingCcxtBroker(
        exchange(KEYS[3]),
        ["ETH-USD"],
        private_url=urls(base)["ws"]["privateV2"],
        registry=CollectorRegistry(),
        poll_interval=interval,
    )
    polling = CcxtBroker(exchange(KEYS[4]), ["ETH-USD"], poll_interval=interval)
    await streaming.connect(recorder(by_bot["streaming_broker"]))
    await polling.connect(recorder(by_bot["polling_broker"]))
    return [streaming, polling]


async def run(base: str, keys: dict[str, str], fills: int, interval: float) -> dict[str, Any]:
    placer, poller = kraken(base, KEYS[0], keys[KEYS[0]]), kraken(base, KEYS[2], keys[KEYS[2]])
    streamer = kraken(base, KEYS[1], keys[KEYS[1]], pro=True)
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
    by_bot: dict[str, dict[str, float]] = {"streaming_broker": {}, "polling_broker": {}}
    brokers = await connected_bots(base, keys, interval, by_bot)
    stop = asyncio.Event()
    try:
        watching = asyncio.create_task(stream(streamer, streamed, execs, stop))
        await asyncio.sleep(1.0)  # subscribed before the first fill
        polling = asyncio.create_task(poll(poller, interval, polled, stop))
        rng = secrets.SystemRandom()
        placed = []
        for i in range(fills):
            order = await placer.create_order("ETH/USD", "market", "buy" if i % 2 == 0 else "sell", 0.01)
            placed.append(order["id"])
            await asyncio.sleep(rng.uniform(0.2, 0.6))
        end = time.monotonic() + 30
        while time.monotonic() < end and min(map(len, (streamed, polled, *by_bot.values()))) < fills:
            await asyncio.sleep(0.1)
        stop.set()
        calls = await polling
        watching.cancel()
    finally:
        for broker in brokers:
            await broker.close()
            await broker.exchange.close()
        await placer.close()
        await poller.close()
        await streamer.close()
    common = [t for t in execs if t in polled]
    stream_lat = [streamed[t] - execs[t] for t in common]
    poll_lat = [polled[t] - execs[t] for t in common]
    s, p = summary(stream_lat), summary(poll_lat)
    bots = {name: summary([seen[t] - execs[t] for t in execs if t in seen]) for name, seen in by_bot.items()}
    bs, bp = bots["streaming_broker"], bots["polling_broker"]
    return {
        "orders": len(placed),
        "fills_streamed": len(streamed),
        "fills_polled": len(polled),
        "streamed": s,
        "polled": {**p, "interval_seconds": interval, "rest_calls": calls},
        "polled_over_streamed_p50": round(p["p50_ms"] / s["p50_ms"], 1) if s["p50_ms"] else None,
        "bot_streaming_broker": bs,
        "bot_polling_broker": bp,
        "bot_polled_over_streamed_p50": round(bp["p50_ms"] / bs["p50_ms"], 1) if bs["p50_ms"] else None,
        "goal": f"streamed p50 <= {GOAL_P50_MS:g} ms and >= {GOAL_RATIO:g}x better than polled",
        "goal_met": s["p50_ms"] <= GOAL_P50_MS and p["p50_ms"] >= GOAL_RATIO * s["p50_ms"],
        "goal_met_by_the_bot": bs["p50_ms"] <= GOAL_P50_MS and bp["p50_ms"] >= GOAL_RATIO * bs["p50_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL_SECONDS)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        # A still venue; the sells' ETH on the account (a spot account sells what it holds).
        return serve(args.serve, {"ETH": Decimal(1000)})
    keys = new_keys(KEYS)
    with gateway_process(__file__, keys) as base:
        result = asyncio.run(run(base, keys, args.fills, args.poll_interval))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
