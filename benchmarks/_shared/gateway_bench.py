"""What the benchmarks on the Kraken-compatible gateway share: the gateway as a process of its own (its work never on
the measured client's event loop) with the benchmark's keys (Kraken's, or its Binance dialect's), ccxt's kraken
clients (REST, and ccxt.pro's) on it, bots as processes of their own, the private REST calls a client sends, and the
statistics they print."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt
import ccxt.pro as ccxtpro

from trading_ops.paper.gateway.kraken.ws.server import PRIVATE_PATH, PUBLIC_PATH

ROOT = Path(__file__).resolve().parents[2]
NEVER = 3600.0
STARTUP_SECONDS = 60.0
KEYS_ENV = "BENCH_GATEWAY_KEYS"
KRAKEN_KEY = "bench-kraken"  # the Kraken dialect's key when the benchmark's keys are the Binance dialect's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: Sequence[float]) -> dict[str, Any]:
    """Latencies (seconds) as counts and milliseconds: p50, p99, max."""
    if not latencies:
        return {"fills": 0}
    ms = [x * 1000 for x in latencies]
    return {
        "fills": len(ms),
        "p50_ms": round(percentile(ms, 0.5), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "max_ms": round(max(ms), 1),
    }


def new_keys(names: Sequence[str]) -> dict[str, str]:
    """An API secret per key name (each client its own key: Kraken's nonces and call counters are per key)."""
    return {name: base64.b64encode(secrets.token_bytes(32)).decode() for name in names}


def urls(base: str) -> dict[str, Any]:
    """ccxt's kraken `urls.api` on the gateway at `base`: REST, and WebSocket v2 public and private."""
    ws = base.replace("http://", "ws://", 1)
    public, private = ws + PUBLIC_PATH, ws + PRIVATE_PATH
    return {
        "public": base,
        "private": base,
        "ws": {"publicV2": public, "privateV2": private, "public": public, "private": private},
    }


def kraken(base: str, key: str, secret: str, *, pro: bool = False) -> Any:
    """ccxt's stock kraken client (ccxt.pro's with `pro`) on the gateway, no rate limiter of its own."""
    cls = ccxtpro.kraken if pro else ccxt.kraken
    return cls({"apiKey": key, "secret": secret, "enableRateLimit": False, "urls": {"api": urls(base)}})


async def wait_up(base: str, key: str, secret: str) -> None:
    """Until the gateway answers (its markets load)."""
    ex = kraken(base, key, secret)
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            try:
                await ex.load_markets()
                return
            except ccxt.NetworkError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await ex.close()


def serve(
    port: int,
    deposits: dict[str, Decimal] | None = None,
    *,
    call_counter: str = "off",
    tick_interval: float = NEVER,
    volatility: float = 0.0,
    binance: bool = False,
) -> int:
    """The gateway process (`gateway_process` runs it): a paper venue with no latency, no rejects and no partial
    fills, still unless given a `tick_interval`; `deposits` on its account (a spot account sells what it holds); the
    keys from the environment (with `binance`, the Binance dialect's, on the main account; Kraken's is KRAKEN_KEY);
    Kraken's REST call counter of the tier `call_counter` per key."""
    from aiohttp import web

    from trading_ops.paper.gateway.binance.dialect import BinanceDialect
    from trading_ops.paper.gateway.kraken.gateway import MAIN_ACCOUNT, KrakenGateway, create_app
    from trading_ops.paper.venue import PaperVenue
    from trading_ops.venues.call_counter import CounterLimiter

    venue = PaperVenue(
        starting_balance=Decimal("100000000"),
        volatility=volatility,
        tick_interval=tick_interval,
        rate_limit_per_second=1e9,
        rate_limit_burst=1e9,
        partial_fill_probability=0.0,
    )
    for asset, amount in (deposits or {}).items():
        asyncio.run(venue.transfer(asset, amount))
    keys = json.loads(os.environ[KEYS_ENV])
    limiter = None if call_counter == "off" else CounterLimiter(call_counter)
    gateway = KrakenGateway(venue, {KRAKEN_KEY: "YmVuY2g="} if binance else keys, "bench", call_counter=limiter)
    if binance:
        gateway.dialects.append(BinanceDialect(gateway, {k: (v, MAIN_ACCOUNT) for k, v in keys.items()}))
    web.run_app(create_app(gateway), host="127.0.0.1", port=port, print=None, access_log=None)
    return 0


@contextlib.contextmanager
def gateway_process(script: str, keys: dict[str, str], *args: str) -> Iterator[str]:
    """`python SCRIPT --serve PORT ARGS` (the script's `serve`) with `keys` in its environment; yields its base URL
    and stops it on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, script, "--serve", str(port), *args],
        env={**os.environ, KEYS_ENV: json.dumps(keys), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def signed(api: Any) -> bool:
    """Whether ccxt's `api` (a name, or a list of names) is a signed REST API: Kraken's and Binance's `private`,
    Binance's `sapi*`."""
    names = [api] if isinstance(api, str) else list(api or [])
    return any("private" in str(n).lower() or str(n).startswith("sapi") for n in names)


def count_private_calls(exchange: Any) -> Counter[str]:
    """The private REST calls `exchange` sends from now on, by path: what its budget (a broker's call or weight
    budget, installed on `fetch2` before this) lets through; a call it keeps unsent is not counted."""
    from trading_ops.venues.call_counter import BudgetExhausted, Deferred

    calls: Counter[str] = Counter()
    budgeted = exchange.fetch2

    async def counting(
        path: str, api: Any = "public", method: str = "GET", params: Any = None, config: Any = None
    ) -> Any:
        sent = signed(api)
        try:
            return await budgeted(path, api, method, params, config)
        except (BudgetExhausted, Deferred):
            sent = False  # the budget kept it: it never reached the venue
            raise
        finally:
            if sent:
                calls[path] += 1

    exchange.fetch2 = counting
    return calls


@contextlib.asynccontextmanager
async def running_bots(
    script: str, bots: Mapping[str, tuple[str, str]], *args: str, startup: float = 120.0
) -> AsyncIterator[dict[str, asyncio.subprocess.Process]]:
    """`python SCRIPT --bot KIND --key KEY ARGS` per bot (KIND -> (key, secret)), the secret on its stdin (never on a
    command line); yields once each printed `ready` (connected and subscribed); stops those still running on exit."""
    procs: dict[str, asyncio.subprocess.Process] = {}
    try:
        for kind, (key, secret) in bots.items():
            proc = procs[kind] = await asyncio.create_subprocess_exec(
                sys.executable,
                script,
                "--bot",
                kind,
                "--key",
                key,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdin is not None
            proc.stdin.write(secret.encode() + b"\n")
            await proc.stdin.drain()
            proc.stdin.close()
        for kind, proc in procs.items():
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), startup)
            if line.strip() != b"ready":
                raise RuntimeError(f"the {kind} bot did not start: {line[:200]!r}")
        yield procs
    finally:
        await stop_bots(procs)


