"""The stack of a freqtrade end to end, in a temporary directory: a real freqtrade trading live on the paper gateway
(started detached, as the playbook's exec step restarts it), the `trading-ops freqtrade` sidecar process, real
Prometheus with the repository's freqtrade and availability rules at the fast profile's `for:`, Alertmanager with the
repository's configuration as the fast profile adapts it, and the reconciler (a thread) running the packaged
playbook's freqtrade rules; and a fault healed on it, timed from the fault to the end of its episodes. Used by
test_freqtrade_e2e and by benchmarks/bench_freqtrade.py and bench_soak.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from alertmanager_server import start_repo_alertmanager
from freqtrade_helpers import PASSWORD, USERNAME, Freqtrade, make_freqtrade, until
from gateway_helpers import Gateway, start_gateway
from ports import free_port
from reconciler_server import READ_AUTH, ThreadedServer, make_config
from server_process import stop, wait_http
from system_binaries import REPO_ROOT, require_binary

from trading_ops.db import migrate
from trading_ops.durations import format_duration
from trading_ops.stack.profiles import FAST
from trading_ops.stack.prometheus_config import adapt_rules
from trading_ops.stack.repo import load_yaml

TOKEN = "e2e-control-token"
RESTART_SCRIPT = REPO_ROOT / "tests" / "freqtrade" / "restart_freqtrade.py"
RULE_FILES = ("freqtrade.yml", "tradingbot-availability.yml")
PLAYBOOK = REPO_ROOT / "trading_ops" / "reconciler" / "playbooks" / "default.yml"
# The packaged rules a freqtrade's faults go to, and the unit their systemd steps restart.
FREQTRADE_RULES = ("broker-reconnect", "freqtrade-restart", "freqtrade-loop-restart")
FREQTRADE_UNIT = "freqtrade.service"
DEADLINE_SECONDS = 120.0
ENDED = ("recovered", "escalated", "failed", "resolved", "skipped")
CLOSED = (*ENDED, "dry_run")


@dataclass
class Stack:
    gateway: Gateway
    freqtrade: Freqtrade
    pidfile: Path
    sidecar_port: int
    prometheus: str
    reconciler: ThreadedServer
    sidecar_pid: int

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.sidecar_port}"

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

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

    def sidecar_value(self, name: str, **labels: str) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://{self.instance}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None


def restart_argv(ft: Freqtrade, pidfile: Path) -> list[str]:
    """What restarts the test's freqtrade as a service manager would (kill what runs, start it in its own session)."""
    return [sys.executable, str(RESTART_SCRIPT), str(pidfile), str(ft.workdir / "freqtrade.stderr"), *ft.argv()]


def start_detached(ft: Freqtrade, pidfile: Path) -> None:
    """freqtrade started the way the playbook restarts it (its own session, not a child of the test)."""
    subprocess.run(restart_argv(ft, pidfile), check=True, capture_output=True, timeout=30)
    ft.wait_running()


