"""Two reconciler replicas on a PostgreSQL that goes away for longer than the claim lease: a lease that lapsed only
because nobody could write to the database takes nothing from a live replica, and a replica that comes back to a run
taken from it writes nothing and acts on nothing.

Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin: initdb, pg_ctl): a cluster of the module's own on a
free port (never the shared one on 5432), stopped by its pid whatever happens."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_bot import FakeBot
from pg_cluster import Cluster, alive, own_cluster
from polling import until_async
from reconciler_server import AUTH
from replica_process import start_replica
from server_process import stop
from webhook_payloads import alert, payload

from trading_ops.db.base import make_engine
from trading_ops.reconciler.ledger import CLOSED_STATES, Ledger

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LEASE_SECONDS = 2.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with own_cluster("-c fsync=off") as pg:
        yield pg


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
    procs: list[subprocess.Popen[bytes]] = []
    ledger = Ledger(make_engine(url))
    try:
        ports = [
            (
                await asyncio.to_thread(
                    start_replica,
                    tmp_path,
                    name,
                    url,
                    fake_bot.url,
                    ["bot-1"],
                    lease_seconds=LEASE_SECONDS,
                    started=procs,
                )
            )[1]
            for name in ("r1", "r2")
        ]
        async with aiohttp.ClientSession() as session:
            hook = f"http://127.0.0.1:{ports[0]}/api/v1/alertmanager"
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
        assert all(p.poll() is None for p in procs)
        # Never taken for dead: no sweep interrupted the run, no claim was lost.
        for name in ("r1", "r2"):
            log = (tmp_path / name / "reconciler.log").read_text(errors="replace")
            assert "the run was interrupted" not in log and "claim lost" not in log, name
    finally:
        fake_bot.on_call = None
        if cluster.pid() is None or not alive(cluster.pid() or 0):
            await asyncio.to_thread(cluster.start)
        for proc in procs:
            stop(proc)
        ledger.engine.dispose()
