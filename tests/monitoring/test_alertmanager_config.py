"""Alertmanager configuration: amtool accepts it, every alert reaches the right receivers, inhibition works.

Integration tests need amtool and prometheus-alertmanager (Debian package `prometheus-alertmanager`), and amtool of
the long-term-support generation (`make monitoring-lts`): the configuration and routing checks run on both; the
inhibition test starts a real Alertmanager on a free loopback port.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import alertmanager_argv
from ports import free_port
from server_process import wait_http
from system_binaries import GENERATIONS, REPO_ROOT, SYSTEM, Generation, run_binary

from trading_ops.durations import format_duration, parse_duration
from trading_ops.reconciler.actions.escalate import BOT_HOST_DOWN, ESCALATIONS
from trading_ops.reconciler.packaged_playbooks import PACKAGED_PLAYBOOKS
from trading_ops.reconciler.playbook import load_packaged_playbook, parse_matcher
from trading_ops.stack.alertmanager_config import tune_routes
from trading_ops.stack.profiles import ALERTMANAGER_CLUSTER_DEFAULTS, FAST, SCRAPE_FAILURE_FOR_FLOOR_SECONDS

ALERTMANAGER_DIR = REPO_ROOT / "alertmanager"
CONFIG = ALERTMANAGER_DIR / "alertmanager.yml"
ROUTING_CASES = yaml.safe_load((ALERTMANAGER_DIR / "tests" / "routing-cases.yml").read_text())
RULES_DIR = REPO_ROOT / "prometheus" / "rules"
SECRETS_DIR = "/etc/alertmanager/secrets/"
RECONCILER_URL = "http://reconciler:9102/api/v1/alertmanager"
# Alerts the reconciler posts to Alertmanager itself (they are in no rule file): its escalation list.
RECONCILER_POSTED_ALERTS = ESCALATIONS
# Alerts about the reconciler itself: it cannot heal itself, so its webhook does not get them (people do).
RECONCILER_OWN_HEALTH = {
    "TradingOpsReconcilerDown",
    "TradingOpsWatchdogMissing",
    "TradingOpsWebhookRejections",
    "TradingOpsCircuitStillOpen",
    "TradingOpsRemediationSuccessRatioLow",
    "TradingOpsEscalationFailing",
    "TradingOpsEscalationsStuck",
    "TradingOpsLedgerPruneFailing",
    "TradingOpsLedgerCommitsHeld",
    "TradingOpsApprovalUnanswered",
}
# How often Alertmanager's dispatcher removes alert groups left empty (dispatch.go's maintenance ticker).
ALERTMANAGER_GROUP_CLEANUP_SECONDS = 30.0
# What a person must see for each severity, whatever else receives the alert.
RECEIVER_FOR_SEVERITY = {"critical": "pager", "warning": "chat", "info": "null", "none": "deadman"}


def load_config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def routed_receivers(labels: dict[str, str], generation: Generation = SYSTEM) -> list[str]:
    args = [f"{name}={value}" for name, value in labels.items()]
    result = run_binary("amtool", "config", "routes", "test", f"--config.file={CONFIG}", *args, generation=generation)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().split(",")


def alert_tiers() -> list[tuple[str, str]]:
    tiers = {
        (rule["alert"], rule["labels"]["severity"])
        for path in sorted(RULES_DIR.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    return sorted(tiers | set(RECONCILER_POSTED_ALERTS.items()))


@pytest.mark.alertmanager
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_amtool_check_config(generation: Generation) -> None:
    result = run_binary("amtool", "check-config", CONFIG, generation=generation)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout  # the notification template was found and parsed


@pytest.mark.alertmanager
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
@pytest.mark.parametrize("case", ROUTING_CASES, ids=lambda c: c["name"])
def test_routing_case(case: dict[str, Any], generation: Generation) -> None:
    args = [f"{name}={value}" for name, value in case["labels"].items()]
    result = run_binary(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={CONFIG}",
        f"--verify.receivers={','.join(case['receivers'])}",
        *args,
        generation=generation,
    )
    assert result.returncode == 0, f"routed to {result.stdout.strip()}, expected {case['receivers']}"


def routes_with_their_parents(
    routes: list[dict[str, Any]], parents: tuple[str, ...] = ()
) -> Iterator[tuple[dict[str, Any], tuple[str, ...]]]:
    """Every route of the tree with the matchers an alert must also meet to reach it (its ancestors')."""
    for route in routes:
        yield route, parents
        yield from routes_with_their_parents(route.get("routes", []), (*parents, *route["matchers"]))


def test_routing_cases_cover_every_route_and_severity() -> None:
    for route, parents in routes_with_their_parents(load_config()["route"]["routes"]):
        matchers = (*parents, *route["matchers"])
        assert any(all(parse_matcher(m).matches(case["labels"]) for m in matchers) for case in ROUTING_CASES), route
    severities = {case["labels"].get("severity") for case in ROUTING_CASES}
    assert set(RECEIVER_FOR_SEVERITY) <= severities


@pytest.mark.alertmanager
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
@pytest.mark.parametrize(("alertname", "severity"), alert_tiers())
def test_every_alert_reaches_a_person_by_severity(alertname: str, severity: str, generation: Generation) -> None:
    labels = {"alertname": alertname, "severity": severity, "instance": "paper-bot:9101"}
    receivers = routed_receivers(labels, generation)
    assert RECEIVER_FOR_SEVERITY[severity] in receivers
    if severity in ("critical", "warning") and alertname not in RECONCILER_POSTED_ALERTS:
        # Everything actionable goes to the reconciler, except its own health (it cannot heal itself).
        assert ("reconciler" in receivers) != (alertname in RECONCILER_OWN_HEALTH), receivers
    if alertname in RECONCILER_POSTED_ALERTS:
        person = RECEIVER_FOR_SEVERITY[RECONCILER_POSTED_ALERTS[alertname]]
        assert receivers == [person], "the reconciler's escalations reach people, never loop back to it"


def escalation_routes() -> list[dict[str, Any]]:
    """The top-level routes that name escalation alerts (the reconciler's escalation list)."""
    return [
        r
        for r in load_config()["route"]["routes"]
        if "TradingOps" in str(r["matchers"]) and any(name in str(r["matchers"]) for name in ESCALATIONS)
    ]


def test_every_escalation_the_reconciler_can_post_has_a_route_to_people_only() -> None:
    # The escalation list and the routes are held together: a new escalation alert without its route (it would fall
    # through to the severity routes, and come back to the reconciler) fails here, and so does a route naming an
    # escalation that no longer exists.
    routed: set[str] = set()
    for route in escalation_routes():
        assert route["receiver"] in ("pager", "chat"), route
        assert not route.get("continue"), f"an escalation route must end the walk (no continue): {route}"
        assert not route.get("routes"), route
        for matcher in route["matchers"]:
            parsed = parse_matcher(matcher)
            if parsed.name == "alertname":
                routed |= set(parsed.value.split("|"))
    assert routed == set(ESCALATIONS)
    # Every escalate step of the packaged playbooks names one of the list (the loader refuses any other).
    for name in PACKAGED_PLAYBOOKS:
        for rule in load_packaged_playbook(name).rules:
            for step in (*rule.steps, *rule.on_recovery):
                if step.action == "escalate":
                    assert step.params.get("alertname", "TradingOpsRemediationFailed") in ESCALATIONS, rule.name


def test_the_exposure_page_has_its_own_prompt_route() -> None:
    (route,) = [r for r in load_config()["route"]["routes"] if r["matchers"] == [f'alertname="{BOT_HOST_DOWN}"']]
    assert route["receiver"] == "pager"
    assert route["group_wait"] == "0s"  # not the pager's 10 s
    # One group per death (the escalate step gives the exposure page its episode): a death soon after a return is a
    # new group, paged at once, never held for the last death's group interval nor taken for its page.
    assert route["group_by"] == ["alertname", "instance", "episode"]
    # Longer than the cluster's peer timeout (Alertmanager's 15 s as shipped): a shorter one let the second member send
    # the page again after the first had sent its end (tests/deploy/test_ha_pair_returns.py).
    assert parse_duration(route["group_interval"]) > ALERTMANAGER_CLUSTER_DEFAULTS["peer-timeout"]


def test_the_host_down_page_waits_out_the_clusters_peer_timeout_and_at_the_fast_profile_the_alerts_for() -> None:
    # The same labels at every death. Its group interval is longer than the cluster's peer timeout (the second member
    # checks a view of the group that old against the notification log: shorter, it paged a returned host again), and
    # at the fast profile, whose `for:` is short, under TradingBotHostDown's `for:` there, so a death's end reaches the
    # notification log before the host's next death can fire (else it is taken for the page already sent).
    host_down = ['alertname="TradingBotHostDown"', 'severity="critical"']
    (route,) = [r for r in load_config()["route"]["routes"] if r["matchers"] == host_down]
    assert route["receiver"] == "pager" and route["group_wait"] == "0s"
    shipped = parse_duration(route["group_interval"])
    assert shipped > ALERTMANAGER_CLUSTER_DEFAULTS["peer-timeout"]
    fast = FAST.people_group_interval(shipped)
    assert dict(FAST.alertmanager_cluster)["peer-timeout"] < fast < SCRAPE_FAILURE_FOR_FLOOR_SECONDS


def test_every_route_to_the_pager_waits_out_the_clusters_peer_timeout() -> None:
    # Any route of the pager with a group interval under the peer timeout pages an ended alert again from the cluster's
    # second member; the fast profile divides them, never below its own peer timeout.
    def pager_routes(route: dict[str, Any], inherited: str) -> list[dict[str, Any]]:
        receiver = route.get("receiver", inherited)
        own = [route] if receiver == "pager" else []
        return own + [r for child in route.get("routes", []) for r in pager_routes(child, receiver)]

    root = load_config()["route"]
    for route in pager_routes(root, root["receiver"]):
        shipped = parse_duration(route.get("group_interval", root["group_interval"]))
        assert shipped > ALERTMANAGER_CLUSTER_DEFAULTS["peer-timeout"], route
        assert FAST.people_group_interval(shipped) > dict(FAST.alertmanager_cluster)["peer-timeout"], route


# The jobs a bot's alerts carry: the library's bots and freqtrade's sidecar (some rules match one of them only).
BOT_JOBS = ("tradingbot", "freqtrade")


def heals_unattended(alertname: str, severity: str) -> bool:
    """Whether every packaged playbook heals this alert unattended (Rule.heals_unattended) for every kind of bot: the
    first rule that takes it, for each job, leaves nothing for a person once its recovery is verified."""
    for name in PACKAGED_PLAYBOOKS:
        playbook = load_packaged_playbook(name)
        for job in BOT_JOBS:
            labels = {"alertname": alertname, "severity": severity, "job": job, "instance": "paper-bot:9101"}
            rule = next((r for r in playbook.rules if r.matches(labels)), None)
            if rule is None or not rule.heals_unattended:
                return False
    return True


def graced_alerts(severity: str) -> tuple[set[str], dict[str, Any]]:
    """The alert names the people's route of `severity` waits out (its child route with a group_wait of its own),
    and that child route."""
    (route,) = [
        r
        for r in load_config()["route"]["routes"]
        if r["matchers"][0] == f'severity="{severity}"' and r["receiver"] == RECEIVER_FOR_SEVERITY[severity]
    ]
    (child,) = route["routes"]
    (matcher,) = child["matchers"]
    parsed = parse_matcher(matcher)
    assert parsed.name == "alertname" and parsed.op == "=~", matcher
    return set(parsed.value.split("|")), child


@pytest.mark.parametrize("severity", ["critical", "warning"])
def test_people_wait_out_exactly_the_faults_the_playbook_heals_unattended(severity: str) -> None:
    # A healed fault pages nobody: its route to people waits longer than its remedy and proof take. The list in
    # alertmanager.yml and the playbooks are held together: a rule that starts asking a person (or paging itself),
    # or a new alert a rule heals, fails here until the route says the same.
    names, route = graced_alerts(severity)
    expected = {
        alertname for alertname, tier in alert_tiers() if tier == severity and heals_unattended(alertname, tier)
    }
    assert names == expected
    assert "receiver" not in route and not route.get("continue"), route  # its parent's receiver, then the reconciler
    # Longer than the root's wait (what every other alert gets), and than the slowest shipped remedy's detection to
    # verification at the shipped timings: a restart's wait_for (10 s) and start, the verifying scrape and evaluation.
    root = load_config()["route"]
    wait = parse_duration(route["group_wait"])
    assert wait >= max(60.0, 2 * parse_duration(root["group_wait"]))
    # A fault that joins the group its healed predecessor emptied (Alertmanager removes emptied groups every 30 s)
    # waits for the group's next flush: at least the wait too. The fast profile keeps it (Profile.people_group_interval
    # aside: tune_routes).
    assert parse_duration(route["group_interval"]) >= wait + ALERTMANAGER_GROUP_CLEANUP_SECONDS
    fast = {"route": {"receiver": "chat", "routes": [copy.deepcopy(route)]}}
    tune_routes(fast["route"], {"reconciler"}, FAST)
    assert fast["route"]["routes"][0]["group_interval"] == route["group_interval"]
    # Nothing a person must decide or hear at once waits: a venue down, a breached loss limit, the host-down page.
    assert not names & {"TradingBotVenueDown", "TradingBotDailyLossBreached", "TradingBotHostDown", *ESCALATIONS}
    # Each one's runbook tells whoever is notified anyway what it means.
    for name in sorted(names):
        runbook = " ".join((REPO_ROOT / "runbooks" / f"{name}.md").read_text().split())
        assert "only if it outlived its remedy" in runbook and "waits a minute for it" in runbook, name


def test_the_reconciler_health_route_names_real_alerts() -> None:
    # A renamed alert would silently fall through to the severity routes (and reach the reconciler again).
    assert RECONCILER_OWN_HEALTH <= {name for name, _ in alert_tiers()}
    (route,) = [r for r in load_config()["route"]["routes"] if "TradingOpsReconcilerDown" in str(r["matchers"])]
    assert set(parse_matcher(route["matchers"][0]).value.split("|")) == RECONCILER_OWN_HEALTH


def test_grouping_and_reconciler_webhook() -> None:
    config = load_config()
    assert config["route"]["group_by"] == ["alertname", "service", "instance"]
    (reconciler,) = [r for r in config["receivers"] if r["name"] == "reconciler"]
    (webhook,) = reconciler["webhook_configs"]
    assert webhook["url"] == RECONCILER_URL
    assert webhook["send_resolved"] is True
    assert (
        webhook["max_alerts"] == 1000
    )  # paired with reconciler.max_body_bytes (tests/reconciler/test_reconciler_body_limit.py)
    assert webhook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"{SECRETS_DIR}reconciler-token",
    }
    watchdog_routes = [r for r in config["route"]["routes"] if r["matchers"] == ['alertname="Watchdog"']]
    assert {r["receiver"] for r in watchdog_routes} == {"deadman", "reconciler"}
    assert all(r["repeat_interval"] == "1m" for r in watchdog_routes)


