"""One fault, one remedy: a rule whose alert is the aftermath of a recovery under way or just verified on the same
bot (`defers_to`: stream-resubscribe after broker-reconnect) does not act on it, and the ledger says why; an alert
that outlives the deferral is acted on as usual. A bot control API of the test's, a real Prometheus (the reconnect's
verification) and a real Alertmanager (the deferred run asks it whether the alert still fires).

Needs the `prometheus` and `prometheus-alertmanager` binaries; the fixtures start them."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from alertmanager_server import Alertmanager
from engine_runs import engine_settled
from fake_bot import FakeBot, bot_targets
from polling import until_async
from reconciler_server import AUTH, READ_AUTH, make_config, write_playbook
from webhook_payloads import alert, payload

from trading_ops.reconciler.app import create_app

pytestmark = [pytest.mark.prometheus, pytest.mark.alertmanager]

# The bot's venue link came back: its reconnect is verified about a second after it ran (the expression clears).
RECONNECT = {
    "name": "broker-reconnect",
    "match": ['alertname="TradingBotBrokerDisconnected"'],
    "cooldown": 0,
    "verify": {"deadline": "20s", "interval": "100ms"},
    "steps": [{"action": "bot", "command": "reconnect"}],
}
# The packaged stream-resubscribe, its deferral shortened to 2 s.
RESUBSCRIBE = {
    "name": "stream-resubscribe",
    "match": ['alertname="TradingBotStreamChannelStale"'],
    "cooldown": 0,
    "verify": False,
    "defers_to": {"rules": ["broker-reconnect"], "within": "2s"},
    "steps": [{"action": "bot", "command": "resubscribe"}, {"action": "bot", "command": "reconnect"}],
}
CLOSED = {"recovered", "resolved", "failed", "escalated", "skipped"}


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


async def episode_of(client: Any, alertname: str) -> dict[str, Any] | None:
    listed = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
    found = [e for e in listed if e["alertname"] == alertname]
    if not found:
        return None
    detail = await client.get(f"/api/v1/episodes/{found[0]['id']}", headers=READ_AUTH)
    return dict(await detail.json())


async def closed(client: Any, alertname: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        episode = await episode_of(client, alertname)
        return episode if episode and episode["state"] in CLOSED else None

    return dict(await until_async(f"the {alertname} episode closed", probe, deadline=60))


async def disconnect_then_stale(
    aiohttp_client: Any, tmp_path: Path, db: str, bot: FakeBot, alertmanager: Alertmanager, prometheus: str
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The bot's venue link dropped (TradingBotBrokerDisconnected) and, while broker-reconnect's run is under way,
    its book channel found stale (TradingBotStreamChannelStale: it aged during the outage). Both alerts held in the
    real Alertmanager and sent to the reconciler: (its client, the stale alert as held, the reconnect's episode
    once recovered)."""
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    reconnect = {**RECONNECT, "verify": {**RECONNECT["verify"], "expr": f"vector(time()) < {time.time() + 1.5:.3f}"}}
    config = make_config(
        tmp_path,
        db,
        playbook=str(write_playbook(tmp_path, [reconnect, RESUBSCRIBE])),
        targets=bot_targets(bot, tmp_path, instance),
        prometheus_url=prometheus,
        alertmanager_url=alertmanager.url,
    )
    client = await aiohttp_client(create_app(config))
    down = await asyncio.to_thread(
        alertmanager.fire, {"alertname": "TradingBotBrokerDisconnected", "instance": instance, "channel": "market_data"}
    )
    stale = await asyncio.to_thread(
        alertmanager.fire,
        {"alertname": "TradingBotStreamChannelStale", "instance": instance, "channel": "book", "symbol": "BTC/USD"},
    )
    assert (await client.post("/api/v1/alertmanager", json=webhook(down), headers=AUTH)).status == 200
    await until_async("the reconnect sent", lambda: bot.commands() == ["reconnect"], deadline=30)
    assert (await client.post("/api/v1/alertmanager", json=webhook(stale), headers=AUTH)).status == 200
    # The venue link is back: the reconnect's verification sees it, then the disconnection resolves.
    recovered = await closed(client, "TradingBotBrokerDisconnected")
    assert recovered["state"] == "recovered", recovered
    await asyncio.to_thread(alertmanager.resolve, down)
    await client.post("/api/v1/alertmanager", json=webhook(down, "resolved"), headers=AUTH)
    return client, stale, recovered


