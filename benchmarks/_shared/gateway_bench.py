"""What the benchmarks on the Kraken-compatible gateway share: the gateway as a process of its own (its work never on
the measured client's event loop) with the benchmark's keys, ccxt's kraken clients (REST, and ccxt.pro's) on it,
and the statistics they print."""

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
from collections.abc import Iterator, Sequence
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
) -> int:
    """The gateway process (`gateway_process` runs it): a paper venue with no latency, no rejects and no partial
    fills, still unless given a `tick_interval`; `deposits` on its account (a spot account sells what it holds); the
    keys from the environment; Kraken's REST call counter of the tier `call_counter` per key."""
    from aiohttp import web

    from trading_ops.paper.gateway.kraken.gateway import KrakenGateway, create_app
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
    gateway = KrakenGateway(venue, keys, "bench", call_counter=limiter)
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