async def bot_results(procs: Mapping[str, asyncio.subprocess.Process]) -> dict[str, Any]:
    """Each bot's JSON (the last line it prints) once it exits."""
    results: dict[str, Any] = {}
    for kind, proc in procs.items():
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the {kind} bot exited with {proc.returncode}")
        results[kind] = json.loads(out.decode().strip().splitlines()[-1])
    return results


async def stop_bots(procs: Mapping[str, asyncio.subprocess.Process]) -> None:
    """Stop the bots still running (SIGTERM, then SIGKILL after 10 s)."""
    for proc in procs.values():
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def place_market_orders(placer: Any, seconds: float, symbol: str = "ETH/USD") -> None:
    """Market orders of 0.01 `symbol`, buy and sell in turn, every 0.3-1.5 s (jittered, so that fills land anywhere in a
    poll's cycle) for `seconds`, then 2 s for the last to settle."""
    rng = secrets.SystemRandom()
    await placer.load_markets()
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        await placer.create_order(symbol, "market", "buy" if i % 2 == 0 else "sell", 0.01)
        i += 1
        await asyncio.sleep(rng.uniform(0.3, 1.5))
    await asyncio.sleep(2.0)


class FillClock:
    """A bot's broker events as the runtime handles them: when each fill first reached it (`seen`, wall time by trade
    id; each fill answered by a balance lookup, as the runtime's on_fill does) and how many quotes came."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.seen: dict[str, float] = {}
        self.quotes = 0

    async def on_fill(self, fill: Any) -> None:
        from trading_ops.bot.broker import BrokerError

        self.seen.setdefault(fill.trade_id, time.time())
        with contextlib.suppress(BrokerError):
            await self.broker.balances()

    async def on_quote(self, _quote: Any) -> None:
        self.quotes += 1
