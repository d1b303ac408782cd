"""A real freqtrade (from PyPI, the `freqtrade` extra) trading live on the Kraken-compatible paper gateway, for tests.

freqtrade runs as its own process (`freqtrade trade`), with the committed strategy tests/freqtrade/strategies/
trading_ops_quick.py, ccxt's kraken client pointed at the gateway through `exchange.ccxt_config` /
`ccxt_async_config` `urls`, its API server on a free 127.0.0.1 port. It starts in a few seconds; tests start it once
per module (or session) and restart it only where the test is about a restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import polling
import pytest
from ports import free_port
from system_binaries import REPO_ROOT

from trading_ops.stack.freqtrade_bot import FreqtradeMissing, trading_settings
from trading_ops.stack.freqtrade_bot import freqtrade_binary as stack_freqtrade_binary

STRATEGY_DIR = REPO_ROOT / "tests" / "freqtrade" / "strategies"
STRATEGY = "TradingOpsQuick"
USERNAME = "freqtrader"
PASSWORD = "ft-test-password-0123456789abcdef"
# freqtrade wants these at least 32 characters long.
JWT_SECRET = "jwt-secret-for-the-trading-ops-tests-0123"
WS_TOKEN = "ws-token-for-the-trading-ops-tests-0123456"
START_DEADLINE_SECONDS = 60.0
PAIRS = ("BTC/USD", "ETH/USD")


def freqtrade_binary() -> str:
    """The freqtrade console script of this interpreter's environment; fails (never skips) when it is missing."""
    try:
        return stack_freqtrade_binary()
    except FreqtradeMissing:
        pytest.fail("freqtrade is not installed: pip install -e '.[freqtrade]' (`make test` does it)", pytrace=False)


def freqtrade_config(
    path: Path,
    *,
    gateway_url: str,
    api_key: str,
    api_secret: str,
    api_port: int,
    hold_seconds: float,
    max_open_trades: int = 2,
) -> Path:
    """freqtrade's config.json for a live (dry_run false) bot on the gateway, its API server on 127.0.0.1."""
    # ccxt throttles kraken to one request per 3 s (Kraken's public limit); the gateway on loopback has no such limit,
    # and at 3 s a call freqtrade's every balance sync (two calls) would take 6 s.
    urls = {"urls": {"api": {"public": gateway_url, "private": gateway_url}}, "rateLimit": 20}
    config: dict[str, Any] = {
        "bot_name": "trading-ops-test",
        "max_open_trades": max_open_trades,
        "stake_currency": "USD",
        "stake_amount": 100,
        # The stack's: tests rely on its forced entries (POST /forceenter places a limit entry that rests on the
        # gateway) and its unfilledtimeout (a minute to act on a resting order before freqtrade cancels it itself).
        **trading_settings(),
        "exchange": {
            "name": "kraken",
            "key": api_key,
            "secret": api_secret,
            "ccxt_config": urls,
            "ccxt_async_config": urls,
            "pair_whitelist": list(PAIRS),
            "pair_blacklist": [],
        },
        "pairlists": [{"method": "StaticPairList"}],
        "api_server": {
            "enabled": True,
            "listen_ip_address": "127.0.0.1",
            "listen_port": api_port,
            "verbosity": "error",
            "jwt_secret_key": JWT_SECRET,
            "ws_token": WS_TOKEN,
            "CORS_origins": [],
            "username": USERNAME,
            "password": PASSWORD,
        },
        # One iteration a second: the heartbeat (/health last_process) moves every second.
        "internals": {"process_throttle_secs": 1, "heartbeat_interval": 0},
        "user_data_dir": str(path.parent / "user_data"),
        "trading_ops_hold_seconds": hold_seconds,
        # The committed strategy's stalled loop: it blocks while this file holds freqtrade's pid (Freqtrade.stall).
        "trading_ops_stall_file": str(path.parent / "stall"),
    }
    (path.parent / "user_data").mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


