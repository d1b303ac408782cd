"""Soak: the local stack (`trading-ops up`, fast profile) under a steady rhythm of faults for --minutes; prints JSON.

Every --every seconds one fault from a fixed cycle is injected into the paper bot (faults the reconciler heals
without restarting the bot, so each process lives the whole soak and its growth is its own): drop_connection,
silent_stream (the ETH-USD ticker silent across the bot's own resubscribes and reconnects, `persistent`, until the
reconciler's stream-resubscribe begins its run on TradingBotStreamChannelStale: then the soak clears it, so that the
reconciler's action meets the venue speaking again, as in tests/deploy/test_stream_e2e.py; a plain stale_market_data the
streaming paper bot heals itself within 3 s, before any alert), position_drift, reject_storm (the playbook pauses
the bot; the soak, as a human would, clears the fault and resumes it), a reject storm once in eight faults so that
each storm's 5-minute window clears before the next. Every --sample seconds the resident memory and open file
descriptors of the bot, the reconciler, Prometheus and Alertmanager are sampled. The report gives, per process, the
first and last values and the growth per hour (least-squares slope over the second half of the soak, after the caches
have warmed), and the episodes by alert and outcome. The bot runs without a daily loss limit (the demo's fees would
halt it within hours).

Beside it (unless --no-freqtrade) runs the stack of tests/deploy/test_freqtrade_e2e.py, tests/freqtrade_stack.py:
a real freqtrade trading on the paper gateway behind the `trading-ops freqtrade` sidecar, its own Prometheus,
Alertmanager and reconciler (a thread of this process, so not sampled). Every fourth fault interval, between the paper
bot's faults, its gateway drops every connection (the sidecar's reconnect, which the playbook asks for, ends the drop);
freqtrade, the sidecar and the gateway are sampled with the rest, and the freqtrade reconciler's episodes are reported
apart.
Run it for an hour at least (not in CI): `python benchmarks/stack/bench_soak.py --minutes 60`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from freqtrade_stack import Stack as FreqtradeStack  # noqa: E402
from freqtrade_stack import freqtrade_stack  # noqa: E402

from benchmarks.stack.bench_recovery import Stack, post_json  # noqa: E402

Fault = tuple[str, dict[str, Any]]
DROP: Fault = ("drop_connection", {})
SILENT: Fault = ("silent_stream", {"channel": "ticker", "symbol": "ETH-USD", "persistent": True})
SILENT_ALERT = "TradingBotStreamChannelStale"
DRIFT: Fault = ("position_drift", {"symbol": "SOL-USD", "quantity": 0.05})
# One reject storm in eight faults: TradingBotOrderRejectRatioHigh judges rejects over 5 minutes, so storms closer
# than the storm plus that window would keep one alert firing across them (one episode for several storms).
FAULTS: list[Fault] = [
    DROP,
    SILENT,
    DRIFT,
    ("reject_storm", {"seconds": 120}),
    DROP,
    SILENT,
    DRIFT,
    SILENT,
]
# After a reject storm the playbook pauses the bot; this long later the soak clears the fault and resumes it.
RESUME_AFTER_SECONDS = 90.0
MIB = 2**20
HOUR = 3600.0


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of value over time (per hour), over the second half of the samples."""
    half = points[len(points) // 2 :]
    if len(half) < 3:
        return None
    n = len(half)
    mean_t = sum(t for t, _ in half) / n
    mean_v = sum(v for _, v in half) / n
    var = sum((t - mean_t) ** 2 for t, _ in half)
    if var == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in half) / var * HOUR


def sample(pids: dict[str, int]) -> dict[str, tuple[float, int] | None]:
    out: dict[str, tuple[float, int] | None] = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            out[name] = (process.memory_info().rss / MIB, process.num_fds())
        except psutil.Error:
            out[name] = None
    return out


