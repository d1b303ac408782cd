"""A real freqtrade (from PyPI, the `freqtrade` extra) trading live on the Kraken-compatible paper gateway, for tests.

freqtrade runs as its own process (`freqtrade trade`), with the committed strategy tests/freqtrade/strategies/
trading_ops_quick.py, ccxt's kraken client pointed at the gateway through `exchange.ccxt_config` /
`ccxt_async_config` `urls`, its API server on a free 127.0.0.1 port. It starts in a few seconds; tests start it once
per module (or session) and restart it only where the test is about a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt_async
import polling
import pytest
from ports import free_port
from system_binaries import REPO_ROOT

from trading_ops.stack.freqtrade_bot import FreqtradeMissing, trading_settings
from trading_ops.stack.freqtrade_bot import freqtrade_binary as stack_freqtrade_binary
from trading_ops.venues.ccxt.rest import CcxtBroker

STRATEGY_DIR = REPO_ROOT / "tests" / "freqtrade" / "strategies"
STRATEGY = "TradingOpsQuick"
USERNAME = "freqtrader"
PASSWORD = "ft-test-password-0123456789abcdef"
# freqtrade wants these at least 32 characters long.
JWT_SECRET = "jwt-secret-for-the-trading-ops-tests-0123"
WS_TOKEN = "ws-token-for-the-trading-ops-tests-0123456"
START_DEADLINE_SECONDS = 60.0
PAIRS = ("BTC/USD", "ETH/USD")
# freqtrade's default logging (its FT_LOGGING_CONFIG) with its WebSocket logger at DEBUG: its `watch done PAIR, TF`
# record per candle message is what the sidecar reads each pair's stream age from (docs/freqtrade.md).
STREAM_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "basic": {"format": "%(message)s"},
        "standard": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(message)s"},
    },
    "handlers": {"console": {"class": "freqtrade.loggers.ft_rich_handler.FtRichHandler", "formatter": "basic"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"freqtrade.exchange.exchange_ws": {"level": "DEBUG", "propagate": True}},
}


def freqtrade_binary() -> str:
    """The freqtrade console script of this interpreter's environment; fails (never skips) when it is missing."""
    try:
        return stack_freqtrade_binary()
    except FreqtradeMissing:
        pytest.fail("freqtrade is not installed: pip install -e '.[freqtrade]' (`make test` does it)", pytrace=False)


def gateway_exchange(gateway_url: str, api_key: str, api_secret: str, urls: dict[str, Any]) -> dict[str, Any]:
    """freqtrade's `exchange` section for Kraken on the gateway: its key, the gateway's URLs for ccxt (`urls`), the
    test pairs."""
    return {
        "name": "kraken",
        "key": api_key,
        "secret": api_secret,
        "ccxt_config": urls,
        "ccxt_async_config": urls,
        "pair_whitelist": list(PAIRS),
        "pair_blacklist": [],
    }


