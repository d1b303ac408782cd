"""Benchmark the readiness verdict of 20 bots over 7 days of history; prints JSON.

The history of N bots (tests/readiness_history.py: every series the criteria read, one sample per --step seconds, over
7.2 days, every bot healthy but one per failing criterion while they last) is backfilled into a real Prometheus with
`promtool tsdb create-blocks-from openmetrics`, with a real Alertmanager beside it. Measured, in the same run: the
verdict of all N bots in one command (one query per criterion for all of them), the verdict of each bot alone (N
commands), the queries each takes, and as the baseline one instant query of `up` over the window. Times are the
median of --rounds, in seconds; the backfill's own cost is reported too.

Usage: python benchmarks/readiness/bench_readiness.py [--bots 20] [--days 7] [--step 300] [--rounds 5]
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
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from alertmanager_server import run_alertmanager  # noqa: E402
from readiness_history import DAY, History, backfill, openmetrics, started_prometheus  # noqa: E402

from benchmarks._shared.loopback_ports import free_port  # noqa: E402
from trading_ops.clients.alertmanager import AlertmanagerClient  # noqa: E402
from trading_ops.clients.prometheus import PrometheusClient  # noqa: E402
from trading_ops.config import parse_config  # noqa: E402
from trading_ops.ops.backup import STATE_FILE  # noqa: E402
from trading_ops.ops.restore_drill import DRILL_STATE_FILE  # noqa: E402
from trading_ops.ops.state import OpsState  # noqa: E402
from trading_ops.readiness.criteria import CRITERIA, instances_selector  # noqa: E402
from trading_ops.readiness.verdict import evaluate  # noqa: E402

RULES = Path(__file__).resolve().parents[2] / "prometheus" / "rules"
# A few bots fail a criterion each, so the verdicts are not all alike.
FAULTS: list[dict[str, Any]] = [
    {"restarts_at": (2 * DAY,)},
    {"errors_per_min": 1},
    {"connected_share": 0.95},
    {"memory_growth_mb_per_day": 20},
]
ALERTMANAGER = {
    "route": {"receiver": "team"},
    "receivers": [{"name": "team", "webhook_configs": [{"url": "http://127.0.0.1:9/"}]}],
}


def histories(bots: int, days: float) -> list[History]:
    return [
        History(f"bot-{i}:9101", days=days + 0.2, **(FAULTS[i % len(FAULTS)] if i % 5 == 4 else {}))
        for i in range(bots)
    ]


async def measure(config: Any, rounds: int, window: str) -> dict[str, Any]:
    bots = config.bots
    all_at_once, each_alone, baseline = [], [], []
    queries_all = queries_one = 0
    verdicts: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        prometheus = PrometheusClient(session, config.reconciler.prometheus_urls)
        alertmanager = AlertmanagerClient(session, config.reconciler.alertmanager_urls)
        for _ in range(rounds):
            began = time.perf_counter()
            await prometheus.query(f"avg_over_time(up[{window}])")
            baseline.append(time.perf_counter() - began)
            began = time.perf_counter()
            result = await evaluate(config, bots, window, prometheus, alertmanager)
            all_at_once.append(time.perf_counter() - began)
            queries_all = result[0].queries
            verdicts = {v.bot: v.verdict for v in result}
            began = time.perf_counter()
            for bot in bots:
                queries_one = (await evaluate(config, [bot], window, prometheus, alertmanager))[0].queries
            each_alone.append(time.perf_counter() - began)
        # Each criterion's query for every bot, alone: where the time goes.
        sel = instances_selector([b.instance for b in bots])
        per_query = {}
        for criterion in CRITERIA:
            began = time.perf_counter()
            await prometheus.query(criterion.expr(sel, window))
            per_query[criterion.name] = round(time.perf_counter() - began, 4)
    median_all = statistics.median(all_at_once)
    return {
        "all_bots_one_command_seconds": round(median_all, 4),
        "all_bots_one_command_queries": queries_all,
        "each_bot_alone_total_seconds": round(statistics.median(each_alone), 4),
        "each_bot_alone_queries_per_bot": queries_one,
        "baseline_one_up_query_seconds": round(statistics.median(baseline), 5),
        "all_bots_vs_baseline": round(median_all / statistics.median(baseline), 1),
        "seconds_per_criterion_query": dict(sorted(per_query.items(), key=lambda kv: -kv[1])),
        "verdicts": {v: sorted(b for b, got in verdicts.items() if got == v) for v in set(verdicts.values())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=20)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--step", type=int, default=300, help="seconds between two samples of the history")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    window = f"{int(args.days * 24)}h"
    with tempfile.TemporaryDirectory(prefix="bench-readiness-") as name:
        tmp = Path(name)
        began = time.perf_counter()
        text = openmetrics(histories(args.bots, args.days), time.time(), args.step)
        generated = time.perf_counter() - began
        samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        backfilled = backfill(text, tmp / "data", tmp)
        del text
        stamp = time.time() - DAY
        OpsState(tmp / "backups" / STATE_FILE).update(lambda d: d.update(last_verify_success_timestamp_seconds=stamp))
        OpsState(tmp / "backups" / DRILL_STATE_FILE).update(lambda d: d.update(last_success_timestamp_seconds=stamp))
        (tmp / "am").mkdir()
        (tmp / "am" / "am.yml").write_text(yaml.safe_dump(ALERTMANAGER))
        am = run_alertmanager(tmp / "am" / "am.yml", tmp / "am" / "data", free_port(), tmp / "am" / "am.log")
        try:
            rule_files = tuple(sorted(RULES.glob("*.yml")))
            with started_prometheus(tmp, tmp / "data", free_port(), "30d", rule_files) as url:
                config = parse_config(
                    {
                        "bots": [
                            {"name": h.instance.split(":")[0], "instance": h.instance, "url": f"http://{h.instance}"}
                            for h in histories(args.bots, args.days)
                        ],
                        "reconciler": {"prometheus_url": url, "alertmanager_url": am.url},
                        "backup": {"directory": str(tmp / "backups")},
                    },
                    base_dir=tmp,
                )
                results = asyncio.run(measure(config, args.rounds, window))
        finally:
            am.proc.terminate()
            am.proc.wait(timeout=30)
    report = {
        "benchmark": "readiness",
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "bots": args.bots,
        "window": window,
        "history": {
            "step_seconds": args.step,
            "samples": samples,
            "generate_seconds": round(generated, 2),
            "backfill_seconds": round(backfilled, 2),
        },
        "rounds": args.rounds,
        **results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
