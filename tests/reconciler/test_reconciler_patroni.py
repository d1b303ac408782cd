"""The reference deployment (docs/deployment.md, "Reference deployment: Patroni and etcd"): two reconciler replicas on a
multi-host URL naming every Patroni member (`?host=a&host=b&target_session_attrs=read-write`), a stream of alerts, and
the Patroni leader SIGKILLed (its Patroni and its PostgreSQL: the host gone). Patroni promotes the synchronous standby
by itself when the leader key expires; the test only kills. Afterwards every acknowledged notification is in the
ledger, no action reached the bot twice, nobody was paged, every episode closed, and neither replica was restarted.
Prints kill -> new leader and kill -> the reconciler acting again (seconds).

Needs Debian's patroni and etcd-server (make system-deps) and PostgreSQL's server binaries: etcd and the members run
on free ports under a temp dir of the module's own (tests/patroni_cluster.py), stopped by their pids."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_bot import FakeBot
from patroni_cluster import TTL_SECONDS, PatroniCluster, patroni_cluster
from polling import until_async
from reconciler_server import AUTH
from replica_process import disconnected, start_replica
from server_process import stop

from trading_ops.db.base import make_engine
from trading_ops.reconciler.ledger import CLOSED_STATES, Ledger
from trading_ops.reconciler.ledger.claims import OWN_CLAIM_FREED

# The cluster's start (30 to 45 s here), an outage of up to Patroni's ttl and the alerts' stream: longer than the
# default 300 s on a machine busy with other lanes.
# A failover of real servers, minutes of it: in `make test-deploy` (CI runs it after `make test`).
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.deploy, pytest.mark.timeout(600)]

LEASE_SECONDS = 30.0  # the shipped lease
INSTANCES = tuple(f"bot-{i}" for i in range(6))
# Every episode closed within this long of the new leader (the bound).
CLOSED_AFTER_PROMOTION_SECONDS = 60.0


@pytest.fixture(scope="module")
def patroni() -> Iterator[PatroniCluster]:
    """etcd and two Patroni members (leader and synchronous standby): started once for the module."""
    with patroni_cluster(2) as cluster:
        yield cluster


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


def body(i: int) -> dict[str, Any]:
    return disconnected(i, INSTANCES)


async def test_patroni_fails_the_leader_over_under_a_stream_of_alerts_and_nothing_is_lost_or_repeated(
    tmp_path: Path, patroni: PatroniCluster, fake_bot: FakeBot, pages: Any
) -> None:
    url = await asyncio.to_thread(patroni.create_database, "reconciler")
    sink, posted = pages
    acted: list[tuple[float, str]] = []  # (when, key): each command as the bot received it
    fake_bot.delay = 0.3  # steps in flight when the leader dies
    fake_bot.on_call = lambda _command: acted.append((time.monotonic(), str(fake_bot.calls[-1][1].get("key"))))
    procs: list[subprocess.Popen[bytes]] = []
    ledger = Ledger(make_engine(url))
    status: dict[int, int] = {}  # alert -> the best status its posts got (2xx: acknowledged)
    first_posted: dict[int, float] = {}
    readiness: list[tuple[str, int]] = []
    phase = "up"
    stop_stream = asyncio.Event()
    try:
        ports = [await asyncio.to_thread(replica, tmp_path, n, url, fake_bot, sink, procs) for n in ("r1", "r2")]
        bases = [f"http://127.0.0.1:{p}" for p in ports]

        async def post(session: aiohttp.ClientSession, i: int) -> None:
            first_posted.setdefault(i, time.monotonic())
            for base in bases:  # both members of an Alertmanager pair send each notification
                try:
                    async with session.post(f"{base}/api/v1/alertmanager", json=body(i), headers=AUTH) as resp:
                        await resp.read()
                        code = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    code = 0
                if not 200 <= status.get(i, 0) < 300:
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
            await until_async("alerts acted on before the kill", lambda: acked() >= 10 and len(acted) >= 5, 120)
            old_leader, standby = await asyncio.to_thread(patroni.wait_replicated)
            await asyncio.to_thread(patroni.kill_member, old_leader)
            killed_at = time.monotonic()
            phase = "no leader"
            new_leader = await until_async(
                f"Patroni's new leader (the killed leader's key expires after its ttl, {TTL_SECONDS} s)",
                patroni.leader,
                120,
                interval=0.2,
                in_thread=True,
            )
            promoted_at = time.monotonic()
            phase = "promoted"
            after = acked()
            await until_async("alerts acked after the promotion", lambda: acked() >= after + 10, 120)
            stop_stream.set()
            await streaming
            refused = sorted(i for i, s in status.items() if not 200 <= s < 300)
            for i in refused:  # what was not acked, Alertmanager sends again until it is
                await post(session, i)
            total = len(status)

            def all_closed() -> bool:
                episodes = ledger.list_episodes(limit=total + 10)
                return len(episodes) == total and all(e["state"] in CLOSED_STATES for e in episodes)

            remaining = CLOSED_AFTER_PROMOTION_SECONDS - (time.monotonic() - promoted_at)
            try:
                await until_async("every episode closed within a minute of the new leader", all_closed, remaining)
            except AssertionError:
                left = [(e["id"], e["state"], e["detail"]) for e in ledger.list_episodes(limit=total + 10)]
                raise AssertionError(f"open: {[e for e in left if e[1] not in CLOSED_STATES]}") from None
            ready_at_end = []
            for base in bases:
                async with session.get(f"{base}/readyz") as resp:
                    ready_at_end.append(resp.status)
        episodes = ledger.list_episodes(limit=total + 10)
        counted = Counter(key for _, key in acted)
        # Acting again: the first command for an alert first posted after the kill.
        new_keys = {f"k{i}" for i, t in first_posted.items() if t > killed_at}
        measured = {
            "members": len(patroni.members),
            "ttl_seconds": TTL_SECONDS,
            "kill_to_new_leader_seconds": round(promoted_at - killed_at, 1),
            "kill_to_acting_again_seconds": round(
                min((t for t, key in acted if key in new_keys), default=float("nan")) - killed_at, 1
            ),
            "alerts": total,
            # Acknowledged notifications the ledger does not have (synchronous_mode: expected 0).
            "lost": len({f"k{i}" for i in range(total)} - {json.loads(e["labels"])["key"] for e in episodes}),
            "refused_while_no_leader": len(refused),
            "duplicate_actions": sum(n - 1 for n in counted.values() if n > 1),
            "pages": len(posted),
            "states": dict(Counter(e["state"] for e in episodes)),
            # Runs a sweep took over: their owners were alive throughout, so each is one the design never takes.
            # A claim of a replica's own whose answer the failover lost is freed by that replica: not a takeover.
            "taken_over": sum(
                1
                for name in ("r1", "r2")
                for line in (tmp_path / name / "reconciler.log").read_text(errors="replace").splitlines()
                if "the run was interrupted" in line and OWN_CLAIM_FREED not in line
            ),
            "own_claims_freed": sum(
                (tmp_path / name / "reconciler.log").read_text(errors="replace").count(OWN_CLAIM_FREED)
                for name in ("r1", "r2")
            ),
        }
        print("PATRONI FAILOVER " + json.dumps(measured))
        assert new_leader.name == standby.name  # Patroni promoted the synchronous standby by itself
        assert all(p.poll() is None for p in procs), "a replica exited"  # never restarted: the same processes
        assert all(200 <= s < 300 for s in status.values()), Counter(status.values())
        # Every acknowledged notification is in the ledger (the standby had every commit: synchronous_mode).
        assert {json.loads(e["labels"])["key"] for e in episodes} == {f"k{i}" for i in range(total)}
        assert measured["duplicate_actions"] == 0, [k for k, n in counted.items() if n > 1]
        assert set(counted) == {f"k{i}" for i in range(total)}  # every alert acted on, once
        assert all(e["state"] == "recovered" for e in episodes), measured["states"]
        assert posted == []  # nobody paged
        assert measured["taken_over"] == 0  # no run taken from a live replica, though the outage neared the lease
        assert ("no leader", 503) in readiness and ready_at_end == [200, 200]
        for name in ("r1", "r2"):
            assert "internal error" not in (tmp_path / name / "reconciler.log").read_text(errors="replace"), name
    finally:
        stop_stream.set()
        fake_bot.on_call = None
        for proc in procs:
            stop(proc)
        ledger.engine.dispose()
