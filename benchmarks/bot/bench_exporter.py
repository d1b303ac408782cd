"""Benchmark the bot-side exporter; prints JSON.

1. Cost of each record call of trading_ops.bot.BotMetrics against the same number of raw prometheus_client child
   operations (pre-resolved children), measured in the same run, interleaved round by round (goal: <= 1.5x).
   Each round takes the best of a few runs; the spread of the rounds (median, min, max) is reported for both
   and for their per-round ratio. The goal is judged on the ratio of the best rounds (timeit's convention: other
   processes only ever add time, so the minimum is the least disturbed measurement of each side).
2. Scrape time at 1k, 5k and 20k series: rendering the registry, and a full HTTP GET with
   `Accept-Encoding: gzip` as Prometheus sends it.
3. The bot's event-loop lag p99 without scrapes and with a gzip scrape every second at 5k series (the scraper in
   another process; goal: scraping adds <= 2 ms), beside the noise floor of an idle event loop on this machine.
   When the lag without scrapes is already above 2 ms the machine is too noisy to judge the goal, and the
   verdict says so instead of "met".

The bot is configured as the paper bot is: `tune_switch_interval` and `disable_created_series` on. The lag is
also measured with Python's default GIL switch interval, to show what the opt-in buys.

Usage: python benchmarks/bot/bench_exporter.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.bot.metrics import ACK_LATENCY_BUCKETS, LOOP_DURATION_BUCKETS, BotMetrics

TOKEN = "bench"
RECORD_GOAL_RATIO = 1.5
LAG_GOAL_SECONDS = 0.002
# Above this baseline p99 (no scrapes), the machine's own noise is as large as the effect being judged.
NOISY_BASELINE_P99_SECONDS = 0.002
LAG_SAMPLE_INTERVAL_SECONDS = 0.005
SCRAPE_SIZES = (1_000, 5_000, 20_000)
LAG_SERIES = 5_000
GZIP_HEADERS = {"Accept-Encoding": "gzip"}


def per_call_ns(fn: Callable[[], None], number: int, repeat: int) -> float:
    """Best of `repeat` runs of `number` calls, in nanoseconds per call (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / number)
    return best


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


# Record call -> the raw child operations a hand-written exporter makes for it (the order of the report).
RAW_CHILD_OPERATIONS = {
    "order_submitted": 1,
    "order_acknowledged": 2,
    "order_filled": 4,
    "position": 2,
    "market_data": 2,
    "loop_iteration": 3,
    "venue_error": 1,
    "pnl": 2,
    # Submit, ack (latency measured by the library from the tracked submission) and cancel of one order.
    "order_lifecycle_tracked": 4,
}


class RawChildren(NamedTuple):
    """A hand-written exporter's children, resolved once: the fastest the same records can be."""

    submitted: Counter
    acked: Counter
    fills: Counter
    quantity: Counter
    notional: Counter
    fees: Counter
    canceled: Counter
    error: Counter
    position_quantity: Gauge
    position_notional: Gauge
    realized: Gauge
    unrealized: Gauge
    ack_latency: Histogram
    market_data_count: Counter
    market_data_last: Gauge
    loops: Counter
    loop_duration: Histogram
    loop_last: Gauge


def raw_children() -> RawChildren:
    raw_reg = CollectorRegistry()
    c5 = Counter("raw_c5", "x", ["venue", "strategy", "symbol", "side", "order_type"], registry=raw_reg)
    c4 = Counter("raw_c4", "x", ["venue", "strategy", "symbol", "side"], registry=raw_reg)
    c3 = Counter("raw_c3", "x", ["venue", "strategy", "symbol"], registry=raw_reg)
    c2 = Counter("raw_c2", "x", ["venue", "error_class"], registry=raw_reg)
    g2 = Gauge("raw_g2", "x", ["venue", "symbol"], registry=raw_reg)
    g2b = Gauge("raw_g2b", "x", ["venue", "strategy"], registry=raw_reg)
    h2 = Histogram("raw_h2", "x", ["venue", "order_type"], buckets=ACK_LATENCY_BUCKETS, registry=raw_reg)
    h0 = Histogram("raw_h0", "x", buckets=LOOP_DURATION_BUCKETS, registry=raw_reg)
    c0 = Counter("raw_c0", "x", registry=raw_reg)
    g0 = Gauge("raw_g0", "x", registry=raw_reg)
    return RawChildren(
        submitted=c5.labels("paper", "demo", "BTC-USD", "buy", "limit"),
        acked=c5.labels("paper", "demo", "BTC-USD", "buy", "market"),
        fills=c5.labels("paper", "demo", "BTC-USD", "buy", "maker"),
        quantity=c4.labels("paper", "demo", "BTC-USD", "buy"),
        notional=c4.labels("paper", "demo", "BTC-USD", "sell"),
        fees=c3.labels("paper", "demo", "BTC-USD"),
        canceled=c3.labels("paper", "demo", "ETH-USD"),
        error=c2.labels("paper", "network"),
        position_quantity=g2.labels("paper", "BTC-USD"),
        position_notional=g2.labels("paper", "ETH-USD"),
        realized=g2b.labels("paper", "a"),
        unrealized=g2b.labels("paper", "b"),
        ack_latency=h2.labels("paper", "limit"),
        market_data_count=c3.labels("paper", "demo", "SOL-USD"),
        market_data_last=g2.labels("paper", "SOL-USD"),
        loops=c0,
        loop_duration=h0,
        loop_last=g0,
    )


