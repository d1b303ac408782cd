"""The ledger: exclusive claims with a lease (SQLite and PostgreSQL), interrupted runs, cooldown and budgets."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from threading import Barrier, Thread

from freezegun import freeze_time

from trading_ops.db.base import make_engine
from trading_ops.reconciler.ledger import AlertIn, Ledger, NotificationIn
from trading_ops.reconciler.processes import ProcessId, make_owner

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def store_alert(
    ledger: Ledger,
    fingerprint: str = "f1",
    starts_at: datetime = T0,
    target: str = "bot-1",
    rule: str = "r",
    status: str = "firing",
) -> None:
    a = AlertIn(status, fingerprint, starts_at, "A", {"alertname": "A", "instance": target}, {}, "", rule, target)
    ledger.store([NotificationIn("r", status, "g", "{}", [a])])


def test_two_claimers_get_an_episode_once(migrated_db: str) -> None:
    ledgers = [Ledger(make_engine(migrated_db)) for _ in range(2)]
    store_alert(ledgers[0])
    ((episode_id, target),) = ledgers[0].due(datetime.now(UTC), 10)
    barrier = Barrier(2)
    won: list[str] = []

    def claim(ledger: Ledger, owner: str) -> None:
        barrier.wait()
        if ledger.claim(episode_id, target, owner, datetime.now(UTC), 30) is not None:
            won.append(owner)

    threads = [Thread(target=claim, args=(ledger, f"r{i}:x")) for i, ledger in enumerate(ledgers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    for ledger in ledgers:
        ledger.engine.dispose()


def test_one_action_at_a_time_per_target(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    store_alert(ledger, "f1")
    store_alert(ledger, "f2")
    now = datetime.now(UTC)
    (e1, t1), (e2, t2) = sorted((e["id"], e["target"]) for e in ledger.list_episodes())
    assert ledger.claim(e1, t1, "a:1", now, 30) is not None
    assert ledger.claim(e2, t2, "b:1", now, 30) is None  # same target, busy
    ledger.release_target(t1, "a:1")
    assert ledger.claim(e2, t2, "b:1", now, 30) is not None


def test_expired_lease_marks_the_run_interrupted(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    with freeze_time(T0):
        store_alert(ledger)
        ((eid, target),) = ledger.due(T0, 10)
        ledger.claim(eid, target, "other-host:1", T0, 30)
        ledger.set_episode(eid, "other-host:1", state="running")
        attempt = ledger.start_attempt(eid, "other-host:1")
        ledger.start_step(attempt, 0, "bot", "bot command=reconnect", "safe", target, True)
    with freeze_time(T0 + timedelta(seconds=10)):
        assert ledger.sweep(T0 + timedelta(seconds=10), "me:2").interrupted == []  # lease still valid
    with freeze_time(T0 + timedelta(seconds=31)):
        assert ledger.sweep(T0 + timedelta(seconds=31), "me:2").interrupted == [eid]
    episode = ledger.get_episode_full(eid)
    assert episode is not None and episode["state"] == "interrupted"
    assert episode["attempt_list"][0]["outcome"] == "interrupted"
    assert episode["attempt_list"][0]["steps"][0]["outcome"] == "interrupted"


def dead_owner(instance: str) -> str:
    """The owner id a reconciler process had, after that process died (as after kill -9)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = ProcessId.of(proc.pid)
    proc.kill()
    proc.wait()
    assert identity is not None
    return f"{instance}:{identity.token()}.deadbeef"


