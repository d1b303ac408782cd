"""Stream faults at the gateway, detected and healed by the streaming client alone, on Kraken and on Binance; prints
JSON.

Kraken (`--venue kraken`): the gateway (its own process) ticks its market every `--tick` seconds;
trading_ops.venues.ccxt.kraken_stream keeps a book subscription (BTC/USD, depth 10, its cadence the tick) on its
public WebSocket v2. Each round injects, in turn:
- ws_silent_channel (the book acked then silent, heartbeats flowing): fault -> detected (the client resubscribes)
  -> healed (book messages again, the book in sync). Goal (DESIGN): detected <= the channel's silence timeout + 1 s,
  healed <= 10 s after detection;
- ws_book_checksum once (one update's checksum wrong): fault -> detected (the failure counted) -> resynced (the book
  in sync again from a new snapshot);
- ws_silent_socket (nothing at all, pongs included): fault -> detected (the client reconnects) -> healed.
Binance (`--venue binance`): the gateway (its own process) with its Binance spot dialect, its market ticking every
`--tick` seconds; the bot's Binance broker (ProStreamingCcxtBroker: ccxt.pro's stock binance client for the user data
stream and, a second one, for the diff-depth books of BTC/USD and ETH/USD; its REST quote poll every
`--quote-poll` seconds). Each round injects, in turn:
- binance_depth_gap (a diff skips update ids): fault -> detected (a gap counted) -> healed (the book in sync again
  from a new snapshot);
- binance_depth_silent (the depth stream subscribed and sending nothing while the market moves): fault -> detected
  (the quote poll's answers disagree with the book and no diff follows: a silent resync) -> healed (in sync, diffs
  again). Goal: detected <= one quote poll + the 1 s a diff is owed + 1 s;
- binance_listen_key_expired (the venue ends the user stream): fault -> detected (the end counted) -> healed (the
  subscription acked again);
- binance_user_stream_silent (acked, then silent), then a market order over REST: order -> detected (the channel
  silent: its executionReport owed 3 s) -> healed (subscribed again, or its socket replaced at a second miss with
  nothing heard between, and the channel no longer silent). Goal: detected <= 3 s + 1 s
  after the order, healed <= 10 s after detection.
Times are from the fault command's answer (for the silent user stream, from the order's answer), by polling the
client's metrics every 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
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

# Run as a script, a benchmark has its own folder on the path: the repository's root too, for benchmarks.*.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._shared.gateway_bench import KEYS_ENV, gateway_process  # noqa: E402

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


def _summary(rows: list[tuple[float, float]]) -> dict[str, Any]:
    return {
        "detected_p50_s": round(statistics.median(r[0] for r in rows), 3),
        "detected_max_s": round(max(r[0] for r in rows), 3),
        "healed_after_detection_p50_s": round(statistics.median(r[1] for r in rows), 3),
        "healed_after_detection_max_s": round(max(r[1] for r in rows), 3),
    }


def binance_clients(base: str, keys: dict[str, str]) -> tuple[Any, Any, Any]:
    """ccxt's stock binance clients on the gateway: REST, ccxt.pro's for the user stream (with the bot's hooks:
    UserStreamBinance), ccxt.pro's for the books."""
    import ccxt.async_support as ccxt_async
    import ccxt.pro as ccxtpro

    from trading_ops.paper.gateway.binance.client_urls import ccxt_urls
    from trading_ops.venues.ccxt.binance_pro import UserStreamBinance

    urls = ccxt_urls(base, ccxtpro.binance().urls["api"])
    key, secret = next(iter(keys.items()))
    config = {"apiKey": key, "secret": secret, "enableRateLimit": False, "timeout": 10000, "urls": {"api": urls}}
    return ccxt_async.binance(dict(config)), UserStreamBinance(dict(config)), ccxtpro.binance(dict(config))