def test_secrets_come_from_files() -> None:
    text = CONFIG.read_text()
    for key in ("routing_key:", "service_key:", "api_url:", "auth_password:", "credentials:"):
        assert not re.search(rf"^\s*{key}", text, re.MULTILINE), f"inline secret {key}"
    assert text.count(SECRETS_DIR) == 4


# -- inhibition, against a real Alertmanager ---------------------------------------------------------------


@pytest.fixture(scope="module")
def alertmanager_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Alertmanager running the committed configuration, with its secret files in a temp dir."""
    tmp = tmp_path_factory.mktemp("alertmanager")
    secrets = tmp / "secrets"
    secrets.mkdir()
    for name in ("pagerduty-routing-key", "slack-webhook-url", "reconciler-token", "smtp-password"):
        (secrets / name).write_text("http://127.0.0.1:9/not-used\n")
    (tmp / "templates").symlink_to(ALERTMANAGER_DIR / "templates")
    config = tmp / "alertmanager.yml"
    config.write_text(CONFIG.read_text().replace(SECRETS_DIR, f"{secrets}/"))
    port = free_port()
    process = subprocess.Popen(
        alertmanager_argv(config, tmp / "data", port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"Alertmanager did not start: {process.communicate()[1].decode()[-2000:]}")
            time.sleep(0.1)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def post_alerts(url: str, *labelsets: dict[str, str]) -> None:
    body = json.dumps([{"labels": labels, "annotations": {"summary": "test."}} for labels in labelsets]).encode()
    request = urllib.request.Request(
        f"{url}/api/v2/alerts", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def alert_states(url: str, instance: str) -> dict[str, str]:
    """alertname/severity -> state (active or suppressed) of the alerts for `instance`."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts?filter=instance%3D%22{instance}%22", timeout=5) as response:
        alerts = json.load(response)
    return {f"{a['labels']['alertname']}/{a['labels']['severity']}": a["status"]["state"] for a in alerts}


