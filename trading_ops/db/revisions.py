"""The Alembic revisions this version of trading-ops knows, written out: what a bot, the paper venue and the
reconciler compare a database's `alembic_version` with at every start (schema_problem, below), without importing
Alembic and loading the migration scripts (a fifth of a CPU-second per process, more than the rest of the check).
tests/db/test_db_revisions.py keeps both equal to what Alembic reads from trading_ops/db/migrations: a new migration
fails that test until its id is added here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import inspect, text

from trading_ops.db.errors import NOT_MIGRATED

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

# Every revision of trading_ops/db/migrations/versions, oldest first.
KNOWN = (
    "0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008",
    "0012", "0013", "0014", "0015", "0016", "0017", "0018", "0019",
    "0020", "0021",
)  # fmt: skip
# The revisions a database of this version's schema is at (one: the migrations are a line).
HEADS = frozenset({"0021"})
# The table Alembic records a database's revisions in (its default; env.py keeps it).
VERSION_TABLE = "alembic_version"


def schema_problem(engine: Engine) -> str | None:
    """Why the database of `engine` cannot hold this version's tables (never migrated, or behind the Alembic head:
    run `trading-ops db upgrade`; ahead of it: a newer trading-ops migrated it), as one line, or None."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return NOT_MIGRATED
        current = {str(row[0]) for row in connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))}
    if current == HEADS:
        return None
    if current - set(KNOWN):
        newer = ", ".join(sorted(current - set(KNOWN)))
        return f"database is at revision {newer}, which this version of trading-ops does not know: upgrade trading-ops"
    return NOT_MIGRATED
