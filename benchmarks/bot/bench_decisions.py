"""Benchmark verifying a signed decision at the bot: `ramp_promote` with its decision against the same control call
without verification, in one run.

A real paper bot (the paper venue in-process) with a three-stage ramp serves its control API over HTTP on 127.0.0.1.
Each round, interleaved so that the machine's drift falls on both alike:

- verified: POST /control/ramp_promote {"stage": "bigger", "decision": SIGNED} — the bot checks the Ed25519 signature,
  the kind, its name, the stage, the expiry, the count rule and that the id is unspent, writes the id to its data dir
  (fsynced) and promotes;
- baseline: POST /control/ramp_promote_unverified {"stage": "bigger"} — registered by this benchmark on the same bot:
  the promotion exactly as the bot did it before decisions (the same ramp change, its state file fsynced), no check.

Between calls the bot is demoted in-process (not timed). The decisions are signed beforehand (signing is the
reconciler's cost, not the bot's). Also measured in-process: the verification alone (verify + spend), and verify
alone. Prints JSON: p50 and p99 of each, and the ratios verified/baseline (goal: <= 2x).

Usage: python benchmarks/bot/bench_decisions.py [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from decision_helpers import signed  # noqa: E402
from paper_helpers import IdleStrategy, fast_config  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from benchmarks._shared.latency import summary_ms  # noqa: E402
from trading_ops.config import parse_config  # noqa: E402
from trading_ops.decisions import RAMP_PROMOTE  # noqa: E402
from trading_ops.paper.bot import PaperBot  # noqa: E402

TOKEN = "bench-token-0123456789"
STAGES = [
    {"name": "small", "max_position_notional": 1000, "symbols": ["BTC-USD"], "min_time": "1s"},
    {"name": "bigger", "max_position_notional": 2500, "symbols": ["BTC-USD"], "min_time": "1s"},
    {"name": "two-pairs", "max_position_notional": 2500, "symbols": ["BTC-USD", "ETH-USD"]},
]
WARMUP = 20


async def run(tmp: Path, calls: int) -> dict[str, Any]:
    config = fast_config(tmp, partial_fill_probability=0.0)
    config.bot.ramp = parse_config({"bot": {"ramp": {"stages": STAGES}}}).bot.ramp
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    bot.ramp.since = 0.0  # the first stage's minimum time has passed

    async def unverified(args: dict[str, Any]) -> dict[str, Any]:
        """The promotion as the bot did it before decisions: the approval a typed name."""
        stage = str(args["stage"])
        bot.ramp.promote(stage, by=str(args.get("approval", "")), why=f"promoted to {stage}")
        return {"ramp": bot.ramp.status()}

    bot.inst.control.register("ramp_promote_unverified", unverified)
    port = await bot.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/control/"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    tokens = [signed(RAMP_PROMOTE, stage="bigger", ttl=3600) for _ in range(calls + WARMUP)]
    times: dict[str, list[float]] = {"verified": [], "baseline": []}
    try:
        async with aiohttp.ClientSession() as session:

            async def call(command: str, body: dict[str, Any]) -> float:
                start = time.perf_counter()
                async with session.post(url + command, json=body, headers=headers) as resp:
                    await resp.read()
                    elapsed = time.perf_counter() - start
                    assert resp.status == 200, (command, resp.status, await resp.text())
                bot.ramp.demote("bench: back to the first stage")
                bot.ramp.since = 0.0
                return elapsed

            for i in range(calls + WARMUP):
                order = ("verified", "baseline") if i % 2 else ("baseline", "verified")
                for kind in order:
                    if kind == "verified":
                        took = await call("ramp_promote", {"stage": "bigger", "decision": tokens[i]})
                    else:
                        took = await call("ramp_promote_unverified", {"stage": "bigger", "approval": "bench"})
                    if i >= WARMUP:
                        times[kind].append(took)
        # The verification alone, in process: verify (signature and every field) + spend (the id fsynced), and
        # verify alone.
        gate = bot.decisions
        alone: list[float] = []
        with_spend: list[float] = []
        for _ in range(calls):
            token = signed(RAMP_PROMOTE, stage="bigger", ttl=3600)
            start = time.perf_counter()
            decision = gate.check(token, RAMP_PROMOTE, "bigger")
            middle = time.perf_counter()
            gate.spend(decision)
            end = time.perf_counter()
            alone.append(middle - start)
            with_spend.append(end - start)
    finally:
        await bot.stop()
    verified, baseline = summary_ms(times["verified"]), summary_ms(times["baseline"])
    return {
        "benchmark": "decision verification at the bot (ramp_promote over HTTP, real Ed25519 keys)",
        "python": platform.python_version(),
        "calls_each": calls,
        "control_call_verified": verified,
        "control_call_baseline": baseline,
        "ratio_p50": round(verified["p50_ms"] / baseline["p50_ms"], 3),
        "ratio_p99": round(verified["p99_ms"] / baseline["p99_ms"], 3),
        "goal_ratio_max": 2.0,
        "verify_only": summary_ms(alone),
        "verify_and_spend": summary_ms(with_spend),
        "used_ids_kept": len(bot.decisions.verifier.used.used) if bot.decisions.verifier.used else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(Path(tmp), args.calls))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
