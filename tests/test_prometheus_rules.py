"""Prometheus configuration and rules: promtool accepts them, and the alert catalogue keeps its conventions.

Integration tests need promtool (Debian package `prometheus`); they run it themselves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from system_binaries import REPO_ROOT, run_binary

PROMETHEUS_DIR = REPO_ROOT / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TEST_FILES = sorted(RULE_TESTS_DIR.glob("*_test.yml"))
RUNBOOK_URL_BASE = "https://github.com/trading-ops/trading-ops/blob/main/runbooks/"
SEVERITIES = {"critical", "warning", "info"}
SERVICES = {"tradingbot", "trading-ops", "alerting"}
ALERT_NAME = re.compile(r"^(TradingBot|TradingOps)[A-Z][A-Za-z0-9]+$|^Watchdog$")
RECORD_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")
SCRAPE_JOBS = {"tradingbot", "trading-ops-reconciler", "alertmanager", "prometheus", "node"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules_of(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def all_alert_rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for rule in rules_of(path) if "alert" in rule]


def alert_cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (alert_rule_test case, its test) pair across the promtool test files."""
    return [
        (case, test)
        for path in RULE_TEST_FILES
        for test in load_yaml(path)["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_there_are_rule_files_and_tests() -> None:
    assert len(RULE_FILES) >= 5 and len(RULE_TEST_FILES) >= 5


@pytest.mark.prometheus
def test_promtool_accepts_the_prometheus_config() -> None:
    # promtool resolves rule_files relative to the config file, so this also checks every rule file.
    result = run_binary("promtool", "check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_config_scrapes_every_job_every_5s() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["evaluation_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == SCRAPE_JOBS
    ports = {name: job["static_configs"][0]["targets"][0].rsplit(":", 1)[1] for name, job in jobs.items()}
    assert ports == {
        "tradingbot": "9101",
        "trading-ops-reconciler": "9102",
        "alertmanager": "9093",
        "prometheus": "9090",
        "node": "9100",
    }
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert config["rule_files"] == ["rules/*.yml"]


@pytest.mark.prometheus
@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(rule_file: Path) -> None:
    result = run_binary("promtool", "check", "rules", rule_file)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
@pytest.mark.parametrize("test_file", RULE_TEST_FILES, ids=lambda p: p.name)
def test_promtool_rule_unit_tests(test_file: Path) -> None:
    result = run_binary("promtool", "test", "rules", test_file.name, cwd=RULE_TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_every_rule_file_has_its_test_file(rule_file: Path) -> None:
    test_file = RULE_TESTS_DIR / f"{rule_file.stem}_test.yml"
    assert test_file.exists(), f"{rule_file.name} has no promtool test file {test_file.name}"
    assert f"../rules/{rule_file.name}" in load_yaml(test_file)["rule_files"]


def test_every_alert_tier_has_a_named_firing_case() -> None:
    fired = {
        (case["alertname"], alert["exp_labels"]["severity"])
        for case, test in alert_cases()
        if test.get("name")
        for alert in case["exp_alerts"]
    }
    tiers = {(rule["alert"], rule["labels"]["severity"]) for rule in all_alert_rules()}
    assert tiers - fired == set(), "alert tiers without a firing promtool case"


def test_every_alert_with_for_has_a_not_firing_case() -> None:
    quiet = {case["alertname"] for case, _ in alert_cases() if not case["exp_alerts"]}
    waiting = {rule["alert"] for rule in all_alert_rules() if rule.get("for")}
    assert waiting - quiet == set(), "alerts without a 'not yet firing' or negative case"


def test_bot_alerts_keep_instance_and_job_when_they_fire() -> None:
    # The reconciler maps `instance` to the bot's control API: a bot alert without it cannot be remediated.
    bot_alerts = {rule["alert"] for rule in all_alert_rules() if rule["labels"]["service"] == "tradingbot"}
    for case, _ in alert_cases():
        if case["alertname"] in bot_alerts:
            for alert in case["exp_alerts"]:
                assert {"instance", "job"} <= set(alert["exp_labels"]), case["alertname"]


@pytest.mark.parametrize("rule", all_alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_alert_conventions(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert ALERT_NAME.match(name), name
    labels, annotations = rule["labels"], rule["annotations"]
    if name == "Watchdog":
        assert labels == {"severity": "none", "service": "alerting"}
        assert rule["expr"] == "vector(1)"
    else:
        assert labels["severity"] in SEVERITIES
        assert rule.get("for"), "every alert but Watchdog waits before firing"
    assert labels["service"] in SERVICES
    assert "{{" not in annotations["summary"] and annotations["summary"].endswith(".")
    assert "{{" in annotations["description"] or name == "Watchdog"
    assert annotations["runbook_url"] == f"{RUNBOOK_URL_BASE}{name}.md"


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_every_alert_has_a_comment_justifying_it(rule_file: Path) -> None:
    lines = rule_file.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("- alert:"):
            assert lines[number - 1].strip().startswith("#"), f"{rule_file.name}:{number + 1} {line.strip()}"


def test_recording_rules_follow_level_metric_operations_and_aggregate_with_without() -> None:
    records = [rule for path in RULE_FILES for rule in rules_of(path) if "record" in rule]
    assert records
    expr_tests = " ".join(
        case["expr"]
        for path in RULE_TEST_FILES
        for test in load_yaml(path)["tests"]
        for case in test.get("promql_expr_test", [])
    )
    for rule in records:
        assert RECORD_NAME.match(rule["record"]), rule["record"]
        assert not re.search(r"\bby\s*\(", rule["expr"]), f"{rule['record']} aggregates with `by`"
        assert rule["record"] in expr_tests, f"{rule['record']} has no promql_expr_test"
