"""Two reconciler replicas on a PostgreSQL that goes away for longer than the claim lease: a lease that lapsed only
because nobody could write to the database takes nothing from a live replica, and a replica that comes back to a run
taken from it writes nothing and acts on nothing.

Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin: initdb, pg_ctl): a cluster of the module's own on a
free port (never the shared one on 5432), stopped by its pid whatever happens."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from fake_bot import FakeBot
from pg_cluster import Cluster, alive, own_cluster
from polling import until_async
from ports import free_port
from reconciler_server import AUTH, BOT_TOKEN, TOKEN, write_playbook
from server_process import stop, wait_http
from webhook_payloads import alert, payload

from trading_ops.db.base import make_engine
from trading_ops.reconciler.ledger import CLOSED_STATES, Ledger

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LEASE_SECONDS = 2.0
RULE = {
    "name": "reconnect",
    "match": ['alertname="TradingBotBrokerDisconnected"'],
    "verify": False,
    "cooldown": 0,
    "max_attempts": 3,
    "on_unknown": "retry",  # the issue's case: a safe command, sent again when its outcome is unknown
    "backoff": {"initial": "100ms"},
    "steps": [{"action": "bot", "command": "reconnect", "body": {"key": "${key}"}}],
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with own_cluster("-c fsync=off") as pg:
        yield pg


def replica(
    tmp_path: Path, name: str, db_url: str, bot: FakeBot, started: list[tuple[subprocess.Popen[bytes], int]], **rc: Any
) -> tuple[subprocess.Popen[bytes], int]:
    """A reconciler process named `name` on `db_url` acting on the fake bot for bot-1; (process, port), also appended
    to `started` as soon as it runs (stopped by the caller even when it never answers)."""
    folder = tmp_path / name
    folder.mkdir()
    port = free_port()
    (folder / "webhook-token").write_text(TOKEN)
    (folder / "bot-token").write_text(BOT_TOKEN)
    data = {
        "database": {"url": db_url},
        "reconciler": {
            "listen": {"port": port},
            "instance": name,
            "token_file": str(folder / "webhook-token"),
            "playbook": str(write_playbook(folder, [RULE])),
            "poll_interval_seconds": 0.05,
            "lease_seconds": LEASE_SECONDS,
            "check_silences": False,
            "alertmanager_url": "http://127.0.0.1:9",
            "watchdog": {"window_seconds": 0},
            "targets": {"bot-1": {"url": bot.url, "token_file": str(folder / "bot-token")}},
            **rc,
        },
    }
    (folder / "reconciler.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trading_ops", "-c", str(folder / "reconciler.yaml"), "reconciler"],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "reconciler.log", "ab"),  # noqa: SIM115
    )
    started.append((proc, port))
    wait_http(f"http://127.0.0.1:{port}/healthz", deadline=90, proc=proc)
    return proc, port


async def test_an_outage_longer_than_the_lease_takes_nothing_from_a_live_replica(
    tmp_path: Path, cluster: Cluster, fake_bot: FakeBot
) -> None:
    """The issue's race: the replica running the step loses the database as the step reaches the bot, and holds its
    outcome (retrying the write) for three leases; the database comes back. The other replica, which polled all along,
    does not take the run for dead: one action, the step a success, the episode recovered, nothing paged."""
    url = await asyncio.to_thread(cluster.create_database, "outage")
    outage = asyncio.Event()

    def on_call(_command: str) -> None:
        cluster.stop()  # the bot answers only once the database is down
        outage.set()

    fake_bot.on_call = on_call
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    ledger = Ledger(make_engine(url))
    try:
        for name in ("r1", "r2"):
            await asyncio.to_thread(replica, tmp_path, name, url, fake_bot, procs)
        async with aiohttp.ClientSession() as session:
            hook = f"http://127.0.0.1:{procs[0][1]}/api/v1/alertmanager"
            body = payload(alert("TradingBotBrokerDisconnected", fingerprint="fp0", instance="bot-1", key="k0"))
            async with session.post(hook, json=body, headers=AUTH) as resp:
                assert resp.status == 200
        await until_async("the step reached the bot", outage.is_set, 60)
        fake_bot.on_call = None
        await asyncio.sleep(3 * LEASE_SECONDS)  # the outage: longer than the lease (a fault's length, not a wait)
        await asyncio.to_thread(cluster.start)

        def closed() -> list[dict[str, Any]]:
            episodes = ledger.list_episodes()
            return episodes if episodes and all(e["state"] in CLOSED_STATES for e in episodes) else []

        (episode,) = await until_async("the episode closed", closed, 60, in_thread=True)
        assert fake_bot.commands() == ["reconnect"]  # never sent again
        assert episode["state"] == "recovered", episode
        (attempt,) = episode["attempt_list"]
        assert [s["outcome"] for s in attempt["steps"]] == ["success"], attempt
        assert all(p.poll() is None for p, _ in procs)
        # Never taken for dead: no sweep interrupted the run, no claim was lost.
        for name in ("r1", "r2"):
            log = (tmp_path / name / "reconciler.log").read_text(errors="replace")
            assert "the run was interrupted" not in log and "claim lost" not in log, name
    finally:
        fake_bot.on_call = None
        if cluster.pid() is None or not alive(cluster.pid() or 0):
            await asyncio.to_thread(cluster.start)
        for proc, _ in procs:
            stop(proc)
        ledger.engine.dispose()
