"""The engine against a bot control API, a real Prometheus (verification) and a real Alertmanager (escalation).

Needs the `prometheus` and `prometheus-alertmanager` binaries; the fixtures start them."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from conftest import AUTH, Alertmanager, FakeBot, alert, bot_targets, make_config, payload, write_playbook

from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.engine import PAUSE_KEY

pytestmark = [pytest.mark.prometheus, pytest.mark.alertmanager]


def gen_url(expr: str) -> str:
    return "http://prometheus/graph?" + urllib.parse.urlencode({"g0.expr": expr, "g0.tab": "1"})


async def wait_state(client: Any, states: set[str], deadline: float = 20.0, index: int = 0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while True:
        episodes = (await (await client.get("/api/v1/episodes")).json())["episodes"]
        ordered = sorted(episodes, key=lambda e: e["id"])
        if len(ordered) > index and ordered[index]["state"] in states:
            return ordered[index]  # type: ignore[no-any-return]
        if time.monotonic() > end:
            raise AssertionError(f"episode {index} never reached {states}: {ordered}")
        await asyncio.sleep(0.05)


async def start(
    aiohttp_client: Any, tmp_path: Path, db: str, bot: FakeBot, rules: list[dict[str, Any]], **rc: Any
) -> Any:
    config = make_config(
        tmp_path, db, playbook=str(write_playbook(tmp_path, rules)), targets=bot_targets(bot, tmp_path), **rc
    )
    return await aiohttp_client(create_app(config))


RECONNECT = {
    "name": "reconnect",
    "match": ['alertname="TradingBotBrokerDisconnected"'],
    "cooldown": 0,
    "backoff": {"initial": "100ms", "jitter": 0},
    "verify": {"deadline": "10s", "interval": "100ms"},
    "steps": [{"action": "bot", "command": "reconnect"}],
}


async def test_one_verified_run_per_episode(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus: str
) -> None:
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [RECONNECT], prometheus_url=prometheus)
    # The alert's own expression (from generatorURL) still matches for ~1 s after the action, then clears.
    expr = f"vector(time()) < {time.time() + 1.0:.3f}"
    body = payload(alert(generator_url=gen_url(expr)))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    episode = await wait_state(client, {"recovered", "failed", "escalated"})
    assert episode["state"] == "recovered", episode
    for _ in range(3):  # resends after the fact start nothing
        await client.post("/api/v1/alertmanager", json=body, headers=AUTH)
    await asyncio.sleep(0.3)
    assert fake_bot.commands() == ["reconnect"]
    detail = await (await client.get(f"/api/v1/episodes/{episode['id']}")).json()
    assert detail["attempts"][0]["outcome"] == "success"
    assert detail["attempts"][0]["steps"][0]["output"].startswith("HTTP 200")
    metrics = await (await client.get("/metrics")).text()
    assert 'tradingops_actions_total{action="bot",outcome="success"} 1.0' in metrics
    assert "tradingops_time_to_recovery_seconds_count 1.0" in metrics


async def test_unverified_recovery_retries_with_backoff_then_escalates(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    prometheus: str,
    alertmanager: Alertmanager,
) -> None:
    rule = {**RECONNECT, "max_attempts": 2, "verify": {"expr": "vector(1)", "deadline": "300ms", "interval": "100ms"}}
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [rule],
        prometheus_url=prometheus,
        alertmanager_url=alertmanager.url,
    )
    await client.post("/api/v1/alertmanager", json=payload(alert(instance="bot-1", fingerprint="esc")), headers=AUTH)
    episode = await wait_state(client, {"recovered", "failed", "escalated"})
    assert episode["state"] == "escalated", episode
    assert fake_bot.commands() == ["reconnect", "reconnect"]
    assert [a["outcome"] for a in episode["attempts"]] == ["failure", "failure"]
    posted = [
        a
        for a in alertmanager.get("alerts")
        if a["labels"]["alertname"] == "TradingOpsRemediationFailed"
        and a["labels"].get("original_alertname") == "TradingBotBrokerDisconnected"
    ]
    assert posted, "the escalation reached Alertmanager"
    labels, annotations = posted[0]["labels"], posted[0]["annotations"]
    assert labels["severity"] == "critical" and labels["service"] == "trading-ops" and labels["target"] == "bot-1"
    assert "bot command=reconnect" in annotations["description"] and annotations["runbook_url"].endswith(
        "TradingOpsRemediationFailed.md"
    )


async def test_destructive_steps_are_refused_unless_the_rule_allows_them(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    steps = [{"action": "bot", "command": "pause"}, {"action": "bot", "command": "flatten"}]
    rules = [
        {"name": "not-allowed", "match": ['alertname="A"'], "steps": steps, "verify": False, "on_failure": "none"},
        {"name": "allowed", "match": ['alertname="B"'], "steps": steps, "verify": False, "allow_destructive": True},
    ]
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, rules)
    await client.post("/api/v1/alertmanager", json=payload(alert("A", fingerprint="a")), headers=AUTH)
    refused = await wait_state(client, {"failed", "escalated", "recovered"})
    assert refused["state"] == "failed"
    assert [s["outcome"] for s in refused["attempts"][0]["steps"]] == ["success", "refused"]
    assert len(refused["attempts"]) == 1  # a refusal is not retried
    assert fake_bot.commands() == ["pause"]
    await client.post("/api/v1/alertmanager", json=payload(alert("B", fingerprint="b", instance="bot-1")), headers=AUTH)
    allowed = await wait_state(client, {"failed", "escalated", "recovered"}, index=1)
    assert allowed["state"] == "recovered"
    assert fake_bot.commands() == ["pause", "pause", "flatten"]


async def test_dry_run_records_what_it_would_do_and_does_nothing(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [RECONNECT], dry_run=True)
    await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    episode = await wait_state(client, {"dry_run"})
    assert episode["attempts"][0]["steps"][0]["outcome"] == "dry_run"
    assert "would run: bot command=reconnect" in episode["attempts"][0]["steps"][0]["output"]
    assert fake_bot.calls == []


async def test_pause_executes_nothing_and_records_it(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [RECONNECT])
    await asyncio.to_thread(client.app[keys.LEDGER].set_setting, PAUSE_KEY, "1")
    await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    episode = await wait_state(client, {"skipped"})
    assert "paused" in episode["detail"] and episode["attempts"][0]["outcome"] == "skipped"
    assert fake_bot.calls == []
    assert "tradingops_paused 1.0" in await (await client.get("/metrics")).text()


async def test_a_maintenance_silence_executes_nothing_and_records_it(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    from datetime import UTC, datetime, timedelta

    import aiohttp

    from trading_ops.clients.alertmanager import AlertmanagerClient

    async with aiohttp.ClientSession() as session:
        now = datetime.now(UTC)
        await AlertmanagerClient(session, alertmanager.url).create_silence(
            {"instance": "bot-maint"}, now, now + timedelta(hours=1), "ops", "planned maintenance"
        )
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [RECONNECT],
        alertmanager_url=alertmanager.url,
        check_silences=True,
    )
    await client.post("/api/v1/alertmanager", json=payload(alert(instance="bot-maint")), headers=AUTH)
    episode = await wait_state(client, {"skipped", "recovered", "failed", "escalated"})
    assert episode["state"] == "skipped" and "maintenance silence" in episode["detail"]
    assert "planned maintenance" in episode["detail"]
    assert fake_bot.calls == []


async def test_resolved_cancels_verification_and_pending_retries(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus: str
) -> None:
    rule = {**RECONNECT, "max_attempts": 3, "verify": {"expr": "vector(1)", "deadline": "1h", "interval": "100ms"}}
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [rule], prometheus_url=prometheus)
    await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    await wait_state(client, {"verifying"})
    await client.post("/api/v1/alertmanager", json=payload(alert(status="resolved")), headers=AUTH)
    episode = await wait_state(client, {"resolved"})
    await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)  # late firing: nothing
    await asyncio.sleep(0.3)
    assert fake_bot.commands() == ["reconnect"]
    assert episode["attempts"][-1]["outcome"] == "resolved"
    assert (await wait_state(client, {"resolved"}))["attempts"] == episode["attempts"]


async def test_cooldown_and_budget_apply_across_episodes(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    rules = [
        {**RECONNECT, "verify": False, "cooldown": "1h"},
        {**RECONNECT, "name": "other", "match": ['alertname="B"'], "verify": False, "cooldown": 0},
    ]
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        rules,
        alertmanager_url=alertmanager.url,
        budgets={"max_actions_per_target_per_hour": 2, "circuit_cool_off_seconds": 600},
    )
    await client.post("/api/v1/alertmanager", json=payload(alert(instance="bot-1")), headers=AUTH)
    await wait_state(client, {"recovered"})
    # A new startsAt is a new episode, but the rule's cooldown on this target holds it back.
    await client.post("/api/v1/alertmanager", json=payload(alert(starts_at="2026-01-01T00:05:00Z")), headers=AUTH)
    waiting = await wait_state(client, {"waiting"}, index=1)
    assert "cooldown" in waiting["detail"]
    # Another rule on the same target: one more action fits the budget of 2, the next opens the circuit.
    await client.post("/api/v1/alertmanager", json=payload(alert("B", fingerprint="b1")), headers=AUTH)
    await wait_state(client, {"recovered"}, index=2)
    await client.post("/api/v1/alertmanager", json=payload(alert("B", fingerprint="b2")), headers=AUTH)
    blocked = await wait_state(client, {"escalated"}, index=3)
    assert "budget of bot-1 spent" in blocked["detail"]
    assert fake_bot.commands() == ["reconnect", "reconnect"]
    names = {a["labels"]["alertname"] for a in alertmanager.get("alerts") if a["labels"].get("target") == "bot-1"}
    assert "TradingOpsRemediationCircuitOpen" in names
    await client.post("/api/v1/alertmanager", json=payload(alert("B", fingerprint="b3")), headers=AUTH)
    assert "circuit of bot-1 open" in (await wait_state(client, {"escalated"}, index=4))["detail"]
    metrics = await (await client.get("/metrics")).text()
    assert 'tradingops_circuit_open{target="bot-1"} 1.0' in metrics
