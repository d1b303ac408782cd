"""Benchmark what a web_config_file costs a server; prints JSON.

One aiohttp server (a /metrics of about 100 kB, as a bot's at a few thousand series) is asked the same GET, in the
same run, over: plain HTTP, TLS, mutual TLS, and mutual TLS with basic auth (bcrypt cost 10, the remembered-password
path after the first request), each on one kept-alive connection as Prometheus scrapes; and TLS with a new connection
per request (a full handshake each time, mutual TLS). Reported: per-request median and p99 in milliseconds and the
ratio of each median to plain HTTP's, plus the cost of one bcrypt check (the first request of a user, and every wrong
password). Certificates are made for the run (the `cryptography` package) in a temporary directory.

Usage: python benchmarks/bench_webconfig.py [--requests N]
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
from base64 import b64encode
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from web_pki import make_pki, web_config  # noqa: E402

from benchmarks._shared.loopback_ports import free_port  # noqa: E402
from trading_ops.webconfig import load_web_config, secure_app  # noqa: E402

BODY = b"# a metrics page\n" + b'tradingbot_example_series{symbol="BTC-USD",side="buy"} 1.0\n' * 1800
PASSWORD = "bench-password"


async def metrics(_request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="text/plain")


async def serve(web_file: Path | None) -> tuple[web.AppRunner, str]:
    config = load_web_config(web_file) if web_file is not None else None
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    secure_app(app, config, ("/control/",))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=config.ssl_context if config else None).start()
    return runner, f"{'https' if config and config.ssl_context else 'http'}://127.0.0.1:{port}/metrics"


async def timings(url: str, count: int, ssl_context: Any, headers: dict[str, str], keep_alive: bool) -> list[float]:
    out = []
    connector = aiohttp.TCPConnector(force_close=not keep_alive, ssl=ssl_context if ssl_context else True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url, headers=headers) as response:  # warm-up (and the first bcrypt check)
            assert response.status == 200, response.status
            await response.read()
        for _ in range(count):
            started = time.perf_counter()
            async with session.get(url, headers=headers) as response:
                await response.read()
            out.append((time.perf_counter() - started) * 1000)
            assert response.status == 200
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
    }


async def run(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-webconfig-") as tmp:
        pki = make_pki(Path(tmp) / "pki")
        files = {}
        for name, data in (
            ("tls", web_config(pki, client_auth_type=None, client_ca_file=None)),
            ("mutual_tls", web_config(pki)),
        ):
            files[name] = Path(tmp) / f"{name}.yml"
            files[name].write_text(yaml.safe_dump(data))
        with_users = web_config(pki)
        with_users["basic_auth_users"] = {"prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()}
        files["mutual_tls_basic_auth"] = Path(tmp) / "basic.yml"
        files["mutual_tls_basic_auth"].write_text(yaml.safe_dump(with_users))
        basic = {"Authorization": "Basic " + b64encode(f"prometheus:{PASSWORD}".encode()).decode()}
        cases: list[tuple[str, Path | None, Any, dict[str, str], bool]] = [
            ("plain_http", None, None, {}, True),
            ("tls", files["tls"], pki.client_context(with_certificate=False), {}, True),
            ("mutual_tls", files["mutual_tls"], pki.client_context(), {}, True),
            ("mutual_tls_basic_auth", files["mutual_tls_basic_auth"], pki.client_context(), basic, True),
            ("mutual_tls_new_connection_each", files["mutual_tls"], pki.client_context(), {}, False),
        ]
        results: dict[str, Any] = {}
        for name, web_file, context, headers, keep_alive in cases:
            runner, url = await serve(web_file)
            try:
                results[name] = summary(await timings(url, count, context, headers, keep_alive))
            finally:
                await runner.cleanup()
        base = results["plain_http"]["median_ms"]
        for result in results.values():
            result["ratio_to_plain_http"] = round(result["median_ms"] / base, 2)
        hashed = with_users["basic_auth_users"]["prometheus"].encode()
        checks = []
        for _ in range(5):
            started = time.perf_counter()
            bcrypt.checkpw(PASSWORD.encode(), hashed)
            checks.append((time.perf_counter() - started) * 1000)
        results["bcrypt_cost_10_check_ms"] = round(statistics.median(checks), 1)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per case (default 500)")
    args = parser.parse_args()
    results = asyncio.run(run(args.requests))
    report = {
        "benchmark": "webconfig",
        "python": platform.python_version(),
        "body_bytes": len(BODY),
        "requests_per_case": args.requests,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
