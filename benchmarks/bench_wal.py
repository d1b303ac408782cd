"""WAL off host as it is archived (`trading-ops backup archive-wal`, the cluster's archive_command): how long a
switched WAL segment takes to reach the off-host repository (sshd in a network namespace), how long a commit takes
with no switch (archive_timeout), and the point-in-time restore of a lost database host from the off-host repository
alone. Baselines in the same run: the interpreter's start for `trading-ops --help` as the archiver's user, and one
bare `ssh host true`. Needs what tests/test_backup_wal.py needs (PostgreSQL server programs, pgbackrest, rsync,
sshd, root for the network namespace). Prints JSON."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The test helpers that start sshd in a network namespace and PostgreSQL clusters (they import their siblings).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from trading_ops.cli import main as cli  # noqa: E402
from trading_ops.db.base import utcnow  # noqa: E402
from trading_ops.ops.backup_remote import Remote  # noqa: E402


def insert(port: int, tag: str, count: int) -> str:
    """`count` rows, each committed on its own; the WAL segment the last commit went to."""
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=journal", autocommit=True) as c:
        for i in range(count):
            c.execute("INSERT INTO trades (tag) VALUES (%s)", (f"{tag}-{i}",))
        return str(c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0])  # type: ignore[index]


def quiet_cli(*argv: str) -> None:
    """The CLI with its output kept out of the JSON."""
    out = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            code = cli(list(argv))
    finally:
        os.dup2(out, 1)
        os.close(out)
    if code != 0:
        raise SystemExit(f"trading-ops {' '.join(argv[2:])} exited {code}")


def restore_lost_host(pg: Any, shipping: Any, config: str, moment: Any) -> tuple[float, float, int]:
    """Lose the database host (its data directory and local repository), restore as of `moment` from the off-host
    repository alone into a fresh data directory, and start it: the restore's seconds, the seconds until the cluster
    promoted itself, and the rows it holds."""
    from pg_cluster import cluster_on
    from wal_shipping import sql

    pg.ctl("-m", "immediate", "stop")
    shutil.rmtree(pg.data)
    shutil.rmtree(shipping.work / "repo")
    target = Path(f"{pg.data}-restored")
    target.mkdir(mode=0o700)
    shutil.chown(target, "postgres")
    try:
        started = time.perf_counter()
        quiet_cli(
            "--config", config, "backup", "restore", "--from-off-host", "--to-time", moment.isoformat(),
            "--pg-data", str(target),
        )  # fmt: skip
        restore_seconds = time.perf_counter() - started
        with cluster_on(target, options="-c archive_mode=off") as restored:
            while sql(restored.port, "SELECT pg_is_in_recovery()")[0][0]:
                time.sleep(0.02)
            promoted_seconds = time.perf_counter() - started
            rows = int(sql(restored.port, "SELECT count(*) FROM trades", "journal")[0][0])
    finally:
        shutil.rmtree(target, ignore_errors=True)
    return restore_seconds, promoted_seconds, rows


def run(rounds: int, archive_timeout: int, workdir: Path) -> dict[str, Any]:
    from pg_cluster import own_cluster, pgbackrest_archiving
    from ssh_host import ssh_host
    from wal_shipping import archiver_argv, sql, wal_shipping

    from trading_ops.config import parse_config

    with (
        ssh_host(workdir / "backup-host") as host,
        own_cluster() as pg,
        pgbackrest_archiving(pg) as conf,
        wal_shipping(pg, conf, host, archive_timeout) as shipping,
    ):
        sql(pg.port, "CREATE DATABASE journal")
        sql(pg.port, "CREATE TABLE trades (id serial PRIMARY KEY, tag text NOT NULL)", "journal")
        config = str(shipping.config)
        quiet_cli("--config", config, "backup", "run")
        started = time.perf_counter()
        subprocess.run(["runuser", "-u", "postgres", "--", *archiver_argv(), "--help"], capture_output=True, check=True)
        interpreter_seconds = time.perf_counter() - started
        remote = Remote(parse_config({"backup": {"remote": shipping.remote}}).backup.remote, 60)
        started = time.perf_counter()
        remote.run("true")
        ssh_seconds = time.perf_counter() - started

        switched = []
        for i in range(rounds):
            insert(pg.port, f"switched-{i}", 100)
            started = time.perf_counter()
            segment = str(sql(pg.port, "SELECT pg_walfile_name(pg_switch_wal())")[0][0])
            shipping.wait_off_host(segment)
            switched.append(time.perf_counter() - started)
        state = json.loads((shipping.work / "backups" / "wal-archive-state.json").read_text())

        committed = []
        for i in range(3):
            last = insert(pg.port, f"timeout-{i}", 1)
            started = time.perf_counter()
            shipping.wait_off_host(last, timeout=archive_timeout * 3 + 60)
            committed.append(time.perf_counter() - started)

        time.sleep(0.2)
        moment = utcnow()
        time.sleep(0.2)
        last = insert(pg.port, "after", 10)
        shipping.wait_off_host(last, timeout=archive_timeout * 3 + 60)
        expected = int(sql(pg.port, "SELECT count(*) FROM trades WHERE tag NOT LIKE 'after-%'", "journal")[0][0])

        restore_seconds, promoted_seconds, rows = restore_lost_host(pg, shipping, config, moment)
    return {
        "rounds": rounds,
        "archive_timeout_seconds": archive_timeout,
        "switched_segment_off_host_seconds": {
            "p50": round(statistics.median(switched), 3),
            "max": round(max(switched), 3),
        },
        "archive_wal_in_process_last_seconds": state["last_duration_seconds"],
        "baseline_interpreter_start_seconds": round(interpreter_seconds, 3),
        "baseline_ssh_true_seconds": round(ssh_seconds, 3),
        "commit_off_host_without_switch_seconds": [round(s, 3) for s in committed],
        "restore_from_off_host_seconds": round(restore_seconds, 3),
        "restore_to_promoted_seconds": round(promoted_seconds, 3),
        "rows_restored": rows,
        "rows_expected": expected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--archive-timeout", type=int, default=10, help="the cluster's archive_timeout, seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-wal-") as tmp:
        out = {"cpus": os.cpu_count(), **run(args.rounds, args.archive_timeout, Path(tmp))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
