"""The reconciler's ledger on a primary and an ASYNCHRONOUS standby, named in one multi-host URL: the standby stops
receiving WAL (its walreceiver stopped) while two replicas run steps, the primary is SIGKILLed and the standby
promoted without the last commits. Each replica checks its recent writes once the ledger is back: it names exactly
what the failover lost (a step's outcome, a claim, an attempt, a step's row), pages once per episode, holds those
episodes back and sends no command twice. The steps whose rows were lost end after that, at the bot's answer: their
outcomes, which the ledger never had, add nothing to what is counted lost (each lost write once, and only what was
written). The control: the same with synchronous replication, where the check finds every write there and nobody is
paged.

Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin: initdb, pg_basebackup, pg_ctl): a primary and a standby
of the test's own on free ports (never the shared server on 5432), stopped by their pids whatever happens."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from fake_bot import FakeBot
from pg_cluster import Cluster, ReplicatedPair, replicated_pair
from polling import until_async
from reconciler_server import AUTH
from replica_process import disconnected, start_replica
from server_process import stop

from trading_ops.db.base import make_engine
from trading_ops.reconciler.ledger import CLOSED_STATES, RUNNABLE_STATES, Ledger

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LEASE_SECONDS = 30.0  # the shipped lease
INSTANCES = ("bot-0", "bot-1", "bot-2")
# Two alerts per bot: the first one's step runs while the standby still streams, the second waits for the bot (one
# run per target) and is claimed and started only once the standby no longer receives anything.
ALERTS = len(INSTANCES) * 2
LOST_KINDS = ("claim", "attempt", "step", "outcome", "page")
# A server's ledger rows the check compares: table -> id -> the columns that tell the row.
Rows = dict[str, dict[int, tuple[Any, ...]]]


@pytest.fixture(params=[False, True], ids=["asynchronous", "synchronous"])
def pair(request: pytest.FixtureRequest) -> Iterator[ReplicatedPair]:
    with replicated_pair("-c fsync=off", synchronous=request.param) as pg:
        yield pg


def sql(cluster: Cluster, query: str, *, autocommit: bool = False) -> list[tuple[Any, ...]]:
    with psycopg.connect(
        f"host=127.0.0.1 port={cluster.port} user=postgres dbname=rollback", autocommit=autocommit
    ) as c:
        cur = c.execute(query)
        return cur.fetchall() if cur.description else []


def ledger_rows(cluster: Cluster) -> Rows:
    """The rows the check compares, as one server has them: steps, attempts and episodes by id."""
    return {
        "steps": {r[0]: r[1:] for r in sql(cluster, "SELECT id, attempt_id, outcome FROM reconciler_steps")},
        "attempts": {r[0]: r[1:] for r in sql(cluster, "SELECT id, episode_id FROM reconciler_attempts")},
        "episodes": {r[0]: r[1:] for r in sql(cluster, "SELECT id, state, owner FROM reconciler_episodes")},
    }


def lost_between(
    primary: dict[str, dict[int, tuple[Any, ...]]], standby: dict[str, dict[int, tuple[Any, ...]]]
) -> dict[str, int]:
    """What the standby lacks of what the primary committed, by the kinds a replica remembers."""
    steps, attempts, episodes = standby["steps"], standby["attempts"], standby["episodes"]
    return {
        "step": sum(1 for i, row in primary["steps"].items() if steps.get(i, (None,))[0] != row[0]),
        "outcome": sum(
            1
            for i, (attempt, outcome) in primary["steps"].items()
            if outcome != "running" and steps.get(i) == (attempt, "running")
        ),
        "attempt": sum(1 for i, row in primary["attempts"].items() if attempts.get(i) != row),
        # Claimed on the primary; on the standby the episode waits for a claim, as before it.
        "claim": sum(
            1
            for i, (state, owner) in primary["episodes"].items()
            if state == "running" and owner and episodes.get(i, ("", None))[0] in RUNNABLE_STATES
        ),
        "page": 0,
    }


def logged_at(line: str) -> float:
    """When a reconciler's log line was written (its timestamp, the machine's local time), as time.time()."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def metric_sum(texts: list[str], name: str, kind: str | None = None) -> float:
    label = "" if kind is None else f'{{kind="{kind}"}}'
    pattern = re.compile(rf"^{re.escape(name + label)} (\S+)$", re.M)
    return sum(float(m) for text in texts for m in pattern.findall(text))


