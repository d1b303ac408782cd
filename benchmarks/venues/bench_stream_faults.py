"""Stream faults at the gateway, detected and healed by the streaming client alone; prints JSON.

The gateway (its own process) ticks its market every `--tick` seconds; trading_ops.venues.ccxt.kraken_stream keeps a
book subscription (BTC/USD, depth 10, its cadence the tick) on its public WebSocket v2. Each round injects, in turn:
- ws_silent_channel (the book acked then silent, heartbeats flowing): fault -> detected (the client resubscribes)
  -> healed (book messages again, the book in sync). Goal (DESIGN): detected <= the channel's silence timeout + 1 s,
  healed <= 10 s after detection;
- ws_book_checksum once (one update's checksum wrong): fault -> detected (the failure counted) -> resynced (the book
  in sync again from a new snapshot);
- ws_silent_socket (nothing at all, pongs included): fault -> detected (the client reconnects) -> healed.
Times are from the fault command's answer, by polling the client's metrics every 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from trading_ops.bot.streams.health import silence_timeout
from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.paper.gateway.kraken.ws.server import PUBLIC_PATH
from trading_ops.venues.ccxt.kraken_stream import KrakenStream, Subscription

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench"
POLL_SECONDS = 0.005
DEADLINE_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(probe: Callable[[], bool]) -> float:
    """Seconds until `probe` holds (polled), from now."""
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > DEADLINE_SECONDS:
            raise TimeoutError("not within the deadline")
        await asyncio.sleep(POLL_SECONDS)
    return time.monotonic() - start


async def chaos(base: str, fault: str, **args: Any) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/chaos/{fault}", json=args, headers={"Authorization": f"Bearer {TOKEN}"}) as r,
    ):
        assert r.status == 200, await r.text()


async def run(base: str, rounds: int, tick: float) -> dict[str, Any]:
    registry = CollectorRegistry()
    books = [0]

    async def seen(message: dict[str, Any]) -> None:
        books[0] += message.get("channel") == "book"

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    url = base.replace("http://", "ws://", 1) + PUBLIC_PATH
    subs = [Subscription("book", ["BTC/USD"], cadence=tick, params={"depth": 10})]
    stream = KrakenStream(url, subs, StreamMetrics(registry), precision={"BTC/USD": (2, 4)}, on_message=seen)
    task = asyncio.create_task(stream.run())
    results: dict[str, list[tuple[float, float]]] = {"silent_channel": [], "checksum": [], "silent_socket": []}
    in_sync = lambda: value("tradingbot_stream_book_in_sync", symbol="BTC/USD") == 1  # noqa: E731
    try:
        await until(in_sync)
        for _ in range(rounds):
            for name, fault, args, detected in (
                (
                    "silent_channel",
                    "ws_silent_channel",
                    {"channel": "book"},
                    ("tradingbot_stream_resyncs_total", {"channel": "book", "reason": "silent"}),
                ),
                (
                    "checksum",
                    "ws_book_checksum",
                    {"mode": "once"},
                    ("tradingbot_stream_checksum_failures_total", {"symbol": "BTC/USD"}),
                ),
                (
                    "silent_socket",
                    "ws_silent_socket",
                    {},
                    ("tradingbot_stream_reconnects_total", {"endpoint": "public", "reason": "silent"}),
                ),
            ):
                before = value(detected[0], **detected[1])
                await chaos(base, fault, **args)
                start = time.monotonic()
                await until(lambda d=detected, b=before: value(d[0], **d[1]) > b)
                detect = time.monotonic() - start
                count = books[0]
                await until(lambda c=count: books[0] > c + 2 and in_sync())
                results[name].append((detect, time.monotonic() - start - detect))
                await asyncio.sleep(0.5)
    finally:
        await stream.close()
        await task

    def summary(rows: list[tuple[float, float]]) -> dict[str, Any]:
        return {
            "detected_p50_s": round(statistics.median(r[0] for r in rows), 3),
            "detected_max_s": round(max(r[0] for r in rows), 3),
            "healed_after_detection_p50_s": round(statistics.median(r[1] for r in rows), 3),
            "healed_after_detection_max_s": round(max(r[1] for r in rows), 3),
        }

    timeout = silence_timeout(tick) or 0.0
    out = {name: summary(rows) for name, rows in results.items()}
    return {
        "rounds": rounds,
        "tick_seconds": tick,
        "book_silence_timeout_seconds": timeout,
        **out,
        "goal": "a silent channel detected <= its timeout + 1 s, healed <= 10 s after detection",
        "goal_met": out["silent_channel"]["detected_max_s"] <= timeout + 1
        and out["silent_channel"]["healed_after_detection_max_s"] <= 10,
    }


def serve(port: int, tick: float) -> int:
    from aiohttp import web

    from trading_ops.paper.gateway.kraken.gateway import KrakenGateway, create_app
    from trading_ops.paper.venue import PaperVenue

    venue = PaperVenue(volatility=0.001, tick_interval=tick, starting_balance=Decimal(100000))
    keys = {"bench-key": "YmVuY2g="}
    web.run_app(create_app(KrakenGateway(venue, keys, TOKEN)), host="127.0.0.1", port=port, print=None, access_log=None)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tick", type=float, default=0.1, help="the market's tick (the book's cadence), seconds")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        return serve(args.serve, args.tick)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--tick", str(args.tick)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        result = asyncio.run(wait_and_run(base, args.rounds, args.tick))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps(result, indent=2))
    return 0


async def wait_and_run(base: str, rounds: int, tick: float) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{base}/0/public/Time") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)
    return await run(base, rounds, tick)


if __name__ == "__main__":
    sys.exit(main())
