"""Webhook intake throughput and ack latency (16 concurrent clients, dedup on) on SQLite and PostgreSQL, and on
PostgreSQL with two reconciler replicas sharing the database (the clients spread over both, as a clustered
Alertmanager pair's notifications are), beside a bare aiohttp handler measured in the same run, and the reconciler's
idle RSS and CPU. Prints JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

CLIENTS = 16
DURATION_SECONDS = 5.0
WARMUP_SECONDS = 1.0
# Idle: the reconciler just started, nothing arrives; its own CPU time is sampled over this long.
IDLE_SETTLE_SECONDS = 2.0
IDLE_SECONDS = 10.0
# Distinct alerts: most notifications are resends of a known episode, as Alertmanager's are.
FINGERPRINTS = 200
TOKEN = "bench-token"
# Recent, so the rule's wait_for holds every episode back during the measurement.
STARTS_AT = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BASELINE_SERVER = """
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.json_response({"status": "stored"})
app = web.Application()
app.router.add_post("/api/v1/alertmanager", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def _body(i: int) -> bytes:
    fp = f"{i % FINGERPRINTS:016x}"
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="TradingBotBrokerDisconnected"}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "reconciler",
            "groupLabels": {"alertname": "TradingBotBrokerDisconnected"},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {
                        "alertname": "TradingBotBrokerDisconnected",
                        "instance": f"bot-{i % FINGERPRINTS}",
                        "job": "tradingbot",
                        "severity": "critical",
                        "service": "tradingbot",
                        "venue": "paper",
                    },
                    "annotations": {"summary": "The bot lost its broker connection.", "description": "channel orders"},
                    "startsAt": STARTS_AT,
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph?g0.expr=tradingbot_broker_connected+%3D%3D+0&g0.tab=1",
                    "fingerprint": fp,
                }
            ],
        }
    ).encode()


BODIES = [_body(i) for i in range(FINGERPRINTS)]


def body(i: int) -> bytes:
    return BODIES[i % FINGERPRINTS]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def load(urls: list[str], server_pids: list[int]) -> dict[str, Any]:
    """16 clients for DURATION_SECONDS after a warm-up, spread evenly over `urls` (replicas of one service).
    Besides rates and latencies: the servers' CPU time per notification, which depends far less than throughput on
    what else the (shared) machine is doing."""
    servers = [psutil.Process(pid) for pid in server_pids]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:

        async def client(url: str, until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until:
                started = time.perf_counter()
                async with session.post(url, data=body(next(counter)), headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
                if record:
                    latencies.append(time.perf_counter() - started)
                    errors += not ok

        spread = [urls[i % len(urls)] for i in range(CLIENTS)]
        await asyncio.gather(*(client(u, time.perf_counter() + WARMUP_SECONDS, False) for u in spread))
        cpu_before = sum(cpu_seconds(p) for p in servers)
        started = time.perf_counter()
        await asyncio.gather(*(client(u, started + DURATION_SECONDS, True) for u in spread))
        elapsed = time.perf_counter() - started
        cpu = sum(cpu_seconds(p) for p in servers) - cpu_before
    latencies.sort()
    return {
        "notifications_per_second": round(len(latencies) / elapsed, 1),
        "ack_latency_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "ack_latency_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "requests": len(latencies),
        "errors": errors,
        "server_cpu_ms_per_notification": round(1000 * cpu / max(1, len(latencies)), 3),
        "server_cpu_cores_used": round(cpu / elapsed, 2),
    }


def start_reconciler(tmp: Path, db_url: str, synchronous: str = "FULL") -> tuple[subprocess.Popen[bytes], int]:
    from trading_ops.db import migrate

    migrate.upgrade(db_url)
    port = free_port()
    (tmp / "token").write_text(TOKEN)
    playbook = tmp / "playbook.yml"
    # Intake only: the rule waits, so no step competes with the writer during the measurement.
    playbook.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "hold",
                        "match": ['alertname=~".+"'],
                        "wait_for": "1d",
                        "steps": [{"action": "bot", "command": "reconnect"}],
                    }
                ]
            }
        )
    )
    config = tmp / "trading-ops.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"url": db_url, "sqlite_synchronous": synchronous},
                "logging": {"level": "WARNING"},
                "reconciler": {
                    "listen": {"port": port},
                    "token_file": str(tmp / "token"),
                    "playbook": str(playbook),
                    "check_silences": False,
                    "watchdog": {"window_seconds": 0},
                },
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "trading_ops", "-c", str(config), "reconciler"],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "reconciler.log", "wb"),
    )  # noqa: SIM115
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stored_count(db_url: str) -> int:
    from sqlalchemy import func, select

    from trading_ops.db.base import make_engine
    from trading_ops.db.models import Notification

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Notification)).scalar_one())
    finally:
        engine.dispose()