async def runs_over(session: aiohttp.ClientSession, bases: list[str], tmp_path: Path) -> list[str] | None:
    """The replicas' metrics once neither runs anything nor has a step outcome spooled (None until then)."""
    texts = []
    for base in bases:
        async with session.get(f"{base}/metrics") as resp:
            texts.append(await resp.text())
    spooled = list(tmp_path.glob("r*/var/reconciler-spool/step-*.json"))
    return texts if metric_sum(texts, "tradingops_actions_in_flight") == 0 and not spooled else None


async def test_a_failover_that_lost_the_last_commits_is_noticed_paged_once_and_nothing_runs_twice(
    tmp_path: Path, pair: ReplicatedPair, fake_bot: FakeBot, pages: tuple[str, list[Any]]
) -> None:
    synchronous = "synchronous_standby_names" in pair.primary.options
    await asyncio.to_thread(pair.primary.create_database, "rollback")
    url = pair.url("rollback")
    sink, posted = pages
    first_held, second_held = asyncio.Event(), asyncio.Event()
    fake_bot.hold = first_held
    procs: list[subprocess.Popen[bytes]] = []
    ledger = Ledger(make_engine(url))
    try:
        ports = []
        for name in ("r1", "r2"):
            _, port = await asyncio.to_thread(
                start_replica,
                tmp_path,
                name,
                url,
                fake_bot.url,
                INSTANCES,
                lease_seconds=LEASE_SECONDS,
                alertmanager_url=sink,
                started=procs,
            )
            ports.append(port)
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for i in range(ALERTS):
                for base in bases:  # both members of an Alertmanager pair send it, one to each replica
                    body = disconnected(i, INSTANCES)
                    async with session.post(f"{base}/api/v1/alertmanager", json=body, headers=AUTH) as resp:
                        assert resp.status == 200, await resp.text()

            def running_on_standby() -> bool:
                return len(sql(pair.standby, "SELECT id FROM reconciler_steps WHERE outcome = 'running'")) == 3

            # The first alert of each bot is being acted on, and the standby has its step's row.
            await until_async("three steps in flight", lambda: len(fake_bot.calls) == len(INSTANCES), 60)
            await until_async("the steps' rows on the standby", running_on_standby, 30, in_thread=True)
            if not synchronous:
                # The standby receives nothing more: what the primary commits from now on is lost with it.
                await asyncio.to_thread(sql, pair.standby, "ALTER SYSTEM SET primary_conninfo = ''", autocommit=True)
                await asyncio.to_thread(sql, pair.standby, "SELECT pg_reload_conf()", autocommit=True)
                await until_async(
                    "the standby's walreceiver stopped",
                    lambda: not sql(pair.standby, "SELECT pid FROM pg_stat_wal_receiver"),
                    30,
                    in_thread=True,
                )
            # The first steps end (their outcomes written, their episodes recovered) and the second alerts' steps start.
            fake_bot.hold = second_held
            first_held.set()
            await until_async("the second steps in flight", lambda: len(fake_bot.calls) == ALERTS, 60)

            def recovered_on_primary() -> bool:
                return len(sql(pair.primary, "SELECT id FROM reconciler_episodes WHERE state = 'recovered'")) == 3

            await until_async("the first episodes recovered", recovered_on_primary, 30, in_thread=True)
            on_primary = await asyncio.to_thread(ledger_rows, pair.primary)
            await asyncio.to_thread(pair.kill_primary)
            on_standby = await asyncio.to_thread(ledger_rows, pair.standby)
            await asyncio.to_thread(pair.promote)
            promoted_at, promoted_wall = time.monotonic(), time.time()
            expected = lost_between(on_primary, on_standby)
            if synchronous:
                assert expected == dict.fromkeys(expected, 0), expected  # the standby had every commit
                second_held.set()
            else:
                assert expected["outcome"] == 3 and expected["step"] == 3, expected  # the loss the test made

            closed_at: float | None = None

            def all_closed() -> bool:
                nonlocal closed_at
                episodes = ledger.list_episodes(limit=ALERTS + 5)
                done = len(episodes) == ALERTS and all(e["state"] in CLOSED_STATES for e in episodes)
                if done and closed_at is None:
                    closed_at = time.monotonic()
                return done and (synchronous or len(posted) >= ALERTS)

            try:
                await until_async("every episode closed after the promotion", all_closed, 60, in_thread=True)
            except AssertionError as exc:
                left = [(e["id"], e["state"], e["detail"]) for e in ledger.list_episodes(limit=ALERTS + 5)]
                exc.add_note(f"episodes: {left}; pages: {len(posted)}")
                raise
            # The steps held at the bot end now, after the ledger went back: their outcomes have no step row to go
            # to (lost with the rest of their runs). Counted only once they are over on both replicas (nothing in
            # flight, nothing spooled), so that what they do with those outcomes is in the counts the test compares.
            second_held.set()
            texts = await until_async(
                "the held steps' runs over, their outcomes out of the spools",
                lambda: runs_over(session, bases, tmp_path),
                60,
            )
        logs = [(tmp_path / name / "reconciler.log").read_text(errors="replace") for name in ("r1", "r2")]
        episodes = ledger.list_episodes(limit=ALERTS + 5)
        acted = Counter(str(b.get("key")) for c, b in fake_bot.calls if c == "reconnect")
        reported = {kind: int(metric_sum(texts, "tradingops_ledger_lost_writes_total", kind)) for kind in LOST_KINDS}
        pages_per_episode = Counter(p["labels"]["episode"] for p in posted)
        said = [line for log in logs for line in log.splitlines() if "the ledger went back in time" in line]
        noticed = min((logged_at(line) - promoted_wall for line in said), default=None)
        measured = {
            "replication": "synchronous" if synchronous else "asynchronous",
            "lost": expected,
            "reported": reported,
            "rollbacks_noticed": int(metric_sum(texts, "tradingops_ledger_rollbacks_total")),
            "pages": len(posted),
            "duplicate_actions": sum(n - 1 for n in acted.values() if n > 1),
            "noticed_seconds_after_promotion": None if noticed is None else round(noticed, 2),
            "closed_seconds_after_promotion": round((closed_at or float("nan")) - promoted_at, 2),
            "states": dict(Counter(e["state"] for e in episodes)),
        }
        print("ROLLBACK " + json.dumps(measured))
        assert all(p.poll() is None for p in procs), "a replica exited"
        # Every command reached the bot once: nothing the ledger forgot was run again.
        assert measured["duplicate_actions"] == 0 and set(acted) == {f"k{i}" for i in range(ALERTS)}, acted
        checked = [line for log in logs for line in log.splitlines() if "the ledger is back" in line]
        assert checked, "no replica checked its writes after the failover"
        if synchronous:
            assert reported == dict.fromkeys(LOST_KINDS, 0) and measured["rollbacks_noticed"] == 0, measured
            assert posted == [] and all(e["state"] == "recovered" for e in episodes), measured
            assert all("are all there" in line for line in checked), checked
            return
        # Exactly what the failover lost, as the two servers' rows say, reported by the replicas that wrote it.
        assert reported == expected, measured
        assert 1 <= measured["rollbacks_noticed"] <= 2, measured
        # One page for each episode the loss touched, and each of them held back (escalated), never acted on again.
        assert sorted(pages_per_episode.values()) == [1] * ALERTS, pages_per_episode
        assert all(e["state"] == "escalated" and "gone from the ledger" in e["detail"] for e in episodes), [
            (e["id"], e["state"], e["detail"]) for e in episodes
        ]
        descriptions = " ".join(p["annotations"]["description"] for p in posted)
        assert descriptions.count("the outcome success of step") == 3 and descriptions.count("the claim on") == 3
        assert said and all(line.count("gone from the ledger") == 1 for line in said), said
        assert "internal error" not in " ".join(logs)
        # The held steps' runs found their rows gone and dropped their outcomes' spool files themselves: no replay met
        # them (one in a later life would count them as lost outcomes the ledger never had).
        assert "not written: no such step" not in " ".join(logs)
    finally:
        first_held.set()
        second_held.set()
        fake_bot.hold = None
        for proc in procs:
            stop(proc)
        ledger.engine.dispose()
