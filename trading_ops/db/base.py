"""Declarative base with a naming convention, timezone-aware timestamps and the engine factory."""

from __future__ import annotations

import decimal
import weakref
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


# Wide enough for any value a column holds (38 digits on PostgreSQL, a 48-character text on SQLite): the zeros are
# stripped and the exponent spelled out without rounding a digit away (the default context keeps 28).
EXACT = decimal.Context(prec=100)


class ExactDecimal(TypeDecorator[Decimal]):
    """A decimal that round-trips exactly: text on SQLite (whose NUMERIC is a float); NUMERIC(38, 18) on
    PostgreSQL, exact to 18 decimal places (a 28-digit average price comes back rounded there)."""

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
        return plain_decimal(Decimal(value))


def plain_decimal(value: Decimal) -> Decimal:
    """`value` without the zeros a column's scale adds and without an exponent: 100 reads 100 from either database,
    not 1E+2 (a normalized SQLite text) nor 100.000000000000000000 (PostgreSQL's NUMERIC(38, 18)); 0.5 reads 0.5."""
    if not value.is_finite():
        return value
    normal = value.normalize(EXACT)
    if normal.as_tuple().exponent >= 0:  # type: ignore[operator]
        return normal.quantize(Decimal(1), context=EXACT)
    return normal


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), Decimal: ExactDecimal()}


def utcnow() -> datetime:
    return datetime.now(UTC)


# The execution option that makes an SQLite engine's transactions BEGIN IMMEDIATE (see make_sessionmaker).
IMMEDIATE_OPTION = "trading_ops_sqlite_immediate"


# libpq settings a URL may override. connect_timeout is per host: a multi-host URL's next host is tried after it;
# keepalives find a vanished peer of an idle connection in about 10 + 3 x 3 s. A connection with data sent and not
# yet acknowledged is never probed by keepalives: the kernel retransmits for about 15 minutes (tcp_retries2), and a
# replica whose ledger connections were writing when the primary's host died whole waited that long, storing no
# webhook (tests/deploy/test_ha_topology_e2e.py); tcp_user_timeout gives such a connection up as soon as keepalives
# would.
PSYCOPG_CONNECT_DEFAULTS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 19_000,  # milliseconds
}


class AnsweringHostFirst:
    """A multi-host PostgreSQL URL's hosts tried from the one that last gave a session (psycopg's `connection.info`):
    libpq tries them in the URL's order, so with its first host dead (a whole ops host gone, its link cut) every new
    connection of the pool waited that host's `connect_timeout` before reaching the live one, and a replica's webhook
    intake, which opens one when the pool is busy, answered Alertmanager too late
    (tests/deploy/test_ha_topology_e2e.py). The host that answered stays first until it stops answering (or, with
    target_session_attrs=read-write, stops taking writes: libpq then moves on, and the next one's session is
    remembered)."""

    def __init__(self) -> None:
        self.last: tuple[str, str] | None = None

    def order(self, cparams: dict[str, Any]) -> None:
        hosts, ports = str(cparams.get("host") or "").split(","), str(cparams.get("port") or "").split(",")
        if len(ports) == 1:
            ports = ports * len(hosts)
        if self.last is None or len(hosts) < 2 or len(ports) != len(hosts):
            return
        pairs = list(zip(hosts, ports, strict=True))
        if self.last in pairs:
            pairs.remove(self.last)
            pairs.insert(0, self.last)
            cparams["host"] = ",".join(host for host, _ in pairs)
            cparams["port"] = ",".join(port for _, port in pairs)

    def remember(self, dbapi_connection: Any) -> None:
        info = getattr(dbapi_connection, "info", None)
        if info is not None and getattr(info, "host", None):
            self.last = (str(info.host), str(info.port))


# What make_engine opened each psycopg engine's connections with (its connect_args, the multi-host order), for a
# connection opened beside the engine's pool: psycopg_connect_params.
_OPENED: weakref.WeakKeyDictionary[Engine, tuple[dict[str, Any], AnsweringHostFirst | None]] = (
    weakref.WeakKeyDictionary()
)


def psycopg_connect_params(engine: Engine) -> tuple[list[Any], dict[str, Any]]:
    """The arguments `engine`'s own pool opens a psycopg connection with: the URL's, make_engine's connect_args (the
    libpq defaults above: connect_timeout, keepalives, tcp_user_timeout) and, for a multi-host URL, the host that last
    answered first. For a connection opened beside the pool (the reconciler's intake on the event loop): opened from
    the URL alone, it had none of them, and a replica's idle one to a primary whose host died whole hung its next
    append past the intake's 10 s bound and psycopg's cancellation (20 s: tests/deploy/test_ha_topology_e2e.py)."""
    args, params = engine.dialect.create_connect_args(engine.url)
    connect_args, answering = _OPENED.get(engine, ({}, None))
    params = {**params, **connect_args}
    if answering is not None:
        answering.order(params)
    return list(args), params


def psycopg_answered(engine: Engine, connection: Any) -> None:
    """A connection opened with psycopg_connect_params gave a session: its host is asked first from now on."""
    answering = _OPENED.get(engine, ({}, None))[1]
    if answering is not None:
        answering.remember(connection)


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
        engine = create_engine(url, **kwargs)
        answering = None
        if parsed.get_driver_name() == "psycopg" and isinstance(parsed.query.get("host"), tuple):
            answering = AnsweringHostFirst()

            @event.listens_for(engine, "do_connect")
            def _answering_first(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
                answering.order(cparams)

            @event.listens_for(engine, "connect")
            def _remember(dbapi_connection: Any, _record: Any) -> None:
                answering.remember(dbapi_connection)

        if parsed.get_driver_name() == "psycopg":
            _OPENED[engine] = (dict(kwargs.get("connect_args", {})), answering)
        return engine
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