def raw_recorders() -> dict[str, Callable[[], None]]:
    """Each record call as a hand-written exporter makes it: closures over local, pre-resolved children."""
    (
        submitted,
        acked,
        fills,
        quantity,
        notional,
        fees,
        canceled,
        error,
        position_quantity,
        position_notional,
        realized,
        unrealized,
        ack_latency,
        market_data_count,
        market_data_last,
        loops,
        loop_duration,
        loop_last,
    ) = raw_children()
    now = time.time
    monotonic = time.monotonic
    raw_ids = iter(range(10**12))

    def raw_submitted() -> None:
        submitted.inc()

    def raw_ack() -> None:
        acked.inc()
        ack_latency.observe(0.0042)

    def raw_fill() -> None:
        fills.inc()
        quantity.inc(0.5)
        notional.inc(0.5 * 65000.0)
        fees.inc(1.2)

    def raw_position() -> None:
        position_quantity.set(0.5)
        position_notional.set(32000.0)

    def raw_market_data() -> None:
        market_data_count.inc()
        market_data_last.set(now())

    def raw_loop() -> None:
        loops.inc()
        loop_duration.observe(0.0031)
        loop_last.set(now())

    def raw_error() -> None:
        error.inc()

    def raw_pnl() -> None:
        realized.set(-12.5)
        unrealized.set(3.25)

    def raw_lifecycle() -> None:
        # The same 4 child operations and the same 2 clock reads a hand-written exporter needs to observe the
        # ack latency; the id is made the same way. What differs is the library's bookkeeping of the order.
        _coid = f"c{next(raw_ids)}"
        submitted_at = monotonic()
        submitted.inc()
        acked.inc()
        ack_latency.observe(monotonic() - submitted_at)
        canceled.inc()

    return {
        "order_submitted": raw_submitted,
        "order_acknowledged": raw_ack,
        "order_filled": raw_fill,
        "position": raw_position,
        "market_data": raw_market_data,
        "loop_iteration": raw_loop,
        "venue_error": raw_error,
        "pnl": raw_pnl,
        "order_lifecycle_tracked": raw_lifecycle,
    }


def our_recorders(m: BotMetrics) -> dict[str, Callable[[], None]]:
    """The same record calls through BotMetrics."""
    ours_ids = iter(range(10**12))

    def ours_lifecycle() -> None:
        coid = f"c{next(ours_ids)}"
        m.order_submitted("BTC-USD", "buy", "limit", client_order_id=coid)
        m.order_acknowledged("BTC-USD", "buy", "limit", client_order_id=coid)
        m.order_canceled("BTC-USD", client_order_id=coid)

    return {
        "order_submitted": lambda: m.order_submitted("BTC-USD", "buy", "limit"),
        "order_acknowledged": lambda: m.order_acknowledged("BTC-USD", "buy", "limit", latency_seconds=0.0042),
        "order_filled": lambda: m.order_filled("BTC-USD", "buy", 0.5, 65000.0, 1.2, "maker"),
        "position": lambda: m.position("BTC-USD", 0.5, 32000.0),
        "market_data": lambda: m.market_data("SOL-USD"),
        "loop_iteration": lambda: m.loop_iteration(0.0031),
        "venue_error": lambda: m.venue_error("network"),
        "pnl": lambda: m.pnl(-12.5, 3.25),
        "order_lifecycle_tracked": ours_lifecycle,
    }


