"""End to end through the local stack with the real paper bot: a fault injected through the bot's control API fires
its alert in Prometheus, Alertmanager routes it to the reconciler's webhook, the reconciler runs the packaged default
playbook against the bot, verifies the recovery in Prometheus and records the episode `recovered`.

Needs the real servers prometheus and prometheus-alertmanager (Debian packages `prometheus`,
`prometheus-alertmanager`); `trading-ops up` starts them with the bot and the reconciler, once for this module,
on free loopback ports, fast profile.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from system_binaries import require_binary
from test_stack import UpProcess, alive

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

DEADLINE_SECONDS = 90.0
POLL_SECONDS = 0.2


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def until(what: str, probe: Callable[[], Any], deadline: float = DEADLINE_SECONDS) -> Any:
    """Poll `probe` until it returns something truthy; fail naming `what` at the deadline."""
    end = time.monotonic() + deadline
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {deadline:g}s")
        time.sleep(POLL_SECONDS)


class Stack:
    def __init__(self, up: UpProcess) -> None:
        self.up = up
        self.token = (up.root / "secrets" / "control-token").read_text().strip()
        self.read_token = (up.root / "secrets" / "reconciler-read-token").read_text().strip()
        self.instance = f"127.0.0.1:{up.ports.bot}"

    def control(self, command: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            self.up.url("bot", f"/control/{command}"),
            data=json.dumps(body or {}).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
            return dict(json.loads(resp.read()))

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = self.up.url("prometheus", f"/api/v1/query?query={urllib.parse.quote(expr)}")
        return list(get_json(url)["data"]["result"])

    def prometheus_alerts(self, alertname: str) -> list[dict[str, Any]]:
        alerts = get_json(self.up.url("prometheus", "/api/v1/alerts"))["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alertname]

    def alertmanager_alerts(self, alertname: str) -> list[dict[str, Any]]:
        alerts = get_json(self.up.url("alertmanager", "/api/v2/alerts?active=true"))
        return [a for a in alerts if a["labels"]["alertname"] == alertname]

    def episodes(self) -> list[dict[str, Any]]:
        req = urllib.request.Request(
            self.up.url("reconciler", "/api/v1/episodes?limit=100"),
            headers={"Authorization": f"Bearer {self.read_token}"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return list(json.loads(resp.read())["episodes"])

    def bot_metric(self, name: str) -> dict[str, float]:
        """Samples of one metric family on the bot's own /metrics: labels text -> value."""
        with urllib.request.urlopen(self.up.url("bot", "/metrics"), timeout=5) as resp:
            text = resp.read().decode()
        found = re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
        return {labels: float(value) for labels, value in found}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("prometheus")
    up = UpProcess(tmp_path_factory.mktemp("stack-e2e"))
    try:
        up.wait_up()
        stack = Stack(up)
        # The pipeline works end to end once the always-firing Watchdog has reached Alertmanager: before that,
        # Prometheus may not have found Alertmanager yet and would hold an alert back for its resend delay.
        until("Watchdog in Alertmanager", lambda: stack.alertmanager_alerts("Watchdog"))
        yield stack
        pids = up.pids()
        assert up.stop(signal.SIGINT) == 0, up.output
        assert not any(alive(pid) for pid in pids.values())
    finally:
        up.close()


def new_episodes(stack: Stack, known: set[int], alertname: str) -> list[dict[str, Any]]:
    return [e for e in stack.episodes() if e["id"] not in known and e["alertname"] == alertname]


def fired(stack: Stack, alertname: str, **labels: str) -> bool:
    """Prometheus's own record (the ALERTS series) that the alert was firing in the last two minutes."""
    matchers = ",".join([f'alertname="{alertname}"', 'alertstate="firing"'] + [f'{k}="{v}"' for k, v in labels.items()])
    return bool(stack.query(f"max_over_time(ALERTS{{{matchers}}}[2m])"))


def heal_steps(episodes: list[dict[str, Any]], command: str) -> list[dict[str, Any]]:
    return [
        step
        for episode in episodes
        for attempt in episode["attempts"]
        for step in attempt["steps"]
        if step["action"] == "bot" and re.search(rf"\b{command}\b", step["description"])
    ]