def assert_states(url: str, instance: str, expected: dict[str, str], timeout: float = 10.0) -> None:
    """Poll until the alerts of `instance` have the expected states: the inhibitor learns of new source alerts
    asynchronously after the POST, so the first read may not show the inhibition yet."""
    deadline = time.monotonic() + timeout
    while True:
        states = alert_states(url, instance)
        if states == expected or time.monotonic() > deadline:
            assert states == expected
            return
        time.sleep(0.1)


def bot_alert(alertname: str, severity: str, instance: str, **extra: str) -> dict[str, str]:
    return {
        "alertname": alertname,
        "severity": severity,
        "service": "tradingbot",
        "job": "tradingbot",
        "instance": instance,
        **extra,
    }


@pytest.mark.alertmanager
def test_a_down_bot_mutes_its_other_alerts_only(alertmanager_url: str) -> None:
    post_alerts(
        alertmanager_url,
        bot_alert("TradingBotDown", "critical", "bot-a:9101"),
        bot_alert("TradingBotHeartbeatStale", "critical", "bot-a:9101"),
        bot_alert("TradingBotHeartbeatStale", "critical", "bot-b:9101"),
    )
    assert_states(
        alertmanager_url,
        "bot-a:9101",
        {
            "TradingBotDown/critical": "active",
            "TradingBotHeartbeatStale/critical": "suppressed",
        },
    )
    assert_states(alertmanager_url, "bot-b:9101", {"TradingBotHeartbeatStale/critical": "active"})


