"""The ledger's database: its tables, its engine and the write transaction every part of the ledger uses."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite

from trading_ops.db.models.ledger import (
    Approval,
    Attempt,
    AuditEntry,
    ConsoleSession,
    Episode,
    Escalation,
    Notification,
    Setting,
    Step,
    Target,
)

# What `later` gives for a time past the calendar's end (both databases store it).
END_OF_TIME = datetime.max.replace(tzinfo=UTC)

E = cast(Table, Episode.__table__)
A = cast(Table, Attempt.__table__)
S = cast(Table, Step.__table__)
T = cast(Table, Target.__table__)
N = cast(Table, Notification.__table__)
SET = cast(Table, Setting.__table__)
AUDIT = cast(Table, AuditEntry.__table__)
ESC = cast(Table, Escalation.__table__)
APPROVALS = cast(Table, Approval.__table__)
CONSOLE_SESSIONS = cast(Table, ConsoleSession.__table__)


class LedgerDB:
    """The engine the ledger's parts share, and how they write: one transaction at a time, the dialect's upsert."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # What the parts open their write transactions with: `transaction`, unless a test puts itself in between.
        self.tx: Callable[[], contextlib.AbstractContextManager[Connection]] = self.transaction

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite, so concurrent writers queue instead of failing)."""
        with self.engine.connect() as conn, self.tx_on(conn):
            yield conn

    @contextlib.contextmanager
    def tx_on(self, conn: Connection) -> Iterator[Connection]:
        """A write transaction, as `tx`, on a connection the caller holds."""
        conn.info["immediate"] = True
        try:
            with conn.begin():
                yield conn
        finally:
            conn.info["immediate"] = False

    def insert(self, table: Any) -> Any:
        """An INSERT with the dialect's ON CONFLICT clauses (PostgreSQL's or SQLite's)."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)


def later(when: datetime, seconds: float) -> datetime:
    """`when` plus `seconds`, the end of the calendar when that is past it (never OverflowError, which would fail
    the whole batch of notifications being stored: a 503 that Alertmanager retries forever)."""
    try:
        return when + timedelta(seconds=seconds)
    except OverflowError:
        return END_OF_TIME
