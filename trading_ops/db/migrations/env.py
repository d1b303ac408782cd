"""Alembic environment: runs migrations against the URL the caller (or the configuration) names."""

from __future__ import annotations

import os

from alembic import context

from trading_ops.db.base import IMMEDIATE_OPTION, make_engine
from trading_ops.db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or os.environ.get("TRADING_OPS_DATABASE_URL")
    if url:
        return str(url)
    from trading_ops.config import load_config

    return load_config(os.environ.get("TRADING_OPS_CONFIG")).database_url()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        # SQLite: the migration takes the write lock at BEGIN. A deferred transaction that reads alembic_version and
        # then writes fails at once with "database is locked" when a running reconciler commits in between (its
        # snapshot is stale and cannot be upgraded); BEGIN IMMEDIATE waits for that writer (busy timeout) instead.
        with engine.execution_options(**{IMMEDIATE_OPTION: True}).connect() as conn:
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
