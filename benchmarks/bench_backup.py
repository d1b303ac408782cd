"""Backup and verify of a journal of 100k fills on SQLite and on PostgreSQL (the local server); prints JSON.

The journal is written through the models (bulk inserts of Order and Fill rows, one order per fill, as the bot's
journal would hold them). For each database: `trading-ops backup` (take: consistent copy + checksum + row counts +
manifest), `verify` (restore into a scratch database, integrity, counts) and `restore`, with their sizes; and, as
the baseline measured in the same run, the bare copy the backup is built on: a file copy of the SQLite database, a
plain `pg_dump -Fc` of the PostgreSQL one. The ratio is what the manifest, checksum and consistency add. Then
upkeep on the same journal: retention of everything but its last day, and VACUUM/ANALYZE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from trading_ops.config import Config, parse_config
from trading_ops.db import migrate
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models import Fill, Order
from trading_ops.ops.backup import restore_backup, run_backup, verify_backup
from trading_ops.ops.backup_postgres import libpq_env
from trading_ops.ops.upkeep import run_upkeep_sync

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BATCH = 5000
SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")


def fill_journal(url: str, fills: int) -> None:
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    start = utcnow() - timedelta(days=30)
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
    finally:
        engine.dispose()


def config_for(url: str, directory: Path) -> Config:
    return parse_config(
        {
            "database": {"url": url},
            "bot": {"data_dir": str(directory / "data")},
            "backup": {"directory": str(directory / "backups")},
        },
        base_dir=directory,
    )


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def measure(url: str, directory: Path, baseline: Any) -> dict[str, Any]:
    config = config_for(url, directory)
    baseline_seconds, baseline_bytes = baseline()
    backup_seconds, result = timed(run_backup, config)
    manifest = result.manifest
    verify_seconds, _ = timed(verify_backup, config, manifest)
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
        "retention_seconds": round(retention_seconds, 3),
        "retention_rows_deleted": {t: n for t, n in retention.rows_deleted.items() if n},
        "vacuum_seconds": round(vacuum_seconds, 3),
        "vacuum_failures": vacuum.failures,
    }


def bench_sqlite(fills: int, directory: Path) -> dict[str, Any]:
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
    result = measure(url, directory, file_copy)
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


def bench_postgres(fills: int, directory: Path) -> dict[str, Any]:
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
        result = measure(url, directory, plain_pg_dump)
        result["database_bytes"] = size
        result["database_bytes_after_upkeep"] = database_size(url)
        return result
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", type=int, default=100_000)
    args = parser.parse_args()
    out: dict[str, Any] = {"fills": args.fills, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        out["sqlite"] = bench_sqlite(args.fills, Path(tmp) / "sqlite")
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        out["postgresql"] = bench_postgres(args.fills, Path(tmp) / "postgresql")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
