"""`reconciler.prometheus_url` naming both members of a Prometheus HA pair: a query that fails on one member is asked
of the other before it counts as failed, so one member killed mid-verification still ends the episode `recovered`.
And the pair's two copies of one firing (their startsAt seconds apart) are one episode: acted on once.

Needs the `prometheus` binary: two real Prometheus servers, each scraping the same exporter (served here, its gauge
set by the test as a bot's fault would be) every second at offsets of their own, as a pair does."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from fake_bot import FakeBot, bot_targets
from polling import until_async
from ports import free_port
from prometheus_server import start_prometheus
from reconciler_server import AUTH, READ_AUTH, make_config, write_playbook
from server_process import stop, wait_http
from system_binaries import PROMETHEUS_BIN
from webhook_payloads import alert, payload

from trading_ops.clients.prometheus import PrometheusClient, PrometheusError
from trading_ops.config import ConfigError
from trading_ops.reconciler.app import create_app
from trading_ops.stack.status import fetch

pytestmark = [pytest.mark.prometheus]

FAULT = 'test_fault{instance="${instance}"} > 0'
# An alert both members fire, for the status line to read.
RULES = {"groups": [{"name": "pair", "rules": [{"alert": "TestPairFiring", "expr": "vector(1)"}]}]}
# The fault's own alert, with its `for:`: two firings of it are at least that far apart.
FAULT_RULE = {"alert": "TestFault", "expr": "test_fault > 0", "for": "10s"}


@dataclass
class Pair:
    exporter: dict[str, float]  # what the exporter serves: instance -> the fault gauge
    urls: list[str]
    procs: list[subprocess.Popen[bytes]]

    def kill(self, member: int) -> None:
        os.kill(self.procs[member].pid, signal.SIGKILL)
        self.procs[member].wait(10)


@pytest.fixture
async def pair(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Pair]:
    assert PROMETHEUS_BIN is not None, "prometheus is not installed (apt-get install prometheus)"
    faults: dict[str, float] = {}

    async def metrics(request: web.Request) -> web.Response:
        lines = ["# TYPE test_fault gauge"] + [f'test_fault{{instance="{i}"}} {v:g}' for i, v in faults.items()]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    exporter = await aiohttp_server(app)
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for member in ("a", "b"):
            folder = tmp_path / f"prometheus-{member}"
            folder.mkdir()
            port = free_port()
            rules = {"groups": [{**RULES["groups"][0], "rules": [*RULES["groups"][0]["rules"], FAULT_RULE]}]}
            (folder / "rules.yml").write_text(yaml.safe_dump(rules))
            config = {
                "global": {
                    "scrape_interval": "1s",
                    "evaluation_interval": "1s",
                    "external_labels": {"replica": member},  # as a pair's members are told apart
                },
                "rule_files": [str(folder / "rules.yml")],
                "scrape_configs": [
                    {
                        "job_name": "bots",
                        "honor_labels": True,  # the exporter's own `instance`, as a federated bot's would be
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                    }
                ],
            }
            (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
            procs.append(start_prometheus(folder / "prometheus.yml", folder / "data", port))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs, strict=True):
            wait_http(f"{url}/-/ready", proc=proc, deadline=30)
        yield Pair(faults, urls, procs)
    finally:
        for proc in procs:
            stop(proc)


async def scraped(url: str, expr: str) -> bool:
    async with aiohttp.ClientSession() as session:
        return bool(await PrometheusClient(session, url).query(expr))


async def test_one_member_killed_mid_verification_the_episode_recovers_through_the_other(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, pair: Pair
) -> None:
    pair.exporter["bot-1"] = 1
    for url in pair.urls:
        await until_async(f"{url} scraped the fault", lambda url=url: scraped(url, 'test_fault{instance="bot-1"} > 0'))
    rule = {
        "name": "fix",
        "match": ['alertname="TestFault"'],
        "cooldown": 0,
        "max_attempts": 1,
        "on_failure": "escalate",
        "verify": {"expr": FAULT, "deadline": "60s", "interval": "500ms"},
        "steps": [{"action": "bot", "command": "reconnect"}],
    }
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, [rule])),
        targets=bot_targets(fake_bot, tmp_path),
        prometheus_url=pair.urls,
    )
    client = await aiohttp_client(create_app(config))
    assert (await client.post("/api/v1/alertmanager", json=payload(alert("TestFault")), headers=AUTH)).status == 200

    async def episode() -> dict[str, Any]:
        (found,) = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        return dict(found)

    async def verifying() -> bool:
        return (await episode())["state"] == "verifying"

    await until_async("the episode verifying (the fault still scraped by both members)", verifying)
    pair.kill(0)  # the member the verification asked first dies under it
    pair.exporter["bot-1"] = 0  # the action worked: only the member that is left can say so

    async def closed() -> dict[str, Any] | None:
        found = await episode()
        return found if found["closed_at"] else None

    done = await until_async("the episode closed", closed)
    assert done["state"] == "recovered", done
    assert fake_bot.commands() == ["reconnect"]
    assert "returned nothing for this alert" in done["attempts"][0]["detail"]


async def test_the_pairs_two_copies_of_one_firing_are_acted_on_once_and_a_new_firing_again(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, pair: Pair
) -> None:
    """Each member of the pair fires the alert at its own evaluation, so Alertmanager's two members can notify one
    firing under two startsAt (the second member sends its own view when the first was slow to deliver): the second
    copy, 1.3 s from the first and less than the rule's `for:` and an evaluation (10 s and 1 s, read from the pair),
    closes skipped, naming the episode that has its firing; so does one 10.5 s from it (past `for:`: at the fast
    profile, `for:` 2 s and a scrape and an evaluation of 1 s, the members' copies can be that far apart), a late
    copy of that firing after its end, and a copy the slower member fired after the end (1 s after the endsAt the
    ledger keeps: its host came back before its `for:` ran out there). A firing `for:` and an evaluation after the end
    is a new one and is acted on again, though it starts less than that from the last copy (the distance alone cannot
    tell it from a copy)."""
    rule = {
        "name": "fix",
        "match": ['alertname="TestFault"'],
        "cooldown": 0,
        "max_attempts": 1,
        "verify": {"enabled": False},
        "steps": [{"action": "bot", "command": "reconnect"}],
    }
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, [rule])),
        targets=bot_targets(fake_bot, tmp_path),
        prometheus_url=pair.urls,
    )
    client = await aiohttp_client(create_app(config))
    base = datetime.now(UTC) - timedelta(seconds=30)

    def rfc3339(at: datetime) -> str:
        return at.isoformat().replace("+00:00", "Z")

    async def post(status: str, started: datetime, ended: datetime | None = None) -> None:
        body = payload(alert("TestFault", status=status, starts_at=rfc3339(started)))
        if ended is not None:
            body["alerts"][0]["endsAt"] = rfc3339(ended)
        assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200

    async def episodes(count: int) -> list[dict[str, Any]] | None:
        found = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        closed = sorted((e for e in found if e["closed_at"]), key=lambda e: e["id"])
        return closed if len(closed) == count else None

    await post("firing", base)
    await post("firing", base + timedelta(seconds=1.3))  # the other member's copy
    await post("firing", base + timedelta(seconds=10.5))  # a copy past the rule's for:, within an evaluation of it
    first, *copies = await until_async("the three copies closed", lambda: episodes(3))
    assert first["state"] == "recovered" and fake_bot.commands() == ["reconnect"], first
    for copy in copies:
        assert copy["state"] == "skipped", copy
        assert f"the same firing as episode {first['id']}" in copy["detail"], copy
        assert "less than the rule's for: and an evaluation (11 s)" in copy["detail"], copy
    end = base + timedelta(seconds=12)
    await post("resolved", base, ended=end)
    ledger = await (await client.get(f"/api/v1/episodes/{first['id']}", headers=READ_AUTH)).json()
    assert datetime.fromisoformat(ledger["resolved_at"]) == end, ledger  # the end as Prometheus found it
    await post("firing", base - timedelta(seconds=0.8))  # a late copy of the firing that has ended
    late = (await until_async("the late copy closed", lambda: episodes(4)))[3]
    assert late["state"] == "skipped" and f"episode {first['id']}" in late["detail"], late
    await post("firing", end + timedelta(seconds=1))  # the slower member's copy, fired after the end
    slow = (await until_async("the slower member's copy closed", lambda: episodes(5)))[4]
    # Named by the copy 2.5 s from it (the first one's start is 13 s away): a copy of a copy is the same firing.
    assert slow["state"] == "skipped" and f"episode {copies[1]['id']} (skipped)" in slow["detail"], slow
    await post("firing", end + timedelta(seconds=11))  # a new firing: for: and an evaluation after the end
    again = (await until_async("the new firing closed", lambda: episodes(6)))[5]
    assert again["state"] == "recovered", again
    assert fake_bot.commands() == ["reconnect", "reconnect"]


async def test_a_query_is_asked_of_the_next_member_before_it_fails(pair: Pair) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, [dead, pair.urls[1]])
        assert [s["value"][1] for s in await client.query("vector(7)")] == ["7"]
        assert client.member == pair.urls[1]  # asked first from now on
        pair.kill(1)
        with pytest.raises(PrometheusError) as failed:
            await client.query("vector(7)")
    # One line naming what failed on each member.
    message = str(failed.value)
    assert message.startswith("query 'vector(7)': ") and dead in message and pair.urls[1] in message
    assert "\n" not in message


async def test_the_status_line_reads_the_alerts_of_the_member_that_is_left(pair: Pair) -> None:
    pair.kill(0)
    async with aiohttp.ClientSession() as session:

        async def firing() -> list[str] | None:
            return (await fetch(session, [], pair.urls, None)).alerts

        assert await until_async("the status line read the alerts", firing) == ["TestPairFiring"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([], "expected a URL or a list of the members' URLs, got an empty list"),
        (["http://a:9090", "http://a:9090/"], "a member is named twice"),
        (["http://a:9090", "ftp://b"], "expected an http:// or https:// URL, got 'ftp://b'"),
    ],
)
def test_a_pair_is_named_by_its_members_urls(tmp_path: Path, value: list[str], problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        make_config(tmp_path, "sqlite://", prometheus_url=value)
    assert refused.value.key == "reconciler.prometheus_url" and refused.value.problem == problem
    pair = make_config(tmp_path, "sqlite://", prometheus_url=["http://a:9090", "http://b:9090"]).reconciler
    assert pair.prometheus_urls == ["http://a:9090", "http://b:9090"]
    assert make_config(tmp_path, "sqlite://", prometheus_url="http://a:9090").reconciler.prometheus_urls == [
        "http://a:9090"
    ]