def assert_resolved(stack: Stack, alertname: str) -> None:
    until(f"{alertname} resolved in Prometheus", lambda: not stack.prometheus_alerts(alertname))
    until(f"{alertname} resolved in Alertmanager", lambda: not stack.alertmanager_alerts(alertname))


def test_drop_connection_is_healed_by_one_verified_reconnect(stack: Stack) -> None:
    known = {e["id"] for e in stack.episodes()}
    reconnects_before = stack.bot_metric("tradingbot_broker_reconnects_total")
    assert stack.control("drop_connection")["fault"] == "drop_connection"
    assert set(stack.bot_metric("tradingbot_broker_connected").values()) == {0.0}

    recovered = until(
        "an episode of TradingBotBrokerDisconnected recovered",
        lambda: [e for e in new_episodes(stack, known, "TradingBotBrokerDisconnected") if e["state"] == "recovered"],
    )[0]
    assert fired(stack, "TradingBotBrokerDisconnected", instance=stack.instance)
    # The webhook carried Prometheus's labels; the reconciler found the bot through its instance label.
    assert recovered["labels"]["instance"] == stack.instance and recovered["target"] == stack.instance
    assert recovered["rule"] == "broker-reconnect"
    assert "tradingbot_broker_connected == 0" in recovered["detail"]  # verified with the alert's own expression
    (step,) = heal_steps([recovered], "reconnect")
    assert step["outcome"] == "success"
    assert_resolved(stack, "TradingBotBrokerDisconnected")
    # One alert per channel, one episode each, but the bot was told to reconnect exactly once.
    episodes = new_episodes(stack, known, "TradingBotBrokerDisconnected")
    assert {e["labels"]["channel"] for e in episodes} == {"orders", "market_data"}
    until(
        "every episode closed",
        lambda: all(e["closed_at"] for e in new_episodes(stack, known, "TradingBotBrokerDisconnected")),
    )
    assert len(heal_steps(new_episodes(stack, known, "TradingBotBrokerDisconnected"), "reconnect")) == 1
    connected = stack.bot_metric("tradingbot_broker_connected")
    assert connected and set(connected.values()) == {1.0}
    reconnects = stack.bot_metric("tradingbot_broker_reconnects_total")
    assert {k: v - reconnects_before.get(k, 0.0) for k, v in reconnects.items()} == dict.fromkeys(reconnects, 1.0)


def test_stale_market_data_for_one_symbol_is_healed_by_a_verified_resubscribe(stack: Stack) -> None:
    known = {e["id"] for e in stack.episodes()}
    assert stack.control("stale_market_data", {"symbol": "ETH-USD"})["symbol"] == "ETH-USD"

    recovered = until(
        "an episode of TradingBotMarketDataStale recovered",
        lambda: [e for e in new_episodes(stack, known, "TradingBotMarketDataStale") if e["state"] == "recovered"],
    )[0]
    assert fired(stack, "TradingBotMarketDataStale", symbol="ETH-USD")
    assert recovered["labels"]["symbol"] == "ETH-USD" and recovered["rule"] == "market-data-resubscribe"
    (step,) = heal_steps([recovered], "resubscribe")
    assert step["outcome"] == "success"
    assert_resolved(stack, "TradingBotMarketDataStale")
    ages = stack.query(
        f'instance_venue_symbol:tradingbot_market_data_last_update:age_seconds{{instance="{stack.instance}"}}'
    )
    assert {a["metric"]["symbol"] for a in ages} == {"BTC-USD", "ETH-USD", "SOL-USD"}
    assert all(float(a["value"][1]) < 10 for a in ages)  # every symbol's quotes are fresh again
    assert len(heal_steps(new_episodes(stack, known, "TradingBotMarketDataStale"), "resubscribe")) == 1


def test_the_state_dir_holds_what_up_generated(stack: Stack) -> None:
    state = Path(stack.up.state_dir)
    for path in ("trading-ops.yaml", "prometheus/prometheus.yml", "alertmanager/alertmanager.yml"):
        assert (state / path).read_text().startswith("# Generated by `trading-ops up`")
    assert {p.name for p in (state / "logs").iterdir()} == {
        f"{c}.log" for c in ("paper-bot", "reconciler", "prometheus", "alertmanager")
    }
