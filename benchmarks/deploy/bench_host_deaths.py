"""A bot host killed and returned N times (default 10), as operators live it; prints JSON.

The set-up and the sequence are tests/host_deaths.py's (a test host in a network namespace with the example ccxt bot
and Debian's prometheus-node-exporter, the shipped rules and routing at the profile, real Prometheus and Alertmanager,
the reconciler with the packaged rules as shipped, a pager receiver of our own): the first death, then in turn a death
after the host came back and traded a while (within bot-host-down's 10-minute cooldown) and a death as soon as the
previous death's alert was over (inside the pager group's interval); after the last, the host comes back for good.

Per death: seconds from the kill to the bot's orders gone from the venue and to the host-down page at the pager, and
how often it came. The bot holds no position (its bids rest, nothing fills), so no exposure page is owed: one would be
a false page (tests/deploy/test_host_down_e2e.py's first test measures the exposure page of a position held).
Then the DESIGN goal's counts over the run (goal 0 each): false pages (anything else paged, or a death's page twice:
a returning host's TradingBotDown, TradingBotHeartbeatStale, TradingOpsRemediationFailed, ...), late pages (a death's
page later than the same run's first death's by more than LATE_MARGIN_SECONDS: the baseline is the first death), and
resolved notices of an earlier death that reached the pager after a later kill.

Needs root, `ip`, prometheus, prometheus-alertmanager and prometheus-node-exporter. Minutes: run it in the background
with a timeout, e.g. `timeout 40m .venv/bin/python benchmarks/deploy/bench_host_deaths.py --profile fast`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from host_deaths import LATE_MARGIN_SECONDS, Pager, host_deaths, judge, plan, play  # noqa: E402

from trading_ops.stack.profiles import PROFILES  # noqa: E402

# The quiet a returned host is given at each profile before it dies again (long enough for a returning host's false
# pages: TradingBotDown's and TradingBotHeartbeatStale's `for:` at the profile, and a reconciler's run after them).
QUIET_SECONDS = {"fast": 40.0, "standard": 150.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deaths", type=int, default=10, help="how many times the host dies (default 10)")
    parser.add_argument("--profile", choices=sorted(QUIET_SECONDS), default="fast")
    parser.add_argument("--quiet", type=float, default=None, help="seconds a returned host trades before it dies")
    args = parser.parse_args()
    if args.deaths < 1:
        parser.error("--deaths: at least 1")
    profile = PROFILES[args.profile]
    quiet = QUIET_SECONDS[args.profile] if args.quiet is None else args.quiet
    pager = Pager()
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-host-deaths-") as tmp,
            host_deaths(Path(tmp), pager, profile) as run,
        ):
            error = ""
            try:
                play(run, plan(args.deaths), quiet_seconds=quiet, page_deadline=300)
            except AssertionError as exc:  # a death that never paged: the counts so far say so
                error = str(exc)
            verdict = judge(run)
    finally:
        pager.close()
    print(
        json.dumps(
            {
                "profile": args.profile,
                "deaths_asked": args.deaths,
                "quiet_seconds": quiet,
                "late_margin_seconds": LATE_MARGIN_SECONDS,
                **verdict,
                "stale_resolved_count": len(verdict["stale_resolved"]),
                "error": error,
                "run_seconds": round(time.monotonic() - started, 1),
            },
            indent=1,
        )
    )
    return 0 if not error else 1


if __name__ == "__main__":
    sys.exit(main())
