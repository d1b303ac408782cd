"""The local stack (`trading-ops up`): its adaptation of the repo's Prometheus and Alertmanager configurations, bad
usage of `up`, and its status line. `up` itself as a real process (healthy children, a missing binary, Ctrl-C, a child
dying): tests/deploy/test_stack_up.py.

Needs promtool and amtool for the configuration checks, and prometheus and prometheus-alertmanager (Debian packages
`prometheus`, `prometheus-alertmanager`) for the process tests, which start `trading-ops up` on free ports.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import re
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import start_alertmanager
from make_run_checkout import make_checkout
from ports import free_port, free_ports
from secret_file import write_secret
from server_process import stop
from system_binaries import GENERATIONS, REPO_ROOT, Generation, require_binary, run_binary

from trading_ops.config import load_config
from trading_ops.db import migrate
from trading_ops.durations import format_duration, parse_duration
from trading_ops.paper import chaos
from trading_ops.stack.alertmanager_config import adapt_alertmanager, render_alertmanager
from trading_ops.stack.app_config import (
    STACK_ACTIONS_PER_TARGET_PER_HOUR,
    STACK_DAILY_LOSS_LIMIT,
    STACK_DATA_DIR_BUDGET_BYTES,
    STACK_MEMORY_BUDGET_BYTES,
    build_app_config,
)
from trading_ops.stack.layout import Layout, Ports
from trading_ops.stack.profiles import FAST, STANDARD
from trading_ops.stack.prometheus_config import (
    adapt_rules,
    races_disconnect,
    reads_up,
    render_prometheus,
    spoken_duration,
    write_prometheus,
)
from trading_ops.stack.repo import MonitoringConfigError, dump_yaml
from trading_ops.stack.status import Snapshot, StatusPrinter, last_action, loss_limit_note, render
from trading_ops.stack.up import UpOptions, UsageProblem, children_path, in_force, lock_state_dir, prepare

RULES_DIR = REPO_ROOT / "prometheus" / "rules"
ROUTING_CASES = yaml.safe_load((REPO_ROOT / "alertmanager" / "tests" / "routing-cases.yml").read_text())
PORTS = Ports(bot=19101, reconciler=19102, prometheus=19090, alertmanager=19093)


def alerts_of(path: Path) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return {r["alert"]: r for g in data["groups"] for r in g["rules"] if "alert" in r}


# ---- durations and the fast profile's rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo_for", "fast_for"),
    [(10, 2), (5, 2), (15, 3), (30, 6), (120, 24), (300, 60), (3600, 720), (1, 1), (0, 0)],
)
def test_fast_profile_divides_for_by_five_with_a_two_second_floor(repo_for: float, fast_for: float) -> None:
    assert FAST.alert_for(repo_for) == fast_for
    assert STANDARD.alert_for(repo_for) == repo_for


@pytest.mark.parametrize(("repo_for", "fast_for"), [(10, 5), (5, 5), (3, 3), (30, 6), (120, 24), (0, 0)])
def test_fast_profile_keeps_an_alert_on_failed_scrapes_at_five_seconds_at_least(
    repo_for: float, fast_for: float
) -> None:
    assert FAST.alert_for(repo_for, scrape_failure=True) == fast_for
    assert STANDARD.alert_for(repo_for, scrape_failure=True) == repo_for


@pytest.mark.parametrize(("repo_for", "fast_for"), [(10, 6), (5, 5), (60, 12), (0, 0)])
def test_fast_profile_keeps_an_alert_that_races_a_disconnection_at_six_seconds_at_least(
    repo_for: float, fast_for: float
) -> None:
    """Each bot notices a venue outage at its own next call: an alert its expression mutes while the venue is cut off
    must wait for the second bot to notice, or the first bot's fires alone
    (profiles.DISCONNECT_RACE_FOR_FLOOR_SECONDS)."""
    assert FAST.alert_for(repo_for, races_disconnect=True) == fast_for
    assert STANDARD.alert_for(repo_for, races_disconnect=True) == repo_for


# The availability rules' host at the fast profile: bot and node exporter joined on the address.
LATE_HOST = "10.0.1.21"


def test_at_the_fast_profile_late_scrapes_are_no_dead_host_and_a_dead_host_pages(tmp_path: Path) -> None:
    """Under load (averages of 30 to 60) a live host's bot and node exporter both answered past the fast profile's
    0.8 s scrape timeout for 2 to 3 s, and TradingBotHostDown (then `for: 2s`) fired for it. promtool on the rules
    as the fast profile renders them (1 s scrapes and evaluations): 3 s of failed scrapes of both fire nothing, pending
    or firing; a host that stays dead fires 5 s after its first failed scrape."""
    source = REPO_ROOT / "prometheus" / "rules" / "tradingbot-availability.yml"
    rules = adapt_rules(yaml.safe_load(source.read_text()), FAST, str(source))
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "TradingBotHostDown"]
    assert rule["for"] == "5s"
    bot, node = f"{LATE_HOST}:9101", f"{LATE_HOST}:9100"
    description = " ".join(rule["annotations"]["description"].split())
    description = description.replace("{{ $labels.instance }}", bot).replace("{{ $labels.host }}", LATE_HOST)
    quiet = [{"eval_time": f"{t}s", "alertname": "TradingBotHostDown", "exp_alerts": []} for t in range(60, 80)]
    late = {
        "interval": "1s",
        "name": "late scrapes",
        "input_series": [
            # A minute up, then 3 s of scrapes past their timeout (both the bot's and the node exporter's), then up.
            {"series": f'up{{job="tradingbot", instance="{bot}"}}', "values": "1x59 0x2 1x30"},
            {"series": f'up{{job="node", instance="{node}"}}', "values": "1x59 0x2 1x30"},
        ],
        "alert_rule_test": quiet,
    }
    labels = {
        "alertname": "TradingBotHostDown",
        "instance": bot,
        "job": "tradingbot",
        "host": LATE_HOST,
        "severity": "critical",
        "service": "tradingbot",
    }
    annotations = {k: v for k, v in rule["annotations"].items() if k != "description"} | {"description": description}
    dead = {
        "interval": "1s",
        "name": "a dead host",
        "input_series": [
            {"series": f'up{{job="tradingbot", instance="{bot}"}}', "values": "1x59 0x30"},
            {"series": f'up{{job="node", instance="{node}"}}', "values": "1x59 0x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "64s", "alertname": "TradingBotHostDown", "exp_alerts": []},
            {
                "eval_time": "65s",
                "alertname": "TradingBotHostDown",
                "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
            },
        ],
    }
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1s", "tests": [late, dead]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests))
    result = run_binary("promtool", "test", "rules", tmp_path / "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- Prometheus ---------------------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "stack")


def test_fast_rules_are_every_repo_rule_file_with_exactly_the_for_changed(layout: Layout) -> None:
    rendered = render_prometheus(REPO_ROOT, PORTS, FAST, layout)
    write_prometheus(rendered, layout, REPO_ROOT, FAST)
    repo_files = sorted(p.name for p in RULES_DIR.glob("*.yml"))
    assert sorted(p.name for p in layout.rules_dir.glob("*.yml")) == repo_files
    assert rendered.config["rule_files"] == [str(layout.rules_dir / name) for name in repo_files]
    changed = 0
    for name in repo_files:
        original, copied = alerts_of(RULES_DIR / name), alerts_of(layout.rules_dir / name)
        assert copied.keys() == original.keys()
        for alert, rule in original.items():
            copy = copied[alert]
            skip = ("for", "annotations")
            assert {k: v for k, v in copy.items() if k not in skip} == {k: v for k, v in rule.items() if k not in skip}
            if "for" in rule:
                # An alert on failed scrapes: 5 s at least; one its expression mutes while the bot is cut off: 6 s.
                floor = 5 if reads_up(rule["expr"]) else 6 if races_disconnect(rule["expr"]) else 2
                expected = min(parse_duration(rule["for"]), max(parse_duration(rule["for"]) / 5, floor))
                assert parse_duration(copy["for"]) == expected, alert
                changed += copy["for"] != rule["for"]
            else:
                assert "for" not in copy
    assert changed > 10  # the catalogue has plenty of alerts with a for: to shorten
    broker = alerts_of(layout.rules_dir / "tradingbot-availability.yml")["TradingBotBrokerDisconnected"]
    assert broker["for"] == "6s"
    assert "for more than 6 seconds." in broker["annotations"]["description"]
    # Only the alerts muted by a disconnection they race keep the 6 s floor; the venue's own is shortened.
    raced = {
        alert
        for name in repo_files
        for alert, rule in alerts_of(RULES_DIR / name).items()
        if races_disconnect(str(rule.get("expr", "")))
    }
    assert raced == {
        "TradingBotBrokerDisconnected",
        "TradingBotStreamChannelStale",
        "TradingBotStreamUserStreamSilent",
    }
    venue = alerts_of(layout.rules_dir / "tradingbot-availability.yml")["TradingBotVenueDown"]
    assert venue["for"] == "2s"


@pytest.mark.parametrize("profile", [FAST, STANDARD], ids=lambda p: p.name)
def test_alert_descriptions_name_the_for_duration_the_alert_really_uses(layout: Layout, profile: Any) -> None:
    write_prometheus(render_prometheus(REPO_ROOT, PORTS, profile, layout), layout, REPO_ROOT, profile)
    rules_dir = layout.rules_dir if profile is FAST else RULES_DIR
    said = 0
    for path in sorted(rules_dir.glob("*.yml")):
        for alert, rule in alerts_of(path).items():
            text = " ".join(str(v) for v in (rule.get("annotations") or {}).values())
            for phrase in re.findall(r"for more than (\d+ (?:second|minute|hour)s?)", text):
                said += 1
                assert phrase == spoken_duration(parse_duration(rule["for"])), (path.name, alert, phrase, rule["for"])
    assert said >= 4  # TradingBotDown (twice), TradingBotBrokerDisconnected, TradingOpsAlertmanagerDown, ...


@pytest.mark.prometheus
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
@pytest.mark.parametrize("profile", [FAST, STANDARD], ids=lambda p: p.name)
def test_rendered_prometheus_config_passes_promtool(layout: Layout, profile: Any, generation: Generation) -> None:
    write_prometheus(render_prometheus(REPO_ROOT, PORTS, profile, layout), layout, REPO_ROOT, profile)
    result = run_binary("promtool", "check", "config", layout.prometheus_config, generation=generation)
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool also loaded every rule file the config names.
    rule_files = len(list(RULES_DIR.glob("*.yml")))
    assert f"SUCCESS: {rule_files} rule files found" in result.stdout
    assert result.stdout.count("rules found") == rule_files, result.stdout


def job_targets(job: dict[str, Any]) -> list[str]:
    """A scrape job's targets: its static ones, or those of the file_sd files it reads."""
    if "static_configs" in job:
        return list(job["static_configs"][0]["targets"])
    files = [f for sd in job["file_sd_configs"] for f in sd["files"]]
    return [t for f in files for group in yaml.safe_load(Path(f).read_text()) for t in group["targets"]]


