"""Adapt the repo's alertmanager.yml to the local stack: the reconciler webhook local, people's receivers quiet."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trading_ops.durations import format_duration, parse_duration
from trading_ops.stack.layout import Layout, Ports
from trading_ops.stack.profiles import Profile
from trading_ops.stack.repo import ALERTMANAGER_CONFIG, MonitoringConfigError, dump_yaml, load_yaml

# A webhook whose URL ends in this path is the reconciler's intake (DESIGN.md: POST /api/v1/alertmanager).
RECONCILER_WEBHOOK_PATH = "/api/v1/alertmanager"
# Global settings kept: the rest configures integrations (SMTP, Slack, PagerDuty, ...) the local stack replaces.
KEPT_GLOBAL = ("resolve_timeout",)
# Ways a webhook may authenticate in the repo's file; locally it is always the bearer token file of `up`.
WEBHOOK_AUTH_KEYS = ("authorization", "basic_auth", "bearer_token", "bearer_token_file", "oauth2", "tls_config")


@dataclass
class RenderedAlertmanager:
    config: dict[str, Any]
    reconciler_receivers: list[str]
    quiet_receivers: list[str]
    notes: list[str] = field(default_factory=list)


def _is_reconciler_webhook(webhook: dict[str, Any]) -> bool:
    return urlsplit(str(webhook.get("url", ""))).path.rstrip("/") == RECONCILER_WEBHOOK_PATH


def _local_webhook(webhook: dict[str, Any], ports: Ports, token_file: Path) -> dict[str, Any]:
    new = copy.deepcopy(webhook)
    new.pop("url_file", None)
    new["url"] = ports.url("reconciler") + RECONCILER_WEBHOOK_PATH
    http = {k: v for k, v in (new.get("http_config") or {}).items() if k not in WEBHOOK_AUTH_KEYS}
    http["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    new["http_config"] = http
    return new


def _receivers(
    receivers: list[dict[str, Any]], ports: Ports, token_file: Path
) -> tuple[list[dict[str, Any]], list[str], list[str], list[str]]:
    out, reconciler, quiet, notes = [], [], [], []
    for receiver in receivers:
        name = str(receiver.get("name"))
        hooks = [w for w in receiver.get("webhook_configs") or [] if _is_reconciler_webhook(w)]
        integrations = sorted(k for k in receiver if k.endswith("_configs"))
        if hooks:
            out.append({"name": name, "webhook_configs": [_local_webhook(w, ports, token_file) for w in hooks]})
            reconciler.append(name)
            dropped = [k for k in integrations if k != "webhook_configs"]
            if len(hooks) < len(receiver["webhook_configs"]):
                dropped.append("other webhook_configs")
            if dropped:
                notes.append(
                    f"alertmanager: receiver {name!r}: only the reconciler webhook kept (not {', '.join(dropped)})"
                )
            continue
        # People's integrations (pager, chat, dead-man service) need accounts and the internet: locally the
        # receiver stays, so routing is unchanged, but notifies nobody. The alerts are in the Alertmanager UI.
        out.append({"name": name})
        quiet.append(name)
        if integrations:
            notes.append(f"alertmanager: receiver {name!r} is quiet locally (was: {', '.join(integrations)})")
    return out, reconciler, quiet, notes


def tune_routes(route: dict[str, Any], reconciler: set[str], profile: Profile, inherited: str | None = None) -> None:
    """Apply the profile's group_wait/group_interval to every route whose (inherited) receiver is the reconciler, and
    its people's group_interval (Profile.people_group_interval) to every other route that sets one, but a route whose
    own group_wait is longer (it waits out a remedy)."""
    receiver = route.get("receiver", inherited)
    if receiver in reconciler:
        if profile.reconciler_group_wait is not None:
            route["group_wait"] = format_duration(profile.reconciler_group_wait)
        if profile.reconciler_group_interval is not None:
            route["group_interval"] = format_duration(profile.reconciler_group_interval)
    elif "group_interval" in route:
        seconds = parse_duration(str(route["group_interval"]))
        divided = profile.people_group_interval(seconds)
        # A route that waits out a remedy (its own group_wait longer than the divided interval) keeps the repo's
        # interval, the wait plus Alertmanager's clean-up of emptied groups: a fault that joins the group its healed
        # predecessor emptied still waits that long (alertmanager/alertmanager.yml).
        if parse_duration(str(route.get("group_wait", "0s"))) > divided:
            divided = seconds
        route["group_interval"] = format_duration(divided)
    for child in route.get("routes") or []:
        tune_routes(child, reconciler, profile, receiver)


def adapt_alertmanager(
    data: dict[str, Any], am_dir: Path, ports: Ports, profile: Profile, token_file: Path
) -> RenderedAlertmanager:
    """The repo's alertmanager.yml for the local stack: routing tree, grouping and inhibitions unchanged."""
    out = copy.deepcopy(data)
    out["global"] = {k: v for k, v in (data.get("global") or {}).items() if k in KEPT_GLOBAL}
    out["templates"] = [os.path.join(am_dir, str(t)) for t in data.get("templates") or []]
    receivers, reconciler, quiet, notes = _receivers(data.get("receivers") or [], ports, token_file)
    if not reconciler:
        raise MonitoringConfigError(
            f"{am_dir / ALERTMANAGER_CONFIG.name}: no receiver has a webhook to the reconciler "
            f"(a webhook_configs url ending in {RECONCILER_WEBHOOK_PATH})"
        )
    out["receivers"] = receivers
    if "route" not in out:
        raise MonitoringConfigError(f"{am_dir / ALERTMANAGER_CONFIG.name}: no route")
    try:
        tune_routes(out["route"], set(reconciler), profile)
    except ValueError as exc:  # a route's group_wait or group_interval that is no duration
        raise MonitoringConfigError(f"{am_dir / ALERTMANAGER_CONFIG.name}: route: {exc}") from None
    return RenderedAlertmanager(out, reconciler, quiet, notes)


def render_alertmanager(repo: Path, ports: Ports, profile: Profile, token_file: Path) -> RenderedAlertmanager:
    source = repo / ALERTMANAGER_CONFIG
    return adapt_alertmanager(load_yaml(source), source.parent, ports, profile, token_file)


def write_alertmanager(rendered: RenderedAlertmanager, layout: Layout, repo: Path, profile: Profile) -> None:
    dump_yaml(
        layout.alertmanager_config,
        rendered.config,
        f"Generated by `trading-ops up` (profile {profile.name}) from {repo / ALERTMANAGER_CONFIG}: the reconciler\n"
        f"webhook points at the local reconciler; receivers {', '.join(rendered.quiet_receivers)} notify nobody.\n"
        "Edit the source file, not this copy.",
    )