def freqtrade_config(
    path: Path,
    *,
    gateway_url: str,
    api_key: str,
    api_secret: str,
    api_port: int,
    hold_seconds: float,
    max_open_trades: int = 2,
    stream: bool = False,
) -> Path:
    """freqtrade's config.json for a live (dry_run false) bot on the gateway, its API server on 127.0.0.1. `stream`:
    its candles streamed from the gateway's WebSocket v2 (ccxt.pro's watch_ohlcv), as `exchange.enable_ws` does on
    the venues freqtrade marks WebSocket-ready; Kraken is not among them, so `_ft_has_params` says it is."""
    # ccxt throttles kraken to one request per 3 s (Kraken's public limit); the gateway on loopback has no such limit,
    # and at 3 s a call freqtrade's every balance sync (two calls) would take 6 s.
    urls: dict[str, Any] = {"urls": {"api": {"public": gateway_url, "private": gateway_url}}, "rateLimit": 20}
    streaming: dict[str, Any] = {}
    if stream:
        ws = gateway_url.replace("http", "ws", 1)
        public, private = f"{ws}/ws/v2", f"{ws}/ws-auth/v2"
        urls["urls"]["api"]["ws"] = {"publicV2": public, "privateV2": private, "public": public, "private": private}
        streaming = {"enable_ws": True, "_ft_has_params": {"ws_enabled": True}}
    config: dict[str, Any] = {
        "bot_name": "trading-ops-test",
        "max_open_trades": max_open_trades,
        "stake_currency": "USD",
        "stake_amount": 100,
        # The stack's: tests rely on its forced entries (POST /forceenter places a limit entry that rests on the
        # gateway) and its unfilledtimeout (a minute to act on a resting order before freqtrade cancels it itself).
        **trading_settings(),
        "exchange": {**gateway_exchange(gateway_url, api_key, api_secret, urls), **streaming},
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
    if stream:
        # Its logging set up as outside tests (freqtrade skips it when it finds PYTEST_VERSION in its environment).
        config |= {"log_config": STREAM_LOG_CONFIG, "ft_tests_force_logging": True}
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
        try:
            self.wait_running()
        except BaseException:
            self.stop()  # one that did not come up is stopped here: its caller's teardown never ran for it
            raise

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
        """What a failed test's report shows of this freqtrade (tests/conftest.py), most telling first (a CI report
        keeps only a section's first lines): whether its process still runs (and what each of its threads waits on) or
        how it exited; a freqtrade still running is aborted (SIGABRT) so that faulthandler prints every thread's Python
        stack, shown next, shortened (`python_stacks`): where a hung freqtrade hangs; then its log's last lines. The
        module's next test starts it again (`start_again_if_gone`)."""
        if self.proc is None:
            return "freqtrade: never started"
        return diagnose(self.proc.pid, self.log, self.workdir / "freqtrade.stderr", self.proc)

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


def process_state(pid: int, proc: subprocess.Popen[bytes] | None = None) -> str:
    """`exited with N` (or `not running` for a process not ours), or `pid P running` with each thread's name, state and
    kernel wait channel (a thread blocked in a lock shows futex_wait_queue; one waiting on a socket, a poll or read)."""
    if proc is not None and proc.poll() is not None:
        return f"freqtrade: pid {pid} exited with {proc.returncode}"
    threads = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda task: int(task.name)):
        try:
            name = (task / "comm").read_text().strip()
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            wchan = (task / "wchan").read_text().strip() or "-"
        except OSError:
            continue
        threads.append(f"{task.name} {name} {state} {wchan}")
    if not threads:
        return f"freqtrade: pid {pid} not running"
    return f"freqtrade: pid {pid} running; threads (tid name state wchan): " + "; ".join(threads)


def diagnose(pid: int, log: Path, stderr: Path, proc: subprocess.Popen[bytes] | None = None) -> str:
    """A freqtrade's state, its threads' Python stacks if it still ran (it is aborted: SIGABRT, after SIGCONT since a
    frozen process cannot handle it; faulthandler, PYTHONFAULTHANDLER, writes them to `stderr`) and its log's last
    lines (or its stderr's, before the stacks: its log under pytest); `proc` when it is this process's child, else
    `pid` is watched until it is gone."""
    state = process_state(pid, proc)
    written = stderr.stat().st_size if stderr.exists() else 0  # what it wrote before the abort (an earlier one's too)
    if " running;" in state:
        for sig in (signal.SIGCONT, signal.SIGABRT):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        if not _gone(pid, proc, 10.0):
            state += " (did not end on SIGABRT within 10 s)"
    data = stderr.read_bytes() if stderr.exists() else b""
    dump = data.find(FAULTHANDLER_DUMP.encode(), written)
    stacks = ""
    if " running;" in state:
        found = dump >= 0
        stacks = python_stacks(data[dump:].decode(errors="replace")) if found else "(no Python stacks in its stderr)"
    # Under pytest freqtrade logs to its stderr only (it skips its log file when it finds PYTEST_VERSION).
    before = (data[:dump] if dump >= 0 else data).decode(errors="replace")
    logged = _squeezed(_tail(log, 200) if log.exists() else "\n".join(before.splitlines()[-200:]), 60)
    return "\n".join(part for part in (state, stacks, "--- its log's last lines ---", logged) if part)


def _gone(pid: int, proc: subprocess.Popen[bytes] | None, deadline: float) -> bool:
    if proc is not None:
        try:
            proc.wait(deadline)
            return True
        except subprocess.TimeoutExpired:
            return False
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # ended, not yet reaped by whoever its parent is
        except OSError:
            return True
        time.sleep(0.05)
    return False


def _squeezed(text: str, lines: int) -> str:
    """The last `lines` of `text`, a line that repeats one of the few before it (timestamps aside: the same API error
    every poll) counted instead of shown, so that what led up to a hang is not pushed out by its repetitions."""
    kept: list[str] = []
    recent: list[str] = []
    repeated = 0
    for line in text.splitlines():
        key = _TIMESTAMP.sub("", line)
        if key in recent:
            repeated += 1
            continue
        if repeated:
            kept.append(f"[... {repeated} lines repeating those above ...]")
            repeated = 0
        kept.append(line)
        recent = [*recent[-3:], key]
    if repeated:
        kept.append(f"[... {repeated} lines repeating those above ...]")
    return "\n".join(kept[-lines:])


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


