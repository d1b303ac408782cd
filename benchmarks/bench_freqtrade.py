"""Self-healing of a real freqtrade, and the sidecar's own cost; prints JSON.

The stack of tests/test_freqtrade_e2e.py (freqtrade live on the paper gateway, the `trading-ops freqtrade` sidecar
process, real Prometheus with the freqtrade alert at the fast profile's `for:`, Alertmanager, the reconciler whose
exec step restarts freqtrade). For each fault (SIGSTOP: hung, SIGKILL: dead), `--runs` times:

- detection (the baseline, set by Prometheus, the sidecar's poll timeout and the alert's `for:`): fault -> the alert's
  startsAt as the reconciler's episode records it (when Prometheus fired it);
- fault -> the restart action starts (what the reconciler adds: action start minus detection), fault -> verified
  recovery (the attempt ends `success` in the ledger), and verified recovery minus detection (mostly freqtrade's own
  start: importing it and its first loop take several seconds).

Then the sidecar: the time one GET /metrics takes (p50, p99 over `--scrapes`), beside the same registry rendered
in-process (the baseline: prometheus_client's own cost), its series count, and the sidecar process's RSS.

Usage: python benchmarks/bench_freqtrade.py [--runs 3] [--scrapes 300]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from test_freqtrade_e2e import Stack, freqtrade_stack, until  # noqa: E402

DEADLINE_SECONDS = 180.0


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_run(stack: Stack, fault: signal.Signals) -> dict[str, float]:
    known = {e["id"] for e in stack.episodes("TradingBotFreqtradeDown")}
    until("freqtrade holds its trades", lambda: len(stack.freqtrade.open_trades()) == 2, DEADLINE_SECONDS)
    # Let a fresh freqtrade settle, so each run starts from a steady state.
    time.sleep(2)
    injected = time.time()
    os.kill(stack.pid(), fault)

    def ended() -> dict[str, Any] | None:
        for episode in stack.episodes("TradingBotFreqtradeDown"):
            if episode["id"] not in known and episode["state"] in ("recovered", "escalated", "failed"):
                return episode
        return None

    episode = until("the episode ends", ended, DEADLINE_SECONDS)
    if episode["state"] != "recovered":
        raise RuntimeError(f"not recovered: {json.dumps(episode)[:500]}")
    attempt = episode["attempts"][-1]
    firing = _ts(episode["starts_at"])
    verified = _ts(attempt["finished_at"])
    return {
        "detection_seconds": firing - injected,
        "fault_to_action_seconds": _ts(attempt["started_at"]) - injected,
        "fault_to_verified_seconds": verified - injected,
        "added_over_detection_seconds": verified - firing,
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = runs[0].keys()
    return {
        "runs": len(runs),
        **{f"{k}_p50": round(statistics.median(r[k] for r in runs), 3) for k in keys},
        **{f"{k}_max": round(max(r[k] for r in runs), 3) for k in keys},
    }


def scrape_cost(stack: Stack, scrapes: int) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://{stack.instance}/metrics"
    http: list[float] = []
    body = b""
    for _ in range(scrapes):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read()
        http.append(time.perf_counter() - started)
    series = sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))
    # Baseline: the same number of plain gauge series rendered in-process by prometheus_client.
    from prometheus_client import Gauge

    registry = CollectorRegistry()
    gauge = Gauge("baseline", "baseline", ["i"], registry=registry)
    for i in range(series):
        gauge.labels(str(i)).set(i)
    local: list[float] = []
    for _ in range(scrapes):
        started = time.perf_counter()
        generate_latest(registry)
        local.append(time.perf_counter() - started)
    return {
        "series": series,
        "bytes": len(body),
        "http_scrape_p50_ms": round(statistics.median(http) * 1000, 3),
        "http_scrape_p99_ms": round(percentile(http, 0.99) * 1000, 3),
        "baseline_render_p50_ms": round(statistics.median(local) * 1000, 3),
    }


def sidecar_rss(stack: Stack) -> int:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "trading_ops" in cmdline and "freqtrade" in cmdline:
            try:
                for conn in proc.net_connections(kind="tcp"):
                    if conn.laddr and conn.laddr.port == stack.sidecar_port and conn.status == "LISTEN":
                        return int(proc.memory_info().rss)
            except psutil.Error:
                continue
    raise RuntimeError("the sidecar process was not found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per fault")
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-freqtrade-") as tmp, freqtrade_stack(Path(tmp)) as stack:
        report: dict[str, Any] = {"benchmark": "freqtrade", "scrape_interval_seconds": 1, "alert_for": "2s"}
        for name, fault in (("hung_sigstop", signal.SIGSTOP), ("killed_sigkill", signal.SIGKILL)):
            runs = []
            for _ in range(args.runs):
                runs.append(one_run(stack, fault))
                print(json.dumps({name: runs[-1]}), file=sys.stderr)
            report[name] = summarize(runs)
        report["sidecar_scrape"] = scrape_cost(stack, args.scrapes)
        report["sidecar_rss_bytes"] = sidecar_rss(stack)
        report["sidecar_rss_mib"] = round(report["sidecar_rss_bytes"] / 2**20, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
