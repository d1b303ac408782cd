"""Approvals whose episode closed before anyone decided (its alert resolved) are no longer listed as pending: not by
the API's `?status=pending`, the CLI's `reconciler approvals --status pending` (as a subprocess), the console's
Approvals page or tradingops_approvals_pending; listed in full they say `closed`. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from ledger_rows import ask_approval
from reconciler_server import READ_AUTH, READ_TOKEN, make_config

from trading_ops.db import migrate
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app


async def test_an_approval_of_a_resolved_episode_is_not_listed_as_pending(
    aiohttp_client: Any, tmp_path: Path, database_url: str
) -> None:
    migrate.upgrade(database_url)
    waiting = ask_approval(database_url, "bot-1:9101", "waiting", fingerprint="a" * 16)
    resolved = ask_approval(database_url, "bot-2:9101", "resolved", fingerprint="b" * 16)
    config = make_config(tmp_path, database_url)
    client = await aiohttp_client(create_app(config))

    async def listed(query: str = "") -> dict[int, str]:
        answer = await client.get(f"/api/v1/approvals{query}", headers=READ_AUTH)
        assert answer.status == 200
        return {a["id"]: a["status"] for a in (await answer.json())["approvals"]}

    assert await listed("?status=pending") == {waiting: "pending"}
    assert await listed() == {waiting: "pending", resolved: "closed"}
    # The CLI, as a user runs it, on the same ledger.
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": database_url}}))
    cli = [sys.executable, "-m", "trading_ops", "--config", str(path), "reconciler", "approvals"]
    shown = subprocess.run([*cli, "--status", "pending"], capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr
    assert [line.split()[:2] for line in shown.stdout.splitlines()] == [[str(waiting), "pending"]], shown.stdout
    every = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False)
    rows = {int(line.split()[0]): line.split()[1] for line in every.stdout.splitlines()}
    assert rows == {waiting: "pending", resolved: "closed"}, every.stdout
    # The console's Approvals page: one card to decide, the closed one among the recent ones; the count says 1.
    form = await (await client.get("/ui/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    await client.post("/ui/login", data={"csrf": csrf.group(1), "token": READ_TOKEN})
    page = await (await client.get("/ui/approvals")).text()
    pending_part, _, recent_part = page.partition("<h2>Recent decisions</h2>")
    assert f"#{waiting}" in pending_part and f"#{resolved}" not in pending_part, pending_part
    assert f'id="approval-{resolved}"' in recent_part and "closed</span>" in recent_part, recent_part
    assert client.app[keys.ENGINE].approvals.pending_count() == 1
