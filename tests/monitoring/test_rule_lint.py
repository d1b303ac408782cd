"""The shipped alerting rules linted with mixtool's rules (`mixtool lint`, pkg/mixer/lint.go), the monitoring-mixins
guidelines for alert names, labels and annotations.

Each rule keeps mixtool's name and test; `alert-runbook-url-rule` is the guideline's runbook_url, which mixtool does
not check. Where a rule does not fit an alert, EXCEPTIONS says so with its reason, as the `.lint` file mixtool reads
would. What the project adds on top (the TradingBot/TradingOps prefix, the `service` label, the runbook URL derived
from the name) stays in tests/monitoring/test_prometheus_rules.py.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from system_binaries import REPO_ROOT

RULE_FILES = sorted((REPO_ROOT / "prometheus" / "rules").glob("*.yml"))
CAMEL_CASE = re.compile(r"^([A-Z]+[a-z0-9]+)+$")
GO_TEMPLATE = re.compile(r"\{\{.+}\}")
SENTENCE = re.compile(r"^[A-Z].+\.$")
SEVERITIES = {"critical", "warning", "info"}
MAX_GROUP_RULES = 20
MAX_NAME_LENGTH = 40


@dataclass(frozen=True)
class Problem:
    rule: str
    group: str
    alert: str | None
    message: str


@dataclass(frozen=True)
class Exclusion:
    """An entry of the `.lint` file's `exclusions` as mixtool reads it: the rule, why, and the alert it spares."""

    rule: str
    alert: str
    reason: str

    def matches(self, problem: Problem) -> bool:
        return (problem.rule, problem.alert) == (self.rule, self.alert)


EXCEPTIONS = [
    Exclusion(
        "alert-severity-rule",
        "Watchdog",
        "the dead-man's switch is no page, ticket or notice: it fires all the time and is routed to the dead-man "
        "receiver only, so its severity is `none`, as kube-prometheus's Watchdog",
    ),
    Exclusion(
        "alert-description-templating",
        "Watchdog",
        "vector(1) has no labels and no value worth showing: the description is the same sentence for every "
        "Watchdog, and a template would only add noise",
    ),
    Exclusion(
        "alert-name-length",
        "TradingOpsAlertmanagerNotificationsFailing",
        "42 characters, ten of them the shared TradingOps prefix; the name is what silences, inhibitions, routes and "
        "playbooks match, so renaming it would break users' configuration for two characters",
    ),
]


def alert_problems(group: str, rule: dict[str, Any]) -> Iterator[Problem]:
    """lint.go's lintPrometheusAlertsGuidelines, and the runbook_url the guidelines ask for."""
    name = str(rule["alert"])
    labels = rule.get("labels") or {}
    annotations = rule.get("annotations") or {}

    def problem(lint_rule: str, message: str) -> Problem:
        return Problem(lint_rule, group, name, message)

    if not CAMEL_CASE.match(name):
        yield problem("alert-name-camelcase", f"alert {name!r} name is not in camel case")
    if len(name) > MAX_NAME_LENGTH:
        yield problem("alert-name-length", f"alert {name!r} name exceeds {MAX_NAME_LENGTH} characters")
    if labels.get("severity") not in SEVERITIES:
        yield problem(
            "alert-severity-rule", f"severity must be warning, critical or info, is {labels.get('severity')!r}"
        )
    if "description" not in annotations:
        yield problem("alert-description-missing-rule", "must have annotation 'description'")
    elif not GO_TEMPLATE.search(str(annotations["description"])):
        yield problem("alert-description-templating", f"description must use templates: {annotations['description']!r}")
    if "summary" not in annotations:
        yield problem("alert-summary-missing-rule", "must have annotation 'summary'")
    else:
        summary = str(annotations["summary"])
        if GO_TEMPLATE.search(summary):
            yield problem("alert-summary-templating", f"summary must not use templates: {summary!r}")
        if not SENTENCE.match(summary):
            yield problem(
                "alert-summary-style", f"summary must start with a capital and end with a period: {summary!r}"
            )
    if not str(annotations.get("runbook_url", "")).startswith("https://"):
        yield problem(
            "alert-runbook-url-rule", f"must have an https runbook_url, has {annotations.get('runbook_url')!r}"
        )


