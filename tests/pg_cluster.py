"""A PostgreSQL cluster of a test module's own (initdb + pg_ctl on a free port, trust auth, user postgres, 127.0.0.1
only), for the tests that stop or restart the database: never the machine's shared server on 5432. Stopped by its pid
even when a test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from polling import until
from ports import free_port

from trading_ops.db import migrate

# How many of the server log's last lines a failure's message quotes.
LOG_TAIL_LINES = 12
# How archiver_report begins: a failure carries one report, the first (read while the archiver was as the test left it).
ARCHIVER_REPORT = "the archiver (archive_command as the postgres user): "


def server_binary(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}")) or [Path(p) for p in [shutil.which(name)] if p]
    if not found:
        pytest.fail(f"PostgreSQL's {name} is required (Debian: postgresql)", pytrace=False)
    return str(found[-1])


def as_postgres(argv: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Cluster:
    data: Path
    port: int
    options: str = ""  # more server options (-c fsync=off)

    def ctl(self, *args: str) -> None:
        argv = as_postgres([server_binary("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
        if done.returncode != 0:
            said = done.stderr.strip() or done.stdout.strip()
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {said}{self.log_tail()}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The server log's last lines (the postgres user's server writes it), for a failure's message."""
        try:
            tail = (self.data / "server.log").read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n  server.log: ...\n  " + "\n  ".join(tail) if tail else ""

    def archiver_report(self) -> str:
        """What the archiver (archive_command, run by the server as the postgres user) did last: pg_stat_archiver's
        counts and the server log's lines about its last failure, for the message of a wait that gave up."""
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", connect_timeout=5
            ) as c:
                row = c.execute(
                    "SELECT archived_count, last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver"
                ).fetchone()
            counts = f"archived {row[0]} (last {row[1]}), failed {row[2]} (last {row[3]})" if row else ""
        except psycopg.Error as exc:
            counts = f"pg_stat_archiver unreadable: {str(exc).strip()}"
        try:
            log = (self.data / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            log = []
        failures = [i for i, line in enumerate(log) if "archive command failed" in line]
        said = ""
        if failures:  # what the command wrote since the failure before it, and the server's lines (one names it)
            last = failures[-1]
            since = failures[-2] + 2 if len(failures) > 1 else 0
            said = "\n  " + "\n  ".join(log[max(since, last - LOG_TAIL_LINES) : last + 2])
        return f"{ARCHIVER_REPORT}{counts}{said or '; no failure in server.log'}"

    def wait_promoted(self, timeout: float = 90.0) -> None:
        """Wait until the server is out of recovery (a restored cluster replays WAL through its restore_command, run
        as the postgres user); at the deadline the failure quotes the server log."""

        def promoted() -> bool:
            with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres") as c:
                return not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]

        try:
            until("the restored cluster out of recovery (pg_is_in_recovery)", promoted, timeout, 0.05, (psycopg.Error,))
        except AssertionError as exc:
            exc.add_note(self.log_tail())
            raise

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 {self.options}".strip()
        self.ctl("-l", str(self.data / "server.log"), "-o", options, "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self.ctl("-l", str(self.data / "server.log"), "-m", "fast", "restart")

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new database, migrated; its SQLAlchemy URL."""
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        url = self.url(name)
        migrate.upgrade(url)
        return url

    def advisory_lock_holders(self) -> list[str]:
        """The application names of the sessions holding an advisory lock (the bots' single-instance locks)."""
        query = (
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted"
        )
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres") as c:
            return [row[0] for row in c.execute(query)]


@contextlib.contextmanager
def own_cluster(options: str = "") -> Iterator[Cluster]:
    """initdb into a new directory, start the server, and at the end stop it (by its pid if pg_ctl cannot) and
    remove the directory."""
    data = Path(tempfile.mkdtemp(prefix="trading-ops-pg-"))  # under /tmp: the postgres user can reach it
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    initdb = as_postgres([server_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    done = subprocess.run(initdb, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.fail(f"initdb failed: {done.stderr.strip()}", pytrace=False)
    pg = Cluster(data, free_port(), options)
    try:
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop()
        pid = pg.pid()  # whichever postmaster runs now (a restart changes it): stopped by its pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            end = time.monotonic() + 30
            while time.monotonic() < end and alive(pid):
                time.sleep(0.05)
        shutil.rmtree(data, ignore_errors=True)


PGBACKREST_STANZA = "trading-ops"


@contextlib.contextmanager
def pgbackrest_archiving(pg: Cluster) -> Iterator[Path]:
    """`pg` archiving its WAL into a pgBackRest repository of its own (archive_command = pgbackrest archive-push,
    restarted for archive_mode); pgBackRest's configuration file, removed with the repository at the end."""
    work = Path(f"{pg.data}-pgbackrest")
    for folder in (work, work / "repo", work / "lock"):
        folder.mkdir()
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
    conf = work / "pgbackrest.conf"
    conf.write_text(
        "[global]\n"
        f"repo1-path={work / 'repo'}\nrepo1-retention-full=2\nstart-fast=y\nlog-level-console=warn\n"
        f"log-level-file=off\nlock-path={work / 'lock'}\narchive-timeout=30\n"
        f"[{PGBACKREST_STANZA}]\npg1-path={pg.data}\npg1-port={pg.port}\npg1-socket-path={pg.data}\n"
    )
    conf.chmod(0o644)
    command = f"pgbackrest --config={conf} --stanza={PGBACKREST_STANZA} archive-push %p"
    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute("ALTER SYSTEM SET wal_level = 'replica'")
        c.execute("ALTER SYSTEM SET archive_mode = 'on'")
        c.execute("ALTER SYSTEM SET archive_timeout = '30s'")  # WAL switched (and archived) at least this often
        c.execute(f"ALTER SYSTEM SET archive_command = '{command}'")
    pg.restart()
    try:
        yield conf
    except Exception as exc:  # whatever failed while the cluster archived (pgBackRest's own wait for WAL included)
        if not any(note.startswith(ARCHIVER_REPORT) for note in getattr(exc, "__notes__", ())):  # one read earlier
            exc.add_note(pg.archiver_report())
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def archive_now(port: int, timeout: float = 60.0) -> None:
    """Switch to a new WAL segment and wait until the one holding the last commits is in the archive."""
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
        segment = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]  # type: ignore[index]
        until(
            f"WAL segment {segment} archived (pg_stat_archiver.last_archived_wal)",
            lambda: (c.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] or "") >= segment,  # type: ignore[index]
            timeout,
            interval=0.1,
        )


@contextlib.contextmanager
def cluster_on(data: Path, options: str = "") -> Iterator[Cluster]:
    """A cluster started on an existing data directory (a restored one), stopped by its pid at the end."""
    pg = Cluster(data, free_port(), options)
    try:
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop()
        pid = pg.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)


@dataclass
class ReplicatedPair:
    """A primary and its streaming standby (pg_basebackup -R), each a cluster of its own; `synchronous`: the primary
    commits only once the standby has the commit (synchronous_standby_names), as the reconciler's ledger needs for a
    failover that loses nothing acknowledged."""

    primary: Cluster
    standby: Cluster

    def url(self, database: str, *, read_write: bool = True) -> str:
        """The multi-host SQLAlchemy URL naming both servers, primary first (libpq tries them in order and, with
        target_session_attrs=read-write, keeps the first that takes writes)."""
        hosts = "&".join(f"host=127.0.0.1:{c.port}" for c in (self.primary, self.standby))
        attrs = "&target_session_attrs=read-write" if read_write else ""
        return f"postgresql+psycopg://postgres@/{database}?{hosts}{attrs}"

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster (its backends notice and exit): the host's database gone at once."""
        pid = self.primary.pid()
        assert pid is not None, "the primary is not running"
        os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 30
        while alive(pid) and time.monotonic() < end:
            time.sleep(0.05)

    def promote(self) -> None:
        """pg_ctl promote on the standby, waiting until it takes writes."""
        self.standby.ctl("promote")

    def replicated(self) -> bool:
        """Whether the standby streams from the primary now (and, with synchronous replication, confirms commits)."""
        query = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        with psycopg.connect(f"host=127.0.0.1 port={self.primary.port} user=postgres dbname=postgres") as c:
            row = c.execute(query).fetchone()
        return bool(row and row[0])


def _stop_by_pid(pg: Cluster) -> None:
    with contextlib.suppress(Exception):
        pg.stop()
    pid = pg.pid()
    if pid is not None and alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        end = time.monotonic() + 30
        while time.monotonic() < end and alive(pid):
            time.sleep(0.05)
    shutil.rmtree(pg.data, ignore_errors=True)


@contextlib.contextmanager
def replicated_pair(options: str = "", *, synchronous: bool = True) -> Iterator[ReplicatedPair]:
    """A primary (own_cluster's way) and a standby made from it with pg_basebackup -R on a port of its own, streaming;
    both stopped by their pids and removed at the end, whichever of them runs then."""
    replication = "-c wal_level=replica -c max_wal_senders=4 -c wal_keep_size=64MB"
    # Only the primary waits for a standby: a promoted standby told to wait for one of its own (it has none) would
    # hold every commit (a failover manager such as Patroni sets synchronous_standby_names as members come and go).
    synchronous_names = " -c synchronous_standby_names='*'" if synchronous else ""
    with own_cluster(f"{replication}{synchronous_names} {options}".strip()) as primary:
        data = Path(tempfile.mkdtemp(prefix="trading-ops-pg-standby-"))
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
        data.chmod(0o700)
        backup = as_postgres(
            [server_binary("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"]
            + ["-D", str(data), "-R", "-X", "stream", "-c", "fast"]
        )
        standby = Cluster(data, free_port(), f"{replication} {options}".strip())
        try:
            done = subprocess.run(backup, capture_output=True, text=True, timeout=120, check=False)
            if done.returncode != 0:
                pytest.fail(f"pg_basebackup failed: {done.stderr.strip()}", pytrace=False)
            standby.start()
            pair = ReplicatedPair(primary, standby)
            end = time.monotonic() + 60
            while not pair.replicated():
                if time.monotonic() > end:
                    pytest.fail("the standby never streamed from the primary", pytrace=False)
                time.sleep(0.1)
            yield pair
        finally:
            _stop_by_pid(standby)