def kill_detached(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def playbook(argv: list[str]) -> dict[str, Any]:
    """The packaged default playbook's freqtrade rules, timed for a test (see test_freqtrade_e2e's docstring)."""
    packaged = yaml.safe_load(PLAYBOOK.read_text())
    rules = []
    for rule in packaged["rules"]:
        if rule["name"] not in FREQTRADE_RULES:
            continue
        steps = [
            {"action": "exec", "argv": argv} if step.get("unit") == FREQTRADE_UNIT else step for step in rule["steps"]
        ]
        rules.append({**rule, "steps": steps, "cooldown": "0s", "verify": {**rule.get("verify", {})}})
        rules[-1]["verify"]["interval"] = "1s"
    assert [r["name"] for r in rules] == list(FREQTRADE_RULES), "the packaged playbook's freqtrade rules changed"
    defaults = {**packaged["defaults"], "backoff": {"initial": "1s", "max": "5s", "multiplier": 2, "jitter": 0.2}}
    return {"version": 1, "defaults": defaults, "rules": rules}


def prometheus_config(tmp: Path, sidecar_port: int, alertmanager_url: str) -> Path:
    """The repository's freqtrade and availability rules as the fast profile adapts them, one scrape job."""
    rule_paths = []
    for name in RULE_FILES:
        source = REPO_ROOT / "prometheus" / "rules" / name
        (tmp / name).write_text(yaml.safe_dump(adapt_rules(load_yaml(source), FAST, str(source))))
        rule_paths.append(str(tmp / name))
    interval = format_duration(FAST.scrape_interval or 1)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rule_paths,
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}]},
        "scrape_configs": [{"job_name": "freqtrade", "static_configs": [{"targets": [f"127.0.0.1:{sidecar_port}"]}]}],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def freqtrade_stack(tmp: Path) -> Iterator[Stack]:
    """The whole stack in `tmp`, stopped on exit."""
    gateway = start_gateway(tmp / "gateway")
    ft = make_freqtrade(tmp / "freqtrade", gateway.url, gateway.api_key, gateway.api_secret, hold_seconds=3600)
    pidfile = tmp / "freqtrade.pid"
    procs: list[subprocess.Popen[bytes]] = []
    reconciler: ThreadedServer | None = None
    try:
        start_detached(ft, pidfile)
        # The sidecar, a real `trading-ops freqtrade` process, reconciling through the gateway.
        sidecar_port = free_port()
        (tmp / "token").write_text(TOKEN)
        (tmp / "ft-password").write_text(PASSWORD)
        (tmp / "gw-key").write_text(gateway.sidecar_key)
        (tmp / "gw-secret").write_text(gateway.sidecar_secret)
        sidecar_config = {
            "freqtrade": {
                "control_token_file": str(tmp / "token"),
                "poll_interval_seconds": 0.5,
                "request_timeout_seconds": 2,
                "reconcile_interval_seconds": 0,
                "targets": {
                    "ft-e2e": {
                        "url": ft.url,
                        "username": USERNAME,
                        "password_file": str(tmp / "ft-password"),
                        "listen": {"host": "127.0.0.1", "port": sidecar_port},
                        "ccxt": {
                            "exchange": "kraken",
                            "api_key_file": str(tmp / "gw-key"),
                            "api_secret_file": str(tmp / "gw-secret"),
                            "urls": {"public": gateway.url, "private": gateway.url},
                            "symbols": ["BTC-USD", "ETH-USD"],
                            "enable_rate_limit": False,
                            "timeout_seconds": 2,
                        },
                    }
                },
            }
        }
        (tmp / "sidecar.yaml").write_text(json.dumps(sidecar_config))
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "trading_ops", "--config", str(tmp / "sidecar.yaml"), "freqtrade"],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "sidecar.log", "wb"),  # noqa: SIM115
        )
        procs.append(sidecar)
        wait_http(f"http://127.0.0.1:{sidecar_port}/metrics", proc=sidecar)

        # The reconciler (in-process thread) first: Alertmanager's webhook points at it.
        db = f"sqlite:///{tmp / 'reconciler.db'}"
        migrate.upgrade(db)
        (tmp / "playbook.yml").write_text(yaml.safe_dump(playbook(restart_argv(ft, pidfile))))
        prometheus_port = free_port()
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        # The reconciler asks Alertmanager whether an alert still fires after a rule's wait_for (and escalates there).
        alertmanager_port = free_port()
        config = make_config(
            tmp,
            db,
            playbook=str(tmp / "playbook.yml"),
            prometheus_url=prometheus_url,
            alertmanager_url=f"http://127.0.0.1:{alertmanager_port}",
            # Every fault of the module (and every run of the benchmark) heals the one freqtrade: the per-target
            # budget (6 actions an hour) is not what this tests.
            budgets={"max_actions_per_target_per_hour": 1000},
            targets={
                f"127.0.0.1:{sidecar_port}": {
                    "url": f"http://127.0.0.1:{sidecar_port}",
                    "token_file": str(tmp / "token"),
                }
            },
        )
        reconciler = ThreadedServer(config)
        am_url, am_proc = start_repo_alertmanager(
            tmp / "alertmanager", alertmanager_port, reconciler, tmp / "webhook-token"
        )
        procs.append(am_proc)
        procs.append(
            subprocess.Popen(
                [
                    require_binary("prometheus"),
                    f"--config.file={prometheus_config(tmp, sidecar_port, am_url)}",
                    f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    f"--rules.alert.resend-delay={format_duration(FAST.alert_resend_delay or 60)}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / "prometheus.log", "wb"),  # noqa: SIM115
            )
        )
        wait_http(f"{prometheus_url}/-/ready", proc=procs[-1], deadline=30)
        stack = Stack(gateway, ft, pidfile, sidecar_port, prometheus_url, reconciler, sidecar.pid)
        until("Prometheus sees freqtrade up", lambda: stack.scalar("tradingbot_freqtrade_up") == 1, DEADLINE_SECONDS)
        yield stack
    finally:
        if reconciler is not None:
            reconciler.stop()
        for proc in reversed(procs):
            stop(proc)
        kill_detached(pidfile)
        gateway.stop()


def ended_after(stack: Stack, alertname: str, known: set[int]) -> list[dict[str, Any]]:
    """The episodes of `alertname` not in `known`, once there is one and every one of them has ended."""
    new = [e for e in stack.episodes(alertname) if e["id"] not in known]
    return new if new and all(e["state"] in ENDED for e in new) else []


def two_filled_trades(stack: Stack) -> bool:
    trades = stack.freqtrade.open_trades()
    return len([t for t in trades if t["amount"] > 0 and not t["has_open_orders"]]) == 2


@dataclass
class Healed:
    episode: dict[str, Any]  # the one that recovered
    seconds: float  # from the fault to the end of every episode it caused
    injected_at: float  # Unix time of the fault


def heal(stack: Stack, alertname: str, fault: Callable[[], None]) -> Healed:
    """Inject `fault`; wait until every new episode of `alertname` has ended; return the one that recovered (its last
    attempt a success) and the seconds from the fault to the end."""
    # From a quiet stack: what an earlier fault set going (a restart, its verification) has ended.
    until("no episode is still open", lambda: all(e["state"] in CLOSED for e in stack.all_episodes()), DEADLINE_SECONDS)
    until("freqtrade holds its trades", lambda: two_filled_trades(stack), DEADLINE_SECONDS)
    known = {e["id"] for e in stack.episodes(alertname)}
    injected_at, started = time.time(), time.monotonic()
    fault()
    episodes = until(f"the {alertname} episodes end", lambda: ended_after(stack, alertname, known), DEADLINE_SECONDS)
    elapsed = time.monotonic() - started
    # One alert may fire per channel: one episode's action heals them all, the others end resolved. None escalates.
    recovered = [e for e in episodes if e["state"] == "recovered"]
    assert recovered and not [e for e in episodes if e["state"] in ("escalated", "failed")], json.dumps(episodes)
    assert recovered[0]["attempts"][-1]["outcome"] == "success", recovered
    return Healed(recovered[0], elapsed, injected_at)


def drop_connection(stack: Stack) -> Callable[[], None]:
    """The gateway drops every connection until a client starts a new session (its status call), as a venue that
    dropped its clients does. freqtrade never does (its API and loop run on while every exchange call fails); the
    sidecar's `reconnect` does, before it asks freqtrade to reload_config: the reconciler's action is what heals."""
    return lambda: stack.gateway.chaos("drop_connection")
