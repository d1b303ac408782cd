"""The Patroni failover, many times: tests/reconciler/test_reconciler_patroni.py run `--runs` times, each on a fresh
etcd and two Patroni members (the test's own module fixture), its leader SIGKILLed under a stream of alerts into two
reconciler replicas. Each run's measurements are the test's own (its `PATRONI FAILOVER {...}` line); a run whose test
failed is counted with its last lines. Needs what the test needs (Debian's patroni and etcd-server, PostgreSQL's
server programs). Prints JSON: every run, and over the runs the acknowledged notifications lost, the commands sent
twice, pages, the kill -> new leader and new leader -> acting again seconds."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEST = "tests/reconciler/test_reconciler_patroni.py"
MARK = "PATRONI FAILOVER "
# A run's start of the cluster, the outage (up to Patroni's ttl) and the stream take 1 to 3 minutes here.
RUN_TIMEOUT_SECONDS = 900


def one_run() -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s", TEST],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    run: dict[str, Any] = json.loads(lines[-1][len(MARK) :]) if lines else {}
    run["passed"] = done.returncode == 0
    run["seconds"] = round(time.monotonic() - started, 1)
    if done.returncode != 0:
        run["failure"] = (done.stdout + done.stderr).splitlines()[-15:]
    return run


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": round(statistics.median(values), 2), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be 1 or more, got {args.runs}")
    runs = []
    for _ in range(args.runs):
        runs.append(one_run())
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # progress: one line a run
    measured = [r for r in runs if "alerts" in r]
    print(
        json.dumps(
            {
                "runs": len(runs),
                "passed": sum(1 for r in runs if r["passed"]),
                "alerts": sum(r["alerts"] for r in measured),
                "lost": sum(r.get("lost", 0) for r in measured),
                "duplicate_actions": sum(r["duplicate_actions"] for r in measured),
                "pages": sum(r["pages"] for r in measured),
                "taken_over": sum(r["taken_over"] for r in measured),
                "kill_to_new_leader_seconds": spread([r["kill_to_new_leader_seconds"] for r in measured]),
                "new_leader_to_acting_again_seconds": spread(
                    [round(r["kill_to_acting_again_seconds"] - r["kill_to_new_leader_seconds"], 1) for r in measured]
                ),
                "each": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
