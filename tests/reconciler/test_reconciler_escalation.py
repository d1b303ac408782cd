"""Every way an episode ends `escalated` posts its page to a real Alertmanager: none is lost.

The paths (trading_ops/reconciler/escalation.py, gates.py): the rule's attempts used up (`give_up`), a destructive
step refused because its rule does not allow_destructive (`give_up` at once: no retry), a run that was interrupted
with no attempt left (`give_up` too), an internal error mid-run (`internal_error`), the action budget spent
(`Gates._within_budget`, whether this run or another replica opened the circuit), and the circuit of the target, or
the global one, already open (`Gates._circuit_open`). Needs the `prometheus-alertmanager` binary (the fixture starts
it)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alertmanager_server import Alertmanager
from engine_runs import dead_owner
from fake_bot import FakeBot, bot_targets
from reconciler_server import AUTH, READ_AUTH, make_config, write_playbook
from webhook_payloads import alert, payload

from trading_ops.db.base import make_engine, utcnow
from trading_ops.reconciler import keys
from trading_ops.reconciler.actions.escalate import CIRCUIT_OPEN, FAILED
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.ledger import GLOBAL_TARGET, AlertIn, Ledger, NotificationIn

pytestmark = [pytest.mark.alertmanager]

RULE = {
    "name": "reconnect",
    "match": ['alertname=~"TradingBot.*"'],
    "cooldown": 0,
    "max_attempts": 1,
    "verify": False,
    "steps": [{"action": "bot", "command": "reconnect"}],
}


async def start(aiohttp_client: Any, tmp_path: Path, db: str, bot: FakeBot, instance: str, **rc: Any) -> Any:
    config = make_config(
        tmp_path,
        db,
        playbook=str(write_playbook(tmp_path, [{**RULE, **rc.pop("rule", {})}])),
        targets=bot_targets(bot, tmp_path, instance),
        **rc,
    )
    return await aiohttp_client(create_app(config))


async def closed(client: Any, index: int = 0, deadline: float = 20.0) -> dict[str, Any]:
    """Episode `index` (by id) once it is closed."""
    end = time.monotonic() + deadline
    while True:
        episodes = sorted((await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"], key=id_)
        if len(episodes) > index and episodes[index]["closed_at"]:
            return episodes[index]  # type: ignore[no-any-return]
        assert time.monotonic() < end, f"episode {index} never closed: {episodes}"
        await asyncio.sleep(0.05)


def id_(episode: dict[str, Any]) -> int:
    return int(episode["id"])


async def page(alertmanager: Alertmanager, alertname: str, instance: str, original: str) -> dict[str, Any]:
    """The escalation Alertmanager holds for this bot and original alert (polled: posting is asynchronous)."""
    end = time.monotonic() + 10
    while True:
        for held in await asyncio.to_thread(alertmanager.get, "alerts"):
            labels = held["labels"]
            if (labels["alertname"], labels.get("instance"), labels.get("original_alertname")) == (
                alertname,
                instance,
                original,
            ):
                return held  # type: ignore[no-any-return]
        assert time.monotonic() < end, f"no {alertname} for {original} on {instance} in Alertmanager"
        await asyncio.sleep(0.05)


def new_instance() -> str:
    return f"bot-{uuid.uuid4().hex[:8]}"


async def test_attempts_used_up(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    instance = new_instance()
    fake_bot.status["reconnect"] = 502
    client = await start(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, instance, alertmanager_url=alertmanager.url
    )
    await client.post("/api/v1/alertmanager", json=payload(alert(instance=instance)), headers=AUTH)
    episode = await closed(client)
    assert episode["state"] == "escalated", episode
    held = await page(alertmanager, FAILED, instance, "TradingBotBrokerDisconnected")
    assert "bot command=reconnect" in held["annotations"]["description"]


async def test_a_refused_destructive_step(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    # flatten is destructive and the rule does not allow_destructive: nothing is sent to the bot, no attempt is
    # retried (a refusal would be refused again), and a human is paged with the reason.
    instance = new_instance()
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        instance,
        alertmanager_url=alertmanager.url,
        rule={"max_attempts": 3, "steps": [{"action": "bot", "command": "flatten"}]},
    )
    await client.post("/api/v1/alertmanager", json=payload(alert(instance=instance)), headers=AUTH)
    episode = await closed(client)
    assert episode["state"] == "escalated" and "is destructive" in episode["detail"], episode
    assert [a["outcome"] for a in episode["attempts"]] == ["failure"]
    assert [s["outcome"] for s in episode["attempts"][0]["steps"]] == ["refused"]
    held = await page(alertmanager, FAILED, instance, "TradingBotBrokerDisconnected")
    description = held["annotations"]["description"]
    assert "bot command=flatten is destructive and rule reconnect does not allow_destructive" in description
    assert fake_bot.commands() == []


@pytest.mark.parametrize("which", ["target", "global"])
async def test_the_circuit_already_open(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    which: str,
) -> None:
    # As with chaos stall_journal: another alert spent the budget and opened the circuit (its own page named that
    # alert); this episode, closed escalated without acting, used to post nothing.
    instance = new_instance()
    client = await start(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, instance, alertmanager_url=alertmanager.url
    )
    circuit = instance if which == "target" else GLOBAL_TARGET
    assert client.app[keys.LEDGER].open_circuit(circuit, utcnow() + timedelta(hours=1))
    await client.post("/api/v1/alertmanager", json=payload(alert("TradingBotStalled", instance=instance)), headers=AUTH)
    episode = await closed(client)
    assert episode["state"] == "escalated" and f"circuit of {circuit} open" in episode["detail"], episode
    held = await page(alertmanager, CIRCUIT_OPEN, instance, "TradingBotStalled")
    assert "Nothing was executed" in held["annotations"]["description"]
    assert fake_bot.commands() == []


async def test_the_budget_spent_when_another_replica_opened_the_circuit_first(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = new_instance()
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        instance,
        alertmanager_url=alertmanager.url,
        budgets={"max_actions_per_target_per_hour": 1},
    )
    ledger = client.app[keys.LEDGER]
    opened = ledger.open_circuit

    def lost_the_race(circuit: str, until: Any) -> bool:
        opened(circuit, until)  # another replica's open lands first: ours changes nothing
        return False

    await client.post("/api/v1/alertmanager", json=payload(alert(fingerprint="a", instance=instance)), headers=AUTH)
    assert (await closed(client))["state"] == "recovered"  # one action: the budget of 1 is spent
    monkeypatch.setattr(ledger, "open_circuit", lost_the_race)
    second = alert("TradingBotStalled", fingerprint="b", instance=instance)
    await client.post("/api/v1/alertmanager", json=payload(second), headers=AUTH)
    episode = await closed(client, index=1)
    assert episode["state"] == "escalated" and "action budget of" in episode["detail"], episode
    await page(alertmanager, CIRCUIT_OPEN, instance, "TradingBotStalled")
    assert fake_bot.commands() == ["reconnect"]


async def test_the_budget_spent_by_this_run(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    instance = new_instance()
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        instance,
        alertmanager_url=alertmanager.url,
        budgets={"max_actions_per_target_per_hour": 1},
        rule={"steps": [{"action": "bot", "command": "reconnect"}, {"action": "bot", "command": "resubscribe"}]},
    )
    await client.post("/api/v1/alertmanager", json=payload(alert(instance=instance)), headers=AUTH)
    episode = await closed(client)
    assert episode["state"] == "escalated" and "action budget of" in episode["detail"], episode
    await page(alertmanager, CIRCUIT_OPEN, instance, "TradingBotBrokerDisconnected")


async def test_interrupted_with_no_attempt_left(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    # A reconciler died mid-run (kill -9) on the rule's only attempt: the next one must page, not retry.
    instance = new_instance()
    ledger = Ledger(make_engine(migrated_sqlite))
    try:
        labels = {"alertname": "TradingBotBrokerDisconnected", "instance": instance}
        a = AlertIn("firing", "f1", utcnow(), labels["alertname"], labels, {}, "", "reconnect", instance)
        ledger.store([NotificationIn("reconciler", "firing", "g", "{}", [a])])
        (eid,) = [e["id"] for e in ledger.list_episodes()]
        gone = dead_owner("old")
        assert ledger.claim(eid, instance, gone, utcnow(), 3600) is not None
        ledger.start_attempt(eid, gone)
        client = await start(
            aiohttp_client, tmp_path, migrated_sqlite, fake_bot, instance, alertmanager_url=alertmanager.url
        )
        episode = await closed(client)
        assert episode["state"] == "escalated" and "no attempts left" in episode["detail"], episode
        await page(alertmanager, FAILED, instance, "TradingBotBrokerDisconnected")
        assert fake_bot.commands() == []
    finally:
        ledger.engine.dispose()


async def test_an_internal_error(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = new_instance()
    client = await start(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, instance, alertmanager_url=alertmanager.url
    )

    def broken(*_args: Any) -> None:
        raise RuntimeError("the ledger broke mid-step")

    monkeypatch.setattr(client.app[keys.LEDGER], "finish_step", broken)
    await client.post("/api/v1/alertmanager", json=payload(alert(instance=instance)), headers=AUTH)
    episode = await closed(client)
    assert episode["state"] == "escalated", episode
    held = await page(alertmanager, FAILED, instance, "TradingBotBrokerDisconnected")
    assert "the ledger broke mid-step" in held["annotations"]["description"]


# ---- protective rules are never refused by budgets or circuits (a loss limit must be enforced) ------------------
PROTECTIVE = {
    "allow_destructive": True,
    "steps": [
        {"action": "bot", "command": "pause"},
        {"action": "bot", "command": "cancel_all"},
        {"action": "bot", "command": "flatten"},
    ],
}


@pytest.mark.parametrize("which", ["target", "global"])
async def test_a_protective_rule_acts_with_the_circuit_open(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    which: str,
) -> None:
    # After failed restarts spent the target's budget and opened its circuit, a breached loss limit used to be
    # refused ("circuit open"): the bot kept trading while losing.
    instance = new_instance()
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        instance,
        alertmanager_url=alertmanager.url,
        rule=PROTECTIVE,
    )
    circuit = instance if which == "target" else GLOBAL_TARGET
    assert client.app[keys.LEDGER].open_circuit(circuit, utcnow() + timedelta(hours=1))
    loss = alert("TradingBotDailyLossBreached", instance=instance)
    await client.post("/api/v1/alertmanager", json=payload(loss), headers=AUTH)
    episode = await closed(client)
    assert episode["state"] == "recovered", episode
    assert fake_bot.commands() == ["pause", "cancel_all", "flatten"]


async def test_a_protective_rule_acts_with_the_budget_spent_and_another_rule_does_not(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    instance = new_instance()
    loss_rule = {**RULE, **PROTECTIVE, "name": "loss-limit", "match": ['alertname="TradingBotDailyLossBreached"']}
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, [loss_rule, RULE])),
        targets=bot_targets(fake_bot, tmp_path, instance),
        alertmanager_url=alertmanager.url,
        budgets={"max_actions_per_target_per_hour": 2},
    )
    client = await aiohttp_client(create_app(config))
    for n in range(2):  # 3 actions each: the target's budget of 2 an hour would refuse even the first
        loss = alert("TradingBotDailyLossBreached", fingerprint=f"loss{n}", instance=instance)
        await client.post("/api/v1/alertmanager", json=payload(loss), headers=AUTH)
        assert (await closed(client, index=n))["state"] == "recovered"
    assert fake_bot.commands() == ["pause", "cancel_all", "flatten"] * 2
    await client.post("/api/v1/alertmanager", json=payload(alert(fingerprint="other", instance=instance)), headers=AUTH)
    episode = await closed(client, index=2)
    assert episode["state"] == "escalated" and "action budget of" in episode["detail"], episode
    assert fake_bot.commands() == ["pause", "cancel_all", "flatten"] * 2  # the reconnect was not sent


# ---- on_recovery: what a rule undoes once the fault is over ----------------------------------------------------
UNDO = {"on_recovery": [{"action": "bot", "command": "resume"}]}


async def test_on_recovery_steps_run_after_the_verified_recovery(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    instance = new_instance()
    client = await start(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, instance, alertmanager_url=alertmanager.url, rule=UNDO
    )
    await client.post("/api/v1/alertmanager", json=payload(alert(instance=instance)), headers=AUTH)
    episode = await closed(client)
    assert episode["state"] == "recovered", episode
    assert fake_bot.commands() == ["reconnect", "resume"]
    (attempt,) = episode["attempts"]
    assert [s["outcome"] for s in attempt["steps"]] == ["success", "success"]


async def test_on_recovery_steps_that_fail_page_a_human(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    # The fault is over, but what the rule did for its duration (bots in reduce_only) was not undone: a human must.
    instance = new_instance()
    fake_bot.status["resume"] = 409
    client = await start(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, instance, alertmanager_url=alertmanager.url, rule=UNDO
    )
    await client.post("/api/v1/alertmanager", json=payload(alert(instance=instance)), headers=AUTH)
    episode = await closed(client)
    assert episode["state"] == "escalated" and "on_recovery" in episode["detail"], episode
    held = await page(alertmanager, FAILED, instance, "TradingBotBrokerDisconnected")
    assert "the steps that undo what the rule did failed" in held["annotations"]["description"]