def lint(document: dict[str, Any]) -> list[Problem]:
    """Every problem in one rule file, exceptions not applied (lint.go's lintPrometheusAlertGroups and the alert
    guidelines; recording rules are mixtool's prometheusRules, which it only evaluates)."""
    problems = []
    for group in document.get("groups") or []:
        name = str(group.get("name", ""))
        rules = group.get("rules") or []
        if len(rules) > MAX_GROUP_RULES:
            problems.append(
                Problem("alert-group-rule-count", name, None, f"group contains more than {MAX_GROUP_RULES} rules")
            )
        if len(name) > MAX_NAME_LENGTH:
            problems.append(
                Problem("alert-group-name-length", name, None, f"name exceeds {MAX_NAME_LENGTH} characters")
            )
        for rule in rules:
            if "alert" in rule:
                problems += alert_problems(name, rule)
    return problems


def unexcepted(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if not any(exception.matches(p) for exception in EXCEPTIONS)]


RULE_NAMES = {
    "alert-group-rule-count",
    "alert-group-name-length",
    "alert-name-camelcase",
    "alert-name-length",
    "alert-severity-rule",
    "alert-description-missing-rule",
    "alert-description-templating",
    "alert-summary-missing-rule",
    "alert-summary-templating",
    "alert-summary-style",
    "alert-runbook-url-rule",
}


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


# -- the shipped rules --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_shipped_rule_file_passes_mixtool_lint(path: Path) -> None:
    assert unexcepted(lint(load(path))) == []


def test_every_exception_is_needed_and_says_why() -> None:
    problems = [p for path in RULE_FILES for p in lint(load(path))]
    for exception in EXCEPTIONS:
        assert exception.rule in RULE_NAMES, exception
        assert len(exception.reason.split()) >= 8, exception
        assert any(exception.matches(p) for p in problems), f"stale exception: {exception}"


# -- every rule can fail: a deliberately broken rule file, and the problem the linter reports ---------------------


def good_document() -> dict[str, Any]:
    return {
        "groups": [
            {
                "name": "example",
                "rules": [
                    {"record": "job:up:sum", "expr": "sum without (instance) (up)"},
                    {
                        "alert": "ExampleTargetDown",
                        "expr": "up == 0",
                        "for": "5m",
                        "labels": {"severity": "critical"},
                        "annotations": {
                            "summary": "A target is down.",
                            "description": "{{ $labels.instance }} of {{ $labels.job }} has been down for 5 minutes.",
                            "runbook_url": "https://example.com/runbooks/ExampleTargetDown.md",
                        },
                    },
                ],
            }
        ]
    }


def break_alert(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        alert = document["groups"][0]["rules"][1]
        for key, value in changes.items():
            section, _, field = key.partition("__")
            target = alert[section] if field else alert
            if value is None:
                target.pop(field or section)
            else:
                target[field or section] = value

    return apply


def break_group(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        document["groups"][0].update(changes)

    return apply


BROKEN = {
    "alert-group-rule-count": break_group(
        rules=[{"record": f"job:up{i}:sum", "expr": "sum without (instance) (up)"} for i in range(21)]
    ),
    "alert-group-name-length": break_group(name="a-group-name-that-goes-on-well-past-forty-characters"),
    "alert-name-camelcase": break_alert(alert="example_target_down"),
    "alert-name-length": break_alert(alert="ExampleTargetDownForLongerThanAnyoneWouldLike"),
    "alert-severity-rule": break_alert(labels__severity="page"),
    "alert-description-missing-rule": break_alert(annotations__description=None),
    "alert-description-templating": break_alert(annotations__description="A target has been down for 5 minutes."),
    "alert-summary-missing-rule": break_alert(annotations__summary=None),
    "alert-summary-templating": break_alert(annotations__summary="Target {{ $labels.instance }} is down."),
    "alert-summary-style": break_alert(annotations__summary="a target is down"),
    "alert-runbook-url-rule": break_alert(annotations__runbook_url=None),
}


def test_the_good_rule_file_passes() -> None:
    assert lint(good_document()) == []


@pytest.mark.parametrize("rule", list(BROKEN))
def test_the_linter_reports_a_broken_rule_file(rule: str) -> None:
    document = copy.deepcopy(good_document())
    BROKEN[rule](document)
    assert [p.rule for p in lint(document)] == [rule]


def test_every_rule_has_a_broken_rule_file_it_reports() -> None:
    assert set(BROKEN) == RULE_NAMES


def test_an_exception_spares_only_the_alert_it_names() -> None:
    document = good_document()
    watchdog = {**document["groups"][0]["rules"][1], "alert": "Watchdog", "labels": {"severity": "none"}}
    other = {**watchdog, "alert": "ExampleWatchdog"}
    document["groups"][0]["rules"] += [watchdog, other]
    assert [(p.rule, p.alert) for p in unexcepted(lint(document))] == [("alert-severity-rule", "ExampleWatchdog")]