@pytest.mark.alertmanager
def test_a_bots_orders_channel_down_mutes_its_stale_heartbeat_only(alertmanager_url: str) -> None:
    """A bot whose venue session dropped stalls its loop on the venue: one page, one remedy (the reconnect). Its
    market data channel alone down does not mute it, nor does another bot's session."""
    post_alerts(
        alertmanager_url,
        bot_alert("TradingBotBrokerDisconnected", "critical", "bot-h:9101", channel="orders"),
        bot_alert("TradingBotHeartbeatStale", "critical", "bot-h:9101"),
        bot_alert("TradingBotBrokerDisconnected", "critical", "bot-i:9101", channel="market_data"),
        bot_alert("TradingBotHeartbeatStale", "critical", "bot-i:9101"),
        bot_alert("TradingBotHeartbeatStale", "critical", "bot-j:9101"),
    )
    assert_states(
        alertmanager_url,
        "bot-h:9101",
        {"TradingBotBrokerDisconnected/critical": "active", "TradingBotHeartbeatStale/critical": "suppressed"},
    )
    assert_states(
        alertmanager_url,
        "bot-i:9101",
        {"TradingBotBrokerDisconnected/critical": "active", "TradingBotHeartbeatStale/critical": "active"},
    )
    assert_states(alertmanager_url, "bot-j:9101", {"TradingBotHeartbeatStale/critical": "active"})


