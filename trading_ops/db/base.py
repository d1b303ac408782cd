"""Declarative base with a naming convention, timezone-aware timestamps and the engine factory."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, Numeric, String, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLITE_BUSY_TIMEOUT_MS = 10_000


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """A decimal that round-trips exactly: NUMERIC(38, 18) on PostgreSQL, text on SQLite (whose NUMERIC
    is a float)."""

    impl = Numeric(38, 18, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(48))
        return dialect.type_descriptor(Numeric(38, 18, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = Decimal(value)
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(value).normalize() if dialect.name == "sqlite" else Decimal(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), Decimal: ExactDecimal()}


def utcnow() -> datetime:
    return datetime.now(UTC)


# The execution option that makes an SQLite engine's transactions BEGIN IMMEDIATE (see make_sessionmaker).
IMMEDIATE_OPTION = "trading_ops_sqlite_immediate"


# libpq settings a URL may override. connect_timeout is per host: a multi-host URL's next host is tried after it;
# keepalives find a vanished peer in about 10 + 3 x 3 s.
PSYCOPG_CONNECT_DEFAULTS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite gets WAL mode, a busy timeout and foreign keys, and its folder made."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        if parsed.get_driver_name() == "psycopg":
            # libpq's own defaults wait for a host that does not answer as long as the kernel does (minutes): each
            # host of a multi-host URL is given up after connect_timeout, and a connection to a host that vanished
            # (its machine died, the network cut) is found dead by TCP keepalives, as the URL does not say otherwise.
            given = {**parsed.query, **kwargs.get("connect_args", {})}
            defaults = {k: v for k, v in PSYCOPG_CONNECT_DEFAULTS.items() if k not in given}
            kwargs["connect_args"] = {**defaults, **kwargs.get("connect_args", {})}
        return create_engine(url, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite opens transactions lazily; let SQLAlchemy issue BEGIN itself so IMMEDIATE works.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        immediate = conn.info.get("immediate") or conn.get_execution_options().get(IMMEDIATE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_sessionmaker(engine: Engine, *, immediate: bool = False) -> sessionmaker[Any]:
    """Sessions on `engine`; with `immediate`, each transaction takes SQLite's write lock at BEGIN, so a
    read-then-write transaction waits for another writer (busy timeout) instead of failing with "database is
    locked" when that writer commits first (a deferred transaction cannot upgrade past a newer commit)."""
    bind = engine.execution_options(**{IMMEDIATE_OPTION: True}) if immediate else engine
    return sessionmaker(bind, expire_on_commit=False)
