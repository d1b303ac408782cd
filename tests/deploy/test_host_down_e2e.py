"""A bot's host killed outright with orders resting at the venue, end to end, with real parts, on Kraken and on Binance
spot (the gateway's two dialects over one paper market): the host is a test host of its own (tests/netns_hosts.py)
running the example ccxt bot (examples/ccxt_bot.py: the runtime, the ccxt broker and ccxt's stock kraken or binance
client on the gateway, streaming) and Debian's prometheus-node-exporter. On Kraken the bot keeps its dead man's switch
armed and refreshed as configured; Binance spot has none (the bot's status says `not applicable`), so there the
reconciler's venue step is all that cancels the dead bot's orders, and it must do so within the alert's detection and
the step, not a switch's timeout. A second bot on the same venue, on an account of its own (the gateway's
sub-account: one account per bot, as `config check` requires on Kraken; two bots on one Binance account are
tests/venues/test_ccxt_bots_binance_shared.py's), trades on from this namespace. Every
process of the host is SIGKILLed at once and its link cut. Real Prometheus with the repository's availability rules at
the fast profile tells a dead host from a crashed process (TradingBotHostDown), the repository's Alertmanager
configuration sends it to the reconciler, whose packaged bot-host-down rule cancels the dead bot's orders at the
gateway through ccxt (the second bot's, on its own account, stay), pages with the
exposure that remains (at the pager, a receiver of the test's own), flattens there once a person approves, and ends
the exposure page once the account is flat. The bot's own TradingBotDown does not fire for a bot whose host is down:
the pager hears of the dead host once, and the bot-restart rule runs nothing. Then the host comes back, its node
exporter before its bot: the bot starts, and nothing pages (neither TradingBotDown nor TradingBotHeartbeatStale).
And it dies again: the host-down page reaches the pager again, and the account being flat, no exposure page is sent
(it would page about nothing) and no flatten is asked. Prints what each stage took, per venue.
Needs root, `ip`, prometheus, prometheus-alertmanager and prometheus-node-exporter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import start_repo_alertmanager
from e2e_stack import Monitoring, packaged_playbook
from gateway_helpers import (
    API_KEY,
    API_SECRET,
    BINANCE_BOT_KEY,
    BINANCE_BOT_SECRET,
    BINANCE_SECOND_KEY,
    BINANCE_SECOND_SECRET,
    BINANCE_VENUE_KEY,
    BINANCE_VENUE_SECRET,
    CHECK_KEY,
    CHECK_SECRET,
    SECOND_CHECK_KEY,
    SECOND_CHECK_SECRET,
    SECOND_KEY,
    SECOND_SECRET,
    SIDECAR_KEY,
    SIDECAR_SECRET,
    start_gateway,
)
from host_deaths import (
    BOT_TOKEN,
    EXAMPLE,
    EXPOSURE,
    HOST_DOWN,
    SWITCH,
    Pager,
    account,
    bot_config,
    host_deaths,
    judge,
    plan,
    play,
    prometheus_config,
    ready,
)
from netns_hosts import host_network
from polling import until
from ports import free_port
from prometheus_server import start_prometheus
from reconciler_server import READ_AUTH, ThreadedServer, make_config
from secret_file import write_secret
from server_process import stop, wait_http
from system_binaries import REPO_ROOT, require_binary

from trading_ops.db import migrate
from trading_ops.stack.profiles import FAST

pytestmark = [pytest.mark.alertmanager, pytest.mark.slow]

BOT_PORT, NODE_PORT = 9101, 9100
# A fill of the dead bot's before the test (a client order id of its runtime's form, after the bot's name and a run):
# the position it leaves.
RUN = "19ac0ffee01"
HELD_BTC = 0.01
APPROVE_TOKEN = "approve-token-of-the-desk-0123456789"
# The test's keys on each bot's account: the first bot's (the gateway's main account) and the second's (its own).
# The test looks through the gateway's Kraken dialect on either venue: one account, whichever dialect reaches it
# (docs/gateway-binance.md), so what it sees resting is what the Binance bot and the reconciler's binance client see.
MAIN = (CHECK_KEY, CHECK_SECRET)
SECOND = (SECOND_CHECK_KEY, SECOND_CHECK_SECRET)
# TradingBotHostDown at the fast profile, at the latest after the death: a scrape, its timeout, an evaluation and the
# rule's `for:` (5 s for an alert on failed scrapes). The reconciler's route waits 0 s.
HOST_DOWN_DETECTION_SECONDS = sum(
    (
        FAST.scrape_interval or 0,
        FAST.scrape_timeout or 0,
        FAST.evaluation_interval or 0,
        FAST.alert_for(10, scrape_failure=True),
    )
)
# What a test may wait beyond the protection's own time for the orders to be gone (DESIGN.md's 10 s beyond the
# switch's timeout; not a measurement): the venue step's few calls and a loaded machine.
CANCEL_MARGIN_SECONDS = 10.0


@dataclass(frozen=True)
class Venue:
    """What differs between the venues the test runs on; everything else is the same test."""

    exchange: str
    bot: str  # the dead bot's name (its order-id prefix)
    other: str  # the second bot's, on an account of its own
    bot_key: tuple[str, str]  # the first bot's key on the main account
    other_key: tuple[str, str]  # the second bot's on its own account
    reconciler_key: tuple[str, str]  # the reconciler's own on the first bot's account (trade permission)
    # Kraken: the bot's dead man's switch, armed, cancels its orders at its timeout after the last refresh, whatever
    # the reconciler does (and the reconciler's venue step usually first). Binance spot: no switch; the venue step
    # after TradingBotHostDown is all there is.
    switch: bool

    def rest(self, gateway: str) -> str:
        """The REST URL the reconciler's client is given (on Binance /api/v3: every other keeps its path there)."""
        return gateway if self.exchange == "kraken" else f"{gateway}/api/v3"

    @property
    def cancel_deadline(self) -> float:
        """How long after the kill the bot's orders may still rest: the switch's timeout where there is one, else the
        alert's detection (the venue step runs at once, the reconciler's route waiting 0 s); plus the margin."""
        protection = SWITCH["timeout_seconds"] if self.switch else HOST_DOWN_DETECTION_SECONDS
        return protection + CANCEL_MARGIN_SECONDS