@pytest.mark.alertmanager
def test_a_freqtrade_that_does_not_answer_mutes_its_stale_heartbeat_only(alertmanager_url: str) -> None:
    post_alerts(
        alertmanager_url,
        bot_alert("TradingBotFreqtradeDown", "critical", "ft-a:9103"),
        bot_alert("TradingBotHeartbeatStale", "critical", "ft-a:9103"),
        bot_alert("TradingBotHeartbeatStale", "critical", "ft-b:9103"),
        # freqtrade exits at a database error: its journal failing is why it is down, not a consequence.
        bot_alert("TradingBotJournalFailing", "critical", "ft-a:9103"),
    )
    assert_states(
        alertmanager_url,
        "ft-a:9103",
        {
            "TradingBotFreqtradeDown/critical": "active",
            "TradingBotHeartbeatStale/critical": "suppressed",
            "TradingBotJournalFailing/critical": "active",
        },
    )
    assert_states(alertmanager_url, "ft-b:9103", {"TradingBotHeartbeatStale/critical": "active"})


@pytest.mark.alertmanager
def test_a_freqtrade_sidecar_that_cannot_be_scraped_mutes_what_its_freqtrade_still_fires(alertmanager_url: str) -> None:
    post_alerts(
        alertmanager_url,
        bot_alert("TradingBotFreqtradeSidecarDown", "critical", "ft-c:9103"),
        bot_alert("TradingBotBrokerDisconnected", "critical", "ft-c:9103"),
        bot_alert("TradingBotBrokerDisconnected", "critical", "ft-d:9103"),
    )
    assert_states(
        alertmanager_url,
        "ft-c:9103",
        {"TradingBotFreqtradeSidecarDown/critical": "active", "TradingBotBrokerDisconnected/critical": "suppressed"},
    )
    assert_states(alertmanager_url, "ft-d:9103", {"TradingBotBrokerDisconnected/critical": "active"})


