"""The engine against a bot control API, a real Prometheus (verification) and a real Alertmanager (escalation).

Needs the `prometheus` and `prometheus-alertmanager` binaries; the fixtures start them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from alertmanager_server import Alertmanager, start_alertmanager
from engine_runs import dead_owner, engine_settled
from fake_bot import FakeBot, bot_targets
from polling import until_async
from reconciler_server import AUTH, READ_AUTH, make_config, write_playbook
from secret_file import write_secret
from server_process import stop
from system_binaries import REPO_ROOT
from webhook_payloads import alert, payload, starts

from trading_ops.db.base import make_engine, utcnow
from trading_ops.reconciler import gates, keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.ledger import AlertIn, Ledger, NotificationIn
from trading_ops.reconciler.processes import ProcessId, make_owner

pytestmark = [pytest.mark.prometheus, pytest.mark.alertmanager]

PLAYBOOKS_DIR = Path(__file__).resolve().parents[2] / "trading_ops" / "reconciler" / "playbooks"


async def wait_state(client: Any, states: set[str], deadline: float = 20.0, index: int = 0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while True:
        episodes = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        ordered = sorted(episodes, key=lambda e: e["id"])
        if len(ordered) > index and ordered[index]["state"] in states:
            return ordered[index]  # type: ignore[no-any-return]
        if time.monotonic() > end:
            raise AssertionError(f"episode {index} never reached {states}: {ordered}")
        await asyncio.sleep(0.05)


async def start(
    aiohttp_client: Any,
    tmp_path: Path,
    db: str,
    bot: FakeBot,
    rules: list[dict[str, Any]],
    instances: tuple[str, ...] = (),
    notify_urls: list[str] | None = None,
    **rc: Any,
) -> Any:
    config = make_config(
        tmp_path,
        db,
        notify_urls,
        playbook=str(write_playbook(tmp_path, rules)),
        targets=bot_targets(bot, tmp_path, *instances),
        **rc,
    )
    return await aiohttp_client(create_app(config))


def webhook(held: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    """The notification Alertmanager sends for an alert it holds (same labels, fingerprint and startsAt)."""
    labels = dict(held["labels"])
    return payload(
        alert(
            labels.pop("alertname"),
            status=status,
            fingerprint=held["fingerprint"],
            starts_at=held["startsAt"],
            **labels,
        )
    )


@pytest.fixture
async def hook(aiohttp_server: Any) -> tuple[str, list[dict[str, Any]]]:
    """A tiny HTTP endpoint apprise's json:// scheme posts to: (its URL, what it received)."""
    received: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", receive)
    server = await aiohttp_server(app)
    return f"json://127.0.0.1:{server.port}/hook", received


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
    # The verification expression still matches for ~1 s after the action, then clears.
    expr = f"vector(time()) < {time.time() + 1.0:.3f}"
    rule = {**RECONNECT, "verify": {**RECONNECT["verify"], "expr": expr}}  # type: ignore[dict-item]
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [rule], prometheus_url=prometheus)
    body = payload(alert())
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    episode = await wait_state(client, {"recovered", "failed", "escalated"})
    assert episode["state"] == "recovered", episode
    for _ in range(3):  # resends after the fact start nothing
        await client.post("/api/v1/alertmanager", json=body, headers=AUTH)
    await engine_settled(client.app)
    assert fake_bot.commands() == ["reconnect"]
    detail = await (await client.get(f"/api/v1/episodes/{episode['id']}", headers=READ_AUTH)).json()
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
        and a["labels"].get("target") == "bot-1"  # the Alertmanager is shared: other tests escalate other targets
    ]
    assert posted, "the escalation reached Alertmanager"
    labels, annotations = posted[0]["labels"], posted[0]["annotations"]
    assert labels["severity"] == "critical" and labels["service"] == "trading-ops"
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


