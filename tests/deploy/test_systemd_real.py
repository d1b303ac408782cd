"""The shipped systemd units under real systemd: a Debian bookworm root (tests/debian_root.py, cached) booted once
for this module with systemd-nspawn, trading-ops installed in it as a user installs it (a virtualenv in
/opt/trading-ops/.venv, tests/nspawn_machine.py), the units, the polkit rule and one configuration file installed
where their comments say. What is proven: Type=notify readiness, WatchdogSec and Restart=on-failure, the start
limit, MemoryMax, NoNewPrivileges and the rest of the sandbox as the kernel applies it, the polkit rule as polkitd
runs it, and the reconciler's packaged `systemd` steps healing a crashed and a hung bot from real Prometheus alerts
through a real Alertmanager, verified.

Needs root, debootstrap, systemd-nspawn (systemd-container), prometheus and prometheus-alertmanager; the machine
shares the host's network (everything listens on 127.0.0.1, on ports from tests/ports.py). What a test changes for
speed is a drop-in beside the shipped unit (named in each test), never the unit."""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import alertmanager_argv
from nspawn_machine import VENV, Machine, Overlay, build_project_wheel, nspawn_pipe, prepared_root
from polling import until
from ports import free_port
from secret_file import write_secret
from system_binaries import REPO_ROOT, require_binary

from trading_ops.config import parse_config
from trading_ops.db.states import CLOSED_STATES
from trading_ops.reconciler.actions.systemd import VERBS

# The first test also waits for the module's fixture, which on a machine without the cache builds the root with
# debootstrap and the dependencies' virtualenv (minutes): beyond pytest's default 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BOT = "trading-ops-paper-bot.service"
RECONCILER = "trading-ops-reconciler.service"
SIDECAR = "trading-ops-freqtrade.service"
TEMPLATE = "trading-ops-bot@.service"
UNIT_FILES = {
    TEMPLATE: REPO_ROOT / "trading_ops/bot/systemd" / TEMPLATE,
    BOT: REPO_ROOT / "trading_ops/paper/systemd" / BOT,
    RECONCILER: REPO_ROOT / "trading_ops/reconciler/systemd" / RECONCILER,
    SIDECAR: REPO_ROOT / "trading_ops/integrations/freqtrade/systemd" / SIDECAR,
}
POLKIT_RULE = REPO_ROOT / "trading_ops/reconciler/systemd/50-trading-ops-reconciler.rules"
USER = "trading-ops"
CONFIG = "/etc/trading-ops/trading-ops.yaml"
STATE = "/var/lib/trading-ops"
MANAGE_UNITS = "org.freedesktop.systemd1.manage-units"
MIB = 1024 * 1024
# The bot's heartbeat timeout here: its watchdog pings stop this long after its loop hung (the shipped default, 15 s,
# would only make the watchdog tests slower).
HEARTBEAT_TIMEOUT = 2
# A crashed bot's next start waits until its last heartbeat is recovery.crash_timeout_seconds old (10 s by default).
# The crash episode takes it to this: the bot stays down past TradingBotDown's `for: 10s` and the rule's
# `wait_for: 10s`, so the reconciler's step meets a unit that systemd is still starting.
SLOW_CRASH_RECOVERY = 30
CRASH_TIMEOUT = 10  # Deployment.configure's default
DEADLINE = 120.0