@pytest.mark.alertmanager
def test_a_dead_freqtrade_host_pages_as_its_host_alone(alertmanager_url: str) -> None:
    """A host that runs only a freqtrade and its sidecar dies: should its sidecar's alert fire beside the host's, the
    host's mutes it (one page, the host's, whose rule acts at the venue), and never the other way round (each muted
    the other before: no page at all). Its other alerts stay muted by the sidecar's."""
    post_alerts(
        alertmanager_url,
        bot_alert("TradingBotHostDown", "critical", "10.0.1.41:9103", job="freqtrade", host="10.0.1.41"),
        bot_alert("TradingBotFreqtradeSidecarDown", "critical", "10.0.1.41:9103", job="freqtrade"),
        bot_alert("TradingBotHeartbeatStale", "critical", "10.0.1.41:9103", job="freqtrade"),
    )
    assert_states(
        alertmanager_url,
        "10.0.1.41:9103",
        {
            "TradingBotHostDown/critical": "active",
            "TradingBotFreqtradeSidecarDown/critical": "suppressed",
            "TradingBotHeartbeatStale/critical": "suppressed",
        },
    )


@pytest.mark.alertmanager
def test_critical_mutes_the_warning_tier_of_the_same_alert(alertmanager_url: str) -> None:
    post_alerts(
        alertmanager_url,
        bot_alert("TradingBotDiskAlmostFull", "critical", "bot-c:9101"),
        bot_alert("TradingBotDiskAlmostFull", "warning", "bot-c:9101"),
        bot_alert("TradingBotEventLoopLag", "warning", "bot-c:9101"),
    )
    assert_states(
        alertmanager_url,
        "bot-c:9101",
        {
            "TradingBotDiskAlmostFull/critical": "active",
            "TradingBotDiskAlmostFull/warning": "suppressed",
            "TradingBotEventLoopLag/warning": "active",
        },
    )


@pytest.mark.alertmanager
def test_breached_loss_and_market_data_disconnect_mute_their_consequences(alertmanager_url: str) -> None:
    post_alerts(
        alertmanager_url,
        bot_alert("TradingBotDailyLossBreached", "critical", "bot-d:9101", venue="paper", strategy="demo"),
        bot_alert("TradingBotDailyLossApproaching", "warning", "bot-d:9101", venue="paper", strategy="demo"),
        bot_alert("TradingBotBrokerDisconnected", "critical", "bot-d:9101", venue="paper", channel="market_data"),
        bot_alert("TradingBotMarketDataStale", "critical", "bot-d:9101", venue="paper", symbol="BTC-USD"),
    )
    assert_states(
        alertmanager_url,
        "bot-d:9101",
        {
            "TradingBotDailyLossBreached/critical": "active",
            "TradingBotDailyLossApproaching/warning": "suppressed",
            "TradingBotBrokerDisconnected/critical": "active",
            "TradingBotMarketDataStale/critical": "suppressed",
        },
    )


def test_an_orders_disconnect_mutes_lost_order_replies_of_that_bot_only(alertmanager_url: str) -> None:
    post_alerts(
        alertmanager_url,
        bot_alert("TradingBotBrokerDisconnected", "critical", "bot-e:9101", venue="paper", channel="orders"),
        bot_alert("TradingBotOrderRepliesLost", "warning", "bot-e:9101", venue="paper"),
        bot_alert("TradingBotOrdersStuckInFlight", "warning", "bot-e:9101", venue="paper"),
        # A market-data disconnect says nothing about order replies.
        bot_alert("TradingBotBrokerDisconnected", "critical", "bot-f:9101", venue="paper", channel="market_data"),
        bot_alert("TradingBotOrderRepliesLost", "warning", "bot-f:9101", venue="paper"),
        bot_alert("TradingBotOrdersStuckInFlight", "warning", "bot-f:9101", venue="paper"),
    )
    expected = {"TradingBotBrokerDisconnected/critical": "active"}
    muted = {"TradingBotOrderRepliesLost/warning": "suppressed", "TradingBotOrdersStuckInFlight/warning": "suppressed"}
    assert_states(alertmanager_url, "bot-e:9101", {**expected, **muted})
    assert_states(alertmanager_url, "bot-f:9101", {**expected, **{name: "active" for name in muted}})