def compare(
    ours: Callable[[], None], raw: Callable[[], None], ops: int, number: int, repeat: int, rounds: int
) -> dict[str, Any]:
    """One record call against its raw child operations, interleaved round by round."""
    ours()  # resolve the children once, as a running bot has
    ours_ns: list[float] = []
    raw_ns: list[float] = []
    ratios: list[float] = []
    # Interleave the two round by round so that drift in machine speed hits both alike.
    for _ in range(rounds):
        o = per_call_ns(ours, number, repeat)
        r = per_call_ns(raw, number, repeat)
        ours_ns.append(o)
        raw_ns.append(r)
        ratios.append(o / r)
    best_ratio = min(ours_ns) / min(raw_ns)
    return {
        "raw_child_operations": ops,
        "record_ns": spread(ours_ns),
        "raw_ns": spread(raw_ns),
        "ratio_of_best": round(best_ratio, 3),
        "ratio_per_round": spread(ratios, 3),
        "meets_goal": best_ratio <= RECORD_GOAL_RATIO,
    }


def record_costs(number: int, repeat: int, rounds: int) -> dict[str, dict[str, Any]]:
    reg = CollectorRegistry()
    ours = our_recorders(BotMetrics(venue="paper", strategy="demo", registry=reg, disable_created_series=True))
    raw = raw_recorders()
    return {
        name: compare(ours[name], raw[name], ops, number, repeat, rounds) for name, ops in RAW_CHILD_OPERATIONS.items()
    }


def populate(m: BotMetrics, target_series: int, registry: CollectorRegistry) -> int:
    """Add symbols until the registry holds about `target_series` series; returns the count."""
    i = 0
    while True:
        for _ in range(20):
            symbol = f"S{i:05d}-USD"
            for side in ("buy", "sell"):
                for order_type in ("limit", "market"):
                    m.order_submitted(symbol, side, order_type)
                    m.order_acknowledged(symbol, side, order_type)
                m.order_filled(symbol, side, 1.0, 10.0, 0.01, "maker")
                m.order_filled(symbol, side, 1.0, 10.0, 0.01, "taker")
            m.order_rejected(symbol, "insufficient_funds")
            m.order_canceled(symbol)
            m.position(symbol, 1.0, 10.0)
            m.market_data(symbol)
            i += 1
        count = series_count(registry)
        if count >= target_series:
            return count


def series_count(registry: CollectorRegistry) -> int:
    return sum(len(f.samples) for f in registry.collect())


def make_bot(target: int, data_dir: str, *, tune_switch_interval: bool = True) -> tuple[Instrumentation, int]:
    inst = Instrumentation(
        venue="paper",
        token=TOKEN,
        data_dir=data_dir,
        cardinality_limit=10**6,
        tune_switch_interval=tune_switch_interval,
        disable_created_series=True,
    )
    count = populate(inst.metrics, target, inst.registry)
    return inst, count


