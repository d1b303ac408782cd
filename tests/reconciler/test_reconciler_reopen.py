"""An episode that ended recovered while its alert keeps firing is reopened when its condition returns: the rule's
`reopen_when` checked by the reconciler itself, without waiting for Alertmanager's repeat_interval (nor a resend,
which starts nothing while the condition stays away), and never once the alert resolved.

Against a real Alertmanager (it holds the alert: fingerprint, startsAt) and a real Prometheus scraping a bot's
position from a /metrics endpoint of the test's; the bot's control API is the test's (its flatten zeroes the
position). Needs the `prometheus` and `prometheus-alertmanager` binaries; the fixtures start them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from alertmanager_server import Alertmanager
from engine_runs import engine_settled
from fake_bot import FakeBot, bot_targets
from polling import until_async
from ports import free_port
from prometheus_server import start_prometheus
from reconciler_server import AUTH, READ_AUTH, make_config, write_playbook
from server_process import stop, wait_http
from webhook_payloads import alert, payload

from trading_ops.reconciler import reopen
from trading_ops.reconciler.app import create_app

pytestmark = [pytest.mark.prometheus, pytest.mark.alertmanager]

POSITION = 'max(test_position_quantity{instance="${instance}"}) > 0'
RULE = {
    "name": "loss-limit-flatten",
    "match": ['alertname="TradingBotDailyLossBreached"'],
    "allow_destructive": True,
    "max_attempts": 1,
    "cooldown": "1h",  # another episode's: a reopened one is the same episode, never held by it
    "steps": [{"action": "bot", "command": "flatten"}],
    "verify": {"expr": POSITION, "deadline": "20s", "interval": "200ms"},
    "reopen_when": POSITION,
}


class Position:
    """A bot's position as its /metrics says it, scraped by a real Prometheus every 200 ms."""

    def __init__(self) -> None:
        self.quantity = 0.0
        self.instance = ""

    def app(self) -> web.Application:
        async def metrics(_request: web.Request) -> web.Response:
            text = f'test_position_quantity{{instance="{self.instance}"}} {self.quantity}\n'
            return web.Response(text=text, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app


@pytest.fixture
async def position(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[tuple[Position, str]]:
    """(the position, the URL of a Prometheus that scrapes it)."""
    held = Position()
    server = await aiohttp_server(held.app())
    config = tmp_path / "prometheus" / "prometheus.yml"
    config.parent.mkdir()
    config.write_text(
        "global: {scrape_interval: 200ms, evaluation_interval: 200ms}\n"
        "scrape_configs: [{job_name: bot, honor_labels: true, "
        f"static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]}}]\n"
    )
    port = free_port()
    proc = start_prometheus(config, tmp_path / "prometheus" / "data", port)
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/-/ready", proc=proc, deadline=30)
        yield held, f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


async def episodes(client: Any) -> list[dict[str, Any]]:
    listed = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
    return [await (await client.get(f"/api/v1/episodes/{e['id']}", headers=READ_AUTH)).json() for e in listed]


async def scraped(prometheus: str, client: Any, instance: str, quantity: float) -> None:
    """Until Prometheus has scraped the position at `quantity`."""
    session = client.session

    async def seen() -> bool:
        query = {"query": f'test_position_quantity{{instance="{instance}"}}'}
        async with session.get(f"{prometheus}/api/v1/query", params=query) as resp:
            result = (await resp.json())["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) == quantity

    await until_async(f"the position {quantity} scraped", seen, 20, 0.05, tolerate=())


async def breached_bot(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    position: tuple[Position, str],
) -> tuple[str, dict[str, Any], Any]:
    """A bot holding 0.4065 (flat once told to flatten) whose loss alert fires in Alertmanager, and a reconciler
    under RULE that sees the position scraped: (its instance, the alert as Alertmanager holds it, the client)."""
    held_position, prometheus = position
    instance = f"bot-{uuid.uuid4().hex[:6]}"
    held_position.instance, held_position.quantity = instance, 0.4065
    fake_bot.on_call = lambda command: setattr(held_position, "quantity", 0.0) if command == "flatten" else None
    labels = {"alertname": "TradingBotDailyLossBreached", "instance": instance, "severity": "critical"}
    held = await asyncio.to_thread(alertmanager.fire, labels)
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, [RULE])),
        targets=bot_targets(fake_bot, tmp_path, instance),
        prometheus_url=prometheus,
        alertmanager_url=alertmanager.url,
    )
    client = await aiohttp_client(create_app(config))
    await scraped(prometheus, client, instance, 0.4065)
    return instance, held, client


