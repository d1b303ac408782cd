"""End to end for a freqtrade bot: a real freqtrade trading live on the paper gateway, the `trading-ops freqtrade`
sidecar process, real Prometheus (the repository's freqtrade alert, `for:` shortened as the fast profile does) and
Alertmanager, and the reconciler running a playbook whose exec step restarts the test's freqtrade with a fixed argv.

Faults: freqtrade hung (SIGSTOP) and freqtrade killed; each must end in an episode `recovered` (verified in
Prometheus), a freqtrade that answers again, and, after the kill, a reconciliation that finds what the gateway holds.

Needs prometheus and prometheus-alertmanager (Debian packages) and the `freqtrade` extra.
"""

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port
from freqtrade_helpers import PASSWORD, USERNAME, Freqtrade, make_freqtrade, until
from gateway_helpers import Gateway, start_gateway
from reconciler.conftest import READ_AUTH, ThreadedServer, make_config, start_alertmanager, stop, wait_http
from system_binaries import REPO_ROOT, require_binary

from trading_ops.db import migrate

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

TOKEN = "e2e-control-token"
RESTART_SCRIPT = REPO_ROOT / "tests" / "freqtrade" / "restart_freqtrade.py"
# As `trading-ops up --profile fast`: scrape and evaluate every second, the alert's `for:` a few seconds.
SCRAPE_SECONDS = 1
ALERT_FOR = "2s"
DEADLINE_SECONDS = 120.0


@dataclass
class Stack:
    gateway: Gateway
    freqtrade: Freqtrade
    pidfile: Path
    sidecar_port: int
    prometheus: str
    reconciler: ThreadedServer

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

    def episodes(self, alertname: str) -> list[dict[str, Any]]:
        req = urllib.request.Request(f"{self.reconciler.url}/api/v1/episodes?limit=100", headers=READ_AUTH)
        with urllib.request.urlopen(req, timeout=5) as resp:
            episodes = json.loads(resp.read())["episodes"]
        return [e for e in episodes if e["alertname"] == alertname]

    def sidecar_value(self, name: str, **labels: str) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://{self.instance}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None


def start_detached(ft: Freqtrade, pidfile: Path) -> None:
    """freqtrade started the way the playbook restarts it (its own session, not a child of the test)."""
    subprocess.run(
        [sys.executable, str(RESTART_SCRIPT), str(pidfile), str(ft.workdir / "freqtrade.stderr"), *ft.argv()],
        check=True,
        capture_output=True,
        timeout=30,
    )
    ft.wait_running()


def kill_detached(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def prometheus_config(tmp: Path, sidecar_port: int, alertmanager_url: str) -> Path:
    rules = yaml.safe_load((REPO_ROOT / "prometheus" / "rules" / "freqtrade.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = ALERT_FOR
    (tmp / "freqtrade.yml").write_text(yaml.safe_dump(rules))
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(tmp / "freqtrade.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}]},
        "scrape_configs": [{"job_name": "freqtrade", "static_configs": [{"targets": [f"127.0.0.1:{sidecar_port}"]}]}],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def freqtrade_stack(tmp: Path) -> Iterator[Stack]:
    """The whole stack in `tmp`, stopped on exit (also used by benchmarks/bench_freqtrade.py)."""
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
        (tmp / "gw-key").write_text(gateway.api_key)
        (tmp / "gw-secret").write_text(gateway.api_secret)
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
                        },
                    }
                },
            }
        }
        (tmp / "sidecar.yaml").write_text(json.dumps(sidecar_config))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "trading_ops", "--config", str(tmp / "sidecar.yaml"), "freqtrade"],
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / "sidecar.log", "wb"),  # noqa: SIM115
            )
        )
        wait_http(f"http://127.0.0.1:{sidecar_port}/metrics", proc=procs[-1])

        # The reconciler (in-process thread), its playbook restarting freqtrade through exec with a fixed argv.
        db = f"sqlite:///{tmp / 'reconciler.db'}"
        migrate.upgrade(db)
        playbook = {
            "version": 1,
            "defaults": {"timeout": "60s", "max_attempts": 2, "cooldown": "0s", "verify": {"deadline": "60s"}},
            "rules": [
                {
                    "name": "freqtrade-restart",
                    "match": ['alertname="TradingBotFreqtradeDown"'],
                    "steps": [
                        {
                            "action": "exec",
                            "argv": [
                                sys.executable,
                                str(RESTART_SCRIPT),
                                str(pidfile),
                                str(ft.workdir / "freqtrade.stderr"),
                                *ft.argv(),
                            ],
                        }
                    ],
                    "verify": {"deadline": "90s", "interval": "1s"},
                }
            ],
        }
        (tmp / "playbook.yml").write_text(yaml.safe_dump(playbook))
        prometheus_port = free_port()
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        # The reconciler first (its webhook URL goes into Alertmanager's config); escalations are not part of this
        # test, so its Alertmanager URL is left at the default of make_config.
        config = make_config(
            tmp,
            db,
            playbook=str(tmp / "playbook.yml"),
            prometheus_url=prometheus_url,
            targets={
                f"127.0.0.1:{sidecar_port}": {
                    "url": f"http://127.0.0.1:{sidecar_port}",
                    "token_file": str(tmp / "token"),
                }
            },
        )
        reconciler = ThreadedServer(config)
        am = start_alertmanager(tmp / "alertmanager", webhook_url=f"{reconciler.url}/api/v1/alertmanager")
        procs.append(am.proc)
        procs.append(
            subprocess.Popen(
                [
                    require_binary("prometheus"),
                    f"--config.file={prometheus_config(tmp, sidecar_port, am.url)}",
                    f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / "prometheus.log", "wb"),  # noqa: SIM115
            )
        )
        wait_http(f"{prometheus_url}/-/ready", proc=procs[-1], deadline=30)
        stack = Stack(gateway, ft, pidfile, sidecar_port, prometheus_url, reconciler)
        until("Prometheus sees freqtrade up", lambda: stack.scalar("tradingbot_freqtrade_up") == 1, DEADLINE_SECONDS)
        yield stack
    finally:
        if reconciler is not None:
            reconciler.stop()
        for proc in reversed(procs):
            stop(proc)
        kill_detached(pidfile)
        gateway.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with freqtrade_stack(tmp_path_factory.mktemp("freqtrade-e2e")) as built:
        yield built


