"""GET /api/v1/audit and the console's /ui/audit on the real reconciler app (SQLite and PostgreSQL): the read scope,
the newest entries first with the chain's head, filters and bad input as one-line 400s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from console_client import log_in, page
from reconciler_server import AUTH, READ_AUTH, READ_TOKEN, make_config

from trading_ops import audit
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app


async def test_the_audit_chain_over_the_api_and_the_console(
    aiohttp_client: Any, tmp_path: Path, migrated_db: str
) -> None:
    client = await aiohttp_client(create_app(make_config(tmp_path, migrated_db)))
    engine = client.app[keys.LEDGER].engine
    for i in range(3):
        audit.append(
            engine,
            principal=f"person-{i}",
            source="10.0.0.9",
            action="approve",
            target="paper-1",
            before={"status": "pending"},
            after={"status": "approved"},
            decision=f"approval:{i + 1}",
            comment="<b>alice</b>",
        )
    for header in ({}, AUTH, {"Authorization": "Bearer wrong"}):
        assert (await client.get("/api/v1/audit", headers=header)).status == 401
    resp = await client.get("/api/v1/audit?limit=2", headers=READ_AUTH)
    answer = await resp.json()
    assert resp.status == 200
    assert [e["seq"] for e in answer["entries"]] == [3, 2]
    assert answer["entries"][0]["principal"] == "person-2" and answer["entries"][0]["decision"] == "approval:3"
    assert answer["head"] == {"seq": 3, "hash": answer["entries"][0]["hash"]}
    resp = await client.get("/api/v1/audit?principal=person-0&before=3", headers=READ_AUTH)
    assert [e["seq"] for e in (await resp.json())["entries"]] == [1]
    for bad in ("limit=0", "limit=x", "before=-1", "before=", "principal=%00", f"target={'x' * 300}"):
        resp = await client.get(f"/api/v1/audit?{bad}", headers=READ_AUTH)
        if bad == "before=":
            assert resp.status == 200, bad  # empty: no bound
            continue
        assert resp.status == 400, bad
        assert len((await resp.json())["error"].splitlines()) == 1
    sid = await log_in(client, READ_TOKEN)
    status, text = await page(client, "/ui/audit", sid)
    assert status == 200
    assert (
        'id="audit-3"' in text and "person-2" in text and "&lt;b&gt;alice&lt;/b&gt;" in text and "<b>alice" not in text
    )
    status, _ = await page(client, "/ui/audit?limit=0", sid)
    assert status == 400
    status, location = await page(client, "/ui/audit", "no-such-session")
    assert status in (302, 303) and location.endswith("/ui/login")
    spec = await (await client.get("/api/v1/openapi.json")).json()
    assert "/api/v1/audit" in spec["paths"]
