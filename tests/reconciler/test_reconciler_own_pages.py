"""Maintenance windows over the alerting pipeline's own pages need the destructive scope (issue 47): every alert of
the shipped rule files that is not a bot's and every page the reconciler and its playbook post, each tried against the
console's maintenance form with an `operate` token (refused, nothing silenced or recorded) and a `destructive` one;
the windows of the issue's review; the bots' own windows stay `operate`'s. The real reconciler on a real port
(aiohttp's test server) on SQLite; Alertmanager is not needed (a window without it records its problem)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient
from console_client import count, log_in, page, post_form
from reconciler_server import make_config, write_playbook
from secret_file import write_secret
from system_binaries import REPO_ROOT

from trading_ops.config import Config
from trading_ops.db.models import MaintenanceWindow
from trading_ops.ops.maintenance import AlertShape, silences_own_pages
from trading_ops.reconciler import keys
from trading_ops.reconciler.actions.escalate import SUMMARIES
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.own_pages import own_alerts, selectors

OPERATE_TOKEN = "console-operate-token-0123456789"
ONCALL_TOKEN = "console-oncall-destructive-token-0123456789"
RULES = REPO_ROOT / "prometheus" / "rules"
# The form's answer to a window it refuses (the flash line: the window, what it would silence, the scope it needs).
REFUSED = "this window would silence the alerting pipeline&#x27;s own pages"
# A playbook whose rule escalates (only under an escalation's name: the loader refuses a bot's, which would route
# back to the reconciler): its pages are judged with the reconciler's own.
ESCALATING = {
    "name": "down-escalates",
    "match": ['alertname="TradingBotDown"'],
    "verify": False,
    "steps": [{"action": "escalate", "alertname": "TradingOpsBotPaused", "severity": "critical"}],
}
# The windows the review started with an operate token (issue 47).
REVIEWED = [
    {"job": "trading-ops-reconciler"},
    {"job": "trading-ops-reconciler", "alertname": "TradingOpsReconcilerDown"},
    {"service": "alerting"},
    {"alertname": "TradingOpsAlertmanagerDown", "service": "alerting"},
]
# A bot's windows: the operate scope's.
BOTS = [
    {"service": "tradingbot"},
    {"instance": "bot-a:9000", "job": "tradingbot"},
    {"alertname": "TradingBotDown", "service": "tradingbot"},
    {"alertname": "TradingBotMarketDataStale"},
]


def config_of(tmp_path: Path, db_url: str) -> Config:
    tokens = []
    for name, scope, value in (("operator", "operate", OPERATE_TOKEN), ("oncall", "destructive", ONCALL_TOKEN)):
        write_secret(tmp_path / f"{name}-token", value)
        tokens.append({"name": name, "scope": scope, "token_file": str(tmp_path / f"{name}-token")})
    playbook = write_playbook(tmp_path, [ESCALATING])
    return make_config(tmp_path, db_url, api_tokens=tokens, playbook=str(playbook))


def shipped_own_alerts() -> set[str]:
    """The alert names of prometheus/rules/ that are not a bot's, read from the committed files themselves."""
    names = set()
    for path in RULES.glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule and rule["labels"]["service"] != "tradingbot":
                    names.add(rule["alert"])
    return names


def window_for(shape: AlertShape) -> dict[str, str]:
    """The narrowest window over one alert: its name and every label of a known value."""
    return dict(shape.known)


async def start_window(client: TestClient[Any, Any], sid: str, matchers: dict[str, str]) -> str:
    """Start a window through the form: the flash message the next page shows."""
    lines = "\n".join(f"{k}={v}" for k, v in matchers.items())
    resp = await post_form(client, "/ui/maintenance", sid, duration="10m", reason="patching", matchers=lines)
    assert resp.status == 303, await resp.text()
    status, text = await page(client, "/ui/maintenance", sid)
    assert status == 200
    return text


async def test_every_own_alert_needs_the_destructive_scope_to_be_silenced(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config_of(tmp_path, migrated_sqlite)))
    own = own_alerts(client.app[keys.PLAYBOOK])
    # What is judged comes from the rule files and the escalations, not from a list kept by hand.
    assert {s.alertname for s in own if s.origin.startswith("prometheus/rules/")} == shipped_own_alerts()
    assert {s.alertname for s in own if s.origin == "reconciler escalation"} == set(SUMMARIES)
    operator = await log_in(client, OPERATE_TOKEN)
    refused = []
    for shape in own:
        for matchers in (window_for(shape), {"alertname": shape.alertname}):
            text = await start_window(client, operator, matchers)
            if REFUSED in text:
                refused.append(shape.alertname)
            else:
                raise AssertionError(f"an operate window {matchers} over {shape.alertname} ({shape.origin}) started")
    for matchers in REVIEWED:
        text = await start_window(client, operator, matchers)
        assert REFUSED in text, matchers
    assert count(client, MaintenanceWindow) == 0
    assert len(refused) == 2 * len(own)
    # A bot's windows are the operate scope's.
    for matchers in BOTS:
        text = await start_window(client, operator, matchers)
        assert REFUSED not in text, (matchers, text)
    assert count(client, MaintenanceWindow) == len(BOTS)
    # A destructive token may silence the pipeline's pages (when it really means to).
    oncall = await log_in(client, ONCALL_TOKEN)
    for matchers in REVIEWED[:1] + [{"alertname": "TradingBotDown"}]:
        text = await start_window(client, oncall, matchers)
        assert REFUSED not in text, text
    assert count(client, MaintenanceWindow) == len(BOTS) + 2


def test_a_windows_matchers_are_judged_against_each_alerts_labels() -> None:
    own = own_alerts(None)
    by_name = {s.alertname: s for s in own}
    # The Watchdog by its labels, not by its name alone.
    assert by_name["Watchdog"].may_match({"severity": "none"})
    assert by_name["Watchdog"].may_match({"service": "alerting", "env": "prod"})
    assert not by_name["Watchdog"].may_match({"service": "trading-ops"})
    # A job the expression fixes; a bot's job the reconciler's families never carry.
    assert by_name["TradingOpsReconcilerDown"].may_match({"job": "trading-ops-reconciler"})
    assert not by_name["TradingOpsReconcilerDown"].may_match({"job": "alertmanager"})
    assert not by_name["TradingOpsBackupFailed"].may_match({"job": "tradingbot"})
    # An escalation carries exactly its own labels: a bot's instance matches it, a job does not.
    assert by_name["TradingOpsRemediationFailed"].may_match({"instance": "bot-a:9000"})
    assert not by_name["TradingOpsRemediationFailed"].may_match({"instance": "bot-a:9000", "job": "tradingbot"})
    assert silences_own_pages({"service": "tradingbot"}, own) is None
    assert "TradingOpsAlertmanagerDown" in (silences_own_pages({"service": "alerting"}, own) or "")
    # The selectors of an expression, whatever surrounds them.
    assert selectors('up{job="x"} == 0 or absent(up{job="x"})') == [("up", {"job": "x"}), ("up", {"job": "x"})]
    assert selectors('sum without (reason) (rate(a_total{b=~"c"}[5m])) > 0 and on (job) {job="q"}') == [
        ("a_total", {}),
        ("", {"job": "q"}),
    ]