def test_prometheus_scrapes_and_alerts_locally(layout: Layout) -> None:
    rendered = render_prometheus(REPO_ROOT, PORTS, FAST, layout)
    write_prometheus(rendered, layout, REPO_ROOT, FAST)
    config = rendered.config
    targets = {job["job_name"]: job_targets(job) for job in config["scrape_configs"]}
    # The bot's targets come from a file_sd file, as in the repo's configuration (one place lists the bots).
    assert config["scrape_configs"][0]["file_sd_configs"] == [{"files": [str(layout.bot_targets)]}]
    assert targets == {
        "tradingbot": ["127.0.0.1:19101"],
        "trading-ops-reconciler": ["127.0.0.1:19102"],
        "alertmanager": ["127.0.0.1:19093"],
        "prometheus": ["127.0.0.1:19090"],
    }
    assert any("'node' left out" in note for note in rendered.notes)
    # The shipped bound on a dead Alertmanager's wait is kept.
    assert config["alerting"]["alertmanagers"] == [
        {"timeout": "2s", "static_configs": [{"targets": ["127.0.0.1:19093"]}]}
    ]
    assert config["global"]["scrape_interval"] == "1s" and config["global"]["evaluation_interval"] == "1s"
    assert parse_duration(config["global"]["scrape_timeout"]) < 1


def test_a_node_exporter_that_answers_is_scraped(layout: Layout) -> None:
    config = render_prometheus(REPO_ROOT, PORTS, FAST, layout, node_exporter="127.0.0.1:19100").config
    (node,) = [job for job in config["scrape_configs"] if job["job_name"] == "node"]
    assert node["static_configs"][0]["targets"] == ["127.0.0.1:19100"]


def test_standard_profile_keeps_the_repo_timings_and_rule_files(layout: Layout) -> None:
    repo = yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.yml").read_text())
    rendered = render_prometheus(REPO_ROOT, PORTS, STANDARD, layout)
    assert rendered.config["global"] == repo["global"]
    assert rendered.config["rule_files"] == [str(p) for p in sorted(RULES_DIR.glob("*.yml"))]
    repo_jobs = {j["job_name"]: j for j in repo["scrape_configs"]}
    where = ("static_configs", "file_sd_configs")
    for job in rendered.config["scrape_configs"]:
        assert {k: v for k, v in job.items() if k not in where} == {
            k: v for k, v in repo_jobs[job["job_name"]].items() if k not in where
        }
        assert ("file_sd_configs" in job) == ("file_sd_configs" in repo_jobs[job["job_name"]])


def test_a_change_in_the_repo_configs_flows_into_the_stack(tmp_path: Path, layout: Layout) -> None:
    """Nothing is a second hand-written copy: a new job, a new rule file and a new route come through."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "prometheus", repo / "prometheus")
    shutil.copytree(REPO_ROOT / "alertmanager", repo / "alertmanager")
    prom = yaml.safe_load((repo / "prometheus" / "prometheus.yml").read_text())
    prom["scrape_configs"].append({"job_name": "second-bot", "static_configs": [{"targets": ["bot-2:9101"]}]})
    prom["scrape_configs"].append({"job_name": "elsewhere", "static_configs": [{"targets": ["db:5432"]}]})
    (repo / "prometheus" / "prometheus.yml").write_text(yaml.safe_dump(prom))
    new_rule = {"alert": "TradingBotSomethingNew", "expr": "vector(0) > 1", "for": "1m", "labels": {"severity": "info"}}
    (repo / "prometheus" / "rules" / "new.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "new", "rules": [new_rule]}]})
    )
    am = yaml.safe_load((repo / "alertmanager" / "alertmanager.yml").read_text())
    am["route"]["routes"].insert(0, {"matchers": ['alertname="TradingBotSomethingNew"'], "receiver": "reconciler"})
    (repo / "alertmanager" / "alertmanager.yml").write_text(yaml.safe_dump(am))

    rendered = render_prometheus(repo, PORTS, FAST, layout)
    write_prometheus(rendered, layout, repo, FAST)
    write_prometheus(rendered, layout, repo, FAST)
    jobs = {j["job_name"]: job_targets(j) for j in rendered.config["scrape_configs"]}
    assert jobs["second-bot"] == ["127.0.0.1:19101"]  # a bot job by its catalogue port
    assert "elsewhere" not in jobs and any("'elsewhere' left out" in n for n in rendered.notes)
    assert alerts_of(layout.rules_dir / "new.yml")["TradingBotSomethingNew"]["for"] == "12s"
    route = render_alertmanager(repo, PORTS, FAST, tmp_path / "token").config["route"]["routes"][0]
    assert route == {
        "matchers": ['alertname="TradingBotSomethingNew"'],
        "receiver": "reconciler",
        "group_wait": "0s",
        "group_interval": "1s",
    }


# ---- Alertmanager -------------------------------------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "reconciler-token"
    path.write_text("t0ken\n")
    return path


def write_am(tmp_path: Path, profile: Any, token_file: Path) -> tuple[Path, dict[str, Any]]:
    rendered = render_alertmanager(REPO_ROOT, PORTS, profile, token_file)
    path = tmp_path / f"alertmanager-{profile.name}.yml"
    dump_yaml(path, rendered.config, "test")
    return path, rendered.config


@pytest.mark.parametrize("key", ["group_wait", "group_interval"])
def test_a_route_timing_that_is_no_duration_is_one_config_error_naming_the_file(
    tmp_path: Path, token_file: Path, key: str
) -> None:
    data = yaml.safe_load((REPO_ROOT / "alertmanager" / "alertmanager.yml").read_text())
    # A route to people with an interval of its own (the profile divides it, unless its wait is longer).
    route = next(r for r in data["route"]["routes"] if r.get("receiver") == "pager" and "group_interval" in r)
    route[key] = "soon"
    with pytest.raises(MonitoringConfigError, match=r"alertmanager\.yml: route: expected a duration .* got 'soon'"):
        adapt_alertmanager(data, tmp_path, PORTS, FAST, token_file)


@pytest.mark.alertmanager
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
@pytest.mark.parametrize("profile", [FAST, STANDARD], ids=lambda p: p.name)
def test_rendered_alertmanager_config_passes_amtool(
    tmp_path: Path, token_file: Path, profile: Any, generation: Generation
) -> None:
    path, _ = write_am(tmp_path, profile, token_file)
    result = run_binary("amtool", "check-config", path, generation=generation)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout  # the repo's template, found through its absolute path


def test_reconciler_webhook_is_local_with_a_credentials_file(tmp_path: Path, token_file: Path) -> None:
    _, config = write_am(tmp_path, FAST, token_file)
    receivers = {r["name"]: r for r in config["receivers"]}
    (hook,) = receivers["reconciler"]["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:19102/api/v1/alertmanager"
    assert hook["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": str(token_file)}
    assert hook["send_resolved"] is True and hook["max_alerts"] == 1000
    # People's receivers stay (routing unchanged) but have no integration: no page leaves this machine.
    for name in ("pager", "chat", "deadman"):
        assert receivers[name] == {"name": name}
    assert "http" not in json.dumps({k: v for k, v in receivers.items() if k != "reconciler"})
    assert set(config["global"]) <= {"resolve_timeout"}


def test_fast_profile_tunes_reconciler_routes_and_divides_peoples_intervals(tmp_path: Path, token_file: Path) -> None:
    repo = yaml.safe_load((REPO_ROOT / "alertmanager" / "alertmanager.yml").read_text())
    _, fast = write_am(tmp_path, FAST, token_file)
    _, standard = write_am(tmp_path, STANDARD, token_file)
    assert standard["route"] == repo["route"]
    assert fast["inhibit_rules"] == standard["inhibit_rules"] == repo["inhibit_rules"]
    tuned: list[dict[str, Any]] = []

    def compare(before: dict[str, Any], after: dict[str, Any], inherited: str) -> None:
        receiver = before.get("receiver", inherited)
        own = {k: v for k, v in before.items() if k != "routes"}
        expected = {**own, "group_wait": "0s", "group_interval": "1s"} if receiver == "reconciler" else own
        if receiver != "reconciler" and "group_interval" in own:  # people's: divided, over the peer timeout
            shipped = parse_duration(own["group_interval"])
            divided = FAST.people_group_interval(shipped)
            # ... but a route that waits out a remedy keeps its interval (its wait and Alertmanager's clean-up).
            if parse_duration(own.get("group_wait", "0s")) > divided:
                divided = shipped
            expected = {**own, "group_interval": format_duration(divided)}
        assert {k: v for k, v in after.items() if k != "routes"} == expected
        if receiver == "reconciler":
            tuned.append(after)
        for child_before, child_after in zip(before.get("routes", []), after.get("routes", []), strict=True):
            compare(child_before, child_after, receiver)

    compare(repo["route"], fast["route"], repo["route"]["receiver"])
    assert len(tuned) >= 2  # Watchdog, critical and warning reach the reconciler


@pytest.mark.alertmanager
def test_every_repo_routing_case_routes_the_same_in_the_stack(tmp_path: Path, token_file: Path) -> None:
    path, _ = write_am(tmp_path, FAST, token_file)
    for case in ROUTING_CASES:
        labels = [f"{name}={value}" for name, value in case["labels"].items()]
        receivers = ",".join(case["receivers"])
        result = run_binary(
            "amtool", "config", "routes", "test", f"--config.file={path}", f"--verify.receivers={receivers}", *labels
        )
        assert result.returncode == 0, f"{case['name']}: routed to {result.stdout.strip()}, expected {receivers}"


# ---- the bot's and the reconciler's configuration -----------------------------------------------------------


def test_app_config_wires_the_bot_and_reconciler_together(tmp_path: Path, layout: Layout) -> None:
    source = tmp_path / "trading-ops.yaml"
    source.write_text("database:\n  url: sqlite:///var/db.sqlite\nbot:\n  data_dir: var/bot\n")
    app = build_app_config(source, layout, PORTS)
    assert app.read_token_file is not None
    assert app.read_token_file.read_text() != app.reconciler_token_file.read_text()
    for token in (app.control_token_file, app.reconciler_token_file, app.read_token_file):
        assert token.parent == tmp_path / "var" / "secrets"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert len(token.read_text().strip()) >= 32
    control = app.control_token_file.read_text()
    config = load_config(app.path)  # the generated file is a valid configuration on its own
    assert config.database_url() == f"sqlite:///{tmp_path / 'var' / 'db.sqlite'}"
    assert Path(config.bot.data_dir) == tmp_path / "var" / "bot"
    assert (config.bot.listen.host, config.bot.listen.port) == ("127.0.0.1", 19101)
    assert config.reconciler.listen.port == 19102
    assert config.reconciler.prometheus_url == "http://127.0.0.1:19090"
    assert config.reconciler.alertmanager_url == "http://127.0.0.1:19093"
    # Prometheus labels the bot instance="127.0.0.1:19101": that key leads the reconciler to its control API.
    assert set(config.reconciler.targets) == {"127.0.0.1:19101"}
    assert config.reconciler.targets["127.0.0.1:19101"].url == "http://127.0.0.1:19101"
    assert config.reconciler.targets["127.0.0.1:19101"].token == f"file:{app.control_token_file}"
    # One list of bots: the stack's bot, which the reconciler's targets and Prometheus's file_sd both come from.
    assert [(b.name, b.kind, b.instance) for b in config.bots] == [("paper-1", "paper", "127.0.0.1:19101")]
    # The reconciler's signing key, owner-only, generated beside the tokens; the bot trusts its public key, so the
    # demo's ramp promotes only on a decision the reconciler signed.
    key = tmp_path / "var" / "secrets" / "reconciler-decision-key"
    assert config.reconciler.decision_key == f"file:{key}" and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert config.bot.decision_keys == [f"{key}.pub"]
    signing = key.read_bytes()
    # A second start keeps the tokens and the key (Alertmanager, the bot and the reconciler read the same files).
    build_app_config(source, layout, PORTS)
    assert app.control_token_file.read_text() == control and key.read_bytes() == signing


def test_the_committed_example_config_runs_in_the_stack(tmp_path: Path, layout: Layout) -> None:
    """What `make run` does: the example copied to trading-ops.yaml, then `up` generates the children's config."""
    source = tmp_path / "trading-ops.yaml"
    shutil.copy(REPO_ROOT / "trading-ops.example.yaml", source)
    config = load_config(build_app_config(source, layout, PORTS).path)
    assert config.database_url() == f"sqlite:///{tmp_path / 'var' / 'trading-ops.db'}"
    assert set(config.reconciler.targets) == {"127.0.0.1:19101"}


