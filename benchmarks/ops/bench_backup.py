"""Backup and verify of a journal of 100k fills on SQLite and on PostgreSQL (the local server); prints JSON.

The journal is written through the models (bulk inserts of Order and Fill rows, one order per fill, as the bot's
journal would hold them). For each database: `trading-ops backup` (take: consistent copy + checksum + row counts +
manifest), `verify` (restore into a scratch database, integrity, counts) and `restore`, with their sizes; and, as
the baseline measured in the same run, the bare copy the backup is built on: a file copy of the SQLite database, a
plain `pg_dump -Fc` of the PostgreSQL one. The ratio is what the manifest, checksum and consistency add. Then
the restore drill (restore into a scratch database, migrations to head, `alembic check`, the journal's consistency
checks), the same backup with its off-host copy over SSH (OpenSSH's sshd in a network namespace, tests/ssh_host.py)
and `backup fetch` of it, and upkeep on the same journal: retention of everything but its last day, VACUUM/ANALYZE.
Last, PostgreSQL point-in-time recovery on a cluster of its own (tests/pg_cluster.py) archiving its WAL to
pgBackRest: the pgBackRest full backup of the 100k-fill journal, the restore of the cluster to a moment, and its
start (WAL replay and promotion).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from trading_ops.config import Config, parse_config
from trading_ops.db import migrate
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models import Fill, Order, Position
from trading_ops.ops.backup import Catalog, fetch_backup, restore_backup, run_backup, verify_backup
from trading_ops.ops.backup_pitr import restore_to_time
from trading_ops.ops.backup_postgres import libpq_env
from trading_ops.ops.restore_drill import run_drill
from trading_ops.ops.upkeep import run_upkeep_sync

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BATCH = 5000
SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")


def fill_journal(url: str, fills: int) -> None:
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    start = utcnow() - timedelta(days=30)
    held: dict[str, Decimal] = dict.fromkeys(SYMBOLS, Decimal(0))
    try:
        for first in range(0, fills, BATCH):
            orders, rows = [], []
            for i in range(first, min(first + BATCH, fills)):
                at = start + timedelta(seconds=i * 20)
                side = "buy" if i % 2 == 0 else "sell"
                symbol = SYMBOLS[i % len(SYMBOLS)]
                orders.append(
                    dict(
                        bot="paper-1",
                        client_order_id=f"c{i:08d}",
                        venue_order_id=f"v{i}",
                        venue="paper",
                        symbol=symbol,
                        side=side,
                        order_type="limit",
                        quantity=Decimal("0.01"),
                        price=Decimal("50000.5"),
                        filled_quantity=Decimal("0.01"),
                        status="filled",
                        strategy="demo",
                        created_at=at,
                        updated_at=at,
                    )
                )
                rows.append(
                    dict(
                        bot="paper-1",
                        venue="paper",
                        trade_id=f"t{i:08d}",
                        client_order_id=f"c{i:08d}",
                        venue_order_id=f"v{i}",
                        symbol=symbol,
                        side=side,
                        quantity=Decimal("0.01"),
                        price=Decimal("50000.5"),
                        fee=Decimal("0.25"),
                        fee_asset="USD",
                        liquidity="maker",
                        executed_at=at,
                        recorded_at=at,
                        realized_pnl=Decimal("0.1"),
                    )
                )
            with engine.begin() as conn:
                conn.execute(insert(Order), orders)
                conn.execute(insert(Fill), rows)
            for row in rows:
                held[row["symbol"]] += row["quantity"] if row["side"] == "buy" else -row["quantity"]
        # Each position the sum of its fills, as the journal keeps it (the restore drill checks it).
        with engine.begin() as conn:
            conn.execute(
                insert(Position),
                [
                    dict(bot="paper-1", venue="paper", symbol=s, quantity=q, average_price=Decimal("50000.5"))
                    for s, q in held.items()
                ],
            )
    finally:
        engine.dispose()


# The test helpers that start sshd in a network namespace and PostgreSQL clusters (they import their siblings).
sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "tests"), str(Path(__file__).resolve().parents[2])]


def config_for(url: str, directory: Path, remote: dict[str, Any] | None = None, **backup: Any) -> Config:
    return parse_config(
        {
            "database": {"url": url},
            "bot": {"data_dir": str(directory / "data")},
            "backup": {"directory": str(directory / "backups"), "remote": remote or {"required": False}, **backup},
        },
        base_dir=directory,
    )


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def measure(url: str, directory: Path, baseline: Any, remote: dict[str, Any]) -> dict[str, Any]:
    config = config_for(url, directory)
    baseline_seconds, baseline_bytes = baseline()
    backup_seconds, result = timed(run_backup, config)
    manifest = result.manifest
    verify_seconds, _ = timed(verify_backup, config, manifest)
    drill_seconds, _ = timed(run_drill, config)
    # The same with the off-host copy (its checksum computed there), then fetched back into an empty catalog.
    remote_config = config_for(url, directory / "off-host", remote)
    off_host_seconds, _ = timed(run_backup, remote_config)
    fetch_config = config_for(url, directory / "new-host", remote)
    fetch_seconds, _ = timed(fetch_backup, fetch_config.backup)
    # Its baseline: the bare ssh copy of the same file (`ssh host 'cat > file' < file`, no sync, rename, checksum).
    ssh_target = Path(remote["path"]) / "bare-copy"
    argv = [
        "ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={remote['known_hosts_file']}", "-i",
        remote["identity_file"], "-p", str(remote["port"]), "-l", remote["user"], "--", remote["host"],
        f"cat > {ssh_target}",
    ]  # fmt: skip
    with open(Catalog(config.path(config.backup.directory)).data_path(manifest), "rb") as source:
        bare_ssh_seconds, _ = timed(subprocess.run, argv, stdin=source, check=True)
    restore_seconds, restored = timed(restore_backup, config, manifest, force=True)
    # Upkeep on the same journal: retention of fills older than a day (all but the last day's), then VACUUM.
    upkeep_config = parse_config(
        {
            "database": {"url": url},
            "bot": {"data_dir": str(directory / "data")},
            "upkeep": {"journal_retention_days": 1},
        },
        base_dir=directory,
    )
    retention_seconds, retention = timed(run_upkeep_sync, upkeep_config, ("retention",))
    vacuum_seconds, vacuum = timed(run_upkeep_sync, upkeep_config, ("vacuum",))
    return {
        "fills": manifest.row_counts["fills"],
        "orders": manifest.row_counts["orders"],
        "backup_seconds": round(backup_seconds, 3),
        "backup_bytes": manifest.size_bytes,
        "verify_seconds": round(verify_seconds, 3),
        "restore_seconds_with_safety_backup": round(restore_seconds, 3),
        "baseline": baseline.__doc__,
        "baseline_seconds": round(baseline_seconds, 3),
        "baseline_bytes": baseline_bytes,
        "backup_vs_baseline": round(backup_seconds / baseline_seconds, 2),
        "verify_vs_backup": round(verify_seconds / backup_seconds, 2),
        "drill_seconds": round(drill_seconds, 3),
        "backup_with_off_host_copy_seconds": round(off_host_seconds, 3),
        "off_host_vs_local_backup": round(off_host_seconds / backup_seconds, 2),
        "fetch_from_off_host_seconds": round(fetch_seconds, 3),
        "bare_ssh_copy_seconds": round(bare_ssh_seconds, 3),
        "off_host_copy_vs_bare_ssh_copy": round((off_host_seconds - backup_seconds) / bare_ssh_seconds, 2),
        "retention_seconds": round(retention_seconds, 3),
        "retention_rows_deleted": {t: n for t, n in retention.rows_deleted.items() if n},
        "vacuum_seconds": round(vacuum_seconds, 3),
        "vacuum_failures": vacuum.failures,
    }


def bench_sqlite(fills: int, directory: Path, remote: dict[str, Any]) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "journal.db"
    url = f"sqlite:///{db}"
    migrate.upgrade(url)
    fill_journal(url, fills)

    def file_copy() -> tuple[float, int]:
        """a file copy of the database (after a WAL checkpoint), no consistency while it is written"""
        engine = make_engine(url)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        seconds, _ = timed(shutil.copyfile, db, directory / "copy.db")
        return seconds, (directory / "copy.db").stat().st_size

    size = db.stat().st_size
    result = measure(url, directory, file_copy, remote)
    result["database_bytes"] = size
    result["database_bytes_after_upkeep"] = db.stat().st_size
    return result


def database_size(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        engine.dispose()


def bench_postgres(fills: int, directory: Path, remote: dict[str, Any]) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"trading_ops_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        fill_journal(url, fills)

        def plain_pg_dump() -> tuple[float, int]:
            """a plain `pg_dump -Fc` (no snapshot export, counts, checksum or manifest)"""
            target = directory / "plain.pgdump"
            argv = ["pg_dump", "--format=custom", f"--file={target}", f"--dbname={name}"]
            seconds, _ = timed(subprocess.run, argv, env=libpq_env(make_url(url)), check=True)
            return seconds, target.stat().st_size

        size = database_size(url)
        result = measure(url, directory, plain_pg_dump, remote)
        result["database_bytes"] = size
        result["database_bytes_after_upkeep"] = database_size(url)
        return result
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_pitr(fills: int, directory: Path) -> dict[str, Any]:
    """Point-in-time recovery of a cluster holding the 100k-fill journal (pgBackRest, WAL archiving)."""
    from pg_cluster import PGBACKREST_STANZA, archive_now, cluster_on, own_cluster, pgbackrest_archiving

    directory.mkdir(parents=True, exist_ok=True)
    with own_cluster() as pg, pgbackrest_archiving(pg) as conf:
        url = pg.create_database("journal")
        fill_journal(url, fills)
        pitr = {
            "enabled": True,
            "stanza": PGBACKREST_STANZA,
            "config_file": str(conf),
            "command": ["runuser", "-u", "postgres", "--", "pgbackrest"] if os.geteuid() == 0 else ["pgbackrest"],
        }
        config = config_for(url, directory, pitr=pitr)
        backup_seconds, result = timed(run_backup, config)
        time.sleep(1.5)  # pgBackRest keeps a backup's stop time in whole seconds: the moment is after it
        fill_journal_more(url, "before", 100)
        moment = utcnow()
        time.sleep(0.2)
        fill_journal_more(url, "after", 100)
        archive_now(pg.port)
        target = Path(f"{pg.data}-restored")
        target.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(target, "postgres")
        try:
            restore_seconds = restore_to_time(config.backup.pitr, moment, target)
            started = time.perf_counter()
            with cluster_on(target, "-c archive_mode=off") as restored:
                engine = create_engine(restored.url("journal"))
                with engine.connect() as conn:
                    while conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one():
                        time.sleep(0.05)
                    start_seconds = time.perf_counter() - started
                    orders = int(conn.execute(text("SELECT count(*) FROM orders")).scalar_one())
                engine.dispose()
        finally:
            shutil.rmtree(target, ignore_errors=True)
    return {
        "fills": fills,
        "backup_with_pgbackrest_full_seconds": round(backup_seconds, 3),
        "pgbackrest_full_backup_seconds": round(result.pitr.duration_seconds, 3) if result.pitr else None,
        "pitr_restore_seconds": round(restore_seconds, 3),
        "pitr_start_replay_promote_seconds": round(start_seconds, 3),
        "orders_after_restore": orders,
        "orders_expected": fills + 100,
    }


def fill_journal_more(url: str, tag: str, count: int) -> None:
    """`count` orders, each committed on its own (the WAL a point-in-time restore replays)."""
    engine = make_engine(url)
    try:
        for i in range(count):
            with engine.begin() as conn:
                conn.execute(
                    insert(Order).values(
                        bot="paper-1", client_order_id=f"{tag}-{i}", venue="paper", symbol="BTC-USD", side="buy",
                        order_type="limit", quantity=Decimal(1), filled_quantity=Decimal(0), status="open",
                        strategy="demo",
                    )
                )  # fmt: skip
    finally:
        engine.dispose()


def main() -> None:
    from ssh_host import ssh_host

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", type=int, default=100_000)
    args = parser.parse_args()
    out: dict[str, Any] = {"fills": args.fills, "cpus": os.cpu_count()}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-backup-")))
        host = stack.enter_context(ssh_host(tmp / "backup-host"))
        out["off_host"] = "sshd in a network namespace" if host.namespace else "sshd on loopback"
        out["sqlite"] = bench_sqlite(args.fills, tmp / "sqlite", host.remote(path=str(host.repository / "sqlite")))
        out["postgresql"] = bench_postgres(
            args.fills, tmp / "postgresql", host.remote(path=str(host.repository / "postgresql"))
        )
        out["postgresql_pitr"] = bench_pitr(args.fills, tmp / "pitr")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
