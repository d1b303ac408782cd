"""Runbooks: one per alert (rule-based or posted by the reconciler), each reachable from its alert's runbook_url."""

from __future__ import annotations

import re

import pytest
import yaml
from system_binaries import REPO_ROOT

RUNBOOKS_DIR = REPO_ROOT / "runbooks"
RULES_DIR = REPO_ROOT / "prometheus" / "rules"
RUNBOOK_URL_PREFIX = "https://github.com/trading-ops/trading-ops/blob/main/"
# Alerts the reconciler posts to Alertmanager's API itself; no rule file defines them, but on-call gets them.
RECONCILER_POSTED_ALERTS = ("TradingOpsRemediationFailed", "TradingOpsRemediationCircuitOpen")
SECTIONS = ("Meaning", "Impact", "Diagnosis", "Mitigation")
PROMQL_HINT = re.compile(r"`[^`]*\b(tradingbot_|tradingops_|up\{|ALERTS|prometheus_|alertmanager_|process_|instance)")


def alert_rules() -> list[dict]:
    return [
        rule
        for path in sorted(RULES_DIR.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in alert_rules()} | set(RECONCILER_POSTED_ALERTS)


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    runbooks = {path.stem for path in RUNBOOKS_DIR.glob("*.md")}
    assert alert_names() - runbooks == set(), "alerts without a runbook"
    assert runbooks - alert_names() == set(), "runbooks for alerts that do not exist"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_runbook_url_points_at_the_alerts_runbook(rule: dict) -> None:
    url = rule["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_URL_PREFIX)
    path = REPO_ROOT / url.removeprefix(RUNBOOK_URL_PREFIX)
    assert path == RUNBOOKS_DIR / f"{rule['alert']}.md"
    assert path.is_file()


@pytest.mark.parametrize("name", sorted(alert_names()))
def test_runbook_has_the_four_sections_with_real_diagnosis(name: str) -> None:
    text = (RUNBOOKS_DIR / f"{name}.md").read_text()
    assert text.startswith(f"# {name}\n")
    found = sections(text)
    assert tuple(found) == SECTIONS
    for title in SECTIONS:
        assert len(found[title].split()) >= 15, f"{name}: section {title} is nearly empty"
    assert PROMQL_HINT.search(found["Diagnosis"]), f"{name}: Diagnosis has no PromQL"
    assert re.search(r"`trading-ops [a-z]|/control/", found["Diagnosis"]), f"{name}: Diagnosis has no command"
    assert "### What the reconciler does on its own" in found["Mitigation"]
    assert "### When that did not work" in found["Mitigation"]
