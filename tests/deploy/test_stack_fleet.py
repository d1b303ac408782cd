"""A fleet in the local stack: `trading-ops up --bot ccxt-gateway --bots 3` starts three example bots on one paper
gateway, each a child and a unit of its own on an account of its own; Prometheus scrapes all three and the
reconciler targets all three; a venue-wide outage (`gateway-chaos outage`, no reconnect ends it) drops every bot's
connections: TradingBotVenueDown fires once for the venue (no per-bot disconnect), the reconciler's venue-outage rule
sets every bot reduce_only in one step; when the venue returns every bot is connected again by itself and has
reconciled before adding risk, and the rule, verified, resumes the bots it had set reduce_only.

Needs the real servers prometheus and prometheus-alertmanager (Debian packages `prometheus`,
`prometheus-alertmanager`); `trading-ops up` starts them with the gateway, the bots and the reconciler on free loopback
ports, fast profile.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from polling import until
from ports import free_ports
from prometheus_client.parser import text_string_to_metric_families
from system_binaries import require_binary
from up_process import UpProcess, alive

from trading_ops.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

BOTS = 3
NAMES = [f"ccxt-{i}" for i in range(1, BOTS + 1)]


def get_json(url: str, token: str = "", body: dict[str, Any] | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def reconciliation_runs(instances: list[str], query: Callable[[str], list[dict[str, Any]]]) -> dict[str, Any]:
    """Each bot's tradingbot_reconciliation_runs_total by trigger and result (those above 0), as Prometheus has it
    and as the bot's own /metrics says now (a difference is the scrape's; the same counts are the bot's)."""
    runs: dict[str, Any] = {i: {"prometheus": {}, "bot": {}} for i in instances}
    for r in query("tradingbot_reconciliation_runs_total > 0"):
        labels = r["metric"]
        key = f"{labels.get('trigger')}/{labels.get('result')}"
        runs.setdefault(labels["instance"], {"prometheus": {}, "bot": {}})["prometheus"][key] = float(r["value"][1])
    for instance in instances:
        try:
            with urllib.request.urlopen(f"http://{instance}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError as exc:
            runs[instance]["bot"] = f"/metrics: {exc}"
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "tradingbot_reconciliation_runs_total" and sample.value:
                    key = f"{sample.labels.get('trigger')}/{sample.labels.get('result')}"
                    runs[instance]["bot"][key] = sample.value
    return runs


# What a failure's report shows, from Prometheus: each bot's channels, the venue's ratio, and the two alerts' states.
HISTORY = (
    "tradingbot_broker_connected",
    "venue:tradingbot_bots_disconnected:ratio",
    'ALERTS{alertname=~"TradingBotVenueDown|TradingBotBrokerDisconnected"}',
)


def transitions(prometheus: str, since: float) -> str:
    """Every change since `since` of each series of HISTORY, as Prometheus has it (UTC time, the series' telling
    labels, value; "gone" when it left the result): what a failure's report needs to tell which bot noticed first and
    what the rules made of it."""
    now = time.time()
    changes = []
    for expr in HISTORY:
        query = urllib.parse.urlencode({"query": expr, "start": since, "end": now, "step": 1})
        for series in get_json(f"{prometheus}/api/v1/query_range?{query}")["data"]["result"]:
            labels = series["metric"]
            name = " ".join(
                str(labels[k]) for k in ("__name__", "alertname", "alertstate", "instance", "channel") if k in labels
            )
            last, last_at = None, None
            for at, value in series["values"]:
                if last_at is not None and at - last_at > 1.5:
                    changes.append((last_at + 1, f"{name} gone"))
                    last = None
                if value != last:
                    changes.append((at, f"{name}={value}"))
                    last = value
                last_at = at
            if last_at is not None and now - last_at > 1.5:
                changes.append((last_at + 1, f"{name} gone"))
    return "\n".join(f"{datetime.fromtimestamp(at, UTC).strftime('%H:%M:%S')} {what}" for at, what in sorted(changes))


def test_three_bots_on_one_gateway_are_scraped_targeted_and_come_back_from_a_venue_outage(tmp_path: Path) -> None:
    require_binary("prometheus")
    base = free_ports(BOTS)
    up = UpProcess(tmp_path, "--bot", "ccxt-gateway", "--bots", str(BOTS), "--bots-base-port", str(base))
    began = time.time()
    try:
        up.wait_up()
        instances = [f"127.0.0.1:{base + i}" for i in range(BOTS)]
        token = (tmp_path / "secrets" / "control-token").read_text().strip()
        prometheus = up.url("prometheus")

        def query(expr: str) -> list[dict[str, Any]]:
            return list(get_json(f"{prometheus}/api/v1/query?query={urllib.parse.quote(expr)}")["data"]["result"])

        def connected() -> dict[tuple[str, str], float]:
            return {
                (r["metric"]["instance"], r["metric"]["channel"]): float(r["value"][1])
                for r in query("tradingbot_broker_connected")
            }

        # One child per bot, named as its bots: entry, each healthy; the status line counts them.
        pids = up.pids()
        assert set(pids) == {"paper-gateway", *NAMES, "reconciler", "alertmanager", "prometheus"}
        for instance in instances:
            assert get_json(f"http://{instance}/control/status", token, {})["trading_allowed"] is True
        assert up.wait_line(lambda line: f"| bots: {BOTS} ({BOTS} active) |" in line)
        # Every bot is in Prometheus's targets (file_sd) and in the reconciler's (the same bots: list), each with
        # its own unit, which stackctl runs.
        until(
            "every bot scraped",
            lambda: (
                sorted(
                    t["labels"]["instance"]
                    for t in get_json(f"{prometheus}/api/v1/targets?state=active")["data"]["activeTargets"]
                    if t["labels"]["job"] == "tradingbot" and t["health"] == "up"
                )
                == instances
            ),
        )
        # The reconciler's own word, once Prometheus has scraped it since the bots came up.
        until(
            "every bot a target of the reconciler",
            lambda: set(instances) <= {r["metric"]["target"] for r in query("tradingops_circuit_open")},
        )
        config = load_config(up.state_dir / "trading-ops.yaml")
        assert {i: t.unit for i, t in config.reconciler.targets.items()} == {
            instance: f"trading-ops-bot@{name}.service" for instance, name in zip(instances, NAMES, strict=True)
        }
        ctl = [*shlex.split(up.wait_line(lambda x: x.startswith("what it did: ")).removeprefix("what it did: "))][:-2]
        units = subprocess.run(
            [*ctl, "stackctl", "--state-dir", str(up.state_dir), "status"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for name in NAMES:
            assert f"trading-ops-bot@{name}.service" in units
        until("every channel of every bot up in Prometheus", lambda: set(connected().values()) == {1.0})

        # The venue goes down under all of them: the banner's command, for as long as it takes them all to notice.
        outage = up.wait_line(lambda line: line.startswith("venue outage:"))
        command = shlex.split(outage.removeprefix("venue outage:").split("  (")[0])
        assert command[-2:] == ["outage", "seconds=60"]
        outage_at = datetime.now(UTC).isoformat()
        subprocess.run([*command[:-1], "seconds=600"], cwd=tmp_path, capture_output=True, timeout=60, check=True)
        down = until("every channel of every bot down", lambda: (c := connected()) and set(c.values()) == {0.0} and c)
        assert {instance for instance, _ in down} == set(instances)
        # One alert and one run for the venue, not one per bot: TradingBotVenueDown, and the venue-outage rule sets
        # every bot of the venue reduce_only in one step (its per-bot disconnects do not fire at all).
        read = (tmp_path / "secrets" / "reconciler-read-token").read_text().strip()

        def episodes(alertname: str) -> list[dict[str, Any]]:
            found = get_json(f"{up.url('reconciler')}/api/v1/episodes?limit=100", read)["episodes"]
            return [e for e in found if e["alertname"] == alertname]

        def bot_states() -> set[str]:
            return {get_json(f"http://{i}/control/status", token, {})["state"] for i in instances}

        (venue_down,) = until("a venue-outage episode acting", lambda: episodes("TradingBotVenueDown"))
        venue = venue_down["labels"]["venue"]
        assert venue_down["rule"] == "venue-outage" and venue_down["target"] == venue
        until("every bot reduce_only", lambda: bot_states() == {"reduce_only"})
        # It ends by itself a moment from now; nobody tells the bots.
        subprocess.run([*command[:-1], "seconds=0.5"], cwd=tmp_path, capture_output=True, timeout=60, check=True)
        until("every channel of every bot up again", lambda: set(connected().values()) == {1.0})
        # Verified (the venue alert's own expression clear), then the bots it set to reduce_only resumed: one
        # episode, two steps, recovered; no page but the venue's own alert; nothing acted per bot.
        (done,) = until(
            "the venue-outage episode closed",
            lambda: [e for e in episodes("TradingBotVenueDown") if e["closed_at"]],
            deadline=120,
        )
        assert done["state"] == "recovered", done
        steps = [s for a in done["attempts"] for s in a["steps"]]
        assert [(s["action"], s["outcome"]) for s in steps] == [("bot", "success"), ("bot", "success")], steps
        assert f"reduce_only on {BOTS} of {BOTS} bots" in steps[0]["output"]
        assert f"resume on {BOTS} of {BOTS} bots" in steps[1]["output"]
        until("every bot active again", lambda: bot_states() == {"active"})
        acted = [
            (e["labels"], e["starts_at"], e["state"], [s["action"] for a in e["attempts"] for s in a["steps"]])
            for e in episodes("TradingBotBrokerDisconnected")
            if e["attempts"]
        ]
        if acted:
            pytest.fail(
                f"per-bot episodes acted on: {acted}\noutage from {outage_at}; TradingBotVenueDown active from "
                f"{venue_down['starts_at']}\n{transitions(prometheus, began)}",
                pytrace=False,
            )
        failed = get_json(
            f"{up.url('alertmanager')}/api/v2/alerts?filter=alertname%3D%22TradingOpsRemediationFailed%22"
        )
        assert failed == []
        for instance in instances:
            until(
                f"{instance} reconciled after the reconnect",
                lambda i=instance: (
                    get_json(f"http://{i}/control/status", token, {})["reconnect_reconciliation_pending"] is False
                ),
            )
        passed = 'tradingbot_reconciliation_runs_total{trigger="reconnect",result=~"clean|resolved"} >= 1'
        try:
            until(
                "Prometheus has every bot's passed reconnect reconciliation",
                lambda: {r["metric"]["instance"] for r in query(passed)} == set(instances),
            )
        except AssertionError as exc:
            started = {r["metric"]["instance"]: r["value"][1] for r in query("process_start_time_seconds")}
            events = [line for line in up.lines if any(w in line for w in ("restart", "stopped", "watchdog", "!!!"))]
            raise AssertionError(
                f"{exc}; each bot's reconciliation runs: {reconciliation_runs(instances, query)}; "
                f"outage from {outage_at}; each process's start: {started}; up's restarts and stops: {events}"
            ) from None

        assert up.stop(signal.SIGINT) == 0, up.output
        assert not [name for name, pid in pids.items() if alive(pid)]
    finally:
        up.close()