class Freqtrade:
    """One freqtrade process on a fixed config, database and API port: start, stop, kill, freeze (SIGSTOP), thaw."""

    def __init__(self, workdir: Path, config: Path, api_port: int) -> None:
        self.workdir = workdir
        self.config = config
        self.api_port = api_port
        self.url = f"http://127.0.0.1:{api_port}"
        self.db_url = f"sqlite:///{workdir / 'tradesv3.sqlite'}"
        self.log = workdir / "freqtrade.log"
        self.stall_file = config.parent / "stall"
        self.proc: subprocess.Popen[bytes] | None = None

    def stall(self, pid: int) -> None:
        """Block the trading loop of the freqtrade process `pid` (the committed strategy's stall): its API answers on,
        its last completed iteration stops. A freqtrade started afterwards (another pid) is not affected."""
        self.stall_file.write_text(str(pid))

    def argv(self) -> list[str]:
        """The command line that (re)starts this freqtrade: also what a restart action runs."""
        return [
            freqtrade_binary(),
            "trade",
            "--config",
            str(self.config),
            "--strategy",
            STRATEGY,
            "--strategy-path",
            str(STRATEGY_DIR),
            "--db-url",
            self.db_url,
            "--logfile",
            str(self.log),
        ]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "freqtrade.stderr", "ab"),  # noqa: SIM115
            # PYTHONFAULTHANDLER: SIGABRT makes it print every thread's Python stack to its stderr (diagnostics).
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
        )
        self.wait_running()

    def start_again_if_gone(self) -> int | None:
        """Start this freqtrade again when its process has exited (a module's tests share one: a test that lost it,
        as a reload_config that could not load the markets does, does not fail the next ones); its exit code then."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.start()
        return code

    def wait_running(self, deadline: float = START_DEADLINE_SECONDS) -> None:
        """Until the API answers and the loop has completed an iteration (health's last_process is set)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"freqtrade exited with {self.proc.returncode}; its log: {self.tail()}")
            try:
                health = self.api("GET", "/health")
                if health.get("last_process_ts"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"freqtrade did not run within {deadline:g}s; its log: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        stderr = self.workdir / "freqtrade.stderr"
        if stderr.exists():
            text += stderr.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def diagnostics(self) -> str:
        """What a failed test's report shows of this freqtrade (tests/conftest.py): whether its process still runs (and
        what each of its threads waits on) or how it exited, then its log's last lines. A freqtrade still running is
        aborted (SIGABRT) first, so that its stderr ends with every thread's Python stack (faulthandler): where a hung
        freqtrade hangs. The module's next test starts it again (`start_again_if_gone`)."""
        state = self.process_state()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process cannot handle SIGABRT
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                state += " (did not end on SIGABRT within 10 s)"
        return f"{state}\n{self.tail(120)}"

    def process_state(self) -> str:
        """`exited with N`, or `pid P running` with each thread's name, state and kernel wait channel (a thread
        blocked in a lock shows futex_wait_queue; one waiting on a socket, a poll or read)."""
        if self.proc is None:
            return "freqtrade: never started"
        if self.proc.poll() is not None:
            return f"freqtrade: exited with {self.proc.returncode}"
        threads = []
        for task in sorted(Path(f"/proc/{self.proc.pid}/task").glob("*")):
            try:
                name = (task / "comm").read_text().strip()
                state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = (task / "wchan").read_text().strip() or "-"
            except OSError:
                continue
            threads.append(f"{task.name} {name} {state} {wchan}")
        return f"freqtrade: pid {self.proc.pid} running; threads (tid name state wchan): " + "; ".join(threads)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 5) -> Any:
        """freqtrade's REST API with basic auth (as a person with curl would), independent of the sidecar."""
        basic = b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        req = urllib.request.Request(
            f"{self.url}/api/v1{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def open_trades(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/status"))

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a frozen process cannot handle SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def until(what: str, probe: Any, deadline: float = 60.0, interval: float = 0.2) -> Any:
    """`polling.until`, also waiting out an answer that is not JSON yet (freqtrade starting its API)."""
    return polling.until(what, probe, deadline, interval, tolerate=(OSError, ValueError))


def make_freqtrade(workdir: Path, gateway_url: str, api_key: str, api_secret: str, hold_seconds: float) -> Freqtrade:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = freqtrade_config(
        workdir / "config.json",
        gateway_url=gateway_url,
        api_key=api_key,
        api_secret=api_secret,
        api_port=port,
        hold_seconds=hold_seconds,
    )
    return Freqtrade(workdir, config, port)