@pytest.mark.alertmanager
def test_a_venue_down_mutes_the_connectivity_alerts_of_its_bots_only(alertmanager_url: str) -> None:
    venue = {"alertname": "TradingBotVenueDown", "severity": "critical", "service": "tradingbot", "venue": "kx"}
    post_alerts(
        alertmanager_url,
        venue,
        bot_alert("TradingBotBrokerDisconnected", "critical", "bot-v1:9101", venue="kx", channel="orders"),
        bot_alert("TradingBotMarketDataStale", "critical", "bot-v1:9101", venue="kx", symbol="BTC-USD"),
        # Orders sent just before the venue went away stay unacknowledged until it is back.
        bot_alert("TradingBotOrdersStuckInFlight", "warning", "bot-v1:9101", venue="kx"),
        bot_alert("TradingBotBrokerDisconnected", "critical", "bot-v2:9101", venue="other", channel="orders"),
        bot_alert("TradingBotDailyLossBreached", "critical", "bot-v3:9101", venue="kx", strategy="demo"),
    )
    # Every bot of the venue: its connectivity alerts are the venue's, the one page is TradingBotVenueDown's.
    assert_states(
        alertmanager_url,
        "bot-v1:9101",
        {
            "TradingBotBrokerDisconnected/critical": "suppressed",
            "TradingBotMarketDataStale/critical": "suppressed",
            "TradingBotOrdersStuckInFlight/warning": "suppressed",
        },
    )
    # Another venue's disconnect, and a loss limit on this venue, are news of their own.
    assert_states(alertmanager_url, "bot-v2:9101", {"TradingBotBrokerDisconnected/critical": "active"})
    assert_states(alertmanager_url, "bot-v3:9101", {"TradingBotDailyLossBreached/critical": "active"})


# -- what reaches the receivers, against a real Alertmanager -------------------------------------------------


class Receivers:
    """One webhook server standing in for every receiver of the committed configuration: what each one was sent
    (receiver, alertname, status), in the order it arrived."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        receivers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receivers.lock:
                    receivers.sent.extend(
                        (body["receiver"], a["labels"]["alertname"], a["status"]) for a in body["alerts"]
                    )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, alertname: str) -> list[tuple[str, str]]:
        with self.lock:
            return [(receiver, status) for receiver, name, status in self.sent if name == alertname]


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[tuple[str, Receivers]]:
    """A real Alertmanager on the committed routing tree, each receiver a webhook to a server of the test's own."""
    with alertmanager_routing(tmp_path, load_config()) as running:
        yield running


# The people's wait for a healed fault in the test below: seconds, not the shipped minute (the routes as shipped).
SHORT_WAIT_SECONDS = 3.0


@pytest.fixture
def routed_short_wait(tmp_path: Path) -> Iterator[tuple[str, Receivers]]:
    """As `routed`, the people's routes that wait out a remedy waiting SHORT_WAIT_SECONDS."""
    config = load_config()
    for severity in ("critical", "warning"):
        _, child = graced_alerts(severity)
        (route,) = [r for r in config["route"]["routes"] if r.get("routes") == [child]]
        route["routes"][0] = {**child, "group_wait": format_duration(SHORT_WAIT_SECONDS)}
    with alertmanager_routing(tmp_path, config) as running:
        yield running


@contextlib.contextmanager
def alertmanager_routing(tmp_path: Path, config: dict[str, Any]) -> Iterator[tuple[str, Receivers]]:
    sink = Receivers()
    config.pop("global")
    config.pop("templates")
    config["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": sink.url, "send_resolved": True}]} for r in config["receivers"]
    ]
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        alertmanager_argv(path, tmp_path / "data", port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc=process)
        yield f"http://127.0.0.1:{port}", sink
    finally:
        process.terminate()
        process.wait(timeout=10)
        sink.server.shutdown()
        sink.server.server_close()


def exposure_page(starts_at: datetime, ends_at: datetime | None = None, episode: int = 1) -> dict[str, Any]:
    labels = {
        "alertname": BOT_HOST_DOWN,
        "severity": "critical",
        "service": "trading-ops",
        "target": "10.0.1.21:9101",
        "instance": "10.0.1.21:9101",
        "original_alertname": "TradingBotHostDown",
        "episode": str(episode),  # one per death (the escalate step's)
    }
    alert: dict[str, Any] = {"labels": labels, "annotations": {"summary": "test."}, "startsAt": starts_at.isoformat()}
    if ends_at is not None:
        alert["endsAt"] = ends_at.isoformat()
    return alert


