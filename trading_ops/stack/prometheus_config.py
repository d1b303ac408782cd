"""Adapt the repo's prometheus.yml and alerting rules to the local stack: local targets, state-dir paths, profile."""

from __future__ import annotations

import copy
import glob
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trading_ops.commands.config_cmd import file_sd
from trading_ops.durations import format_duration, parse_duration
from trading_ops.stack.layout import DEFAULT_PORTS, Layout, Ports
from trading_ops.stack.profiles import Profile
from trading_ops.stack.repo import PROMETHEUS_CONFIG, MonitoringConfigError, dump_yaml, load_yaml

# Which part of the local stack a scrape job watches: by job name, else by the catalogue port of its first target.
ROLE_BY_JOB = {
    "tradingbot": "bot",
    "freqtrade": "freqtrade",
    "trading-ops-reconciler": "reconciler",
    "alertmanager": "alertmanager",
    "prometheus": "prometheus",
    "node": "node",
}
NODE_EXPORTER_PORT = 9100
# The gateway exports no metrics: no job watches it.
ROLE_BY_PORT = {port: role for role, port in DEFAULT_PORTS.items() if role != "gateway"} | {NODE_EXPORTER_PORT: "node"}
# Settings that reach beyond this machine or describe how production is reached; the local children speak plain
# HTTP on 127.0.0.1 and nothing is shipped anywhere.
DROPPED_TOP_LEVEL = ("remote_write", "remote_read")
DROPPED_TARGET_KEYS = ("scheme", "tls_config", "path_prefix", "proxy_url")
SD_SUFFIX = "_sd_configs"
# How a rule's description names its `for:` ("... for more than 10 seconds"); rewritten with the profile's duration.
FOR_PHRASE = "for more than {}"
# `up` as a series of its own in PromQL (not `tradingbot_up`, nor a label value): followed by a selector, a range, a
# comparison or the end of an argument.
UP_SERIES = re.compile(r"(?<![\w:\"])up\s*(?=[{\[=!<>)]|$| (?:==|!=|<|>|unless|and|or)\b)", re.MULTILINE)
# An `unless` over a bot's connection to its venue, or its venue's share of bots cut off.
DISCONNECT_MUTE = re.compile(
    r"\bunless\b[\s\S]*(?:venue:tradingbot_bots_disconnected:ratio|tradingbot_broker_connected)"
)
# Prometheus's default scrape timeout, which a job inherits when neither it nor `global` sets one.
DEFAULT_SCRAPE_TIMEOUT = 10.0
DEFAULT_SCRAPE_INTERVAL = 60.0
# Share of the scrape interval a timeout is clamped to when the profile's interval is shorter than the timeout.
TIMEOUT_SHARE = 0.8


@dataclass
class RenderedPrometheus:
    config: dict[str, Any]
    rules: dict[str, dict[str, Any] | Path]  # file name -> adapted rule groups, or the repo file used as is
    notes: list[str] = field(default_factory=list)
    bot_targets: list[str] = field(default_factory=list)  # the file_sd targets of the bot job
    freqtrade_targets: list[str] = field(default_factory=list)  # the file_sd targets of the freqtrade job (sidecars)


def _port(target: str) -> int | None:
    _, _, port = str(target).rpartition(":")
    return int(port) if port.isdigit() else None


def _role(job: dict[str, Any]) -> str | None:
    role = ROLE_BY_JOB.get(str(job.get("job_name")))
    if role is not None:
        return role
    for static in job.get("static_configs") or []:
        for target in static.get("targets") or []:
            return ROLE_BY_PORT.get(_port(target) or -1)
    return None


