"""Start-up cost of the `trading-ops` command line, each command a fresh process; prints JSON.

Median wall and CPU time (user + system of the child, from wait4) over --runs starts of: `--help`, `stackctl --help`,
`stackctl show` as the reconciler's systemd steps run it in the local stack (`python -m trading_ops`, the stack's
kind of configuration in TRADING_OPS_CONFIG, a database.url given) against a state directory where no `up` runs
(the client's whole path: parse, configuration, connect; exit 1), `upkeep cleanup --help`, and `upkeep cleanup`
(as the disk rule's step runs it) on a temporary configuration whose data directory holds files to delete. Beside
them, the baselines measured in the same run, interleaved with the commands: a bare `python -c pass`, and
`python -c "import aiohttp, sqlalchemy.orm"` (what a command paid for its imports before they were deferred).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = (sys.executable, "-m", "trading_ops")
# Files the cleanup case finds in its scratch directory before each run (the rule keeps none of them).
SCRATCH_FILES = 20
SCRATCH_FILE_BYTES = 4096


def write_config(workdir: Path) -> Path:
    """A configuration like the stack's generated one: its own SQLite database (absolute path), a data directory
    with a scratch directory that cleanup empties."""
    data_dir = workdir / "data"
    (data_dir / "scratch").mkdir(parents=True)
    path = workdir / "trading-ops.yaml"
    path.write_text(
        f"database:\n  url: sqlite:///{workdir / 'trading-ops.db'}\n"
        f"bot:\n  data_dir: {data_dir}\n"
        f"backup:\n  directory: {workdir / 'backups'}\n"
        "upkeep:\n  cleanup:\n    scratch:\n      path: '{data_dir}/scratch'\n      pattern: '*'\n      max_bytes: 0\n",
        encoding="utf-8",
    )
    return path


def fill_scratch(workdir: Path) -> None:
    for i in range(SCRATCH_FILES):
        (workdir / "data" / "scratch" / f"junk-{i}").write_bytes(b"\0" * SCRATCH_FILE_BYTES)


def run_once(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """One process: (wall seconds, CPU seconds of the child, exit status)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="starts of each command (interleaved)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        workdir = Path(tmp)
        config = write_config(workdir)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TRADING_OPS_CONFIG": str(config)}
        no_stack = str(workdir / "no-stack")
        cases: dict[str, list[str]] = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import aiohttp, sqlalchemy.orm'": [sys.executable, "-c", "import aiohttp, sqlalchemy.orm"],
            "trading-ops --help": [*CLI, "--help"],
            "trading-ops stackctl --help": [*CLI, "stackctl", "--help"],
            "trading-ops stackctl show (no up running)": [
                *CLI,
                "stackctl",
                "--state-dir",
                no_stack,
                "show",
                "trading-ops-paper-bot.service",
            ],
            "trading-ops upkeep cleanup --help": [*CLI, "upkeep", "cleanup", "--help"],
            "trading-ops upkeep cleanup": [*CLI, "upkeep", "cleanup"],
        }
        expected = {name: 0 for name in cases} | {"trading-ops stackctl show (no up running)": 1}
        walls: dict[str, list[float]] = {name: [] for name in cases}
        cpus: dict[str, list[float]] = {name: [] for name in cases}
        for name, argv in cases.items():  # one warm-up start each: the page cache, .pyc files
            if name == "trading-ops upkeep cleanup":
                fill_scratch(workdir)
            run_once(argv, env, workdir)
        for _ in range(args.runs):
            for name, argv in cases.items():
                if name == "trading-ops upkeep cleanup":
                    fill_scratch(workdir)
                wall, cpu, status = run_once(argv, env, workdir)
                if status != expected[name]:
                    print(f"bench_cli: {name}: exit status {status}, expected {expected[name]}", file=sys.stderr)
                    return 1
                walls[name].append(wall)
                cpus[name].append(cpu)
    bare = statistics.median(cpus["python -c pass"])
    heavy = statistics.median(cpus["python -c 'import aiohttp, sqlalchemy.orm'"])
    results: dict[str, Any] = {}
    for name in cases:
        cpu = statistics.median(cpus[name])
        results[name] = {
            "wall_ms_median": round(statistics.median(walls[name]) * 1000, 1),
            "cpu_ms_median": round(cpu * 1000, 1),
            # What the command costs beyond starting Python, against what importing aiohttp and SQLAlchemy's ORM
            # costs beyond it: 1.0 means the command pays as much as those imports.
            "cpu_above_python_vs_aiohttp_sqlalchemy": round((cpu - bare) / (heavy - bare), 2),
        }
    print(json.dumps({"runs": args.runs, "python": sys.version.split()[0], "commands": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
