"""Turn a database or migration error into the one line a command prints, and its exit status."""

from __future__ import annotations

import sys
from dataclasses import dataclass

NOT_MIGRATED = "database is not migrated: run `trading-ops db upgrade`"
UNREACHABLE = "database unreachable"
EXIT_FAILURE = 1
EXIT_USAGE = 2
# "no such table/column" (SQLite) and their PostgreSQL SQLSTATEs (undefined_table, undefined_column): the schema is
# older than this version of trading-ops expects.
SQLITE_MISSING_SCHEMA = ("no such table", "no such column")
POSTGRES_MISSING_SCHEMA = ("42P01", "42703")
# What Alembic says when asked to compare the models with a database that is not at the head revision.
ALEMBIC_BEHIND = "Target database is not up to date"
# PostgreSQL refusing a local connection whose operating-system user is not the role (Debian's `peer` in pg_hba.conf):
# the command was run as another user than the services' (root, typically).
PEER_REFUSED = "Peer authentication failed for user "


@dataclass(frozen=True)
class DatabaseProblem:
    message: str
    exit_status: int


def shown_url(url: str) -> str:
    """The URL as it may be printed: its password (from url_env or url_file) masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(invalid URL)"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def database_problem(exc: BaseException, url: str | None) -> DatabaseProblem | None:
    """The line to print for `exc` when it is a database or migration error (else None): an unmigrated schema and a
    bad revision are usage problems (2), a database that cannot be reached or used is a failure (1)."""
    migration = _migration_problem(exc)
    if migration is not None:
        return migration
    # A command that never imported SQLAlchemy cannot have raised one of its errors (and importing it to find out
    # would cost every failing command that import).
    if "sqlalchemy.exc" not in sys.modules:
        return None
    from sqlalchemy.exc import DBAPIError, OperationalError

    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    text = str(orig) if orig is not None else str(exc)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in POSTGRES_MISSING_SCHEMA or any(m in text for m in SQLITE_MISSING_SCHEMA):
        return DatabaseProblem(NOT_MIGRATED, EXIT_USAGE)
    where = f" ({shown_url(url)})" if url else ""
    if PEER_REFUSED in text:
        message = f"database refused{where}: {_peer_refused(text)}"
    elif isinstance(exc, OperationalError) and (sqlstate is None or sqlstate.startswith("08")):
        message = f"{UNREACHABLE}{where}: {_first_line(text)}"
    else:
        message = f"database error{where}: {_first_line(text)}"
    return DatabaseProblem(message, EXIT_FAILURE)


def _peer_refused(text: str) -> str:
    """PostgreSQL's peer refusal, and as whom to run the command instead."""
    role = text.split(PEER_REFUSED, 1)[1].split(maxsplit=1)[0].strip('"')
    return (
        f'{PEER_REFUSED}"{role}" (peer authentication: run the command as the operating-system user {role}, e.g. '
        f"`runuser -u {role} -- trading-ops ...`)"
    )


def _migration_problem(exc: BaseException) -> DatabaseProblem | None:
    """The line for an Alembic error (a usage problem: the schema or the revision asked for), else None."""
    alembic_util = sys.modules.get("alembic.util.exc")
    if alembic_util is None or not isinstance(exc, alembic_util.CommandError):
        return None
    if ALEMBIC_BEHIND in str(exc):  # `alembic check` on a database behind the migrations
        return DatabaseProblem(NOT_MIGRATED, EXIT_USAGE)
    return DatabaseProblem(f"migrations: {_first_line(str(exc))}", EXIT_USAGE)
