"""Two reconciler replicas on two test hosts (network namespaces, tests/netns_hosts.py) sharing one PostgreSQL ledger:
the replica holding every claim is cut off from the network (its link down, the process left running) while its
steps are in flight at the bot; the other takes its episodes over once their lease lapsed and finishes them; when the
cut-off replica comes back it acts on nothing it no longer owns and writes nothing over what the other decided
(fencing). Counted at the target: each command arrived exactly once, and the step after it never; counted at the
escalation sink (Alertmanager's API as the reconciler posts to it): one page per episode, none twice.

The database, the bot and the sink listen on the test network's own address (this namespace), reachable from both
hosts; a PostgreSQL cluster of the test's own (never the shared server on 5432). Needs root, `ip` and PostgreSQL's
server binaries; prints the time from the cut to the takeover."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import replica_process
from aiohttp import web
from fake_bot import FakeBot
from netns_hosts import Host, Network, host_network
from pg_cluster import Cluster, own_cluster
from polling import until_async
from ports import free_port
from reconciler_server import AUTH
from server_process import stop
from webhook_payloads import alert, payload

from trading_ops.db.base import make_engine
from trading_ops.reconciler.ledger import CLOSED_STATES, UNKNOWN, Ledger

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LEASE_SECONDS = 10.0  # short for the test; long enough that a busy machine renews in time
INSTANCES = ("bot-0", "bot-1", "bot-2")
# The step in flight at the cut may have acted: the taker pages a human instead of sending it again (on_unknown:
# escalate), so each command reaches the bot once. The second step is what a returning owner would do next.
RULE = {
    "name": "reconnect",
    "match": ['alertname="TradingBotBrokerDisconnected"'],
    "verify": False,
    "cooldown": 0,
    "max_attempts": 2,
    "on_unknown": "escalate",
    "steps": [
        {"action": "bot", "command": "reconnect", "body": {"key": "${key}"}, "timeout": "60s"},
        {"action": "bot", "command": "resubscribe", "body": {"key": "${key}"}},
    ],
}


@pytest.fixture
def network() -> Iterator[Network]:
    with host_network() as net:
        yield net


@pytest.fixture
def cluster(network: Network) -> Iterator[Cluster]:
    """A cluster of the test's own that also listens on the test network's address and trusts its hosts."""
    with own_cluster(f"-c fsync=off -c listen_addresses=127.0.0.1,{network.gateway}") as pg:
        with (pg.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {network.prefix}.0/24 trust\n")
        pg.ctl("reload")
        yield pg


@pytest.fixture
async def served(network: Network) -> AsyncIterator[tuple[FakeBot, str, list[dict[str, Any]]]]:
    """The fake bot and the escalation sink (Alertmanager's API: every alert posted, kept) on the network's address."""
    bot = FakeBot(hold=asyncio.Event())
    posted: list[dict[str, Any]] = []

    async def alerts(request: web.Request) -> web.Response:
        posted.extend(await request.json())
        return web.json_response({})

    sink = web.Application()
    sink.router.add_post("/api/v2/alerts", alerts)
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, network.gateway, port).start()
        return f"http://{network.gateway}:{port}"

    try:
        bot.url = await serve(bot.app())
        yield bot, await serve(sink), posted
    finally:
        assert bot.hold is not None
        bot.hold.set()  # answers still held go out, so the runners stop at once
        for runner in runners:
            await runner.cleanup()


def start_replica(host: Host, tmp_path: Path, name: str, db_url: str, bot: FakeBot, sink: str) -> str:
    """A reconciler process named `name` on `host`, listening on the host's address; its base URL once healthy."""
    _, port = replica_process.start_replica(
        tmp_path,
        name,
        db_url,
        bot.url,
        INSTANCES,
        lease_seconds=LEASE_SECONDS,
        alertmanager_url=sink,
        rule=RULE,
        listen_host=host.address,
        popen=host.popen,
        spool_dir=str(tmp_path / name / "spool"),
    )
    return f"http://{host.address}:{port}"


def snapshot(ledger: Ledger) -> list[dict[str, Any]]:
    """What the ledger says of every episode, its attempts and steps: compared before and after the return."""
    return json.loads(json.dumps(ledger.list_episodes(limit=100), default=str, sort_keys=True))


async def test_a_replica_cut_off_mid_step_is_taken_over_and_acts_on_nothing_when_it_returns(
    tmp_path: Path, network: Network, cluster: Cluster, served: tuple[FakeBot, str, list[dict[str, Any]]]
) -> None:
    bot, sink, posted = served
    await asyncio.to_thread(cluster.create_database, "partition")
    ledger = Ledger(make_engine(cluster.url("partition")))
    db_url = f"postgresql+psycopg://postgres@{network.gateway}:{cluster.port}/partition"
    one, two = network.add_host("r1"), network.add_host("r2")
    try:
        r1 = await asyncio.to_thread(start_replica, one, tmp_path, "r1", db_url, bot, sink)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for i, instance in enumerate(INSTANCES):
                body = payload(
                    alert("TradingBotBrokerDisconnected", fingerprint=f"fp{i}", instance=instance, key=f"k{i}")
                )
                async with session.post(f"{r1}/api/v1/alertmanager", json=body, headers=AUTH) as resp:
                    assert resp.status == 200, await resp.text()
            # r1 holds every claim, each step's command at the bot, its answer held: in flight.
            await until_async("r1's three steps in flight at the bot", lambda: len(bot.calls) == len(INSTANCES), 60)
            r2 = await asyncio.to_thread(start_replica, two, tmp_path, "r2", db_url, bot, sink)
            episodes = ledger.list_episodes()
            assert len(episodes) == len(INSTANCES)
            assert all(e["owner"].startswith("r1:") and e["state"] == "running" for e in episodes), episodes

            one.link_down()
            cut_at = time.monotonic()
            assert bot.hold is not None
            bot.hold.set()  # the bot answers now: into the cut (the step acted; r1 cannot hear it)

            taken_at: dict[int, float] = {}

            def taken_over() -> bool:
                for e in ledger.list_episodes():
                    steps = [s for a in e["attempt_list"] for s in a["steps"]]
                    if e["id"] not in taken_at and steps and steps[0]["outcome"] == UNKNOWN:
                        taken_at[e["id"]] = time.monotonic()
                return len(taken_at) == len(INSTANCES)

            await until_async("r2 took r1's runs over (their steps unknown)", taken_over, 120, 0.05)

            def all_closed() -> bool:
                return all(e["state"] in CLOSED_STATES for e in ledger.list_episodes())

            await until_async("every episode closed by r2", all_closed, 60)
            await until_async("r2's pages at the sink", lambda: len(pages(posted)) == len(INSTANCES), 60)
            before = snapshot(ledger)

            one.link_up()
            returned_at = time.monotonic()
            log_1 = tmp_path / "r1" / "reconciler.log"

            def r1_stopped_every_run() -> bool:
                said = log_1.read_text(errors="replace")
                return all(
                    f"episode {e['id']}: claim lost" in said or f"episode {e['id']}: lease renewal found" in said
                    for e in before
                )

            await until_async("r1 back, each of its runs stopped as lost", r1_stopped_every_run, 180)

            async def r1_ready() -> bool:
                async with session.get(f"{r1}/readyz") as resp:
                    return resp.status == 200

            await until_async("r1 ready again (not restarted)", r1_ready, 60)
            # What r1 still writes after the line that says a run stopped (abandon_run, release_target) is
            # conditional on rows it still holds: none, so the ledger reads now as it will.
            after = snapshot(ledger)
            async with session.get(f"{r2}/readyz") as resp:
                r2_ready = resp.status

        commands = Counter((command, str(b.get("key"))) for command, b in bot.calls)
        measured = {
            "lease_seconds": LEASE_SECONDS,
            "partition_to_first_takeover_seconds": round(min(taken_at.values()) - cut_at, 2),
            "partition_to_last_takeover_seconds": round(max(taken_at.values()) - cut_at, 2),
            "returned_to_stopped_seconds": round(time.monotonic() - returned_at, 2),
            "commands": {f"{c} {k}": n for (c, k), n in sorted(commands.items())},
            "pages": len(pages(posted)),
            "posts": len(posted),
            "states": dict(Counter(e["state"] for e in after)),
        }
        print("PARTITION " + json.dumps(measured))
        # Each step's command reached the bot once (r1's, in flight at the cut), and the next step never.
        assert commands == Counter({("reconnect", f"k{i}"): 1 for i in range(len(INSTANCES))}), commands
        # r2 finished every episode: the step r1 was running is unknown, and the rule says a human decides.
        assert all(e["state"] == "escalated" for e in after), measured["states"]
        assert all("unknown" in e["detail"] for e in after), [e["detail"] for e in after]
        # One page per episode, none twice (a resend of the same alert is one page at Alertmanager).
        paged = Counter(json.loads(labels).get("target") for labels, _ in pages(posted))
        assert paged == Counter(INSTANCES), pages(posted)
        # r1, back, wrote nothing over what r2 decided.
        assert after == before
        assert one.processes[0].poll() is None and two.processes[0].poll() is None, "a replica exited"
        assert r2_ready == 200
        assert "internal error" not in log_1.read_text(errors="replace")
    finally:
        for host in (one, two):
            for proc in host.processes:
                stop(proc)
        ledger.engine.dispose()


def pages(posted: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The pages posted, each once: Alertmanager holds one alert per labels and startsAt, however often posted."""
    return {(json.dumps(p["labels"], sort_keys=True), p.get("startsAt", "")) for p in posted}


def r1_backends(conn: psycopg.Connection[Any], address: str, state: str) -> int:
    """How many of the server's sessions from `address` are in `state` (pg_stat_activity)."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s AND state = %s"
    row = conn.execute(query, (address, state)).fetchone()
    return int(row[0]) if row else 0


async def test_a_replica_cut_off_inside_a_ledger_transaction_holds_no_lock_past_its_lease(
    tmp_path: Path, network: Network, cluster: Cluster, served: tuple[FakeBot, str, list[dict[str, Any]]]
) -> None:
    """The cut comes between a write of the owner's and its COMMIT (its lease renewal, held at the target's row by the
    test's own lock until the link is down): on the server its session is left idle in a transaction, holding the
    episode's row, and nothing on the server notices a client gone quiet for hours (tcp_keepalives_idle defaults to
    the kernel's two). The other replica takes the run over all the same, once its lease lapsed."""
    bot, sink, posted = served
    await asyncio.to_thread(cluster.create_database, "partition")
    ledger = Ledger(make_engine(cluster.url("partition")))
    db_url = f"postgresql+psycopg://postgres@{network.gateway}:{cluster.port}/partition"
    one, two = network.add_host("r1"), network.add_host("r2")
    dsn = f"host=127.0.0.1 port={cluster.port} user=postgres dbname=partition"
    lock = await psycopg.AsyncConnection.connect(dsn)
    watch = psycopg.connect(dsn, autocommit=True)
    try:
        r1 = await asyncio.to_thread(start_replica, one, tmp_path, "r1", db_url, bot, sink)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            body = payload(alert("TradingBotBrokerDisconnected", fingerprint="fp0", instance=INSTANCES[0], key="k0"))
            async with session.post(f"{r1}/api/v1/alertmanager", json=body, headers=AUTH) as resp:
                assert resp.status == 200, await resp.text()
            await until_async("r1's step in flight at the bot", lambda: len(bot.calls) == 1, 60)
            r2 = await asyncio.to_thread(start_replica, two, tmp_path, "r2", db_url, bot, sink)
            # The test holds the target's row: r1's next renewal updates the episode's row, then waits for it.
            await lock.execute("SELECT 1 FROM reconciler_targets WHERE name = %s FOR UPDATE", (INSTANCES[0],))
            await until_async(
                "r1's renewal waiting for the target's row, the episode's row in hand",
                lambda: (
                    r1_backends(watch, one.address, "active") >= 1
                    and watch.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone() != (0,)
                ),
                60,
            )
            one.link_down()
            cut_at = time.monotonic()
            await lock.commit()  # r1's UPDATE goes through on the server; its answer and COMMIT are lost in the cut
            await until_async(
                "r1's session idle in its transaction", lambda: r1_backends(watch, one.address, "idle in transaction")
            )
            assert bot.hold is not None
            bot.hold.set()

            def taken_over() -> bool:
                (episode,) = ledger.list_episodes()
                steps = [s for a in episode["attempt_list"] for s in a["steps"]]
                return bool(steps) and steps[0]["outcome"] == UNKNOWN

            await until_async("r2 took r1's run over", taken_over, 3 * LEASE_SECONDS, 0.05)
            taken_after = time.monotonic() - cut_at
            await until_async(
                "the episode closed by r2", lambda: ledger.list_episodes()[0]["state"] in CLOSED_STATES, 60
            )
            await until_async("r2's page at the sink", lambda: len(pages(posted)) == 1, 60)
            before = snapshot(ledger)
            one.link_up()
            log_1 = tmp_path / "r1" / "reconciler.log"
            episode_id = before[0]["id"]
            await until_async(
                "r1 back, its run stopped as lost",
                lambda: (
                    f"episode {episode_id}: claim lost" in log_1.read_text(errors="replace")
                    or f"episode {episode_id}: lease renewal found" in log_1.read_text(errors="replace")
                ),
                180,
            )
            after = snapshot(ledger)
            async with session.get(f"{r2}/readyz") as resp:
                assert resp.status == 200
        print("PARTITION_IN_TRANSACTION " + json.dumps({"partition_to_takeover_seconds": round(taken_after, 2)}))
        assert bot.commands() == ["reconnect"]
        assert after == before and before[0]["state"] == "escalated"
        assert len(pages(posted)) == 1
    finally:
        await lock.close()
        watch.close()
        for host in (one, two):
            for proc in host.processes:
                stop(proc)
        ledger.engine.dispose()
