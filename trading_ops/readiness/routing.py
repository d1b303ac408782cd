"""Which receivers Alertmanager's routing tree gives an alert, read from the configuration Alertmanager runs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from trading_ops.matchers import RegexError, regex_matches

MATCHER = re.compile(r"^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")
# Alerts of these severities must reach a receiver that notifies someone or something; `info` may go nowhere.
ROUTED_SEVERITIES = ("critical", "warning")


class RoutingError(ValueError):
    """The configuration cannot be read as Alertmanager's."""


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            text = json.loads(value)
        except ValueError as exc:
            raise RoutingError(f"bad matcher value {value}") from exc
        return str(text)
    return value


def _parse(matcher: str) -> tuple[str, str, str]:
    found = MATCHER.match(str(matcher))
    if found is None:
        raise RoutingError(f"not a matcher: {str(matcher)[:80]}")
    name, op, value = found.groups()
    return name, op, _unquote(value)


def _accepts(op: str, pattern: str, value: str) -> bool:
    if op == "=":
        return value == pattern
    if op == "!=":
        return value != pattern
    try:
        found = regex_matches(pattern, value)
    except RegexError as exc:
        raise RoutingError(str(exc)) from exc
    return found if op == "=~" else not found


def route_matches(route: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether every matcher of `route` (`matchers`, and the older `match` and `match_re`) accepts `labels`."""
    checks = [_parse(m) for m in route.get("matchers") or []]
    checks += [(k, "=", str(v)) for k, v in (route.get("match") or {}).items()]
    checks += [(k, "=~", str(v)) for k, v in (route.get("match_re") or {}).items()]
    return all(_accepts(op, pattern, labels.get(name, "")) for name, op, pattern in checks)


def _walk(route: dict[str, Any], labels: dict[str, str], receiver: str) -> Iterator[str]:
    """Alertmanager's walk: the first matching child (and the next ones while `continue`), depth first; a node no
    child took sends to its own receiver (inherited from its parent when it names none)."""
    receiver = str(route.get("receiver") or receiver)
    matched = False
    for child in route.get("routes") or []:
        if not isinstance(child, dict) or not route_matches(child, labels):
            continue
        matched = True
        yield from _walk(child, labels, receiver)
        if not child.get("continue"):
            break
    if not matched:
        yield receiver


def receivers_of(config: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The receivers an alert with `labels` is sent to."""
    root = config.get("route")
    if not isinstance(root, dict):
        raise RoutingError("no route: in the configuration")
    return list(dict.fromkeys(_walk(root, labels, "")))


def notifying_receivers(config: dict[str, Any]) -> set[str]:
    """Receivers with at least one integration (`*_configs`): the others drop what they get."""
    found = set()
    for receiver in config.get("receivers") or []:
        if isinstance(receiver, dict) and any(key.endswith("_configs") and value for key, value in receiver.items()):
            found.add(str(receiver.get("name")))
    return found


def load(text: str) -> dict[str, Any]:
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutingError(f"not YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(config, dict):
        raise RoutingError("not a mapping")
    return config


def unrouted_alerts(config: dict[str, Any], rules: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """The alerting rules (as Prometheus's rules API lists them) of a routed severity whose alerts, carrying `labels`
    too (the bot's instance), reach no receiver that notifies."""
    notifying = notifying_receivers(config)
    missing = []
    for rule in rules:
        if rule.get("type") != "alerting":
            continue
        alert = {**labels, **{k: str(v) for k, v in (rule.get("labels") or {}).items()}, "alertname": rule["name"]}
        if alert.get("severity") not in ROUTED_SEVERITIES:
            continue
        if not any(r in notifying for r in receivers_of(config, alert)):
            missing.append(str(rule["name"]))
    return sorted(set(missing))


def alerts_without_runbook(rules: list[dict[str, Any]]) -> list[str]:
    """Alerting rules without a `runbook_url` annotation naming the alert's own runbook (`<AlertName>.md`)."""
    missing = []
    for rule in rules:
        if rule.get("type") != "alerting":
            continue
        url = str((rule.get("annotations") or {}).get("runbook_url") or "")
        if not url.endswith(f"/{rule.get('name')}.md"):
            missing.append(str(rule.get("name")))
    return sorted(set(missing))
