"""Benchmark what answering a control command only once its journal record is written costs: `pause` then `resume`
over HTTP on a real paper bot (its SQLite journal, synchronous=FULL), each answered after its `control` event is
written (as the bot does), against the same calls answered at once with the write left in the background (as it did
before: trading_ops.bot.server's `_journaled` replaced, for those calls only, by a no-op), in one run.

Interleaved in rounds so that the machine's drift falls on both alike. Prints JSON: p50 and p99 of each, the ratios,
and the journal's control events counted at the end (every call of both kinds is journaled).

Usage: python benchmarks/bot/bench_control_journal.py [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from paper_helpers import IdleStrategy, fast_config  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from benchmarks._shared.latency import summary_ms  # noqa: E402
from trading_ops.bot import server  # noqa: E402
from trading_ops.paper.bot import PaperBot  # noqa: E402

TOKEN = "bench-token-0123456789"
WARMUP = 10
ROUND = 10  # calls of one kind in a row


async def run(tmp: Path, calls: int) -> dict[str, Any]:
    bot = PaperBot(fast_config(tmp, partial_fill_probability=0.0), token=TOKEN, registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    port = await bot.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/control/"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    waited = server._journaled

    async def at_once(_call: Any, _write: Awaitable[Any] | None) -> None:
        """The answer before the write (the write goes on in the background)."""

    times: dict[str, list[float]] = {"journaled": [], "background": []}
    try:
        async with aiohttp.ClientSession() as session:
            command = "pause"
            n = 0
            while min(len(v) for v in times.values()) < calls:
                kind = ("journaled", "background")[(n // ROUND) % 2]
                server._journaled = waited if kind == "journaled" else at_once  # type: ignore[assignment]
                start = time.perf_counter()
                async with session.post(url + command, json={}, headers=headers) as resp:
                    await resp.read()
                    took = time.perf_counter() - start
                    assert resp.status == 200, (command, resp.status, await resp.text())
                if n >= WARMUP and len(times[kind]) < calls:
                    times[kind].append(took)
                command = "resume" if command == "pause" else "pause"
                n += 1
        server._journaled = waited  # type: ignore[assignment]
        await bot.journal_writes.wait()
        journaled = len(bot.recovery_store.commands(limit=10 * calls + 100))
    finally:
        server._journaled = waited  # type: ignore[assignment]
        await bot.stop()
    after, before = summary_ms(times["journaled"]), summary_ms(times["background"])
    return {
        "benchmark": "a control command answered once journaled, against answered before its write (pause/resume)",
        "python": platform.python_version(),
        "calls_each": calls,
        "answered_once_journaled": after,
        "answered_before_the_write": before,
        "ratio_p50": round(after["p50_ms"] / before["p50_ms"], 3),
        "ratio_p99": round(after["p99_ms"] / before["p99_ms"], 3),
        "calls_sent": n,
        "control_events_journaled": journaled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(Path(tmp), args.calls)), indent=2))


if __name__ == "__main__":
    main()
