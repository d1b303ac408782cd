"""Verification takes its expression from the playbook or from Prometheus's own rules, never from the webhook.

Needs the `prometheus` binary: a Prometheus with alerting rules of its own is started here."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    AUTH,
    PROMETHEUS_BIN,
    READ_AUTH,
    FakeBot,
    alert,
    bot_targets,
    free_port,
    make_config,
    payload,
    stop,
    wait_http,
    write_playbook,
)

from trading_ops.reconciler.app import create_app

pytestmark = [pytest.mark.prometheus]

# What a sender with the webhook token put in generatorURL: an expression that is always empty, so any check run
# on it says "recovered".
ALWAYS_EMPTY = 'count({__name__=~".+"}) > 1e12'
HOSTILE_URL = "http://prometheus/graph?" + urllib.parse.urlencode({"g0.expr": ALWAYS_EMPTY, "g0.tab": "1"})
STILL_FAILING = 'label_replace(vector(1), "instance", "bot-1", "", "")'
RULES = {
    "groups": [
        {
            "name": "verify-test",
            "rules": [
                # The fault is still there for bot-1.
                {"alert": "TestStillFailing", "expr": STILL_FAILING, "labels": {"severity": "critical"}},
                # The condition is gone.
                {"alert": "TestCleared", "expr": "vector(1) < 0", "labels": {"severity": "critical"}},
                # Two tiers of one name: the alert's severity says which one it came from.
                {"alert": "TestTiered", "expr": "vector(1) < 0", "labels": {"severity": "warning"}},
                {"alert": "TestTiered", "expr": STILL_FAILING, "labels": {"severity": "critical"}},
            ],
        }
    ]
}


@pytest.fixture(scope="module")
def prometheus_with_rules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert PROMETHEUS_BIN is not None, "prometheus is not installed (apt-get install prometheus)"
    tmp = tmp_path_factory.mktemp("prometheus-rules")
    (tmp / "rules.yml").write_text(yaml.safe_dump(RULES))
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump({"global": {"evaluation_interval": "1s"}, "rule_files": [str(tmp / "rules.yml")]})
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            PROMETHEUS_BIN,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "prometheus.log", "wb"),  # noqa: SIM115
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc=proc, deadline=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


RULE = {
    "name": "fix",
    "match": ['alertname=~"Test.*"'],
    "cooldown": 0,
    "max_attempts": 1,
    "on_failure": "none",
    "verify": {"deadline": "1s", "interval": "200ms"},
    "steps": [{"action": "bot", "command": "reconnect"}],
}


async def run_one(
    aiohttp_client: Any, tmp_path: Path, db: str, bot: FakeBot, prometheus: str, body: dict[str, Any], **rule: Any
) -> dict[str, Any]:
    config = make_config(
        tmp_path,
        db,
        playbook=str(write_playbook(tmp_path, [{**RULE, **rule}])),
        targets=bot_targets(bot, tmp_path),
        prometheus_url=prometheus,
    )
    client = await aiohttp_client(create_app(config))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    end = time.monotonic() + 20
    while True:
        (episode,) = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        if episode["closed_at"]:
            return episode  # type: ignore[no-any-return]
        assert time.monotonic() < end, episode
        await asyncio.sleep(0.05)


async def test_an_expression_in_the_generator_url_never_verifies_a_recovery(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus_with_rules: str
) -> None:
    body = payload(alert("TestStillFailing", severity="critical", generator_url=HOSTILE_URL))
    episode = await run_one(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body)
    assert episode["state"] == "failed", episode
    assert fake_bot.commands() == ["reconnect"]
    detail = episode["attempts"][0]["detail"]
    assert "1 series of this alert still match" in detail and STILL_FAILING in detail
    assert "[expression from prometheus_rules]" in detail and "1e12" not in detail


async def test_the_rules_expression_verifies_a_real_recovery(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus_with_rules: str
) -> None:
    body = payload(alert("TestCleared", severity="critical", generator_url=HOSTILE_URL))
    episode = await run_one(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body)
    assert episode["state"] == "recovered", episode
    assert (
        episode["attempts"][0]["detail"]
        == "vector(1) < 0 returned nothing for this alert [expression from prometheus_rules]"
    )


@pytest.mark.parametrize(("severity", "state"), [("critical", "failed"), ("warning", "recovered")])
async def test_the_rule_of_the_alerts_own_tier_is_the_one_checked(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    prometheus_with_rules: str,
    severity: str,
    state: str,
) -> None:
    body = payload(alert("TestTiered", severity=severity))
    episode = await run_one(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body)
    assert episode["state"] == state, episode


async def test_no_expression_anywhere_fails_safe(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus_with_rules: str
) -> None:
    # Prometheus has no rule of that name: the generatorURL's expression is not a fallback.
    body = payload(alert("TestUnknownToPrometheus", generator_url=HOSTILE_URL))
    episode = await run_one(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body)
    assert episode["state"] == "failed", episode
    assert (
        "cannot verify: no verify.expr, and Prometheus has no alerting rule TestUnknownToPrometheus"
        in (episode["detail"])
    )


async def test_prometheus_away_fails_safe(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    body = payload(alert("TestCleared", generator_url=HOSTILE_URL))
    episode = await run_one(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, f"http://127.0.0.1:{free_port()}", body
    )
    assert episode["state"] == "failed" and "alerting rules could not be read" in episode["detail"], episode


async def test_the_playbooks_expression_is_recorded_as_such(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus_with_rules: str
) -> None:
    body = payload(alert("TestStillFailing", severity="critical", generator_url=HOSTILE_URL))
    verify = {"expr": 'vector(1) < 0 and on() absent(nothing{instance="${instance}"})', "deadline": "1s"}
    episode = await run_one(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body, verify=verify
    )
    assert episode["state"] == "recovered", episode
    assert episode["attempts"][0]["detail"].endswith("[expression from playbook]")
    assert 'instance="bot-1"' in episode["attempts"][0]["detail"]


async def test_every_query_is_bounded_by_prometheus_and_by_the_client(aiohttp_server: Any) -> None:
    import aiohttp
    from aiohttp import web

    from trading_ops.clients.prometheus import QUERY_TIMEOUT_SECONDS, TIMEOUT, PrometheusClient

    seen: list[dict[str, str]] = []

    async def query(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        assert await PrometheusClient(session, str(server.make_url(""))).query("up == 0") == []
    assert seen == [{"query": "up == 0", "timeout": f"{QUERY_TIMEOUT_SECONDS:g}s"}]
    assert TIMEOUT.total is not None and TIMEOUT.total > QUERY_TIMEOUT_SECONDS
