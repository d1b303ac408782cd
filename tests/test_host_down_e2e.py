"""A bot's host killed outright with orders resting at the venue, end to end, with real parts: the host is a test host
of its own (tests/netns_hosts.py) running the example ccxt bot (examples/ccxt_bot.py: the runtime, the ccxt broker and
ccxt's stock kraken client on the Kraken-compatible gateway, its dead man's switch armed and refreshed as configured)
and Debian's prometheus-node-exporter. A second bot on the same account trades on from this namespace. Every process
of the host is SIGKILLed at once and its link cut. Real Prometheus with the repository's availability rules at the
fast profile tells a dead host from a crashed process (TradingBotHostDown), the repository's Alertmanager
configuration sends it to the reconciler, whose packaged bot-host-down rule cancels the dead bot's orders at the
gateway through ccxt (the second bot's stay, and its refreshes keep the account's switch from firing), pages with the
exposure that remains (at the pager, a receiver of the test's own), flattens there once a person approves, and ends
the exposure page once the account is flat. The bot's own TradingBotDown does not fire for a bot whose host is down:
the pager hears of the dead host once, and the bot-restart rule runs nothing. Then the host comes back, its node
exporter before its bot: the bot starts, and nothing pages (neither TradingBotDown nor TradingBotHeartbeatStale).
And it dies again: both pages reach the pager again, and the account being flat, no flatten is asked. Prints what each
stage took.
Needs root, `ip`, prometheus, prometheus-alertmanager and prometheus-node-exporter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import start_repo_alertmanager
from e2e_stack import Monitoring, packaged_playbook
from gateway_helpers import API_KEY, API_SECRET, SECOND_KEY, SECOND_SECRET, SIDECAR_KEY, SIDECAR_SECRET, start_gateway
from netns_hosts import host_network
from polling import until
from ports import free_port
from prometheus_server import start_prometheus
from reconciler_server import READ_AUTH, ThreadedServer, make_config
from secret_file import write_secret
from server_process import stop, wait_http
from system_binaries import REPO_ROOT, require_binary

from trading_ops.db import migrate
from trading_ops.durations import format_duration
from trading_ops.stack.profiles import FAST
from trading_ops.stack.prometheus_config import adapt_rules
from trading_ops.stack.repo import load_yaml

pytestmark = [pytest.mark.alertmanager, pytest.mark.slow]

EXAMPLE = REPO_ROOT / "examples" / "ccxt_bot.py"
BOT, OTHER = "kraken-1", "kraken-2"
BOT_PORT, NODE_PORT = 9101, 9100
# A fill of the dead bot's before the test (a client order id of its runtime's form): the position it leaves.
BOUGHT = f"{BOT}-19ac0ffee01-1"
HELD_BTC = 0.01
APPROVE_TOKEN = "approve-token-of-the-desk-0123456789"
BOT_TOKEN = "control-token-of-the-bots-0123456789"
# The dead man's switch as a user configures it, shortened for the test (Kraken recommends 60 s, refreshed every
# 15-30 s).
SWITCH = {"timeout_seconds": 15, "refresh_interval_seconds": 5}
# The example's strategy cancels its own resting bid once it is older than this (BID_MAX_AGE_SECONDS, 10 s), less a
# second of the difference between its clock and the venue's.
OWN_CANCEL_AGE_SECONDS = 9.0


def bot_config(tmp: Path, name: str, symbol: str, listen: str, port: int, key: tuple[str, str], venue: str) -> Path:
    """examples/ccxt_bot.py's configuration for one bot of the shared account: `symbol` only, the gateway at `venue`
    with the API `key`, the switch as SWITCH says. A bot that shares its account never cancels what it did not place
    (unknown_order: alert) and leaves the other bot's fills to it (missing_fill, position and balance: alert)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for file, value in (("api-key", key[0]), ("api-secret", key[1]), ("token", BOT_TOKEN)):
        (tmp / file).write_text(value)
    url = f"sqlite:///{tmp / 'journal.db'}"
    migrate.upgrade(url)
    shared = (
        {"unknown_order": "alert"}
        if name == BOT
        else dict.fromkeys(("unknown_order", "missing_fill", "position_mismatch", "balance_mismatch"), "alert")
    )
    settings = {
        "database": {"url": url},
        "bot": {
            "name": name,
            "venue": "kraken",
            "strategy": "mean-reverter",
            "listen": {"host": listen, "port": port},
            "control_token_file": str(tmp / "token"),
            "data_dir": str(tmp / "data"),
            "loop_interval_seconds": 0.2,
            "market_data_stale_seconds": 5,
            "dead_man_switch": SWITCH,
            "risk": {"daily_loss_limit": 5000},
        },
        "ccxt": {
            "exchange": "kraken",
            "api_key_file": str(tmp / "api-key"),
            "api_secret_file": str(tmp / "api-secret"),
            "urls": {"public": venue, "private": venue},
            "symbols": [symbol],
            "poll_interval_seconds": 0.5,
            "quote_poll_interval_seconds": 0.5,
            "enable_rate_limit": False,
            "kraken_tier": "off",  # the gateway here keeps no call counter (tests/test_call_counter.py does)
        },
        "recovery": {"reconcile_interval_seconds": 0, "policies": shared},
    }
    path = tmp / "bot.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


