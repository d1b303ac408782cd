"""Self-healing of a real freqtrade, and the sidecar's own cost; prints JSON.

The stack of tests/deploy/test_freqtrade_e2e.py, tests/freqtrade_stack.py (freqtrade live on the paper gateway,
the `trading-ops freqtrade` sidecar process, real Prometheus with the repository's freqtrade and availability rules at
the fast profile's `for:`, Alertmanager with the repository's configuration, the reconciler running the packaged
playbook's freqtrade rules with an exec step that restarts freqtrade). Each fault, `--runs` times, from a quiet stack:

- gateway_drop: the gateway drops every connection until a client starts a new session; broker-reconnect asks the
  sidecar for `reconnect`, which starts one (ending the drop), then asks freqtrade to reload_config;
- stalled_loop: freqtrade's loop blocks with its API alive (the committed strategy's stall): TradingBotHeartbeatStale,
  freqtrade-loop-restart;
- hung_sigstop (its API stops too) and killed_sigkill: TradingBotFreqtradeDown, freqtrade-restart.

Per run, from the ledger: detection (the baseline, set by the fault itself, the sidecar's poll, Prometheus and the
alert's threshold and `for:`): fault -> the alert's startsAt; fault -> the action starts; fault -> verified recovery
(the attempt ends `success`); and verified recovery minus detection, i.e. what the reconciler and the action add: the
rule's wait_for (10 s for restarts, on purpose: a service manager acts first), the action (a freqtrade restart is
mostly freqtrade importing itself and its first loop) and the verification.

Then the sidecar: one GET /metrics (p50, p99 over `--scrapes`) beside the same number of series rendered in-process
(prometheus_client's own cost, the baseline), the mean time freqtrade's API took per endpoint the sidecar polls, and
the sidecar process's RSS.

Usage: python benchmarks/integrations/bench_freqtrade.py [--runs 3] [--scrapes 300] [--faults gateway_drop,hung_sigstop]
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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from freqtrade_stack import Stack, drop_connection, freqtrade_stack, heal  # noqa: E402

# fault -> (the alert it raises, what injects it)
FAULTS: dict[str, tuple[str, Callable[[Stack], Callable[[], None]]]] = {
    "gateway_drop": ("TradingBotBrokerDisconnected", drop_connection),
    "stalled_loop": ("TradingBotHeartbeatStale", lambda stack: lambda: stack.freqtrade.stall(stack.pid())),
    "hung_sigstop": ("TradingBotFreqtradeDown", lambda stack: lambda: os.kill(stack.pid(), signal.SIGSTOP)),
    "killed_sigkill": ("TradingBotFreqtradeDown", lambda stack: lambda: os.kill(stack.pid(), signal.SIGKILL)),
}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_run(stack: Stack, fault: str) -> dict[str, float]:
    alertname, inject = FAULTS[fault]
    healed = heal(stack, alertname, inject(stack))
    episode, injected = healed.episode, healed.injected_at
    first, last = episode["attempts"][0], episode["attempts"][-1]
    firing = _ts(episode["starts_at"])
    verified = _ts(last["finished_at"])
    return {
        "detection_seconds": firing - injected,
        "fault_to_action_seconds": _ts(first["started_at"]) - injected,
        "fault_to_verified_seconds": verified - injected,
        "added_over_detection_seconds": verified - firing,
        "attempts": float(len(episode["attempts"])),
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = runs[0].keys()
    return {
        "runs": len(runs),
        **{f"{k}_p50": round(statistics.median(r[k] for r in runs), 3) for k in keys},
        **{f"{k}_max": round(max(r[k] for r in runs), 3) for k in keys},
    }


def scrape_cost(stack: Stack, scrapes: int) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, Gauge, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://{stack.instance}/metrics"
    http: list[float] = []
    body = b""
    for _ in range(scrapes):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read()
        http.append(time.perf_counter() - started)
    families = list(text_string_to_metric_families(body.decode()))
    series = sum(len(f.samples) for f in families)
    # Baseline: the same number of plain gauge series rendered in-process by prometheus_client.
    registry = CollectorRegistry()
    gauge = Gauge("baseline", "baseline", ["i"], registry=registry)
    for i in range(series):
        gauge.labels(str(i)).set(i)
    local: list[float] = []
    for _ in range(scrapes):
        started = time.perf_counter()
        generate_latest(registry)
        local.append(time.perf_counter() - started)
    # What freqtrade's API took per endpoint the sidecar polls (its own histogram: sum / count).
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            endpoint = sample.labels.get("endpoint", "")
            if sample.name == "tradingbot_freqtrade_api_request_duration_seconds_sum":
                sums[endpoint] = sample.value
            elif sample.name == "tradingbot_freqtrade_api_request_duration_seconds_count":
                counts[endpoint] = sample.value
    return {
        "series": series,
        "bytes": len(body),
        "http_scrape_p50_ms": round(statistics.median(http) * 1000, 3),
        "http_scrape_p99_ms": round(percentile(http, 0.99) * 1000, 3),
        "baseline_render_p50_ms": round(statistics.median(local) * 1000, 3),
        "freqtrade_api_mean_ms": {e: round(sums[e] / counts[e] * 1000, 2) for e in sorted(sums) if counts.get(e)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per fault")
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of: {', '.join(FAULTS)}")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault {unknown[0]} (known: {', '.join(FAULTS)})")
    with tempfile.TemporaryDirectory(prefix="bench-freqtrade-") as tmp, freqtrade_stack(Path(tmp)) as stack:
        report: dict[str, Any] = {
            "benchmark": "freqtrade",
            "scrape_interval_seconds": 1,
            "alert_for": "the repository's / 5, at least 2 s (fast profile)",
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        }
        for fault in faults:
            runs = []
            for _ in range(args.runs):
                runs.append(one_run(stack, fault))
                print(json.dumps({fault: runs[-1]}), file=sys.stderr)
            report[fault] = summarize(runs)
        report["sidecar_scrape"] = scrape_cost(stack, args.scrapes)
        report["sidecar_rss_bytes"] = psutil.Process(stack.sidecar_pid).memory_info().rss
        report["sidecar_rss_mib"] = round(report["sidecar_rss_bytes"] / 2**20, 1)
        report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