KRAKEN = Venue(
    "kraken",
    "kraken-1",
    "kraken-2",
    (API_KEY, API_SECRET),
    (SECOND_KEY, SECOND_SECRET),
    (SIDECAR_KEY, SIDECAR_SECRET),
    switch=True,
)
BINANCE = Venue(
    "binance",
    "binance-1",
    "binance-2",
    (BINANCE_BOT_KEY, BINANCE_BOT_SECRET),
    (BINANCE_SECOND_KEY, BINANCE_SECOND_SECRET),
    (BINANCE_VENUE_KEY, BINANCE_VENUE_SECRET),
    switch=False,
)
# The example's strategy cancels its own resting bid once it is older than this (BID_MAX_AGE_SECONDS, 10 s), less a
# second of the difference between its clock and the venue's.
OWN_CANCEL_AGE_SECONDS = 9.0


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


@pytest.fixture
def pager() -> Iterator[Pager]:
    with Pager() as sink:
        yield sink


def bot_status(url: str) -> dict[str, Any]:
    """The bot's `status` control command (its control token)."""
    req = urllib.request.Request(
        f"{url}/control/status", data=b"{}", method="POST", headers={"Authorization": f"Bearer {BOT_TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


@pytest.mark.parametrize("venue", [KRAKEN, BINANCE], ids=lambda v: v.exchange)
def test_a_killed_bot_host_has_its_orders_cancelled_at_the_venue_one_page_and_an_approved_flatten(
    tmp_path: Path, pager: Pager, venue: Venue
) -> None:
    node_exporter = require_binary("prometheus-node-exporter")
    BOT, OTHER = venue.bot, venue.other  # noqa: N806 (the module's constants once, one venue's now)
    write_secret(tmp_path / "venue-key", venue.reconciler_key[0])
    write_secret(tmp_path / "venue-secret", venue.reconciler_key[1])
    write_secret(tmp_path / "approve-token", APPROVE_TOKEN)
    procs: list[subprocess.Popen[bytes]] = []
    reconciler: ThreadedServer | None = None
    with host_network() as network:
        host = network.add_host("bot")
        bot_target, node_target = f"{host.address}:{BOT_PORT}", f"{host.address}:{NODE_PORT}"
        # A market that stands still: the bots' bids rest, nothing fills but what the test buys.
        gateway = start_gateway(tmp_path / "gateway", host=network.gateway, volatility=0)
        try:
            bought = f"{BOT}-{RUN}-1"
            gateway.call("create_order", "BTC/USD", "market", "buy", HELD_BTC, None, {"clientOrderId": bought})
            # The test's fill is of the bot's form but not in its journal: the bot alerts on it, never cancels it.
            first = bot_config(
                tmp_path / BOT,
                BOT,
                "BTC-USD",
                host.address,
                BOT_PORT,
                venue.bot_key,
                gateway.url,
                venue.exchange,
                unknown_order="alert",
            )
            second_port = free_port()
            second = bot_config(
                tmp_path / OTHER,
                OTHER,
                "ETH-USD",
                "127.0.0.1",
                second_port,
                venue.other_key,
                gateway.url,
                venue.exchange,
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
                            "exchange": venue.exchange,
                            "api_key_file": str(tmp_path / "venue-key"),
                            "api_secret_file": str(tmp_path / "venue-secret"),
                            "urls": {"public": venue.rest(gateway.url), "private": venue.rest(gateway.url)},
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
                key = SECOND if prefix == OTHER else MAIN
                return {
                    str(o["clientOrderId"])
                    for o in gateway.call("fetch_open_orders", key=key)
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
            node_up = 'and on () up{job="node"} == 1'
            if venue.switch:
                armed = f'tradingbot_dead_man_switch_armed{{instance="{bot_target}"}} {node_up}'
                until(
                    "the bot's switch armed, its host's node exporter up", lambda: stack.scalar(armed) == 1, deadline=60
                )
            else:
                # No switch to wait for: the bot says so, exports none, and what protects its orders is the
                # reconciler's venue step (its key on the account, configured above).
                switch = bot_status(f"http://{bot_target}")["dead_man_switch"]
                assert (switch["active"], switch["applicable"]) == (False, False), switch
                assert switch["note"].startswith("not applicable on this venue"), switch
                scraped = (
                    f'up{{job="tradingbot", instance="{bot_target}"}} {node_up} '
                    f'unless on () tradingbot_dead_man_switch_armed{{instance="{bot_target}"}}'
                )
                until("the bot and its host's node exporter scraped", lambda: stack.scalar(scraped) == 1, deadline=60)

            # The host dies: every process of it at once, and its link.
            left = resting(BOT)
            killed = time.monotonic()
            del running[BOT]
            for proc in host.processes:
                proc.send_signal(signal.SIGKILL)
            host.link_down()

            # Within the switch's timeout (Kraken) or the alert's detection (Binance: the venue step alone), DESIGN.md's
            # 10 s more being what a test may wait (not a measurement).
            until(
                "the bot's orders cancelled at the venue",
                lambda: not resting(BOT),
                deadline=venue.cancel_deadline,
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

            # The second bot on the account kept its orders (it cancels one itself only when it is old) and trades on:
            # a bid resting again (between its own cancel of an old bid and the next one's placement it has none).
            assert left
            until("the second bot's bid resting", lambda: resting(OTHER), deadline=30, interval=0.2)
            for order in gateway.call("fetch_closed_orders", key=SECOND):
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

            # It dies again soon after it came back: the host-down page reaches the pager again at once (its route
            # flushes a group's new alert at once, not at the pager's next 1-minute slot). The account is flat now: no
            # exposure page (nothing to page about) and no flatten is asked (nor paged).
            until("the returned bot's bid resting", lambda: resting(BOT), deadline=60)
            killed_again = time.monotonic()
            del running[BOT]
            for proc in host.processes:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
            host.link_down()
            until("the bot's orders cancelled again", lambda: not resting(BOT), deadline=venue.cancel_deadline)
            until(
                "the second death's host-down page",
                lambda: pager.pages.count("TradingBotHostDown") == 2,
                deadline=90,
            )
            host_paged_again = pager.arrived["TradingBotHostDown"] - killed_again

            def both_ended() -> bool:
                episodes = stack.episodes("TradingBotHostDown")
                return len(episodes) == 2 and all(e["state"] == "recovered" for e in episodes)

            until("the second death's episode ended", both_ended)
            second = max(stack.episodes("TradingBotHostDown"), key=lambda e: e["id"])
            outcomes = [(s["action"], s["outcome"]) for a in second["attempts"] for s in a["steps"]]
            assert outcomes == [("venue", "success"), ("escalate", "skipped"), ("venue", "skipped")], second
            assert pending(reconciler) == [] and pager.pages.count("TradingOpsApprovalRequested") == 1
            assert pager.pages.count("TradingOpsBotHostDown") == 1 and stack.paged("TradingOpsBotHostDown") == []
            print(
                json.dumps(
                    {
                        "venue": venue.exchange,
                        "host_killed_to_orders_cancelled_seconds": round(orders_gone, 1),
                        "host_killed_to_host_down_page_seconds": round(host_paged, 1),
                        "host_killed_to_page_seconds": round(paged, 1),
                        "approved_to_flat_seconds": round(flattened, 1),
                        "host_back_to_trading_seconds": round(back, 1),
                        "killed_again_to_host_down_page_seconds": round(host_paged_again, 1),
                        "switch_timeout_seconds": SWITCH["timeout_seconds"] if venue.switch else None,
                        "host_down_detection_seconds_at_most": HOST_DOWN_DETECTION_SECONDS,
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


@pytest.mark.timeout(1200)
def test_a_host_that_dies_returns_and_dies_again_pages_each_death_once_on_time_and_nothing_for_its_returns(
    tmp_path: Path,
) -> None:
    """The sequence operators live (tests/host_deaths.py): a bot host killed, returned, killed again within the
    bot-host-down rule's cooldown, and killed again as soon as its previous death's alert was over (inside the pager
    group's interval), then returned for good. At the pager (resolved notices included, as the shipped pager has
    them): each death's host-down page once, as soon as the first death's, no exposure page (the bot holds no
    position: its orders cancelled, the account is flat), and nothing for a return (no TradingBotDown,
    TradingBotHeartbeatStale, TradingOpsRemediationFailed or TradingOpsRemediationCircuitOpen; nothing else at all);
    no resolved notice of an earlier death after a later kill. Prints each death's page times;
    benchmarks/deploy/bench_host_deaths.py runs ten."""
    pager = Pager()
    try:
        with host_deaths(tmp_path, pager) as run:
            play(run, plan(3), quiet_seconds=40)
            verdict = judge(run)
            print(json.dumps(verdict))
            print(account(run))
            for row in verdict["deaths"]:
                assert row[f"{HOST_DOWN}_count"] == 1, verdict
            assert EXPOSURE not in run.pager.pages, verdict  # a flat account's exposure page is skipped
            assert verdict["false_pages"] == [], verdict
            assert verdict["stale_resolved"] == [], verdict
            # Each death's pages reached the pager in the first death's time (the count, not the seconds, asserted).
            assert verdict["late_pages"] == [], verdict
            # Every death's episode cancelled what rested, the cooldown holding none of them back, and paged nobody
            # about the flat account.
            episodes = run.stack.episodes(HOST_DOWN)
            assert len(episodes) == 3, episodes
            assert all(e["state"] in ("recovered", "resolved") for e in episodes), episodes
            for episode in episodes:
                steps = [s for a in episode["attempts"] for s in a["steps"]]
                cancel = next(s for s in steps if s["action"] == "venue")  # then the flatten, skipped: nothing held
                assert cancel["outcome"] == "success", episode
                assert all(s["outcome"] == "skipped" for s in steps if s["action"] == "escalate"), episode
    finally:
        pager.close()