async def test_each_step_goes_with_the_least_scope_and_the_bot_sees_which_token(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    """A real bot control API with named tokens; the reconciler holds its `operate` token and its `destructive` one.
    The pause goes with the operate token, the flatten with the destructive one: the bot counts and records each by
    its name. A bot whose reconciler holds the operate token only refuses the flatten with the scope it needs."""
    from prometheus_client import CollectorRegistry

    from trading_ops.bot.instrumentation import Instrumentation
    from trading_ops.scopes import DESTRUCTIVE, OPERATE, TokenSet

    tokens = TokenSet([("rec-operate", OPERATE, "op-secret"), ("rec-destructive", DESTRUCTIVE, "de-secret")])
    write_secret(tmp_path / "operate-token", "op-secret\n")
    write_secret(tmp_path / "destructive-token", "de-secret\n")
    bots, targets = {}, {}
    for instance, both in (("bot-1", True), ("bot-2", False)):
        (tmp_path / instance).mkdir()
        bot = Instrumentation(venue="paper", token=tokens, registry=CollectorRegistry(), data_dir=tmp_path / instance)
        url = str((await aiohttp_server(bot.create_app())).make_url("")).rstrip("/")
        bots[instance] = bot
        targets[instance] = {"url": url, "token_file": str(tmp_path / "operate-token")}
        if both:
            targets[instance]["destructive_token_file"] = str(tmp_path / "destructive-token")
    steps = [{"action": "bot", "command": "pause"}, {"action": "bot", "command": "flatten"}]
    rule = {"name": "flat", "match": ['alertname="A"'], "steps": steps, "verify": False, "allow_destructive": True}
    rule["on_failure"] = "none"
    config = make_config(tmp_path, migrated_sqlite, playbook=str(write_playbook(tmp_path, [rule])), targets=targets)
    client = await aiohttp_client(create_app(config))

    def counted(instance: str, command: str, source: str) -> float | None:
        labels = {"command": command, "source": source}
        return bots[instance].registry.get_sample_value("tradingbot_control_commands_total", labels)

    body = payload(alert("A", fingerprint="a", instance="bot-1"))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    episode = await wait_state(client, {"failed", "escalated", "recovered"})
    assert episode["state"] == "recovered", episode
    assert bots["bot-1"].state.state.value == "flattening"
    assert counted("bot-1", "pause", "rec-operate") == 1 and counted("bot-1", "pause", "rec-destructive") == 0
    assert counted("bot-1", "flatten", "rec-destructive") == 1 and counted("bot-1", "flatten", "rec-operate") == 0
    assert bots["bot-1"].state.by == "token 'rec-destructive' from 127.0.0.1"

    body = payload(alert("A", fingerprint="b", instance="bot-2"))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    episode = await wait_state(client, {"failed", "escalated", "recovered"}, index=1)
    assert episode["state"] == "failed", episode
    flatten = episode["attempts"][0]["steps"][1]
    assert flatten["outcome"] == "failure"
    assert "HTTP 403" in flatten["output"]
    assert "flatten needs the 'destructive' scope; token 'rec-operate' has 'operate'" in flatten["output"]
    assert (
        bots["bot-2"].state.state.value == "paused" and bots["bot-2"].state.by == "token 'rec-operate' from 127.0.0.1"
    )


async def test_the_loss_limit_rule_pages_that_the_book_was_not_flattened_and_why(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    prometheus: str,
    alertmanager: Alertmanager,
) -> None:
    """The packaged loss-limit-flatten rule on a bot that refuses its flatten (a token without the destructive scope):
    one attempt, and the page leads with what the alert means and names the refused step and the bot's answer."""
    packaged = yaml.safe_load((PLAYBOOKS_DIR / "default.yml").read_text())
    rule = next(r for r in packaged["rules"] if r["name"] == "loss-limit-flatten")
    fake_bot.status["flatten"] = 403
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [rule],
        prometheus_url=prometheus,
        alertmanager_url=alertmanager.url,
    )
    body = payload(alert("TradingBotDailyLossBreached", instance="bot-1", fingerprint="1055"))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    episode = await wait_state(client, {"recovered", "failed", "escalated"})
    assert episode["state"] == "escalated", episode
    assert fake_bot.commands() == ["cancel_all", "flatten"]  # no pause: a halted bot refuses it
    posted = [
        a
        for a in alertmanager.get("alerts")
        if a["labels"]["alertname"] == "TradingOpsRemediationFailed"
        and a["labels"].get("original_alertname") == "TradingBotDailyLossBreached"
        and a["labels"].get("target") == "bot-1"
    ]
    assert posted, "the escalation reached Alertmanager"
    description = posted[0]["annotations"]["description"]
    assert description.startswith("Loss limit breached on bot-1, not flattened: bot command=flatten: failure: HTTP 403")
    assert not [a for a in alertmanager.get("alerts") if a["labels"]["alertname"] == "TradingOpsBotFlattened"]


async def test_dry_run_records_what_it_would_do_and_does_nothing(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [RECONNECT], dry_run=True)
    await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    episode = await wait_state(client, {"dry_run"})
    assert episode["attempts"][0]["steps"][0]["outcome"] == "dry_run"
    assert "would run: bot command=reconnect" in episode["attempts"][0]["steps"][0]["output"]
    assert fake_bot.calls == []


async def test_pause_executes_nothing_records_it_and_resume_runs_the_parked_episode(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [{**RECONNECT, "verify": False}])
    ledger = client.app[keys.LEDGER]
    await asyncio.to_thread(ledger.set_paused, True)
    await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    episode = await wait_state(client, {"waiting"})
    assert episode["detail"].startswith("reconciler paused")
    assert [(a["outcome"], a["steps"]) for a in episode["attempts"]] == [("skipped", [])]
    assert "nothing executed" in episode["attempts"][0]["detail"]
    await engine_settled(client.app)  # polls go by: still parked, recorded once, nothing done
    assert fake_bot.calls == [] and len((await wait_state(client, {"waiting"}))["attempts"]) == 1
    assert "tradingops_paused 1.0" in await (await client.get("/metrics")).text()
    # Resume (what `trading-ops reconciler resume` does): the alert outlasted the pause, so the fix runs once.
    assert await asyncio.to_thread(ledger.set_paused, False) == 1
    episode = await wait_state(client, {"recovered", "failed", "escalated"})
    assert episode["state"] == "recovered"
    assert [a["outcome"] for a in episode["attempts"]] == ["skipped", "success"]
    assert fake_bot.commands() == ["reconnect"]


