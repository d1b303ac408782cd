"""The machine's shared PostgreSQL server (127.0.0.1:5432, trust auth, database `test`): a new, empty database for
each test that asks, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def new_database() -> Iterator[str]:
    """The URL of a new, empty database on the shared server, dropped (with any session still on it) on exit."""
    name = f"trading_ops_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - environment problem, reported plainly
        admin.dispose()
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 (trust auth, database test) is required: {exc}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
