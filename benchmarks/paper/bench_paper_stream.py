"""The paper bot's fills streamed against polled, in one run; prints JSON.

A streaming paper bot (paper.stream: true, the demo strategy on a venue ticking every 10 ms) trades for `--seconds`;
each fill's latency is the time the broker handed it to the bot minus the venue's execution time (one process, one
clock), by the source that delivered it. Then its private stream is dropped and refused for `--gap` seconds while it
trades on: the gap's fills arrive by the REST poll (every second while the stream is down), the baseline of the same
run. Also: the bot's venue requests per minute streaming, against the same bot REST-only (paper.stream: false, whose
events are direct calls: no poll at all) for as long; and every fill delivered once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from paper_helpers import TOKEN, fast_config  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from trading_ops.bot.broker import VenueFill  # noqa: E402
from trading_ops.paper.bot import PaperBot  # noqa: E402
from trading_ops.paper.streaming import StreamingPaperBroker  # noqa: E402


def config(tmp: Path, *, stream: bool) -> Any:
    """The demo's own cadence (a strategy step every 0.5 s on a venue ticking every 0.1 s, orders aged out after
    5 s), not the tests' 20 ms: what a user runs."""
    return fast_config(
        tmp, stream=stream, tick_interval_seconds=0.1, loop_interval_seconds=0.5, order_max_age_seconds=5.0
    )


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def requests(bot: PaperBot) -> float:
    total = 0.0
    for family in bot.inst.registry.collect():
        if family.name == "tradingbot_venue_requests":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def run_streaming(tmp: Path, seconds: float, gap: float) -> dict[str, Any]:
    bot = PaperBot(config(tmp, stream=True), token=TOKEN, registry=CollectorRegistry(), chaos=True)
    await bot.start("127.0.0.1", 0)
    broker = bot.broker
    assert isinstance(broker, StreamingPaperBroker) and broker.fills is not None
    seen: dict[str, list[float]] = {"stream": [], "poll": []}
    ids: list[str] = []
    feed = broker.fills
    offer = feed.offer

    async def timed(fill: VenueFill, source: str) -> bool:
        # Timed as the broker hands the fill over (the bot's journal write after it is the bot's, in both modes).
        fresh = fill.trade_id not in ids
        if fresh:
            ids.append(fill.trade_id)
            seen[source].append(time.time() - fill.executed_at.timestamp())
        return await offer(fill, source)

    feed.offer = timed  # type: ignore[method-assign]
    before = {f.trade_id for f in await bot.paper_venue.recent_fills()}
    try:
        requests_before, started = requests(bot), time.monotonic()
        await asyncio.sleep(seconds)
        per_minute = (requests(bot) - requests_before) / (time.monotonic() - started) * 60
        streamed = list(seen["stream"])
        polled_before = len(seen["poll"])
        broker.push.drop("private", gap)
        await asyncio.sleep(gap)
        stream = broker.streams["private"]
        await asyncio.wait_for(stream.connected.wait(), 60)
        await broker.drain_events()
        await broker.reconcile_rest()
        gap_polled = seen["poll"][polled_before:]
        venue = {f.trade_id for f in await bot.paper_venue.recent_fills()} - before
        delivered = [i for i in ids if i not in before]
        reconnects = bot.inst.registry.get_sample_value(
            "tradingbot_stream_reconnects_total", {"endpoint": "private", "reason": "closed"}
        )
    finally:
        await bot.stop()
    return {
        "fills_streamed": len(streamed),
        "streamed_p50_seconds": percentile(streamed, 0.5),
        "streamed_p99_seconds": percentile(streamed, 0.99),
        "gap_fills_polled": len(gap_polled),
        "polled_p50_seconds": percentile(gap_polled, 0.5),
        "polled_p99_seconds": percentile(gap_polled, 0.99),
        "venue_requests_per_minute": round(per_minute, 1),
        "private_reconnects": reconnects,
        "venue_fills": len(venue),
        "delivered": len(delivered),
        "each_fill_once": sorted(delivered) == sorted(venue),
    }


async def run_rest_only(tmp: Path, seconds: float) -> dict[str, Any]:
    bot = PaperBot(config(tmp, stream=False), token=TOKEN, registry=CollectorRegistry())
    await bot.start("127.0.0.1", 0)
    try:
        before, started = requests(bot), time.monotonic()
        await asyncio.sleep(seconds)
        per_minute = (requests(bot) - before) / (time.monotonic() - started) * 60
    finally:
        await bot.stop()
    return {"venue_requests_per_minute": round(per_minute, 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--gap", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        streaming = await run_streaming(Path(a), args.seconds, args.gap)
        rest_only = await run_rest_only(Path(b), args.seconds)
    p50, polled = streaming["streamed_p50_seconds"], streaming["polled_p50_seconds"]
    print(
        json.dumps(
            {
                "benchmark": "paper_stream",
                "seconds": args.seconds,
                "gap_seconds": args.gap,
                "streaming": streaming,
                "rest_only": rest_only,
                "polled_over_streamed_p50": round(polled / p50, 1) if p50 and polled else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