def process_report(points: list[tuple[float, float, int]]) -> dict[str, Any]:
    rss = [(t, v) for t, v, _ in points]
    fds = [(t, float(f)) for t, _, f in points]
    return {
        "samples": len(points),
        "rss_mib_first": round(points[0][1], 1),
        "rss_mib_last": round(points[-1][1], 1),
        "rss_mib_max": round(max(v for _, v, _ in points), 1),
        "rss_mib_per_hour": None if (g := slope_per_hour(rss)) is None else round(g, 2),
        "open_fds_first": points[0][2],
        "open_fds_last": points[-1][2],
        "open_fds_per_hour": None if (g := slope_per_hour(fds)) is None else round(g, 2),
    }


def outcomes(episodes: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(f"{e['alertname']}: {e['state']}" for e in episodes).items()))


@dataclass
class Soak:
    """The soak's rhythm from `started` (monotonic seconds): a sample of every process every `sample_every` seconds,
    a paper bot fault every `every` seconds (cycling through FAULTS), the resume after a reject storm, and the
    freqtrade gateway's drop every fourth fault interval, between the paper bot's faults."""

    stack: Stack
    ft: FreqtradeStack | None
    pids: dict[str, int]
    every: float
    sample_every: float
    started: float
    series: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)
    injected: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    cycle: int = 0
    resume_at: float | None = None
    # A silent_stream waiting for the reconciler's run: the episodes known when it was injected.
    silent_known: set[Any] | None = None
    # How each silent_stream ended at the venue: cleared once the reconciler acted, or at the next fault without it.
    silences_cleared: Counter[str] = field(default_factory=Counter)
    next_sample: float = field(init=False)
    next_fault: float = field(init=False)
    next_ft_fault: float = field(init=False)

    def __post_init__(self) -> None:
        self.next_sample = self.started
        self.next_fault = self.started + 10
        # The freqtrade's gateway drops its connections every fourth fault, between the paper bot's.
        self.next_ft_fault = self.started + 10 + self.every * 2.5

    def run(self, minutes: float) -> None:
        end = self.started + minutes * 60
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= self.next_sample:
                self.take_sample(now)
            if self.resume_at is not None and now >= self.resume_at:
                self.resume()
            if self.silent_known is not None:
                self.clear_silence_once_acted_on()
            if now >= self.next_fault:
                self.inject(now)
            if self.ft is not None and now >= self.next_ft_fault:
                self.drop_freqtrade_gateway(self.ft, now)
            time.sleep(1.0)

    def take_sample(self, now: float) -> None:
        for name, value in sample(self.pids).items():
            if value is not None:
                self.series.setdefault(name, []).append((now - self.started, value[0], value[1]))
        self.next_sample = now + self.sample_every

    def control(self, command: str, body: dict[str, Any]) -> bool:
        """A control command to the paper bot; False (and counted as refused) when it did not answer."""
        try:
            post_json(f"{self.stack.urls['bot']}/control/{command}", self.stack.token, body)
        except OSError:
            self.refused[command] += 1
            return False
        return True

    def resume(self) -> None:
        """The fault cleared and the bot resumed after a reject storm, as a human would."""
        for command in ("clear_chaos", "resume"):
            self.control(command, {})
        self.resume_at = None

    def clear_silence_once_acted_on(self) -> None:
        """The venue speaks again once the reconciler's run on the silent ticker has begun (its first step)."""
        try:
            episodes = self.stack.episodes()
        except OSError:
            return
        if any(
            a["steps"]
            for e in episodes
            if e["alertname"] == SILENT_ALERT and e["id"] not in (self.silent_known or ())
            for a in e["attempts"]
        ):
            self.control("clear_chaos", {})
            self.silent_known = None
            self.silences_cleared["once_the_reconciler_acted"] += 1

    def inject(self, now: float) -> None:
        if self.silent_known is not None:  # never acted on within a fault interval: cleared, and counted
            self.control("clear_chaos", {})
            self.silent_known = None
            self.silences_cleared["at_the_next_fault_never_acted_on"] += 1
        fault, body = FAULTS[self.cycle % len(FAULTS)]
        self.cycle += 1
        try:  # the episodes a silent_stream's own are told apart from
            known = {e["id"] for e in self.stack.episodes()} if fault == SILENT[0] else set()
        except OSError:
            self.refused["episodes (before silent_stream)"] += 1
            self.next_fault = now + self.every
            return
        if self.control(fault, body):
            self.injected[fault] += 1
            if fault == "reject_storm":
                self.resume_at = now + RESUME_AFTER_SECONDS
            if fault == SILENT[0]:
                self.silent_known = known
        self.next_fault = now + self.every

    def drop_freqtrade_gateway(self, ft: FreqtradeStack, now: float) -> None:
        try:
            ft.gateway.chaos("drop_connection")
            self.injected["freqtrade gateway drop_connection"] += 1
        except OSError:
            self.refused["freqtrade gateway drop_connection"] += 1
        self.next_ft_fault = now + self.every * 4


