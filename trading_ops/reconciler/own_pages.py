"""The alerting pipeline's own alerts, as label sets a maintenance window's matchers are judged against: every alert of
the shipped rule files that is not a bot's, and every page the reconciler posts (its escalations and the playbook's)."""

from __future__ import annotations

import functools
import re

import yaml

from trading_ops.ops.maintenance import BOT_SERVICE, AlertShape
from trading_ops.reconciler.actions.escalate import FAILED, SUMMARIES, escalation_alert
from trading_ops.reconciler.playbook import Playbook
from trading_ops.rulepack.render import defaults, render

# A bot's scrape job (the `job` of a bot's own alerts, as trading_ops.ops.maintenance.matched_bots reads them).
BOT_JOB = BOT_SERVICE
# Families no bot exports (DESIGN's prefixes: `tradingbot_` is a bot's; the reconciler's and scheduled operations',
# and Alertmanager's and Prometheus's own): an alert over these alone never carries a bot's job.
NOT_A_BOTS = ("tradingops_", "alertmanager_", "prometheus_")
# What of a PromQL expression is not a series selector: grouping clauses' label lists, range and subquery windows,
# strings outside braces.
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
WINDOW = re.compile(r"\[[^\]]*\]")
BRACES = r'\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}'
# A metric name (whole: not followed by more of a name, nor by `(`: a function), its braces if any; or braces alone.
SELECTOR = re.compile(rf"(?<![\w:.])(?:([a-zA-Z_:][\w:]*)(?![\w:])\s*({BRACES})?(?!\s*\()|({BRACES}))")
EQUALITY = re.compile(r'([a-zA-Z_]\w*)\s*=\s*"((?:[^"\\]|\\.)*)"')
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
TEMPLATE = "{{"


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """The series selectors of `expr`: (metric name or "", its equality matchers)."""
    text = WINDOW.sub(" ", GROUPING.sub(" ", expr))
    found = []
    for match in SELECTOR.finditer(text):
        name, braces = match.group(1) or "", match.group(2) or match.group(3) or ""
        if name.lower() in KEYWORDS:  # `and {job="x"}`: the braces are a selector of their own
            name = ""
        if not name and not braces:
            continue
        matchers = dict(EQUALITY.findall(braces))
        found.append((name, matchers))
    return found


def rule_shape(alertname: str, labels: dict[str, str], expr: str, origin: str) -> AlertShape:
    """An alerting rule's alert: its static labels, a label every selector of its expression fixes to one value, and
    never a bot's job when it reads no series a bot's job exports."""
    known = {"alertname": alertname}
    any_value = set()
    for name, value in labels.items():
        if TEMPLATE in str(value):
            any_value.add(name)
        else:
            known[name] = str(value)
    series = selectors(expr)
    if series:
        for label in set.intersection(*(set(m) for _n, m in series)):
            values = {m[label] for _n, m in series}
            if len(values) == 1 and label not in labels:
                known[label] = values.pop()
    never = {}
    if all(
        (name and any(p in name for p in NOT_A_BOTS)) or matchers.get("job", BOT_JOB) != BOT_JOB
        for name, matchers in series
    ):
        never["job"] = frozenset({BOT_JOB})
    return AlertShape(alertname, origin, known, frozenset(any_value), never, open=True)


def rule_shapes(rendered: dict[str, str]) -> list[AlertShape]:
    """Every alert of these rule files (file name -> text) that is not a bot's (service != tradingbot)."""
    shapes = []
    for filename, text in sorted(rendered.items()):
        for group in (yaml.safe_load(text) or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                labels = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
                if "alert" not in rule or labels.get("service") == BOT_SERVICE:
                    continue
                origin = f"prometheus/rules/{filename}"
                shapes.append(rule_shape(str(rule["alert"]), labels, str(rule["expr"]), origin))
    return shapes


def escalation_shapes(alertnames: list[str]) -> list[AlertShape]:
    """The pages the reconciler posts (trading_ops.reconciler.actions.escalate.escalation_alert): exactly its labels,
    the alert's name and service known, the others (severity, target, instance, ...) of any value."""
    shapes = []
    for alertname in dict.fromkeys(alertnames):
        labels = escalation_alert(alertname, {}, "target", "", episode=0)["labels"]
        known = {k: labels[k] for k in ("alertname", "service")}
        shapes.append(AlertShape(alertname, "reconciler escalation", known, frozenset(labels) - set(known), open=False))
    return shapes


@functools.cache
def shipped_rule_shapes() -> tuple[AlertShape, ...]:
    """The shipped rule files' own alerts (rendered from the rule pack's templates and default values, as
    prometheus/rules/ is)."""
    return tuple(rule_shapes(render(defaults())))


def playbook_escalations(playbook: Playbook | None) -> list[str]:
    """The alert names the playbook's `escalate` steps post."""
    names: list[str] = []
    for rule in playbook.rules if playbook is not None else ():
        for step in (*rule.steps, *rule.on_recovery):
            if step.action == "escalate":
                names.append(str(step.params.get("alertname", FAILED)))
    return names


def own_alerts(playbook: Playbook | None) -> list[AlertShape]:
    """Every alert of the pipeline's own: the shipped rules', the reconciler's escalations and the playbook's."""
    return [*shipped_rule_shapes(), *escalation_shapes([*SUMMARIES, *playbook_escalations(playbook)])]