def _seconds(value: Any, where: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise MonitoringConfigError(f"{where}: {exc}") from exc


def spoken_duration(seconds: float) -> str:
    """A `for:` duration as the rules' descriptions say it: "10 seconds", "5 minutes", "1 hour"."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


def reads_up(expr: str) -> bool:
    """Whether an alert's expression reads `up` (the scrape's own success): an alert on failed scrapes."""
    return UP_SERIES.search(expr) is not None


def races_disconnect(expr: str) -> bool:
    """Whether an alert's expression mutes it while the bot or its venue is cut off (an `unless` over either): an
    alert that must not fire before the disconnection is seen (profiles.DISCONNECT_RACE_FOR_FLOOR_SECONDS)."""
    return DISCONNECT_MUTE.search(expr) is not None


def adapt_rules(groups: dict[str, Any], profile: Profile, source: str) -> dict[str, Any]:
    """A rule file with every alert's `for:` as the profile says (see profiles.FOR_DIVISOR), and its annotations'
    "for more than <the repo's for:>" saying the duration the alert really uses."""
    out = copy.deepcopy(groups)
    for group in out.get("groups") or []:
        for rule in group.get("rules") or []:
            if "alert" in rule and "for" in rule:
                seconds = _seconds(rule["for"], f"{source}: alert {rule['alert']}: for")
                expr = str(rule.get("expr", ""))
                shortened = profile.alert_for(
                    seconds, scrape_failure=reads_up(expr), races_disconnect=races_disconnect(expr)
                )
                if shortened != seconds:
                    rule["for"] = format_duration(shortened)
                    said = FOR_PHRASE.format(spoken_duration(seconds))
                    annotations = rule.get("annotations") or {}
                    for key, text in annotations.items():
                        if isinstance(text, str):
                            annotations[key] = text.replace(said, FOR_PHRASE.format(spoken_duration(shortened)))
    return out


def _rule_files(data: dict[str, Any], prometheus_dir: Path) -> list[Path]:
    """The files the repo's rule_files patterns match, resolved as Prometheus does (relative to the config)."""
    files: list[Path] = []
    for pattern in data.get("rule_files") or []:
        for match in sorted(glob.glob(os.path.join(prometheus_dir, str(pattern)))):
            path = Path(match)
            if path.is_file() and path not in files:
                files.append(path)
    return files


def _scrape_job(
    job: dict[str, Any], targets: Sequence[str], global_interval: float, global_timeout: float
) -> dict[str, Any]:
    new = {
        k: v for k, v in job.items() if not k.endswith(SD_SUFFIX) and k not in ("static_configs", *DROPPED_TARGET_KEYS)
    }
    labels: dict[str, Any] = {}
    for static in job.get("static_configs") or []:
        labels.update(static.get("labels") or {})
    new["static_configs"] = [{"targets": list(targets), **({"labels": labels} if labels else {})}]
    where = f"scrape job {job.get('job_name')}"
    interval = _seconds(new["scrape_interval"], where) if "scrape_interval" in new else global_interval
    timeout = _seconds(new["scrape_timeout"], where) if "scrape_timeout" in new else global_timeout
    if timeout > interval:
        new["scrape_timeout"] = format_duration(interval * TIMEOUT_SHARE)
    return new


def _global_settings(settings: dict[str, Any], profile: Profile) -> tuple[dict[str, Any], float, float]:
    """The global section with the profile's timings (a timeout never above the interval), its scrape interval and
    timeout in seconds."""
    settings = dict(settings)
    for key, value in (
        ("scrape_interval", profile.scrape_interval),
        ("evaluation_interval", profile.evaluation_interval),
        ("scrape_timeout", profile.scrape_timeout),
    ):
        if value is not None:
            settings[key] = format_duration(value)
    interval = _seconds(settings.get("scrape_interval", DEFAULT_SCRAPE_INTERVAL), "global.scrape_interval")
    timeout = _seconds(settings.get("scrape_timeout", DEFAULT_SCRAPE_TIMEOUT), "global.scrape_timeout")
    if timeout > interval:
        settings["scrape_timeout"] = format_duration(interval * TIMEOUT_SHARE)
        timeout = interval * TIMEOUT_SHARE
    return settings, interval, timeout


def _alerting(alerting: dict[str, Any], members: list[str]) -> dict[str, Any]:
    """The alerting section sending to the stack's Alertmanagers: the first configured one's settings, with its
    targets replaced by `members`."""
    alerting = dict(alerting)
    managers = alerting.get("alertmanagers") or [{}]
    first = {k: v for k, v in managers[0].items() if not k.endswith(SD_SUFFIX) and k not in DROPPED_TARGET_KEYS}
    first.pop("static_configs", None)
    alerting["alertmanagers"] = [{**first, "static_configs": [{"targets": members}]}]
    return alerting