def test_the_demo_profile_and_budgets_are_in_force_with_the_example_config(tmp_path: Path, layout: Layout) -> None:
    """The example copied by `make run` leaves the demo's settings to the stack: the fast profile's crash timeout and
    reconciliation interval, the paper bot's 2,500 loss limit and an action budget the README's fault tour fits in
    twice; the banner's `in force` line says what applies. A value the user's file sets still wins."""
    source = tmp_path / "trading-ops.yaml"
    shutil.copy(REPO_ROOT / "trading-ops.example.yaml", source)
    config = load_config(build_app_config(source, layout, PORTS, profile=FAST).path)
    assert (config.recovery.crash_timeout_seconds, config.recovery.reconcile_interval_seconds) == (3.0, 15.0)
    assert config.bot.risk.daily_loss_limit is None and config.paper.daily_loss_limit == STACK_DAILY_LOSS_LIMIT
    assert config.reconciler.budgets.max_actions_per_target_per_hour == STACK_ACTIONS_PER_TARGET_PER_HOUR
    assert in_force(config) == (
        "in force: daily loss limit 2500 (paper.daily_loss_limit), recovery.crash_timeout_seconds 3s, "
        "recovery.reconcile_interval_seconds 15s, reconciler budget 30 actions per target and 60 in all per hour"
    )
    mine = yaml.safe_load(source.read_text())
    mine["recovery"]["crash_timeout_seconds"] = 7
    mine["reconciler"]["budgets"] = {"max_actions_per_target_per_hour": 4}
    mine["bot"]["risk"]["daily_loss_limit"] = 900
    source.write_text(yaml.safe_dump(mine))
    config = load_config(build_app_config(source, layout, PORTS, profile=FAST).path)
    assert config.recovery.crash_timeout_seconds == 7 and config.reconciler.budgets.max_actions_per_target_per_hour == 4
    assert "daily loss limit 900 (bot.risk.daily_loss_limit), recovery.crash_timeout_seconds 7s" in in_force(config)


def test_the_paper_bot_gets_the_readiness_page_s_stages_judged_over_minutes(tmp_path: Path, layout: Layout) -> None:
    """docs/readiness.md's promotion (`ramp promote paper-1 --to seven-dollars`) runs on the stack as written: the demo
    bot has the page's first two stages by name, the first capping a position above what the demo's strategy keeps to
    by itself (paper.max_position_notional 10,000: it trades as before), the second widening that by the page's 7/5;
    the page's criteria over a window whose 1 % scrape tolerance holds two of the profile's scrapes. A ramp of the
    user's own is kept."""
    source = tmp_path / "trading-ops.yaml"
    shutil.copy(REPO_ROOT / "trading-ops.example.yaml", source)
    app = build_app_config(source, layout, PORTS, profile=FAST)
    stages = load_config(app.path).bot.ramp.stages
    assert [(s.name, s.max_position_notional, s.symbols, s.daily_loss_limit) for s in stages] == [
        ("five-dollars", 12000.0, [], 0.0),
        ("seven-dollars", 16800.0, [], 0.0),
    ]
    assert {(s.window, s.min_time) for s in stages} == {("5m", "5m")}
    assert stages[0].criteria == ["uptime", "crashes", "order_success", "api_error_ratio", "daily_loss_breaches"]
    assert app.notes[0] == (
        "the paper bot's ramp: stages 12000 and 16800 a position (five-dollars, seven-dollars), each judged over 5m "
        "and held at least that long (docs/readiness.md, Go live in stages)"
    )
    # The standard profile scrapes every 5 s: 17 minutes, whose 10 s tolerance holds two scrapes.
    standard = load_config(build_app_config(source, layout, PORTS, profile=STANDARD).path).bot.ramp.stages
    assert {(s.window, s.min_time) for s in standard} == {("17m", "17m")}
    mine = yaml.safe_load(source.read_text())
    mine["bot"]["ramp"] = {"stages": [{"name": "only", "window": "2d"}]}
    source.write_text(yaml.safe_dump(mine))
    app = build_app_config(source, layout, PORTS, profile=FAST)
    assert [s.name for s in load_config(app.path).bot.ramp.stages] == ["only"]
    assert not any("ramp" in note for note in app.notes)


def test_the_ccxt_gateway_stack_from_the_example_config_gets_a_bot_of_its_own(tmp_path: Path, layout: Layout) -> None:
    """`make run UP_ARGS="--bot ccxt-gateway"` copies the example, whose bot section is the paper bot's: the ccxt bot
    must not take its name (and with it the paper bot's journal and positions), nor ccxt's 1 call/s rate limiter
    against the local gateway; the notes say what was changed."""
    source = tmp_path / "trading-ops.yaml"
    shutil.copy(REPO_ROOT / "trading-ops.example.yaml", source)
    ports = Ports(**{**PORTS.__dict__, "gateway": 19110})
    app = build_app_config(source, layout, ports, "ccxt-gateway")
    config = load_config(app.path)
    assert (config.bot.name, config.bot.venue, config.bot.strategy) == ("ccxt-1", "kraken", "mean-reverter")
    assert config.ccxt.enable_rate_limit is False
    assert config.bot.risk.daily_loss_limit == STACK_DAILY_LOSS_LIMIT  # the demo's limit, in the runtime's risk
    assert [b.name for b in config.bots] == ["ccxt-1"]
    assert len(app.notes) == 2
    assert "'paper-1' on venue 'paper' is the paper bot's section" in app.notes[0] and "'ccxt-1'" in app.notes[0]
    assert app.notes[1].startswith("ccxt.enable_rate_limit is off on the paper gateway")
    # A bot section of the user's own (not the paper bot's) is kept, and the paper stack changes nothing.
    source.write_text(yaml.safe_dump({"bot": {"name": "mybot", "venue": "kraken"}}))
    app = build_app_config(source, layout, ports, "ccxt-gateway")
    assert load_config(app.path).bot.name == "mybot" and app.notes == ()
    assert load_config(app.path).bot.ramp.stages == []  # the demo's ramp is the paper bot's only
    shutil.copy(REPO_ROOT / "trading-ops.example.yaml", source)
    (note,) = build_app_config(source, layout, PORTS).notes
    assert note.startswith("the paper bot's ramp: ")


def test_backups_go_where_the_users_file_says_not_into_the_state_dir(tmp_path: Path, layout: Layout) -> None:
    """`trading-ops backup list` run beside the user's file reads backup.directory relative to that file: the stack
    writes its backups to the same place (it wrote them under the state dir, var/stack/var/backups)."""
    source = tmp_path / "trading-ops.yaml"
    shutil.copy(REPO_ROOT / "trading-ops.example.yaml", source)
    config = load_config(build_app_config(source, layout, PORTS).path)
    assert config.path(config.backup.directory) == tmp_path / "var" / "backups"
    assert load_config(source).path(load_config(source).backup.directory) == tmp_path / "var" / "backups"


