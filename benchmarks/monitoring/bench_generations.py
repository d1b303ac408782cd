"""The two generations of Prometheus and Alertmanager the tests run, measured against each other in one run; prints
JSON. The baseline is the system's pair (Debian bookworm's Prometheus 2.42 / Alertmanager 0.25, on PATH); the other is
the long-term-support pair docker-compose.yml pins (Prometheus 3.5.3 / Alertmanager 0.33.1, Debian's packages that
`make monitoring-lts` unpacks, tests/monitoring_lts.py).

- Rule tests: every promtool test file (prometheus/tests/*_test.yml) run by each generation's promtool, pass or fail
  with its seconds: the table of which file holds on which generation.
- The stack: drop_connection on `trading-ops up` (fast profile) on each pair, fault -> alert firing in Prometheus
  (the episode's startsAt) -> the reconciler's first action -> the episode recovered (verified in Prometheus), as
  bench_mttr.py measures a round. Both stacks run side by side and the rounds alternate between them (the first of
  each pair of rounds alternating too), so that the machine's load of the moment falls on both alike; each stack's
  rounds are --gap apart at least (the playbook's cooldowns are capped at it, and Alertmanager drops the previous
  round's group). The servers each stack runs are read from their build information, not assumed from PATH.

    python benchmarks/monitoring/bench_generations.py [--rounds 5] [--skip-rules] [--skip-stack]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

import monitoring_lts  # noqa: E402

from benchmarks.stack.bench_mttr import BY_FAULT, UNREACHABLE_LOSS_LIMIT, Probe, run_round, settle  # noqa: E402
from benchmarks.stack.bench_recovery import Stack, get_json, summary  # noqa: E402

RULE_TESTS = sorted((REPO_ROOT / "prometheus" / "tests").glob("*_test.yml"))
SCENARIO = BY_FAULT["drop_connection"]
PROFILE = "fast"
DEFAULT_ROUNDS = 5
# bench_recovery's gap: Alertmanager deletes an empty alert group every 30 s, and a fault in a lingering group would
# wait for its group_interval.
DEFAULT_GAP_SECONDS = 35.0
ROUND_TIMEOUT = 120.0
STAGES = ("detected", "first_action", "end")


@dataclass(frozen=True)
class Generation:
    name: str
    bin_dir: Path | None  # None: the system's, on PATH

    def path(self) -> str:
        current = os.environ.get("PATH", os.defpath)
        return current if self.bin_dir is None else f"{self.bin_dir}{os.pathsep}{current}"

    def promtool(self) -> str:
        return str(self.bin_dir / "promtool") if self.bin_dir is not None else "promtool"


SYSTEM = Generation("system", None)
LTS = Generation("lts", monitoring_lts.BIN_DIR)
GENERATIONS = (SYSTEM, LTS)


@contextlib.contextmanager
def on_path(generation: Generation) -> Iterator[None]:
    """The generation's binaries first on PATH while `trading-ops up` is started (it finds its servers there and its
    children inherit the environment it was given)."""
    before = os.environ.get("PATH", os.defpath)
    os.environ["PATH"] = generation.path()
    try:
        yield
    finally:
        os.environ["PATH"] = before


def promtool_version(generation: Generation) -> str:
    out = subprocess.run([generation.promtool(), "--version"], capture_output=True, text=True, timeout=60, check=True)
    return (out.stdout or out.stderr).splitlines()[0]


def rule_test(generation: Generation, test_file: Path) -> dict[str, Any]:
    started = time.monotonic()
    result = subprocess.run(
        [generation.promtool(), "test", "rules", test_file.name],
        cwd=test_file.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out: dict[str, Any] = {
        "result": "pass" if result.returncode == 0 else "fail",
        "seconds": round(time.monotonic() - started, 2),
    }
    if result.returncode != 0:
        out["output"] = (result.stdout + result.stderr).strip()[-600:]
    return out


def rule_tests() -> dict[str, Any]:
    """Each test file on each generation, two promtool runs at a time (the machine's two cores)."""
    jobs = [(g, f) for f in RULE_TESTS for g in GENERATIONS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: rule_test(*job), jobs))
    files: dict[str, dict[str, Any]] = {}
    for (generation, test_file), result in zip(jobs, results, strict=True):
        files.setdefault(test_file.name, {})[generation.name] = result
    return {
        "promtool": {g.name: promtool_version(g) for g in GENERATIONS},
        "files": {name: {g: r["result"] for g, r in per.items()} for name, per in files.items()},
        "passed": {g.name: sum(per[g.name]["result"] == "pass" for per in files.values()) for g in GENERATIONS},
        "of": len(files),
        "seconds": {name: {g: r["seconds"] for g, r in per.items()} for name, per in files.items()},
        "failures": {
            f"{name}/{g}": r["output"] for name, per in files.items() for g, r in per.items() if r["result"] == "fail"
        },
    }