async def run_binance(base: str, keys: dict[str, str], rounds: int, quote_poll: float) -> dict[str, Any]:
    from trading_ops.bot.broker import BrokerEvents
    from trading_ops.venues.ccxt.pro_broker import ProStreamingCcxtBroker

    registry = CollectorRegistry()

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    rest, pro, book_pro = binance_clients(base, keys)
    broker = ProStreamingCcxtBroker(
        rest,
        ["BTC-USD", "ETH-USD"],
        pro=pro,
        book_pro=book_pro,
        registry=registry,
        poll_interval=3600.0,
        quote_interval=quote_poll,
    )
    results: dict[str, list[tuple[float, float]]] = {
        "depth_gap": [],
        "depth_silent": [],
        "listen_key_expired": [],
        "user_stream_silent": [],
    }
    book = "BTC/USD"
    in_sync = lambda: value("tradingbot_stream_book_in_sync", symbol=book) == 1  # noqa: E731
    subscribed = lambda: value("tradingbot_stream_subscribed", channel="executions") == 1  # noqa: E731
    try:
        await broker.connect(BrokerEvents())
        await until(lambda: in_sync() and subscribed())
        books = broker.books
        assert books is not None

        def diffs_again() -> bool:  # in sync, and a diff applied since the snapshot (the stream speaks)
            return in_sync() and books.silences[book] == 0

        async def timed(name: str, fault: str, args: dict[str, Any], counter: tuple[str, dict[str, str]], healed: Any):
            before = value(counter[0], **counter[1])
            await chaos(base, fault, **args)
            start = time.monotonic()
            await until(lambda: value(counter[0], **counter[1]) > before)
            detect = time.monotonic() - start
            await until(healed)
            results[name].append((detect, time.monotonic() - start - detect))
            await chaos(base, "clear")
            await asyncio.sleep(0.5)

        for n in range(rounds):
            gaps = ("tradingbot_stream_book_gaps_total", {"symbol": book})
            await timed("depth_gap", "binance_depth_gap", {"symbol": "BTC-USD", "count": 3}, gaps, in_sync)
            silent = ("tradingbot_stream_resyncs_total", {"channel": "book", "reason": "silent"})
            await timed("depth_silent", "binance_depth_silent", {"symbol": "BTC-USD"}, silent, diffs_again)
            ends = ("tradingbot_stream_subscription_ends_total", {"channel": "executions"})
            await timed("listen_key_expired", "binance_listen_key_expired", {}, ends, subscribed)
            results["user_stream_silent"].append(await silent_user_stream(base, broker, value, subscribed, n))
        headers = {str(k).lower(): v for k, v in (rest.last_response_headers or {}).items()}
        used = float(headers.get("x-mbx-used-weight-1m", 0))
    finally:
        await broker.close()
        await rest.close()
    return binance_verdict(results, rounds, quote_poll, used)


async def silent_user_stream(
    base: str, broker: Any, value: Callable[..., float], subscribed: Callable[[], bool], n: int
) -> tuple[float, float]:
    """binance_user_stream_silent, then a market order over REST (a silent user stream owes something only once the
    venue takes an order): (seconds from the order's answer to the silence found, then to the channel heard again)."""
    from trading_ops.bot.broker import OrderRequest, OrderType, Side

    await chaos(base, "binance_user_stream_silent")
    await broker.submit(OrderRequest(f"bench-{n}", "BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.001")))
    start = time.monotonic()
    # Found silent (then subscribed again; or, silent twice with nothing heard between, the socket replaced).
    await until(lambda: value("tradingbot_stream_channel_silent", channel="executions") == 1)
    detect = time.monotonic() - start
    await until(lambda: value("tradingbot_stream_channel_silent", channel="executions") == 0 and subscribed())
    healed = time.monotonic() - start - detect
    await chaos(base, "clear")
    await asyncio.sleep(0.5)
    return detect, healed