def recovered_after(stack: Stack, alertname: str, known: set[int]) -> dict[str, Any] | None:
    for episode in stack.episodes(alertname):
        if episode["id"] not in known and episode["state"] in ("recovered", "escalated", "failed"):
            return episode
    return None


def heal(stack: Stack, fault: signal.Signals) -> tuple[dict[str, Any], float]:
    """Inject `fault` into freqtrade; wait for the episode to end; return it and the seconds from fault to its end."""
    known = {e["id"] for e in stack.episodes("TradingBotFreqtradeDown")}
    old = stack.pid()
    until("freqtrade holds its trades", lambda: len(stack.freqtrade.open_trades()) == 2, DEADLINE_SECONDS)
    started = time.monotonic()
    os.kill(old, fault)
    episode = until(
        "the freqtrade-restart episode ends",
        lambda: recovered_after(stack, "TradingBotFreqtradeDown", known),
        DEADLINE_SECONDS,
    )
    elapsed = time.monotonic() - started
    assert episode["state"] == "recovered", episode
    assert episode["attempts"] and episode["attempts"][-1]["outcome"] == "success", episode
    assert stack.pid() != old
    return episode, elapsed


def test_a_hung_freqtrade_is_restarted_and_verified(stack: Stack) -> None:
    episode, _ = heal(stack, signal.SIGSTOP)
    # Verified means Prometheus saw it answer again; it trades on with its trades from its database.
    assert stack.scalar(f'tradingbot_freqtrade_up{{instance="{stack.instance}"}}') == 1
    assert len(stack.freqtrade.open_trades()) == 2
    assert episode["labels"]["instance"] == stack.instance


def test_a_killed_freqtrade_is_restarted_and_reconciled_with_the_gateway(stack: Stack) -> None:
    heal(stack, signal.SIGKILL)
    # The sidecar reconciles on its own when freqtrade is back, and finds what the gateway holds.
    until(
        "a clean reconciliation after the restart",
        lambda: (
            (
                stack.sidecar_value(
                    "tradingbot_reconciliation_runs_total", venue="kraken", trigger="reconnect", result="clean"
                )
                or 0
            )
            >= 1
        ),
        DEADLINE_SECONDS,
    )
    held = stack.gateway.call("fetch_balance")["total"]
    trades = {t["pair"]: t["amount"] for t in stack.freqtrade.open_trades()}
    assert float(held["BTC"]) == pytest.approx(trades["BTC/USD"])
    assert float(held["ETH"]) == pytest.approx(trades["ETH/USD"])
    assert stack.sidecar_value("tradingbot_position_mismatch_quantity", venue="kraken", symbol="BTC-USD") == 0