def test_a_provably_dead_owner_is_interrupted_without_waiting_for_the_lease(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    store_alert(ledger)
    now = datetime.now(UTC)
    ((eid, target),) = ledger.due(now, 10)
    old = dead_owner("me")  # our own previous life, killed: its pid is gone
    ledger.claim(eid, target, old, now, 3600)
    ledger.set_episode(eid, old, state="running")
    assert ledger.sweep(now, make_owner("me")).interrupted == [eid]
    assert ledger.claim(eid, target, make_owner("me"), now, 30) is not None  # the target was released too


def test_a_live_owner_with_the_same_instance_name_is_never_taken_over(migrated_sqlite: str) -> None:
    # Two replicas on one host with the default instance (the host name): each one's live run is the other's
    # to leave alone until its lease expires, however often the other sweeps.
    ledger = Ledger(make_engine(migrated_sqlite))
    store_alert(ledger)
    now = datetime.now(UTC)
    ((eid, target),) = ledger.due(now, 10)
    replica_a, replica_b = make_owner("host-1"), make_owner("host-1")
    assert replica_a != replica_b and ProcessId.of(os.getpid()) is not None
    ledger.claim(eid, target, replica_a, now, 30)
    ledger.set_episode(eid, replica_a, state="running")
    for _ in range(3):
        assert ledger.sweep(now, replica_b).interrupted == []
    assert ledger.episode(eid)["owner"] == replica_a  # type: ignore[index]
    assert ledger.claim(eid, target, replica_b, now, 30) is None
    later = now + timedelta(seconds=31)  # only an expired lease hands it over
    assert ledger.sweep(later, replica_b).interrupted == [eid]


def test_our_own_run_is_swept_only_once_it_is_no_longer_running(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    store_alert(ledger)
    now = datetime.now(UTC)
    ((eid, target),) = ledger.due(now, 10)
    me = make_owner("host-1")
    ledger.claim(eid, target, me, now, 30)
    ledger.set_episode(eid, me, state="running")
    later = now + timedelta(seconds=31)  # the renewal was slow: the lease lapsed
    assert ledger.sweep(later, me, live={eid}).interrupted == []  # still running here: ours to finish
    assert ledger.sweep(later, me, live=set()).interrupted == [eid]  # its task ended without closing it


def test_due_skips_busy_targets_so_one_target_cannot_starve_the_others(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    with freeze_time(T0):
        for i in range(20):  # a flood of episodes on one target, all due before the other target's one
            store_alert(ledger, f"busy{i}", target="bot-busy")
    with freeze_time(T0 + timedelta(seconds=1)):
        store_alert(ledger, "quiet", target="bot-quiet")
    now = T0 + timedelta(seconds=2)
    # One per target, oldest first: the quiet target is in the first batch however small it is.
    assert [t for _, t in ledger.due(now, 2)] == ["bot-busy", "bot-quiet"]
    busy_id = ledger.due(now, 1)[0][0]
    assert ledger.claim(busy_id, "bot-busy", "a:1", now, 30) is not None
    # While a run holds bot-busy, its other 19 episodes are not even fetched.
    assert [t for _, t in ledger.due(now, 1)] == ["bot-quiet"]


def test_cooldown_spans_episodes_of_the_same_rule_and_target(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    with freeze_time(T0):
        store_alert(ledger, "f1", T0)
        ((e1, _),) = ledger.due(T0, 10)
        ledger.start_attempt(e1, "me:1")
    with freeze_time(T0 + timedelta(minutes=1)):
        store_alert(ledger, "f1", T0 + timedelta(minutes=1))  # a new startsAt: a new episode
        now = T0 + timedelta(minutes=1)
        e2 = max(e["id"] for e in ledger.list_episodes())
        assert ledger.cooldown_until("r", "bot-1", e2, 300, now) == T0 + timedelta(minutes=5)
        assert ledger.cooldown_until("r", "bot-2", e2, 300, now) is None  # another target
        assert ledger.cooldown_until("other", "bot-1", e2, 300, now) is None  # another rule
    assert ledger.cooldown_until("r", "bot-1", e2, 300, T0 + timedelta(minutes=5, seconds=1)) is None


def test_budgets_count_executed_actions_in_a_rolling_hour(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    store_alert(ledger)
    ((eid, _),) = ledger.due(datetime.now(UTC), 10)
    with freeze_time(T0):
        attempt = ledger.start_attempt(eid, "me:1")
        ledger.start_step(attempt, 0, "bot", "x", "safe", "bot-1", True, outcome="success")
        ledger.start_step(attempt, 1, "notify", "x", "safe", "bot-1", False, outcome="success")  # not budgeted
        ledger.start_step(attempt, 2, "bot", "x", "safe", "bot-1", True, outcome="dry_run")  # nothing done
        ledger.start_step(attempt, 3, "bot", "x", "safe", "bot-1", True, outcome="refused")
    with freeze_time(T0 + timedelta(minutes=30)):
        ledger.start_step(attempt, 4, "exec", "x", "safe", "bot-2", True, outcome="failure")
    at = T0 + timedelta(minutes=59)
    assert ledger.actions_last_hour(at, "bot-1") == 1
    assert ledger.actions_last_hour(at) == 2
    assert ledger.actions_last_hour(T0 + timedelta(minutes=61), "bot-1") == 0
    assert ledger.actions_last_hour(T0 + timedelta(minutes=61)) == 1


def test_a_circuit_opens_once_and_closes_after_the_cool_off(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    with freeze_time(T0):
        assert ledger.open_circuit("bot-1", T0 + timedelta(minutes=30)) is True
        assert ledger.open_circuit("bot-1", T0 + timedelta(minutes=30)) is False  # already open: one escalation
        assert ledger.circuit_open_until("bot-1", T0) == T0 + timedelta(minutes=30)
    assert ledger.circuit_open_until("bot-1", T0 + timedelta(minutes=31)) is None
    with freeze_time(T0 + timedelta(minutes=31)):
        assert ledger.open_circuit("bot-1", T0 + timedelta(minutes=61)) is True