async def test_a_recovered_episode_is_reopened_when_its_condition_returns_while_the_alert_keeps_firing(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    position: tuple[Position, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reopen, "CHECK_SECONDS", 0.2)
    held_position, prometheus = position
    instance, held, client = await breached_bot(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, alertmanager, position
    )
    notification = payload(
        alert(
            "TradingBotDailyLossBreached",
            fingerprint=held["fingerprint"],
            starts_at=held["startsAt"],
            instance=instance,
            severity="critical",
        )
    )
    assert (await client.post("/api/v1/alertmanager", json=notification, headers=AUTH)).status == 200

    async def recovered(runs: int) -> dict[str, Any] | None:
        found = await episodes(client)
        done = [e for e in found if e["state"] == "recovered" and fake_bot.commands().count("flatten") == runs]
        return done[0] if done else None

    first = await until_async("the flatten verified", lambda: recovered(1), 30, 0.05, tolerate=())
    assert [a["outcome"] for a in first["attempts"]] == ["success"], first

    # The condition stays away: nothing reopens it, Alertmanager's resend of the alert (repeat_interval) included.
    await scraped(prometheus, client, instance, 0.0)
    assert (await client.post("/api/v1/alertmanager", json=notification, headers=AUTH)).status == 200
    await asyncio.sleep(1.0)  # five checks of the reopener
    await engine_settled(client.app)
    assert fake_bot.commands() == ["flatten"]
    assert [e["state"] for e in await episodes(client)] == ["recovered"]

    # A position comes back while the alert keeps firing, with no notification at all: the same episode is reopened
    # and its flatten runs once more, verified.
    came_back = time.monotonic()
    held_position.quantity = 0.4065
    again = await until_async("the flatten run once more", lambda: recovered(2), 30, 0.05, tolerate=())
    reopened_seconds = time.monotonic() - came_back
    assert again["id"] == first["id"] and len(await episodes(client)) == 1
    assert [a["outcome"] for a in again["attempts"]] == ["success", "reopened", "success"], again["attempts"]
    assert again["attempts"][1]["detail"].startswith("reopened: its condition returned ("), again
    print(f"position back -> flatten verified again: {reopened_seconds:.2f} s (Prometheus scrapes every 0.2 s)")

    # The alert resolves: a position that comes back then is not this episode's any more.
    await asyncio.to_thread(alertmanager.resolve, held)
    resolved = payload(
        alert(
            "TradingBotDailyLossBreached",
            status="resolved",
            fingerprint=held["fingerprint"],
            starts_at=held["startsAt"],
            instance=instance,
            severity="critical",
        )
    )
    assert (await client.post("/api/v1/alertmanager", json=resolved, headers=AUTH)).status == 200
    held_position.quantity = 0.4065
    await scraped(prometheus, client, instance, 0.4065)
    await asyncio.sleep(1.0)
    await engine_settled(client.app)
    assert fake_bot.commands() == ["flatten", "flatten"]
    (episode,) = await episodes(client)
    assert episode["state"] == "recovered" and episode["resolved_at"] is not None, episode


async def test_an_alert_firing_on_with_a_later_start_nobody_notified_gets_an_episode_that_reopens_the_recovered_one(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    position: tuple[Position, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole stack restarted while the loss alert fired: Prometheus gave it a new start, and Alertmanager, which
    had notified its group, sends nothing until repeat_interval. A position back then is asked about (run) at once, in
    a new episode of that start which says which episode it reopens; Alertmanager's notification of it, when it
    comes, is its resend (nothing runs twice)."""
    monkeypatch.setattr(reopen, "CHECK_SECONDS", 0.2)
    held_position, prometheus = position
    instance, held, client = await breached_bot(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, alertmanager, position
    )

    def notified(alert_held: dict[str, Any]) -> dict[str, Any]:
        return payload(
            alert(
                "TradingBotDailyLossBreached",
                fingerprint=alert_held["fingerprint"],
                starts_at=alert_held["startsAt"],
                instance=instance,
                severity="critical",
            )
        )

    assert (await client.post("/api/v1/alertmanager", json=notified(held), headers=AUTH)).status == 200

    async def closed_runs(runs: int, count: int) -> list[dict[str, Any]] | None:
        found = await episodes(client)
        done = len(found) == count and all(e["closed_at"] for e in found)
        return found if done and fake_bot.commands().count("flatten") == runs else None

    (first,) = await until_async("the flatten verified", lambda: closed_runs(1, 1), 30, 0.05, tolerate=())
    assert first["state"] == "recovered", first

    # The restart: Alertmanager forgets the alert (its end never reached the reconciler), Prometheus sends it again
    # with a new start, and no notification comes. The position comes back.
    await asyncio.to_thread(alertmanager.resolve, held)
    await asyncio.sleep(0.05)
    again = await asyncio.to_thread(
        alertmanager.fire, {"alertname": "TradingBotDailyLossBreached", "instance": instance, "severity": "critical"}
    )
    assert again["fingerprint"] == held["fingerprint"] and again["startsAt"] != held["startsAt"]
    came_back = time.monotonic()
    held_position.quantity = 0.4065
    found = await until_async("a new episode run and verified", lambda: closed_runs(2, 2), 30, 0.05, tolerate=())
    print(f"position back -> new episode verified: {time.monotonic() - came_back:.2f} s")
    latest, earlier = found  # newest first
    assert earlier["id"] == first["id"] and earlier["state"] == "recovered"
    assert latest["state"] == "recovered" and latest["fingerprint"] == first["fingerprint"], latest
    assert latest["starts_at"] != first["starts_at"] and latest["rule"] == "loss-limit-flatten"
    detail = await (await client.get(f"/api/v1/episodes/{latest['id']}", headers=READ_AUTH)).json()
    assert [a["outcome"] for a in detail["attempts"]] == ["success"], detail

    # Alertmanager's notification of it at last (repeat_interval): a resend, nothing runs again.
    assert (await client.post("/api/v1/alertmanager", json=notified(again), headers=AUTH)).status == 200
    await asyncio.sleep(1.0)
    await engine_settled(client.app)
    assert fake_bot.commands() == ["flatten", "flatten"] and len(await episodes(client)) == 2
