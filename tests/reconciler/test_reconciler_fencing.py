"""Fencing in the ledger: a lease that lapsed while the database was away is not taken for its owner's death, and a
run taken over writes nothing and acts on nothing when it comes back (on SQLite and on the shared PostgreSQL); a
ledger that went back in time (a step row or a page gone) is found by the replica that wrote them and escalated once,
never acted on blindly (needs a real Alertmanager)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alertmanager_server import Alertmanager
from fake_bot import FakeBot, bot_targets
from polling import until_async
from reconciler_server import AUTH, READ_AUTH, make_config, write_playbook
from sqlalchemy import text
from webhook_payloads import alert, payload

from trading_ops.db.base import make_engine, utcnow
from trading_ops.reconciler import keys
from trading_ops.reconciler.actions.escalate import FAILED
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.ledger import (
    FENCED,
    MISSING,
    UNKNOWN,
    WRITTEN,
    AlertIn,
    Fenced,
    Gone,
    Ledger,
    NotificationIn,
    Written,
)
from trading_ops.reconciler.ledger.claims import OWN_CLAIM_FREED
from trading_ops.reconciler.ledger.rollback import ATTEMPT, CLAIM, OUTCOME, PAGE, STEP
from trading_ops.reconciler.outbox import OutboxStore

INSTANCE = "bot-1"
LEASE = 30.0


def alive(_owner: str | None) -> bool:
    return False  # both replicas' processes run (on other hosts: nothing proves either gone)


@pytest.fixture
def ledger(migrated_db: str) -> Ledger:
    return Ledger(make_engine(migrated_db))


def running_step(ledger: Ledger, owner: str) -> tuple[int, int, int]:
    """An episode `owner` claimed and whose first step is running: (episode, attempt, step)."""
    labels = {"alertname": "TradingBotBrokerDisconnected", "instance": INSTANCE}
    a = AlertIn("firing", "f1", utcnow(), labels["alertname"], labels, {}, "", "reconnect", INSTANCE)
    ledger.store([NotificationIn("reconciler", "firing", "g", "{}", [a])])
    (episode_id,) = [e["id"] for e in ledger.list_episodes()]
    assert ledger.claim(episode_id, INSTANCE, owner, utcnow(), LEASE) is not None
    attempt = ledger.start_attempt(episode_id, owner)
    record = (attempt, 0, "bot", "bot command=reconnect", "safe", INSTANCE, True)
    step = ledger.start_step(*record, owner=owner, lease=LEASE)
    return int(episode_id), attempt, step


def test_a_lease_lapsed_while_the_database_was_away_takes_nothing(ledger: Ledger) -> None:
    episode_id, _attempt, step = running_step(ledger, "r2")
    later = utcnow() + timedelta(seconds=3 * LEASE)  # r2's lease lapsed: the database was away for three leases
    assert ledger.sweep(later, "r1", is_dead=alive, lapsed_is_dead=False).interrupted == []
    # r2 still holds the run: its outcome lands, and it goes on.
    assert ledger.finish_step(step, "success", "HTTP 200") == WRITTEN
    assert ledger.renew(episode_id, INSTANCE, "r2", LEASE)
    (episode,) = ledger.list_episodes()
    assert (episode["state"], episode["owner"]) == ("running", "r2")


def test_a_run_taken_over_writes_nothing_and_acts_on_nothing_when_it_comes_back(ledger: Ledger) -> None:
    episode_id, attempt, step = running_step(ledger, "r2")
    later = utcnow() + timedelta(seconds=3 * LEASE)
    # r1 reached the database for a whole lease and r2 renewed nothing meanwhile: r2 is taken for gone.
    assert ledger.sweep(later, "r1", is_dead=alive, lapsed_is_dead=True).interrupted == [episode_id]
    (episode,) = ledger.list_episodes()
    assert episode["attempt_list"][0]["steps"][0]["outcome"] == UNKNOWN
    # r1 claims the episode again (its rule decides on the unknown step).
    assert ledger.claim(episode_id, INSTANCE, "r1", later, LEASE) is not None
    # r2 comes back with its outcome: not written (r1 decided on `unknown`) ...
    assert ledger.finish_step(step, "success", "HTTP 200") == FENCED
    # ... and its next step is refused before it acts, its renewal too.
    with pytest.raises(Fenced):
        ledger.start_step(attempt, 1, "bot", "bot command=resubscribe", "safe", INSTANCE, True, owner="r2", lease=LEASE)
    assert not ledger.renew(episode_id, INSTANCE, "r2", LEASE)
    (episode,) = ledger.list_episodes()
    assert episode["owner"] == "r1"
    assert [s["outcome"] for s in episode["attempt_list"][0]["steps"]] == [UNKNOWN]


def test_a_claim_whose_answer_was_lost_is_freed_by_its_own_replica_at_once(ledger: Ledger) -> None:
    # r1's claim committed as the primary died, its answer lost: r1 has no run for it. Nobody else may take it for
    # a lease; r1 itself knows it holds no such run.
    episode_id, _attempt, _step = running_step(ledger, "r1")
    now = utcnow()
    assert ledger.sweep(now, "r1", live={episode_id}, is_dead=alive, every_run_of_ours=True).interrupted == []
    assert ledger.sweep(now, "r2", is_dead=alive, lapsed_is_dead=False).interrupted == []
    freed = ledger.sweep(now, "r1", is_dead=alive, every_run_of_ours=True)
    assert freed.interrupted == [episode_id]
    # Its log line says whose claim it was: not a takeover from a live replica.
    assert freed.why[episode_id] == f"owner r1 (this replica): {OWN_CLAIM_FREED}"


def test_an_outcome_written_twice_is_written_once(ledger: Ledger) -> None:
    # The first write's commit landed and its answer was lost with the connection: the retry finds it there.
    _episode_id, _attempt, step = running_step(ledger, "r2")
    assert ledger.finish_step(step, "success", "HTTP 200") == WRITTEN
    assert ledger.finish_step(step, "success", "HTTP 200") == WRITTEN


def test_rows_that_are_gone_are_told_apart_from_a_takeover(ledger: Ledger) -> None:
    # A failover to a standby that had not received the last commits: the run's step row, or its attempt, is not there.
    assert ledger.finish_step(10_000, "success", "HTTP 200") == MISSING
    running_step(ledger, "r2")
    with pytest.raises(Gone):
        ledger.start_step(10_000, 1, "bot", "bot command=resubscribe", "safe", INSTANCE, True, owner="r2", lease=LEASE)


async def test_a_run_whose_step_row_went_back_in_time_escalates_instead_of_acting_again(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    """The database fails over to a standby that never got the step's row (asynchronous replication): the run's
    outcome has nowhere to go. It is not written blindly, nor the step run again: the episode escalates."""
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    eraser = Ledger(make_engine(migrated_sqlite))

    def lost_commit(_command: str) -> None:
        with eraser.engine.begin() as conn:
            conn.execute(text("DELETE FROM reconciler_steps"))

    fake_bot.on_call = lost_commit
    rule = {
        "name": "reconnect",
        "match": ['alertname="TradingBotBrokerDisconnected"'],
        "verify": False,
        "cooldown": 0,
        "on_unknown": "retry",
        "steps": [{"action": "bot", "command": "reconnect"}],
    }
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, [rule])),
        targets=bot_targets(fake_bot, tmp_path, instance),
        alertmanager_url=alertmanager.url,
    )
    client = await aiohttp_client(create_app(config))
    body = payload(alert("TradingBotBrokerDisconnected", instance=instance))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200

    async def closed() -> dict[str, Any] | None:
        (episode,) = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        return episode if episode["closed_at"] else None

    episode = await until_async("the episode closed", closed, 30)
    assert episode["state"] == "escalated", episode
    assert "gone from the ledger" in episode["detail"]
    assert fake_bot.commands() == ["reconnect"]  # not sent again
    # One write was lost, the step's row; its outcome never reached the ledger and is no second lost write.
    metrics = await (await client.get("/metrics")).text()
    assert 'tradingops_ledger_lost_writes_total{kind="step"} 1.0' in metrics, metrics
    assert 'tradingops_ledger_lost_writes_total{kind="outcome"} 0.0' in metrics, metrics
    eraser.engine.dispose()


def test_writes_gone_from_the_ledger_are_told_from_writes_there_and_from_a_takeover(ledger: Ledger) -> None:
    """What a replica remembers having written, checked against the ledger (Rollbacks.missing): a row that is gone, or
    whose id another row took since (a promoted standby hands a sequence's lost ids out again), or an episode's row
    older than the claim (as it was before it), is reported; rows that are there, a finished outcome, and an episode
    another replica took over since, are not."""
    episode_id, attempt, step = running_step(ledger, "r2")
    claimed_at = ledger.episode(episode_id)["updated_at"]  # type: ignore[index]
    assert ledger.finish_step(step, "success", "HTTP 200") == WRITTEN
    there = [
        Written(CLAIM, episode_id, episode_id, INSTANCE, at=claimed_at),
        Written(ATTEMPT, episode_id, attempt, "attempt 1"),
        Written(STEP, episode_id, step, "bot command=reconnect", parent=attempt),
        Written(OUTCOME, episode_id, step, "success", parent=attempt),
    ]
    gone = [
        Written(CLAIM, episode_id + 1000, episode_id + 1000, INSTANCE, at=claimed_at),
        Written(ATTEMPT, episode_id, attempt + 1000, "attempt 2"),
        Written(STEP, episode_id, step, "bot command=reconnect", parent=attempt + 1),  # its id taken by another row
        Written(OUTCOME, episode_id, step, "failure", parent=attempt),  # another outcome than the ledger's
        Written(PAGE, episode_id, 1000, FAILED),
    ]
    assert ledger.rollbacks.missing(there + gone) == gone
    # r1 takes the run over (r2's lease lapsed): the episode is runnable and nobody's, but newer than r2's claim.
    later = utcnow() + timedelta(seconds=3 * LEASE)
    assert ledger.sweep(later, "r1", is_dead=alive, lapsed_is_dead=True).interrupted == [episode_id]
    assert ledger.rollbacks.missing(there) == []
    # The episode's row as it was before the claim (a failover that lost the claim's commit): the claim is gone.
    with ledger.tx() as conn:
        conn.execute(
            text("UPDATE reconciler_episodes SET state = 'pending', updated_at = :at WHERE id = :id"),
            {"at": claimed_at - timedelta(seconds=1), "id": episode_id},
        )
    assert ledger.rollbacks.missing(there) == there[:1]
    # A page owed: there, then gone with its row.
    page = {"labels": {"alertname": FAILED}, "annotations": {}}
    assert ledger.claim(episode_id, INSTANCE, "r1", later, LEASE) is not None
    page_id = OutboxStore(ledger).enqueue(episode_id, "r1", page, "gave up", utcnow())
    assert page_id is not None
    owed = Written(PAGE, episode_id, page_id, FAILED)
    assert ledger.rollbacks.missing([owed]) == []
    with ledger.tx() as conn:
        conn.execute(text("DELETE FROM reconciler_escalations"))
    assert ledger.rollbacks.missing([owed]) == [owed]


async def test_a_page_the_ledger_lost_is_owed_again_in_the_page_about_the_loss(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    """The run gave up and owed its page; then the database went back to before that write (the outbox row gone, the
    episode running under the run again). Once the ledger is back the replica finds its page gone: the episode is held
    back and paged about once, that page saying the earlier one was lost, and the step is not run again."""
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    fake_bot.status["reconnect"] = 500
    rule = {
        "name": "reconnect",
        "match": ['alertname="TradingBotBrokerDisconnected"'],
        "verify": False,
        "cooldown": 0,
        "max_attempts": 1,
        "steps": [{"action": "bot", "command": "reconnect"}],
    }
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, [rule])),
        targets=bot_targets(fake_bot, tmp_path, instance),
        alertmanager_url=alertmanager.url,
    )
    client = await aiohttp_client(create_app(config))
    engine = client.app[keys.ENGINE]
    eraser = Ledger(make_engine(migrated_sqlite))
    body = payload(alert("TradingBotBrokerDisconnected", instance=instance))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200

    async def episode(state: str) -> dict[str, Any] | None:
        (found,) = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        return found if found["state"] == state else None

    first = await until_async("the first page delivered", lambda: episode("escalated"), 30)
    # The failover, without yielding to the reconciler's loop: the page's write is gone, the claim is as it was.
    with eraser.engine.begin() as conn:
        conn.execute(text("DELETE FROM reconciler_escalations"))
        conn.execute(
            text("UPDATE reconciler_episodes SET state = 'running', owner = :owner, closed_at = NULL WHERE id = :id"),
            {"owner": engine.owner, "id": first["id"]},
        )
    engine.holder.recheck = True  # as after the ledger was away
    engine.holder.settle_until = time.monotonic() + 60  # and no claim meanwhile, as after it
    engine.wake.set()
    again = await until_async("the page about the loss delivered", lambda: episode("escalated"), 30)
    assert "gone from the ledger" in again["detail"] and f"({FAILED}) of episode {first['id']}" in again["detail"]

    def paged() -> list[dict[str, Any]]:
        # The Alertmanager is the session's: other tests' episodes have the same ids, never this bot.
        return [a for a in alertmanager.get("alerts") if a["labels"].get("target") == instance]

    (page,) = await until_async("Alertmanager holds the page", paged, 10, in_thread=True)
    assert "was lost with them" in page["annotations"]["description"]
    assert len(engine.escalation.outbox.of_episode(first["id"])) == 1  # owed once
    assert fake_bot.commands() == ["reconnect"]  # not run again
    metrics = await (await client.get("/metrics")).text()
    assert 'tradingops_ledger_lost_writes_total{kind="page"} 1.0' in metrics
    eraser.engine.dispose()
