"""A multi-host PostgreSQL URL (the ledger's and the journals' `host=ops-a&host=ops-b&target_session_attrs=read-write`)
whose first host is dead (its address blackholed: a connect there hangs until libpq's connect_timeout): the engine's
first connection finds the live host after that timeout, and every new connection after it asks the live host first,
so a busy pool's new connections never wait on the dead member again. Needs the shared PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from blackhole import Blackhole
from shared_postgres import new_database
from sqlalchemy import event, make_url, text
from sqlalchemy.pool import NullPool

from trading_ops.db.base import AnsweringHostFirst, make_engine, psycopg_answered, psycopg_connect_params

pytestmark = pytest.mark.postgres


def test_new_connections_ask_the_host_that_answered_first() -> None:
    dead = Blackhole()
    try:
        with new_database() as url:
            name = make_url(url).database
            multi = (
                f"postgresql+psycopg://postgres@/{name}?host=127.0.0.1:{dead.port}&host=127.0.0.1:5432"
                "&target_session_attrs=read-write&connect_timeout=2"
            )
            engine = make_engine(multi, poolclass=NullPool)  # every checkout a new connection, as a busy pool's are
            asked: list[str] = []

            @event.listens_for(engine, "do_connect")
            def _seen(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
                asked.append(f"{cparams['host'].split(',')[0]}:{cparams['port'].split(',')[0]}")

            took = []
            for _ in range(3):
                started = time.monotonic()
                with engine.connect() as conn:
                    assert conn.execute(text("SELECT inet_server_port()")).scalar() == 5432
                took.append(round(time.monotonic() - started, 2))
            engine.dispose()
    finally:
        dead.close()
    # The first asks the URL's first host (the dead one); every later one the host that answered.
    assert asked == [f"127.0.0.1:{dead.port}", "127.0.0.1:5432", "127.0.0.1:5432"]
    print(json.dumps({"connect_seconds": took, "connect_timeout_seconds": 2}))


def test_the_order_is_the_urls_until_a_host_answered_and_single_hosts_are_left_alone() -> None:
    answering = AnsweringHostFirst()
    params = {"host": "ops-a,ops-b", "port": "5432"}
    answering.order(params)
    assert params == {"host": "ops-a,ops-b", "port": "5432"}
    answering.last = ("ops-b", "5432")
    answering.order(params)
    assert params == {"host": "ops-b,ops-a", "port": "5432,5432"}
    single = {"host": "ops-a", "port": "5432"}
    answering.order(single)
    assert single == {"host": "ops-a", "port": "5432"}
    # A remembered host the URL does not name changes nothing.
    answering.last = ("ops-c", "5432")
    other = {"host": "ops-a,ops-b", "port": "5432,5433"}
    answering.order(other)
    assert other == {"host": "ops-a,ops-b", "port": "5432,5433"}


def test_a_connection_whose_sends_go_unanswered_is_given_up_as_keepalives_would() -> None:
    """Keepalives probe only an idle connection: one with data in flight to a dead host waits for the kernel's
    retransmissions (about 15 minutes) unless libpq's tcp_user_timeout bounds it."""
    with new_database() as url:
        engine = make_engine(url)
        with engine.connect() as conn:
            dsn = conn.connection.dbapi_connection.info.dsn  # type: ignore[union-attr]
        engine.dispose()
    assert "tcp_user_timeout=19000" in dsn and "keepalives_idle=10" in dsn, dsn


def test_a_connection_beside_the_pool_is_opened_as_the_pools_own() -> None:
    """The reconciler's intake opens its event loop's connection beside the engine's pool: with the same libpq
    settings (keepalives, tcp_user_timeout, the caller's connect_args) and the host that answered first. From the URL
    alone it had none: an idle one to a primary whose host died whole hung its next append about 20 s."""
    engine = make_engine(
        "postgresql+psycopg://postgres@/ledger?host=ops-a:5432&host=ops-b:5432&target_session_attrs=read-write",
        connect_args={"options": "-c idle_in_transaction_session_timeout=15000"},
    )
    _, params = psycopg_connect_params(engine)
    assert params["tcp_user_timeout"] == 19_000 and params["keepalives_idle"] == 10, params
    assert params["options"] == "-c idle_in_transaction_session_timeout=15000", params
    assert params["host"].split(",") == ["ops-a", "ops-b"], params

    class Answered:
        info = type("Info", (), {"host": "ops-b", "port": "5432"})()

    psycopg_answered(engine, Answered())
    assert psycopg_connect_params(engine)[1]["host"].split(",") == ["ops-b", "ops-a"]
    engine.dispose()
