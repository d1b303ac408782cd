"""WAL off host as it is archived (`trading-ops backup archive-wal`, the cluster's archive_command): how long a
switched WAL segment takes to reach the off-host repository (sshd in a network namespace), how long a commit takes
with no switch (archive_timeout), and the point-in-time restore of a lost database host from the off-host repository
alone; and one shipment's seconds against the number of segments already in the archive (10, 200, 2,000, 10,000;
copies of one segment make up the difference), as archive-wal makes it (what the archive gained) and as it made it
before (rsync of the whole archive directory), with the files rsync compared. Baselines in the same run: the
interpreter's start for `trading-ops --help` as the archiver's user, and one bare `ssh host true`. Needs what
tests/ops/test_backup_wal.py needs (PostgreSQL server programs, pgbackrest, rsync, sshd, root for the network
namespace). Prints JSON."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The test helpers that start sshd in a network namespace and PostgreSQL clusters (they import their siblings).
sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "tests"), str(Path(__file__).resolve().parents[2])]

from trading_ops.cli import main as cli  # noqa: E402
from trading_ops.db.base import utcnow  # noqa: E402
from trading_ops.ops.backup_remote import Remote  # noqa: E402
from trading_ops.ops.backup_wal import ARCHIVE_INFO_FILES, archive_files, ship_archive  # noqa: E402


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


def median_seconds(actions: list[Any], times: int) -> list[float]:
    """Per action, the median of `times` timed calls, seconds; the actions take turns (the machine's drift in load
    falls on each alike)."""
    spent: list[list[float]] = [[] for _ in actions]
    for _ in range(times):
        for action, took in zip(actions, spent, strict=True):
            started = time.perf_counter()
            action()
            took.append(time.perf_counter() - started)
    return [round(statistics.median(took), 4) for took in spent]


def segments_in(archive: Path) -> int:
    return len(archive_files(archive)) - len(ARCHIVE_INFO_FILES)


def pad_archive(archive: Path, first: int, files: int) -> None:
    """`files` copies of one of the archive's segments, numbered from `first`, under the names of a timeline nothing
    restores (0x99): an archive as long as a longer retention's, without the hours of WAL it takes to make one."""
    sample = next(archive.glob("*/0000000100000000/*.gz"))
    for n in range(first, first + files):
        name = f"00000099{n >> 8:08X}{n & 0xFF:08X}"
        copy = sample.parent.parent / name[:16] / f"{name}-{'0' * 40}.gz"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(sample, copy)
    subprocess.run(["chown", "-R", "postgres:", str(sample.parent.parent)], check=True)


def shipment_costs(pg: Any, shipping: Any, sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    """Per archive size (the segments the cluster archived, and copies of one up to `size`: a real segment takes the
    archiver a second or more here): one shipment's seconds as archive-wal makes it now (ship_archive: the files not
    shipped yet, here the info files only) and as it made it before (rsync of the whole archive directory, which
    compares every file), both in this process against the same archive and host; and archive-wal's own seconds
    (pgBackRest's push and the shipment, as the archiver ran it) for real segments switched at that size. The
    archive is off host before each measurement."""
    from pg_cluster import PGBACKREST_STANZA
    from wal_shipping import sql

    from trading_ops.config import parse_config

    archive = shipping.work / "repo" / "archive" / PGBACKREST_STANZA
    target = f"pgbackrest/archive/{PGBACKREST_STANZA}"
    rsync = "rsync"  # backup.pitr.rsync, as the archiver's configuration has it
    remote = Remote(parse_config({"backup": {"remote": shipping.remote}}).backup.remote, 60)
    state = shipping.work / "backups" / "wal-archive-state.json"

    stats = shipping.work / "bench-rsync-stats.log"
    counting = shipping.work / "bench-rsync"  # rsync with its --stats kept: how many files it compared
    counting.write_text(f'#!/bin/sh\nexec rsync --stats "$@" > {stats}\n')
    counting.chmod(0o755)

    def compared(ship: Any) -> int:
        ship(str(counting))
        found = re.findall(r"Number of files: [\d,]+ \(reg: ([\d,]+)", stats.read_text())
        return int(found[-1].replace(",", ""))

    def local_seconds(record: Path) -> float:
        """What a shipment does here besides rsync: the archive listed, the record read and written."""
        started = time.perf_counter()
        ship_archive(remote, archive, target, "true", record)  # `true`: an rsync that does nothing
        return time.perf_counter() - started

    def switch() -> float:
        insert(pg.port, "measured", 1)
        shipping.wait_off_host(str(sql(pg.port, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]), timeout=300)
        return float(json.loads(state.read_text())["last_duration_seconds"])

    out, synthetic = [], 0
    for size in sizes:
        if (missing := size - segments_in(archive)) > 0:
            pad_archive(archive, synthetic, missing)
            synthetic += missing
            catch_up = switch()  # the next segment's shipment sends the copies with it
        else:
            catch_up = None
        record = shipping.work / f"bench-shipped-{size}.json"  # the archiver's own record stays its own
        ship_archive(remote, archive, target, rsync, record)
        held = segments_in(archive)

        def new(rsync: str = rsync) -> Any:
            return ship_archive(remote, archive, target, rsync, record)

        def old(rsync: str = rsync) -> None:
            remote.sync_directory(archive, target, rsync, delete=False)

        now, before = median_seconds([new, old], repeat)
        files_new, files_old = compared(new), compared(old)
        local = statistics.median(local_seconds(record) for _ in range(repeat))
        archive_wal = [switch() for _ in range(3)]
        out.append(
            {
                "segments_in_archive": held,
                "synthetic_segments": synthetic,
                "shipment_files_compared": files_new,
                "old_whole_archive_rsync_files_compared": files_old,
                "shipment_seconds_p50": now,
                "shipment_local_part_seconds_p50": round(local, 4),
                "old_whole_archive_rsync_seconds_p50": before,
                "old_over_new": round(before / now, 2),
                "archive_wal_seconds_p50": round(statistics.median(archive_wal), 4),
                "archive_wal_catching_up_copies_seconds": catch_up,
            }
        )
    return out


def run(rounds: int, archive_timeout: int, workdir: Path, sizes: list[int]) -> dict[str, Any]:
    from pg_cluster import own_cluster, pgbackrest_archiving
    from ssh_host import ssh_host
    from wal_shipping import sql, wal_shipping

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
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *shipping.archiver, "--help"], capture_output=True, check=True
        )
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
        per_size = shipment_costs(pg, shipping, sizes, repeat=7)

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
        "shipment_by_archive_size": per_size,
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
    parser.add_argument(
        "--archive-sizes",
        default="10,200,2000,10000",
        help="segments in the archive at which a shipment is timed (copies of one make up what the cluster has not)",
    )
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.archive_sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-wal-") as tmp:
        out = {"cpus": os.cpu_count(), **run(args.rounds, args.archive_timeout, Path(tmp), sizes)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