def scrape_times(targets: tuple[int, ...], rounds: int, data_dir: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for target in targets:
        inst, count = make_bot(target, data_dir)
        render = []
        for _ in range(rounds):
            start = time.perf_counter()
            body = generate_latest(inst.registry)
            render.append(time.perf_counter() - start)
        http, gzip_bytes = asyncio.run(_http_scrapes(inst, rounds))
        out[f"{target}"] = {
            "series": count,
            "bytes": len(body),
            "gzip_bytes": gzip_bytes,
            "render_ms": spread([t * 1000 for t in render], 2),
            "http_get_gzip_ms": spread([t * 1000 for t in http], 2),
        }
    return out


async def _http_scrapes(inst: Instrumentation, rounds: int) -> tuple[list[float], int]:
    port = await inst.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    url = f"http://127.0.0.1:{port}/metrics"
    size = 0

    def get() -> float:
        nonlocal size
        start = time.perf_counter()
        request = urllib.request.Request(url, headers=GZIP_HEADERS)
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
            if response.headers.get("Content-Encoding") != "gzip":
                raise RuntimeError("the bot did not gzip /metrics for a client that accepts it")
        size = len(payload)
        return time.perf_counter() - start

    try:
        return [await loop.run_in_executor(None, get) for _ in range(rounds)], size
    finally:
        await inst.stop()


SCRAPER = """
import sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
end = time.monotonic() + seconds
while time.monotonic() < end:
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as r:
        r.read()
    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
"""


async def _lag_samples(seconds: float, interval: float = LAG_SAMPLE_INTERVAL_SECONDS) -> list[float]:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        await asyncio.sleep(interval)
        samples.append(max(0.0, time.monotonic() - start - interval))
    return samples


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _lag_run(inst: Instrumentation | None, seconds: float, scrape: bool) -> list[float]:
    """Lag samples of this event loop for `seconds`: a bare loop when `inst` is None (the noise floor)."""
    if inst is None:
        return await _lag_samples(seconds)
    port = await inst.start("127.0.0.1", 0)
    proc = None
    try:
        if scrape:
            proc = subprocess.Popen([sys.executable, "-c", SCRAPER, f"http://127.0.0.1:{port}/metrics", str(seconds)])
        return await _lag_samples(seconds)
    finally:
        if proc is not None:
            proc.wait(timeout=60)
        await inst.stop()


def loop_lag(series: int, seconds: float, rounds: int, data_dir: str) -> dict[str, Any]:
    tuned, count = make_bot(series, data_dir)
    untuned, _ = make_bot(series, data_dir, tune_switch_interval=False)
    conditions: dict[str, tuple[Instrumentation | None, bool]] = {
        "idle_loop_noise_floor": (None, False),
        "without_scrape": (tuned, False),
        "with_scrape_every_1s": (tuned, True),
        "with_scrape_every_1s_default_switch_interval": (untuned, True),
    }
    # Conditions alternate within each round so that all of them see the same machine. The p99 is taken per
    # round (a pooled p99 would let one quiet round hide a noisy one); each condition reports the median of its
    # rounds' p99 with the min and max, and the goal is judged on the medians.
    p99s: dict[str, list[float]] = {name: [] for name in conditions}
    p50s: dict[str, list[float]] = {name: [] for name in conditions}
    worst: dict[str, float] = dict.fromkeys(conditions, 0.0)
    for _ in range(rounds):
        for name, (inst, scrape) in conditions.items():
            samples = asyncio.run(_lag_run(inst, seconds, scrape))
            p99s[name].append(pct(samples, 0.99) * 1000)
            p50s[name].append(pct(samples, 0.50) * 1000)
            worst[name] = max(worst[name], max(samples) * 1000)
    results: dict[str, Any] = {"series": count, "seconds_per_round": seconds, "rounds": rounds}
    for name in conditions:
        results[name] = {
            "p99_ms": spread(p99s[name], 3),
            "p50_ms_median": round(statistics.median(p50s[name]), 3),
            "max_ms": round(worst[name], 3),
        }
    base = statistics.median(p99s["without_scrape"])
    loaded = statistics.median(p99s["with_scrape_every_1s"])
    paired = [w - b for w, b in zip(p99s["with_scrape_every_1s"], p99s["without_scrape"], strict=True)]
    results["p99_added_ms"] = {"median_of_medians": round(loaded - base, 3), **spread(paired, 3)}
    results["goal_added_ms"] = LAG_GOAL_SECONDS * 1000
    if base > NOISY_BASELINE_P99_SECONDS * 1000:
        results["verdict"] = (
            f"inconclusive: p99 lag without scrapes is already {base:.3f} ms (> {NOISY_BASELINE_P99_SECONDS * 1000:g}"
            " ms); the machine is too noisy to judge a 2 ms goal"
        )
    elif loaded - base <= LAG_GOAL_SECONDS * 1000:
        results["verdict"] = "met"
    else:
        results["verdict"] = "missed"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args()
    number, repeat, rounds = (2_000, 2, 3) if args.quick else (20_000, 5, 7)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as data_dir:
        records = record_costs(number, repeat, rounds)
        report = {
            "benchmark": "bench_exporter",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "record_calls": records,
            "record_goal_ratio": RECORD_GOAL_RATIO,
            "record_calls_meeting_goal": sorted(k for k, v in records.items() if v["meets_goal"]),
            "record_calls_missing_goal": sorted(k for k, v in records.items() if not v["meets_goal"]),
            "scrape": scrape_times(SCRAPE_SIZES, 3 if args.quick else 10, data_dir),
            "load_average_at_end": [],
            "event_loop_lag": loop_lag(LAG_SERIES, 2 if args.quick else 10, 2 if args.quick else 3, data_dir),
        }
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