def _tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


# faulthandler's first line when SIGABRT aborts a process, and the frame lines of each thread after it.
FAULTHANDLER_DUMP = "Fatal Python error: Aborted"
_FRAME = re.compile(r'^\s+File "(?P<path>[^"]*)", line (?P<line>\d+) in (?P<func>.*)$')
# A thread whose innermost frames are these waits for work that never came (an idle worker of a pool): not where a
# process hangs. The main thread, an event loop's thread and every other wait are kept.
_IDLE_WORKER = (("threading.py", "wait"), ("queue.py", "get"))


def python_stacks(dump: str, frames: int = 8) -> str:
    """The threads of a faulthandler dump, each as its `frames` innermost frames (file:line function, the path cut to
    what follows site-packages or the standard library's directory), idle pool workers counted, not shown: where a
    process hangs, in a few dozen lines."""
    threads: list[tuple[str, list[tuple[str, str, str]]]] = []
    for line in dump.splitlines():
        if line.startswith(("Thread 0x", "Current thread 0x")):
            threads.append((line.split(" (", 1)[0], []))
        elif threads and (match := _FRAME.match(line)):
            threads[-1][1].append((_short(match["path"]), match["line"], match["func"]))
    shown, idle = [], 0
    for header, stack in threads:
        innermost = tuple((path.rsplit("/", 1)[-1], func) for path, _, func in stack[:2])
        if innermost == _IDLE_WORKER:
            idle += 1
            continue
        rest = f" (+{len(stack) - frames} outer)" if len(stack) > frames else ""
        shown.append(f"{header}{rest}: " + " <- ".join(f"{p}:{n} {f}" for p, n, f in stack[:frames]))
    summary = f"--- Python stacks, innermost first ({len(threads)} threads, {idle} idle pool workers not shown) ---"
    return "\n".join([summary, *shown])


def _short(path: str) -> str:
    """A frame's path from what follows site-packages (a package) or the standard library's directory."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if "/lib/python3." in path:
        return path.split("/lib/python3.", 1)[1].split("/", 1)[-1]
    return path


def until(what: str, probe: Any, deadline: float = 60.0, interval: float = 0.2) -> Any:
    """`polling.until`, also waiting out an answer that is not JSON yet (freqtrade starting its API)."""
    return polling.until(what, probe, deadline, interval, tolerate=(OSError, ValueError))


def make_freqtrade(
    workdir: Path, gateway_url: str, api_key: str, api_secret: str, hold_seconds: float, *, stream: bool = False
) -> Freqtrade:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = freqtrade_config(
        workdir / "config.json",
        gateway_url=gateway_url,
        api_key=api_key,
        api_secret=api_secret,
        api_port=port,
        hold_seconds=hold_seconds,
        stream=stream,
    )
    return Freqtrade(workdir, config, port)


def freqtrade_exchange(gateway_url: str, api_key: str, api_secret: str) -> Any:
    """freqtrade's own exchange (freqtrade.exchange.Kraken, loaded as `freqtrade trade` loads it, markets included) on
    the gateway, live: its `create_order` is the call freqtrade's bot places every order with, the parameters its
    `_get_params` gives (no client order id) included. Close it (`.close()`) after use."""
    from freqtrade.enums import RunMode
    from freqtrade.resolvers import ExchangeResolver

    urls = {"urls": {"api": {"public": gateway_url, "private": gateway_url}}, "rateLimit": 20}
    config = {
        "dry_run": False,
        "runmode": RunMode.LIVE,
        "stake_currency": "USD",
        "timeframe": "1m",
        "trading_mode": "spot",
        "margin_mode": "",
        "exchange": gateway_exchange(gateway_url, api_key, api_secret, urls),
    }
    return ExchangeResolver.load_exchange(config, validate=False, load_leverage_tiers=False)


def broker_of(gateway: Any) -> CcxtBroker:
    """The ccxt broker the sidecar reconciles through and checks the venue with before a reconnect: ccxt's real async
    kraken client on the gateway (a gateway_helpers.Gateway)."""
    exchange = ccxt_async.kraken(
        {
            "apiKey": gateway.sidecar_key,
            "secret": gateway.sidecar_secret,
            "enableRateLimit": False,
            "timeout": 5000,
            "urls": {"api": {"public": gateway.url, "private": gateway.url}},
        }
    )
    return CcxtBroker(exchange, ["BTC-USD", "ETH-USD"])
