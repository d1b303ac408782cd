"""One member of the clustered Alertmanager pair killed during a fault: the other member still routes the alert, the
reconciler acts once and verifies, and its escalations and silence checks go to the member that is left.

Real parts: the paper bot (`trading-ops paper-bot --chaos`), Prometheus with the repository's availability rules (the
fast profile's `for:`) sending to both Alertmanagers as it would in production, a clustered pair of
prometheus-alertmanager processes gossiping, and the reconciler (`trading-ops reconciler`, the packaged default
playbook) with both members configured (`alertmanager_url` and `alertmanager_peers`). Needs the Debian packages
`prometheus` and `prometheus-alertmanager`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import Alertmanager, start_alertmanager
from polling import until
from ports import free_port
from reconciler_server import READ_TOKEN, TOKEN
from secret_file import write_secret
from server_process import stop, wait_http
from system_binaries import REPO_ROOT, require_binary

from trading_ops.db import migrate
from trading_ops.stack.profiles import FAST
from trading_ops.stack.prometheus_config import adapt_rules

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

CONTROL_TOKEN = "ha-control-token"


def get_json(url: str, token: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
        return json.loads(resp.read())


@dataclass
class Pair:
    bot_url: str
    reconciler_url: str
    prometheus_url: str
    members: list[Alertmanager]
    instance: str

    def control(self, command: str) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.bot_url}/control/{command}",
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {CONTROL_TOKEN}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def episodes(self) -> list[dict[str, Any]]:
        return list(get_json(f"{self.reconciler_url}/api/v1/episodes?limit=100", READ_TOKEN)["episodes"])

    def reconnects(self) -> float:
        with urllib.request.urlopen(f"{self.bot_url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tradingbot_broker_reconnects_total{") and 'channel="orders"' in line
        )


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    prometheus_binary = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("am-ha")
    bot_port, reconciler_port, prometheus_port = free_port(), free_port(), free_port()
    c1, c2 = free_port(), free_port()
    webhook = f"http://127.0.0.1:{reconciler_port}/api/v1/alertmanager"
    procs: list[subprocess.Popen[Any]] = []
    members = [
        start_alertmanager(tmp / "am1", webhook, c1, (c2,), "1h"),
        start_alertmanager(tmp / "am2", webhook, c2, (c1,), "1h"),
    ]
    procs += [m.proc for m in members]
    try:
        db = f"sqlite:///{tmp / 'trading-ops.db'}"
        migrate.upgrade(db)
        for name, value in (("control", CONTROL_TOKEN), ("webhook", TOKEN), ("read", READ_TOKEN)):
            write_secret(tmp / name, value)
        instance = f"127.0.0.1:{bot_port}"
        config = {
            "database": {"url": db},
            "bot": {
                "data_dir": str(tmp / "bot"),
                "control_token_file": str(tmp / "control"),
                "listen": {"host": "127.0.0.1", "port": bot_port},
            },
            "paper": {"seed": 7},
            "reconciler": {
                "listen": {"host": "127.0.0.1", "port": reconciler_port},
                "token_file": str(tmp / "webhook"),
                "read_token_file": str(tmp / "read"),
                "prometheus_url": f"http://127.0.0.1:{prometheus_port}",
                "alertmanager_url": members[0].url,
                "alertmanager_peers": [members[1].url],
            },
            "bots": [
                {
                    "name": "paper-1",
                    "instance": instance,
                    "url": f"http://{instance}",
                    "token_file": str(tmp / "control"),
                }
            ],
        }
        (tmp / "trading-ops.yaml").write_text(yaml.safe_dump(config))
        cli = [sys.executable, "-m", "trading_ops", "--config", str(tmp / "trading-ops.yaml")]
        procs.append(spawn([*cli, "paper-bot", "--chaos"], tmp / "bot.log"))
        wait_http(f"http://{instance}/healthz", deadline=60, proc=procs[-1])
        procs.append(spawn([*cli, "reconciler"], tmp / "reconciler.log"))
        wait_http(f"http://127.0.0.1:{reconciler_port}/healthz", deadline=60, proc=procs[-1])
        rules_file = REPO_ROOT / "prometheus" / "rules" / "tradingbot-availability.yml"
        rules = adapt_rules(yaml.safe_load(rules_file.read_text()), FAST, str(rules_file))
        (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
        prometheus = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "800ms"},
            "rule_files": [str(tmp / "rules.yml")],
            # As in production: Prometheus sends every alert to every member of the pair.
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [m.url.removeprefix("http://") for m in members]}]}]
            },
            "scrape_configs": [{"job_name": "tradingbot", "static_configs": [{"targets": [instance]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus))
        procs.append(
            spawn(
                [
                    prometheus_binary,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--rules.alert.resend-delay=1s",
                ],
                tmp / "prometheus.log",
            )
        )
        wait_http(f"http://127.0.0.1:{prometheus_port}/-/ready", deadline=60, proc=procs[-1])
        yield Pair(
            f"http://{instance}",
            f"http://127.0.0.1:{reconciler_port}",
            f"http://127.0.0.1:{prometheus_port}",
            members,
            instance,
        )
    finally:
        for proc in reversed(procs):
            stop(proc)


def broker_alerts(member: Alertmanager) -> list[dict[str, Any]]:
    alerts = get_json(f"{member.url}/api/v2/alerts?active=true")
    return [a for a in alerts if a["labels"]["alertname"] == "TradingBotBrokerDisconnected"]


def test_one_member_killed_during_a_fault_the_other_routes_it_and_the_reconciler_acts_once(pair: Pair) -> None:
    scraped = urllib.parse.quote('up{job="tradingbot"} == 1')
    until("the bot scraped", lambda: get_json(f"{pair.prometheus_url}/api/v1/query?query={scraped}")["data"]["result"])
    before = pair.reconnects()
    pair.control("drop_connection")
    os.kill(pair.members[0].proc.pid, signal.SIGKILL)  # the first member dies with the fault
    pair.members[0].proc.wait(10)
    recovered = until(
        "TradingBotBrokerDisconnected recovered through the member that is left",
        lambda: [
            e for e in pair.episodes() if e["alertname"] == "TradingBotBrokerDisconnected" and e["state"] == "recovered"
        ],
    )
    assert recovered[0]["rule"] == "broker-reconnect"
    until(
        "every episode closed",
        lambda: all(e["closed_at"] for e in pair.episodes() if e["alertname"] == "TradingBotBrokerDisconnected"),
    )
    assert pair.reconnects() == before + 1  # one action, whatever two members and two channels sent
    until("resolved in the member that is left", lambda: not broker_alerts(pair.members[1]))


async def test_a_page_reaches_the_member_that_is_left(pair: Pair) -> None:
    """The reconciler's escalations go to every member; with the first one dead the page lands in the second, and
    reads (silences) fall back to it: nothing waits for the dead member."""
    import aiohttp

    from trading_ops.clients.alertmanager import AlertmanagerClient
    from trading_ops.reconciler.actions.escalate import FAILED, escalate

    assert pair.members[0].proc.poll() is not None  # killed by the test above
    async with aiohttp.ClientSession() as session:
        client = AlertmanagerClient(session, [m.url for m in pair.members])
        original = {"alertname": "TradingBotDown", "instance": pair.instance}
        await escalate(client, FAILED, original, pair.instance, "the first member is down")
        assert await client.silences() is not None
    paged = get_json(f"{pair.members[1].url}/api/v2/alerts?active=true")
    assert [a["labels"]["original_alertname"] for a in paged if a["labels"]["alertname"] == FAILED] == [
        "TradingBotDown"
    ]
