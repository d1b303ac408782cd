"""The audit chain (trading_ops.audit): verify of 100,000 entries on SQLite and on PostgreSQL (the local server), as
`audit.verify` and as the whole `trading-ops audit verify` command (a process: start, read, hash, answer); and the
cost of one append (its own transaction, the head row locked) measured in the same run. Prints JSON.

The 100,000 entries are written in bulk with the hashes `append` would give (entry_hash over the previous hash and
the entry's canonical JSON), then the head set; a few appends through `append` follow, so the chain verified ends
with entries the real code wrote.
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
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text, update

from trading_ops import audit
from trading_ops.db import migrate
from trading_ops.db.base import make_engine, utcnow

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BATCH = 5000


def fill_chain(url: str, n: int) -> str:
    """n entries in bulk, hashed as append hashes them; the head set to the last. Its hash."""
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    start = utcnow() - timedelta(days=30)
    prev = audit.GENESIS
    try:
        for first in range(1, n + 1, BATCH):
            rows = []
            for seq in range(first, min(first + BATCH, n + 1)):
                fields: dict[str, Any] = {
                    "seq": seq,
                    "at": start + timedelta(seconds=seq),
                    "principal": f"person-{seq % 7}",
                    "source": "10.0.0.9",
                    "action": ("approve", "reject", "ramp_request")[seq % 3],
                    "target": f"paper-{seq % 5}",
                    "before": audit.canonical({"status": "pending", "approvers": []}),
                    "after": audit.canonical({"status": "approved", "approvers": [f"person-{seq % 7}"]}),
                    "decision": f"approval:{seq}",
                    "comment": "looked at the fills; fine",
                }
                digest = audit.entry_hash(prev, fields)
                rows.append({**fields, "prev_hash": prev, "hash": digest})
                prev = digest
            with engine.begin() as conn:
                conn.execute(insert(audit.AUDIT), rows)
        with engine.begin() as conn:
            conn.execute(update(audit.HEAD).where(audit.HEAD.c.id == audit.HEAD_ID).values(seq=n, hash=prev))
    finally:
        engine.dispose()
    return prev


def measure(url: str, n: int, appends: int, runs: int, workdir: Path) -> dict[str, Any]:
    migrate.upgrade(url)
    t0 = time.perf_counter()
    fill_chain(url, n)
    filled = time.perf_counter() - t0
    engine = make_engine(url)
    try:
        append_ms = []
        for i in range(appends):
            t = time.perf_counter()
            audit.append(
                engine,
                principal="bench",
                source="127.0.0.1",
                action="approve",
                target="paper-1",
                before={"status": "pending"},
                after={"status": "approved", "i": i},
                decision=f"approval:{i}",
            )
            append_ms.append((time.perf_counter() - t) * 1000)
        verify_s = []
        for _ in range(runs):
            t = time.perf_counter()
            verdict = audit.verify(engine)
            verify_s.append(time.perf_counter() - t)
            assert verdict.whole and verdict.checked == n + appends, verdict
    finally:
        engine.dispose()
    config = workdir / f"bench-{uuid.uuid4().hex[:6]}.yaml"
    config.write_text(json.dumps({"database": {"url": url}}))
    cli = [str(Path(sys.executable).with_name("trading-ops")), "-c", str(config), "audit", "verify", "--json"]
    cli_s = []
    for _ in range(runs):
        t = time.perf_counter()
        done = subprocess.run(cli, capture_output=True, text=True, timeout=600, check=False)
        cli_s.append(time.perf_counter() - t)
        assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    return {
        "entries": n + appends,
        "bulk_fill_seconds": round(filled, 2),
        "verify_seconds": {"median": round(statistics.median(verify_s), 3), "max": round(max(verify_s), 3)},
        "verify_entries_per_second": round((n + appends) / statistics.median(verify_s)),
        "cli_verify_seconds": {"median": round(statistics.median(cli_s), 3), "max": round(max(cli_s), 3)},
        "cli_verify_reported_seconds": answer["seconds"],
        "append_ms": {
            "p50": round(statistics.median(append_ms), 2),
            "p99": round(sorted(append_ms)[max(0, int(len(append_ms) * 0.99) - 1)], 2),
            "count": appends,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--appends", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"entries": args.entries, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result["sqlite"] = measure(f"sqlite:///{work / 'audit.db'}", args.entries, args.appends, args.runs, work)
        if not args.skip_postgres:
            name = f"trading_ops_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
                result["postgresql"] = measure(url, args.entries, args.appends, args.runs, work)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