async def test_a_channel_silent_from_the_outage_is_left_to_the_reconnects_recovery(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    prometheus: str,
) -> None:
    client, stale, recovered = await disconnect_then_stale(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, alertmanager, prometheus
    )

    # The stream rule has looked at its alert (a loaded machine's worker had not yet, and the resolution closed the
    # episode before any attempt: nothing acted, but nothing said why either).
    async def deferred() -> dict[str, Any] | None:
        episode = await episode_of(client, "TradingBotStreamChannelStale")
        return episode if episode and episode["attempts"] else None

    await until_async("the stream rule's first look", deferred, deadline=60)
    # The channel's first message after the reconnect: the stale alert resolves within the deferral.
    await asyncio.to_thread(alertmanager.resolve, stale)
    await client.post("/api/v1/alertmanager", json=webhook(stale, "resolved"), headers=AUTH)
    episode = await closed(client, "TradingBotStreamChannelStale")
    await engine_settled(client.app)
    # One fault, one remedy: the reconnect, once.
    assert fake_bot.commands() == ["reconnect"]
    assert episode["state"] == "resolved", episode
    # The ledger says why the stream rule did not act: nothing executed, deferred to the reconnect's episode.
    assert episode["attempts"], episode
    assert all(a["outcome"] == "skipped" and a["steps"] == [] for a in episode["attempts"]), episode["attempts"]
    why = " ".join(a["detail"] for a in episode["attempts"])
    assert f"episode {recovered['id']} (broker-reconnect, TradingBotBrokerDisconnected" in why, why
    assert "defers to it (defers_to)" in why, why


async def test_a_channel_still_silent_after_the_deferral_is_a_fault_of_its_own(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    prometheus: str,
) -> None:
    client, _stale, recovered = await disconnect_then_stale(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, alertmanager, prometheus
    )
    # Still firing 2 s after the reconnect's recovery was verified: the stream rule acts, once.
    episode = await closed(client, "TradingBotStreamChannelStale")
    await engine_settled(client.app)
    assert episode["state"] == "recovered", episode
    assert fake_bot.commands() == ["reconnect", "resubscribe", "reconnect"]
    skipped = [a for a in episode["attempts"] if a["outcome"] == "skipped"]
    acted = [a for a in episode["attempts"] if a["outcome"] == "success"]
    assert skipped and len(acted) == 1, episode["attempts"]
    assert any(f"the aftermath of episode {recovered['id']}" in a["detail"] for a in skipped), skipped


async def test_one_fault_that_fired_an_alert_per_channel_is_remedied_once(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    prometheus: str,
) -> None:
    """The bot's venue link dropped: TradingBotBrokerDisconnected for its orders and for its market data at once, one
    rule for both. The first episode's reconnect heals both channels and is verified; the second, which waited behind
    it (one run per target at a time), finds its condition gone in Prometheus and is closed recovered without acting,
    the ledger naming the episode whose remedy it was. One fault, one reconnect (before: a second reconnect tore down
    the connection that had just come back)."""
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    # The condition holds until the venue link is back, 1.5 s from now, for both channels' series alike.
    reconnect = {**RECONNECT, "verify": {**RECONNECT["verify"], "expr": f"vector(time()) < {time.time() + 1.5:.3f}"}}
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, [reconnect])),
        targets=bot_targets(fake_bot, tmp_path, instance),
        prometheus_url=prometheus,
        alertmanager_url=alertmanager.url,
    )
    client = await aiohttp_client(create_app(config))
    name = "TradingBotBrokerDisconnected"
    both = payload(
        alert(name, fingerprint=uuid.uuid4().hex[:16], instance=instance, channel="orders"),
        alert(name, fingerprint=uuid.uuid4().hex[:16], instance=instance, channel="market_data"),
    )
    assert (await client.post("/api/v1/alertmanager", json=both, headers=AUTH)).status == 200

    async def both_closed() -> list[dict[str, Any]] | None:
        listed = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        mine = sorted((e for e in listed if e["alertname"] == name), key=lambda e: e["id"])
        return mine if len(mine) == 2 and all(e["state"] in CLOSED for e in mine) else None

    first, second = await until_async("both channels' episodes closed", both_closed, deadline=60)
    await engine_settled(client.app)
    assert fake_bot.commands() == ["reconnect"]
    assert first["state"] == "recovered" and second["state"] == "recovered", (first, second)
    assert second["detail"].startswith(f"healed by the remedy of episode {first['id']} (broker-reconnect"), second
    assert "nothing executed" in second["detail"], second
