"""What watches and heals the bot of an end-to-end stack, in a temporary directory: real Prometheus (the
long-term-support pair, Prometheus 3.5 and Alertmanager 0.33: system_binaries.LTS) with some of the repository's rule
files at the fast profile's `for:`, scraping the bot; Alertmanager with the repository's
configuration as the fast profile adapts it; and the reconciler (a thread) running some of the packaged playbook's
rules, timed for a test. Used by freqtrade_stack (a freqtrade and its sidecar) and test_nautilus_e2e (a
NautilusTrader node)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from alertmanager_server import start_repo_alertmanager
from ports import free_port
from prometheus_server import start_prometheus
from reconciler_server import READ_AUTH, ThreadedServer, make_config
from server_process import stop, wait_http
from system_binaries import LTS, REPO_ROOT

from trading_ops.db import migrate
from trading_ops.durations import format_duration
from trading_ops.stack.profiles import FAST
from trading_ops.stack.prometheus_config import adapt_rules
from trading_ops.stack.repo import load_yaml

PLAYBOOK = REPO_ROOT / "trading_ops" / "reconciler" / "playbooks" / "default.yml"
DEADLINE_SECONDS = 120.0
ENDED = ("recovered", "escalated", "failed", "resolved", "skipped")


@dataclass
class Monitoring:
    """Prometheus's and Alertmanager's URLs and the reconciler, with what a test asks them."""

    prometheus: str
    alertmanager: str
    reconciler: ThreadedServer

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?query={urllib.parse.quote(expr)}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return list(json.loads(resp.read())["data"]["result"])

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def all_episodes(self, limit: int = 100) -> list[dict[str, Any]]:
        req = urllib.request.Request(f"{self.reconciler.url}/api/v1/episodes?limit={limit}", headers=READ_AUTH)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return list(json.loads(resp.read())["episodes"])

    def episodes(self, alertname: str) -> list[dict[str, Any]]:
        return [e for e in self.all_episodes() if e["alertname"] == alertname]

    def paged(self, alertname: str) -> list[dict[str, Any]]:
        """The alerts named `alertname` Alertmanager holds (what its routing pages a human with)."""
        query = urllib.parse.quote(f'alertname="{alertname}"')
        with urllib.request.urlopen(f"{self.alertmanager}/api/v2/alerts?filter={query}", timeout=5) as resp:
            return list(json.loads(resp.read()))


def packaged_playbook(
    names: Sequence[str], step: Callable[[dict[str, Any]], dict[str, Any]] = lambda same: same
) -> dict[str, Any]:
    """The packaged default playbook's rules `names`, each of their steps as `step` makes it, with no cooldown (faults
    follow each other in a module), a 1 s verification interval and retries after 1 s."""
    packaged = yaml.safe_load(PLAYBOOK.read_text())
    rules = [
        {
            **rule,
            "steps": [step(s) for s in rule["steps"]],
            "cooldown": "0s",
            "verify": {**rule.get("verify", {}), "interval": "1s"},
        }
        for rule in packaged["rules"]
        if rule["name"] in names
    ]
    assert [r["name"] for r in rules] == list(names), "the packaged playbook's rules changed"
    for rule in rules:  # a rule's `defers_to` may name only rules of this playbook: those left out are dropped
        deferred = rule.get("defers_to")
        if deferred is not None:
            kept = [name for name in deferred["rules"] if name in names]
            if kept:
                rule["defers_to"] = {**deferred, "rules": kept}
            else:
                del rule["defers_to"]
    defaults = {**packaged["defaults"], "backoff": {"initial": "1s", "max": "5s", "multiplier": 2, "jitter": 0.2}}
    return {"version": 1, "defaults": defaults, "rules": rules}


def prometheus_config(tmp: Path, rule_files: Sequence[str], job: str, target: str, alertmanager_url: str) -> Path:
    """The repository's `rule_files` as the fast profile adapts them, one scrape job."""
    rule_paths = []
    for name in rule_files:
        source = REPO_ROOT / "prometheus" / "rules" / name
        (tmp / name).write_text(yaml.safe_dump(adapt_rules(load_yaml(source), FAST, str(source))))
        rule_paths.append(str(tmp / name))
    interval = format_duration(FAST.scrape_interval or 1)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rule_paths,
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}]},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def monitoring(
    tmp: Path,
    playbook: dict[str, Any],
    rule_files: Sequence[str],
    job: str,
    target: str,
    url: str,
    token_file: Path,
    pager_url: str | None = None,
) -> Iterator[Monitoring]:
    """In `tmp`, the reconciler running `playbook` on the bot `target` (its control API at `url`, its token in
    `token_file`), Alertmanager sending it the alerts (and its pager receiver's pages to `pager_url`, when given),
    and Prometheus scraping `target` as `job` with `rule_files`; stopped on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    reconciler: ThreadedServer | None = None
    try:
        # The reconciler (in-process thread) first: Alertmanager's webhook points at it.
        db = f"sqlite:///{tmp / 'reconciler.db'}"
        migrate.upgrade(db)
        (tmp / "playbook.yml").write_text(yaml.safe_dump(playbook))
        prometheus_port, alertmanager_port = free_port(), free_port()
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        config = make_config(
            tmp,
            db,
            playbook=str(tmp / "playbook.yml"),
            prometheus_url=prometheus_url,
            # The reconciler asks Alertmanager whether an alert still fires after a rule's wait_for (and escalates
            # there).
            alertmanager_url=f"http://127.0.0.1:{alertmanager_port}",
            # Every fault of a module (and every run of a benchmark) heals the one bot: the per-target budget (6
            # actions an hour) is not what this tests.
            budgets={"max_actions_per_target_per_hour": 1000},
            targets={target: {"url": url, "token_file": str(token_file)}},
        )
        reconciler = ThreadedServer(config)
        # The long-term-support pair (Prometheus 3.5, Alertmanager 0.33): what people deploy today.
        am_url, am_proc = start_repo_alertmanager(
            tmp / "alertmanager",
            alertmanager_port,
            reconciler,
            tmp / "webhook-token",
            generation=LTS,
            pager_url=pager_url,
        )
        procs.append(am_proc)
        config_file = prometheus_config(tmp, rule_files, job, target, am_url)
        resend_delay = format_duration(FAST.alert_resend_delay or 60)
        procs.append(
            start_prometheus(
                config_file,
                tmp / "prometheus-data",
                prometheus_port,
                f"--rules.alert.resend-delay={resend_delay}",
                generation=LTS,
            )
        )
        wait_http(f"{prometheus_url}/-/ready", proc=procs[-1], deadline=30)
        yield Monitoring(prometheus_url, am_url, reconciler)
    finally:
        if reconciler is not None:
            reconciler.stop()
        for proc in reversed(procs):
            stop(proc)


def ended_after(stack: Monitoring, alertname: str, known: set[int]) -> list[dict[str, Any]]:
    """The episodes of `alertname` not in `known`, once there is one and every one of them has ended."""
    new = [e for e in stack.episodes(alertname) if e["id"] not in known]
    return new if new and all(e["state"] in ENDED for e in new) else []


def recovered(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The episode of `episodes` that recovered (its last attempt a success). One alert may fire per channel: one
    episode's action heals them all, the others end resolved, or recovered without an attempt (healed by that action
    before they acted). None escalates or fails."""
    healed = [e for e in episodes if e["state"] == "recovered" and e["attempts"]]
    assert healed and not [e for e in episodes if e["state"] in ("escalated", "failed")], json.dumps(episodes)
    assert healed[0]["attempts"][-1]["outcome"] == "success", healed
    return healed[0]
