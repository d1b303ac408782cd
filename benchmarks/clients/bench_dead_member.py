"""What a dead Alertmanager of a pair (its address blackholed: connects never answered, as a dead host's) costs the
survivors: the reconciler's reads and escalations through its Alertmanager client, and Prometheus's deliveries to the
live member with the shipped `alertmanagers` `timeout` against Prometheus's default (10 s). Real Prometheus and
Alertmanager; prints JSON.

    .venv/bin/python benchmarks/clients/bench_dead_member.py [--seconds 90] [--slot 3] [--busy] [--timeouts 2s,1s]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from alertmanager_server import start_alertmanager  # noqa: E402
from blackhole import Blackhole  # noqa: E402
from prometheus_server import start_prometheus  # noqa: E402
from server_process import stop, wait_http  # noqa: E402

from benchmarks._shared.loopback_ports import free_port  # noqa: E402
from trading_ops.clients.alertmanager import AlertmanagerClient  # noqa: E402
from trading_ops.reconciler.actions.escalate import FAILED, escalate  # noqa: E402

# With --busy: alerts that always fire, each resent every second (Prometheus's --rules.alert.resend-delay), in groups
# of their own evaluated at their own moments: the notifier always has a batch under way, as a topology's with a dead
# ops host does (its member and target alerts firing, each resent every minute across the rule groups).
BUSY_GROUPS = 3


def rules(slot: float, busy: bool) -> dict[str, Any]:
    """A new alert every `slot` seconds (its `slot` label changes): each is a new batch for Prometheus's notifier;
    with `busy`, BUSY_GROUPS groups of an alert that always fires beside it."""
    expr = f'count_values("slot", floor(vector(time()) / {slot:g}))'
    groups = [{"name": "bench", "interval": "1s", "rules": [{"alert": "BenchSlot", "expr": expr}]}]
    if busy:
        groups += [
            {"name": f"busy-{n}", "interval": "1s", "rules": [{"alert": f"BenchBusy{n}", "expr": "vector(1)"}]}
            for n in range(BUSY_GROUPS)
        ]
    return {"groups": groups}


async def reconciler_client(live: str, dead: str, rounds: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        client = AlertmanagerClient(session, [dead, live])
        started = time.monotonic()
        await client.silences()
        first = time.monotonic() - started
        reads, pages = [], []
        for n in range(rounds):
            started = time.monotonic()
            await client.silences()
            reads.append(time.monotonic() - started)
            started = time.monotonic()
            await escalate(client, FAILED, {"alertname": "Bench", "instance": f"b{n}"}, f"b{n}", "bench")
            pages.append(time.monotonic() - started)
        while client._posting:
            await asyncio.sleep(0.05)
    return {
        "first_read_seconds": round(first, 3),
        "read_p50_seconds": round(statistics.median(reads), 4),
        "escalation_p50_seconds": round(statistics.median(pages), 4),
        "escalation_max_seconds": round(max(pages), 4),
    }


def prometheus_deliveries(
    tmp: Path, live: str, dead: str, timeout: str | None, seconds: float, slot: float, busy: bool
) -> dict[str, Any]:
    """Seconds from each BenchSlot alert's activation in Prometheus to its arrival at the live Alertmanager."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules(slot, busy)))
    manager: dict[str, Any] = {"static_configs": [{"targets": [u.removeprefix("http://") for u in (dead, live)]}]}
    if timeout is not None:
        manager["timeout"] = timeout
    config = {
        "global": {"evaluation_interval": "1s", "scrape_interval": "15s"},
        "rule_files": [str(tmp / "rules.yml")],
        "alerting": {"alertmanagers": [manager]},
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    flags = ["--rules.alert.resend-delay=1s"] if busy else []
    proc = start_prometheus(tmp / "prometheus.yml", tmp / "data", port, *flags)
    seen: dict[str, float] = {}
    delays: list[float] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc=proc, deadline=60)
        end = time.time() + seconds
        while time.time() < end:
            with urllib.request.urlopen(f"{live}/api/v2/alerts?filter=alertname%3D%22BenchSlot%22", timeout=5) as r:
                for alert in json.load(r):
                    slot = alert["labels"]["slot"]
                    if slot not in seen and alert["status"]["state"] == "active":
                        seen[slot] = time.time()
                        starts = datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")).timestamp()
                        delays.append(seen[slot] - starts)
            time.sleep(0.02)
    finally:
        stop(proc)
    delays = delays[1:]  # the first alert goes out with Prometheus's start
    return {
        "alertmanagers_timeout": timeout or "default (10s)",
        "busy": busy,
        "alerts": len(delays),
        "delivery_p50_seconds": round(statistics.median(delays), 2) if delays else None,
        "delivery_max_seconds": round(max(delays), 2) if delays else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="how long each Prometheus runs")
    parser.add_argument("--rounds", type=int, default=10, help="reads and escalations of the reconciler's client")
    parser.add_argument("--slot", type=float, default=3.0, help="seconds between two new alerts in Prometheus")
    parser.add_argument(
        "--busy", action="store_true", help="other alerts resent every second beside them: a batch always under way"
    )
    parser.add_argument(
        "--timeouts", default="default,2s,1s", help="the alertmanagers timeouts compared (default: Prometheus's 10 s)"
    )
    args = parser.parse_args()
    timeouts = [None if t == "default" else t for t in args.timeouts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        live = start_alertmanager(Path(tmp) / "alertmanager")
        dead = Blackhole()
        try:
            out: dict[str, Any] = {
                "reconciler_client": asyncio.run(reconciler_client(live.url, dead.url, args.rounds)),
                "prometheus": [
                    prometheus_deliveries(
                        Path(tmp) / (timeout or "default"),
                        live.url,
                        dead.url,
                        timeout,
                        args.seconds,
                        args.slot,
                        args.busy,
                    )
                    for timeout in timeouts
                ],
            }
        finally:
            dead.close()
            stop(live.proc)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