def http(
    url: str, body: dict[str, Any] | None = None, token: str | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class Ports:
    bot: int
    reconciler: int
    sidecar: int
    freqtrade: int  # where no freqtrade answers


@dataclass
class Deployment:
    machine: Machine
    root: Path
    ports: Ports
    monitoring: Monitoring
    tokens: dict[str, str]

    @property
    def bot_port(self) -> int:
        return self.ports.bot

    @property
    def control_token(self) -> str:
        return self.tokens["control-token"]

    @property
    def read_token(self) -> str:
        return self.tokens["reconciler-read-token"]

    def configure(self, crash_timeout: float = CRASH_TIMEOUT) -> None:
        """(Re)write /etc/trading-ops/trading-ops.yaml; a unit reads it when it starts."""
        text = configuration(self.ports, self.monitoring.prometheus, self.monitoring.alertmanager, crash_timeout)
        (self.root / CONFIG.lstrip("/")).write_text(text)

    def diagnostics(self) -> str:
        """The units' journal (tests/conftest.py adds it to a failed test's report)."""
        return self.machine.run("journalctl", "--no-pager", "-n", "150", check=False).stdout

    @property
    def bot_url(self) -> str:
        return f"http://127.0.0.1:{self.bot_port}"

    def chaos(self, fault: str, **params: Any) -> Any:
        status, answer = http(f"{self.bot_url}/control/{fault}", params, self.control_token)
        assert status == 200, answer
        return answer

    def drop_in(self, unit: str, name: str, text: str | None) -> None:
        """Write (or with None remove) /etc/systemd/system/UNIT.d/NAME.conf, then daemon-reload."""
        path = self.root / "etc/systemd/system" / f"{unit}.d" / f"{name}.conf"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.machine.systemctl("daemon-reload")

    def main_pid(self, unit: str) -> int:
        return int(self.machine.show(unit, "MainPID")["MainPID"])

    def active_with_new_pid(self, unit: str, old: int) -> int | None:
        shown = self.machine.show(unit, "ActiveState", "MainPID")
        pid = int(shown["MainPID"])
        return pid if shown["ActiveState"] == "active" and pid not in (0, old) else None

    def restarts(self, unit: str) -> int:
        return int(self.machine.show(unit, "NRestarts")["NRestarts"])

    def cursor(self) -> str:
        """The journal's position now: `journal_since` reads what came after it."""
        shown = self.machine.run("journalctl", "-n", "0", "--show-cursor", "--no-pager", check=False).stdout
        return shown.strip().rsplit("cursor: ", 1)[-1]

    def journal_since(self, cursor: str, unit: str) -> str:
        argv = ["journalctl", "--no-pager", "-o", "cat", "-u", unit, f"--after-cursor={cursor}"]
        return self.machine.run(*argv, check=False).stdout

    def fresh_start(self, unit: str = BOT) -> int:
        """The unit reset and (re)started, active; returns its main pid."""
        self.machine.systemctl("reset-failed", unit, check=False)
        self.machine.systemctl("restart", unit)
        return self.main_pid(unit)


def configuration(ports: Ports, prometheus: str, alertmanager: str, crash_timeout: float) -> str:
    data = {
        "database": {"url": f"sqlite:///{STATE}/trading-ops.db"},
        "bot": {
            "name": "paper-1",
            "venue": "paper",
            "strategy": "demo",
            "listen": {"host": "127.0.0.1", "port": ports.bot},
            "control_token_file": "/etc/trading-ops/control-token",
            "data_dir": STATE,
            "heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT,
        },
        "paper": {"seed": 7},
        "recovery": {"crash_timeout_seconds": crash_timeout},
        "bots": [
            {
                "name": "paper-1",
                "kind": "paper",
                "instance": f"127.0.0.1:{ports.bot}",
                "url": f"http://127.0.0.1:{ports.bot}",
                "token_file": "/etc/trading-ops/control-token",
            }
        ],
        "reconciler": {
            "listen": {"host": "127.0.0.1", "port": ports.reconciler},
            "token_file": "/etc/trading-ops/reconciler-token",
            "read_token_file": "/etc/trading-ops/reconciler-read-token",
            "prometheus_url": prometheus,
            "alertmanager_url": alertmanager,
            "spool_dir": f"{STATE}/reconciler-spool",
            "watchdog": {"window_seconds": 0},
        },
        "freqtrade": {
            "control_token_file": "/etc/trading-ops/control-token",
            # No freqtrade runs here: the sidecar reports it down, as it does while freqtrade restarts.
            "targets": {
                "freqtrade-1": {
                    "url": f"http://127.0.0.1:{ports.freqtrade}",
                    "password_file": "/etc/trading-ops/freqtrade-password",
                    "listen": {"host": "127.0.0.1", "port": ports.sidecar},
                }
            },
        },
        "backup": {"directory": f"{STATE}/backups"},
    }
    return yaml.safe_dump(data, sort_keys=False)


# ---- real Prometheus and Alertmanager on the host (the machine shares its network) -------------------------------


@dataclass
class Monitoring:
    prometheus: str
    alertmanager: str
    procs: list[subprocess.Popen[bytes]]

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, answer = http(url)
        assert status == 200, answer
        return list(answer["data"]["result"])

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        status, alerts = http(f"{self.alertmanager}/api/v2/alerts?active=true&silenced=false&inhibited=false")
        assert status == 200
        return [a for a in alerts if a["labels"].get("alertname") == alertname]

    def held(self, alertname: str) -> list[dict[str, Any]]:
        """Alertmanager's alerts of that name that have not ended, silenced ones too."""
        status, alerts = http(f"{self.alertmanager}/api/v2/alerts")
        assert status == 200
        return [a for a in alerts if a["labels"].get("alertname") == alertname]

    def notifications_sent(self) -> float:
        """Alertmanager's webhook notifications so far, successful or not."""
        with urllib.request.urlopen(f"{self.alertmanager}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("alertmanager_notifications_total{") and 'integration="webhook"' in line
        )


def start_server(argv: list[str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    end = time.monotonic() + 60
    while not answers(ready):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            pytest.fail(f"{Path(argv[0]).name} did not start: see {log}", pytrace=False)
        time.sleep(0.1)
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_monitoring(tmp: Path, bot_port: int, reconciler_port: int, webhook_token: Path) -> Monitoring:
    """Prometheus with the shipped rules scraping the bot every second, and an Alertmanager that sends everything to
    the reconciler's webhook at once (the shipped routing waits longer; nothing here tests it)."""
    prometheus_port, alertmanager_port = free_port(), free_port()
    rules = tmp / "rules"
    shutil.copytree(REPO_ROOT / "prometheus" / "rules", rules)
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "800ms"},
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
                "rule_files": [str(rules / "*.yml")],
                "scrape_configs": [
                    {"job_name": "tradingbot", "static_configs": [{"targets": [f"127.0.0.1:{bot_port}"]}]},
                ],
            }
        )
    )
    webhook = f"http://127.0.0.1:{reconciler_port}/api/v1/alertmanager"
    (tmp / "alertmanager.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "reconciler",
                    "group_by": ["alertname", "instance"],
                    "group_wait": "0s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "reconciler",
                        "webhook_configs": [
                            {
                                "url": webhook,
                                "send_resolved": True,
                                "http_config": {"authorization": {"credentials_file": str(webhook_token)}},
                            }
                        ],
                    }
                ],
            }
        )
    )
    am = start_server(
        alertmanager_argv(tmp / "alertmanager.yml", tmp / "am-data", alertmanager_port),
        tmp / "alertmanager.log",
        f"http://127.0.0.1:{alertmanager_port}/-/ready",
    )
    try:
        prom = start_server(
            [
                require_binary("prometheus"),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            tmp / "prometheus.log",
            f"http://127.0.0.1:{prometheus_port}/-/ready",
        )
    except BaseException:
        stop_server(am)
        raise
    return Monitoring(f"http://127.0.0.1:{prometheus_port}", f"http://127.0.0.1:{alertmanager_port}", [am, prom])


# ---- the machine ------------------------------------------------------------------------------------------------


def install(root: Path, wheel: Path, tokens: dict[str, str]) -> None:
    """What an installation guide has a user do, done into the machine's root before it boots (the configuration
    file: Deployment.configure)."""
    etc = root / "etc/trading-ops"
    etc.mkdir(parents=True, exist_ok=True)
    for name, value in tokens.items():
        (etc / name).write_text(value + "\n")
    for unit, path in UNIT_FILES.items():
        shutil.copy(path, root / "etc/systemd/system" / unit)
    rules = root / "etc/polkit-1/rules.d"
    rules.mkdir(parents=True, exist_ok=True)
    shutil.copy(POLKIT_RULE, rules / POLKIT_RULE.name)
    # The paper bot's fault-injection commands (`--chaos`), which the tests use to crash, hang and leak it.
    chaos = root / "etc/systemd/system" / f"{BOT}.d" / "chaos.conf"
    chaos.parent.mkdir(parents=True)
    command = f"{VENV}/bin/trading-ops --config {CONFIG} paper-bot"
    chaos.write_text(f"[Service]\nExecStart=\nExecStart={command} --chaos\n")
    nspawn_pipe(
        root,
        f"useradd --system --user-group --home-dir {STATE} --shell /usr/sbin/nologin {USER}\n"
        f"chown root:{USER} /etc/trading-ops /etc/trading-ops/*\n"
        "chmod 0750 /etc/trading-ops\n"
        "chmod 0640 /etc/trading-ops/*\n"
        f"{VENV}/bin/pip install --quiet --no-index --no-deps --no-cache-dir /wheel/{wheel.name}\n",
        binds=[(wheel.parent, "/wheel")],
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The machine, booted once: the units installed, none started yet (each test starts what it needs)."""
    require_binary("systemd-nspawn")
    require_binary("nsenter")
    root, venv = prepared_root()
    tmp = tmp_path_factory.mktemp("systemd-real")
    wheel = build_project_wheel(tmp / "wheel")
    ports = Ports(bot=free_port(), reconciler=free_port(), sidecar=free_port(), freqtrade=free_port())
    tokens = {
        name: secrets.token_urlsafe(24) for name in ("control-token", "reconciler-token", "reconciler-read-token")
    }
    tokens["freqtrade-password"] = secrets.token_urlsafe(12)
    webhook_token = tmp / "webhook-token"
    write_secret(webhook_token, tokens["reconciler-token"])
    monitoring = start_monitoring(tmp, ports.bot, ports.reconciler, webhook_token)
    overlay = Overlay([venv, root], tmp / "machine")
    machine: Machine | None = None
    try:
        merged = overlay.mount()
        install(merged, wheel, tokens)
        machine = Machine(merged, tmp / "console.log")
        deployment = Deployment(machine, merged, ports, monitoring, tokens)
        deployment.configure()
        machine.boot()
        # cgroup v1 here: nspawn mounts the memory controller read-only; systemd enforces MemoryMax once it may write
        # it (a cgroup v2 host needs neither step).
        machine.run("mount", "-o", "remount,bind,rw", "/sys/fs/cgroup/memory")
        machine.systemctl("daemon-reexec")
        yield deployment
    finally:
        try:
            if machine is not None:
                machine.poweroff()
        finally:
            overlay.unmount()
            for proc in monitoring.procs:
                stop_server(proc)


# ---- Type=notify, WatchdogSec, Restart=on-failure, the start limit -----------------------------------------------


def test_the_bot_is_active_only_once_it_sent_ready(deployment: Deployment) -> None:
    machine = deployment.machine
    machine.systemctl("reset-failed", BOT, check=False)
    machine.systemctl("start", "--no-block", BOT)
    seen: list[str] = []

    def active() -> bool:
        state = machine.show(BOT, "ActiveState", "SubState")
        seen.append(f"{state['ActiveState']}/{state['SubState']}")
        return state["ActiveState"] == "active"

    until("the bot active", active, deadline=DEADLINE, interval=0.05)
    assert "activating/start" in seen, seen  # its process ran, not yet ready (the startup reconciliation)
    shown = machine.show(BOT, "ExecMainStartTimestamp", "ActiveEnterTimestamp", "StatusText", "NotifyAccess")
    assert shown["NotifyAccess"] == "main"
    assert shown["StatusText"].startswith("trading "), shown  # the STATUS= sent with READY=1
    assert int(shown["ActiveEnterTimestamp"].lstrip("@")) >= int(shown["ExecMainStartTimestamp"].lstrip("@"))
    journal = machine.journal(BOT)
    reconciled = journal.rfind("safe-start gate open")  # the startup reconciliation passed, before READY=1
    started = journal.rfind("Started trading-ops-paper-bot.service")
    assert 0 <= reconciled < started, journal[-3000:]  # systemd says "Started" only after the bot's READY=1
    assert answers(f"{deployment.bot_url}/readyz")


def test_the_watchdog_kills_a_hung_bot_and_restart_on_failure_brings_it_back(deployment: Deployment) -> None:
    """Drop-in: WatchdogSec=4s (shipped 30 s, which only makes this slower), removed once the watchdog fired so the
    restarted bot runs with the shipped one."""
    machine = deployment.machine
    deployment.drop_in(BOT, "watchdog", "[Service]\nWatchdogSec=4s\n")
    try:
        first = deployment.fresh_start()
        restarts = deployment.restarts(BOT)
        cursor = deployment.cursor()
        deployment.chaos("hang_loop", seconds=600)
        until("the watchdog", lambda: "Watchdog timeout" in deployment.journal_since(cursor, BOT), deadline=60)
    finally:
        deployment.drop_in(BOT, "watchdog", None)
    until("waiting RestartSec", lambda: machine.show(BOT, "SubState")["SubState"] == "auto-restart", 30, 0.1)
    assert machine.show(BOT, "Result")["Result"] == "watchdog"
    second = until("the hung bot restarted", lambda: deployment.active_with_new_pid(BOT, first), deadline=90)
    assert machine.show(BOT, "Result")["Result"] == "success"  # a start resets it (the emulation kept it: fixed)
    journal = deployment.journal_since(cursor, BOT)
    assert "Killing process" in journal and "SIGABRT" in journal, journal
    assert "Scheduled restart job" in journal, journal
    assert deployment.restarts(BOT) == restarts + 1
    assert machine.show(BOT, "WatchdogUSec")["WatchdogUSec"] == "30s"
    assert second != first and answers(f"{deployment.bot_url}/healthz")


def test_a_crash_loop_hits_the_start_limit_and_nothing_restarts_it_until_reset(deployment: Deployment) -> None:
    """Drop-ins: RestartSec=100ms (shipped 5 s) and a configuration the bot refuses (exit 2) in a crash loop."""
    machine = deployment.machine
    deployment.fresh_start()
    broken = deployment.root / "etc/trading-ops/broken.yaml"
    broken.write_text("bot:\n  listen: {port: not-a-port}\n")
    command = f"{VENV}/bin/trading-ops --config /etc/trading-ops/broken.yaml paper-bot --chaos"
    deployment.drop_in(
        BOT, "crash-loop", f"[Service]\nRestartSec=100ms\nExecStartPre=\nExecStart=\nExecStart={command}\n"
    )
    try:
        machine.systemctl("stop", BOT)
        machine.systemctl("reset-failed", BOT, check=False)
        cursor = deployment.cursor()
        assert machine.systemctl("start", BOT, check=False).returncode != 0
        until(
            "the start limit",
            lambda: "Start request repeated too quickly" in deployment.journal_since(cursor, BOT),
            deadline=60,
        )
        journal = deployment.journal_since(cursor, BOT)
        burst = int(machine.show(BOT, "StartLimitBurst")["StartLimitBurst"])
        assert burst == 5
        # Every start within StartLimitIntervalSec counts, the first included: the (burst+1)th is refused, and the
        # unit keeps the result of the failure that led there (the emulation said start-limit-hit: it differed).
        assert journal.count("Starting trading-ops-paper-bot.service") == burst, journal
        assert machine.show(BOT, "ActiveState", "Result", "NRestarts") == {
            "ActiveState": "failed",
            "Result": "exit-code",
            "NRestarts": str(burst),  # the refused restart counted too
        }
        time.sleep(1)  # longer than RestartSec: nothing restarts it
        assert deployment.journal_since(cursor, BOT).count("Starting trading-ops-paper-bot.service") == burst
        # Refused until reset, to the reconciler's user (polkit allows restart) and to root alike.
        cursor = deployment.cursor()
        assert machine.systemctl("restart", BOT, user=USER, check=False).returncode != 0
        assert machine.systemctl("start", BOT, check=False).returncode != 0
        assert deployment.journal_since(cursor, BOT).count("Start request repeated too quickly") == 2
        # reset-failed is not the reconciler's to run: a human looks first (the polkit rule leaves it out).
        denied = machine.systemctl("reset-failed", BOT, user=USER, check=False)
        assert denied.returncode != 0 and "Access denied" in denied.stderr, denied.stderr
        assert "Starting" not in deployment.journal_since(cursor, BOT)
    finally:
        deployment.drop_in(BOT, "crash-loop", None)
        broken.unlink()
    deployment.fresh_start()  # reset-failed by root, then a start: it runs again
    assert machine.show(BOT, "ActiveState")["ActiveState"] == "active"


# ---- what the units tell systemd and journald -----------------------------------------------------------------------


def test_journalctl_p_err_finds_the_errors_the_bot_logged_and_only_those(deployment: Deployment) -> None:
    """The bot's lines reach journald with their priority ("<N>" per line: SyslogLevelPrefix=) and without a second
    timestamp: after a crash (SIGKILL, restarted by systemd) the new run logs at ERROR that the previous one crashed,
    which `journalctl -p err` finds, and its INFO lines are not there."""
    machine = deployment.machine
    first = deployment.fresh_start()
    cursor = deployment.cursor()
    deployment.chaos("crash")
    second = until("the crashed bot restarted", lambda: deployment.active_with_new_pid(BOT, first), deadline=90)
    # The new run's lines (its pid: --after-cursor with a priority match finds nothing in systemd 252's journalctl).
    argv = ["journalctl", "--no-pager", "-o", "cat", "-p", "err", "-u", BOT, f"_PID={second}"]
    found = r"^ERROR trading_ops\.bot\.heartbeat: previous run \d+ .* crashed: no clean-shutdown"
    # journald takes a stream's lines a moment after systemd's own "Started": polled.
    until(
        "the error in `journalctl -p err`", lambda: re.search(found, machine.run(*argv, check=False).stdout, re.M), 30
    )
    until("the run's INFO lines", lambda: "safe-start gate open" in deployment.journal_since(cursor, BOT), 30)
    errors = machine.run(*argv, check=False).stdout
    assert "INFO " not in errors and "safe-start gate open" not in errors, errors
    argv = ["journalctl", "--no-pager", "-o", "json", f"_PID={second}"]
    entries = [json.loads(line) for line in machine.run(*argv, check=False).stdout.splitlines() if line.strip()]
    messages = [(e.get("PRIORITY"), e.get("MESSAGE")) for e in entries]
    assert messages and all(isinstance(m, str) for _, m in messages), messages
    levels = {m.split(" ", 1)[0]: p for p, m in messages}
    assert levels.get("ERROR") == "3" and levels.get("WARNING") == "4" and levels.get("INFO") == "6", levels
    # journald's timestamp only: no line starts with a time of its own, and no "<N>" is left in a message.
    assert not [m for _, m in messages if re.match(r"<\d>|\d{4}-\d\d-\d\d[ T]\d\d:", m)], messages


# A service's logged exception: its traceback has a dozen lines (frames of a call chain).
TRACEBACK_SCRIPT = (
    "import logging\n"
    "from trading_ops import logsetup\n"
    "logsetup.setup('INFO', 'text')\n"
    "def deeper(n):\n"
    "    if n == 0:\n"
    "        raise OSError('venue unreachable')\n"
    "    deeper(n - 1)\n"
    "try:\n"
    "    deeper(5)\n"
    "except OSError:\n"
    "    logging.getLogger('trading_ops.bot').exception('reconciliation failed')\n"
    "logging.getLogger('trading_ops.bot').info('after it')\n"
)


def test_a_traceback_is_one_journal_entry(deployment: Deployment) -> None:
    """A logged exception under systemd (stderr the journal's stream) is one journal entry at priority err, its
    traceback inside it: on the stream, journald made an entry of every line (98 ERROR messages became 8,919
    priority-3 entries). The service here is a transient unit running the package's logging as a unit's would."""
    machine = deployment.machine
    unit = f"traceback-probe-{secrets.token_hex(4)}"
    machine.run("systemd-run", "--wait", "--quiet", f"--unit={unit}", f"{VENV}/bin/python", "-c", TRACEBACK_SCRIPT)

    def entries() -> list[dict[str, Any]] | None:
        shown = machine.run("journalctl", "--no-pager", "-o", "json", "-u", unit, check=False).stdout
        found = [json.loads(line) for line in shown.splitlines() if line.strip()]
        ours = [e for e in found if e.get("LOGGER") == "trading_ops.bot" or "trading_ops.bot" in str(e.get("MESSAGE"))]
        return ours if len(ours) >= 2 else None

    logged = until("the probe's entries in the journal", entries, deadline=30)
    errors = [e for e in logged if e.get("PRIORITY") == "3"]
    assert len(errors) == 1, [e.get("MESSAGE") for e in logged]
    message = errors[0]["MESSAGE"]
    assert isinstance(message, str), message  # journalctl shows a message that is valid text as a string
    lines = message.splitlines()
    assert lines[0] == "ERROR trading_ops.bot: reconciliation failed", lines
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "OSError: venue unreachable", lines
    # Every frame down to the raise, in the same entry (CPython folds the repeated calls of deeper into one line).
    assert lines[2].strip().startswith('File "<string>", line 9'), lines
    assert any(line.strip().startswith('File "<string>", line 6, in deeper') for line in lines), lines
    assert [e["MESSAGE"] for e in logged if e.get("PRIORITY") == "6"] == ["INFO trading_ops.bot: after it"]


def test_the_reconciler_unit_is_never_active_while_its_database_does_not_answer(deployment: Deployment) -> None:
    """Type=notify: READY=1 only once the ledger answered. Drop-in: a configuration whose database cannot be opened
    (a file in /etc/trading-ops, read-only under ProtectSystem=strict: the issue's example configuration) and a
    RestartSec long enough to look at the failed start."""
    machine = deployment.machine
    machine.systemctl("stop", RECONCILER)
    broken = deployment.root / "etc/trading-ops/broken-db.yaml"
    data = yaml.safe_load((deployment.root / CONFIG.lstrip("/")).read_text())
    data["database"]["url"] = "sqlite:////etc/trading-ops/ledger.db"
    broken.write_text(yaml.safe_dump(data))
    command = f"{VENV}/bin/trading-ops --config /etc/trading-ops/broken-db.yaml reconciler"
    deployment.drop_in(RECONCILER, "broken-db", f"[Service]\nRestartSec=1h\nExecStart=\nExecStart={command}\n")
    try:
        machine.systemctl("reset-failed", RECONCILER, check=False)
        cursor = deployment.cursor()
        started = machine.systemctl("start", RECONCILER, check=False)
        assert started.returncode != 0, started.stdout  # the start job failed: the process exited before READY=1
        shown = machine.show(RECONCILER, "ActiveState", "SubState", "Type")
        assert shown["Type"] == "notify" and shown["ActiveState"] != "active", shown
        journal = deployment.journal_since(cursor, RECONCILER)
        assert "database unreachable" in journal, journal
        assert "reconciler listening" not in journal and f"Started {RECONCILER}" not in journal, journal
    finally:
        deployment.drop_in(RECONCILER, "broken-db", None)
        broken.unlink()
    # Its database back: active once ready, and ready means it answers at once.
    machine.systemctl("reset-failed", RECONCILER, check=False)
    machine.systemctl("start", RECONCILER)
    assert machine.show(RECONCILER, "ActiveState")["ActiveState"] == "active"
    assert answers(f"http://127.0.0.1:{deployment.ports.reconciler}/readyz")
    assert "reconciler listening" in deployment.journal_since(cursor, RECONCILER)
    # Stopped again: a reconciler left running would act on the faults of the tests after this one (and its
    # cooldowns would hold back the episodes of the end-to-end tests, which start it themselves).
    machine.systemctl("stop", RECONCILER)


# ---- the template unit: any bot script on the runtime -------------------------------------------------------------

CCXT_BOT = "ccxt-1"
GATEWAY_KEY = "systemd-test-key"
GATEWAY_SECRET = base64.b64encode(b"the systemd test's gateway secret").decode()


@pytest.fixture
def paper_gateway(tmp_path: Path) -> Iterator[str]:
    """`trading-ops paper-gateway` on this host (the machine shares its network): the venue of the example bot."""
    port = free_port()
    for name, value in (("key", GATEWAY_KEY), ("secret", GATEWAY_SECRET), ("token", secrets.token_urlsafe(24))):
        write_secret(tmp_path / f"gateway-{name}", value)
    config = tmp_path / "gateway.yaml"
    gateway = {
        "listen": {"host": "127.0.0.1", "port": port},
        **{f"{k}_file": str(tmp_path / f"gateway-{v}") for k, v in (("api_key", "key"), ("api_secret", "secret"))},
        "control_token_file": str(tmp_path / "gateway-token"),
    }
    config.write_text(yaml.safe_dump({"gateway": gateway, "paper": {"seed": 11, "symbols": ["BTC-USD"]}}))
    argv = [sys.executable, "-m", "trading_ops", "--config", str(config), "paper-gateway"]
    base = f"http://127.0.0.1:{port}"
    proc = start_server(argv, tmp_path / "gateway.log", f"{base}/0/public/Time")
    try:
        yield base
    finally:
        stop_server(proc)


def test_the_template_unit_runs_the_example_ccxt_bot_sandboxed_and_ready(
    deployment: Deployment, paper_gateway: str
) -> None:
    """trading-ops-bot@ccxt-1.service as its comments install it: the script in /opt/trading-ops/bots, its
    configuration in /etc/trading-ops/bots, its state in the instance's own StateDirectory; active only once the
    runtime sent READY=1, its own files only, and a clean stop."""
    machine, root = deployment.machine, deployment.root
    port = free_port()
    bots, state = root / "etc/trading-ops/bots", f"{STATE}/bots/{CCXT_BOT}"
    bots.mkdir(exist_ok=True)
    (root / "opt/trading-ops/bots").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "examples" / "ccxt_bot.py", root / "opt/trading-ops/bots" / f"{CCXT_BOT}.py")
    (bots / f"{CCXT_BOT}-api-key").write_text(GATEWAY_KEY)
    (bots / f"{CCXT_BOT}-api-key").chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
    (bots / f"{CCXT_BOT}-api-secret").write_text(GATEWAY_SECRET)
    (bots / f"{CCXT_BOT}-api-secret").chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
    settings = {
        "database": {"url": f"sqlite:///{state}/trading-ops.db"},
        "bot": {
            "name": CCXT_BOT,
            "venue": "kraken",
            "strategy": "mean-reverter",
            "listen": {"host": "127.0.0.1", "port": port},
            "control_token_file": "/etc/trading-ops/control-token",
            "data_dir": state,
            # A busy machine (the gateway a process beside it): quotes and a stop given time; none of it is tested.
            "market_data_stale_seconds": 30,
        },
        "recovery": {"shutdown_deadline_seconds": 20},
        "ccxt": {
            "exchange": "kraken",
            "api_key_file": f"/etc/trading-ops/bots/{CCXT_BOT}-api-key",
            "api_secret_file": f"/etc/trading-ops/bots/{CCXT_BOT}-api-secret",
            "urls": {"public": paper_gateway, "private": paper_gateway},
            "symbols": ["BTC-USD"],
            # ccxt's own throttle spaces Kraken calls seconds apart (the real venue's pace): a start and a stop here
            # would take minutes. The gateway keeps no call counter either (tests/venues/test_ccxt_bot.py does the
            # same).
            "enable_rate_limit": False,
            "kraken_tier": "off",
        },
    }
    (bots / f"{CCXT_BOT}.yaml").write_text(yaml.safe_dump(settings))
    machine.run(
        "sh",
        "-c",
        f"chown -R root:{USER} /etc/trading-ops/bots && chmod 0750 /etc/trading-ops/bots && "
        "chmod 0640 /etc/trading-ops/bots/*",
    )
    unit = f"trading-ops-bot@{CCXT_BOT}.service"
    machine.systemctl("daemon-reload")
    machine.systemctl("start", unit)  # Type=notify: returns once the runtime sent READY=1
    try:
        shown = machine.show(unit, "ActiveState", "Type", "StatusText", "MainPID")
        assert shown["ActiveState"] == "active" and shown["Type"] == "notify", shown
        assert shown["StatusText"].startswith("trading BTC-USD"), shown
        until("the bot ready", lambda: answers(f"http://127.0.0.1:{port}/readyz"), 60)
        owned = machine.run("stat", "-c", "%a %U", state).stdout.strip()
        assert owned == f"750 {USER}", owned
        assert machine.run("test", "-e", f"{state}/trading-ops.db", check=False).returncode == 0
        # Its sandbox: the state directories of other bots and the paper bot's files are not its to write.
        pid = shown["MainPID"]
        uid = machine.run("id", "-u", USER).stdout.strip()
        probe = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('x')"
        inside = ["nsenter", "-t", pid, "-m", "-S", uid, "-G", uid, "--", f"{VENV}/bin/python", "-c", probe]
        denied = machine.run(*inside, f"{STATE}/not-mine", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied.stderr
    finally:
        machine.systemctl("stop", unit)
    shown = machine.show(unit, "ActiveState", "Result")
    assert shown == {"ActiveState": "inactive", "Result": "success"}, shown


# ---- resources and the sandbox -----------------------------------------------------------------------------------


def test_memory_max_kills_a_leaking_bot_and_it_is_restarted(deployment: Deployment) -> None:
    machine = deployment.machine
    first = deployment.fresh_start()
    limit = int(machine.show(BOT, "MemoryMax")["MemoryMax"])
    assert limit == 512 * MIB
    cgroup = f"/sys/fs/cgroup/memory/system.slice/{BOT}"
    assert int(machine.run("cat", f"{cgroup}/memory.limit_in_bytes").stdout) == limit
    # The bot exports the limit it runs under, which the memory alerts compare with (before it looked up its own
    # cgroup it exported the machine's memory under systemd).
    metrics = urllib.request.urlopen(f"{deployment.bot_url}/metrics", timeout=5).read().decode()
    exported = [line for line in metrics.splitlines() if line.startswith("tradingbot_memory_limit_bytes")]
    assert exported and float(exported[0].split()[-1]) == limit, exported
    cursor = deployment.cursor()
    deployment.chaos("leak_memory", mib_per_second=100, max_mib=2048)
    # The unit's cgroup goes with the killed process (its counters too): its high-water mark is read while it lives.
    peak = 0

    def restarted() -> int | None:
        nonlocal peak
        usage = machine.run("cat", f"{cgroup}/memory.max_usage_in_bytes", check=False).stdout.strip()
        peak = max(peak, int(usage) if usage.isdigit() else 0)
        return deployment.active_with_new_pid(BOT, first)

    second = until("the leaking bot restarted", restarted, deadline=90, interval=0.02)
    journal = deployment.journal_since(cursor, BOT)
    # Its start did not take over before the killed run's heartbeat was crash_timeout old: it waited for that, or
    # (systemd's restart came later on a busy machine) found it that old already; its loop still gets a timeout
    # from its own start (the watchdog pings stopped at once before the runtime said so).
    restarted_log = machine.run("journalctl", "--no-pager", "-o", "cat", f"_PID={second}", check=False).stdout
    waited = "waiting until its heartbeat is" in restarted_log
    found = re.search(r"crashed: no clean-shutdown marker \(.*?\), last heartbeat ([\d.]+) s ago", restarted_log)
    assert found, restarted_log
    assert waited or float(found.group(1)) >= CRASH_TIMEOUT, restarted_log
    assert "makes no progress" not in restarted_log, restarted_log
    assert "code=killed, status=9/KILL" in journal, journal  # the kernel's OOM killer, inside the unit's cgroup
    assert limit - 64 * MIB <= peak <= limit, peak / MIB  # it grew to the limit, never past it


@pytest.mark.parametrize("unit", [BOT, RECONCILER, SIDECAR])
def test_the_kernel_applies_the_units_sandbox(deployment: Deployment, unit: str) -> None:
    """NoNewPrivileges, no capabilities, the seccomp filter, the user, a read-only system: as the running process
    has them."""
    machine = deployment.machine
    if machine.show(unit, "ActiveState")["ActiveState"] != "active":
        deployment.fresh_start(unit)
    pid = deployment.main_pid(unit)
    status = dict(
        line.split(":", 1) for line in machine.run("cat", f"/proc/{pid}/status").stdout.splitlines() if ":" in line
    )
    uid = machine.run("id", "-u", USER).stdout.strip()
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # filter mode: SystemCallFilter
    assert status["CapEff"].strip() == status["CapBnd"].strip() == "0" * 16
    assert status["Uid"].split()[:2] == [uid, uid]
    # ProtectSystem=strict, in the unit's own mount namespace: only the state directory is writable.
    probe = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('x')"
    inside = ["nsenter", "-t", str(pid), "-m", "-S", uid, "-G", uid, "--", f"{VENV}/bin/python", "-c", probe]
    denied = machine.run(*inside, "/opt/trading-ops/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied.stderr
    machine.run(*inside, f"{STATE}/sandbox-probe")


def test_the_freqtrade_sidecar_starts_as_its_unit_says_and_restarts_after_a_crash(deployment: Deployment) -> None:
    """No freqtrade runs here (it would be freqtrade's own unit): the sidecar serves its metrics all the same."""
    machine = deployment.machine
    first = deployment.fresh_start(SIDECAR)  # Type=exec: active once its program runs
    assert machine.show(SIDECAR, "Type", "ActiveState") == {"Type": "exec", "ActiveState": "active"}
    until("the sidecar serving", lambda: answers(f"http://127.0.0.1:{deployment.ports.sidecar}/metrics"), 60)
    restarts = deployment.restarts(SIDECAR)
    machine.run("sh", "-c", f"kill -KILL {first}")
    second = until("the sidecar restarted", lambda: deployment.active_with_new_pid(SIDECAR, first), deadline=30)
    assert second != first and deployment.restarts(SIDECAR) == restarts + 1
    until("the sidecar serving again", lambda: answers(f"http://127.0.0.1:{deployment.ports.sidecar}/metrics"), 60)
    machine.systemctl("stop", SIDECAR)


# ---- the polkit rule under polkitd --------------------------------------------------------------------------------


def pkcheck(deployment: Deployment, cases: Sequence[tuple[str, str | None, str | None]], user: str = USER) -> list[str]:
    """polkitd's answer for a process of `user` asking for each (action, unit, verb): yes, no, or auth (the default
    policy wants an administrator's password: the rule did not handle it)."""
    lines = []
    for action, unit, verb in cases:
        details = "".join(f" --detail {key} '{value}'" for key, value in (("unit", unit), ("verb", verb)) if value)
        lines.append(f"pkcheck --action-id {action} --process $p{details} >/dev/null 2>&1; echo $?")
    script = (
        f"setpriv --reuid={user} --regid=$(id -g {user}) --clear-groups sleep 120 & p=$!\n"
        "sleep 0.3\n" + "\n".join(lines) + "\nkill $p\n"
    )
    codes = deployment.machine.run("sh", "-c", script).stdout.split()
    assert len(codes) == len(cases)
    return [{"0": "yes", "1": "no", "2": "auth"}.get(code, f"exit {code}") for code in codes]


def manage(unit: str | None, verb: str | None = "restart") -> tuple[str, str | None, str | None]:
    return (MANAGE_UNITS, unit, verb)


def test_polkitd_lets_the_reconciler_user_manage_exactly_the_bots_units(deployment: Deployment) -> None:
    """The shipped rule as polkitd (its JavaScript engine, its subject) runs it; the units and verbs that
    test_systemd_units.py takes from the default playbook are among the allowed ones."""
    allowed = [
        manage("trading-ops-paper-bot.service"),
        manage("trading-ops-paper-bot.service", "start"),
        manage("trading-ops-paper-bot.service", "stop"),
        manage("trading-ops-paper-bot.service", "try-restart"),
        manage("trading-ops-paper-bot.service", "reload"),
        manage("trading-ops-bot@grid-binance.service", "restart"),
        manage("trading-ops-bot@freqtrade.service", "try-restart"),
        manage("freqtrade.service"),
        manage("trading-ops-freqtrade.service"),  # the freqtrade sidecar
    ]
    refused = [
        manage("trading-ops-reconciler.service"),  # its own unit: a human's job
        manage("ssh.service"),
        manage("postgresql.service", "stop"),
        manage("trading-ops-paper-bot.service.d"),
        manage("trading-ops-bot@.service"),  # the template itself
        manage("trading-ops-bot@x.service; rm -rf /"),
        manage("xtrading-ops-paper-bot.service"),
        manage("trading-ops-paper-bot.service", "reset-failed"),  # a start-limited unit stays down: a human looks
        manage("trading-ops-paper-bot.service", "kill"),
        manage("trading-ops-paper-bot.service", "enable"),
        manage(None),  # no details: refused, not guessed
        manage("trading-ops-paper-bot.service", None),
    ]
    assert pkcheck(deployment, allowed) == ["yes"] * len(allowed)
    assert pkcheck(deployment, refused) == ["no"] * len(refused)
    # Other users and other actions: the rule leaves them to the default policy (an administrator's password).
    others = [("org.freedesktop.systemd1.manage-unit-files", None, None), ("org.freedesktop.login1.reboot", None, None)]
    assert pkcheck(deployment, others) == ["auth"] * len(others)
    assert pkcheck(deployment, [manage("trading-ops-paper-bot.service")], user="nobody") == ["auth"]


def playbook_units() -> list[str]:
    """The units the default playbook restarts: those its steps name, and for a step without one, each bot's own unit
    as the configuration derives it (the paper bot's, and the template unit's instance of any other bot)."""
    playbook = yaml.safe_load((REPO_ROOT / "trading_ops/reconciler/playbooks/default.yml").read_text())
    steps = [s for r in playbook["rules"] for s in r["steps"] + r.get("on_recovery", []) if s["action"] == "systemd"]
    units = [s["unit"] for s in steps if "unit" in s]
    if any("unit" not in s for s in steps):
        bots = [
            {"name": "paper-1", "kind": "paper", "instance": "127.0.0.1:9101", "url": "http://127.0.0.1:9101"},
            {"name": "eth-mm", "kind": "ccxt", "instance": "127.0.0.1:9111", "url": "http://127.0.0.1:9111"},
        ]
        units += [target.unit for target in parse_config({"bots": bots}).reconciler.targets.values()]
    return sorted(set(units))


def test_polkitd_allows_every_unit_and_verb_the_default_playbook_uses(deployment: Deployment) -> None:
    units = playbook_units()
    assert units, "the default playbook restarts no systemd unit any more: update this test and the rule"
    cases = [manage(unit, verb) for unit in units for verb in VERBS]
    assert pkcheck(deployment, cases) == ["yes"] * len(cases)


def test_systemctl_as_the_reconciler_user_goes_through_polkit(deployment: Deployment) -> None:
    """What the reconciler's `systemd` step runs (no sudo): systemd passes polkit the unit and verb the rule needs."""
    machine = deployment.machine
    first = deployment.fresh_start()
    machine.systemctl("restart", BOT, user=USER)
    assert deployment.active_with_new_pid(BOT, first)
    for argv in (["restart", RECONCILER], ["stop", "dbus.service"], ["kill", BOT], ["reset-failed", BOT]):
        denied = machine.systemctl(*argv, user=USER, check=False)
        assert denied.returncode != 0 and "Access denied" in denied.stderr, (argv, denied.stderr)
    denied = machine.systemctl("restart", BOT, user="nobody", check=False)
    assert denied.returncode != 0 and "Interactive authentication required" in denied.stderr, denied.stderr


# ---- the reconciler heals the bot, end to end ---------------------------------------------------------------------


def closed_episode(deployment: Deployment, alertname: str, after: int) -> dict[str, Any] | None:
    """The first closed episode of `alertname` with an id above `after` (the full record), or None."""
    url = f"http://127.0.0.1:{deployment.ports.reconciler}/api/v1/episodes"
    status, answer = http(url, token=deployment.read_token)
    assert status == 200, answer
    for summary in sorted(answer["episodes"], key=lambda e: int(e["id"])):
        if summary["alertname"] == alertname and int(summary["id"]) > after and summary["state"] in CLOSED_STATES:
            status, episode = http(f"{url}/{summary['id']}", token=deployment.read_token)
            assert status == 200
            return dict(episode)
    return None


def episode_lines(deployment: Deployment) -> str:
    """Every episode the reconciler holds, one line each (a failure's context: what an earlier one set off)."""
    status, answer = http(
        f"http://127.0.0.1:{deployment.ports.reconciler}/api/v1/episodes", token=deployment.read_token
    )
    assert status == 200, answer
    keys = ("id", "alertname", "rule", "state", "starts_at", "received_at", "closed_at", "detail")
    return "".join(f"\n  {[e.get(k) for k in keys]}" for e in sorted(answer["episodes"], key=lambda e: int(e["id"])))


def settled_episode_id(deployment: Deployment) -> int:
    """The id of the last episode once what the bot's restart itself set off is over, so that the next fault opens a
    later episode: a start slower than TradingBotDown's `for:` (a loaded machine) fires it, and that episode would
    take the fault's alert as its own. Over: Prometheus scrapes the bot up, has no TradingBotDown pending or firing,
    Alertmanager holds none, and every episode is closed."""
    url = f"http://127.0.0.1:{deployment.ports.reconciler}/api/v1/episodes"

    def last_if_quiet() -> int | None:
        if not deployment.monitoring.query('up{job="tradingbot"} == 1 unless on () ALERTS{alertname="TradingBotDown"}'):
            return None
        if deployment.monitoring.firing("TradingBotDown"):
            return None
        status, answer = http(url, token=deployment.read_token)
        assert status == 200, answer
        if any(e["state"] not in CLOSED_STATES for e in answer["episodes"]):
            return None
        return max((int(e["id"]) for e in answer["episodes"]), default=0) + 1  # + 1: 0 is an answer too

    return until("the restart's own TradingBotDown over and every episode closed", last_if_quiet, 120) - 1


def bot_down_over(monitoring: Monitoring, when: str) -> None:
    """TradingBotDown over in Prometheus and Alertmanager, and Alertmanager done sending its end: no webhook for 3 s
    (the group flushes every second). A silence set while a firing it had sent was still to be resolved mutes that
    resolution, and Alertmanager's notification log keeps the firing as sent: the next firing of the same alert,
    the fault the test makes, is then never sent, as nothing new (CI, stop 70: "resolved before any action", its
    firing held until the bot was back)."""

    def quiet() -> bool:
        if monitoring.query('ALERTS{alertname="TradingBotDown"}') or monitoring.held("TradingBotDown"):
            return False
        sent = monitoring.notifications_sent()
        time.sleep(3)
        return sent == monitoring.notifications_sent()

    until(f"TradingBotDown over and its end sent {when}", quiet, 120)


def expire_silences(monitoring: Monitoring) -> None:
    """A silence a previous episode set (bot-loop-restart silences TradingBotDown for 3 minutes) ends now."""
    status, silences = http(f"{monitoring.alertmanager}/api/v2/silences")
    assert status == 200
    for silence in silences:
        if silence["status"]["state"] == "active":
            request = urllib.request.Request(
                f"{monitoring.alertmanager}/api/v2/silence/{silence['id']}", method="DELETE"
            )
            urllib.request.urlopen(request, timeout=5).close()


def restart_unpaged(deployment: Deployment, reconciler_too: bool = False) -> tuple[int, int]:
    """The bot's unit restarted (`fresh_start`; with `reconciler_too` the reconciler's first, ready before the bot's)
    with TradingBotDown silenced until the restart is over; returns the bot's main pid and `settled_episode_id`. A
    start slower than the alert's `for:` (a loaded machine) fires it, and an episode that acts on it starts
    bot-restart's 10-minute cooldown, which then holds back the episode of the fault the test makes: that one ended
    `resolved` once systemd had the bot back, never acted on (CI, stop 67). The silence comes first: a reconciler
    started would hear an alert an earlier test's restart left firing."""
    bot_down_over(deployment.monitoring, "before the test's restart")
    now = datetime.now(UTC)
    status, answer = http(
        f"{deployment.monitoring.alertmanager}/api/v2/silences",
        {
            "matchers": [{"name": "alertname", "value": "TradingBotDown", "isRegex": False, "isEqual": True}],
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
            "createdBy": "test_systemd_real",
            "comment": "the test's own restart of the bot",
        },
    )
    assert status == 200, answer
    try:
        if reconciler_too:
            deployment.fresh_start(RECONCILER)
            url = f"http://127.0.0.1:{deployment.ports.reconciler}/readyz"
            until("the reconciler ready", lambda: answers(url), 60)
        pid = deployment.fresh_start(BOT)
        after = settled_episode_id(deployment)
        # Lifted only once the restart's alert is over in Prometheus (pending or firing): lifted before, Alertmanager
        # sent the firing it still held, and the group's next flush, `group_interval` after that alert's end, held the
        # firing of the fault the test makes until systemd had the bot back (CI, stop 69: "resolved before any action").
        until(
            "TradingBotDown over after the test's restart",
            lambda: (
                not deployment.monitoring.query('ALERTS{alertname="TradingBotDown"}')
                and not deployment.monitoring.held("TradingBotDown")
            ),
            120,
        )
    finally:
        request = urllib.request.Request(
            f"{deployment.monitoring.alertmanager}/api/v2/silence/{answer['silenceID']}", method="DELETE"
        )
        urllib.request.urlopen(request, timeout=5).close()
    return pid, after


@pytest.fixture(scope="module")
def reconciler(deployment: Deployment) -> Deployment:
    """The reconciler running under its unit, Prometheus scraping the bot."""
    restart_unpaged(deployment, reconciler_too=True)
    until("Prometheus scraping the bot", lambda: deployment.monitoring.query('up{job="tradingbot"} == 1'), 60)
    return deployment


def test_a_crashed_bot_is_restarted_by_systemd_and_the_reconciler_verifies_it(reconciler: Deployment) -> None:
    """TradingBotDown -> bot-restart. systemd restarts the crashed bot (Restart=on-failure, RestartSec=5s), whose
    start waits until its last heartbeat is crash_timeout_seconds old (raised here so the bot stays down past the
    alert's `for:` and the rule's `wait_for`); the step asks systemd (`systemctl show`), finds it at it and leaves it;
    Prometheus verifies once the bot is back."""
    deployment = reconciler
    expire_silences(deployment.monitoring)
    deployment.configure(crash_timeout=SLOW_CRASH_RECOVERY)
    try:
        first, after = restart_unpaged(deployment)
        restarts = deployment.restarts(BOT)
        deployment.chaos("crash")
        episode = until("the episode closed", lambda: closed_episode(deployment, "TradingBotDown", after), 150)
    finally:
        deployment.configure()
    if episode["state"] != "recovered":
        pytest.fail(f"{json.dumps(episode, indent=1)}\nevery episode: {episode_lines(deployment)}", pytrace=False)
    steps = [step for attempt in episode["attempts"] for step in attempt["steps"]]
    assert [(s["action"], s["outcome"]) for s in steps] == [("systemd", "success")], steps
    # "... is already at it (ActiveState=activating ...)", or on a slow machine "... restarted it at ...".
    assert "not restarted again: the service manager" in steps[0]["output"], steps
    assert deployment.active_with_new_pid(BOT, first)
    assert deployment.restarts(BOT) == restarts + 1  # systemd's own restart, and no other


def test_the_reconciler_restarts_a_hung_bot_through_polkit_and_verifies_it(reconciler: Deployment) -> None:
    """TradingBotHeartbeatStale -> bot-loop-restart: a silence, then `systemctl restart` as the reconciler's user.
    Drop-in: WatchdogSec=0, the bot without a watchdog the rule is for (with one, systemd restarts it first)."""
    deployment = reconciler
    expire_silences(deployment.monitoring)
    deployment.drop_in(BOT, "no-watchdog", "[Service]\nWatchdogSec=0\n")
    try:
        first, after = restart_unpaged(deployment)
        restarts = deployment.restarts(BOT)
        cursor = deployment.cursor()
        deployment.chaos("hang_loop", seconds=600)
        episode = until(
            "the episode closed", lambda: closed_episode(deployment, "TradingBotHeartbeatStale", after), 150
        )
    finally:
        deployment.drop_in(BOT, "no-watchdog", None)
    assert episode["state"] == "recovered", json.dumps(episode, indent=1)
    steps = [step for attempt in episode["attempts"] for step in attempt["steps"]]
    assert [(s["action"], s["outcome"]) for s in steps] == [("silence", "success"), ("systemd", "success")], steps
    assert deployment.active_with_new_pid(BOT, first)
    assert deployment.restarts(BOT) == restarts  # a restart job (the reconciler's), not systemd's automatic one
    journal = deployment.journal_since(cursor, BOT)
    assert "Stopping trading-ops-paper-bot.service" in journal and "Started trading-ops-paper-bot.service" in journal
    assert "Watchdog timeout" not in journal
