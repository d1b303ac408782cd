"""The episode API: its own read token, bounded `limit`, checked `state` and ids (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from raw_http import NON_ASCII_AUTH, raw_request
from reconciler_server import AUTH, READ_AUTH, READ_TOKEN, TOKEN, make_config, write_playbook
from secret_file import write_secret
from webhook_payloads import alert, payload

from trading_ops.config import ConfigError
from trading_ops.reconciler.api_spec import MAX_LIST
from trading_ops.reconciler.app import create_app

# Rules that wait ten years: the episodes stay `waiting`, nothing runs.
IDLE_RULES = [
    {
        "name": "idle",
        "match": ['alertname=~".+"'],
        "wait_for": "3650d",
        "steps": [{"action": "bot", "command": "pause"}],
    }
]


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path, migrated_db: str) -> Any:
    config = make_config(tmp_path, migrated_db, playbook=str(write_playbook(tmp_path, IDLE_RULES)))
    client = await aiohttp_client(create_app(config))
    body = payload(*(alert(fingerprint=f"f{i}", instance=f"bot-{i}") for i in range(3)))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    return client


@pytest.mark.parametrize("path", ["/api/v1/episodes", "/api/v1/episodes/1"])
@pytest.mark.parametrize("header", [None, f"Bearer {TOKEN}", "Bearer wrong", f"Basic {READ_TOKEN}"])
async def test_episodes_need_the_read_token_not_the_webhooks(client: Any, path: str, header: str | None) -> None:
    resp = await client.get(path, headers={"Authorization": header} if header else {})
    assert resp.status == 401
    assert "read token" in (await resp.json())["error"]
    assert (await client.get(path, headers=READ_AUTH)).status == 200


@pytest.mark.parametrize("header", NON_ASCII_AUTH)
async def test_a_non_ascii_read_token_is_401(client: Any, header: bytes) -> None:
    status, body = await raw_request(client.server.port, "GET", "/api/v1/episodes", [header])
    assert status == 401, body


async def test_limit_and_state_are_checked(client: Any) -> None:
    async def status(query: str) -> int:
        return (await client.get(f"/api/v1/episodes{query}", headers=READ_AUTH)).status

    for bad in ("0", "-1", str(MAX_LIST + 1), "99999999999999999999", "x", "1.5", "%00", "%D9%A3", ""):
        assert await status(f"?limit={bad}") == 400, bad
    # PostgreSQL refused a NUL in the query (a 500); an unknown state is a 400 on both databases.
    for bad in ("%00", "open", "waiting%00", "x" * 300):
        assert await status(f"?state={bad}") == 400, bad
    resp = await client.get(f"/api/v1/episodes?limit={MAX_LIST}&state=waiting", headers=READ_AUTH)
    assert resp.status == 200 and len((await resp.json())["episodes"]) == 3
    resp = await client.get("/api/v1/episodes?limit=2", headers=READ_AUTH)
    assert [e["fingerprint"] for e in (await resp.json())["episodes"]] == ["f2", "f1"]


async def test_an_id_out_of_range_is_404_and_a_non_number_400(client: Any) -> None:
    async def status(episode_id: str) -> int:
        return (await client.get(f"/api/v1/episodes/{episode_id}", headers=READ_AUTH)).status

    # Past a 64-bit integer: SQLite raised OverflowError, PostgreSQL NumericValueOutOfRange (both a 500).
    for missing in ("99999999999999999999", "9223372036854775808", "2147483648", "0", "404"):
        assert await status(missing) == 404, missing
    for bad in ("-1", "1e3", "abc", "%00", "%D9%A3", "1%20"):
        assert await status(bad) == 400, bad
    assert await status("1") == 200


def test_the_read_token_must_differ_from_the_webhooks(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url, read_token_file=str(tmp_path / "webhook-token"))
    with pytest.raises(ConfigError, match="reconciler.read_token: must differ from the webhook token"):
        create_app(config)


async def test_without_a_read_token_the_api_is_closed(aiohttp_client: Any, tmp_path: Path, sqlite_url: str) -> None:
    from trading_ops.db import migrate

    migrate.upgrade(sqlite_url)
    config = make_config(tmp_path, sqlite_url)
    config.reconciler.read_token = "env:TRADING_OPS_TEST_NO_SUCH_VARIABLE"
    client = await aiohttp_client(create_app(config))
    for header in ({}, {"Authorization": "Bearer "}, READ_AUTH):
        assert (await client.get("/api/v1/episodes", headers=header)).status == 401


# -- named tokens with scopes ----------------------------------------------------------------------------------------

API_TOKENS = {"oncall-read": "read", "ops-operate": "operate", "ops-destructive": "destructive", "lead": "approve"}


def api_token_config(tmp_path: Path, db: str) -> Any:
    tokens = []
    for name, scope in API_TOKENS.items():
        write_secret(tmp_path / f"{name}-token", f"secret-of-{name}\n")
        tokens.append({"name": name, "scope": scope, "token_file": str(tmp_path / f"{name}-token")})
    return make_config(tmp_path, db, playbook=str(write_playbook(tmp_path, IDLE_RULES)), api_tokens=tokens)


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer secret-of-{name}"}


async def test_every_scope_reads_episodes_and_the_webhook_token_none(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    client = await aiohttp_client(create_app(api_token_config(tmp_path, migrated_sqlite)))
    for name in API_TOKENS:
        assert (await client.get("/api/v1/episodes", headers=bearer(name))).status == 200, name
    assert (await client.get("/api/v1/episodes", headers=READ_AUTH)).status == 200  # read_token: still the read scope
    assert (await client.get("/api/v1/episodes", headers=AUTH)).status == 401
    # An API token is no webhook token either: Alertmanager's is its own.
    assert (await client.post("/api/v1/alertmanager", json=payload(alert()), headers=bearer("lead"))).status == 401


async def test_a_handler_gets_the_token_or_a_401_or_a_403_naming_the_scope(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    """What the API's acting routes do (approvals need `approve`, an emergency halt `destructive`, a retry `operate`):
    `authorized` answers for each scope, with a read_token of the read scope only."""
    from aiohttp import web

    from trading_ops.reconciler.auth import authorized
    from trading_ops.scopes import APPROVE, DESTRUCTIVE, OPERATE

    app = create_app(api_token_config(tmp_path, migrated_sqlite))

    def route(scope: str, action: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            if isinstance(token := authorized(request, scope, action), web.Response):
                return token
            return web.json_response({"by": token.name})

        return handle

    app.router.add_post("/api/v1/test/retry", route(OPERATE, "retrying"))
    app.router.add_post("/api/v1/test/halt", route(DESTRUCTIVE, "halting a bot"))
    app.router.add_post("/api/v1/test/approve", route(APPROVE, "approving"))
    client = await aiohttp_client(app)
    allowed = {
        "oncall-read": set(),
        "ops-operate": {"retry"},
        "ops-destructive": {"retry", "halt"},
        "lead": {"approve"},
    }
    needs = {
        "retry": ("operate", "retrying"),
        "halt": ("destructive", "halting a bot"),
        "approve": ("approve", "approving"),
    }
    for name, may in allowed.items():
        for path, (scope, action) in needs.items():
            resp = await client.post(f"/api/v1/test/{path}", headers=bearer(name))
            body = await resp.json()
            if path in may:
                assert (resp.status, body) == (200, {"by": name})
            else:
                assert resp.status == 403, (name, path)
                assert body == {"error": f"{action} needs the '{scope}' scope; token '{name}' has '{API_TOKENS[name]}'"}
    resp = await client.post("/api/v1/test/approve", headers=READ_AUTH)
    assert resp.status == 403
    assert (await resp.json())["error"] == "approving needs the 'approve' scope; token 'read_token' has 'read'"
    for header in ({}, AUTH, {"Authorization": "Bearer secret-of-leadx"}):
        assert (await client.post("/api/v1/test/approve", headers=header)).status == 401


def test_an_api_token_must_differ_from_the_webhooks(tmp_path: Path, sqlite_url: str) -> None:
    tokens = [{"name": "x", "scope": "approve", "token_file": str(tmp_path / "webhook-token")}]
    config = make_config(tmp_path, sqlite_url, api_tokens=tokens)
    with pytest.raises(ConfigError, match=r"reconciler.api_tokens \(x\): must differ from the webhook token"):
        create_app(config)


async def test_retry_and_circuit_reset_need_the_operate_scope_and_record_the_tokens_name(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    from datetime import timedelta

    from sqlalchemy import select

    from trading_ops.db.base import make_engine, utcnow
    from trading_ops.db.models import AuditEntry
    from trading_ops.reconciler.ledger import Ledger

    client = await aiohttp_client(create_app(api_token_config(tmp_path, migrated_sqlite)))
    body = payload(alert(fingerprint="f1", instance="bot-1"))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    episode = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"][0]

    retry = f"/api/v1/episodes/{episode['id']}/retry"
    for name in ("oncall-read", "lead"):
        resp = await client.post(retry, headers=bearer(name))
        assert resp.status == 403
        needs = f"retrying an episode needs the 'operate' scope; token '{name}' has '{API_TOKENS[name]}'"
        assert (await resp.json())["error"] == needs
    assert (await client.post(retry, headers=AUTH)).status == 401
    # Allowed, and answered by the ledger: a waiting episode is not retried (only escalated or failed ones are).
    resp = await client.post(retry, headers=bearer("ops-operate"))
    assert (
        resp.status == 409
        and "is waiting; only escalated or failed episodes are retried" in (await resp.json())["error"]
    )
    assert (await client.post("/api/v1/episodes/4040/retry", headers=bearer("ops-destructive"))).status == 404
    assert (await client.post("/api/v1/episodes/x/retry", headers=bearer("ops-operate"))).status == 400

    ledger = Ledger(make_engine(migrated_sqlite))
    try:
        until = utcnow() + timedelta(minutes=30)
        assert ledger.open_circuit("bot-1", until)
        reset = "/api/v1/circuits/bot-1/reset"
        resp = await client.post(reset, headers=bearer("oncall-read"))
        assert resp.status == 403
        assert (await resp.json())[
            "error"
        ] == "resetting a circuit needs the 'operate' scope; token 'oncall-read' has 'read'"
        assert ledger.circuit_open_until("bot-1", utcnow()) is not None
        resp = await client.post(reset, headers=bearer("ops-operate"))
        assert resp.status == 200, await resp.text()
        assert ledger.circuit_open_until("bot-1", utcnow()) is None
        with ledger.engine.connect() as conn:
            audit = conn.execute(select(AuditEntry)).mappings().all()
        assert [(a["action"], a["target"], a["actor"]) for a in audit] == [
            ("circuit_reset", "bot-1", "token 'ops-operate' from 127.0.0.1")
        ]
        resp = await client.post(reset, headers=bearer("ops-operate"))
        assert resp.status == 404 and (await resp.json())["error"] == "no open circuit for 'bot-1'"
    finally:
        ledger.engine.dispose()


async def test_a_database_that_does_not_answer_is_a_503_to_retry_in_one_log_line(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger's PostgreSQL gone while the reconciler serves (a failover under way, its host dead): the API says
    503, try again, and logs one line, never a 500 "internal error" with a traceback that a client cannot tell from a
    bug. The error is the real driver's: a connection to a port nothing listens on."""
    import socket

    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    from trading_ops.reconciler import keys

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/test?connect_timeout=2")
    with pytest.raises(OperationalError) as refused:
        engine.connect()
    engine.dispose()

    def unreachable(*_args: Any) -> Any:
        raise refused.value

    client.app[keys.LEDGER].list_episodes = unreachable
    caplog.clear()
    resp = await client.get("/api/v1/episodes", headers=READ_AUTH)
    assert resp.status == 503, await resp.text()
    assert "database unreachable: try again" in (await resp.json())["error"]
    said = [r for r in caplog.records if "/api/v1/episodes" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None and "database unreachable" in said[0].getMessage(), said