def adapt_prometheus(
    data: dict[str, Any],
    ports: Ports,
    profile: Profile,
    rule_paths: list[Path],
    node_exporter: str | None,
    bot_targets: Path | None = None,
    alertmanagers: Sequence[str] = (),
    freqtrade_targets: Path | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The repo's prometheus.yml for the local stack, and notes on what was left out. With `bot_targets`, the bot's
    job reads its targets from that file_sd file (as the repo's does), which the caller writes. `alertmanagers`: the
    addresses of the stack's Alertmanagers (default: the one on the alertmanager port); with a clustered pair every
    alert goes to both members and both are scraped, as production does. With `freqtrade_targets`, the freqtrade job
    (freqtrade sidecars) reads its targets from that file_sd file; without it, the job is left out."""
    members = list(alertmanagers) or [ports.address("alertmanager")]
    notes: list[str] = []
    out = {k: copy.deepcopy(v) for k, v in data.items() if k not in DROPPED_TOP_LEVEL}
    for key in DROPPED_TOP_LEVEL:
        if key in data:
            notes.append(f"prometheus: {key} left out (the local stack ships nothing off this machine)")
    settings, global_interval, global_timeout = _global_settings(out.get("global") or {}, profile)
    out["global"] = settings
    out["alerting"] = _alerting(out.get("alerting") or {}, members)
    out["rule_files"] = [str(p) for p in rule_paths]

    jobs = []
    for job in data.get("scrape_configs") or []:
        role = _role(job)
        name = job.get("job_name")
        if role is None:
            notes.append(f"prometheus: scrape job {name!r} left out: nothing in the local stack matches it")
            continue
        if role == "freqtrade" and freqtrade_targets is None:
            notes.append(f"prometheus: scrape job {name!r} left out: the local stack runs no freqtrade")
            continue
        if role == "node":
            if node_exporter is None:
                notes.append(f"prometheus: scrape job {name!r} left out: no node exporter answers on 127.0.0.1:9100")
                continue
            targets = [node_exporter]
        elif role == "alertmanager":
            targets = members
        elif role == "freqtrade":
            targets = []
        else:
            targets = [ports.address(role)]
        new = _scrape_job(job, targets, global_interval, global_timeout)
        sd_file = {"bot": bot_targets, "freqtrade": freqtrade_targets}.get(role)
        if sd_file is not None:
            del new["static_configs"]
            new["file_sd_configs"] = [{"files": [str(sd_file)]}]
        jobs.append(new)
    out["scrape_configs"] = jobs
    return out, notes


def render_prometheus(
    repo: Path,
    ports: Ports,
    profile: Profile,
    layout: Layout,
    node_exporter: str | None = None,
    bot_instances: list[str] | None = None,
    alertmanagers: Sequence[str] = (),
    freqtrade_instances: Sequence[str] = (),
) -> RenderedPrometheus:
    """Read the repo's prometheus.yml and rule files and adapt them (nothing is written). The bot job's file_sd
    targets are `bot_instances` (the configuration's bots: list), by default the stack's one bot; the freqtrade job's
    `freqtrade_instances` (the sidecar of `up --bot freqtrade`; none: the job is left out); alerts go to (and
    the alertmanager job scrapes) `alertmanagers`, by default the stack's one Alertmanager."""
    source = repo / PROMETHEUS_CONFIG
    data = load_yaml(source)
    rule_sources = _rule_files(data, source.parent)
    if not rule_sources:
        raise MonitoringConfigError(f"{source}: rule_files match no file")
    rules: dict[str, dict[str, Any] | Path] = {}
    for path in rule_sources:
        if path.name in rules:
            raise MonitoringConfigError(f"{source}: two rule files are named {path.name}")
        rules[path.name] = adapt_rules(load_yaml(path), profile, str(path)) if profile.shorten_for else path
    # Rules the profile changes are copied into the state dir; otherwise Prometheus reads the repo's own files.
    rule_paths = [layout.rules_dir / name if isinstance(r, dict) else r for name, r in rules.items()]
    freqtrade_sd = layout.freqtrade_targets if freqtrade_instances else None
    config, notes = adapt_prometheus(
        data, ports, profile, rule_paths, node_exporter, layout.bot_targets, alertmanagers, freqtrade_sd
    )
    bots = [ports.address("bot")] if bot_instances is None else list(bot_instances)
    return RenderedPrometheus(config, rules, notes, bots, list(freqtrade_instances))


def write_prometheus(rendered: RenderedPrometheus, layout: Layout, repo: Path, profile: Profile) -> None:
    """Write the adapted prometheus.yml and rule copies (a fresh rules dir: renamed repo files leave nothing)."""
    shutil.rmtree(layout.rules_dir, ignore_errors=True)
    layout.rules_dir.mkdir(parents=True, exist_ok=True)
    for name, rules in rendered.rules.items():
        if isinstance(rules, dict):
            dump_yaml(
                layout.rules_dir / name,
                rules,
                f"Generated by `trading-ops up` (profile {profile.name}) from {repo / 'prometheus'}: alert `for:`\n"
                "durations shortened as trading_ops/stack/profiles.py says. Edit the source file, not this copy.",
            )
    layout.bot_targets.parent.mkdir(parents=True, exist_ok=True)
    layout.bot_targets.write_text(file_sd(rendered.bot_targets, str(layout.app_config)), encoding="utf-8")
    if rendered.freqtrade_targets:
        text = file_sd(rendered.freqtrade_targets, str(layout.app_config), "freqtrade")
        layout.freqtrade_targets.write_text(text, encoding="utf-8")
    dump_yaml(
        layout.prometheus_config,
        rendered.config,
        f"Generated by `trading-ops up` (profile {profile.name}) from {repo / PROMETHEUS_CONFIG}:\n"
        "local targets and paths. Edit the source file, not this copy.",
    )