def test_up_says_when_it_reuses_the_state_of_an_earlier_run_and_fresh_removes_it(tmp_path: Path) -> None:
    """A second `up` carries the first one's ledger (episodes, cooldowns, spent budgets), Prometheus data and venue
    book: it says so, and `--fresh` starts from empty state instead."""
    source = tmp_path / "trading-ops.yaml"
    shutil.copy(REPO_ROOT / "trading-ops.example.yaml", source)
    base = free_ports(5)
    options = UpOptions(
        state_dir=tmp_path / "var" / "stack",
        repo=str(REPO_ROOT),
        ports=Ports.choose(base),
        profile=FAST,
        ready_timeout=60,
        status_interval=None,
        node_exporter="",
        config_path=str(source),
        log_level=None,
    )

    def notes(fresh: bool) -> list[str]:
        stack = prepare(UpOptions(**{**options.__dict__, "fresh": fresh}))
        assert stack.notify is not None
        stack.notify.close()
        return [note for note in stack.notes if "state" in note]

    database = tmp_path / "var" / "trading-ops.db"
    assert notes(fresh=False) == [] and database.exists()  # the first run: nothing to reuse
    prometheus_data = options.state_dir / "prometheus" / "data"
    prometheus_data.mkdir(parents=True)
    (reused,) = notes(fresh=False)
    assert reused.startswith(f"reusing the earlier runs' state ({database}, {prometheus_data})"), reused
    assert "`up --fresh`" in reused
    (removed,) = notes(fresh=True)
    assert removed == f"--fresh: removed the earlier runs' state ({database}, {prometheus_data})"
    assert not prometheus_data.exists() and database.exists()  # migrated anew, empty
    (reused,) = notes(fresh=False)  # the fresh run's own database from then on
    assert reused.startswith(f"reusing the earlier runs' state ({database}):"), reused


async def test_the_banner_names_the_console_and_the_token_that_approves_the_demos_loss_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any
) -> None:
    """A newcomer finds the console from the banner: its URL and the token files to log in with, each with what it may
    do: an approve-scope token `up` creates (as `make run` does) and the stack's reconciler accepts for deciding
    approvals, an operate one that opens maintenance windows and a destructive one that halts a bot there; the demo's
    playbook asks for approval on the loss limit, which the packaged one does not."""
    from trading_ops.config import load_config as load
    from trading_ops.reconciler import keys
    from trading_ops.reconciler.app import create_app
    from trading_ops.reconciler.playbook import load_playbook
    from trading_ops.stack.up import _banner

    root = make_checkout(tmp_path)
    (root / "var" / "secrets" / "reconciler-approve-token").unlink()  # created when missing, as the others
    monkeypatch.chdir(root)
    ports = Ports.choose(free_ports(9))
    options = UpOptions(root / "var" / "stack", str(REPO_ROOT), ports, FAST, 60, None, "", "trading-ops.yaml", None)
    stack = prepare(options)
    assert stack.notify is not None
    stack.notify.close()
    token = root / "var" / "secrets" / "reconciler-approve-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    banner = _banner(stack)
    at = next(i for i, line in enumerate(banner) if line.startswith("  console "))
    assert banner[at : at + 5] == [
        f"  console       {ports.url('reconciler')}/ui/  (log in with the token in one of these files)",
        "                var/secrets/reconciler-approve-token: it approves",
        "                var/secrets/reconciler-operate-token: opens maintenance windows",
        "                var/secrets/reconciler-destructive-token: also halts a bot (Emergency halt)",
        "                var/secrets/reconciler-read-token: only looks",
    ]
    config = load(str(stack.app.path))
    assert [(t.name, t.scope) for t in config.reconciler.api_tokens] == [
        ("desk", "approve"),
        ("operator", "operate"),
        ("oncall", "destructive"),
        ("alice", "approve"),
        ("bob", "approve"),
    ]
    # Two people's own approve tokens (`make run` writes them): one asks for a promotion, the other approves it.
    assert banner[at + 5 : at + 7] == [
        "                var/secrets/alice-token: alice's own (approve; alice and bob: one asks "
        "for a promotion, the other approves it)",
        "                var/secrets/bob-token: bob's own (approve; alice and bob: one asks for a "
        "promotion, the other approves it)",
    ]
    # Each file the banner names is that scope's token of the stack's reconciler (created when missing, mode 600).
    app = create_app(config)
    for person in ("alice", "bob"):
        written = root / "var" / "secrets" / f"{person}-token"
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
        matched = app[keys.API_TOKENS].match(f"Bearer {written.read_text().strip()}")
        assert matched is not None and (matched.name, matched.scope) == (person, "approve")
    for scope in ("operate", "destructive"):
        written = root / "var" / "secrets" / f"reconciler-{scope}-token"
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
        matched = app[keys.API_TOKENS].match(f"Bearer {written.read_text().strip()}")
        assert matched is not None and matched.scope == scope
    # The stack's reconciler takes that token for deciding (a 404 for no such approval: past the scope check).
    client = await aiohttp_client(app)
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
    answer = await client.post("/api/v1/approvals/999", json={"decision": "approve", "reason": "x"}, headers=headers)
    assert answer.status == 404, await answer.text()
    # The README's "opens maintenance windows and halts a bot" can be tried: the console, logged in with the operate
    # token, offers the maintenance form; with the destructive one, the fleet's Emergency halt.
    for scope, path, offered in (
        ("operate", "/ui/maintenance", '<form method="post" action="/ui/maintenance" class="card">'),
        ("destructive", "/ui/", f'href="/ui/bots/{ports.address("bot")}/halt">Emergency halt</a>'),
    ):
        login_form = await client.get("/ui/login")
        nonce = re.search(r'name="csrf" value="([^"]+)"', await login_form.text())
        assert nonce is not None
        secret = (root / "var" / "secrets" / f"reconciler-{scope}-token").read_text().strip()
        await client.post("/ui/login", data={"csrf": nonce.group(1), "token": secret})
        shown = await (await client.get(path)).text()
        assert offered in shown, (scope, shown)
        client.session.cookie_jar.clear()
    # The demo's loss-limit rule waits for that approval even on the shipped (critical, hard-limit) alert.
    rule = next(r for r in load_playbook(config.reconciler.playbook).rules if r.name == "loss-limit-flatten")
    critical = {"alertname": "TradingBotDailyLossBreached", "severity": "critical", "instance": ports.address("bot")}
    assert [rule.needs_approval(step, critical) for step in rule.steps] == [True, True]
    assert any("loss-limit-flatten asks for approval" in note for note in stack.notes)


