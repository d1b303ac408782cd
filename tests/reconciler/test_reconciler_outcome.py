"""What a step did is never lost and never done twice: runs that stopped after (or while) a step ran, and the
playbook's on_unknown. The reconciler in process on SQLite, a real Alertmanager for the pages, a real Prometheus for
a verification that fails.

Needs the `prometheus-alertmanager` and `prometheus` binaries; the fixtures start them."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from alertmanager_server import Alertmanager
from engine_runs import dead_owner
from fake_bot import FakeBot, bot_targets
from reconciler_server import AUTH, READ_AUTH, make_config, write_playbook
from sqlalchemy import text
from webhook_payloads import alert, payload

from trading_ops.db.base import make_engine, utcnow
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.history import episode_view
from trading_ops.reconciler.ledger import AlertIn, Ledger, NotificationIn
from trading_ops.reconciler.spool import OutcomeSpool, SpooledOutcome

pytestmark = [pytest.mark.alertmanager]

ALERTNAME = "TradingBotBrokerDisconnected"


def rule(*commands: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "reconnect",
        "match": [f'alertname="{ALERTNAME}"'],
        "verify": False,
        "cooldown": 0,
        "backoff": {"initial": "100ms"},
        "steps": [{"action": "bot", "command": c} for c in commands],
        **extra,
    }


async def start(
    aiohttp_client: Any, tmp_path: Path, db: str, bot: FakeBot, rules: list[dict[str, Any]], instance: str, **rc: Any
) -> Any:
    config = make_config(
        tmp_path,
        db,
        playbook=str(write_playbook(tmp_path, rules)),
        targets=bot_targets(bot, tmp_path, instance),
        **rc,
    )
    client = await aiohttp_client(create_app(config))
    client.app[keys.ENGINE].escalation_delays = ()
    return client


def died_mid_run(ledger: Ledger, instance: str, outcomes: list[str], attempt_outcome: str = "running") -> int:
    """An episode whose run was taken by a reconciler that is dead now (kill -9), with the steps it recorded: one
    per outcome (`running` = it was running when the process died). The episode's id."""
    labels = {"alertname": ALERTNAME, "instance": instance}
    a = AlertIn("firing", "f1", utcnow(), ALERTNAME, labels, {}, "", "reconnect", instance)
    ledger.store([NotificationIn("reconciler", "firing", "g", "{}", [a])])
    (eid,) = [e["id"] for e in ledger.list_episodes()]
    gone = dead_owner("old")
    assert ledger.claim(eid, instance, gone, utcnow(), 3600) is not None
    attempt = ledger.start_attempt(eid, gone)
    for position, outcome in enumerate(outcomes):
        command = ("reconnect", "resubscribe")[position]
        step = ledger.start_step(attempt, position, "bot", f"bot command={command}", "safe", instance, True)
        if outcome != "running":
            ledger.finish_step(step, outcome, "done by the dead run")
    if attempt_outcome != "running":
        ledger.finish_attempt(attempt, attempt_outcome, "verified by the dead run")
    return int(eid)


