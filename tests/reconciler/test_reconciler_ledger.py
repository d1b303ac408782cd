"""The ledger: exclusive claims with a lease (SQLite and PostgreSQL), interrupted runs, cooldown and budgets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from threading import Barrier, Thread

from freezegun import freeze_time

from trading_ops.db.base import make_engine
from trading_ops.reconciler.ledger import AlertIn, Ledger, NotificationIn

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
    (e1, t1), (e2, t2) = ledger.due(now, 10)
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
        attempt = ledger.start_attempt(eid, 1, "other-host:1")
        ledger.start_step(attempt, 0, "bot", "bot command=reconnect", "safe", target, True)
    with freeze_time(T0 + timedelta(seconds=10)):
        assert ledger.sweep(T0 + timedelta(seconds=10), "me:2", "me") == []  # lease still valid
    with freeze_time(T0 + timedelta(seconds=31)):
        assert ledger.sweep(T0 + timedelta(seconds=31), "me:2", "me") == [eid]
    episode = ledger.get_episode_full(eid)
    assert episode is not None and episode["state"] == "interrupted"
    assert episode["attempt_list"][0]["outcome"] == "interrupted"
    assert episode["attempt_list"][0]["steps"][0]["outcome"] == "interrupted"


def test_our_own_previous_life_is_interrupted_without_waiting_for_the_lease(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    store_alert(ledger)
    now = datetime.now(UTC)
    ((eid, target),) = ledger.due(now, 10)
    ledger.claim(eid, target, "me:old", now, 3600)
    ledger.set_episode(eid, "me:old", state="running")
    assert ledger.sweep(now, "other:1", "other") == []
    assert ledger.sweep(now, "me:new", "me") == [eid]


def test_cooldown_spans_episodes_of_the_same_rule_and_target(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    with freeze_time(T0):
        store_alert(ledger, "f1", T0)
        ((e1, _),) = ledger.due(T0, 10)
        ledger.start_attempt(e1, 1, "me:1")
    with freeze_time(T0 + timedelta(minutes=1)):
        store_alert(ledger, "f1", T0 + timedelta(minutes=1))  # a new startsAt: a new episode
        now = T0 + timedelta(minutes=1)
        e2 = max(i for i, _ in ledger.due(now, 10))
        assert ledger.cooldown_until("r", "bot-1", e2, 300, now) == T0 + timedelta(minutes=5)
        assert ledger.cooldown_until("r", "bot-2", e2, 300, now) is None  # another target
        assert ledger.cooldown_until("other", "bot-1", e2, 300, now) is None  # another rule
    assert ledger.cooldown_until("r", "bot-1", e2, 300, T0 + timedelta(minutes=5, seconds=1)) is None


def test_budgets_count_executed_actions_in_a_rolling_hour(migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    store_alert(ledger)
    ((eid, _),) = ledger.due(datetime.now(UTC), 10)
    with freeze_time(T0):
        attempt = ledger.start_attempt(eid, 1, "me:1")
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