def test_a_stack_of_another_bot_kind_drops_the_earlier_runs_series_before_prometheus_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ghosts: the earlier run's Prometheus data holds its bots' series, which the rules read for minutes after a start
    (a sidecar's heartbeat gone stale, a phantom TradingBotDown). `up` of another bot kind (or on other ports)
    removes that data before Prometheus starts and says so; the same bots keep it."""
    monkeypatch.chdir(tmp_path)
    options = UpOptions(
        state_dir=tmp_path / "stack",
        repo=str(REPO_ROOT),
        ports=Ports.choose(free_ports(9)),
        profile=FAST,
        ready_timeout=60,
        status_interval=None,
        node_exporter="",
        config_path=None,
        log_level=None,
        bot_kind="ccxt-gateway",
    )
    data = options.state_dir / "prometheus" / "data"

    def start(**changed: Any) -> list[str]:
        stack = prepare(UpOptions(**{**options.__dict__, **changed}))
        assert stack.notify is not None
        stack.notify.close()
        data.mkdir(parents=True, exist_ok=True)  # what its Prometheus would write
        return [note for note in stack.notes if "Prometheus data" in note]

    assert start() == []
    assert start() == [] and data.exists()  # the same bot: its series are its own, kept
    (note,) = start(bot_kind="paper")
    assert note == (
        f"stale state from a run of ccxt-gateway (127.0.0.1:{options.ports.bot}): removed its Prometheus data "
        f"({data}), so the series of bots this stack does not run fire no alert and the reconciler acts on none "
        "(`up --fresh` removes all earlier state)"
    )
    moved = free_ports(9)
    (note,) = start(bot_kind="paper", ports=Ports.choose(moved))  # the same kind on other ports: other instances
    assert note.startswith(f"stale state from a run of paper (127.0.0.1:{options.ports.bot}): removed")


@pytest.mark.parametrize("kind", ["ccxt-gateway", "freqtrade"])
def test_fresh_empties_the_gateways_state_dir_and_leaves_it_for_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The gateway writes its venue into its state directory and creates none: `--fresh` removes the earlier venue,
    never the directory (the gateway's orders failed with HTTP 500, its autosave finding no directory). A directory
    the configuration has just created (empty) is no earlier run's state."""
    # No configuration given: the defaults are relative to the working directory (the ledger in var/), which must
    # be this test's own, never the checkout's that other workers' tests share (--fresh removes the database).
    monkeypatch.chdir(tmp_path)
    options = UpOptions(
        state_dir=tmp_path / "stack",
        repo=str(REPO_ROOT),
        ports=Ports.choose(free_ports(9)),
        profile=FAST,
        ready_timeout=60,
        status_interval=None,
        node_exporter="",
        config_path=None,
        log_level=None,
        bot_kind=kind,
    )

    def start(fresh: bool) -> list[str]:
        stack = prepare(UpOptions(**{**options.__dict__, "fresh": fresh}))
        assert stack.notify is not None
        stack.notify.close()
        return [note for note in stack.notes if "state" in note]

    venue = options.state_dir / "gateway" / "venue.json"
    assert not any(str(venue.parent) in note for note in start(fresh=False))
    venue.write_text("{}")
    (removed,) = start(fresh=True)
    assert str(venue.parent) in removed and not venue.exists() and venue.parent.is_dir()


@pytest.mark.parametrize(
    ("bot", "memory_budget", "data_dir_budget"),
    [
        # None given: the stack's budgets, which the paper bot's leak_memory and fill_disk defaults cross.
        ({}, STACK_MEMORY_BUDGET_BYTES, STACK_DATA_DIR_BUDGET_BYTES),
        # The user's own budgets are kept.
        ({"resources": {"memory_budget_bytes": 1 << 30, "data_dir_budget_bytes": 0}}, 1 << 30, 0),
        # A memory limit below the stack's budget: no budget above it (it is refused, and the limit is tighter).
        ({"memory_limit_bytes": 256 << 20}, 0, STACK_DATA_DIR_BUDGET_BYTES),
    ],
)
def test_the_stack_gives_the_bot_resource_budgets_unless_configured(
    tmp_path: Path, layout: Layout, bot: dict[str, Any], memory_budget: int, data_dir_budget: int
) -> None:
    source = tmp_path / "trading-ops.yaml"
    source.write_text(yaml.safe_dump({"bot": bot}))
    resources = load_config(build_app_config(source, layout, PORTS).path).bot.resources
    assert (resources.memory_budget_bytes, resources.data_dir_budget_bytes) == (memory_budget, data_dir_budget)
    assert chaos.DEFAULT_LEAK_MIB * chaos.MIB > STACK_MEMORY_BUDGET_BYTES
    assert chaos.DEFAULT_FILL_MIB * chaos.MIB > STACK_DATA_DIR_BUDGET_BYTES


def test_the_children_find_this_trading_ops_first_on_their_path() -> None:
    """A playbook's `exec` step [trading-ops, upkeep, cleanup] runs this installation's trading-ops, even where the
    virtualenv is not activated (`make run`)."""
    scripts = sysconfig.get_path("scripts")
    assert (Path(scripts) / "trading-ops").exists()  # the test runs from an installed trading-ops
    assert children_path("/usr/bin:/bin") == f"{scripts}:/usr/bin:/bin"
    assert shutil.which("trading-ops", path=children_path("/usr/bin:/bin")) == str(Path(scripts) / "trading-ops")
    assert children_path(f"/usr/bin:{scripts}") == f"/usr/bin:{scripts}"  # already there: left as the user has it


def test_a_database_url_from_the_environment_is_left_to_it(
    tmp_path: Path, layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACK_TEST_DB", f"sqlite:///{tmp_path / 'env.db'}")
    source = tmp_path / "trading-ops.yaml"
    source.write_text("database:\n  url_env: STACK_TEST_DB\n")
    app = build_app_config(source, layout, PORTS)
    assert yaml.safe_load(app.path.read_text())["database"] == {"url_env": "STACK_TEST_DB"}
    assert app.config.database_url() == f"sqlite:///{tmp_path / 'env.db'}"


@pytest.mark.parametrize(
    ("playbook", "expected"),
    [("", ""), ("default", "default"), ("docker", "docker"), ("playbooks/mine.yml", "{root}/playbooks/mine.yml")],
)
def test_app_config_keeps_named_playbooks_and_resolves_playbook_files(
    tmp_path: Path, layout: Layout, playbook: str, expected: str
) -> None:
    source = tmp_path / "trading-ops.yaml"
    source.write_text(yaml.safe_dump({"reconciler": {"playbook": playbook}}))
    app = build_app_config(source, layout, PORTS)
    generated = yaml.safe_load(app.path.read_text())
    assert generated["reconciler"]["playbook"] == expected.format(root=tmp_path)


def test_a_shortening_profile_shortens_the_playbooks_cooldowns_and_nothing_else(tmp_path: Path, layout: Layout) -> None:
    """The fast profile divides the cooldowns as it divides the alerts' `for:` (at most 1 min, never below 30 s), so
    the README's tour runs twice in a row; every rule, step and verification is the packaged playbook's own but the
    demo's loss limit, which asks for approval; the standard profile leaves the playbook as it ships."""
    from trading_ops.reconciler.playbook import load_packaged_playbook, load_playbook

    source = tmp_path / "trading-ops.yaml"
    source.write_text(yaml.safe_dump({"reconciler": {"playbook": "default"}}))
    app = build_app_config(source, layout, PORTS, profile=FAST)
    generated = yaml.safe_load(app.path.read_text())["reconciler"]["playbook"]
    assert generated == str(layout.state_dir / "playbook.yml")
    shipped, fast = load_packaged_playbook("default"), load_playbook(generated)
    assert [r.name for r in fast.rules] == [r.name for r in shipped.rules]
    for ours, theirs in zip(fast.rules, shipped.rules, strict=True):
        assert ours.cooldown == min(theirs.cooldown, max(min(theirs.cooldown / 5, 60.0), 30.0)), ours.name
        # The demo's one change beside the cooldowns: its loss limit asks for approval (no hard limit acts at once).
        shipped_as = {"hard_limit": theirs.hard_limit} if ours.name == "loss-limit-flatten" else {}
        assert dataclasses.replace(ours, cooldown=theirs.cooldown, **shipped_as) == theirs, ours.name
    assert {r.name: r.cooldown for r in fast.rules}["broker-reconnect"] == 60.0  # the shipped 5m
    assert any("cooldowns are shortened" in note for note in app.notes)

    standard = build_app_config(source, layout, PORTS, profile=STANDARD)
    assert yaml.safe_load(standard.path.read_text())["reconciler"]["playbook"] == "default"


def test_a_bot_data_dir_that_holds_the_stack_gets_a_directory_of_its_own(tmp_path: Path) -> None:
    """The example's `bot.data_dir: ./var` holds `./var/stack` (Prometheus's data): the bot's disk budget must not
    count the stack's files, so the bot keeps its data in `var/bot`, and a paper venue book an earlier run left in
    `var` moves with it (the journal's positions are on it)."""
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "paper-1-paper-venue.json").write_text("{}")
    source = tmp_path / "trading-ops.yaml"
    source.write_text(yaml.safe_dump({"bot": {"data_dir": "./var"}}))
    app = build_app_config(source, Layout(tmp_path / "var" / "stack"), PORTS)
    assert yaml.safe_load(app.path.read_text())["bot"]["data_dir"] == str(tmp_path / "var" / "bot")
    assert (tmp_path / "var" / "bot" / "paper-1-paper-venue.json").read_text() == "{}"
    assert not (tmp_path / "var" / "paper-1-paper-venue.json").exists()
    assert any("does not count" in note or "do not count" in note for note in app.notes)
    # A data dir beside the state dir is the user's to keep as it is.
    source.write_text(yaml.safe_dump({"bot": {"data_dir": "./data"}}))
    app = build_app_config(source, Layout(tmp_path / "var" / "stack"), PORTS)
    assert yaml.safe_load(app.path.read_text())["bot"]["data_dir"] == str(tmp_path / "data")


# ---- the status line ------------------------------------------------------------------------------------------


EPISODES = [
    {
        "id": 2,
        "alertname": "TradingBotMarketDataStale",
        "state": "verifying",
        "closed_at": None,
        "attempts": [
            {
                "steps": [
                    {
                        "description": "bot command=resubscribe",
                        "outcome": "success",
                        "started_at": "2026-01-01T10:00:05+00:00",
                    }
                ]
            }
        ],
    },
    {
        "id": 1,
        "alertname": "TradingBotBrokerDisconnected",
        "state": "recovered",
        "closed_at": "2026-01-01T10:00:03+00:00",
        "attempts": [
            {
                "steps": [
                    {
                        "description": "bot command=reconnect",
                        "outcome": "success",
                        "started_at": "2026-01-01T10:00:01+00:00",
                    }
                ]
            }
        ],
    },
]


def test_status_line_names_alerts_open_episodes_and_the_last_action() -> None:
    action = last_action(EPISODES)
    assert action is not None and action.startswith("bot command=resubscribe -> success at ")
    assert "(TradingBotMarketDataStale, episode 2 verifying)" in action
    line = render(
        Snapshot(
            alerts=["TradingBotBrokerDisconnected", "TradingBotBrokerDisconnected", "TradingBotMarketDataStale"],
            watchdog=True,
            open_episodes=1,
            last_action=action,
        )
    )
    assert line.startswith("alerts firing: 3 (TradingBotBrokerDisconnected x2, TradingBotMarketDataStale)")
    assert "watchdog: ok" in line and "episodes open: 1" in line and "last action: bot command=resubscribe" in line
    assert render(Snapshot()).startswith("alerts: unknown")


def test_status_line_lists_critical_alerts_first() -> None:
    warnings = ["TradingBotHighOrderRejectRate", "TradingBotMarketDataStale", "TradingBotBrokerDisconnected"]
    snap = Snapshot(
        alerts=[*warnings, "TradingBotDailyLossBreached", warnings[0]],
        severities={**dict.fromkeys(warnings, "warning"), "TradingBotDailyLossBreached": "critical"},
    )
    line = render(snap)
    assert line.startswith(
        "alerts firing: 5 (TradingBotDailyLossBreached [critical], TradingBotHighOrderRejectRate x2, "
    )
    assert line.split(" | ")[0].endswith(", +1 more)")


def test_status_line_names_every_critical_alert_a_real_alertmanager_holds(tmp_path: Path) -> None:
    """The issue's case end to end: a real Alertmanager holds five critical alerts (one of them also firing as a
    warning elsewhere: its most severe counts) and four warnings; the status line read from it names every critical
    one and counts only the warnings in "+N more" (docs/local-stack.md: critical alerts are never hidden)."""
    import aiohttp

    from trading_ops.stack.status import fetch

    require_binary("prometheus-alertmanager")
    am = start_alertmanager(tmp_path / "am")
    try:
        critical = [f"TradingBotCritical{i}" for i in range(4)] + ["TradingBotDown"]
        warnings = [f"TradingBotWarning{i}" for i in range(4)]
        alerts = [{"labels": {"alertname": n, "severity": "critical", "instance": "a:9101"}} for n in critical]
        alerts += [{"labels": {"alertname": n, "severity": "warning", "instance": "a:9101"}} for n in warnings]
        alerts.append({"labels": {"alertname": "TradingBotDown", "severity": "warning", "instance": "b:9101"}})
        am.post_alerts(alerts)

        async def line() -> str:
            async with aiohttp.ClientSession() as session:
                return render(await fetch(session, [am.url], None, None)).split(" | ")[0]

        shown = asyncio.run(line())
        assert shown.startswith("alerts firing: 10 ("), shown
        assert all(f"{name} [critical]" in shown for name in critical[:4]), shown
        assert "TradingBotDown x2 [critical]" in shown, shown
        assert shown.endswith(", +4 more)") and not any(w in shown for w in warnings), shown
    finally:
        stop(am.proc)


def test_status_line_never_hides_a_critical_alert_behind_more() -> None:
    """Five critical alerts and two warnings (the issue's "+4 more" hid critical ones): every critical alert is named,
    only warnings are counted in "+N more" (docs/local-stack.md)."""
    critical = [f"TradingBotCritical{i}" for i in range(5)]
    warnings = ["TradingBotMarketDataStale", "TradingBotBrokerDisconnected"]
    snap = Snapshot(
        alerts=[*warnings, *critical],
        severities={**dict.fromkeys(warnings, "warning"), **dict.fromkeys(critical, "critical")},
    )
    shown = render(snap).split(" | ")[0]
    assert all(f"{name} [critical]" in shown for name in critical), shown
    assert shown.endswith(", +2 more)") and not any(w in shown for w in warnings), shown
    # Under NAMES_SHOWN critical ones: as before, the others fill up to three names.
    snap.alerts = [*warnings, critical[0]]
    assert render(snap).startswith(
        "alerts firing: 3 (TradingBotCritical0 [critical], TradingBotMarketDataStale, TradingBotBrokerDisconnected)"
    )


async def test_status_line_shows_the_reconcilers_pause_and_open_circuits(tmp_path: Path, aiohttp_server) -> None:
    """A real reconciler app (SQLite ledger) answers the status line's requests."""
    import aiohttp

    from trading_ops.config import parse_config
    from trading_ops.db.base import make_engine, utcnow
    from trading_ops.reconciler.app import create_app
    from trading_ops.reconciler.ledger import Ledger
    from trading_ops.stack.status import fetch

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    write_secret(tmp_path / "token", "t")
    reconciler = {"token_file": str(tmp_path / "token"), "poll_interval_seconds": 0.05, "check_silences": False}
    config = parse_config({"database": {"url": url}, "reconciler": reconciler}, base_dir=tmp_path)
    server = await aiohttp_server(create_app(config))
    base = str(server.make_url("")).rstrip("/")
    ledger = Ledger(make_engine(url))
    ledger.set_paused(True)
    ledger.open_circuit("bot-7", utcnow() + timedelta(hours=1))
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 20
        while True:
            snap = await fetch(session, [], None, base)
            if snap.paused and snap.open_circuits or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    line = render(snap)
    assert "RECONCILER PAUSED (trading-ops reconciler resume)" in line and "CIRCUIT OPEN: bot-7" in line
    ledger.engine.dispose()


def test_status_without_a_terminal_prints_a_line_only_when_it_changes() -> None:
    out = io.StringIO()
    printer = StatusPrinter(out)
    for line in ("a", "a", "b", "b", "a"):
        printer.show(line)
    printer.message("child exited")
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines[:3]] == ["status: a", "status: b", "status: a"]
    assert lines[3] == "child exited"