async def closed(client: Any, eid: int, deadline: float = 20.0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while True:
        episode: dict[str, Any] = await (await client.get(f"/api/v1/episodes/{eid}", headers=READ_AUTH)).json()
        if episode["state"] in ("recovered", "escalated", "failed", "resolved"):
            return episode
        assert time.monotonic() < end, f"episode {eid} never closed: {episode}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("attempt_outcome", ["running", "success"])
async def test_a_run_that_died_after_its_steps_succeeded_is_verified_never_run_again(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, attempt_outcome: str
) -> None:
    # The reconciler died after both steps succeeded (and, in one case, after the attempt was stored a success: it
    # died before closing the episode). The sweep finds the run dead; the next run verifies, and runs nothing.
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    ledger = Ledger(make_engine(migrated_sqlite))
    try:
        eid = died_mid_run(ledger, instance, ["success", "success"], attempt_outcome)
        client = await start(
            aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [rule("reconnect", "resubscribe")], instance
        )
        episode = await closed(client, eid)
        assert episode["state"] == "recovered", episode
        assert fake_bot.calls == []
        (attempt,) = episode["attempts"]
        assert attempt["outcome"] == "success" and [s["outcome"] for s in attempt["steps"]] == ["success", "success"]
    finally:
        ledger.engine.dispose()


async def test_a_run_whose_steps_succeeded_but_whose_verification_fails_is_escalated_not_run_again(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    prometheus: str,
    alertmanager: Alertmanager,
) -> None:
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    ledger = Ledger(make_engine(migrated_sqlite))
    try:
        eid = died_mid_run(ledger, instance, ["success"])
        still_failing = rule("reconnect", max_attempts=3, verify={"expr": "vector(1)", "deadline": "1s"})
        client = await start(
            aiohttp_client,
            tmp_path,
            migrated_sqlite,
            fake_bot,
            [still_failing],
            instance,
            prometheus_url=prometheus,
            alertmanager_url=alertmanager.url,
        )
        episode = await closed(client, eid)
        assert episode["state"] == "escalated", episode
        assert fake_bot.calls == []  # attempts were left (max_attempts 3): the step still never ran twice
        assert [a["outcome"] for a in episode["attempts"]] == ["failure"]
    finally:
        ledger.engine.dispose()


async def test_a_run_that_died_between_steps_carries_on_with_the_next_step(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    ledger = Ledger(make_engine(migrated_sqlite))
    try:
        eid = died_mid_run(ledger, instance, ["success"])
        client = await start(
            aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [rule("reconnect", "resubscribe")], instance
        )
        episode = await closed(client, eid)
        assert episode["state"] == "recovered", episode
        assert fake_bot.commands() == ["resubscribe"]  # reconnect had succeeded: not sent again
        (attempt,) = episode["attempts"]
        assert [s["outcome"] for s in attempt["steps"]] == ["success", "success"]
    finally:
        ledger.engine.dispose()


async def test_a_spooled_outcome_is_written_before_the_sweep_so_it_is_never_unknown(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    # The step succeeded, the database did not take its outcome, and the reconciler stopped: the ledger says
    # `running`, the spool has the outcome. At the next start the spool is written first: the step is a success
    # (not unknown), and it is not run again.
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    ledger = Ledger(make_engine(migrated_sqlite))
    try:
        eid = died_mid_run(ledger, instance, ["running"])
        (step_id,) = [s["id"] for a in ledger.get_episode_full(eid)["attempt_list"] for s in a["steps"]]  # type: ignore[index]
        spool = OutcomeSpool(tmp_path / "spool")
        spool.put(SpooledOutcome(step_id, "success", "reconnected", utcnow()))
        client = await start(
            aiohttp_client,
            tmp_path,
            migrated_sqlite,
            fake_bot,
            [rule("reconnect", on_unknown="retry")],  # an unknown outcome would run it again: it must not be one
            instance,
            spool_dir=str(tmp_path / "spool"),
        )
        episode = await closed(client, eid)
        assert episode["state"] == "recovered", episode
        assert fake_bot.calls == []
        ((step,),) = [a["steps"] for a in episode["attempts"]]
        assert (step["outcome"], step["output"]) == ("success", "reconnected")
        assert spool.pending() == [] and list((tmp_path / "spool").iterdir()) == []
    finally:
        ledger.engine.dispose()


async def test_a_spooled_outcome_whose_step_the_ledger_lost_is_paged_and_never_run_again(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    # The reconciler died with the primary while it wrote a step's outcome (spooled), and the standby promoted in its
    # place never got the step's row: the ledger shows the episode claimed by the dead process, with no step. At the
    # next start the replay finds no step for the outcome: the episode is paged about and held back, not run again.
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    ledger = Ledger(make_engine(migrated_sqlite))
    try:
        eid = died_mid_run(ledger, instance, ["running"])
        (step_id,) = [s["id"] for a in ledger.get_episode_full(eid)["attempt_list"] for s in a["steps"]]  # type: ignore[index]
        with ledger.tx() as conn:
            conn.execute(text("DELETE FROM reconciler_steps"))
        spool = OutcomeSpool(tmp_path / "spool")
        spool.put(SpooledOutcome(step_id, "success", "reconnected", utcnow(), eid))
        client = await start(
            aiohttp_client,
            tmp_path,
            migrated_sqlite,
            fake_bot,
            [rule("reconnect", on_unknown="retry")],  # the sweep's `unknown` would run it again
            instance,
            spool_dir=str(tmp_path / "spool"),
            alertmanager_url=alertmanager.url,
        )
        episode = await closed(client, eid)
        assert episode["state"] == "escalated", episode
        assert f"the outcome success of step {step_id} of episode {eid}" in episode["detail"], episode
        assert fake_bot.calls == []
        metrics = await (await client.get("/metrics")).text()
        assert 'tradingops_ledger_lost_writes_total{kind="outcome"} 1.0' in metrics
        assert spool.pending() == []
    finally:
        ledger.engine.dispose()


@pytest.mark.parametrize(
    ("command", "on_unknown", "acted"),
    [
        ("reconnect", None, True),  # safe: retried by default
        ("pause", None, False),  # disruptive: escalated by default
        ("reconnect", "escalate", False),
        ("pause", "retry", True),
    ],
)
async def test_a_step_left_running_by_a_dead_run_is_unknown_and_on_unknown_decides(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    command: str,
    on_unknown: str | None,
    acted: bool,
) -> None:
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    ledger = Ledger(make_engine(migrated_sqlite))
    try:
        eid = died_mid_run(ledger, instance, ["running"])
        extra = {"on_unknown": on_unknown} if on_unknown else {}
        client = await start(
            aiohttp_client,
            tmp_path,
            migrated_sqlite,
            fake_bot,
            [rule(command, **extra)],
            instance,
            alertmanager_url=alertmanager.url,
        )
        episode = await closed(client, eid)
        first = episode["attempts"][0]
        # Said so in the episode, as the API and `reconciler history` show it.
        assert first["outcome"] == "unknown" and first["steps"][0]["outcome"] == "unknown", first
        full = await asyncio.to_thread(ledger.get_episode_full, eid)
        assert full is not None and "attempt 1  unknown" in episode_view(full)
        if acted:
            assert episode["state"] == "recovered", episode
            assert fake_bot.commands() == [command]
            assert [a["outcome"] for a in episode["attempts"]] == ["unknown", "success"]
        else:
            assert episode["state"] == "escalated", episode
            assert fake_bot.calls == []
            assert "is unknown" in episode["detail"] and "on_unknown: escalate" in episode["detail"], episode
    finally:
        ledger.engine.dispose()


def test_a_replay_leaves_an_outcome_a_live_run_is_writing_to_that_run(tmp_path: Path) -> None:
    spool = OutcomeSpool(tmp_path / "spool")
    written: list[int] = []

    class Ledger:
        def finish_step(self, step_id: int, outcome: str, output: str, finished_at: Any = None) -> None:
            written.append(step_id)

    spool.hold(1)
    spool.put(SpooledOutcome(1, "success", "the live run's", utcnow()))
    spool.put(SpooledOutcome(2, "success", "a dead run's", utcnow()))
    assert spool.replay(Ledger(), lambda exc: False) == 1
    assert written == [2] and [item.step_id for item in spool.pending()] == [1]
    spool.release(1)  # the run stopped before writing it: the next replay does
    assert spool.replay(Ledger(), lambda exc: False) == 1
    assert written == [2, 1] and spool.pending() == []


def test_a_replay_counts_as_lost_only_an_outcome_an_earlier_life_spooled(tmp_path: Path) -> None:
    # Two outcomes whose steps the ledger no longer has (a failover lost their rows). One an earlier life of the
    # process spooled: it may have died after the ledger took the outcome, so the outcome is a write the failover lost.
    # The other this life spooled and never saw taken (its run stopped first): the ledger never had it, the step's row
    # is what was lost, and this life's check of its writes reports that row; reported here too, it counted twice.
    OutcomeSpool(tmp_path / "spool").put(SpooledOutcome(1, "success", "an earlier life's", utcnow(), 7))
    spool = OutcomeSpool(tmp_path / "spool")
    spool.put(SpooledOutcome(2, "success", "this life's", utcnow(), 8))

    class Ledger:
        def finish_step(self, step_id: int, outcome: str, output: str, finished_at: Any = None) -> str:
            return "missing"

    assert spool.replay(Ledger(), lambda exc: False) == 0
    assert [(item.step_id, item.episode_id) for item in spool.missing] == [(1, 7)]
    assert spool.pending() == [] and spool.ours == set()


async def test_a_sweep_during_a_step_s_outcome_write_never_writes_it_beside_the_run(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run spooled its step's outcome and is writing it to the ledger when a dispatch replays the spool (a webhook
    # woke it). The replay must leave that outcome to the run: written twice, a failure of the replay's write would be
    # taken for the run's, or the run's for the replay's.
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [rule("reconnect")], instance)
    engine = client.app[keys.ENGINE]
    ledger = client.app[keys.LEDGER]
    real_finish_step = ledger.finish_step
    calls: list[tuple[int, str]] = []

    def finish_step(step_id: int, outcome: str, output: str, finished_at: Any = None) -> None:
        if not calls:
            calls.append((step_id, "replay"))
            assert engine.spool.replay(ledger, lambda exc: False) == 0  # a dispatch's replay, mid-write
        calls.append((step_id, outcome))
        real_finish_step(step_id, outcome, output, finished_at)

    monkeypatch.setattr(ledger, "finish_step", finish_step)
    await client.post("/api/v1/alertmanager", json=payload(alert(alertname=ALERTNAME, instance=instance)), headers=AUTH)
    (eid,) = [e["id"] for e in ledger.list_episodes()]
    episode = await closed(client, eid)
    assert episode["state"] == "recovered", episode
    ((step,),) = [a["steps"] for a in episode["attempts"]]
    assert step["outcome"] == "success"
    (step_id, _), _ = calls
    assert calls == [(step_id, "replay"), (step_id, "success")]  # written once, by the run
    assert engine.spool.pending() == [] and engine.spool.held == set()
