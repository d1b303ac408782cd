"""The operator console's sessions in the ledger (trading_ops.reconciler.ledger.sessions): two reconciler replicas on
one database share them, a restart keeps them, a logout or their expiry ends them everywhere, retention prunes the
expired ones, and the database holds only a hash of the id the cookie carries. Every test runs on SQLite and on the
PostgreSQL on 127.0.0.1:5432 (database `test`); no other server is needed."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from reconciler_server import READ_TOKEN, make_config
from secret_file import write_secret
from sqlalchemy import func, select, update

from trading_ops.config import Config
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models import ConsoleSession
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.console import COOKIE, CSRF_REFUSED
from trading_ops.reconciler.ledger import Ledger
from trading_ops.reconciler.retention import Pruner

ONCALL_TOKEN = "console-oncall-destructive-token-0123456789"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def config_of(tmp_path: Path, db_url: str, oncall: str = ONCALL_TOKEN) -> Config:
    write_secret(tmp_path / "oncall-token", oncall)
    return make_config(
        tmp_path,
        db_url,
        api_tokens=[{"name": "oncall", "scope": "destructive", "token_file": str(tmp_path / "oncall-token")}],
    )


async def replica(aiohttp_client: Any, config: Config) -> TestClient[Any, Any]:
    """A reconciler on the configured database, its client keeping no cookie (each request names its own)."""
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return client


async def without_background_retention(*clients: TestClient[Any, Any]) -> None:
    """Stop the replicas' hourly retention task (its first pass runs at start, whenever a busy machine gets to it),
    so that only what the test does deletes a session."""
    tasks = [t for c in clients for t in c.app[keys.TASKS] if t.get_name() == "retention"]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def log_in(client: TestClient[Any, Any], token: str = ONCALL_TOKEN) -> str:
    """The session id a login through `client`'s console sets in the browser's cookie."""
    form = await client.get("/ui/login")
    nonce = CSRF.search(await form.text())
    assert nonce is not None
    done = await client.post("/ui/login", data={"csrf": nonce.group(1), "token": token}, allow_redirects=False)
    assert done.status == 303 and done.headers["Location"] == "/ui/"
    sid = done.cookies[COOKIE].value
    client.session.cookie_jar.clear()
    return sid


async def get(client: TestClient[Any, Any], path: str, sid: str) -> tuple[int, str]:
    """GET a console page with the session cookie `sid`: (status, the page, or where a redirect goes)."""
    resp = await client.get(path, headers={"Cookie": f"{COOKIE}={sid}"}, allow_redirects=False)
    return resp.status, resp.headers.get("Location") or await resp.text()


async def post(client: TestClient[Any, Any], path: str, sid: str, **form: str) -> tuple[int, str]:
    resp = await client.post(path, data=form, headers={"Cookie": f"{COOKIE}={sid}"}, allow_redirects=False)
    return resp.status, resp.headers.get("Location") or await resp.text()


async def csrf_of(client: TestClient[Any, Any], sid: str) -> str:
    status, page = await get(client, "/ui/maintenance", sid)
    assert status == 200, page
    found = CSRF.search(page)
    assert found is not None
    return found.group(1)


def rows(client: TestClient[Any, Any]) -> list[Any]:
    with client.app[keys.LEDGER].engine.connect() as conn:
        return list(conn.execute(select(ConsoleSession)))


async def test_a_session_made_on_one_replica_is_known_to_the_other(
    aiohttp_client: Any, tmp_path: Path, migrated_db: str
) -> None:
    config = config_of(tmp_path, migrated_db)
    first, second = await replica(aiohttp_client, config), await replica(aiohttp_client, config)
    sid = await log_in(first)
    status, page = await get(second, "/ui/", sid)
    assert status == 200 and "oncall <small>(destructive)</small>" in page
    # A POST on the first replica with the CSRF token of a page the second served: one session. Its outcome (a bad
    # duration) is shown once, by whichever replica serves the next page.
    status, where = await post(first, "/ui/maintenance", sid, csrf=await csrf_of(second, sid), duration="soon")
    assert status == 303 and where == "/ui/maintenance"
    status, page = await get(second, "/ui/maintenance", sid)
    shown = '<p class="problem" role="alert">expected a duration like 30s, 5m or 1h, got &#x27;soon&#x27;</p>'
    assert status == 200 and shown in page
    status, page = await get(first, "/ui/maintenance", sid)
    assert status == 200 and 'class="problem"' not in page
    # A forged POST on the other replica is still refused: the CSRF token is the session's, wherever it is checked.
    status, text = await post(second, "/ui/maintenance", sid, csrf="guess", duration="10m", reason="x")
    assert status == 403 and text.strip() == CSRF_REFUSED


async def test_a_session_survives_a_restart(aiohttp_client: Any, tmp_path: Path, migrated_db: str) -> None:
    config = config_of(tmp_path, migrated_db)
    first = await replica(aiohttp_client, config)
    sid = await log_in(first, READ_TOKEN)
    csrf = await csrf_of(first, sid)
    await first.close()  # the reconciler stops (a restart, a deploy)
    again = await replica(aiohttp_client, config)
    status, page = await get(again, "/ui/", sid)
    assert status == 200 and "read_token <small>(read)</small>" in page
    assert await csrf_of(again, sid) == csrf
    # What the token may do is still its scope's: a read session may not start a window.
    status, text = await post(again, "/ui/maintenance", sid, csrf=csrf, duration="10m", reason="x")
    assert status == 403 and "needs the 'operate' scope; token 'read_token' has 'read'" in text


async def test_logging_out_on_one_replica_logs_out_on_the_other(
    aiohttp_client: Any, tmp_path: Path, migrated_db: str
) -> None:
    config = config_of(tmp_path, migrated_db)
    first, second = await replica(aiohttp_client, config), await replica(aiohttp_client, config)
    sid, other = await log_in(first), await log_in(second)
    assert (await get(second, "/ui/", sid))[0] == 200
    status, where = await post(second, "/ui/logout", sid, csrf=await csrf_of(first, sid))
    assert status == 303 and where == "/ui/login"
    assert await get(first, "/ui/", sid) == (303, "/ui/login")
    assert await get(second, "/ui/", sid) == (303, "/ui/login")
    assert (await post(first, "/ui/logout", sid, csrf="x"))[0] == 403  # not logged in any more
    # The row is gone; the other session is untouched.
    assert [r.id_hash for r in rows(first)] == [hashlib.sha256(other.encode()).hexdigest()]
    assert (await get(first, "/ui/", other))[0] == 200


async def test_an_expired_session_is_refused_and_pruned(aiohttp_client: Any, tmp_path: Path, migrated_db: str) -> None:
    config = config_of(tmp_path, migrated_db)
    first, second = await replica(aiohttp_client, config), await replica(aiohttp_client, config)
    await without_background_retention(first, second)
    used, idle, live = await log_in(first), await log_in(first), await log_in(second)
    ledger = first.app[keys.LEDGER]
    now = utcnow()
    # Both run out (their login was longer ago than the session lasts); `live` has hours left.
    with ledger.db.tx() as conn:
        conn.execute(
            update(ConsoleSession)
            .where(ConsoleSession.id_hash.in_([hashlib.sha256(s.encode()).hexdigest() for s in (used, idle)]))
            .values(expires_at=now - timedelta(seconds=1))
        )
    assert await get(second, "/ui/", used) == (303, "/ui/login")
    assert (await post(first, "/ui/logout", used, csrf="x"))[0] == 403
    assert len(rows(first)) == 2  # refusing it deleted it
    # Retention deletes the expired one nobody presented again, and nothing live.
    pruned = await Pruner(ledger, 30, metrics=None).prune_once(now)
    assert pruned["console_sessions"] == 1
    assert [r.id_hash for r in rows(first)] == [hashlib.sha256(live.encode()).hexdigest()]
    assert await get(first, "/ui/", idle) == (303, "/ui/login")
    assert (await get(first, "/ui/", live))[0] == 200
    assert (await Pruner(ledger, 30, metrics=None).prune_once(now))["console_sessions"] == 0


async def test_a_forged_or_unknown_id_is_refused(aiohttp_client: Any, tmp_path: Path, migrated_db: str) -> None:
    config = config_of(tmp_path, migrated_db)
    client = await replica(aiohttp_client, config)
    sid = await log_in(client)
    (stored,) = rows(client)
    # Not the cookie's value: a copy of the database gives nothing a browser could present.
    assert stored.id_hash == hashlib.sha256(sid.encode()).hexdigest()
    assert all(sid not in str(value) for value in tuple(stored))
    assert stored.token_name == "oncall" and stored.scope == "destructive" and ONCALL_TOKEN not in str(tuple(stored))
    for forged in (stored.id_hash, secrets.token_urlsafe(32), sid[:-1], sid + "x", "", "%00"):
        assert await get(client, "/ui/", forged) == (303, "/ui/login"), forged
        status, text = await post(client, "/ui/maintenance", forged, csrf=stored.csrf, duration="10m", reason="x")
        assert status == 403 and text.strip() == "refused: not logged in (log in at /ui/login)"
    assert (await get(client, "/ui/", sid))[0] == 200


async def test_a_session_ends_when_its_token_leaves_the_configuration(
    aiohttp_client: Any, tmp_path: Path, migrated_db: str
) -> None:
    first = await replica(aiohttp_client, config_of(tmp_path, migrated_db))
    sid = await log_in(first)
    await first.close()
    # Restarted with the oncall token given another value (rotated, say): the old login does not carry over.
    rotated = await replica(aiohttp_client, config_of(tmp_path, migrated_db, oncall="another-oncall-token-0123456789"))
    assert await get(rotated, "/ui/", sid) == (303, "/ui/login")
    assert rows(rotated) == []


def test_the_oldest_sessions_go_past_the_limit(migrated_db: str) -> None:
    ledger = Ledger(make_engine(migrated_db))
    now = utcnow()
    made = [
        ledger.create_console_session("oncall", "destructive", "0" * 64, now + timedelta(seconds=i), 60, 3)
        for i in range(5)
    ]
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ConsoleSession)).scalar_one() == 3
    assert [ledger.console_session(sid, now) is not None for sid, _ in made] == [False, False, True, True, True]
    kept = ledger.console_session(made[-1][0], now)
    assert kept is not None and kept.csrf == made[-1][1].csrf and kept.token_name == "oncall"
    assert ledger.drop_console_session(made[-1][0]) and not ledger.drop_console_session(made[-1][0])
    ledger.engine.dispose()