def test_a_stack_that_stopped_leaves_no_lock_behind(tmp_path: Path) -> None:
    """The lock goes with its process (even a kill -9): the next `up` starts, no stale pid file stands in its way."""
    state_dir = tmp_path / "stack"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, time; from trading_ops.stack.stack_lock import StackLock; "
            f"StackLock(pathlib.Path({str(state_dir)!r})).acquire('bot paper'); print('held', flush=True); "
            "time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        options = UpOptions(state_dir, None, PORTS, FAST, 60.0, None, None, None, None)
        with pytest.raises(UsageProblem, match=rf"^a stack already runs with state directory .*\(pid {holder.pid},"):
            lock_state_dir(options)
        holder.kill()
        holder.wait(30)
        lock = lock_state_dir(options)  # taken: the killed holder's lock went with it
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
        if holder.stdout:
            holder.stdout.close()


def test_make_run_with_a_mistyped_config_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    """`make run CONFIG=<a typo>`: one line, exit 2, and no copy of the example at the mistyped path (only the
    default trading-ops.yaml is created from the example)."""
    shutil.copy(REPO_ROOT / "Makefile", tmp_path / "Makefile")
    result = subprocess.run(
        ["make", "--no-print-directory", "run", "CONFIG=tradnig-ops.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "no configuration tradnig-ops.yaml: pass an existing file, or leave CONFIG out" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile"]


def test_the_config_make_run_writes_lets_backup_run_work(tmp_path: Path) -> None:
    """`make run` writes trading-ops.yaml from the example; `trading-ops backup run` with that file (the database the
    stack uses) succeeds and says the backup stays on this host, where the example's off-host requirement made it
    fail ("no off-host repository is configured")."""
    for name in ("Makefile", "trading-ops.example.yaml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    made = subprocess.run(
        ["make", "-s", "trading-ops.yaml"], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert made.returncode == 0, made.stderr
    config = load_config(tmp_path / "trading-ops.yaml")
    assert config.backup.remote.required is False and not config.backup.remote.host
    trading_ops = [sys.executable, "-m", "trading_ops", "--config", "trading-ops.yaml"]
    for command in (["db", "upgrade"], ["backup", "run"]):
        done = subprocess.run(
            [*trading_ops, *command], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert "off host: none (backup.remote.required is false)" in done.stdout
    assert list((tmp_path / "var" / "backups").iterdir())


def test_a_repo_without_monitoring_configs_is_bad_usage(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trading_ops", "up", "--repo", str(tmp_path), "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"trading-ops: up: no prometheus/prometheus.yml and alertmanager/alertmanager.yml in {tmp_path}: "
        "run from the trading-ops checkout or pass --repo"
    ]


def test_up_runs_a_bot_kind_from_the_configuration(tmp_path: Path, layout: Layout) -> None:
    """`up --bot KIND`: the built-in paper bot and example ccxt bot, or any bot on the runtime whose command line
    bot_kinds: gives."""
    from trading_ops.stack.up import UsageProblem, bot_command

    source = tmp_path / "trading-ops.yaml"
    kinds = {"mine": ["{python}", "examples/my_bot.py", "--config", "{config}"], "odd": ["{nope}"]}
    source.write_text(yaml.safe_dump({"bot_kinds": kinds}))
    app = build_app_config(source, layout, PORTS, "mine")
    name, command = bot_command("mine", app, None)
    assert name == "mine-bot" and command == [sys.executable, "examples/my_bot.py", "--config", str(app.path)]
    assert app.config.bots[0].kind == "mine"
    name, command = bot_command("paper", app, "DEBUG")
    assert name == "paper-bot" and command[-2:] == ["paper-bot", "--chaos"] and "DEBUG" in command
    name, command = bot_command("ccxt-gateway", app, None, REPO_ROOT)
    assert name == "ccxt-bot" and command == [
        sys.executable,
        str(REPO_ROOT / "examples" / "ccxt_bot.py"),
        str(app.path),
    ]
    with pytest.raises(UsageProblem, match=rf"--bot ccxt-gateway: no examples/ccxt_bot.py in {tmp_path}: pass --repo"):
        bot_command("ccxt-gateway", app, None, tmp_path)
    known = r"\(known: ccxt-gateway, freqtrade, mine, odd, paper;"
    with pytest.raises(UsageProblem, match=rf"--bot ccxt: unknown bot kind {known}"):
        bot_command("ccxt", app, None)
    with pytest.raises(UsageProblem, match=r"bot_kinds.odd: only \{python\} and \{config\}"):
        bot_command("odd", app, None)


def test_the_ccxt_gateway_stack_gets_a_gateway_with_generated_credentials_and_a_bot_pointed_at_it(
    tmp_path: Path, layout: Layout
) -> None:
    """`up --bot ccxt-gateway`: the gateway's key, secret and fault token are generated into files (mode 600) and
    only their paths are in the YAML; the bot's ccxt section signs with that key at the gateway's port."""
    from trading_ops.paper.gateway.kraken.gateway import gateway_from_config
    from trading_ops.venues.ccxt.factory import make_exchange

    source = tmp_path / "trading-ops.yaml"
    source.write_text(yaml.safe_dump({"paper": {"symbols": ["BTC-USD", "ETH-USD"]}, "bot": {"data_dir": "var/bot"}}))
    ports = Ports(**{**PORTS.__dict__, "gateway": 19110})
    app = build_app_config(source, layout, ports, "ccxt-gateway")
    names = ("gateway-api-key", "gateway-api-secret", "gateway-control-token")
    files = [tmp_path / "var" / "secrets" / name for name in names]
    assert app.gateway_token_file == files[2]
    written = app.path.read_text()
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        value = path.read_text().strip()
        assert len(value) >= 32 and value not in written  # a path in the YAML, never the secret
        assert str(path) in written
    assert len(base64.b64decode(files[1].read_text().strip(), validate=True)) == 64  # base64, as Kraken's are
    config = load_config(app.path)
    gateway, client = config.gateway, config.ccxt
    assert (gateway.listen.host, gateway.listen.port) == ("127.0.0.1", 19110)
    assert Path(gateway.state_file) == layout.gateway_state and layout.gateway_state.parent.is_dir()
    assert client.urls == {"public": "http://127.0.0.1:19110", "private": "http://127.0.0.1:19110"}
    assert (client.exchange, client.symbols, client.enable_rate_limit) == ("kraken", ["BTC-USD", "ETH-USD"], False)
    # The bot budgets against Kraken's Pro call counter, which the gateway enforces.
    assert (client.kraken_tier, gateway.call_counter) == ("pro", "pro")
    assert (config.bot.name, config.bot.venue) == ("ccxt-1", "kraken")
    assert [(b.name, b.kind, b.instance) for b in config.bots] == [("ccxt-1", "ccxt-gateway", "127.0.0.1:19101")]
    exchange = make_exchange(config)  # the bot's client signs with the key the gateway accepts
    served = gateway_from_config(config)
    assert served.call_counter is not None and served.call_counter.tier.decay == 1.0
    assert served.control_token == files[2].read_text().strip()
    assert served.auth.secret_of(exchange.apiKey) == base64.b64decode(exchange.secret)
    # A second start keeps them (the venue's state and the bot's key go together).
    secret = files[1].read_text()
    build_app_config(source, layout, ports, "ccxt-gateway")
    assert files[1].read_text() == secret


def test_the_freqtrade_stack_wires_freqtrade_its_sidecar_and_a_key_of_the_sidecars_own(
    tmp_path: Path, layout: Layout
) -> None:
    """`up --bot freqtrade`: the sidecar (the freqtrade section) serves the bot port, polls freqtrade's API on the
    freqtrade port and reconciles through the gateway on a key of its own; freqtrade's config.json points ccxt at the
    gateway and holds no secret (they reach freqtrade as FREQTRADE__* variables from files); Prometheus scrapes the
    sidecar in the freqtrade job and the tradingbot job has no target."""
    from trading_ops.config import resolve_secret
    from trading_ops.paper.gateway.kraken.gateway import gateway_from_config
    from trading_ops.stack import freqtrade_bot

    source = tmp_path / "trading-ops.yaml"
    shutil.copy(REPO_ROOT / "trading-ops.example.yaml", source)
    ports = Ports(**{**PORTS.__dict__, "gateway": 19110, "freqtrade": 19108})
    app = build_app_config(source, layout, ports, "freqtrade", FAST)
    config = load_config(app.path)
    target = config.freqtrade.targets["freqtrade-1"]
    assert (target.url, target.listen.port, target.username) == ("http://127.0.0.1:19108", 19101, "freqtrader")
    assert target.ccxt is not None and target.ccxt.urls["private"] == "http://127.0.0.1:19110"
    assert Path(target.log_file) == layout.freqtrade_log
    assert [(b.name, b.kind, b.instance, b.systemd_unit) for b in config.bots] == [
        ("freqtrade-1", "freqtrade", "127.0.0.1:19101", "trading-ops-freqtrade.service")
    ]
    # A loss-limit halt clears on the decision the stack's reconciler signs for bots[0]: the sidecar trusts its key.
    assert config.freqtrade.decision_keys == config.bot.decision_keys and config.freqtrade.decision_keys
    assert target.bot == "freqtrade-1"
    served = gateway_from_config(config)
    main_key = (tmp_path / "var" / "secrets" / "gateway-api-key").read_text().strip()
    sidecar_key = (tmp_path / "var" / "secrets" / "gateway-sidecar-api-key").read_text().strip()
    assert {main_key, sidecar_key} <= served.auth.keys() and main_key != sidecar_key
    secrets = dict(app.freqtrade_secrets)
    assert set(secrets) == {
        "FREQTRADE__EXCHANGE__KEY",
        "FREQTRADE__EXCHANGE__SECRET",
        "FREQTRADE__API_SERVER__PASSWORD",
        "FREQTRADE__API_SERVER__JWT_SECRET_KEY",
        "FREQTRADE__API_SERVER__WS_TOKEN",
    }
    assert secrets["FREQTRADE__EXCHANGE__KEY"].read_text().strip() == main_key
    env = freqtrade_bot.environment(app, {})
    # freqtrade's API password is the one the sidecar logs in with.
    assert env["FREQTRADE__API_SERVER__PASSWORD"] == resolve_secret(config, target, "password", "password")
    written = freqtrade_bot.write_config(config, layout, ports, FAST).read_text()
    for value in env.values():
        assert value not in written
    ft = json.loads(written)
    assert ft["exchange"]["ccxt_config"] == {
        "urls": {"api": {"public": "http://127.0.0.1:19110", "private": "http://127.0.0.1:19110"}},
        "enableRateLimit": True,
        "rateLimit": freqtrade_bot.GATEWAY_RATE_LIMIT_MS,
    }
    assert ft["exchange"]["pair_whitelist"] == [s.replace("-", "/") for s in config.paper.symbols]
    assert (ft["api_server"]["listen_port"], ft["dry_run"], ft["initial_state"]) == (19108, False, "running")
    rendered = render_prometheus(
        REPO_ROOT, ports, FAST, layout, bot_instances=[], freqtrade_instances=["127.0.0.1:19101"]
    )
    write_prometheus(rendered, layout, REPO_ROOT, FAST)
    jobs = {job["job_name"]: job for job in rendered.config["scrape_configs"]}
    assert jobs["freqtrade"]["file_sd_configs"] == [{"files": [str(layout.freqtrade_targets)]}]
    assert yaml.safe_load(layout.freqtrade_targets.read_text()) == [{"targets": ["127.0.0.1:19101"]}]
    assert yaml.safe_load(layout.bot_targets.read_text()) == []


def test_up_bot_freqtrade_without_freqtrade_installed_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before anything is written or started: the usage problem says how to install it."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    options = UpOptions(
        state_dir=tmp_path / "stack",
        repo=str(REPO_ROOT),
        ports=Ports.choose(free_ports(9)),
        profile=FAST,
        ready_timeout=60,
        status_interval=None,
        node_exporter="",
        config_path=None,
        log_level=None,
        bot_kind="freqtrade",
    )
    with pytest.raises(UsageProblem, match=r"^--bot freqtrade: freqtrade is not installed: pip install "):
        prepare(options)
    assert not (tmp_path / "stack").exists()


# ---- a fleet: `up --bot ccxt-gateway --bots N` ----------------------------------------------------------------


def test_a_fleets_ports_follow_the_stacks_or_the_bots_base_port() -> None:
    from trading_ops.stack.layout import bot_ports

    assert bot_ports(Ports(), 1) == [9101]  # one bot: the stack's bot port, as always
    assert bot_ports(Ports(), 3) == [9111, 9112, 9113]  # right after the highest default port (the gateway's)
    assert bot_ports(Ports.choose(19100), 2) == [19105, 19106]  # after --base-port's five
    assert bot_ports(PORTS, 2, 20000) == [20000, 20001]
    assert bot_ports(PORTS, 1, 20000) == [20000]


def test_a_fleet_gets_a_configuration_an_account_a_port_and_a_data_dir_per_bot(tmp_path: Path, layout: Layout) -> None:
    """Three example bots on one gateway: each its own name, port, data dir, journal (SQLite), configuration file and
    gateway account with its own key; all three in the bots: list, so in the reconciler's targets (with their units)
    and in Prometheus's file_sd targets."""
    from trading_ops.paper.gateway.kraken.gateway import gateway_from_config
    from trading_ops.venues.ccxt.factory import make_exchange

    source = tmp_path / "trading-ops.yaml"
    source.write_text(yaml.safe_dump({"bot": {"data_dir": "var/bot"}}))
    ports = Ports(**{**PORTS.__dict__, "gateway": 19110})
    app = build_app_config(source, layout, ports, "ccxt-gateway", FAST, [19111, 19112, 19113])
    names = ["ccxt-1", "ccxt-2", "ccxt-3"]
    instances = [f"127.0.0.1:{port}" for port in (19111, 19112, 19113)]
    config = load_config(app.path)
    assert [(b.name, b.kind, b.instance, b.url) for b in config.bots] == [
        (name, "ccxt-gateway", instance, f"http://{instance}") for name, instance in zip(names, instances, strict=True)
    ]
    targets = config.reconciler.targets
    assert list(targets) == instances
    assert [t.unit for t in targets.values()] == [f"trading-ops-bot@{name}.service" for name in names]
    assert app.bot_configs == tuple(layout.bot_config(name) for name in names)
    gateway = gateway_from_config(config)
    assert list(gateway.accounts) == ["main", "ccxt-2", "ccxt-3"]
    keys = set()
    for name, instance, path in zip(names, instances, app.bot_configs, strict=True):
        mine = load_config(path)
        assert (mine.bot.name, f"127.0.0.1:{mine.bot.listen.port}") == (name, instance)
        assert Path(mine.bot.data_dir) == tmp_path / "var" / "bot" / name
        assert mine.database_url() == f"sqlite:///{tmp_path / 'var' / 'bot' / name / 'trading-ops.db'}"
        assert mine.bots == config.bots and mine.ccxt.urls == config.ccxt.urls
        exchange = make_exchange(mine)  # its key reaches its own account of the venue
        assert gateway.auth.account_of_key[exchange.apiKey] is gateway.accounts["main" if name == "ccxt-1" else name]
        keys.add(exchange.apiKey)
        if name != "ccxt-1":
            for suffix in ("api-key", "api-secret"):
                secret = tmp_path / "var" / "secrets" / f"gateway-{name}-{suffix}"
                assert stat.S_IMODE(secret.stat().st_mode) == 0o600
                assert secret.read_text().strip() not in path.read_text()  # a path in the YAML, never the secret
    assert len(keys) == 3  # never a key shared: Kraken's nonce is per key
    assert app.database_urls == (config.database_url(), *(load_config(p).database_url() for p in app.bot_configs))
    rendered = render_prometheus(REPO_ROOT, ports, FAST, layout, bot_instances=[b.instance for b in config.bots])
    write_prometheus(rendered, layout, REPO_ROOT, FAST)
    tradingbot = next(j for j in rendered.config["scrape_configs"] if j["job_name"] == "tradingbot")
    assert job_targets(tradingbot) == instances
    # A second start keeps every key (each account's state goes with its key).
    key = (tmp_path / "var" / "secrets" / "gateway-ccxt-3-api-key").read_text()
    build_app_config(source, layout, ports, "ccxt-gateway", FAST, [19111, 19112, 19113])
    assert (tmp_path / "var" / "secrets" / "gateway-ccxt-3-api-key").read_text() == key


def test_a_fleet_is_named_after_the_configurations_bot_and_shares_a_database_given_by_url_env(
    tmp_path: Path, layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database URL from the environment (as a PostgreSQL one is given) is the fleet's one database; only the
    SQLite file of the configuration itself is split, one per bot."""
    monkeypatch.setenv("STACK_FLEET_DB", f"sqlite:///{tmp_path / 'shared.db'}")
    source = tmp_path / "trading-ops.yaml"
    source.write_text(yaml.safe_dump({"bot": {"name": "desk"}, "database": {"url_env": "STACK_FLEET_DB"}}))
    app = build_app_config(source, layout, PORTS, "ccxt-gateway", None, [19111, 19112])
    assert [b.name for b in app.config.bots] == ["desk-1", "desk-2"]
    source.write_text(yaml.safe_dump({"bot": {"name": "desk-1"}, "database": {"url_env": "STACK_FLEET_DB"}}))
    assert [b.name for b in build_app_config(source, layout, PORTS, "ccxt-gateway", None, [1, 2]).config.bots] == [
        "desk-1",
        "desk-2",
    ]
    for path in app.bot_configs:
        assert yaml.safe_load(path.read_text())["database"] == {"url_env": "STACK_FLEET_DB"}
    assert app.database_urls == (f"sqlite:///{tmp_path / 'shared.db'}",)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--bots", "0"], "--bots must be between 1 and 100, got 0"),
        (["--bots", "101", "--bot", "ccxt-gateway"], "--bots must be between 1 and 100, got 101"),
        (["--bots", "2"], "--bots 2: a fleet of bots runs on the paper gateway: add --bot ccxt-gateway"),
        (["--bots", "2", "--bot", "ccxt-gateway", "--bots-base-port", "65535"], "ports must be between 1 and 65535"),
        (["--bots", "3", "--bot", "ccxt-gateway", "--bots-base-port", "{reconciler}"], "would share port"),
    ],
)
def test_bad_fleet_options_are_one_line_of_bad_usage(tmp_path: Path, args: list[str], problem: str) -> None:
    reconciler = free_port()
    command = [sys.executable, "-m", "trading_ops", "up", "--state-dir", str(tmp_path / "s"), "--repo", str(REPO_ROOT)]
    command += [f"--reconciler-port={reconciler}", *(a.format(reconciler=reconciler - 1) for a in args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("trading-ops: up: ") and problem in line, line


def test_a_fleet_port_in_use_is_named_with_its_bot(tmp_path: Path) -> None:
    base = free_ports(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 2))
        busy.listen()
        command = [sys.executable, "-m", "trading_ops", "up", "--state-dir", str(tmp_path / "s")]
        command += ["--repo", str(REPO_ROOT), "--bot", "ccxt-gateway", "--bots", "3", "--bots-base-port", str(base)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"trading-ops: up: port {base + 2} (bot 3 of 3) is in use on 127.0.0.1: free it or pass --bots-base-port"
    ]


def test_status_line_counts_a_fleets_bots_rather_than_listing_them() -> None:
    snap = Snapshot(alerts=[], watchdog=True, open_episodes=0, bots=20)
    assert (
        render(snap) == "alerts firing: 0 | bots: 20 (20 active) | watchdog: ok | episodes open: 0 | last action: none"
    )
    snap.bots_down = [f"ccxt-{i}" for i in (2, 5, 9, 11)]
    snap.down = ["reconciler"]
    line = render(snap)
    assert "| bots: 20 (16 active, 4 not: ccxt-2, ccxt-5, ccxt-9, +1 more) |" in line
    assert line.endswith("| DOWN: reconciler")


# ---- a clustered Alertmanager pair: `up --alertmanagers 2` -----------------------------------------------------

PAIR = Ports(
    **{**PORTS.__dict__, "alertmanager_gossip": 19094, "alertmanager_2": 19095, "alertmanager_2_gossip": 19096}
)
MEMBERS = ["127.0.0.1:19093", "127.0.0.1:19095"]


def test_a_pairs_ports_follow_alertmanagers_convention_or_the_base_port() -> None:
    from trading_ops.stack.layout import bot_ports

    def pair(ports: Ports) -> tuple[int, ...]:
        return ports.alertmanager, ports.alertmanager_gossip, ports.alertmanager_2, ports.alertmanager_2_gossip

    assert pair(Ports()) == (9093, 9094, 9095, 9096)  # each member's gossip right after its HTTP port
    based = Ports.choose(19100)
    assert pair(based) == (19103, 19105, 19106, 19107)  # after the five of --base-port
    assert based.gateway == 19104
    assert Ports.choose(19100, alertmanager_2=20000, alertmanager_2_gossip=None).alertmanager_2 == 20000
    # A fleet starts after the stack's highest port: the pair's are counted only when the pair runs.
    assert bot_ports(based, 2) == [19105, 19106]
    assert bot_ports(based, 2, alertmanagers=2) == [19108, 19109]
    assert bot_ports(Ports(), 2, alertmanagers=2) == [9111, 9112]


@pytest.mark.prometheus
def test_prometheus_sends_every_alert_to_both_members_and_scrapes_both(layout: Layout) -> None:
    """As production does: one alertmanagers entry with both members, so each gets every alert; both are scraped, so
    TradingOpsAlertmanagerDown names the member that is down."""
    rendered = render_prometheus(REPO_ROOT, PAIR, FAST, layout, alertmanagers=MEMBERS)
    write_prometheus(rendered, layout, REPO_ROOT, FAST)
    config = rendered.config
    assert config["alerting"]["alertmanagers"] == [{"timeout": "2s", "static_configs": [{"targets": MEMBERS}]}]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "alertmanager"]
    assert job_targets(job) == MEMBERS
    result = run_binary("promtool", "check", "config", layout.prometheus_config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_reconciler_posts_to_both_members_and_only_to_the_stacks(tmp_path: Path, layout: Layout) -> None:
    """The pair: alertmanager_url is the first member, alertmanager_peers the second (escalations and silences go to
    both, reads to the first that answers). Peers in the user's file are another deployment's: never the stack's."""
    source = tmp_path / "trading-ops.yaml"
    source.write_text(yaml.safe_dump({"reconciler": {"alertmanager_peers": ["http://am-2.prod.example:9093"]}}))
    app = build_app_config(source, layout, PAIR, alertmanager_peers=["http://127.0.0.1:19095"])
    reconciler = load_config(app.path).reconciler
    assert reconciler.alertmanager_url == "http://127.0.0.1:19093"
    assert reconciler.alertmanager_peers == ["http://127.0.0.1:19095"]
    assert reconciler.alertmanager_urls == ["http://127.0.0.1:19093", "http://127.0.0.1:19095"]
    single = load_config(build_app_config(source, layout, PAIR).path).reconciler
    assert (single.alertmanager_url, single.alertmanager_peers) == ("http://127.0.0.1:19093", [])
    assert "alertmanager_peers" not in yaml.safe_load(app.path.read_text())["reconciler"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "--alertmanagers must be 1 or 2 (a clustered pair), got 0"),
        ("3", "--alertmanagers must be 1 or 2 (a clustered pair), got 3"),
        ("-2", "--alertmanagers must be 1 or 2 (a clustered pair), got -2"),
        ("two", "argument --alertmanagers: invalid int value: 'two'"),
    ],
)
def test_bad_alertmanagers_values_are_one_line_of_bad_usage(tmp_path: Path, value: str, problem: str) -> None:
    command = [sys.executable, "-m", "trading_ops", "up", "--state-dir", str(tmp_path / "s"), "--repo", str(REPO_ROOT)]
    command += [f"--alertmanagers={value}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(("trading-ops: up: ", "trading-ops up: ")) and problem in line, line  # ours, argparse's
    assert not (tmp_path / "s").exists()  # nothing written, nothing started


@pytest.mark.alertmanager
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_a_gossip_port_in_use_is_named(tmp_path: Path, kind: int) -> None:
    """Alertmanager gossips over TCP and UDP on its cluster port: either taken is one line naming the member."""
    require_binary("prometheus-alertmanager")
    base = free_ports(8)
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", base + 7))
        if kind == socket.SOCK_STREAM:
            busy.listen()
        command = [sys.executable, "-m", "trading_ops", "up", "--state-dir", str(tmp_path / "s")]
        command += ["--repo", str(REPO_ROOT), "--alertmanagers", "2", "--base-port", str(base)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"trading-ops: up: port {base + 7} (alertmanager-2 gossip) is in use on 127.0.0.1: free it or pass "
        "--alertmanager-2-gossip-port or --base-port"
    ]


def test_two_members_on_one_gossip_port_are_bad_usage(tmp_path: Path) -> None:
    base = free_ports(8)
    command = [sys.executable, "-m", "trading_ops", "up", "--state-dir", str(tmp_path / "s"), "--repo", str(REPO_ROOT)]
    command += ["--alertmanagers", "2", "--base-port", str(base), f"--alertmanager-2-gossip-port={base + 5}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"trading-ops: up: two parts of the stack would share port {base + 5}: alertmanager gossip and alertmanager-2 "
        "gossip"
    ]


async def test_up_says_when_a_bot_starts_halted_by_a_loss_limit_breached_today(tmp_path: Path) -> None:
    """After a loss spike, every start that day comes back halted (the journal keeps the day's loss): `up` reads the
    bot's /metrics and says so, with what to do (--fresh). An active bot, or one halted by a person within its limits,
    gets no such line."""
    from paper_helpers import TOKEN, control, fast_config, wait_for
    from prometheus_client import CollectorRegistry, generate_latest

    from trading_ops.paper.bot import PaperBot

    bot = PaperBot(fast_config(tmp_path, daily_loss_limit=40), token=TOKEN, registry=CollectorRegistry(), chaos=True)
    port = await bot.start("127.0.0.1", 0)
    try:
        await wait_for(lambda: sum(abs(bot.book.notional(s)) for s in bot.config.paper.symbols) > 500, timeout=20)
        assert loss_limit_note("paper-1", generate_latest(bot.inst.registry).decode()) is None  # trading
        assert (await control(port, "halt", {"reason": "a person"}))[0] == 200
        assert loss_limit_note("paper-1", generate_latest(bot.inst.registry).decode()) is None  # within its limit
        assert (await control(port, "clear_halt"))[0] == 200
        assert (await control(port, "resume"))[0] == 200
        status, body = await control(port, "loss_spike")
        assert status == 200, body
        await wait_for(lambda: bot.inst.state.state.value == "halted", timeout=10)
        note = loss_limit_note("paper-1", generate_latest(bot.inst.registry).decode())
    finally:
        await bot.stop()
    assert note is not None, "no note for a bot halted past its loss limit"
    assert note.startswith("!!! paper-1 started halted: loss limit breached today (the day's loss "), note
    assert "past the daily loss limit 40)" in note and "use --fresh (make run UP_ARGS=--fresh)" in note, note
    assert loss_limit_note("paper-1", "not an exposition {") is None
