"""PostgreSQL backups with the client programs: `pg_dump -Fc` from one exported snapshot, `pg_restore`, and
scratch databases to restore into. Never a shell: argument lists, the password only in the environment."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL, make_url

# How often a running pg_dump/pg_restore is looked at (progress, timeout).
POLL_SECONDS = 0.2
SCRATCH_PREFIX = "trading_ops_verify_"
# libpq's environment variables for the parts of a URL (the password never goes on a command line).
LIBPQ_ENV = {"host": "PGHOST", "port": "PGPORT", "username": "PGUSER", "password": "PGPASSWORD"}
LIBPQ_QUERY_ENV = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "connect_timeout": "PGCONNECT_TIMEOUT"}
# Stderr kept from a failing client program for its error message.
STDERR_LIMIT = 2000

Progress = Callable[[int, int], None]  # (bytes done, bytes in all or 0 when unknown)


class ClientProgramError(RuntimeError):
    """pg_dump or pg_restore failed, could not start, or ran out of time."""


def libpq_env(url: URL) -> dict[str, str]:
    """The environment that points pg_dump/pg_restore at `url`'s server as `url`'s user (no database)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for attr, name in LIBPQ_ENV.items():
        value = getattr(url, attr)
        if value is not None:
            env[name] = str(value)
    for key, name in LIBPQ_QUERY_ENV.items():
        value = url.query.get(key)
        if isinstance(value, str):
            env[name] = value
    return env


def run_client(
    argv: list[str],
    env: dict[str, str],
    timeout: float,
    watch: Path | None = None,
    progress: Progress | None = None,
) -> None:
    """Run a client program; raise ClientProgramError with its stderr when it fails or outlives `timeout`.
    `watch`: a file the program writes, whose size is reported to `progress` while it runs."""
    program = shutil.which(argv[0]) or argv[0]
    try:
        proc = subprocess.Popen(
            [program, *argv[1:]], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise ClientProgramError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                _, err = proc.communicate(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise ClientProgramError(f"{argv[0]} did not finish within {timeout:g}s") from None
                if watch is not None and progress is not None:
                    with contextlib.suppress(OSError):
                        progress(watch.stat().st_size, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        detail = message[-1] if message else f"exit status {proc.returncode}"
        raise ClientProgramError(f"{argv[0]} failed: {detail[:STDERR_LIMIT]}")


@contextlib.contextmanager
def exported_snapshot(engine: Engine) -> Iterator[tuple[Connection, str]]:
    """A REPEATABLE READ transaction and its exported snapshot id: pg_dump --snapshot=<id> dumps exactly what this
    transaction sees, so counts taken in it describe the dump. The transaction stays open until the block ends."""
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot = str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())
            yield conn, snapshot


def dump(url: str, snapshot: str, target: Path, pg_dump: str, timeout: float, progress: Progress | None = None) -> None:
    """`pg_dump -Fc` of `url`'s database as of `snapshot` into `target`."""
    parsed = make_url(url)
    argv = [pg_dump, "--format=custom", f"--snapshot={snapshot}", f"--file={target}", f"--dbname={parsed.database}"]
    run_client(argv, libpq_env(parsed), timeout, watch=target, progress=progress)


def restore(url: str, source: Path, pg_restore: str, timeout: float, *, clean: bool) -> None:
    """`pg_restore` of a custom-format dump into `url`'s database, in one transaction (all or nothing).
    `clean`: drop the objects the dump holds first (restoring over a database in use before)."""
    parsed = make_url(url)
    argv = [pg_restore, "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error"]
    if clean:
        argv += ["--clean", "--if-exists"]
    argv += [f"--dbname={parsed.database}", str(source)]
    run_client(argv, libpq_env(parsed), timeout)


@contextlib.contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A new empty database on `url`'s server (created by `url`'s user), dropped when the block ends."""
    parsed = make_url(url)
    name = SCRATCH_PREFIX + uuid.uuid4().hex[:12]
    admin = create_engine(parsed, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield parsed.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def other_sessions(conn: Connection) -> list[str]:
    """Other sessions connected to this database (who is using it), as `application_name (pid N)`."""
    rows = conn.execute(
        text(
            "SELECT pid, application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    ).all()
    return [f"{app or 'a session'} (pid {pid})" for pid, app in rows]
