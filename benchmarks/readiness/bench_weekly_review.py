"""Benchmark the weekly review of 20 bots over 8 days of history; prints JSON.

The history of N bots (tests/readiness_history.py; every fifth bot with a fault, a ramp at stage 2 that falls back
once) is backfilled into a real Prometheus with `promtool tsdb create-blocks-from openmetrics`, beside a SQLite ledger
with a week of episodes. Measured in the same run: the review's build for all N bots (one range query per criterion
for all of them, daily steps, and the ledger), its HTML rendering, and as the baseline one instant query of `up` over a
day. Times are the median of --rounds, in seconds.

Usage: python benchmarks/readiness/bench_weekly_review.py [--bots 20] [--step 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from readiness_history import DAY, History, backfill, openmetrics, started_prometheus  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from benchmarks._shared.loopback_ports import free_port  # noqa: E402
from trading_ops.clients.prometheus import PrometheusClient  # noqa: E402
from trading_ops.config import parse_config  # noqa: E402
from trading_ops.db import migrate  # noqa: E402
from trading_ops.db.base import make_engine  # noqa: E402
from trading_ops.db.models import Episode  # noqa: E402
from trading_ops.readiness import weekly  # noqa: E402

FAULTS: list[dict[str, Any]] = [
    {"restarts_at": (2 * DAY,)},
    {"errors_per_min": 1},
    {"connected_share": 0.95},
    {"log_mb_per_day": 15},
]


def histories(bots: int) -> list[History]:
    out = []
    for i in range(bots):
        knobs: dict[str, Any] = dict(FAULTS[i % len(FAULTS)]) if i % 5 == 4 else {}
        knobs["ramp"] = ((8.2 * DAY, 2), (3 * DAY, 1)) if i % 5 == 4 else ((8.2 * DAY, 1),)
        knobs["demotions"] = ((3 * DAY, "stream_down"),) if i % 5 == 4 else ()
        out.append(History(f"bot-{i}:9101", days=8.2, **knobs))
    return out


def seed(url: str, bots: int) -> None:
    migrate.upgrade(url)
    engine = make_engine(url)
    now = datetime.now(UTC)
    with Session(engine) as db, db.begin():
        for n in range(bots * 5):
            starts = now - timedelta(hours=1 + n)
            db.add(
                Episode(
                    fingerprint=f"f{n}",
                    starts_at=starts,
                    alertname=("TradingBotDown", "TradingBotRampDemoted", "TradingBotBrokerDisconnected")[n % 3],
                    target=f"bot-{n % bots}:9101",
                    rule="r",
                    labels="{}",
                    annotations="{}",
                    state="recovered",
                    closed_at=starts + timedelta(minutes=3),
                )
            )
    engine.dispose()


async def measure(config: Any, url: str, rounds: int) -> dict[str, Any]:
    last_day = datetime.now(UTC).date() - timedelta(days=1)
    build, render, baseline = [], [], []
    review = None
    engine = make_engine(url)
    try:
        async with aiohttp.ClientSession() as session:
            prometheus = PrometheusClient(session, config.reconciler.prometheus_urls)
            for _ in range(rounds):
                began = time.perf_counter()
                await prometheus.query("avg_over_time(up[1d])")
                baseline.append(time.perf_counter() - began)
                began = time.perf_counter()
                review = await weekly.build(config, engine, last_day)
                build.append(time.perf_counter() - began)
                began = time.perf_counter()
                weekly.render_html(review)
                render.append(time.perf_counter() - began)
    finally:
        engine.dispose()
    assert review is not None and not review.prometheus_problem, review and review.prometheus_problem
    median = statistics.median(build)
    return {
        "review_build_seconds": round(median, 4),
        "review_queries": review.queries,
        "render_html_seconds": round(statistics.median(render), 4),
        "baseline_one_up_query_seconds": round(statistics.median(baseline), 5),
        "review_vs_baseline": round(median / statistics.median(baseline), 1),
        "bots_failing_a_criterion": sorted(b.bot for b in review.bots if b.failing),
        "bots_that_fell_back": sorted(b.bot for b in review.bots if b.demotions),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=20)
    parser.add_argument("--step", type=int, default=300, help="seconds between two samples of the history")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-weekly-") as name:
        tmp = Path(name)
        text = openmetrics(histories(args.bots), time.time(), args.step)
        samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        backfilled = backfill(text, tmp / "data", tmp)
        del text
        url = f"sqlite:///{tmp / 'ledger.db'}"
        seed(url, args.bots)
        with started_prometheus(tmp, tmp / "data", free_port(), "30d") as prometheus:
            config = parse_config(
                {
                    "database": {"url": url},
                    "report": {"daily_at": "00:00", "time_zone": "UTC"},
                    "bots": [
                        {"name": h.instance.split(":")[0], "instance": h.instance, "url": f"http://{h.instance}"}
                        for h in histories(args.bots)
                    ],
                    "reconciler": {"prometheus_url": prometheus},
                },
                base_dir=tmp,
            )
            results = asyncio.run(measure(config, url, args.rounds))
    print(
        json.dumps(
            {
                "benchmark": "weekly_review",
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "bots": args.bots,
                "days": 7,
                "history": {"step_seconds": args.step, "samples": samples, "backfill_seconds": round(backfilled, 2)},
                "rounds": args.rounds,
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