class PagerSink:
    """Where Alertmanager's pager receiver posts (in place of PagerDuty and e-mail): the alert names it paged with."""

    def __init__(self) -> None:
        self.pages: list[str] = []
        # When each page (by alert name) last reached the pager (time.monotonic()).
        self.arrived: dict[str, float] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                firing = [str(a["labels"]["alertname"]) for a in body["alerts"] if a["status"] == "firing"]
                sink.pages.extend(firing)
                sink.arrived.update((name, time.monotonic()) for name in firing)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture
def pager() -> Iterator[PagerSink]:
    sink = PagerSink()
    try:
        yield sink
    finally:
        sink.close()


def test_a_killed_bot_host_has_its_orders_cancelled_at_the_venue_one_page_and_an_approved_flatten(
    tmp_path: Path, pager: PagerSink
) -> None:
    node_exporter = require_binary("prometheus-node-exporter")
    write_secret(tmp_path / "venue-key", SIDECAR_KEY)
    write_secret(tmp_path / "venue-secret", SIDECAR_SECRET)
    write_secret(tmp_path / "approve-token", APPROVE_TOKEN)
    procs: list[subprocess.Popen[bytes]] = []
    reconciler: ThreadedServer | None = None
    with host_network() as network:
        host = network.add_host("bot")
        bot_target, node_target = f"{host.address}:{BOT_PORT}", f"{host.address}:{NODE_PORT}"
        # A market that stands still: the bots' bids rest, nothing fills but what the test buys.
        gateway = start_gateway(tmp_path / "gateway", host=network.gateway, volatility=0)
        try:
            gateway.call("create_order", "BTC/USD", "market", "buy", HELD_BTC, None, {"clientOrderId": BOUGHT})
            first = bot_config(
                tmp_path / BOT, BOT, "BTC-USD", host.address, BOT_PORT, (API_KEY, API_SECRET), gateway.url
            )
            second_port = free_port()
            second = bot_config(
                tmp_path / OTHER, OTHER, "ETH-USD", "127.0.0.1", second_port, (SECOND_KEY, SECOND_SECRET), gateway.url
            )
            with open(tmp_path / f"{BOT}.log", "wb") as log:
                host.popen([sys.executable, str(EXAMPLE), str(first)], cwd=REPO_ROOT, stdout=log, stderr=log)
            with open(tmp_path / "node-exporter.log", "wb") as log:
                host.popen([node_exporter, f"--web.listen-address={node_target}"], stdout=log, stderr=log)
            with open(tmp_path / f"{OTHER}.log", "wb") as log:
                other = subprocess.Popen(
                    [sys.executable, str(EXAMPLE), str(second)], cwd=REPO_ROOT, stdout=log, stderr=log
                )
            procs.append(other)

            db = f"sqlite:///{tmp_path / 'reconciler.db'}"
            migrate.upgrade(db)
            playbook = packaged_playbook(["bot-host-down", "bot-restart"])
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
                        "token_file": str(tmp_path / BOT / "token"),
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
                tmp_path / "alertmanager",
                alertmanager_port,
                reconciler,
                tmp_path / "webhook-token",
                pager_url=pager.url,
            )
            procs.append(am_proc)

            running = {BOT: host.processes[0], OTHER: other}  # the processes that must not have exited

            def resting(prefix: str) -> set[str]:
                for name, proc in running.items():
                    assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
                return {
                    str(o["clientOrderId"])
                    for o in gateway.call("fetch_open_orders")
                    if str(o.get("clientOrderId")).startswith(f"{prefix}-")
                }

            until("the second bot ready", lambda: ready(f"http://127.0.0.1:{second_port}"), deadline=120)
            until("the first bot ready", lambda: ready(f"http://{bot_target}"), deadline=120)
            until("both bots' bids resting", lambda: resting(BOT) and resting(OTHER), deadline=60)
            # Prometheus once both bots answer: a bot still starting would read as down (TradingBotDown).
            prometheus_file = prometheus_config(tmp_path, bot_target, node_target, am_url)
            procs.append(start_prometheus(prometheus_file, tmp_path / "prometheus-data", prometheus_port))
            wait_http(f"http://127.0.0.1:{prometheus_port}/-/ready", proc=procs[-1], deadline=30)
            stack = Monitoring(f"http://127.0.0.1:{prometheus_port}", am_url, reconciler)
            armed = f'tradingbot_dead_man_switch_armed{{instance="{bot_target}"}} and on () up{{job="node"}} == 1'
            until("the bot's switch armed, its host's node exporter up", lambda: stack.scalar(armed) == 1, deadline=60)

            # The host dies: every process of it at once, and its link.
            left = resting(BOT)
            killed = time.monotonic()
            del running[BOT]
            for proc in host.processes:
                proc.send_signal(signal.SIGKILL)
            host.link_down()

            # Within the switch's timeout, DESIGN.md's 10 s more being what a test may wait (not a measurement).
            until(
                "the bot's orders cancelled at the venue",
                lambda: not resting(BOT),
                deadline=SWITCH["timeout_seconds"] + 10,
                interval=0.2,
            )
            orders_gone = time.monotonic() - killed
            # Measured at the pager (a receiver of the test's own), not at what Alertmanager holds.
            until("the host-down page at the pager", lambda: "TradingBotHostDown" in pager.pages, deadline=60)
            host_paged = pager.arrived["TradingBotHostDown"] - killed
            until("the exposure page at the pager", lambda: "TradingOpsBotHostDown" in pager.pages, deadline=60)
            paged = pager.arrived["TradingOpsBotHostDown"] - killed
            page = stack.paged("TradingOpsBotHostDown")
            assert f"exposure: BTC-USD {HELD_BTC:g}" in page[0]["annotations"]["description"], page
            (episode,) = stack.episodes("TradingBotHostDown")
            cancelled = next(s for a in episode["attempts"] for s in a["steps"] if s["action"] == "venue")
            assert "none left open" in cancelled["output"], cancelled
            (asked,) = until("the flatten's approval asked", lambda: pending(reconciler), deadline=60)
            assert float(gateway.call("fetch_balance")["total"]["BTC"]) == HELD_BTC
            approved = time.monotonic()
            approve(reconciler, asked["id"])

            def flat() -> bool:
                return float(gateway.call("fetch_balance")["total"].get("BTC") or 0) == 0

            until("the position closed at the venue", flat, deadline=60, interval=0.2)
            flattened = time.monotonic() - approved
            until("the episode ended", lambda: stack.episodes("TradingBotHostDown")[0]["state"] == "recovered")

            # One page for the dead host: the bot's TradingBotDown does not fire for a bot whose host is down (its
            # host's alert is the one), so its restart rule has nothing to run and nothing fails.
            assert stack.paged("TradingBotDown") == []
            for restart in stack.episodes("TradingBotDown"):
                assert all(not a["steps"] for a in restart["attempts"]), restart
            assert stack.paged("TradingOpsRemediationFailed") == []
            # Once the account is flat the exposure page ends (the reconciler ends it in Alertmanager).
            until("the exposure page ended", lambda: stack.paged("TradingOpsBotHostDown") == [], deadline=60)
            expected = ["TradingBotHostDown", "TradingOpsApprovalRequested", "TradingOpsBotHostDown"]
            until("the host's pages", lambda: set(expected) <= set(pager.pages))
            assert sorted(pager.pages) == expected

            # The second bot on the account kept its orders (it cancels one itself only when it is old) and trades on.
            assert left and resting(OTHER)
            for order in gateway.call("fetch_closed_orders"):
                if str(order.get("clientOrderId")).startswith(f"{OTHER}-") and order["status"] == "canceled":
                    lived = (order["lastUpdateTimestamp"] - order["timestamp"]) / 1000
                    assert lived >= OWN_CANCEL_AGE_SECONDS, order
            assert ready(f"http://127.0.0.1:{second_port}")

            # The host comes back (die, return): its node exporter answers first, the bot only later, and then it
            # starts (its startup reconciliation). A returning host is "starting", not "down": nothing pages.
            host.link_up()
            with open(tmp_path / "node-exporter-2.log", "wb") as log:
                host.popen([node_exporter, f"--web.listen-address={node_target}"], stdout=log, stderr=log)
            node_up = f'up{{job="node", instance="{node_target}"}}'
            until("the host's node exporter scraped again", lambda: stack.scalar(node_up) == 1, deadline=60)
            returned = time.monotonic()
            with open(tmp_path / f"{BOT}-2.log", "wb") as log:
                host.popen([sys.executable, str(EXAMPLE), str(first)], cwd=REPO_ROOT, stdout=log, stderr=log)
            running[BOT] = host.processes[-1]
            until("the returned bot ready", lambda: ready(f"http://{bot_target}"), deadline=120)
            phase = f'tradingbot_phase{{instance="{bot_target}", phase="trading"}}'
            until("the returned bot trading", lambda: stack.scalar(phase) == 1, deadline=60)
            back = time.monotonic() - returned
            # Long enough for a false page: TradingBotDown's minute after the node exporter is back, and its `for:`.
            since = f'min_over_time(up{{job="node", instance="{node_target}"}}[80s])'
            until("80 s since the host came back", lambda: stack.scalar(since) == 1, deadline=180)
            false_pages = 'ALERTS{alertstate="firing", alertname=~"TradingBotDown|TradingBotHeartbeatStale"}'
            fired = f"count(max_over_time({false_pages}[15m]))"
            assert stack.scalar(fired) is None, "a returning host's bot was paged as down or hung"
            assert stack.paged("TradingOpsRemediationFailed") == []
            assert all(not a["steps"] for e in stack.episodes("TradingBotDown") for a in e["attempts"])
            assert sorted(pager.pages) == expected  # nothing more reached the pager

            # It dies again soon after it came back: both pages reach the pager again, each at once (their routes
            # flush a group's new alert at once, not at the pager's next 1-minute slot). The account is flat now: the
            # exposure page says so and ends, and no flatten is asked (nor paged).
            until("the returned bot's bid resting", lambda: resting(BOT), deadline=60)
            killed_again = time.monotonic()
            del running[BOT]
            for proc in host.processes:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
            host.link_down()
            until("the bot's orders cancelled again", lambda: not resting(BOT), deadline=SWITCH["timeout_seconds"] + 10)
            until(
                "the second death's pages",
                lambda: (
                    pager.pages.count("TradingOpsBotHostDown") == 2 and pager.pages.count("TradingBotHostDown") == 2
                ),
                deadline=90,
            )
            host_paged_again = pager.arrived["TradingBotHostDown"] - killed_again
            paged_again = pager.arrived["TradingOpsBotHostDown"] - killed_again

            def both_ended() -> bool:
                episodes = stack.episodes("TradingBotHostDown")
                return len(episodes) == 2 and all(e["state"] == "recovered" for e in episodes)

            until("the second death's episode ended", both_ended)
            assert pending(reconciler) == [] and pager.pages.count("TradingOpsApprovalRequested") == 1
            until("the second exposure page ended", lambda: stack.paged("TradingOpsBotHostDown") == [], deadline=60)
            print(
                json.dumps(
                    {
                        "host_killed_to_orders_cancelled_seconds": round(orders_gone, 1),
                        "host_killed_to_host_down_page_seconds": round(host_paged, 1),
                        "host_killed_to_page_seconds": round(paged, 1),
                        "approved_to_flat_seconds": round(flattened, 1),
                        "host_back_to_trading_seconds": round(back, 1),
                        "killed_again_to_host_down_page_seconds": round(host_paged_again, 1),
                        "killed_again_to_exposure_page_seconds": round(paged_again, 1),
                        "switch_timeout_seconds": SWITCH["timeout_seconds"],
                        "profile": "fast",
                    }
                )
            )
        finally:
            if reconciler is not None:
                reconciler.stop()
            for proc in reversed(procs):
                stop(proc)
            gateway.stop()