def idle(pid: int) -> dict[str, float]:
    """RSS and CPU of an idle reconciler: CPU time (user + system) used over IDLE_SECONDS of wall time."""
    process = psutil.Process(pid)
    time.sleep(IDLE_SETTLE_SECONDS)
    before, started = process.cpu_times(), time.monotonic()
    time.sleep(IDLE_SECONDS)
    after, elapsed = process.cpu_times(), time.monotonic() - started
    used = (after.user - before.user) + (after.system - before.system)
    return {
        "idle_rss_mb": round(process.memory_info().rss / 2**20, 1),
        "idle_cpu_percent": round(100 * used / elapsed, 2),
        "idle_sampled_seconds": round(elapsed, 1),
    }


def bench_backend(
    name: str, db_url: str, tmp: Path, results: dict[str, Any], synchronous: str = "FULL", replicas: int = 1
) -> None:
    started = []
    try:
        for n in range(replicas):
            (tmp / f"replica-{n}").mkdir()
            started.append(start_reconciler(tmp / f"replica-{n}", db_url, synchronous))
        if name == "sqlite":  # idle first: a fresh process, as after a start
            results.update(idle(started[0][0].pid))
        urls = [f"http://127.0.0.1:{port}/api/v1/alertmanager" for _, port in started]
        results[name] = asyncio.run(load(urls, [proc.pid for proc, _ in started]))
        results[name]["replicas"] = replicas
        results[name]["stored"] = stored_count(db_url)
    finally:
        for proc, _ in started:
            stop(proc)


def bench_postgresql(name: str, replicas: int, results: dict[str, Any]) -> None:
    """`replicas` reconcilers on a fresh database of the local PostgreSQL."""
    from sqlalchemy import create_engine, text

    dbname = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{dbname}"'))
        with tempfile.TemporaryDirectory() as tmp:
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}"
            bench_backend(name, url, Path(tmp), results, replicas=replicas)
    except Exception as exc:  # no local PostgreSQL: report, keep the SQLite numbers
        results[name] = {"error": str(exc).splitlines()[0]}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "clients": CLIENTS,
        "duration_seconds": DURATION_SECONDS,
        "distinct_alerts": FINGERPRINTS,
        "cpus": os.cpu_count(),
    }
    port = free_port()
    base = subprocess.Popen([sys.executable, "-c", BASELINE_SERVER, str(port)])
    try:
        time.sleep(1.0)  # the bare server has no health route; it starts in well under a second
        results["baseline_bare_aiohttp"] = asyncio.run(
            load([f"http://127.0.0.1:{port}/api/v1/alertmanager"], [base.pid])
        )
    finally:
        stop(base)
    with tempfile.TemporaryDirectory() as tmp:
        bench_backend("sqlite", f"sqlite:///{tmp}/bench.db", Path(tmp), results)
    # The shipped default is synchronous=FULL (an fsync per commit: survives power loss). NORMAL in WAL mode
    # survives a kill -9 of the process too, the durability the reconciler promises for acks; measured beside it.
    with tempfile.TemporaryDirectory() as tmp:
        bench_backend("sqlite_synchronous_normal", f"sqlite:///{tmp}/bench.db", Path(tmp), results, "NORMAL")
    if not args.no_postgres:
        for name, replicas in (("postgresql", 1), ("postgresql_two_replicas", 2)):
            bench_postgresql(name, replicas, results)
        one, two = results["postgresql"], results["postgresql_two_replicas"]
        if "error" not in one and "error" not in two:
            ratio = two["notifications_per_second"] / max(one["notifications_per_second"], 1)
            results["goals_two_replicas"] = {
                "ratio_to_one_replica": round(ratio, 2),
                "ratio_ge_1_5": ratio >= 1.5,
                "throughput_ge_4000_per_s": two["notifications_per_second"] >= 4000,
                "p99_le_20_ms": two["ack_latency_p99_ms"] <= 20,
            }
    sq = results["sqlite"]
    results["goals_met_sqlite"] = {
        "throughput_ge_2000_per_s": sq["notifications_per_second"] >= 2000,
        "p99_le_20_ms": sq["ack_latency_p99_ms"] <= 20,
        "idle_rss_le_80_mb": results["idle_rss_mb"] <= 80,
        "idle_cpu_lt_1_percent": results["idle_cpu_percent"] < 1,
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