def post_raw(url: str, alerts: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(
        f"{url}/api/v2/alerts", data=json.dumps(alerts).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def wait_for(what: str, check: Callable[[], bool], deadline: float) -> None:
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"{what}: not within {deadline:g} s"
        time.sleep(0.1)


@pytest.mark.alertmanager
def test_an_exposure_page_reaches_the_pager_only_again_for_a_host_that_dies_soon_after_it_came_back(
    routed: tuple[str, Receivers],
) -> None:
    url, sink = routed
    first = datetime.now(UTC)
    post_raw(url, [exposure_page(first)])
    wait_for("the first death's page at the pager", lambda: ("pager", "firing") in sink.of(BOT_HOST_DOWN), 30)
    # The host comes back: the reconciler ends the page (page_ends.py); the pager is told it resolved.
    post_raw(url, [exposure_page(first, datetime.now(UTC))])
    wait_for("the page resolved at the pager", lambda: ("pager", "resolved") in sink.of(BOT_HOST_DOWN), 30)
    # It dies again soon after: a new page (a new episode, a group of its own), not held for the pager group's
    # 1-minute group_interval. The deadline is a test's patience, well inside that minute, not a measurement.
    post_raw(url, [exposure_page(datetime.now(UTC), episode=2)])
    wait_for("the second death's page at the pager", lambda: sink.of(BOT_HOST_DOWN).count(("pager", "firing")) == 2, 40)
    # Never back to the reconciler, nor to anyone else.
    assert {receiver for receiver, _ in sink.of(BOT_HOST_DOWN)} == {"pager"}


def bot_fault(name: str, severity: str, starts_at: datetime, ends_at: datetime | None = None) -> dict[str, Any]:
    labels = {
        "alertname": name,
        "severity": severity,
        "service": "tradingbot",
        "instance": "b:9101",
        "job": "tradingbot",
    }
    alert: dict[str, Any] = {"labels": labels, "annotations": {"summary": "test."}, "startsAt": starts_at.isoformat()}
    if ends_at is not None:
        alert["endsAt"] = ends_at.isoformat()
    return alert


@pytest.mark.alertmanager
def test_a_fault_healed_within_the_wait_reaches_only_the_reconciler_and_one_that_outlives_it_pages_once(
    routed_short_wait: tuple[str, Receivers],
) -> None:
    url, sink = routed_short_wait
    # Healed: the reconciler is told at once, acts, and the alert ends before the people's wait is over.
    healed, started = "TradingBotBrokerDisconnected", datetime.now(UTC)
    post_raw(url, [bot_fault(healed, "critical", started)])
    wait_for("the fault at the reconciler", lambda: ("reconciler", "firing") in sink.of(healed), 10)
    assert sink.of(healed) == [("reconciler", "firing")]  # not yet at the pager: it waits
    post_raw(url, [bot_fault(healed, "critical", started, datetime.now(UTC))])
    wait_for("the fault's end at the reconciler", lambda: ("reconciler", "resolved") in sink.of(healed), 20)
    # A warning the playbook heals, outliving its wait: the chat work queue hears of it once, after the wait.
    outlived, began = "TradingBotStreamChannelStale", time.monotonic()
    post_raw(url, [bot_fault(outlived, "warning", datetime.now(UTC))])
    wait_for("the outlived fault in chat", lambda: ("chat", "firing") in sink.of(outlived), 20)
    assert time.monotonic() - began >= SHORT_WAIT_SECONDS - 0.5, "the chat route did not wait"
    # By then the healed fault's group has flushed its first (and only) time: nothing was sent to a person.
    time.sleep(1.0)
    assert [receiver for receiver, _ in sink.of(healed)] == ["reconciler", "reconciler"], sink.of(healed)
    assert sink.of(outlived).count(("chat", "firing")) == 1 and ("reconciler", "firing") in sink.of(outlived)


@pytest.mark.alertmanager
def test_every_escalation_reaches_people_and_never_the_reconciler(routed: tuple[str, Receivers]) -> None:
    url, sink = routed
    now = datetime.now(UTC).isoformat()
    post_raw(
        url,
        [
            {
                "labels": {"alertname": name, "severity": severity, "service": "trading-ops", "instance": "b:9101"},
                "annotations": {"summary": "test."},
                "startsAt": now,
            }
            for name, severity in ESCALATIONS.items()
        ],
    )
    for name, severity in ESCALATIONS.items():
        person = RECEIVER_FOR_SEVERITY[severity]
        wait_for(f"{name} at {person}", lambda name=name, person=person: (person, "firing") in sink.of(name), 40)
    # Everything owed has arrived; the reconciler was sent none of it.
    assert not [entry for entry in sink.sent if entry[0] == "reconciler"], sink.sent
