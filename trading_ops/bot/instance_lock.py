"""The single-instance guard: one running process per bot name, held for the process lifetime.

Two processes trading the same account under the same journal place orders twice and corrupt each other's
reconciliation. The guard takes two locks, both released by the operating system or the database when the process
dies (a kill -9 included), so a crashed run never blocks its restart:

- an exclusive `flock` on `<data_dir>/<bot name>.lock` (processes on the same host); the holder writes its pid,
  host and start time into the file, which is how a second instance names it;
- with a PostgreSQL journal, a session-level `pg_advisory_lock` keyed on the bot name, on a connection kept for the
  process lifetime (processes on other hosts sharing the database); its holder is named by the connection's
  `application_name`.

A session-level advisory lock lives as long as its session and on its server only: a PostgreSQL restart ends it, and
a failover (a standby promoted, the multi-host URL's `target_session_attrs=read-write` finding it) leaves the journal
writing to a server where nobody holds it. Every session the engine opens after the lock was taken is therefore a
reason to doubt it (`confirmed` false) until `keep_database_lock` has seen the lock's session alive on the server the
journal writes to, or taken the lock again there; the runtime's order gate lets nothing out meanwhile.

Heartbeat-based crash detection stays what decides whether the previous run crashed (see heartbeat.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# SQLAlchemy only for the advisory lock, imported where it is taken: upkeep cleanup and the live backup read
# LOCK_SUFFIX, and cleanup runs as a process of its own (the disk rule's step) that needs no database.
if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
# PostgreSQL truncates application_name to 63 bytes.
MAX_APPLICATION_NAME = 63
HOLDER_QUERY = (
    "SELECT a.pid, a.application_name, host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid::text::bigint = :high AND l.objid::text::bigint = :low"
)


class AnotherInstanceRunning(RuntimeError):
    """The same bot is running already (on this host, or on another sharing its database): starting would trade
    twice."""


def advisory_key(name: str) -> int:
    """The bigint advisory-lock key of a bot: stable across processes, hosts and Python versions."""
    digest = hashlib.blake2b(f"trading-ops bot {name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class InstanceLock:
    """`acquire()` takes both locks or raises AnotherInstanceRunning naming the holder; `release()` lets them go."""

    def __init__(self, data_dir: Path, name: str, engine: Engine | None = None) -> None:
        self.name = name
        self.path = Path(data_dir) / f"{name}{LOCK_SUFFIX}"
        self.engine = engine if engine is not None and engine.dialect.name == "postgresql" else None
        self.key = advisory_key(name)
        self._fd: int | None = None
        self._close_fd: weakref.finalize[..., InstanceLock] | None = None  # an unreleased lock goes with its object
        self._connection: Connection | None = None
        # Sessions the engine opened since the lock was taken, and how many of them the lock was last confirmed
        # against: each may be on another server (a restart, a failover) where the lock is not held.
        self._opened = 0
        self._confirmed = 0
        self._locking = False  # the lock's own session is being opened: not a reason to doubt it
        self.holder = ""  # who holds the lock on the database instead of this process, while someone does

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def confirmed(self) -> bool:
        """Whether the advisory lock is known held on the server the journal writes to (always, without one)."""
        return self.engine is None or (self._connection is not None and self._opened == self._confirmed)

    def problem(self) -> str | None:
        """Why this process may not trade as the bot's single instance now (None: it may)."""
        if self.confirmed:
            return None
        if self.holder:
            return f"another instance holds the single-instance lock: {self.holder}"
        return "the single-instance lock is not confirmed on the database since it reconnected"

    def acquire(self) -> None:
        if self.held:
            return
        self._lock_file()
        try:
            if self.engine is not None:
                self._lock_database(self.engine)
                from sqlalchemy import event

                event.listen(self.engine, "connect", self._session_opened)
        except BaseException:
            self._unlock_file()
            raise
        log.info(
            "single-instance lock for bot %s held (%s%s)",
            self.name,
            self.path,
            ", PostgreSQL advisory lock" if self._connection is not None else "",
        )

    def release(self) -> None:
        if self.engine is not None:
            from sqlalchemy import event

            if event.contains(self.engine, "connect", self._session_opened):
                event.remove(self.engine, "connect", self._session_opened)
        if self._connection is not None:
            from sqlalchemy import text

            connection, self._connection = self._connection, None
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            except Exception as exc:  # the connection is gone: so is the lock
                log.warning("releasing the advisory lock of bot %s: %s", self.name, exc)
            finally:
                with contextlib.suppress(Exception):
                    connection.close()
        self._unlock_file()

    def keep_database_lock(self) -> bool:
        """Confirm the advisory lock on the server the engine's sessions reach now, or take it again there: after a
        restart its session is gone, after a failover it is on a server the journal no longer writes to. True when
        it was taken again; raises AnotherInstanceRunning when another process holds it there (`holder` names it;
        the next call tries again), and the database's error when it cannot be asked. Called on the journal's
        thread, where the sessions that made it doubtful were opened."""
        if self.engine is None or self._fd is None:
            return False
        journal_server = self._server_of_a_session(self.engine)
        opened = self._opened  # sessions opened after this point doubt the lock again
        if self._connection is not None:
            from sqlalchemy import text

            try:
                self._connection.execute(text("SELECT 1"))
                same_server = _server(self._connection) == journal_server
            except Exception:
                same_server = False
            if same_server:
                self._confirmed, self.holder = opened, ""
                return False  # the session, and the lock with it, survived where the journal writes
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
        try:
            self._lock_database(self.engine)
        except AnotherInstanceRunning as exc:
            self.holder = str(exc).split(": ", 1)[-1]
            raise
        log.warning(
            "bot %s: the PostgreSQL advisory lock was lost with its session; taken again on %s",
            self.name,
            ":".join(map(str, journal_server)),
        )
        self._confirmed, self.holder = opened, ""  # after the line: nothing is sent before it says so
        return True

    def _session_opened(self, _dbapi_connection: Any, _record: Any) -> None:
        if not self._locking:
            self._opened += 1

    def _server_of_a_session(self, engine: Engine) -> tuple[str, int]:
        with engine.connect() as connection:
            return _server(connection)

    # -- the lock file (this host) -------------------------------------------------------------------------------
    def _lock_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise AnotherInstanceRunning(
                f"bot {self.name!r} is already running: {holder or 'a process'} holds {self.path}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        started = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        self._fd = fd
        self._close_fd = weakref.finalize(self, os.close, fd)

    def _unlock_file(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._close_fd is not None:
            self._close_fd.detach()
            self._close_fd = None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- the advisory lock (other hosts) -------------------------------------------------------------------------
    def _lock_database(self, engine: Engine) -> None:
        from sqlalchemy import text

        self._locking = True
        try:
            connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        finally:
            self._locking = False
        try:
            label = f"trading-ops {self.name} pid {os.getpid()}@{socket.gethostname()}"[:MAX_APPLICATION_NAME]
            connection.execute(text("SELECT set_config('application_name', :label, false)"), {"label": label})
            if connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}).scalar():
                self._connection = connection
                return
            holder = self._holder(connection)
        except BaseException:
            connection.close()
            raise
        connection.close()
        raise AnotherInstanceRunning(
            f"bot {self.name!r} is already running: {holder} holds its PostgreSQL advisory lock {self.key}"
        )

    def _holder(self, connection: Connection) -> str:
        from sqlalchemy import text

        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        row: Any = connection.execute(
            text(HOLDER_QUERY), {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF}
        ).first()
        if row is None:
            return "another session"
        backend, application, address = row
        where = f" from {address}" if address else ""
        return f"{application or 'a session'} (PostgreSQL backend {backend}{where})"


def _server(connection: Connection) -> tuple[str, int]:
    """The server a session is on, as libpq reached it (the host of a multi-host URL it settled on, and its port)."""
    info = connection.connection.driver_connection.info  # type: ignore[union-attr]
    return str(info.host), int(info.port)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 256, 0).decode(errors="replace").strip()
    except OSError:
        return ""
