"""End to end for a NautilusTrader node: a real `TradingNode` with the trading-ops controller (Nautilus's sandbox
execution client, quotes polled from the paper gateway), real Prometheus and Alertmanager, and the reconciler running
the packaged playbook's rules for these faults.

Prometheus loads the repository's recording, availability and trading rules with `for:` shortened as `trading-ops up
--profile fast` does; Alertmanager runs the repository's configuration as the fast profile adapts it. The playbook is
the packaged default one's broker-reconnect, market-data-resubscribe and loss-limit-flatten rules as they are, with no
cooldown (faults follow each other in a module) and a 1 s verification interval.

Faults, each ending in an episode `recovered` (verified in Prometheus):
- the gateway drops its clients' connections until one starts a new session (drop_connection): the node's data client
  loses its session, TradingBotBrokerDisconnected fires, broker-reconnect asks for `reconnect` (the node's clients
  disconnected and connected again: a new session, which ends the drop) and quotes flow;
- the gateway's feed of BTC-USD stops (stale_market_data: Ticker leaves the pair out until a client subscribes again):
  TradingBotMarketDataStale, `resubscribe` renews the node's quote subscriptions and quotes flow;
- the price gaps down 30 % under the node's long position: the controller's daily loss limit halts the node (the
  RiskEngine's HALTED), TradingBotDailyLossBreached fires, loss-limit-flatten cancels the working order and flattens
  (the node stays halted), and its on_recovery pages (TradingOpsBotFlattened posted to Alertmanager).

Needs prometheus and prometheus-alertmanager (Debian packages) and the `nautilus` extra.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import start_repo_alertmanager
from gateway_helpers import Gateway, start_gateway
from nautilus_helpers import INSTRUMENT_ID, Node, start_node
from nautilus_trader.model.enums import TradingState
from nautilus_trader.model.identifiers import InstrumentId
from polling import until
from ports import free_port
from reconciler_server import READ_AUTH, ThreadedServer, make_config
from server_process import stop, wait_http
from system_binaries import REPO_ROOT, require_binary

from trading_ops.db import migrate
from trading_ops.durations import format_duration
from trading_ops.stack.profiles import FAST
from trading_ops.stack.prometheus_config import adapt_rules
from trading_ops.stack.repo import load_yaml

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

TOKEN = "nautilus-e2e-token"
RULE_FILES = ("recording.yml", "tradingbot-availability.yml", "tradingbot-trading.yml")
PLAYBOOK = REPO_ROOT / "trading_ops" / "reconciler" / "playbooks" / "default.yml"
RULES = ("broker-reconnect", "market-data-resubscribe", "loss-limit-flatten")
# The loss limit (USD) and the position: a 30 % gap on 0.5 BTC (~5,000 USD) is far past it; the market's own drift
# over the test (a few USD) is far below.
DAILY_LOSS_LIMIT = 1000.0
DEADLINE_SECONDS = 120.0
ENDED = ("recovered", "escalated", "failed", "resolved", "skipped")


@dataclass
class Stack:
    gateway: Gateway
    node: Node
    prometheus: str
    alertmanager: str
    reconciler: ThreadedServer

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?query={urllib.parse.quote(expr)}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return list(json.loads(resp.read())["data"]["result"])

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def episodes(self, alertname: str) -> list[dict[str, Any]]:
        req = urllib.request.Request(f"{self.reconciler.url}/api/v1/episodes?limit=100", headers=READ_AUTH)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return [e for e in json.loads(resp.read())["episodes"] if e["alertname"] == alertname]

    def paged(self, alertname: str) -> list[dict[str, Any]]:
        """The alerts named `alertname` Alertmanager holds (what its routing pages a human with)."""
        query = urllib.parse.quote(f'alertname="{alertname}"')
        with urllib.request.urlopen(f"{self.alertmanager}/api/v2/alerts?filter={query}", timeout=5) as resp:
            return list(json.loads(resp.read()))


def playbook() -> dict[str, Any]:
    """The packaged default playbook's rules for these faults, timed for this test (see the module's docstring)."""
    packaged = yaml.safe_load(PLAYBOOK.read_text())
    rules = []
    for rule in packaged["rules"]:
        if rule["name"] in RULES:
            rules.append({**rule, "cooldown": "0s", "verify": {**rule.get("verify", {}), "interval": "1s"}})
    assert [r["name"] for r in rules] == list(RULES), "the packaged playbook's rules changed"
    defaults = {**packaged["defaults"], "backoff": {"initial": "1s", "max": "5s", "multiplier": 2, "jitter": 0.2}}
    return {"version": 1, "defaults": defaults, "rules": rules}


def prometheus_config(tmp: Path, target: str, alertmanager_url: str) -> Path:
    rule_paths = []
    for name in RULE_FILES:
        source = REPO_ROOT / "prometheus" / "rules" / name
        (tmp / name).write_text(yaml.safe_dump(adapt_rules(load_yaml(source), FAST, str(source))))
        rule_paths.append(str(tmp / name))
    interval = format_duration(FAST.scrape_interval or 1)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rule_paths,
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}]},
        "scrape_configs": [{"job_name": "nautilus", "static_configs": [{"targets": [target]}]}],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def nautilus_stack(tmp: Path) -> Iterator[Stack]:
    gateway = start_gateway(tmp / "gateway")
    procs: list[subprocess.Popen[bytes]] = []
    reconciler: ThreadedServer | None = None
    node: Node | None = None
    try:
        (tmp / "token").write_text(TOKEN)
        node = start_node(gateway.url, tmp / "token", port=free_port(), daily_loss_limit=DAILY_LOSS_LIMIT)
        running = node
        until(
            "the node holds its position and serves",
            lambda: (
                running.controller.port is not None
                and not running.on_loop(lambda: running.node.portfolio.is_flat(InstrumentId.from_str(INSTRUMENT_ID)))
            ),
            30,
        )
        db = f"sqlite:///{tmp / 'reconciler.db'}"
        migrate.upgrade(db)
        (tmp / "playbook.yml").write_text(yaml.safe_dump(playbook()))
        prometheus_port, alertmanager_port = free_port(), free_port()
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        config = make_config(
            tmp,
            db,
            playbook=str(tmp / "playbook.yml"),
            prometheus_url=prometheus_url,
            alertmanager_url=f"http://127.0.0.1:{alertmanager_port}",
            budgets={"max_actions_per_target_per_hour": 1000},
            targets={node.instance: {"url": node.url, "token_file": str(tmp / "token")}},
        )
        reconciler = ThreadedServer(config)
        am_url, am_proc = start_repo_alertmanager(
            tmp / "alertmanager", alertmanager_port, reconciler, tmp / "webhook-token"
        )
        procs.append(am_proc)
        procs.append(
            subprocess.Popen(
                [
                    require_binary("prometheus"),
                    f"--config.file={prometheus_config(tmp, node.instance, am_url)}",
                    f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    f"--rules.alert.resend-delay={format_duration(FAST.alert_resend_delay or 60)}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / "prometheus.log", "wb"),  # noqa: SIM115
            )
        )
        wait_http(f"{prometheus_url}/-/ready", proc=procs[-1], deadline=30)
        stack = Stack(gateway, node, prometheus_url, am_url, reconciler)
        until("Prometheus scrapes the node", lambda: stack.scalar(f'up{{instance="{node.instance}"}}') == 1, 60)
        yield stack
    finally:
        if reconciler is not None:
            reconciler.stop()
        for proc in reversed(procs):
            stop(proc)
        if node is not None:
            node.stop()
        gateway.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with nautilus_stack(tmp_path_factory.mktemp("nautilus-e2e")) as built:
        yield built


def heal(stack: Stack, alertname: str, fault: Callable[[], None]) -> dict[str, Any]:
    """Inject `fault`; wait until every new episode of `alertname` has ended; return the one that recovered."""
    known = {e["id"] for e in stack.episodes(alertname)}
    fault()

    def ended() -> list[dict[str, Any]]:
        new = [e for e in stack.episodes(alertname) if e["id"] not in known]
        return new if new and all(e["state"] in ENDED for e in new) else []

    episodes = until(f"the {alertname} episodes end", ended, DEADLINE_SECONDS)
    recovered = [e for e in episodes if e["state"] == "recovered"]
    assert recovered and not [e for e in episodes if e["state"] in ("escalated", "failed")], json.dumps(episodes)
    assert recovered[0]["attempts"][-1]["outcome"] == "success", recovered
    assert recovered[0]["labels"]["instance"] == stack.node.instance
    return recovered[0]


def test_a_lost_session_is_reconnected_and_verified(stack: Stack) -> None:
    instance = stack.node.instance
    episode = heal(stack, "TradingBotBrokerDisconnected", lambda: stack.gateway.chaos("drop_connection"))
    assert episode["labels"]["channel"] == "market_data"
    until(
        "Prometheus sees every channel connected, the reconnect counted",
        lambda: (
            stack.scalar(f'min(tradingbot_broker_connected{{instance="{instance}"}})') == 1
            and (
                stack.scalar(f'tradingbot_broker_reconnects_total{{instance="{instance}",channel="market_data"}}') or 0
            )
            >= 1
        ),
        30,
    )
    quotes = stack.node.data_client.quotes_published
    until("quotes reach the node", lambda: stack.node.data_client.quotes_published > quotes, 10)


def test_a_feed_that_stopped_is_resubscribed_and_verified(stack: Stack) -> None:
    episode = heal(
        stack, "TradingBotMarketDataStale", lambda: stack.gateway.chaos("stale_market_data", symbol="BTC-USD")
    )
    assert [a["action"] for a in episode["attempts"]] == ["bot"]  # resubscribe
    # The node's subscription was renewed: quotes reach it again, and Prometheus sees them fresh.
    quotes = stack.node.data_client.quotes_published
    until("quotes reach the node", lambda: stack.node.data_client.quotes_published > quotes, 10)
    instance = stack.node.instance
    until(
        "Prometheus sees the quotes fresh",
        lambda: (
            (
                stack.scalar(
                    f'instance_venue_symbol:tradingbot_market_data_last_update:age_seconds{{instance="{instance}"}}'
                )
                or 99
            )
            < 10
        ),
        30,
    )


def test_a_loss_limit_halts_the_node_and_the_playbook_flattens_it_and_pages(stack: Stack) -> None:
    node = stack.node
    iid = InstrumentId.from_str(INSTRUMENT_ID)
    assert node.on_loop(lambda: len(node.node.cache.orders_open())) == 1  # the strategy's resting limit order

    def gap() -> None:
        stack.gateway.chaos("price_gap", symbol="BTC-USD", change=-0.3)

    episode = heal(stack, "TradingBotDailyLossBreached", gap)
    # The controller halted the node itself (its in-process limit): the RiskEngine is HALTED, and stays so.
    assert node.on_loop(lambda: node.node.kernel.risk_engine.trading_state) == TradingState.HALTED
    halts = stack.scalar(
        f'tradingbot_control_commands_total{{instance="{node.instance}",command="halt",source="risk"}}'
    )
    assert halts is not None and halts >= 1
    # The playbook's steps ran on the halted node: every order canceled, the position closed.
    # (the attempt's steps: cancel_all, flatten, then the on_recovery escalation)
    assert episode["attempts"][-1]["action"] == "bot, bot, escalate"
    assert node.on_loop(node.node.cache.orders_open) == []
    assert node.on_loop(lambda: node.node.portfolio.is_flat(iid))
    # And a person is paged: the rule's on_recovery escalation is in Alertmanager.
    until("TradingOpsBotFlattened reaches Alertmanager", lambda: stack.paged("TradingOpsBotFlattened"), 30)
