"""The ledger: exclusive claims with a lease (SQLite and PostgreSQL), interrupted runs, cooldown and budgets."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from threading import Barrier, Event, Thread
from typing import Any

from engine_runs import dead_owner
from freezegun import freeze_time
from sqlalchemy import Connection, Engine, event, text

from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.reconciler.ledger import (
    END_OF_TIME,
    LEFTOVER_FENCE_SECONDS,
    AlertIn,
    Ledger,
    NotificationIn,
    StoreResult,
    later,
)
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
    # The step was running when its run died: it may have acted or not.
    assert episode["attempt_list"][0]["outcome"] == "unknown"
    assert episode["attempt_list"][0]["steps"][0]["outcome"] == "unknown"


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


# ---- review fixes: claims, sweeps and intake races ------------------------------------------------------


def test_a_renewal_between_the_sweeps_read_and_its_write_keeps_the_run(migrated_db: str) -> None:
    # Replica B's sweep reads A's lease as lapsed; A's (late) renewal lands before B writes. B must not take the
    # run over: A goes on acting, and a takeover would start a second, concurrent run of the same episode.
    a, b = Ledger(make_engine(migrated_db)), Ledger(make_engine(migrated_db))
    store_alert(a, "f1")
    store_alert(a, "f2")
    (e1, target), (e2, _) = sorted((e["id"], e["target"]) for e in a.list_episodes())
    assert a.claim(e1, target, "A:1", datetime.now(UTC), 1) is not None
    renewed: list[bool] = []
    original_tx = b.tx

    @contextlib.contextmanager
    def renewal_then_tx() -> Iterator[Connection]:
        if not renewed:
            renewed.append(a.renew(e1, target, "A:1", 30))
        with original_tx() as conn:
            yield conn

    b.tx = renewal_then_tx  # type: ignore[method-assign]
    now = datetime.now(UTC) + timedelta(seconds=5)  # the lease has lapsed by then
    assert b.sweep(now, "B:1", is_dead=lambda _owner: False).interrupted == []
    assert renewed == [True]
    episode = a.episode(e1)
    assert episode is not None and episode["state"] == "running" and episode["owner"] == "A:1"
    assert a.renew(e1, target, "A:1", 30)  # A still holds its run ...
    assert b.claim(e2, target, "B:1", now, 30) is None  # ... and its target
    for ledger in (a, b):
        ledger.engine.dispose()


def test_a_replica_never_claims_a_second_episode_of_a_target_its_own_run_holds(migrated_db: str) -> None:
    # e1 runs here; two renewals were missed (a database hiccup) so its lease lapsed. e2 of the same target must
    # not be handed to this replica (nor anyone) while e1 is still running: one action at a time per target.
    ledger = Ledger(make_engine(migrated_db))
    store_alert(ledger, "e1", target="X")
    store_alert(ledger, "e2", target="X")
    (e1, _), (e2, _) = sorted((e["id"], e["target"]) for e in ledger.list_episodes())
    now = datetime.now(UTC)
    assert ledger.claim(e1, "X", "A:1", now, 30) is not None
    late = now + timedelta(seconds=31)
    assert ledger.sweep(late, "A:1", live={e1}, is_dead=lambda _owner: False).interrupted == []
    assert ledger.due(late, 8) == []
    assert ledger.claim(e2, "X", "A:1", late, 30) is None
    # Once the run ended without releasing the target (its release failed), the sweep frees it.
    assert ledger.sweep(late, "A:1", live=set(), is_dead=lambda _owner: False).interrupted == [e1]
    assert ledger.claim(e2, "X", "A:1", late, 30) is not None
    ledger.engine.dispose()


def test_a_duplicate_firing_is_counted_as_deduplicated_not_new(migrated_db: str) -> None:
    # Two replicas (no shared memory of known episodes) store the same firing alert: one episode, and the second
    # store says so (the dedup counter and the wake-up of the workers depend on it).
    a, b = Ledger(make_engine(migrated_db)), Ledger(make_engine(migrated_db))
    alert_in = AlertIn("firing", "f1", T0, "A", {"alertname": "A"}, {}, "", "r", "bot-1")
    first = a.store([NotificationIn("r", "firing", "g", "{}", [alert_in])])
    second = b.store([NotificationIn("r", "firing", "g", "{}", [alert_in])])
    assert (first.new_episodes, first.deduplicated) == (1, 0)
    assert (second.new_episodes, second.deduplicated) == (0, 1)
    assert len(a.list_episodes()) == 1
    for ledger in (a, b):
        ledger.engine.dispose()


def wait_for_lock_waiter(engine: Engine, deadline: float = 20.0) -> None:
    """Until a session of this PostgreSQL database waits for a row or index lock held by another."""
    end = time.monotonic() + deadline
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while True:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one():
                return
        assert time.monotonic() < end, "no session ever waited for the lock"
        time.sleep(0.02)


def test_a_resolved_racing_a_concurrent_first_firing_still_closes_the_episode(postgres_url: str) -> None:
    # Replica A inserts the episode of a firing alert (not yet committed); replica B gets the resolved one, finds
    # no episode, and its insert waits for A's. When A commits, B's insert does nothing: B must then resolve the
    # episode A created, or it stays pending and is acted on although the alert is over.
    migrate.upgrade(postgres_url)
    a, b = Ledger(make_engine(postgres_url)), Ledger(make_engine(postgres_url))
    inserted, go = Event(), Event()
    store_alert_in_a = a.intake._store_alert

    def held_open(*args: Any) -> None:
        store_alert_in_a(*args)
        inserted.set()
        assert go.wait(20)

    a.intake._store_alert = held_open  # type: ignore[method-assign]
    results: dict[str, StoreResult] = {}

    def store(name: str, ledger: Ledger, status: str) -> None:
        a_in = AlertIn(status, "f1", T0, "A", {"alertname": "A", "instance": "bot-1"}, {}, "", "r", "bot-1")
        results[name] = ledger.store([NotificationIn("r", status, "g", "{}", [a_in])])

    firing = Thread(target=store, args=("A", a, "firing"))
    firing.start()
    assert inserted.wait(20)
    resolved = Thread(target=store, args=("B", b, "resolved"))
    resolved.start()
    try:
        wait_for_lock_waiter(a.engine)
    finally:
        go.set()
        firing.join(20)
        resolved.join(20)
    ((episode),) = a.list_episodes()
    assert episode["state"] == "resolved" and episode["resolved_at"] is not None and episode["closed_at"] is not None
    assert a.due(datetime.now(UTC), 10) == []
    assert results["A"].new_episodes == 1
    assert results["B"].closed == {"resolved": 1} and results["B"].resolved_ids == [episode["id"]]
    for ledger in (a, b):
        ledger.engine.dispose()


def after_the_intakes_read(intake: Ledger, write: Callable[[], Any]) -> list[Any]:
    """Run `write` (another replica's write) once, right after the intake's first read of an episode and before
    its writes; the list receives what `write` returned."""
    done: list[Any] = []

    def hook(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not done and statement.lstrip().upper().startswith("SELECT") and "reconciler_episodes" in statement:
            done.append(write())

    event.listen(intake.engine, "after_cursor_execute", hook)
    return done


def test_a_resolved_never_overwrites_a_claim_taken_after_the_intake_read_the_episode(postgres_url: str) -> None:
    # The intake reads the episode as pending; a replica claims it (running) before the intake writes. The intake
    # must not close it and clear its owner behind the run's back (its attempt would stay `running` forever):
    # it flags it resolved, and the run stops between steps.
    migrate.upgrade(postgres_url)
    intake, worker = Ledger(make_engine(postgres_url)), Ledger(make_engine(postgres_url))
    store_alert(worker)
    ((eid, target),) = worker.due(datetime.now(UTC), 10)
    claimed = after_the_intakes_read(
        intake, lambda: worker.claim(eid, target, "worker:1", datetime.now(UTC), 30) is not None
    )
    result = intake.store(
        [
            NotificationIn(
                "r",
                "resolved",
                "g",
                "{}",
                [AlertIn("resolved", "f1", T0, "A", {"alertname": "A", "instance": "bot-1"}, {}, "", "r", "bot-1")],
            )
        ]
    )
    assert claimed == [True]
    episode = worker.episode(eid)
    assert episode is not None
    assert (episode["state"], episode["owner"]) == ("running", "worker:1")
    assert episode["resolved_at"] is not None  # what the run looks at between steps
    assert result.resolved_ids == [eid] and result.closed == {}
    assert worker.set_episode(eid, "worker:1", state="resolved", detail="resolved during the run")
    for ledger in (intake, worker):
        ledger.engine.dispose()


def resolved_notification(fingerprint: str = "f1") -> NotificationIn:
    labels = {"alertname": "A", "instance": "bot-1"}
    return NotificationIn(
        "r", "resolved", "g", "{}", [AlertIn("resolved", fingerprint, T0, "A", labels, {}, "", "r", "bot-1")]
    )


def test_a_run_handed_back_after_its_alert_resolved_is_closed_not_left_waiting(migrated_db: str) -> None:
    # A run claimed the episode, then found a cooldown (or a gate, or a failed attempt to retry) and hands it back to
    # wait; the alert resolved meanwhile and the intake could only flag it. Waiting for an alert that is over would
    # hold the episode open for the whole cooldown (minutes to an hour): it is closed resolved instead.
    ledger = Ledger(make_engine(migrated_db))
    store_alert(ledger)
    store_alert(ledger, fingerprint="f2")
    now = datetime.now(UTC)
    ((first, target),) = ledger.due(now, 10)  # one target: its oldest episode first
    assert ledger.claim(first, target, "worker:1", now, 30) is not None
    claimed = ledger.episode(first)
    assert claimed is not None
    result = ledger.store([resolved_notification(claimed["fingerprint"])])
    assert result.resolved_ids == [first] and result.closed == {}  # claimed: only flagged
    assert ledger.defer(first, "worker:2", "waiting", now + timedelta(minutes=5), "cooldown") is None  # not its run
    assert ledger.defer(first, "worker:1", "waiting", now + timedelta(minutes=5), "cooldown of rule r") == "resolved"
    episode = ledger.episode(first)
    assert episode is not None
    assert (episode["state"], episode["owner"]) == ("resolved", None) and episode["closed_at"] is not None
    assert episode["detail"] == "resolved while claimed; not deferred (cooldown of rule r)"
    # Without a resolved flag, the run is handed back to wait as asked.
    ledger.release_target(target, "worker:1")  # as the engine does when a run ends
    (other,) = [eid for eid, _ in ledger.due(datetime.now(UTC), 10)]
    assert ledger.claim(other, target, "worker:1", now, 30) is not None
    retry_at = now + timedelta(seconds=5)
    assert ledger.defer(other, "worker:1", "pending", retry_at, "attempt 1 failed") == "pending"
    episode = ledger.episode(other)
    assert episode is not None
    assert (episode["state"], episode["owner"], episode["closed_at"]) == ("pending", None, None)
    ledger.engine.dispose()


def test_a_resolved_closes_a_run_handed_back_after_the_intake_read_it_as_claimed(postgres_url: str) -> None:
    # The intake reads the episode as running; the run hands it back to wait (a cooldown) before the intake writes.
    # Judged by the state it read, the intake would only flag it, and the waiting episode would stay open for the
    # whole wait: each of its statements judges the row as it is, so it closes it.
    migrate.upgrade(postgres_url)
    intake, worker = Ledger(make_engine(postgres_url)), Ledger(make_engine(postgres_url))
    store_alert(worker)
    ((eid, target),) = worker.due(datetime.now(UTC), 10)
    assert worker.claim(eid, target, "worker:1", datetime.now(UTC), 30) is not None
    handed_back = after_the_intakes_read(
        intake, lambda: worker.defer(eid, "worker:1", "waiting", datetime.now(UTC) + timedelta(minutes=5), "cooldown")
    )
    result = intake.store([resolved_notification()])
    assert handed_back == ["waiting"]
    episode = worker.episode(eid)
    assert episode is not None
    assert (episode["state"], episode["detail"]) == ("resolved", "resolved; pending work cancelled"), episode
    assert result.closed == {"resolved": 1} and result.resolved_ids == [eid]
    for ledger in (intake, worker):
        ledger.engine.dispose()


def test_a_leftover_process_fences_its_target_until_it_is_reaped(migrated_db: str) -> None:
    # A run died while its step's process group still ran. From the sweep's commit on, no run of that target may
    # start (on any replica) until a reconciler on the process's host killed it and cleared the fence.
    ledger = Ledger(make_engine(migrated_db))
    store_alert(ledger, "e1", target="X")
    store_alert(ledger, "e2", target="X")
    (e1, _), (e2, _) = sorted((e["id"], e["target"]) for e in ledger.list_episodes())
    assert ledger.claim(e1, "X", "gone:1", datetime.now(UTC), 1) is not None
    now = datetime.now(UTC) + timedelta(seconds=5)  # the lease has lapsed by then
    attempt = ledger.start_attempt(e1, "gone:1")
    step = ledger.start_step(attempt, 0, "exec", "restart", "disruptive", "X", True)
    ledger.set_step_process(step, "somehost.4242.1234")
    assert ledger.sweep(now, "B:1", is_dead=lambda _owner: False).interrupted == [e1]
    assert ledger.due(now, 10) == []
    assert ledger.claim(e1, "X", "C:1", now, 30) is None
    assert ledger.claim(e2, "X", "C:1", now, 30) is None
    ledger.unfence(step, "[killed]")
    assert [t for _, t in ledger.due(now, 10)] == ["X"]
    assert ledger.claim(e1, "X", "C:1", now, 30) is not None
    full = ledger.get_episode_full(e1)
    assert full is not None and full["attempt_list"][0]["steps"][0]["output"].endswith("[killed]")
    ledger.engine.dispose()


def test_a_fence_of_another_host_lapses_after_its_grace(migrated_db: str) -> None:
    # No reconciler here can see a process of another host: its fence holds for LEFTOVER_FENCE_SECONDS (for that
    # host's reconciler to come back and kill it), then the retry goes ahead.
    ledger = Ledger(make_engine(migrated_db))
    store_alert(ledger, "e1", target="X")
    ((e1, _),) = ledger.due(datetime.now(UTC), 10)
    assert ledger.claim(e1, "X", "gone:1", datetime.now(UTC), 1) is not None
    now = datetime.now(UTC) + timedelta(seconds=5)  # the lease has lapsed by then
    step = ledger.start_step(ledger.start_attempt(e1, "gone:1"), 0, "exec", "x", "safe", "X", True)
    ledger.set_step_process(step, "otherhost.4242.1234")
    assert ledger.sweep(now, "B:1", is_dead=lambda _owner: False).interrupted == [e1]
    assert ledger.fenced_steps(now) == [(step, "otherhost.4242.1234")]
    almost = now + timedelta(seconds=LEFTOVER_FENCE_SECONDS - 1)
    assert ledger.claim(e1, "X", "C:1", almost, 30) is None
    after = now + timedelta(seconds=LEFTOVER_FENCE_SECONDS + 1)
    assert ledger.fenced_steps(after) == []
    assert ledger.claim(e1, "X", "C:1", after, 30) is not None
    ledger.engine.dispose()


def test_an_internal_error_closes_only_the_runs_own_attempts(migrated_db: str) -> None:
    ledger = Ledger(make_engine(migrated_db))
    store_alert(ledger)
    ((eid, _),) = ledger.due(datetime.now(UTC), 10)
    mine = ledger.start_attempt(eid, "me:1")
    ledger.start_step(mine, 0, "bot", "x", "safe", "bot-1", True)
    theirs = ledger.start_attempt(eid, "thief:1")
    ledger.start_step(theirs, 0, "bot", "x", "safe", "bot-1", True)
    ledger.fail_running(eid, "me:1", "internal error: boom")
    attempts = {a["owner"]: a for a in ledger.get_episode_full(eid)["attempt_list"]}  # type: ignore[index]
    assert attempts["me:1"]["outcome"] == "failure" and attempts["me:1"]["steps"][0]["outcome"] == "failure"
    assert attempts["thief:1"]["outcome"] == "running" and attempts["thief:1"]["steps"][0]["outcome"] == "running"
    ledger.engine.dispose()


def test_a_wait_past_the_calendars_end_stores_instead_of_overflowing(migrated_db: str) -> None:
    # Intake refuses such a startsAt; the ledger must not fail a whole batch on one anyway (OverflowError = a 503
    # that Alertmanager retries forever, with every other alert of the batch unstored).
    ledger = Ledger(make_engine(migrated_db))
    try:
        last = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
        alerts = [
            AlertIn("firing", f, starts, "A", {"alertname": "A"}, {}, "", "r", "bot-1", wait_for=3600.0)
            for f, starts in (("late", last), ("now", T0))
        ]
        result = ledger.store([NotificationIn("r", "firing", "g", "{}", alerts)])
        assert result.new_episodes == 2
        episodes = {e["fingerprint"]: e for e in ledger.list_episodes()}
        assert episodes["late"]["next_run_at"] == END_OF_TIME
        assert episodes["now"]["state"] == "waiting"
        # A cooldown that would end past the calendar ends at its end, not in an OverflowError.
        assert later(last, 86400.0) == END_OF_TIME
    finally:
        ledger.engine.dispose()


# ---- the facade and its parts -------------------------------------------------------------------------------------


def test_the_ledger_offers_every_method_of_its_parts_and_they_share_its_transactions(migrated_sqlite: str) -> None:
    # Each part owns one concern; callers hold the Ledger. A method added to a part and not offered, or a part
    # that opened its own engine or transactions, would split what must stay one store.
    ledger = Ledger(make_engine(migrated_sqlite))
    parts = (ledger.intake, ledger.claims, ledger.runs, ledger.limits, ledger.queries, ledger.sessions, ledger.pruning)
    offered = set()
    for part in parts:
        assert part.db is ledger.db
        for name in dir(type(part)):
            if not name.startswith("_") and callable(getattr(type(part), name)):
                assert getattr(ledger, name) == getattr(part, name), f"{type(part).__name__}.{name} is not offered"
                offered.add(name)
    # What the one Ledger class had before it was split (42), the console's sessions since (4, and their pruning),
    # the circuits' entries of the audit chain (1), the copies of one firing (`other_copies`, 1), and the remedy of a
    # rule that healed an episode waiting behind it (`recovered_sibling`, 1).
    assert len(offered) == 50
    opened: list[str] = []
    original = ledger.tx

    @contextlib.contextmanager
    def counted() -> Iterator[Connection]:
        opened.append("tx")
        with original() as conn:
            yield conn

    ledger.tx = counted  # type: ignore[method-assign]
    ledger.set_setting("k", "v")
    assert ledger.open_circuit("bot-1", T0 + timedelta(days=3650))
    assert opened == ["tx", "tx"]  # one write transaction each, through the one the ledger hands out
    assert ledger.get_setting("k") == "v"
    ledger.engine.dispose()
