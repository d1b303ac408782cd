"""Ledger retention: old notifications and closed episodes pruned in small batches, open episodes kept, and an
alert whose episode may have been pruned never acted on again (SQLite and PostgreSQL, forged clock)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from prometheus_client import CollectorRegistry
from reconciler_server import make_config, write_playbook

from trading_ops.config import ConfigError, parse_config
from trading_ops.db.base import make_engine
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.ledger import AlertIn, Ledger, NotificationIn
from trading_ops.reconciler.metrics import ReconcilerMetrics
from trading_ops.reconciler.retention import Pruner
from trading_ops.tasks import stop_tasks

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=30)
# A rule that holds its episodes back (the reconciler under test only prunes).
IDLE = [
    {
        "name": "r",
        "match": ['alertname=~".+"'],
        "wait_for": "3650d",
        "steps": [{"action": "bot", "command": "reconnect"}],
    }
]


def store(ledger: Ledger, fingerprint: str, starts_at: datetime, status: str = "firing") -> None:
    labels = {"alertname": "A", "instance": "bot-1"}
    a = AlertIn(status, fingerprint, starts_at, "A", labels, {}, "", "r", "bot-1")
    ledger.store([NotificationIn("r", status, "g", "{}", [a])])


def closed_episode(ledger: Ledger, fingerprint: str, starts_at: datetime, state: str) -> int:
    """An episode that ran one attempt of one step and was closed in `state` (at the frozen time)."""
    store(ledger, fingerprint, starts_at)
    eid = max(e["id"] for e in ledger.list_episodes())
    assert ledger.claim(eid, "bot-1", "me:1", starts_at, 30) is not None
    attempt = ledger.start_attempt(eid, "me:1")
    ledger.start_step(attempt, 0, "bot", "bot command=reconnect", "safe", "bot-1", True, outcome="success")
    ledger.finish_attempt(attempt, "success")
    assert ledger.set_episode(eid, "me:1", state=state, detail="done")
    ledger.release_target("bot-1", "me:1")
    return eid


async def test_old_notifications_and_closed_episodes_are_pruned_in_batches_open_ones_never(
    migrated_db: str, registry: CollectorRegistry
) -> None:
    ledger = Ledger(make_engine(migrated_db), retention=RETENTION)
    with freeze_time(T0):
        old = closed_episode(ledger, "old", T0, "escalated")
        for _ in range(3):
            store(ledger, "old", T0)  # resends: notifications stored, deduplicated
        store(ledger, "open", T0)  # never claimed: still pending a month later (a stuck queue, say)
    with freeze_time(T0 + timedelta(days=29)):
        recent = closed_episode(ledger, "recent", T0 + timedelta(days=29), "recovered")
    before = ledger.notification_count()
    assert before == 6
    batches: list[int] = []
    prune_notifications = ledger.prune_notifications

    def recorded(cutoff: datetime, limit: int) -> int:
        batches.append(prune_notifications(cutoff, limit))
        return batches[-1]

    ledger.prune_notifications = recorded  # type: ignore[method-assign]
    metrics = ReconcilerMetrics(registry)
    pruner = Pruner(ledger, 30, metrics, batch=2)
    pruned = await pruner.prune_once(T0 + timedelta(days=31))
    assert pruned == {"notifications": 5, "episodes": 1, "attempts": 1, "steps": 1, "console_sessions": 0}
    assert batches == [2, 2, 1]  # small transactions, never one long write lock
    kept = {e["fingerprint"]: e for e in ledger.list_episodes()}
    assert set(kept) == {"open", "recent"} and kept["open"]["state"] == "pending"
    assert kept["recent"]["id"] == recent and ledger.get_episode_full(old) is None
    assert len(kept["recent"]["attempt_list"]) == 1 and len(kept["recent"]["attempt_list"][0]["steps"]) == 1
    assert ledger.notification_count() == 1
    for table, count in pruned.items():
        assert registry.get_sample_value("tradingops_ledger_pruned_rows_total", {"table": table}) == count
    # Nothing more to do until the next records age out.
    assert await pruner.prune_once(T0 + timedelta(days=31)) == dict.fromkeys(pruned, 0)
    assert (await pruner.prune_once(T0 + timedelta(days=60)))["episodes"] == 1
    assert [e["fingerprint"] for e in ledger.list_episodes()] == ["open"]
    ledger.engine.dispose()


def test_an_alert_whose_episode_may_have_been_pruned_is_not_acted_on_again(migrated_db: str) -> None:
    # An alert firing for longer than the retention: its escalated episode is pruned, and Alertmanager keeps
    # resending the firing alert (same fingerprint and startsAt). That is no new episode to act on.
    ledger = Ledger(make_engine(migrated_db), retention=RETENTION)
    with freeze_time(T0):
        closed_episode(ledger, "long", T0, "escalated")
    later = T0 + timedelta(days=31)
    assert asyncio.run(Pruner(ledger, 30, ReconcilerMetrics(CollectorRegistry())).prune_once(later))["episodes"] == 1
    replica = Ledger(make_engine(migrated_db), retention=RETENTION)  # knows nothing of the old episode
    with freeze_time(later):
        a = AlertIn("firing", "long", T0, "A", {"alertname": "A", "instance": "bot-1"}, {}, "", "r", "bot-1")
        result = replica.store([NotificationIn("r", "firing", "g", "{}", [a])])
        fresh = AlertIn("firing", "new", later, "A", {"alertname": "A", "instance": "bot-1"}, {}, "", "r", "bot-1")
        assert replica.store([NotificationIn("r", "firing", "g", "{}", [fresh])]).new_episodes == 1
    assert result.new_episodes == 0 and result.closed == {"skipped": 1}
    (skipped,) = [e for e in replica.list_episodes() if e["fingerprint"] == "long"]
    assert skipped["state"] == "skipped" and "beyond the ledger's retention" in skipped["detail"]
    assert [eid for eid, _ in replica.due(later, 10)] == [
        e["id"] for e in replica.list_episodes() if e["fingerprint"] == "new"
    ]
    for each in (ledger, replica):
        each.engine.dispose()


async def test_the_reconciler_prunes_its_ledger_from_the_start(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    with freeze_time(two_days_ago):
        closed_episode(ledger, "old", two_days_ago, "recovered")
    store(ledger, "recent", two_days_ago, "resolved")  # notified, and closed, just now: kept
    config = make_config(tmp_path, migrated_sqlite, playbook=str(write_playbook(tmp_path, IDLE)), retention_days=1)
    client = await aiohttp_client(create_app(config))
    registry = client.app[keys.REGISTRY]
    end = time.monotonic() + 20
    while registry.get_sample_value("tradingops_ledger_pruned_rows_total", {"table": "episodes"}) != 1:
        assert time.monotonic() < end, "the reconciler never pruned its ledger"
        await asyncio.sleep(0.05)
    assert [e["fingerprint"] for e in ledger.list_episodes()] == ["recent"]
    assert ledger.notification_count() == 1
    assert registry.get_sample_value("tradingops_ledger_prune_failures_total") == 0
    ledger.engine.dispose()


def test_retention_days_defaults_to_30_and_is_at_least_1() -> None:
    assert parse_config({}).reconciler.retention_days == 30
    assert parse_config({"reconciler": {"retention_days": 7}}).reconciler.retention_days == 7
    with pytest.raises(ConfigError, match=r"^reconciler\.retention_days: "):
        parse_config({"reconciler": {"retention_days": 0}})


async def test_a_failing_prune_is_counted_logged_and_retried_never_fatal(
    migrated_sqlite: str, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(make_engine(migrated_sqlite), retention=RETENTION)
    with freeze_time(T0):
        store(ledger, "old", T0)
    calls: list[int] = []

    def broken_once(cutoff: datetime, limit: int) -> int:
        calls.append(limit)
        if len(calls) == 1:
            raise OSError("database is locked")
        return ledger.pruning.prune_notifications(cutoff, limit)

    monkeypatch.setattr(ledger, "prune_notifications", broken_once)
    pruner = Pruner(ledger, 30, ReconcilerMetrics(registry), interval=0.01)
    task = asyncio.create_task(pruner.run_forever())
    try:
        end = time.monotonic() + 20
        # The rows go first, the counter right after: wait for both (a loaded machine runs the test in between).
        while ledger.notification_count() or not registry.get_sample_value(
            "tradingops_ledger_pruned_rows_total", {"table": "notifications"}
        ):
            assert time.monotonic() < end and not task.done(), "the pruner never recovered"
            await asyncio.sleep(0.02)
        assert registry.get_sample_value("tradingops_ledger_prune_failures_total") == 1
        assert registry.get_sample_value("tradingops_ledger_pruned_rows_total", {"table": "notifications"}) == 1
    finally:
        await stop_tasks([task])
    ledger.engine.dispose()