def binance_verdict(
    results: dict[str, list[tuple[float, float]]], rounds: int, quote_poll: float, used: float
) -> dict[str, Any]:
    from trading_ops.venues.ccxt.binance_book import DEPTH_OWED_SECONDS

    out = {name: _summary(rows) for name, rows in results.items()}
    silent_goal = quote_poll + DEPTH_OWED_SECONDS + 1
    return {
        "rounds": rounds,
        "quote_poll_seconds": quote_poll,
        **out,
        "weight": {
            "used_in_the_last_minute": used,
            "limit_per_minute": 6000,
            "silent_book_check": "0: the quote poll's answers (ticker/24hr, 2 for up to 20 symbols) that run anyway",
            "per_silent_book_healed": "5: one depth snapshot of 100 levels",
        },
        "goal": (
            f"a silent book detected <= {silent_goal:g} s (a quote poll + {DEPTH_OWED_SECONDS:g} s owed + 1 s), "
            "a silent user stream <= 4 s after the order (3 s owed + 1 s), each healed <= 10 s after detection"
        ),
        "goal_met": out["depth_silent"]["detected_max_s"] <= silent_goal
        and out["user_stream_silent"]["detected_max_s"] <= 4
        and all(o["healed_after_detection_max_s"] <= 10 for o in out.values()),
    }


def serve_binance(port: int, tick: float) -> int:
    """The gateway process with its Binance dialect: a paper venue ticking every `tick` seconds, no rejects, the
    Binance key from the environment on its main account."""
    from aiohttp import web

    from trading_ops.paper.gateway.binance.dialect import BinanceDialect
    from trading_ops.paper.gateway.kraken.gateway import MAIN_ACCOUNT, KrakenGateway, create_app
    from trading_ops.paper.venue import PaperVenue

    venue = PaperVenue(
        volatility=0.001,
        tick_interval=tick,
        starting_balance=Decimal(10_000_000),
        reject_probability=0.0,
        partial_fill_probability=0.0,
        rate_limit_per_second=1e9,
        rate_limit_burst=1e9,
    )
    keys = json.loads(os.environ[KEYS_ENV])
    gateway = KrakenGateway(venue, {"bench-key": "YmVuY2g="}, TOKEN)
    gateway.dialects.append(BinanceDialect(gateway, {k: (v, MAIN_ACCOUNT) for k, v in keys.items()}))
    web.run_app(create_app(gateway), host="127.0.0.1", port=port, print=None, access_log=None)
    return 0


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
    parser.add_argument("--venue", choices=("kraken", "binance", "both"), default="both")
    parser.add_argument("--quote-poll", type=float, default=1.0, help="Binance: the REST quote poll, seconds")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--binance-gateway", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        return serve_binance(args.serve, args.tick) if args.binance_gateway else serve(args.serve, args.tick)
    result: dict[str, Any] = {}
    if args.venue in ("kraken", "both"):
        result["kraken"] = kraken_main(args.rounds, args.tick)
    if args.venue in ("binance", "both"):
        keys = {"benchBinanceKey": secrets.token_hex(16)}
        with gateway_process(__file__, keys, "--tick", str(args.tick), "--binance-gateway") as base:
            result["binance"] = asyncio.run(binance_when_up(base, keys, args.rounds, args.quote_poll))
    print(json.dumps(result, indent=2))
    return 0


async def wait_until_up(url: str) -> None:
    """Until `url` answers 200; raises once DEADLINE_SECONDS pass without it."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer 200 within {DEADLINE_SECONDS:g} s")
            await asyncio.sleep(0.1)


async def binance_when_up(base: str, keys: dict[str, str], rounds: int, quote_poll: float) -> dict[str, Any]:
    await wait_until_up(f"{base}/api/v3/ping")
    return await run_binance(base, keys, rounds, quote_poll)


def kraken_main(rounds: int, tick: float) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--tick", str(tick)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        return asyncio.run(wait_and_run(base, rounds, tick))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def wait_and_run(base: str, rounds: int, tick: float) -> dict[str, Any]:
    await wait_until_up(f"{base}/0/public/Time")
    return await run(base, rounds, tick)


if __name__ == "__main__":
    sys.exit(main())
