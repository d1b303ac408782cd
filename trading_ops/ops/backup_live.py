"""Who is using a database right now: a bot's single-instance lock or fresh heartbeat, the configured reconciler
answering or a reconciler's lease, other PostgreSQL sessions. `restore` refuses to replace a database in use."""

from __future__ import annotations

import fcntl
import json
import os
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Connection, inspect, select

from trading_ops.bot.instance_lock import LOCK_SUFFIX
from trading_ops.config import Config
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models import BotRun, Episode, Target
from trading_ops.ops import backup_postgres


def locked_instance_files(data_dir: Path) -> list[Path]:
    """The bots' single-instance lock files in `data_dir` that a running process holds."""
    held = []
    for path in sorted(data_dir.glob(f"*{LOCK_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(path)
        finally:
            os.close(fd)  # closing drops a lock we took
    return held


# How long the configured reconciler gets to answer before it counts as not running.
PROBE_TIMEOUT_SECONDS = 1.0


def reconciler_answering(config: Config) -> str | None:
    """The configured reconciler's address when a trading-ops reconciler answers there (its episodes API, asked with
    the read token when this configuration has it; a 401 from that API is an answer too), else None. A running
    reconciler caches what it stored: a database replaced under it would lose notifications."""
    listen = config.reconciler.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::") else listen.host
    base = f"http://{f'[{host}]' if ':' in host else host}:{listen.port}"
    request = urllib.request.Request(f"{base}/api/v1/episodes?limit=1")
    if config.reconciler.read_token:
        request.add_header("Authorization", f"Bearer {config.reconciler.read_token}")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_SECONDS) as response:
            body = json.loads(response.read(1 << 20))
    except urllib.error.HTTPError as exc:
        return base if exc.code == 401 else None
    except (OSError, ValueError):
        return None
    return base if isinstance(body, dict) and "episodes" in body else None


def _database_users(conn: Connection, fresh_seconds: float) -> list[str]:
    users = []
    tables = set(inspect(conn).get_table_names())
    since = utcnow() - timedelta(seconds=fresh_seconds)
    now = utcnow()
    if BotRun.__tablename__ in tables:
        for bot, pid, host in conn.execute(
            select(BotRun.bot, BotRun.pid, BotRun.hostname).where(
                BotRun.stopped_at.is_(None), BotRun.last_heartbeat_at > since
            )
        ):
            users.append(f"bot {bot} (pid {pid} on {host}) heartbeat within {fresh_seconds:g}s")
    if Episode.__tablename__ in tables:
        leased = list(conn.execute(select(Episode.owner).where(Episode.lease_until > now).distinct()).scalars())
        leased += conn.execute(select(Target.owner).where(Target.lease_until > now).distinct()).scalars().all()
        for owner in sorted({o for o in leased if o}):
            users.append(f"reconciler {owner} holds a lease")
    if conn.dialect.name == "postgresql":
        users += [f"session {s}" for s in backup_postgres.other_sessions(conn)]
    return users


def live_users(config: Config, url: str) -> list[str]:
    """Everything that shows the database at `url` is in use (empty: nobody is)."""
    users = [f"a bot holds {p}" for p in locked_instance_files(Path(config.bot.data_dir))]
    if (address := reconciler_answering(config)) is not None:
        users.append(f"a reconciler answers on {address}")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            users += _database_users(conn, config.backup.live_seconds)
    finally:
        engine.dispose()
    return users
