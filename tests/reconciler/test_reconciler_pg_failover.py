"""The reconciler's ledger on a PostgreSQL primary and its synchronous standby, named together in one multi-host URL
(`?host=a&host=b&target_session_attrs=read-write`): the primary SIGKILLed under a stream of alerts into two replicas,
the standby promoted sooner (3 s) and later (35 s) than the claim lease (30 s). Every acknowledged notification is in
the ledger afterwards, no action reaches the bot twice, nobody is paged, every episode closes after the promotion
(an outcome the ledger could not take is written as soon as it takes writes again: the outage, not a backoff grown
during it; how long after is measured, the goal 15 s), and neither replica is restarted. Nothing acknowledged while no
server took writes.

Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin: initdb, pg_basebackup, pg_ctl): a primary and a standby
of the test's own on free ports (never the shared server on 5432), stopped by their pids whatever happens."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_bot import FakeBot
from pg_cluster import ReplicatedPair, replicated_pair
from polling import until_async
from reconciler_server import AUTH
from replica_process import disconnected, start_replica
from server_process import stop

from trading_ops.db.base import make_engine
from trading_ops.reconciler.ledger import CLOSED_STATES, Ledger
from trading_ops.reconciler.ledger.claims import OWN_CLAIM_FREED

# A failover of real servers, minutes of it: in `make test-deploy` (CI runs it after `make test`).
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.deploy]

LEASE_SECONDS = 30.0  # the shipped lease
INSTANCES = tuple(f"bot-{i}" for i in range(6))
# The goal: every in-flight episode final within 15 s of the promotion (an outcome is written as soon as the ledger
# takes writes again). Measured and printed (in_flight_closed_max_seconds), not asserted: tests never fail on
# wall-clock time, and a run under a load of 15 on 2 cores closed the last ones later. The test waits this long.
CLOSED_AFTER_PROMOTION_SECONDS = 120.0


@pytest.fixture
def pair() -> Iterator[ReplicatedPair]:
    with replicated_pair("-c fsync=off") as pg:
        yield pg


def replica(
    tmp_path: Path, name: str, db_url: str, bot: FakeBot, alertmanager: str, started: list[subprocess.Popen[bytes]]
) -> int:
    """A reconciler process named `name` on `db_url`, acting on the fake bot for INSTANCES; its port."""
    _, port = start_replica(
        tmp_path,
        name,
        db_url,
        bot.url,
        INSTANCES,
        lease_seconds=LEASE_SECONDS,
        alertmanager_url=alertmanager,
        started=started,
    )
    return port


def epoch(value: Any) -> float | None:
    """A ledger timestamp (a datetime, naive in UTC, or its ISO text) as seconds since the epoch."""
    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def body(i: int) -> dict[str, Any]:
    return disconnected(i, INSTANCES)


@pytest.mark.parametrize("promotion_seconds", [3.0, 35.0], ids=["promoted-within-the-lease", "promoted-after-it"])
async def test_the_primary_killed_and_the_standby_promoted_under_a_stream_of_alerts(
    tmp_path: Path, pair: ReplicatedPair, fake_bot: FakeBot, pages: tuple[str, list[Any]], promotion_seconds: float
) -> None:
    url = await asyncio.to_thread(pair.primary.create_database, "failover")
    url = pair.url("failover")
    sink, posted = pages
    acted_at: list[float] = []
    fake_bot.delay = 0.3  # steps in flight when the primary dies
    fake_bot.on_call = lambda _command: acted_at.append(time.monotonic())
    procs: list[subprocess.Popen[bytes]] = []
    ledger = Ledger(make_engine(url))
    status: dict[int, int] = {}  # alert -> the best status its posts got (2xx: acknowledged)
    readiness: list[tuple[str, int]] = []
    phase = "up"
    stop_stream = asyncio.Event()
    try:
        ports = [await asyncio.to_thread(replica, tmp_path, name, url, fake_bot, sink, procs) for name in ("r1", "r2")]
        bases = [f"http://127.0.0.1:{p}" for p in ports]

        async def post(session: aiohttp.ClientSession, i: int) -> None:
            # Both members of an Alertmanager pair send each notification, one to each replica here.
            for base in bases:
                try:
                    async with session.post(f"{base}/api/v1/alertmanager", json=body(i), headers=AUTH) as resp:
                        await resp.read()
                        code = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    code = 0
                if not 200 <= status.get(i, 0) < 300:  # acknowledged by either replica: acknowledged
                    status[i] = code

        async def stream(session: aiohttp.ClientSession) -> None:
            i = 0
            while not stop_stream.is_set():
                await post(session, i)
                for base in bases:
                    async with session.get(f"{base}/readyz") as resp:
                        readiness.append((phase, resp.status))
                i += 1
                await asyncio.sleep(0.25)

        def acked() -> int:
            return sum(1 for s in status.values() if 200 <= s < 300)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            streaming = asyncio.create_task(stream(session))
            await until_async("alerts acted on before the kill", lambda: acked() >= 10 and len(acted_at) >= 5, 120)
            await asyncio.to_thread(pair.kill_primary)
            phase = "no primary"
            killed_at = time.monotonic()
            await until_async(
                "/readyz asked while no server took writes",
                lambda: sum(1 for p, _ in readiness if p == "no primary") >= 4,
                120,
            )
            # The promotion comes this long after the kill (a failover manager's delay: a fault's length, not a wait).
            await asyncio.sleep(max(0.0, promotion_seconds - (time.monotonic() - killed_at)))
            await asyncio.to_thread(pair.promote)
            phase = "promoted"
            promoted_at, promoted_wall = time.monotonic(), time.time()
            after = acked()
            await until_async("alerts acked after the promotion", lambda: acked() >= after + 10, 120)
            stop_stream.set()
            await streaming
            # What was not acked, Alertmanager sends again until it is.
            refused = sorted(i for i, s in status.items() if not 200 <= s < 300)
            for i in refused:
                await post(session, i)
            total = len(status)

            def all_closed() -> bool:
                episodes = ledger.list_episodes(limit=total + 10)
                return len(episodes) == total and all(e["state"] in CLOSED_STATES for e in episodes)

            remaining = CLOSED_AFTER_PROMOTION_SECONDS - (time.monotonic() - promoted_at)
            try:
                await until_async("every episode closed after the promotion", all_closed, remaining)
            except AssertionError:
                left = [(e["id"], e["state"], e["detail"]) for e in ledger.list_episodes(limit=total + 10)]
                raise AssertionError(f"open: {[e for e in left if e[1] not in CLOSED_STATES]}") from None
            ready_at_end = []
            for base in bases:
                async with session.get(f"{base}/readyz") as resp:
                    ready_at_end.append(resp.status)
        episodes = ledger.list_episodes(limit=total + 10)
        # How long after the promotion each episode in flight then (received before it, closed after it) was closed:
        # the failover's cost to the episodes.
        after_promotion = sorted(
            round(closed - promoted_wall, 2)
            for received, closed in ((epoch(e["received_at"]), epoch(e["closed_at"])) for e in episodes)
            if received is not None and closed is not None and received < promoted_wall < closed
        )
        acted = Counter(str(b.get("key")) for c, b in fake_bot.calls if c == "reconnect")
        measured = {
            "promotion_seconds_after_kill": promotion_seconds,
            "alerts": total,
            "refused_while_no_primary": len(refused),
            "duplicate_actions": sum(n - 1 for n in acted.values() if n > 1),
            "pages": len(posted),
            "acting_again_seconds_after_promotion": round(
                min((t for t in acted_at if t > promoted_at), default=float("nan")) - promoted_at, 2
            ),
            "states": dict(Counter(e["state"] for e in episodes)),
            "in_flight_at_promotion": len(after_promotion),
            "in_flight_closed_p50_seconds": round(statistics.median(after_promotion), 2) if after_promotion else None,
            "in_flight_closed_max_seconds": max(after_promotion, default=None),
            # Runs a sweep took over (their owner alive throughout): each is one the design means never to take.
            # A claim of a replica's own whose answer the failover lost is freed by that replica: not a takeover.
            "taken_over": sum(
                1
                for name in ("r1", "r2")
                for line in (tmp_path / name / "reconciler.log").read_text(errors="replace").splitlines()
                if "the run was interrupted" in line and OWN_CLAIM_FREED not in line
            ),
        }
        print("FAILOVER " + json.dumps(measured))
        assert all(p.poll() is None for p in procs), "a replica exited"  # never restarted: the same processes
        assert all(200 <= s < 300 for s in status.values()), Counter(status.values())
        # Every acknowledged notification is in the ledger (the standby had every commit: synchronous replication).
        assert {json.loads(e["labels"])["key"] for e in episodes} == {f"k{i}" for i in range(total)}
        assert measured["duplicate_actions"] == 0, [k for k, n in acted.items() if n > 1]
        assert set(acted) == {f"k{i}" for i in range(total)}  # every alert acted on, once
        assert all(e["state"] == "recovered" for e in episodes), measured["states"]
        assert posted == []  # nobody paged
        assert refused, "no webhook was refused while no server took writes: the outage was not seen"
        assert ("no primary", 503) in readiness and ready_at_end == [200, 200]
        for name in ("r1", "r2"):
            assert "internal error" not in (tmp_path / name / "reconciler.log").read_text(errors="replace"), name
    finally:
        stop_stream.set()
        fake_bot.on_call = None
        for proc in procs:
            stop(proc)
        ledger.engine.dispose()


async def test_a_standby_never_promoted_acknowledges_nothing_and_is_not_ready(
    tmp_path: Path, pair: ReplicatedPair, fake_bot: FakeBot, pages: tuple[str, list[Any]]
) -> None:
    """The primary dies and nobody promotes the standby: every notification gets a 5xx (Alertmanager sends it again),
    /readyz fails, and none of them is in the ledger (read from the standby, which has every commit). A replica
    pointed at the standby alone (no target_session_attrs) is not ready either: it answers reads, takes no writes."""
    await asyncio.to_thread(pair.primary.create_database, "stuck")
    sink, posted = pages
    procs: list[subprocess.Popen[bytes]] = []
    standby_only = f"postgresql+psycopg://postgres@127.0.0.1:{pair.standby.port}/stuck"
    ledger = Ledger(make_engine(standby_only))
    try:
        (port,) = [await asyncio.to_thread(replica, tmp_path, "r1", pair.url("stuck"), fake_bot, sink, procs)]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async with session.post(f"{base}/api/v1/alertmanager", json=body(0), headers=AUTH) as resp:
                assert resp.status == 200
            await asyncio.to_thread(pair.kill_primary)
            for i in range(1, 6):
                async with session.post(f"{base}/api/v1/alertmanager", json=body(i), headers=AUTH) as resp:
                    assert resp.status == 503, await resp.text()
            async with session.get(f"{base}/readyz") as resp:
                assert resp.status == 503
            (port_2,) = [await asyncio.to_thread(replica, tmp_path, "r2", standby_only, fake_bot, sink, procs)]
            async with session.get(f"http://127.0.0.1:{port_2}/readyz") as resp:
                assert resp.status == 503 and "read-only" in (await resp.json())["status"]
            async with session.post(
                f"http://127.0.0.1:{port_2}/api/v1/alertmanager", json=body(6), headers=AUTH
            ) as resp:
                assert resp.status == 503
        keys = {json.loads(e["labels"])["key"] for e in ledger.list_episodes()}
        assert keys == {"k0"}  # the acknowledged one, and nothing that was refused
        assert all(p.poll() is None for p in procs)
        assert posted == []
    finally:
        for proc in procs:
            stop(proc)
        ledger.engine.dispose()


async def test_a_lost_synchronous_standby_is_said_by_readyz_and_a_metric(
    tmp_path: Path, pair: ReplicatedPair, fake_bot: FakeBot, pages: tuple[str, list[Any]]
) -> None:
    """The primary's synchronous standby stops: every commit waits for it while reads answer. /readyz says so (503,
    commits held) and tradingops_ledger_commit_wait_seconds grows, what TradingOpsLedgerCommitsHeld reads; the standby
    back, the held commits land and the reconciler is ready again."""
    await asyncio.to_thread(pair.primary.create_database, "held")
    sink, _posted = pages
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (port,) = [await asyncio.to_thread(replica, tmp_path, "r1", pair.url("held"), fake_bot, sink, procs)]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def ready() -> tuple[int, str]:
                async with session.get(f"{base}/readyz") as resp:
                    return resp.status, str((await resp.json())["status"])

            async def waited() -> float:
                async with session.get(f"{base}/metrics") as resp:
                    text = await resp.text()
                (line,) = [x for x in text.splitlines() if x.startswith("tradingops_ledger_commit_wait_seconds ")]
                return float(line.split()[1])

            assert await ready() == (200, "ready")
            assert await waited() < 2
            await asyncio.to_thread(pair.standby.stop)
            status, said = await until_async("/readyz saying commits are held", lambda: _held(ready), deadline=60)
            assert status == 503 and "holds commits" in said, said
            assert await waited() > 2
            await asyncio.to_thread(pair.standby.start)
            await until_async("ready again once the standby is back", lambda: _is_ready(ready), deadline=90)
            assert await waited() < 2
        assert all(p.poll() is None for p in procs)
    finally:
        for proc in procs:
            stop(proc)


async def _held(ready: Any) -> tuple[int, str] | None:
    status, said = await ready()
    return (status, said) if "holds commits" in said else None


async def _is_ready(ready: Any) -> bool:
    return bool(await ready() == (200, "ready"))


async def test_a_replica_back_after_a_failover_says_it_claims_nothing_yet_and_then_acts(
    tmp_path: Path, pair: ReplicatedPair, fake_bot: FakeBot, pages: tuple[str, list[Any]]
) -> None:
    """The primary killed, the standby promoted: once the replica reaches the new primary it stores webhooks, but
    claims nothing until every replica had a poll to check its own writes survived (three polls: 3 s here). /readyz
    says so meanwhile (503, "ledger back after being away"), what the HA topology waits for before it stages a
    fault and what an operator reads; a webhook stored then is acted on once it says ready."""
    await asyncio.to_thread(pair.primary.create_database, "back")
    sink, _posted = pages
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _, port = await asyncio.to_thread(
            start_replica,
            tmp_path,
            "r1",
            pair.url("back"),
            fake_bot.url,
            INSTANCES,
            lease_seconds=LEASE_SECONDS,
            alertmanager_url=sink,
            started=procs,
            poll_interval_seconds=1.0,
        )
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def ready() -> tuple[int, str]:
                async with session.get(f"{base}/readyz") as resp:
                    return resp.status, str((await resp.json())["status"])

            assert await ready() == (200, "ready")
            await asyncio.to_thread(pair.kill_primary)

            async def away() -> bool:
                return (await ready())[0] == 503

            await until_async("/readyz failing with the primary gone", away, deadline=60)
            await asyncio.sleep(2.5)  # the replica's polls find the ledger away
            await asyncio.to_thread(pair.promote)

            async def settling() -> str | None:
                status, said = await ready()
                assert status == 503 or said == "ready", said
                return said if said.startswith("ledger back after being away") else None

            said = await until_async("/readyz saying the replica claims nothing yet", settling, deadline=60)
            assert "until every replica has checked that its writes survived" in said, said
            async with session.post(f"{base}/api/v1/alertmanager", json=body(0), headers=AUTH) as resp:
                assert resp.status == 200, await resp.text()  # stored
            states: list[tuple[str, int]] = []
            while (status := await ready())[0] != 200:
                states.append((status[1][:24], len(fake_bot.calls)))
                await asyncio.sleep(0.05)
            assert all(calls == 0 for _, calls in states), states  # nothing acted on while it said so
            await until_async("the stored webhook acted on", lambda: fake_bot.calls, deadline=30)
        assert all(p.poll() is None for p in procs)
    finally:
        for proc in procs:
            stop(proc)