def versions(stack: Stack) -> dict[str, str]:
    """What the stack's servers say they are."""
    prometheus = get_json(f"{stack.urls['prometheus']}/api/v1/status/buildinfo")["data"]["version"]
    alertmanager = get_json(f"{stack.urls['alertmanager']}/api/v2/status")["versionInfo"]["version"]
    return {"prometheus": str(prometheus), "alertmanager": str(alertmanager)}


def stopped(codes: dict[str, int | None], name: str, stack: Stack) -> None:
    """Stop the stack (its children by pid, whatever happened) and keep `up`'s exit status."""
    codes[name] = stack.stop()


def stacks(rounds: int, gap: float) -> dict[str, Any]:
    """Both stacks up, the rounds alternating between them; per generation the rounds' results and summaries."""
    results: dict[str, list[dict[str, Any]]] = {g.name: [] for g in GENERATIONS}
    running: dict[str, Stack] = {}
    codes: dict[str, int | None] = {}
    with contextlib.ExitStack() as cleanup:
        for generation in GENERATIONS:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-generations-{generation.name}-"))
            with on_path(generation):
                stack = Stack(Path(tmp), PROFILE, gap, bot=UNREACHABLE_LOSS_LIMIT)
            running[generation.name] = stack
            cleanup.callback(stopped, codes, generation.name, stack)
        for stack in running.values():
            stack.wait_ready()
        servers = {name: versions(stack) for name, stack in running.items()}
        not_before = dict.fromkeys(running, 0.0)
        for number in range(1, rounds + 1):
            order = [g.name for g in GENERATIONS]
            for name in order if number % 2 else order[::-1]:
                stack = running[name]
                settle(stack, 300)
                time.sleep(max(0.0, not_before[name] - time.monotonic()))
                status = Probe(stack).bot("status") or {}
                result = run_round(stack, number, SCENARIO, ROUND_TIMEOUT, status.get("pid"))
                not_before[name] = time.monotonic() + gap
                results[name].append(result)
                print(json.dumps({"generation": name, **result}), file=sys.stderr)
    per_generation: dict[str, Any] = {}
    for name, found in results.items():
        ok = [r for r in found if "failure" not in r]
        timed = [r for r in ok if {"end", "detected"} <= r["seconds"].keys()]
        per_generation[name] = {
            "servers": servers[name],
            "rounds": len(found),
            "failures": [r["failure"] for r in found if "failure" in r],
            **{
                f"fault_to_{stage}": summary([r["seconds"][stage] for r in ok if stage in r["seconds"]])
                for stage in STAGES
            },
            "added_on_top_of_detection": summary([r["seconds"]["end"] - r["seconds"]["detected"] for r in timed]),
            "actions_per_round": [len(r["actions"]) for r in ok],
            "episode_states": sorted({state for r in ok for state in r["episodes"].values()}),
            "up_exit_status": codes.get(name),
        }
    return per_generation


def against_baseline(per_generation: dict[str, Any]) -> dict[str, Any]:
    """The LTS pair's medians against the system's: the difference in seconds and the ratio."""
    out: dict[str, Any] = {}
    for key in [f"fault_to_{stage}" for stage in STAGES] + ["added_on_top_of_detection"]:
        base, other = per_generation[SYSTEM.name][key]["p50"], per_generation[LTS.name][key]["p50"]
        out[key] = {
            "system_p50": base,
            "lts_p50": other,
            "difference_seconds": round(other - base, 3) if base is not None and other is not None else None,
            "ratio": round(other / base, 2) if base and other is not None else None,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="drop_connection rounds per generation")
    parser.add_argument("--gap", type=float, default=DEFAULT_GAP_SECONDS, help="seconds between a stack's rounds")
    parser.add_argument("--skip-rules", action="store_true", help="leave out the promtool rule tests")
    parser.add_argument("--skip-stack", action="store_true", help="leave out the stacks")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds >= 1")
    missing = monitoring_lts.missing()
    if missing:
        raise SystemExit(
            f"bench_generations: {', '.join(missing)} not in {monitoring_lts.BIN_DIR}: run make monitoring-lts"
        )
    report: dict[str, Any] = {
        "benchmark": "Prometheus / Alertmanager generations: the rule tests on each, and drop_connection fault -> "
        "verified on each pair in the same run (baseline: the system's pair)",
        "baseline": SYSTEM.name,
    }
    if not args.skip_rules:
        report["rule_tests"] = rule_tests()
    if not args.skip_stack:
        per_generation = stacks(args.rounds, args.gap)
        report["stack"] = {
            "fault": SCENARIO.fault,
            "alert": SCENARIO.alert,
            "profile": PROFILE,
            "rounds": args.rounds,
            "gap_seconds": args.gap,
            "generations": per_generation,
            "lts_against_system": against_baseline(per_generation),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
