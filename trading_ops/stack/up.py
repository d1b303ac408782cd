"""`trading-ops up`: render the stack's configurations, start the four children, watch them, stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from trading_ops.config import DEFAULT_CONFIG_PATH
from trading_ops.db import migrate
from trading_ops.durations import format_duration
from trading_ops.stack import binaries
from trading_ops.stack.alertmanager_config import render_alertmanager, write_alertmanager
from trading_ops.stack.app_config import AppConfig, build_app_config
from trading_ops.stack.health import StartupFailed, wait_healthy
from trading_ops.stack.layout import HOST, Layout, Ports
from trading_ops.stack.profiles import Profile
from trading_ops.stack.prometheus_config import render_prometheus, write_prometheus
from trading_ops.stack.repo import MonitoringConfigError, find_repo
from trading_ops.stack.status import StatusPrinter, fetch, render
from trading_ops.stack.supervisor import Child, describe_exit

EXIT_OK, EXIT_FAILURE = 0, 1
# Where a node exporter is looked for when --node-exporter is not given.
NODE_EXPORTER = f"{HOST}:9100"
NODE_EXPORTER_PROBE_SECONDS = 0.5
SERVER_STOP_SECONDS = 10.0
RECONCILER_STOP_SECONDS = 15.0
# The bot gets its own graceful-shutdown deadline (recovery.shutdown_deadline_seconds) plus this much.
BOT_STOP_GRACE_SECONDS = 5.0
LOG_TAIL_LINES = 20
# Status refresh: every second on a terminal; every 2 s otherwise (a line is printed only when it changes).
TTY_STATUS_SECONDS = 1.0
PIPE_STATUS_SECONDS = 2.0
PROMETHEUS_RETENTION = "2d"  # a development stack: keep the state dir small
# The bot is the workload the stack watches: when it dies (`trading-ops chaos crash` does that on purpose), the rest
# keeps running so TradingBotDown, the reconciler's attempt and its escalation can be watched. Any other child is
# the pipeline itself: without it the stack would show something misleading, so everything stops (exit 1).
WORKLOAD = "paper-bot"
# The built-in bot kind of `--bot` (the paper bot with its fault injection); `bot_kinds:` in the configuration adds
# others: KIND -> the bot's command line, with {python} and {config} (the stack's generated configuration) filled in.
DEFAULT_BOT_KIND = "paper"
CHILD_OF_ROLE = {
    "bot": WORKLOAD,
    "reconciler": "reconciler",
    "prometheus": "prometheus",
    "alertmanager": "alertmanager",
}
# Ctrl-C, a service manager's stop, and the terminal closing all stop the stack cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class UsageProblem(Exception):
    """Bad usage or configuration found before anything starts (exit 2, one line)."""


@dataclass(frozen=True)
class UpOptions:
    state_dir: Path
    repo: str | None
    ports: Ports
    profile: Profile
    ready_timeout: float
    status_interval: float | None
    node_exporter: str | None
    config_path: str | None
    log_level: str | None
    bot_kind: str = DEFAULT_BOT_KIND


@dataclass
class Stack:
    layout: Layout
    ports: Ports
    profile: Profile
    app: AppConfig
    children: list[Child]
    missing: list[binaries.Binary]
    notes: list[str]
    workload: str = WORKLOAD  # the bot child: when it dies, the rest keeps running


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _node_exporter(explicit: str | None) -> str | None:
    address = explicit or NODE_EXPORTER
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=NODE_EXPORTER_PROBE_SECONDS) as resp:
            return address if resp.status == 200 else None
    except OSError:
        if explicit:
            raise UsageProblem(f"--node-exporter {explicit}: nothing answers on http://{explicit}/metrics") from None
        return None


def _python_child(app: AppConfig, log_level: str | None, *command: str) -> list[str]:
    level = ["--log-level", log_level] if log_level else []
    return [sys.executable, "-m", "trading_ops", "--config", str(app.path), *level, *command]


def _check_ports(ports: Ports, roles: list[str]) -> None:
    values = [ports.bot, ports.reconciler, ports.prometheus, ports.alertmanager]
    if any(not 1 <= p <= 65535 for p in values):
        raise UsageProblem(f"ports must be between 1 and 65535, got {values}")
    if len(set(values)) != len(values):
        raise UsageProblem(f"two parts of the stack would share a port: {values}")
    for role in roles:
        port = getattr(ports, role)
        if not _port_free(port):
            name = CHILD_OF_ROLE[role]
            raise UsageProblem(
                f"port {port} ({name}) is in use on {HOST}: free it or pass --{role}-port or --base-port"
            )


def bot_command(kind: str, app: AppConfig, log_level: str | None) -> tuple[str, list[str]]:
    """(child name, command line) of the bot of `kind`: the built-in paper bot, or one of the configuration's
    bot_kinds. Raises UsageProblem for a kind neither knows."""
    if kind == DEFAULT_BOT_KIND:
        return WORKLOAD, _python_child(app, log_level, "paper-bot", "--chaos")
    command = app.config.bot_kinds.get(kind)
    if command is None:
        known = ", ".join(sorted({DEFAULT_BOT_KIND, *app.config.bot_kinds}))
        raise UsageProblem(f"--bot {kind}: unknown bot kind (known: {known}; add one under bot_kinds:)")
    values = {"python": sys.executable, "config": str(app.path)}
    try:
        return f"{kind}-bot", [part.format(**values) for part in command]
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageProblem(f"bot_kinds.{kind}: only {{python}} and {{config}} may be filled in ({exc})") from None


def _children(
    options: UpOptions, app: AppConfig, layout: Layout, prom: binaries.Binary, am: binaries.Binary
) -> list[Child]:
    ports = options.ports
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workload, command = bot_command(options.bot_kind, app, options.log_level)
    children = [
        Child(
            workload,
            command,
            layout.log(workload),
            f"{ports.url('bot')}/healthz",
            app.config.recovery.shutdown_deadline_seconds + BOT_STOP_GRACE_SECONDS,
            env,
        ),
        Child(
            "reconciler",
            _python_child(app, options.log_level, "reconciler"),
            layout.log("reconciler"),
            f"{ports.url('reconciler')}/readyz",
            RECONCILER_STOP_SECONDS,
            env,
        ),
    ]
    if am.path:
        argv = [
            am.path,
            f"--config.file={layout.alertmanager_config}",
            f"--storage.path={layout.data('alertmanager')}",
            f"--web.listen-address={ports.address('alertmanager')}",
            f"--web.external-url={ports.url('alertmanager')}",
            "--cluster.listen-address=",  # a single local instance: no gossip port
            "--log.level=info",
        ]
        children.append(
            Child(
                "alertmanager",
                argv,
                layout.log("alertmanager"),
                f"{ports.url('alertmanager')}/-/ready",
                SERVER_STOP_SECONDS,
            )
        )
    if prom.path:
        argv = [
            prom.path,
            f"--config.file={layout.prometheus_config}",
            f"--storage.tsdb.path={layout.data('prometheus')}",
            f"--storage.tsdb.retention.time={PROMETHEUS_RETENTION}",
            f"--web.listen-address={ports.address('prometheus')}",
            # generatorURLs point here: the reconciler reads the alert's expression from them.
            f"--web.external-url={ports.url('prometheus')}",
            "--web.enable-lifecycle",  # POST /-/reload picks up edited rules (standard profile: the repo's files)
            "--log.level=info",
        ]
        if options.profile.alert_resend_delay is not None:
            argv.append(f"--rules.alert.resend-delay={format_duration(options.profile.alert_resend_delay)}")
        children.append(
            Child(
                "prometheus", argv, layout.log("prometheus"), f"{ports.url('prometheus')}/-/ready", SERVER_STOP_SECONDS
            )
        )
    return children


def prepare(options: UpOptions) -> Stack:
    """Everything before a process starts: ports, configurations, tokens, database, binaries."""
    prom, am = binaries.find("prometheus"), binaries.find("alertmanager")
    roles = ["bot", "reconciler"] + [b.server for b in (prom, am) if b.path]
    _check_ports(options.ports, roles)
    try:
        repo = find_repo(options.repo)
    except MonitoringConfigError as exc:
        raise UsageProblem(str(exc)) from exc
    layout = Layout(options.state_dir.resolve())
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    source = options.config_path or (DEFAULT_CONFIG_PATH if Path(DEFAULT_CONFIG_PATH).exists() else None)
    app = build_app_config(Path(source) if source else None, layout, options.ports, options.bot_kind)
    bot_command(options.bot_kind, app, options.log_level)  # an unknown kind before anything is written
    try:
        rendered_am = render_alertmanager(repo, options.ports, options.profile, app.reconciler_token_file)
        node_exporter = _node_exporter(options.node_exporter)
        rendered_prom = render_prometheus(repo, options.ports, options.profile, layout, node_exporter)
    except MonitoringConfigError as exc:
        raise UsageProblem(str(exc)) from exc
    write_alertmanager(rendered_am, layout, repo, options.profile)
    write_prometheus(rendered_prom, layout, repo, options.profile)
    migrate.upgrade(app.config.database_url())
    children = _children(options, app, layout, prom, am)
    return Stack(
        layout,
        options.ports,
        options.profile,
        app,
        children,
        [b for b in (prom, am) if not b.path],
        rendered_prom.notes + rendered_am.notes,
        children[0].name,
    )


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _banner(stack: Stack) -> list[str]:
    ports, layout = stack.ports, stack.layout
    running = {c.name for c in stack.children}
    rows = [
        ("bot", stack.workload, f"{ports.url('bot')}  (/metrics, /healthz, /readyz, POST /control/<command>)"),
        ("reconciler", "reconciler", f"{ports.url('reconciler')}/api/v1/episodes"),
        ("prometheus", "prometheus", f"{ports.url('prometheus')}/alerts"),
        ("alertmanager", "alertmanager", ports.url("alertmanager")),
    ]
    out = [f"trading-ops local stack is up (profile {stack.profile.name}):"]
    for label, name, url in rows:
        out.append(f"  {label:<13} {url if name in running else 'not running (binary missing)'}")
    out.append(f"  logs          {layout.logs_dir}/")
    out.append(f"  config        {stack.app.path}")
    out.append(f"inject a fault: trading-ops --config {stack.app.path} chaos drop_connection  (see chaos --help)")
    out.append("Ctrl-C stops everything.")
    return out


async def _stop_all(children: Sequence[Child], printer: StatusPrinter, workload: str = WORKLOAD) -> bool:
    """Stop the pipeline first (nothing reacts to the bot going away), then the bot; True if all stopped on
    SIGTERM."""
    by_name = {c.name: c for c in children}
    phases = [[c for c in children if c.name != workload], [c for c in [by_name.get(workload)] if c]]
    clean = True
    for phase in phases:
        running = [c for c in phase if c.running()]
        if running:
            printer.message(f"stopping {', '.join(c.name for c in running)} ...")
        codes = await asyncio.gather(*(c.stop() for c in phase))
        for child, code in zip(phase, codes, strict=True):
            if child.proc is None:
                continue
            how = describe_exit(code) + (" after SIGKILL (did not stop on SIGTERM)" if child.killed else "")
            printer.message(f"  {child.name} (pid {child.pid}) {how}")
            clean = clean and not child.killed
    return clean


async def _watch(
    stack: Stack, session: aiohttp.ClientSession, stop: asyncio.Event, printer: StatusPrinter, interval: float
) -> int:
    """Refresh the status line until `stop`; returns 1 as soon as a pipeline child dies."""
    token_file = stack.app.read_token_file
    read_token = token_file.read_text(encoding="utf-8").strip() if token_file else ""
    ports, names = stack.ports, {c.name for c in stack.children}
    reported: set[str] = set()
    code = EXIT_OK
    while not stop.is_set():
        for child in stack.children:
            if child.name in reported or child.running() or child.stopping:
                continue
            reported.add(child.name)
            code = EXIT_FAILURE
            printer.message(
                f"!!! {child.name} (pid {child.pid}) {describe_exit(child.returncode)} unexpectedly; "
                f"last lines of {child.log_path}:\n{_tail(child.log_path)}"
            )
            if child.name != stack.workload:
                printer.message(f"!!! the alerting pipeline is broken without {child.name}: stopping the stack")
                return EXIT_FAILURE
            printer.message(
                "!!! the rest keeps running: watch TradingBotDown fire and the reconciler act and escalate; "
                "Ctrl-C and `trading-ops up` again to restart the bot"
            )
        snap = await fetch(
            session,
            ports.url("alertmanager") if "alertmanager" in names else None,
            ports.url("prometheus") if "prometheus" in names else None,
            ports.url("reconciler"),
            read_token,
        )
        snap.down = sorted(reported)
        printer.show(render(snap))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()
    return code


async def supervise(stack: Stack, options: UpOptions, printer: StatusPrinter) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(sig: int) -> None:
        signals.append(sig)
        if len(signals) > 1:  # a second Ctrl-C: no more waiting
            printer.message("second signal: killing every child now")
            for child in stack.children:
                child.kill_now()
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    code = EXIT_OK
    try:
        for child in stack.children:
            child.start()
            printer.message(f"started {child.name}: pid {child.pid}, log {child.log_path}")
        async with aiohttp.ClientSession() as session:
            try:
                ready = await wait_healthy(session, stack.children, options.ready_timeout, stop)
            except StartupFailed as exc:
                printer.message(
                    f"!!! trading-ops up: {exc}; last lines of {exc.child.log_path}:\n{_tail(exc.child.log_path)}"
                )
                ready, code = False, EXIT_FAILURE
            if ready:
                for line in _banner(stack):
                    printer.message(line)
                interval = options.status_interval or (TTY_STATUS_SECONDS if printer.tty else PIPE_STATUS_SECONDS)
                code = await _watch(stack, session, stop, printer, interval)
    finally:
        clean = await _stop_all(stack.children, printer, stack.workload)
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    if code == EXIT_OK and not clean:
        code = EXIT_FAILURE
    printer.message("stack stopped" + ("" if code == EXIT_OK else " (exit 1: see above)"))
    return code


def run(options: UpOptions) -> int:
    """Prepare and run the stack until Ctrl-C/SIGTERM; raises UsageProblem for exit 2."""
    printer = StatusPrinter()
    stack = prepare(options)
    for binary in stack.missing:
        printer.message(f"!!! {binary.install_hint}; starting the rest")
    for note in stack.notes:
        printer.message(f"note: {note}")
    printer.message(f"profile {stack.profile.name}: {stack.profile.summary}")
    return asyncio.run(supervise(stack, options, printer))