async def test_a_maintenance_silence_executes_nothing_and_records_it(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    silence = await asyncio.to_thread(alertmanager.silence, {"instance": "bot-maint"}, 3600, "ops", "planned maint")
    try:
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
        episode = await wait_state(client, {"waiting", "recovered", "failed", "escalated"})
        # Parked, not closed: an alert that outlasts the window is fixed after it (next test).
        assert episode["state"] == "waiting"
        assert episode["detail"].startswith(f"maintenance silence {silence} until ")
        assert "planned maint" in episode["detail"]
        assert episode["attempts"][0]["outcome"] == "skipped" and episode["attempts"][0]["steps"] == []
        assert fake_bot.calls == []
    finally:
        await asyncio.to_thread(alertmanager.expire, silence)


async def test_an_alert_outlasting_its_maintenance_silence_is_fixed_once_after_it(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    instance = f"bot-park-{uuid.uuid4().hex[:6]}"
    held = await asyncio.to_thread(
        alertmanager.fire, {"alertname": "TradingBotBrokerDisconnected", "instance": instance}
    )
    # A short window: it ends while the alert still fires (Alertmanager sends no new notification for that).
    silence = await asyncio.to_thread(alertmanager.silence, {"instance": instance}, 2.0)
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [{**RECONNECT, "verify": False}],
        instances=(instance,),
        alertmanager_url=alertmanager.url,
        check_silences=True,
    )
    await client.post("/api/v1/alertmanager", json=webhook(held), headers=AUTH)
    parked = await wait_state(client, {"waiting"})
    assert parked["detail"].startswith(f"maintenance silence {silence}") and fake_bot.calls == []
    episode = await wait_state(client, {"recovered", "failed", "escalated", "resolved"}, deadline=30)
    assert episode["state"] == "recovered", episode
    assert [a["outcome"] for a in episode["attempts"]] == ["skipped", "success"]
    await engine_settled(client.app)
    assert fake_bot.commands() == ["reconnect"]


async def test_a_waiting_run_stays_parked_while_alertmanager_inhibits_its_alert_and_acts_once_that_ends(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bot's TradingBotDown, then its host's TradingBotHostDown, in a real Alertmanager with the repository's
    inhibit rules: when the bot-restart rule's wait ends, the alert is inhibited (its cause has its own alert and
    rule), so nothing is run and nobody is paged for it; the run stays parked. The host comes back without the bot:
    the inhibition ends while the alert still fires, and the run acts on it."""
    monkeypatch.setattr(gates, "INHIBITED_RECHECK_SECONDS", 0.3)
    repo = yaml.safe_load((REPO_ROOT / "alertmanager" / "alertmanager.yml").read_text())
    am = await asyncio.to_thread(start_alertmanager, tmp_path / "am", inhibit_rules=repo["inhibit_rules"])
    try:
        instance = f"10.0.1.{uuid.uuid4().int % 200 + 2}:9101"
        labels = {"instance": instance, "job": "tradingbot", "service": "tradingbot", "severity": "critical"}
        held = await asyncio.to_thread(am.fire, {"alertname": "TradingBotDown", **labels})
        host = await asyncio.to_thread(am.fire, {"alertname": "TradingBotHostDown", "host": "10.0.1.2", **labels})
        rule = {**RECONNECT, "match": ['alertname="TradingBotDown"'], "verify": False, "wait_for": "300ms"}
        client = await start(
            aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [rule], instances=(instance,), alertmanager_url=am.url
        )
        await client.post("/api/v1/alertmanager", json=webhook(held), headers=AUTH)

        async def parked() -> dict[str, Any] | None:
            episodes = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
            return next((e for e in episodes if e["state"] == "waiting" and e["detail"].startswith("inhibited")), None)

        episode = await until_async("the run parked", parked, 20, 0.05, tolerate=())
        assert episode["detail"].startswith("inhibited in Alertmanager by TradingBotHostDown"), episode
        assert [a["outcome"] for a in episode["attempts"]] == ["skipped"] and fake_bot.calls == []

        await asyncio.to_thread(am.resolve, host)
        episode = await wait_state(client, {"recovered", "resolved", "failed", "escalated"})
        assert episode["state"] == "recovered", episode
        assert [a["outcome"] for a in episode["attempts"]] == ["skipped", "success"]
        await engine_settled(client.app)
        assert fake_bot.commands() == ["reconnect"]
    finally:
        stop(am.proc)


async def start_waiting(
    aiohttp_client: Any, tmp_path: Path, db: str, bot: FakeBot, alertmanager: Alertmanager, held: dict[str, Any]
) -> Any:
    """A reconciler whose reconnect rule waits 300 ms before acting, sent the webhook of an alert held in the
    real Alertmanager (which the reconciler asks whether it still fires when the wait ends)."""
    rule = {**RECONNECT, "verify": False, "wait_for": "300ms"}
    instance = held["labels"]["instance"]
    client = await start(
        aiohttp_client, tmp_path, db, bot, [rule], instances=(instance,), alertmanager_url=alertmanager.url
    )
    await client.post("/api/v1/alertmanager", json=webhook(held), headers=AUTH)
    return client


async def test_wait_for_acts_when_alertmanager_still_has_the_alert_firing(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    instance = f"bot-wait-{uuid.uuid4().hex[:6]}"
    held = await asyncio.to_thread(
        alertmanager.fire,
        {"alertname": "TradingBotBrokerDisconnected", "instance": instance, "note": 'a "q" \\n b\nc'},
    )
    client = await start_waiting(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, alertmanager, held)
    episode = await wait_state(client, {"recovered", "resolved", "failed", "escalated"})
    assert episode["state"] == "recovered", episode
    assert fake_bot.commands() == ["reconnect"]


async def test_wait_for_does_nothing_when_the_alert_resolved_during_the_wait(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    instance = f"bot-wait-{uuid.uuid4().hex[:6]}"
    # Label values with quotes, backslashes and a line feed: the lookup's filter must quote them exactly
    # (a filter Alertmanager rejects would make the reconciler act anyway, and this test fail).
    labels = {"alertname": "TradingBotBrokerDisconnected", "instance": instance, "note": 'a "q" \\n b\nc'}
    held = await asyncio.to_thread(alertmanager.fire, labels)
    client = await start_waiting(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, alertmanager, held)
    # It resolves within the wait; its resolved notification is still on its way (group_interval) when the wait
    # ends, so only Alertmanager knows.
    await asyncio.to_thread(alertmanager.resolve, held)
    episode = await wait_state(client, {"recovered", "resolved", "failed", "escalated"})
    assert episode["state"] == "resolved" and "no longer firing in Alertmanager" in episode["detail"]
    assert episode["attempts"] == []
    await engine_settled(client.app)
    assert fake_bot.calls == []
    assert 'tradingops_episodes_total{outcome="resolved"} 1.0' in await (await client.get("/metrics")).text()


async def test_an_internal_error_mid_run_is_escalated(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = f"bot-bug-{uuid.uuid4().hex[:6]}"
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [{**RECONNECT, "verify": False}],
        instances=(instance,),
        alertmanager_url=alertmanager.url,
    )

    def broken(*args: Any) -> None:
        raise RuntimeError("the ledger broke mid-step")

    monkeypatch.setattr(client.app[keys.LEDGER], "finish_step", broken)
    await client.post("/api/v1/alertmanager", json=payload(alert(instance=instance)), headers=AUTH)
    episode = await wait_state(client, {"recovered", "failed", "escalated"})
    assert episode["state"] == "escalated", episode
    assert episode["detail"] == "internal error: RuntimeError: the ledger broke mid-step"
    # Nothing is left "running" behind the error.
    assert episode["attempts"][0]["outcome"] == "failure" and episode["attempts"][0]["steps"][0]["outcome"] == "failure"
    posted = [
        a
        for a in alertmanager.get("alerts")
        if a["labels"]["alertname"] == "TradingOpsRemediationFailed" and a["labels"]["instance"] == instance
    ]
    assert posted and "internal error" in posted[0]["annotations"]["description"]
    assert "the ledger broke mid-step" in posted[0]["annotations"]["description"]


async def test_escalation_falls_back_to_apprise_when_alertmanager_is_down(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, hook: tuple[str, list[Any]]
) -> None:
    url, received = hook
    fake_bot.status["reconnect"] = 500
    rule = {**RECONNECT, "verify": False, "max_attempts": 1}
    # alertmanager_url points at a closed port (make_config's default); the fallback is due at once.
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [rule],
        notify_urls=[url],
        escalation={"fallback_after_seconds": 0, "retry_initial_seconds": 0.05},
    )
    await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    episode = await wait_state(client, {"recovered", "failed", "escalated"})
    assert episode["state"] == "escalated", episode
    assert "sent through the apprise notifications" in episode["detail"]
    assert len(received) == 1
    assert received[0]["title"] == "[trading-ops] TradingOpsRemediationFailed: TradingBotBrokerDisconnected on bot-1"
    assert "Rule reconnect did not recover" in received[0]["message"] and "HTTP 500" in received[0]["message"]
    metrics = await (await client.get("/metrics")).text()
    assert 'tradingops_escalation_fallbacks_total{alertname="TradingOpsRemediationFailed"} 1.0' in metrics
    assert 'tradingops_escalations_total{alertname="TradingOpsRemediationFailed"} 0.0' in metrics
    # Delivered by apprise, but Alertmanager has not taken it: still in the outbox, posted again and again ...
    assert "tradingops_escalations_pending 1.0" in metrics
    (page,) = (await (await client.get(f"/api/v1/episodes/{episode['id']}", headers=READ_AUTH)).json())["escalations"]
    assert page["notified_at"] and page["posted_at"] is None
    end = time.monotonic() + 10
    while (await (await client.get(f"/api/v1/episodes/{episode['id']}", headers=READ_AUTH)).json())["escalations"][0][
        "attempts"
    ] < 3:
        assert time.monotonic() < end, "the outbox stopped posting the page"
        await asyncio.sleep(0.05)
    assert len(received) == 1  # ... while apprise sent it once


async def test_an_escalation_that_reaches_nobody_stays_escalating_never_failed(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    fake_bot.status["reconnect"] = 500
    rule = {**RECONNECT, "verify": False, "max_attempts": 1}
    client = await start(  # Alertmanager down, no apprise URLs either
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [rule], escalation={"fallback_after_seconds": 0}
    )
    await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    episode = await wait_state(client, {"escalating", "recovered", "failed", "escalated"})
    assert episode["state"] == "escalating" and "HTTP 500" in episode["detail"], episode
    registry = client.app[keys.REGISTRY]
    failures = {"alertname": "TradingOpsRemediationFailed"}
    end = time.monotonic() + 10
    while registry.get_sample_value("tradingops_escalation_failures_total", failures) != 1:
        assert time.monotonic() < end, "the failed fallback was not counted"
        await asyncio.sleep(0.05)
    assert registry.get_sample_value("tradingops_escalations_pending") == 1
    assert registry.get_sample_value("tradingops_episodes_total", {"outcome": "failed"}) == 0
    listed = (await (await client.get("/api/v1/episodes?state=escalating", headers=READ_AUTH)).json())["episodes"]
    assert [e["id"] for e in listed] == [episode["id"]]


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
    await engine_settled(client.app)
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
    await client.post("/api/v1/alertmanager", json=payload(alert(starts_at=starts(5))), headers=AUTH)
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


async def test_another_bots_failing_series_does_not_hold_this_ones_verification(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus: str
) -> None:
    # The shared expression still returns a series, but it is bot-2's.
    still_failing = 'label_replace(vector(1), "instance", "bot-2", "", "")'
    verify = {"expr": still_failing, "deadline": "10s", "interval": "100ms"}
    short = {
        **RECONNECT,
        "name": "short",
        "max_attempts": 1,
        "on_failure": "none",
        "verify": {**verify, "deadline": "1s"},
    }
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(
            write_playbook(tmp_path, [{**short, "match": ['instance="bot-2"']}, {**RECONNECT, "verify": verify}])
        ),
        targets=bot_targets(fake_bot, tmp_path, "bot-1", "bot-2"),
        prometheus_url=prometheus,
    )
    client = await aiohttp_client(create_app(config))
    await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    assert (await wait_state(client, {"recovered", "failed", "escalated"}))["state"] == "recovered"
    # For bot-2 itself the same series means its fault is still there.
    bot2 = alert(fingerprint="f2", instance="bot-2")
    await client.post("/api/v1/alertmanager", json=payload(bot2), headers=AUTH)
    episode = await wait_state(client, {"recovered", "failed", "escalated"}, index=1)
    assert episode["state"] == "failed" and "1 series of this alert still match" in episode["detail"]


async def test_a_resolved_notification_during_verification_still_counts_a_real_recovery(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus: str
) -> None:
    # Polls an hour apart: only the resolved notification can end this verification in time. The condition holds
    # for 10 s: the verification's first check (when it begins) must find it still true, also on a busy machine
    # (1.5 s was passed by the time a loaded CI's reconciler began verifying, and a poll recovered it first).
    clears_at = time.time() + 10.0
    rule = {**RECONNECT, "verify": {"expr": f"vector(time()) < {clears_at:.3f}", "deadline": "2h", "interval": "1h"}}
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [rule], prometheus_url=prometheus)
    firing = alert()
    await client.post("/api/v1/alertmanager", json=payload(firing), headers=AUTH)
    await wait_state(client, {"verifying"})
    while time.time() < clears_at + 0.2:  # the condition clears, as Prometheus saw before resolving the alert
        await asyncio.sleep(0.05)
    await client.post("/api/v1/alertmanager", json=payload({**firing, "status": "resolved"}), headers=AUTH)
    episode = await wait_state(client, {"recovered", "resolved"})
    assert episode["state"] == "recovered" and "the alert resolved too" in episode["detail"]
    assert fake_bot.commands() == ["reconnect"]


# ---- runs that lose their claim, die, or leave processes behind ------------------------------------------------


def ledger_of(db: str) -> Ledger:
    return Ledger(make_engine(db))


def store_firing(ledger: Ledger, instance: str, rule: str = "reconnect", fingerprint: str = "f1") -> int:
    labels = {"alertname": "TradingBotBrokerDisconnected", "instance": instance}
    a = AlertIn("firing", fingerprint, utcnow(), labels["alertname"], labels, {}, "", rule, instance)
    ledger.store([NotificationIn("reconciler", "firing", "g", "{}", [a])])
    return int(max(e["id"] for e in ledger.list_episodes()))


async def test_a_resolved_alert_whose_run_died_with_no_attempts_left_is_closed_not_escalated(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    # The reconciler died mid-run on the last attempt; the resolved notification came meanwhile. After the restart
    # the episode is closed resolved: nobody is paged for an alert that is over.
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    ledger = ledger_of(migrated_sqlite)
    eid = store_firing(ledger, instance)
    gone = dead_owner("old")
    assert ledger.claim(eid, instance, gone, utcnow(), 3600) is not None
    attempt = ledger.start_attempt(eid, gone)
    ledger.start_step(attempt, 0, "bot", "bot command=reconnect", "safe", instance, True)
    labels = {"alertname": "TradingBotBrokerDisconnected", "instance": instance}
    starts = ledger.episode(eid)["starts_at"]  # type: ignore[index]
    resolved = AlertIn("resolved", "f1", starts, labels["alertname"], labels, {}, "", "reconnect", instance)
    assert ledger.store([NotificationIn("reconciler", "resolved", "g", "{}", [resolved])]).resolved_ids == [eid]
    client = await start(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [{**RECONNECT, "max_attempts": 1}], instances=(instance,)
    )
    episode = await wait_state(client, {"resolved", "escalated", "failed", "recovered"})
    assert (episode["state"], episode["detail"]) == ("resolved", "resolved before the run")
    assert fake_bot.calls == []
    registry = client.app[keys.REGISTRY]
    for name in ("escalations", "escalation_fallbacks", "escalation_failures"):
        sample = registry.get_sample_value(f"tradingops_{name}_total", {"alertname": "TradingOpsRemediationFailed"})
        assert sample == 0, name
    ledger.engine.dispose()


@pytest.mark.parametrize("how", ["renewal", "write"])
async def test_a_run_that_loses_its_claim_closes_its_own_attempt_and_steps(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, how: str
) -> None:
    # Another replica takes the episode over while this run acts. The run stops, and what it left `running` (an
    # attempt and steps counted against the budgets for an hour, shown as in progress forever) is closed by the run
    # itself: a step cut off mid-way has an unknown outcome, one that finished keeps it. The new holder's run is left
    # alone.
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    ledger = ledger_of(migrated_sqlite)
    rule = {**RECONNECT, "verify": {"expr": "vector(0)", "deadline": "5s", "interval": "100ms"}}
    if how == "renewal":  # the renewal finds the claim gone while the step is still running
        fake_bot.delay = 10.0
        rc: dict[str, Any] = {"lease_seconds": 0.6}
    else:  # the next write after the step (verification) finds it gone
        rc = {}

    def take_over(_command: str) -> None:
        (episode,) = ledger.list_episodes()
        assert ledger.set_episode(episode["id"], None, owner="thief:1", lease_until=utcnow() + timedelta(hours=1))

    fake_bot.on_call = take_over
    client = await start(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [rule], instances=(instance,), **rc)
    await client.post("/api/v1/alertmanager", json=payload(alert(instance=instance)), headers=AUTH)
    engine = client.app[keys.ENGINE]
    await until_async("the run stopped", lambda: fake_bot.calls and not engine.runs, 20)
    (episode,) = ledger.list_episodes()
    (attempt,) = episode["attempt_list"]
    if how == "renewal":
        assert attempt["outcome"] == "unknown" and attempt["detail"].startswith("claim lost: run stopped: ")
    else:
        assert attempt["outcome"] == "interrupted" and attempt["detail"] == "claim lost: run stopped"
    assert attempt["finished_at"] is not None
    (step,) = attempt["steps"]
    assert step["outcome"] == ("unknown" if how == "renewal" else "success")
    assert (episode["state"], episode["owner"]) == ("running", "thief:1")  # the new holder's, untouched
    ledger.engine.dispose()


async def test_an_internal_error_after_the_claim_was_lost_pages_nobody_and_leaves_the_new_run_alone(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = f"bot-lost-{uuid.uuid4().hex[:6]}"
    ledger = ledger_of(migrated_sqlite)
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [{**RECONNECT, "verify": False}],
        instances=(instance,),
        alertmanager_url=alertmanager.url,
    )

    real_finish_step = client.app[keys.LEDGER].finish_step
    broken: list[bool] = []

    def taken_over_then_broken(*args: Any) -> None:
        # Another replica took the episode over and runs its own attempt; then our ledger write fails (once: the
        # outcome, spooled first, is written when the spool is replayed).
        if broken:
            real_finish_step(*args)
            return
        broken.append(True)
        (episode,) = ledger.list_episodes()
        assert ledger.set_episode(episode["id"], None, owner="thief:1", lease_until=utcnow() + timedelta(hours=1))
        theirs = ledger.start_attempt(episode["id"], "thief:1")
        ledger.start_step(theirs, 0, "bot", "bot command=reconnect", "safe", instance, True)
        raise RuntimeError("the ledger broke mid-step")

    monkeypatch.setattr(client.app[keys.LEDGER], "finish_step", taken_over_then_broken)
    await client.post("/api/v1/alertmanager", json=payload(alert(instance=instance)), headers=AUTH)
    engine = client.app[keys.ENGINE]
    await until_async("the run stopped", lambda: fake_bot.calls and not engine.runs, 20)
    (episode,) = ledger.list_episodes()
    assert (episode["state"], episode["owner"]) == ("running", "thief:1")
    attempts = {a["owner"]: a for a in episode["attempt_list"]}
    assert attempts["thief:1"]["outcome"] == "running" and attempts["thief:1"]["steps"][0]["outcome"] == "running"
    assert attempts[client.app[keys.OWNER]]["outcome"] == "failure"
    posted = [
        a
        for a in alertmanager.get("alerts")
        if a["labels"]["alertname"] == "TradingOpsRemediationFailed" and a["labels"]["instance"] == instance
    ]
    assert posted == []
    ledger.engine.dispose()


async def test_a_leftover_process_of_a_run_another_replica_swept_is_killed_here_before_the_retry(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    # A reconciler on this host died while its step's process group (a restart script, say) still ran. Another
    # replica's sweep found the run dead. The retry must not act beside that process: this host's reconciler
    # kills it first (only a reconciler on its host can), and only then is the target claimed again.
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    ledger = ledger_of(migrated_sqlite)
    eid = store_firing(ledger, instance)
    gone = dead_owner("old")
    assert ledger.claim(eid, instance, gone, utcnow(), 3600) is not None
    attempt = ledger.start_attempt(eid, gone)
    step = ledger.start_step(attempt, 0, "exec", "restart the bot", "disruptive", instance, True)
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        identity = ProcessId.of(leftover.pid)
        assert identity is not None
        ledger.set_step_process(step, identity.token())
        assert ledger.sweep(utcnow(), make_owner("replica-b")).interrupted == [eid]  # the other replica
        alive_at_call: list[bool] = []
        fake_bot.on_call = lambda _command: alive_at_call.append(leftover.poll() is None)
        client = await start(
            aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [{**RECONNECT, "verify": False}], instances=(instance,)
        )
        episode = await wait_state(client, {"recovered", "escalated", "failed"})
        assert episode["state"] == "recovered"
        assert alive_at_call == [False]  # the retry acted once, after the leftover was gone
        assert leftover.wait(5) == -signal.SIGKILL
        first = episode["attempts"][0]["steps"][0]
        # Its step was running when its run died: its outcome is unknown, and the safe step's rule retries it.
        assert first["outcome"] == "unknown" and "1 process(es)" in first["output"] and "killed" in first["output"]
        assert client.app[keys.REGISTRY].get_sample_value("tradingops_leftover_processes_killed_total") == 1
        assert ledger.fenced_steps(utcnow()) == []
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()
        ledger.engine.dispose()


async def test_runs_and_lease_renewals_never_wait_behind_the_default_thread_pool(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    # asyncio's default pool also runs apprise notifications (blocking, possibly for minutes) and process kills.
    # With every one of its threads stuck, runs still write their record and renew their leases on time.
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    fake_bot.delay = 1.0  # the step spans several renewals of a 0.6 s lease
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [{**RECONNECT, "verify": False}],
        instances=(instance,),
        lease_seconds=0.6,
    )
    ledger = client.app[keys.LEDGER]
    loop = asyncio.get_running_loop()
    release = threading.Event()
    stuck = [loop.run_in_executor(None, release.wait, 60) for _ in range(64)]  # more than the pool's threads
    try:
        await client.post("/api/v1/alertmanager", json=payload(alert(instance=instance)), headers=AUTH)
        await until_async("the run recovered", lambda: ledger.list_episodes()[0]["state"] == "recovered", 30)
        (episode,) = ledger.list_episodes()
        assert [a["outcome"] for a in episode["attempt_list"]] == ["success"]  # never interrupted: leases held
        assert fake_bot.commands() == ["reconnect"]
    finally:
        release.set()
        await asyncio.gather(*stuck)


async def test_no_step_runs_on_a_bot_mid_startup_not_even_the_silence_before_its_restart(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bot-loop-restart's shape (a silence of the restart's own TradingBotDown, then the restart) on a bot that says it
    is starting (a host that came back, its startup reconciliation): the phase is asked before any step, so no
    silence is created and nothing is sent; the run stays parked. Once the bot trades, the rule runs as written."""
    monkeypatch.setattr(gates, "STARTING_RECHECK_SECONDS", 0.3)
    fake_bot.phase = "starting"
    instance = f"bot-starting-{uuid.uuid4().hex[:6]}"
    held = await asyncio.to_thread(alertmanager.fire, {"alertname": "TradingBotHeartbeatStale", "instance": instance})
    rule = {
        **RECONNECT,
        "name": "loop-restart",
        "match": ['alertname="TradingBotHeartbeatStale"'],
        "verify": False,
        "steps": [
            {"action": "silence", "alertname": "TradingBotDown", "duration": "3m", "comment": "restarted (test)"},
            {"action": "bot", "command": "reconnect"},
        ],
    }
    client = await start(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [rule],
        instances=(instance,),
        alertmanager_url=alertmanager.url,
    )
    await client.post("/api/v1/alertmanager", json=webhook(held), headers=AUTH)

    async def parked() -> dict[str, Any] | None:
        episodes = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        return next((e for e in episodes if e["state"] == "waiting" and "is starting" in e["detail"]), None)

    episode = await until_async("the run parked while the bot starts", parked, 20, 0.05, tolerate=())
    assert episode["detail"].startswith(f"bot {instance} is starting (phase starting)"), episode
    # Looked at again while it starts (its phase read each time), and nothing done meanwhile.
    await until_async("the bot looked at again", lambda: asyncio.sleep(0, len(fake_bot.reads) >= 3), 20, 0.05)
    assert fake_bot.calls == []
    ours = [s for s in await asyncio.to_thread(alertmanager.get, "silences") if "restarted (test)" in s["comment"]]
    assert ours == []
    one = await (await client.get(f"/api/v1/episodes/{episode['id']}", headers=READ_AUTH)).json()
    assert [a["outcome"] for a in one["attempts"]] == ["skipped"]  # recorded once, however often it looked

    fake_bot.phase = "trading"
    episode = await wait_state(client, {"recovered", "resolved", "failed", "escalated"})
    assert episode["state"] == "recovered", episode
    assert fake_bot.commands() == ["reconnect"]
    ours = [s for s in await asyncio.to_thread(alertmanager.get, "silences") if "restarted (test)" in s["comment"]]
    assert len(ours) == 1


async def test_a_cooldown_holds_only_the_steps_that_are_not_protective(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    """A rule that reduces risk, pages, then reconnects (memory-leak-restart's shape), with a cooldown: the alert ends
    and fires again inside it. The second episode's reduce_only and its page run at once (the page says so), its
    reconnect waits for the cooldown and then runs in the same attempt; nothing runs twice."""
    instance = f"bot-mixed-{uuid.uuid4().hex[:6]}"
    labels = {"alertname": "TradingBotMemoryFillingUp", "instance": instance}
    rule = {
        **RECONNECT,
        "name": "reduce-then-reconnect",
        "match": ['alertname="TradingBotMemoryFillingUp"'],
        "cooldown": "15s",
        "verify": False,
        "steps": [
            {"action": "bot", "command": "reduce_only"},
            {"action": "escalate", "alertname": "TradingOpsBotFlattened"},
            {"action": "bot", "command": "reconnect"},
        ],
    }
    am = alertmanager.url
    client = await start(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, [rule], instances=(instance,), alertmanager_url=am
    )
    first = await asyncio.to_thread(alertmanager.fire, labels)
    await client.post("/api/v1/alertmanager", json=webhook(first), headers=AUTH)
    assert (await wait_state(client, {"recovered", "failed", "escalated"}))["state"] == "recovered"
    assert fake_bot.commands() == ["reduce_only", "reconnect"]
    await asyncio.to_thread(alertmanager.resolve, first)
    await until_async("the first one resolved", lambda: _not_firing(alertmanager, labels), deadline=30)

    second = await asyncio.to_thread(alertmanager.fire, labels)
    assert second["startsAt"] != first["startsAt"]
    await client.post("/api/v1/alertmanager", json=webhook(second), headers=AUTH)
    # Within the cooldown: the protective step and the page ran, the reconnect waits.
    waiting = await wait_state(client, {"waiting"}, index=1)
    assert waiting["detail"].startswith("cooldown of rule reduce-then-reconnect"), waiting
    assert fake_bot.commands() == ["reduce_only", "reconnect", "reduce_only"]
    pages = [
        a
        for a in await asyncio.to_thread(alertmanager.get, "alerts")
        if a["labels"]["alertname"] == "TradingOpsBotFlattened"
    ]
    newest = max(pages, key=lambda a: a["startsAt"])["annotations"]["description"]
    assert "its protective steps run now (bot command=reduce_only" in newest, newest
    assert "the others wait for the cooldown (bot command=reconnect)" in newest, newest
    # The cooldown over: the rest of the same attempt, nothing run twice.
    done = await wait_state(client, {"recovered", "failed", "escalated"}, index=1)
    assert done["state"] == "recovered", done
    assert fake_bot.commands() == ["reduce_only", "reconnect", "reduce_only", "reconnect"]
    one = await (await client.get(f"/api/v1/episodes/{done['id']}", headers=READ_AUTH)).json()
    (attempt,) = one["attempts"]
    assert [s["action"] for s in attempt["steps"]] == ["bot", "escalate", "bot"]
    assert all(s["outcome"] == "success" for s in attempt["steps"]), attempt


async def _not_firing(alertmanager: Alertmanager, labels: dict[str, str]) -> bool:
    alerts = await asyncio.to_thread(alertmanager.get, "alerts")
    return not any(all(a["labels"].get(k) == v for k, v in labels.items()) for a in alerts)
