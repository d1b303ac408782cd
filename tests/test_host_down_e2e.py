"""A bot's host killed outright with orders resting at the venue, end to end: the host is a test host of its own
(tests/netns_hosts.py) where the bot's metrics and its node exporter's answer (stand-ins: Prometheus's `up` is all the
alert reads); every process of it is SIGKILLed and its link cut. Real Prometheus with the repository's availability
rules at the fast profile tells a dead host from a crashed process (TradingBotHostDown), the repository's Alertmanager
configuration sends it to the reconciler, whose packaged bot-host-down rule cancels the bot's orders at the
Kraken-compatible gateway through ccxt's stock kraken client (a second bot's on the same account stay), pages with the
exposure that remains, and flattens there once a person approves. Prints what each stage took. Needs root, `ip`,
prometheus and prometheus-alertmanager."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import start_repo_alertmanager
from e2e_stack import Monitoring, packaged_playbook
from gateway_helpers import SIDECAR_KEY, SIDECAR_SECRET, Gateway, start_gateway
from netns_hosts import host_network
from polling import until
from ports import free_port
from prometheus_server import start_prometheus
from reconciler_server import READ_AUTH, ThreadedServer, make_config
from server_process import stop, wait_http
from system_binaries import REPO_ROOT

from trading_ops.db import migrate
from trading_ops.durations import format_duration
from trading_ops.stack.profiles import FAST
from trading_ops.stack.prometheus_config import adapt_rules
from trading_ops.stack.repo import load_yaml

pytestmark = [pytest.mark.alertmanager, pytest.mark.slow]

BOT, OTHER = "kraken-1", "kraken-2"
RUN = "19ac0ffee01"
APPROVE_TOKEN = "approve-token-of-the-desk-0123456789"
# A scrape target's /metrics: what Prometheus needs to count the target up.
METRICS = (
    "import http.server as h\n"
    "class M(h.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = b'tradingbot_stand_in 1\\n'\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *args): pass\n"
    "h.HTTPServer(('{address}', {port}), M).serve_forever()\n"
)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path / "gateway")
    try:
        yield gw
    finally:
        gw.stop()


def rest_order(gw: Gateway, cid: str) -> None:
    client = gw.ccxt()
    client.load_markets()
    price = client.fetch_ticker("BTC/USD")["bid"] * 0.8
    gw.call(
        "create_order",
        "BTC/USD",
        "limit",
        "buy",
        0.001,
        float(client.price_to_precision("BTC/USD", price)),
        {"clientOrderId": cid},
    )


def open_ids(gw: Gateway) -> set[str]:
    return {str(o.get("clientOrderId")) for o in gw.call("fetch_open_orders")}


def prometheus_config(tmp: Path, bot: str, node: str, alertmanager_url: str) -> Path:
    source = REPO_ROOT / "prometheus" / "rules" / "tradingbot-availability.yml"
    rules = tmp / "tradingbot-availability.yml"
    rules.write_text(yaml.safe_dump(adapt_rules(load_yaml(source), FAST, str(source))))
    interval = format_duration(FAST.scrape_interval or 1)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": "800ms"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}]},
        "scrape_configs": [
            {"job_name": "tradingbot", "static_configs": [{"targets": [bot]}]},
            {"job_name": "node", "static_configs": [{"targets": [node]}]},
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def approve(reconciler: ThreadedServer, approval_id: int) -> None:
    req = urllib.request.Request(
        f"{reconciler.url}/api/v1/approvals/{approval_id}",
        data=json.dumps({"decision": "approve", "reason": "host lost", "by": "alice"}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {APPROVE_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def pending(reconciler: ThreadedServer) -> list[dict[str, Any]]:
    req = urllib.request.Request(f"{reconciler.url}/api/v1/approvals?status=pending", headers=READ_AUTH)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return list(json.loads(resp.read())["approvals"])


def test_a_killed_bot_host_has_its_orders_cancelled_at_the_venue_a_page_and_an_approved_flatten(
    tmp_path: Path, gateway: Gateway
) -> None:
    gateway.call("create_order", "BTC/USD", "market", "buy", 0.01, None, {"clientOrderId": f"{BOT}-{RUN}-1"})
    for cid in (f"{BOT}-{RUN}-2", f"{BOT}-{RUN}-3", f"{OTHER}-{RUN}-1"):
        rest_order(gateway, cid)
    held = float(gateway.call("fetch_balance")["total"]["BTC"])
    (tmp_path / "venue-key").write_text(SIDECAR_KEY)
    (tmp_path / "venue-secret").write_text(SIDECAR_SECRET)
    (tmp_path / "approve-token").write_text(APPROVE_TOKEN)
    procs: list[subprocess.Popen[bytes]] = []
    reconciler: ThreadedServer | None = None
    with host_network() as network:
        host = network.add_host("bot")
        bot_target, node_target = f"{host.address}:9101", f"{host.address}:9100"
        for port in (9101, 9100):
            host.popen([sys.executable, "-c", METRICS.format(address=host.address, port=port)])
        try:
            db = f"sqlite:///{tmp_path / 'reconciler.db'}"
            migrate.upgrade(db)
            playbook = packaged_playbook(["bot-host-down"])
            (tmp_path / "playbook.yml").write_text(yaml.safe_dump(playbook))
            prometheus_port, alertmanager_port = free_port(), free_port()
            config = make_config(
                tmp_path,
                db,
                playbook=str(tmp_path / "playbook.yml"),
                prometheus_url=f"http://127.0.0.1:{prometheus_port}",
                alertmanager_url=f"http://127.0.0.1:{alertmanager_port}",
                api_tokens=[{"name": "desk", "scope": "approve", "token_file": str(tmp_path / "approve-token")}],
                targets={
                    bot_target: {
                        "url": f"http://{bot_target}",
                        "token_file": str(tmp_path / "bot-token"),
                        "venue": {
                            "exchange": "kraken",
                            "api_key_file": str(tmp_path / "venue-key"),
                            "api_secret_file": str(tmp_path / "venue-secret"),
                            "urls": {"public": gateway.url, "private": gateway.url},
                            "symbols": ["BTC-USD"],
                            "order_id_prefix": BOT,
                        },
                    }
                },
            )
            reconciler = ThreadedServer(config)
            am_url, am_proc = start_repo_alertmanager(
                tmp_path / "alertmanager", alertmanager_port, reconciler, tmp_path / "webhook-token"
            )
            procs.append(am_proc)
            prometheus_file = prometheus_config(tmp_path, bot_target, node_target, am_url)
            procs.append(start_prometheus(prometheus_file, tmp_path / "prometheus-data", prometheus_port))
            wait_http(f"http://127.0.0.1:{prometheus_port}/-/ready", proc=procs[-1], deadline=30)
            stack = Monitoring(f"http://127.0.0.1:{prometheus_port}", am_url, reconciler)
            until("both targets up", lambda: stack.scalar('sum(up{job=~"tradingbot|node"})') == 2, deadline=60)

            # The host dies: every process of it at once, and its link.
            killed = time.monotonic()
            for proc in host.processes:
                proc.send_signal(signal.SIGKILL)
            host.link_down()

            def cancelled() -> bool:
                return open_ids(gateway) == {f"{OTHER}-{RUN}-1"}

            until("the bot's orders cancelled at the venue", cancelled, deadline=120, interval=0.2)
            orders_gone = time.monotonic() - killed
            page = until("the exposure page", lambda: stack.paged("TradingOpsBotHostDown"), deadline=60)
            paged = time.monotonic() - killed
            assert f"exposure: BTC-USD {held:g}" in page[0]["annotations"]["description"]
            # The bot's TradingBotDown (a shorter `for:`: it may have been sent already) is muted by the host's.
            bot_down = stack.paged("TradingBotDown")
            assert bot_down and all(a["status"]["inhibitedBy"] for a in bot_down), bot_down
            (asked,) = until("the flatten's approval asked", lambda: pending(reconciler), deadline=60)
            assert float(gateway.call("fetch_balance")["total"]["BTC"]) == held
            approved = time.monotonic()
            approve(reconciler, asked["id"])

            def flat() -> bool:
                return float(gateway.call("fetch_balance")["total"].get("BTC") or 0) == 0

            until("the position closed at the venue", flat, deadline=60, interval=0.2)
            flattened = time.monotonic() - approved
            (episode,) = stack.episodes("TradingBotHostDown")
            until("the episode ended", lambda: stack.episodes("TradingBotHostDown")[0]["state"] == "recovered")
            assert open_ids(gateway) == {f"{OTHER}-{RUN}-1"}, "the other bot keeps its order"
            print(
                json.dumps(
                    {
                        "host_killed_to_orders_cancelled_seconds": round(orders_gone, 1),
                        "host_killed_to_page_seconds": round(paged, 1),
                        "approved_to_flat_seconds": round(flattened, 1),
                        "profile": "fast",
                    }
                )
            )
        finally:
            if reconciler is not None:
                reconciler.stop()
            for proc in reversed(procs):
                stop(proc)