@dataclass(frozen=True)
class Outcome:
    """What the stacks hold at the end of the soak."""

    episodes: list[dict[str, Any]]
    restarted: list[str]
    ft_episodes: list[dict[str, Any]]


def watched_pids(stack: Stack, ft: FreqtradeStack | None) -> dict[str, int]:
    """The processes sampled: the stack's children, and the freqtrade, its sidecar and its gateway beside it."""
    pids = stack.child_pids()
    if ft is not None:
        pids |= {"freqtrade": ft.pid(), "freqtrade-sidecar": ft.sidecar_pid, "gateway": ft.gateway.proc.pid}
    return pids


def outcome(stack: Stack, ft: FreqtradeStack | None, pids: dict[str, int]) -> Outcome:
    episodes = stack.episodes_all()
    restarted = [name for name, pid in stack.child_pids().items() if pids.get(name) != pid]
    ft_episodes: list[dict[str, Any]] = []
    if ft is not None:
        ft_episodes = ft.all_episodes(limit=500)
        if ft.pid() != pids["freqtrade"]:
            restarted.append("freqtrade")
    return Outcome(episodes, restarted, ft_episodes)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between faults (default 60)")
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between samples (default 15)")
    parser.add_argument(
        "--no-freqtrade", action="store_true", help="without the freqtrade behind its sidecar (the paper stack only)"
    )
    args = parser.parse_args()
    if args.minutes <= 0 or args.every <= 0 or args.sample <= 0:
        parser.error("--minutes, --every and --sample must be positive")
    return args


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp, contextlib.ExitStack() as held:
        # No daily loss limit: the demo's fees and spreads would halt the bot within hours, and a halted bot stops
        # the workload whose growth the soak measures (the loss limit has a scenario of its own in bench_mttr).
        stack = Stack(Path(tmp), "fast", cooldown=min(args.every, 300.0), bot={"risk": {"daily_loss_limit": 0}})
        ft: FreqtradeStack | None = None
        try:
            if not args.no_freqtrade:
                ft = held.enter_context(freqtrade_stack(Path(tmp) / "freqtrade"))
            stack.wait_ready()
            pids = watched_pids(stack, ft)
            soak = Soak(stack, ft, pids, args.every, args.sample, time.monotonic())
            soak.run(args.minutes)
            at_end = outcome(stack, ft, pids)
        finally:
            code = stack.stop()
    report: dict[str, Any] = {
        "benchmark": "soak: the local stack under a steady rhythm of faults",
        "minutes": args.minutes,
        "fault_every_seconds": args.every,
        "faults_injected": dict(soak.injected),
        "commands_refused": dict(soak.refused),
        "silent_streams_cleared": dict(soak.silences_cleared),
        "processes": {name: process_report(points) for name, points in soak.series.items()},
        "processes_restarted": at_end.restarted,
        "episodes": len(at_end.episodes),
        "episodes_by_alert_and_outcome": outcomes(at_end.episodes),
        "up_exit_status": code,
    }
    if ft is not None:
        report["freqtrade_episodes"] = len(at_end.ft_episodes)
        report["freqtrade_episodes_by_alert_and_outcome"] = outcomes(at_end.ft_episodes)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
