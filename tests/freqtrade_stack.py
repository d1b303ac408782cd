"""The stack of a freqtrade end to end, in a temporary directory: a real freqtrade trading live on the paper gateway
(started detached, as the playbook's exec step restarts it), the `trading-ops freqtrade` sidecar process, and what
e2e_stack runs to watch and heal it (Prometheus with the repository's freqtrade and availability rules, Alertmanager,
and the reconciler running the packaged playbook's freqtrade rules); and a fault healed on it, timed from the fault to
the end of its episodes. Used by test_freqtrade_e2e and by benchmarks/integrations/bench_freqtrade.py and
benchmarks/stack/bench_soak.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e_stack import DEADLINE_SECONDS, ENDED, Monitoring, ended_after, monitoring, packaged_playbook, recovered
from freqtrade_helpers import PASSWORD, USERNAME, Freqtrade, diagnose, make_freqtrade, until
from gateway_helpers import Gateway, start_gateway
from ports import free_port
from secret_file import write_secret
from server_process import stop, wait_http
from system_binaries import REPO_ROOT

from trading_ops.db import migrate

TOKEN = "e2e-control-token"
RESTART_SCRIPT = REPO_ROOT / "tests" / "freqtrade" / "restart_freqtrade.py"
RULE_FILES = ("freqtrade.yml", "tradingbot-availability.yml", "tradingbot-streams.yml")
# The packaged rules a freqtrade's faults go to, and the unit their systemd steps restart.
FREQTRADE_RULES = ("broker-reconnect", "freqtrade-stream-reconnect", "freqtrade-restart", "freqtrade-loop-restart")
FREQTRADE_UNIT = "freqtrade.service"
# The alerts of the faults heal() injects: each starts a restart or a reconnect of its own.
FAULT_ALERTS = (
    "TradingBotBrokerDisconnected",
    "TradingBotFreqtradeDown",
    "TradingBotHeartbeatStale",
    "TradingBotStreamChannelStale",
)
CLOSED = (*ENDED, "dry_run")


@dataclass
class Stack(Monitoring):
    gateway: Gateway
    freqtrade: Freqtrade
    pidfile: Path
    sidecar_port: int
    sidecar_pid: int

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.sidecar_port}"

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def diagnostics(self) -> str:
        """What a failed test's report shows of the stack (tests/conftest.py), shortest first (a CI report keeps a
        section's first lines): the reconciler's recent episodes (alert, state, each attempt's outcome), then freqtrade
        (`diagnose`: its threads' Python stacks when it still runs, then its log; it is started again afterwards), then
        the sidecar's log's last lines."""
        try:
            episodes = "\n".join(
                f"episode {e['id']} {e['alertname']} ({e['rule']}) {e['state']} since {e['starts_at']}: "
                + "; ".join(f"{a['action']} {a['outcome']} {a['detail'][:100]}" for a in e["attempts"])
                for e in self.all_episodes(20)
            )
        except OSError as exc:
            episodes = f"episodes: unreadable: {exc}"
        try:
            pid = self.pid()
        except (OSError, ValueError):
            freqtrade = "freqtrade: no pid file"
        else:
            freqtrade = diagnose(pid, self.freqtrade.log, self.freqtrade.workdir / "freqtrade.stderr")
            # Started again (not waited for), as the playbook would: the module's next test finds a freqtrade.
            subprocess.run(restart_argv(self.freqtrade, self.pidfile), capture_output=True, timeout=30, check=False)
        sidecar_log = self.pidfile.parent / "sidecar.log"
        sidecar = sidecar_log.read_text(errors="replace").splitlines()[-30:] if sidecar_log.exists() else []
        return "\n".join([episodes, freqtrade, "--- the sidecar's log's last lines ---", *sidecar])

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
    return packaged_playbook(
        FREQTRADE_RULES, lambda step: {"action": "exec", "argv": argv} if step.get("unit") == FREQTRADE_UNIT else step
    )


@contextlib.contextmanager
def freqtrade_stack(tmp: Path, *, stream: bool = False, pager_url: str | None = None) -> Iterator[Stack]:
    """The whole stack in `tmp`, stopped on exit; `stream`: freqtrade streams its candles from the gateway's
    WebSocket (and the sidecar exports its stream state); `pager_url`: where Alertmanager's pager receiver posts."""
    gateway = start_gateway(tmp / "gateway")
    ft = make_freqtrade(
        tmp / "freqtrade", gateway.url, gateway.api_key, gateway.api_secret, hold_seconds=3600, stream=stream
    )
    pidfile = tmp / "freqtrade.pid"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        start_detached(ft, pidfile)
        # The sidecar, a real `trading-ops freqtrade` process, reconciling through the gateway.
        sidecar_port = free_port()
        write_secret(tmp / "token", TOKEN)
        write_secret(tmp / "ft-password", PASSWORD)
        write_secret(tmp / "gw-key", gateway.sidecar_key)
        write_secret(tmp / "gw-secret", gateway.sidecar_secret)
        # The sidecar journals its control commands in the trading-ops database, as a bot does: migrated first.
        sidecar_db = f"sqlite:///{tmp / 'sidecar.db'}"
        migrate.upgrade(sidecar_db)
        sidecar_config = {
            "database": {"url": sidecar_db},
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
                        "stream": stream,
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
            },
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

        with monitoring(
            tmp,
            playbook(restart_argv(ft, pidfile)),
            RULE_FILES,
            "freqtrade",
            f"127.0.0.1:{sidecar_port}",
            f"http://127.0.0.1:{sidecar_port}",
            tmp / "token",
            pager_url=pager_url,
        ) as watching:
            stack = Stack(
                **vars(watching),
                gateway=gateway,
                freqtrade=ft,
                pidfile=pidfile,
                sidecar_port=sidecar_port,
                sidecar_pid=sidecar.pid,
            )
            until(
                "Prometheus sees freqtrade up", lambda: stack.scalar("tradingbot_freqtrade_up") == 1, DEADLINE_SECONDS
            )
            yield stack
    finally:
        for proc in reversed(procs):
            stop(proc)
        kill_detached(pidfile)
        gateway.stop()


def two_filled_trades(stack: Stack) -> bool:
    trades = stack.freqtrade.open_trades()
    return len([t for t in trades if t["amount"] > 0 and not t["has_open_orders"]]) == 2


@dataclass
class Healed:
    episode: dict[str, Any]  # the one that recovered
    seconds: float  # from the fault to the end of every episode it caused
    injected_at: float  # Unix time of the fault
    pid: int  # freqtrade's when the fault was injected


def settle(stack: Stack) -> None:
    """Wait for a quiet stack: what an earlier fault set going (a restart, its verification) has ended, no alert of a
    freqtrade fault is pending or firing (one would start a restart of its own), freqtrade holds its trades. What a test
    reads of the freqtrade it faults (its pid, its start) is read after this, not before: a restart still running
    would replace that process."""
    until("no episode is still open", lambda: all(e["state"] in CLOSED for e in stack.all_episodes()), DEADLINE_SECONDS)
    faults = "|".join(FAULT_ALERTS)
    until(
        f"no {faults} alert pending or firing",
        lambda: not stack.query(f'ALERTS{{instance="{stack.instance}", alertname=~"{faults}"}}'),
        DEADLINE_SECONDS,
    )
    until("freqtrade holds its trades", lambda: two_filled_trades(stack), DEADLINE_SECONDS)


def heal(stack: Stack, alertname: str, fault: Callable[[], None], deadline: float = DEADLINE_SECONDS) -> Healed:
    """From a quiet stack (`settle`), inject `fault`; wait (`deadline` seconds at most) until every new episode of
    `alertname` has ended; return the one that recovered (its last attempt a success), the seconds from the fault to
    the end, and the pid freqtrade had when the fault was injected (a fault that needs it reads `stack.pid()` itself,
    as late)."""
    settle(stack)
    known = {e["id"] for e in stack.episodes(alertname)}
    pid = stack.pid()
    injected_at, started = time.time(), time.monotonic()
    fault()
    episodes = until(f"the {alertname} episodes end", lambda: ended_after(stack, alertname, known), deadline)
    elapsed = time.monotonic() - started
    return Healed(recovered(episodes), elapsed, injected_at, pid)


def drop_connection(stack: Stack) -> Callable[[], None]:
    """The gateway drops every connection until a client starts a new session (its status call), as a venue that
    dropped its clients does. freqtrade never does (its API and loop run on while every exchange call fails); the
    sidecar's `reconnect` does, before it asks freqtrade to reload_config: the reconciler's action is what heals."""
    return lambda: stack.gateway.chaos("drop_connection")
