"""`trading-ops up`: render the stack's configurations, start the children, watch them, stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import sysconfig
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from trading_ops.config import DEFAULT_CONFIG_PATH, Config
from trading_ops.db import migrate
from trading_ops.durations import format_duration, parse_duration
from trading_ops.paper.bot import VENUE_STATE_FILE
from trading_ops.stack import binaries, freqtrade_bot
from trading_ops.stack.alertmanager_config import RenderedAlertmanager, render_alertmanager, write_alertmanager
from trading_ops.stack.app_config import (
    FREQTRADE_BOT_KIND,
    GATEWAY_BOT_KIND,
    SQLITE_PREFIX,
    AppConfig,
    build_app_config,
)
from trading_ops.stack.health import StartupFailed, wait_healthy
from trading_ops.stack.layout import (
    ALERTMANAGER_ROLES,
    FLEET_START_SECONDS,
    GOSSIP_ROLE,
    HOST,
    MAX_ALERTMANAGERS,
    MAX_BOTS,
    Layout,
    Ports,
    alertmanager_roles,
    bot_ports,
    child_name,
    port_option,
)
from trading_ops.stack.profiles import Profile
from trading_ops.stack.prometheus_config import RenderedPrometheus, render_prometheus, write_prometheus
from trading_ops.stack.repo import MonitoringConfigError, find_repo
from trading_ops.stack.service import NotifySocket, Service, ServicePolicy
from trading_ops.stack.stack_lock import StackLock, StackRunning
from trading_ops.stack.stackctl_server import Server as StackctlServer
from trading_ops.stack.status import StatusPrinter, fetch, loss_limit_notes, render
from trading_ops.stack.supervisor import Child, describe_exit
from trading_ops.stack.units import (
    FREQTRADE_SIDECAR_UNIT,
    FREQTRADE_SIDECAR_UNIT_FILE,
    PAPER_BOT_UNIT_FILE,
    RECONCILER_UNIT,
    RECONCILER_UNIT_FILE,
    UnitFileError,
    read_policy,
    server_policy,
)
from trading_ops.tasks import stop_tasks

EXIT_OK, EXIT_FAILURE = 0, 1
# Where a node exporter is looked for when --node-exporter is not given.
NODE_EXPORTER = f"{HOST}:9100"
NODE_EXPORTER_PROBE_SECONDS = 0.5
SERVER_STOP_SECONDS = 10.0
RECONCILER_STOP_SECONDS = 15.0
# The bot gets its own graceful-shutdown deadline (recovery.shutdown_deadline_seconds) plus this much.
BOT_STOP_GRACE_SECONDS = 5.0
LOG_TAIL_LINES = 20
BANNER_LABEL_WIDTH = 13  # "  prometheus    http://..."; a longer label (alertmanager-2) widens every row
STOPPING_NAMES_SHOWN = 5  # "stopping ccxt-1, ccxt-2, ccxt-3, ccxt-4, ccxt-5, ... (20 in all) ..."
# Status refresh: every second on a terminal; every 2 s otherwise (a line is printed only when it changes).
TTY_STATUS_SECONDS = 1.0
PIPE_STATUS_SECONDS = 2.0
# Prometheus keeps what docs/readiness.md's commands judge on the stack: the verdict's window (readiness.window, 5d),
# the emergency stop's (7d), every ramp stage's, and the page's own `--window 7d`, with a day to spare; never less
# than 2 days (a development stack: the state dir stays small, about 100 MB a week for the paper bot).
PROMETHEUS_MIN_RETENTION_DAYS = 2
DAY_SECONDS = 86400
READINESS_PAGE_WINDOW = "7d"
# The bot is the workload the stack watches. Every child runs as its production systemd unit would (stack/service.py):
# restarted on failure, the bot watched by its watchdog. When the bot gives up (its start limit hit) the rest keeps
# running, so TradingBotDown, the reconciler's refused restart and its escalation can be watched; when any other
# child gives up, the pipeline itself is broken and the stack would show something misleading: everything stops.
WORKLOAD = "paper-bot"
# Prometheus starts once the others are healthy: it would otherwise scrape a bot still starting and fire a spurious
# TradingBotDown, and alerts it fires before it has found Alertmanager are dropped.
LAST_TO_START = ("prometheus",)
# The built-in bot kinds of `--bot`: `paper` (the paper bot with its fault injection) and `ccxt-gateway` (the example
# bot, examples/ccxt_bot.py, trading through ccxt on the paper gateway, a child of its own: the venue). `bot_kinds:`
# in the configuration adds others: KIND -> the bot's command line, with {python} and {config} (the stack's
# generated configuration) filled in.
DEFAULT_BOT_KIND = "paper"
BUILT_IN_KINDS = (DEFAULT_BOT_KIND, GATEWAY_BOT_KIND, FREQTRADE_BOT_KIND)
GATEWAY_WORKLOAD = "ccxt-bot"
EXAMPLE_BOT = Path("examples") / "ccxt_bot.py"
# The venue of the ccxt-gateway stack: like the bot, when it dies the rest keeps running (the bot's broker alerts
# are what a venue outage looks like); it starts first, healthy before the bot connects, and stops last, after the
# bot has canceled its orders on it.
VENUE = "paper-gateway"
GATEWAY_UNIT = "trading-ops-paper-gateway.service"
# `--bot freqtrade`: a real freqtrade on the paper gateway (a child of its own, its unit freqtrade.service: what the
# playbook's freqtrade rules restart) and its sidecar, the stack's workload (the bot port's /metrics and /control). Like
# the venue, freqtrade dying leaves the rest running (TradingBotFreqtradeDown and its restart are the demo); it starts
# after the venue and before its sidecar, and stops with the sidecar.
FREQTRADE = "freqtrade"
FREQTRADE_WORKLOAD = "freqtrade-sidecar"
# What listens on each port of the stack, as errors name it. The gossip ports (TCP and UDP) are the clustered pair's
# (`--alertmanagers 2`).
CHILD_OF_ROLE = {
    "bot": WORKLOAD,
    "reconciler": "reconciler",
    "prometheus": "prometheus",
    "alertmanager": "alertmanager",
    "gateway": VENUE,
    "freqtrade": FREQTRADE,
    "alertmanager_2": "alertmanager-2",
    "alertmanager_gossip": "alertmanager gossip",
    "alertmanager_2_gossip": "alertmanager-2 gossip",
}
GOSSIP_ROLES = frozenset(GOSSIP_ROLE.values())
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
    bots: int = 1  # --bots N: how many bots of bot_kind (more than one: ccxt-gateway only)
    bots_base_port: int | None = None  # --bots-base-port: the bots on P..P+N-1 (layout.bot_ports)
    alertmanagers: int = 1  # --alertmanagers N: one Alertmanager (no gossip), or production's clustered pair
    fresh: bool = False  # --fresh: the earlier runs' state removed before the start


@dataclass
class Stack:
    layout: Layout
    ports: Ports
    profile: Profile
    app: AppConfig
    children: list[Child]
    missing: list[binaries.Binary]
    notes: list[str]
    # The bot children, in the order of the bots: list: when one gives up, the rest keeps running.
    workloads: list[str] = field(default_factory=lambda: [WORKLOAD])
    venue: str | None = None  # the gateway child of the ccxt-gateway and freqtrade stacks: likewise
    bot_process: str | None = None  # the freqtrade child of the freqtrade stack (its sidecar is the workload): likewise
    services: list[Service] = field(default_factory=list)  # one per child, in the same order
    notify: NotifySocket | None = None
    # The Alertmanager children that run (child name -> its port name), in the order of the members: one, or a
    # clustered pair.
    alertmanagers: dict[str, str] = field(default_factory=dict)

    def survives_without(self, name: str, failed: set[str]) -> bool:
        """Whether the stack keeps running once the child `name` gave up (`failed`: every child that has, `name`
        included): without the bots and their venue, and without a member of the Alertmanager pair while another
        member still runs (Prometheus and the reconciler reach the other one, as in production)."""
        if name in self.workloads or name in (self.venue, self.bot_process):
            return True
        return name in self.alertmanagers and any(member not in failed for member in self.alertmanagers)

    @property
    def fleet(self) -> bool:
        """More than one bot: the status line and the banner count them rather than list them."""
        return len(self.workloads) > 1


def _port_free(port: int, udp: bool = False) -> bool:
    """Nothing listens on `port` over TCP (and over UDP too with `udp`: an Alertmanager gossip port takes both)."""
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
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


def _check_ports(ports: Ports, roles: list[str], fleet: list[int] | None = None) -> None:
    """Every port the stack will listen on is valid, its own and free. `fleet`: the bots' ports when they are not the
    stack's bot port (--bots N, --bots-base-port), named bot 1 ... bot N."""
    parts = [
        (CHILD_OF_ROLE[role], getattr(ports, role), f"{port_option(role)} or --base-port")
        for role in roles
        if not (fleet and role == "bot")
    ]
    fleet = fleet or []
    parts += [(f"bot {i} of {len(fleet)}", port, "--bots-base-port") for i, port in enumerate(fleet, 1)]
    gossip = {CHILD_OF_ROLE[role] for role in roles if role in GOSSIP_ROLES}
    for name, port, _ in parts:
        if not 1 <= port <= 65535:
            raise UsageProblem(f"ports must be between 1 and 65535: {name} would listen on {port}")
    taken: dict[int, str] = {}
    for name, port, _ in parts:
        if port in taken:
            raise UsageProblem(f"two parts of the stack would share port {port}: {taken[port]} and {name}")
        taken[port] = name
    for name, port, flags in parts:
        if not _port_free(port, udp=name in gossip):
            raise UsageProblem(f"port {port} ({name}) is in use on {HOST}: free it or pass {flags}")


def bot_command(
    kind: str, app: AppConfig, log_level: str | None, repo: Path | None = None, config: Path | None = None
) -> tuple[str, list[str]]:
    """(child name, command line) of the bot of `kind` with its configuration file `config` (default: the stack's):
    a built-in one (the paper bot; the example ccxt bot of the `repo` checkout), or one of the configuration's
    bot_kinds. Raises UsageProblem for a kind none knows."""
    config = config or app.path
    if kind == DEFAULT_BOT_KIND:
        return WORKLOAD, _python_child(app, log_level, "paper-bot", "--chaos")
    if kind == FREQTRADE_BOT_KIND:
        return FREQTRADE_WORKLOAD, _python_child(app, log_level, "freqtrade")
    if kind == GATEWAY_BOT_KIND:
        script = (repo or Path.cwd()) / EXAMPLE_BOT
        if not script.is_file():
            raise UsageProblem(f"--bot {kind}: no {EXAMPLE_BOT} in {script.parent.parent}: pass --repo")
        return GATEWAY_WORKLOAD, [sys.executable, str(script), str(config)]
    command = app.config.bot_kinds.get(kind)
    if command is None:
        known = ", ".join(sorted({*BUILT_IN_KINDS, *app.config.bot_kinds}))
        raise UsageProblem(f"--bot {kind}: unknown bot kind (known: {known}; add one under bot_kinds:)")
    values = {"python": sys.executable, "config": str(config)}
    try:
        return f"{kind}-bot", [part.format(**values) for part in command]
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageProblem(f"bot_kinds.{kind}: only {{python}} and {{config}} may be filled in ({exc})") from None


def children_path(path: str) -> str:
    """PATH for the children: this installation's scripts directory first when it holds `trading-ops`, so that a
    playbook's `exec` step `[trading-ops, upkeep, cleanup]` runs this trading-ops even where the virtualenv is not
    activated (`make run` calls .venv/bin/trading-ops directly)."""
    scripts = sysconfig.get_path("scripts")
    if not (Path(scripts) / "trading-ops").exists() or scripts in path.split(os.pathsep):
        return path
    return os.pathsep.join([scripts, path]) if path else scripts


def bot_names(kind: str, app: AppConfig, log_level: str | None, repo: Path | None = None) -> list[str]:
    """The bot children's names, in the order of the bots: list: a fleet's are its bots' names (ccxt-1 ...), one bot's
    its kind's (paper-bot, ccxt-bot, KIND-bot)."""
    if len(app.config.bots) > 1:
        return [b.name for b in app.config.bots]
    return [bot_command(kind, app, log_level, repo)[0]]


def _children(
    options: UpOptions, app: AppConfig, layout: Layout, prom: binaries.Binary, am: binaries.Binary, repo: Path
) -> list[Child]:
    ports = options.ports
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": children_path(os.environ.get("PATH", os.defpath))}
    children = []
    if options.bot_kind in (GATEWAY_BOT_KIND, FREQTRADE_BOT_KIND):  # first: the bot connects to it at its start
        children.append(
            Child(
                VENUE,
                _python_child(app, options.log_level, "paper-gateway"),
                layout.log(VENUE),
                f"{ports.url('gateway')}/0/public/Time",
                SERVER_STOP_SECONDS,
                env,
                healthy_first=True,
            )
        )
    if options.bot_kind == FREQTRADE_BOT_KIND:  # then freqtrade, answering before its sidecar polls it
        children.append(
            Child(
                FREQTRADE,
                freqtrade_bot.command(layout),
                layout.log(FREQTRADE),
                freqtrade_bot.health_url(ports),
                freqtrade_bot.STOP_SECONDS,
                freqtrade_bot.environment(app, env),
                healthy_first=True,
            )
        )
    names = bot_names(options.bot_kind, app, options.log_level, repo)
    configs = app.bot_configs or (app.path,)
    for name, entry, config in zip(names, app.config.bots, configs, strict=True):
        _, command = bot_command(options.bot_kind, app, options.log_level, repo, config)
        stop = app.config.recovery.shutdown_deadline_seconds + BOT_STOP_GRACE_SECONDS
        children.append(Child(name, command, layout.log(name), f"{entry.url}/healthz", stop, env))
    children += [
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
        children += _alertmanagers(am.path, options, layout)
    if prom.path:
        argv = [
            prom.path,
            f"--config.file={layout.prometheus_config}",
            f"--storage.tsdb.path={layout.data('prometheus')}",
            f"--storage.tsdb.retention.time={prometheus_retention(app.config)}",
            f"--web.listen-address={ports.address('prometheus')}",
            # generatorURLs (the links in Alertmanager's UI and in pages) point here. The reconciler never reads them:
            # it takes an alert's expression from this Prometheus's rules API.
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


def _alertmanagers(binary: str, options: UpOptions, layout: Layout) -> list[Child]:
    """The Alertmanager children: one, or the members of a clustered pair (alertmanager, alertmanager-2), each with
    its own port, storage and log, all reading the one generated alertmanager.yml as production's members do."""
    ports, members = options.ports, alertmanager_roles(options.alertmanagers)
    children = []
    for role in members:
        name = child_name(role)
        argv = [
            binary,
            f"--config.file={layout.alertmanager_config}",
            f"--storage.path={layout.data(name)}",
            f"--web.listen-address={ports.address(role)}",
            f"--web.external-url={ports.url(role)}",
            *_cluster_flags(role, members, ports, options.profile),
            "--log.level=info",
        ]
        children.append(Child(name, argv, layout.log(name), f"{ports.url(role)}/-/ready", SERVER_STOP_SECONDS))
    return children


def _cluster_flags(role: str, members: Sequence[str], ports: Ports, profile: Profile) -> list[str]:
    """Alertmanager's gossip flags for the member `role` of `members`: clustering off and no gossip port for one
    Alertmanager; in a pair, its own gossip port (Alertmanager advertises the loopback address it listens on), every
    other member's as a peer to join (a member started before its peer, or restarted, joins once the peer answers:
    Alertmanager retries an initial peer every --cluster.reconnect-interval), and the profile's cluster timings."""
    if len(members) == 1:
        return ["--cluster.listen-address="]
    flags = [f"--cluster.listen-address={ports.address(GOSSIP_ROLE[role])}"]
    flags += [f"--cluster.peer={ports.address(GOSSIP_ROLE[other])}" for other in members if other != role]
    return flags + profile.cluster_flags()


def prepare(options: UpOptions) -> Stack:
    """Everything before a process starts: ports, configurations, tokens, database, binaries."""
    prom, am = binaries.find("prometheus"), binaries.find("alertmanager")
    members, roles = _stack_roles(options, prom, am)
    listen = bot_ports(options.ports, options.bots, options.bots_base_port, len(members))
    fleet = listen if options.bots > 1 or options.bots_base_port is not None else None
    _check_ports(options.ports, roles, fleet)
    try:
        repo = find_repo(options.repo)
    except MonitoringConfigError as exc:
        raise UsageProblem(str(exc)) from exc
    layout = Layout(options.state_dir.resolve())
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    source = options.config_path or (DEFAULT_CONFIG_PATH if Path(DEFAULT_CONFIG_PATH).exists() else None)
    peers = [options.ports.url(role) for role in members[1:]]
    earlier_bots = bots_of_earlier_run(layout)  # before this run's configuration replaces the earlier one's
    app = build_app_config(
        Path(source) if source else None, layout, options.ports, options.bot_kind, options.profile, listen, peers
    )
    bot_command(options.bot_kind, app, options.log_level, repo)  # an unknown kind before anything is written
    rendered_am, rendered_prom = _render_monitoring(options, repo, layout, app, members)
    urls = app.database_urls or (app.config.database_url(),)
    ghosts = [] if options.fresh else _drop_ghosts(layout, earlier_bots, app)
    state_notes = [*app.notes, *ghosts, *_earlier_state(options, layout, app, urls)]
    write_alertmanager(rendered_am, layout, repo, options.profile)
    write_prometheus(rendered_prom, layout, repo, options.profile)
    if options.bot_kind == FREQTRADE_BOT_KIND:
        freqtrade_bot.write_config(app.config, layout, options.ports, options.profile)
    for url in urls:
        migrate.upgrade(url)
    children = _children(options, app, layout, prom, am, repo)
    names = {c.name for c in children}
    stack = Stack(
        layout,
        options.ports,
        options.profile,
        app,
        children,
        [b for b in (prom, am) if not b.path],
        state_notes + rendered_prom.notes + rendered_am.notes,
        bot_names(options.bot_kind, app, options.log_level, repo),
        VENUE if VENUE in names else None,
        FREQTRADE if FREQTRADE in names else None,
        alertmanagers={child_name(role): role for role in members},
    )
    stack.notify = NotifySocket(f"trading-ops-notify-{os.getpid()}")
    try:
        policies = {c.name: _policy(c, stack) for c in children}
    except UnitFileError as exc:
        stack.notify.close()
        raise UsageProblem(str(exc)) from exc
    stack.services = [Service(c, policies[c.name], stack.notify) for c in children]
    return stack


def _stack_roles(options: UpOptions, prom: binaries.Binary, am: binaries.Binary) -> tuple[tuple[str, ...], list[str]]:
    """The Alertmanager members and every role that needs a port, for the options (checked: a bad count or a missing
    freqtrade is bad usage)."""
    if not 1 <= options.alertmanagers <= MAX_ALERTMANAGERS:
        raise UsageProblem(
            f"--alertmanagers must be 1 or {MAX_ALERTMANAGERS} (a clustered pair), got {options.alertmanagers}"
        )
    members = alertmanager_roles(options.alertmanagers) if am.path else ()
    roles = ["bot", "reconciler"] + (["prometheus"] if prom.path else []) + list(members)
    if len(members) > 1:
        roles += [GOSSIP_ROLE[role] for role in members]
    if options.bot_kind in (GATEWAY_BOT_KIND, FREQTRADE_BOT_KIND):
        roles.append("gateway")
    if options.bot_kind == FREQTRADE_BOT_KIND:
        roles.append("freqtrade")
        try:
            freqtrade_bot.freqtrade_binary()
        except freqtrade_bot.FreqtradeMissing as exc:
            raise UsageProblem(f"--bot {FREQTRADE_BOT_KIND}: {exc}") from None
    if not 1 <= options.bots <= MAX_BOTS:
        raise UsageProblem(f"--bots must be between 1 and {MAX_BOTS}, got {options.bots}")
    if options.bots > 1 and options.bot_kind != GATEWAY_BOT_KIND:
        raise UsageProblem(
            f"--bots {options.bots}: a fleet of bots runs on the paper gateway: add --bot {GATEWAY_BOT_KIND}"
        )
    return members, roles


def _render_monitoring(
    options: UpOptions, repo: Path, layout: Layout, app: AppConfig, members: Sequence[str]
) -> tuple[RenderedAlertmanager, RenderedPrometheus]:
    """Alertmanager's and Prometheus's configurations for the stack, rendered (not yet written)."""
    try:
        rendered_am = render_alertmanager(repo, options.ports, options.profile, app.reconciler_token_file)
        node_exporter = _node_exporter(options.node_exporter)
        instances = [b.instance for b in app.config.bots if b.kind != FREQTRADE_BOT_KIND]
        rendered_prom = render_prometheus(
            repo,
            options.ports,
            options.profile,
            layout,
            node_exporter,
            instances,
            [options.ports.address(role) for role in members],
            [b.instance for b in app.config.bots if b.kind == FREQTRADE_BOT_KIND],
        )
    except MonitoringConfigError as exc:
        raise UsageProblem(str(exc)) from exc
    return rendered_am, rendered_prom


def _earlier_state(options: UpOptions, layout: Layout, app: AppConfig, urls: Sequence[str]) -> list[str]:
    """What earlier runs left: removed with --fresh, else carried over; the notes saying which."""
    earlier = state_of_earlier_runs(layout, urls, app.config)
    notes = []
    if earlier and options.fresh:
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if app.config.gateway.state_file and options.bot_kind in (GATEWAY_BOT_KIND, FREQTRADE_BOT_KIND):
            # The gateway's state directory, emptied: the gateway writes its venue there (it creates no directory).
            Path(app.config.gateway.state_file).parent.mkdir(parents=True, exist_ok=True)
        notes.append(f"--fresh: removed the earlier runs' state ({', '.join(map(str, earlier))})")
    elif earlier:
        notes.append(
            f"reusing the earlier runs' state ({', '.join(map(str, earlier))}): their episodes, cooldowns, spent "
            "budgets and alert history carry over; `up --fresh` (make run UP_ARGS=--fresh) starts from empty state"
        )
    if options.fresh and any(not url.startswith(SQLITE_PREFIX) for url in urls):
        notes.append("--fresh leaves a PostgreSQL database as it is: give the stack a new one to start empty")
    return notes


def bots_of_earlier_run(layout: Layout) -> set[tuple[str, str]]:
    """The bots (kind, instance) the earlier run's generated configuration named: none when there is none to read."""
    try:
        data = yaml.safe_load(layout.app_config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return set()
    bots = data.get("bots") if isinstance(data, dict) else None
    if not isinstance(bots, list):
        return set()
    return {(str(b.get("kind", "")), str(b.get("instance", ""))) for b in bots if isinstance(b, dict)}


def _drop_ghosts(layout: Layout, earlier: set[tuple[str, str]], app: AppConfig) -> list[str]:
    """Ghosts of the last run: Prometheus's data of an earlier run that ran other bots (another kind, other ports)
    holds their series, which the rules would read for minutes after the start (a heartbeat gone stale, a freqtrade
    down) and the reconciler would act on. That data is removed before Prometheus starts; the note says so."""
    now = {(b.kind, b.instance) for b in app.config.bots}
    data = layout.data("prometheus")
    if not earlier or earlier == now or not data.exists():
        return []
    shutil.rmtree(data)
    kinds = ", ".join(sorted({kind for kind, _ in earlier}))
    where = ", ".join(sorted({instance for _, instance in earlier}))
    return [
        f"stale state from a run of {kinds} ({where}): removed its Prometheus data ({data}), so the series of bots "
        "this stack does not run fire no alert and the reconciler acts on none (`up --fresh` removes all earlier state)"
    ]


def state_of_earlier_runs(layout: Layout, database_urls: Sequence[str], config: Config) -> list[Path]:
    """What earlier runs of the stack left that this one would carry on from: the SQLite databases (the reconciler's
    ledger, the bots' journals), Prometheus's and Alertmanager's data, the gateway's venue and the paper bot's venue
    book. Only files the stack itself writes; a PostgreSQL database is never among them."""
    paths = [Path(url[len(SQLITE_PREFIX) :]) for url in database_urls if url.startswith(SQLITE_PREFIX)]
    paths = [p for db in paths for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))]
    paths += [layout.data(child) for child in ("prometheus", *map(child_name, ALERTMANAGER_ROLES))]
    gateway = (
        layout.gateway_state.parent
    )  # created (empty) with the configuration: an earlier run's only once it holds a file
    if gateway.is_dir() and any(gateway.iterdir()):
        paths.append(gateway)
    trades = Path(freqtrade_bot.database_url(layout)[len(SQLITE_PREFIX) :])  # the freqtrade's trades (--bot freqtrade)
    paths += [trades, trades.with_name(trades.name + "-wal"), trades.with_name(trades.name + "-shm")]
    paths.append(Path(config.bot.data_dir) / f"{config.bot.name}-{VENUE_STATE_FILE}")
    return [p for p in paths if p.exists() and p != Path(":memory:")]


def _policy(child: Child, stack: Stack) -> ServicePolicy:
    """How production's systemd runs this child: the bot as its unit file says (Type=notify, WatchdogSec, Restart,
    start limit) under the unit name the bots: list gives it; the reconciler as its unit; the servers as Debian's."""
    profile = stack.profile
    if child.name == FREQTRADE_WORKLOAD:
        return read_policy(FREQTRADE_SIDECAR_UNIT_FILE, FREQTRADE_SIDECAR_UNIT, profile)
    if child.name == stack.bot_process:
        return ServicePolicy(unit=freqtrade_bot.FREQTRADE_UNIT, restart_seconds=profile.shortened(5.0, 1.0))
    if child.name in stack.workloads:
        unit = stack.app.config.bots[stack.workloads.index(child.name)].systemd_unit
        return read_policy(PAPER_BOT_UNIT_FILE, unit, profile)
    if child.name == "reconciler":
        return read_policy(RECONCILER_UNIT_FILE, RECONCILER_UNIT, profile)
    if child.name == stack.venue:
        return ServicePolicy(unit=GATEWAY_UNIT, restart_seconds=profile.shortened(5.0, 1.0))
    return server_policy(child.name)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def in_force(config: Config) -> str:
    """One line: the settings of the stack's (first) bot and reconciler that the demo's promises depend on, as they
    are in force after the profile and the configuration file are combined."""
    fmt = format_duration
    loss = config.bot.risk.daily_loss_limit
    where = "bot.risk"
    if loss is None and config.bot.venue == "paper":
        loss, where = config.paper.daily_loss_limit, "paper"
    budgets = config.reconciler.budgets
    return (
        f"in force: daily loss limit {f'{loss:g} ({where}.daily_loss_limit)' if loss else 'none'}, "
        f"recovery.crash_timeout_seconds {fmt(config.recovery.crash_timeout_seconds)}, "
        f"recovery.reconcile_interval_seconds {fmt(config.recovery.reconcile_interval_seconds)}, "
        f"reconciler budget {budgets.max_actions_per_target_per_hour} actions per target "
        f"and {budgets.max_actions_per_hour} in all per hour"
    )


def prometheus_retention(config: Config) -> str:
    """The stack's Prometheus retention, in whole days: the longest window the readiness page judges, and a day more."""
    windows = [
        config.readiness.window,
        config.readiness.emergency_stop_within,
        READINESS_PAGE_WINDOW,
        *(stage.window for stage in config.bot.ramp.stages if stage.window),
    ]
    longest = max(parse_duration(w) for w in windows)
    return f"{max(PROMETHEUS_MIN_RETENTION_DAYS, math.ceil(longest / DAY_SECONDS) + 1)}d"


def _banner(stack: Stack) -> list[str]:
    ports, layout = stack.ports, stack.layout
    running = {c.name for c in stack.children}
    api = "(/metrics, /healthz, /readyz, POST /control/<command>)"
    bots = stack.app.config.bots
    bot_row = ("bot", stack.workloads[0], f"{bots[0].url}  {api}")
    if stack.fleet:
        first, last = bots[0], bots[-1]
        where = f"{first.name} .. {last.name} on {first.url} .. {last.instance.rpartition(':')[2]}"
        bot_row = ("bots", stack.workloads[0], f"{len(bots)}: {where}  {api}")
    rows = [
        bot_row,
        ("reconciler", "reconciler", f"{ports.url('reconciler')}/api/v1/episodes"),
        ("console", "reconciler", f"{ports.url('reconciler')}/ui/  {_console_login(stack.app)}"),
        ("prometheus", "prometheus", f"{ports.url('prometheus')}/alerts"),
        *_alertmanager_rows(stack),
    ]
    if stack.venue:
        counter = stack.app.config.gateway.call_counter
        tier = "" if counter == "off" else f"; call counter of Kraken's {counter} tier"
        rows.insert(
            1, ("venue", stack.venue, f"{ports.url('gateway')}  (Kraken's REST API over the paper venue{tier})")
        )
    if stack.bot_process:
        rows[0] = ("sidecar", stack.workloads[0], f"{bots[0].url}  {api}")
        password = stack.app.freqtrade_secrets_file("FREQTRADE__API_SERVER__PASSWORD")
        rows.insert(
            0,
            (
                "freqtrade",
                stack.bot_process,
                f"{ports.url('freqtrade')}  (its REST API: user freqtrader, password in {password}; "
                f"config {freqtrade_bot.config_path(layout)})",
            ),
        )
    out = [f"trading-ops local stack is up (profile {stack.profile.name}):"]
    width = max(BANNER_LABEL_WIDTH, *(len(label) + 1 for label, _, _ in rows))
    for label, name, url in rows:
        shown, *more = url.split("\n") if name in running else ["not running (binary missing)"]
        out.append(f"  {label:<{width}} {shown}")
        out.extend(f"  {'':<{width}} {line}" for line in more)  # a row's further lines (the console's logins)
    out.append(f"  {'logs':<{width}} {layout.logs_dir}/")
    out.append(f"  {'config':<{width}} {stack.app.path}")
    command = f"{self_command()} --config {shlex.quote(str(stack.app.path))}"
    # The paper bot breaks itself (its --chaos commands); the ccxt bot's and freqtrade's faults are the venue's, on
    # the gateway, and freqtrade's own (its process: stopped, hung, killed).
    chaos = "gateway-chaos" if stack.venue else "chaos"
    out.append(f"inject a fault: {command} {chaos} drop_connection  (see {chaos} --help)")
    if stack.bot_process:
        out.extend(_freqtrade_faults(stack, command))
    elif stack.venue:
        out.append(f"venue outage:   {command} gateway-chaos outage seconds=60  (every bot's connection, 60 s)")
    out.append(f"what it did:    {command} reconciler history")
    out.append(
        f"readiness:      {command} readiness {bots[0].name}  (docs/readiness.md; Prometheus keeps "
        f"{prometheus_retention(stack.app.config)})"
    )
    out.append(f"Ctrl-C stops everything (from another shell: kill -INT {os.getpid()}).")
    return out


async def _loss_limit_notes(stack: Stack, session: aiohttp.ClientSession) -> list[str]:
    """After the banner: each bot that started halted by a loss limit breached today, and what to do about it."""
    return await loss_limit_notes(session, [(bot.name, bot.url) for bot in stack.app.config.bots])


def shown_path(path: Path) -> str:
    """A path as the user's shell reaches it from where `up` runs: relative below the working directory."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _console_login(app: AppConfig) -> str:
    """How to log in to the operator console: the token files, one a line, each with what it lets a person do there
    (the one that approves, opens maintenance windows, also halts a bot, only looks)."""
    files = [
        (app.approve_token_file, "it approves"),
        (app.operate_token_file, "opens maintenance windows"),
        (app.destructive_token_file, "also halts a bot (Emergency halt)"),
        (app.read_token_file, "only looks"),
    ]
    listed = [f"{shown_path(path)}: {what}" for path, what in files if path is not None]
    people = " and ".join(name for name, _ in app.approvers)
    listed += [
        f"{shown_path(path)}: {name}'s own (approve; {people}: one asks for a promotion, the other approves it)"
        for name, path in app.approvers
    ]
    if app.approve_token_file is None and app.operate_token_file is None and app.destructive_token_file is None:
        return "(log in with a token of reconciler.api_tokens)" + "".join(f"\n{line}" for line in listed)
    return "(log in with the token in one of these files)" + "".join(f"\n{line}" for line in listed)


def _freqtrade_faults(stack: Stack, command: str) -> list[str]:
    """The banner's faults to try on freqtrade, each with the alert it fires and the packaged playbook's rule that heals
    it (after `inject a fault`: the venue drops freqtrade's connections, TradingBotBrokerDisconnected, broker-reconnect:
    the sidecar's reconnect starts a session with the venue, then freqtrade's reload_config)."""
    ctl = f"{self_command()} stackctl --state-dir {shlex.quote(str(stack.layout.state_dir))}"
    pid = f"$({ctl} show {FREQTRADE} -p MainPID --value)"
    return [
        "                (TradingBotBrokerDisconnected -> broker-reconnect: the sidecar's reconnect, freqtrade's "
        "reload_config)",
        f"rate limited:   {command} gateway-chaos rate_limit seconds=30  (tradingbot_venue_errors_total"
        '{error_class="rate_limit"}; freqtrade backs off on its own)',
        f"freqtrade hung: kill -STOP {pid}  (TradingBotFreqtradeDown -> freqtrade-restart: stackctl restart "
        f"{freqtrade_bot.FREQTRADE_UNIT})",
        f"venue outage:   {command} gateway-chaos outage seconds=60  (TradingBotBrokerDisconnected; the reconnect "
        "waits for the venue, then escalates)",
    ]


def _alertmanager_rows(stack: Stack) -> list[tuple[str, str, str]]:
    """The banner's Alertmanager rows: its URL, or each member of the pair with its gossip address."""
    ports, members = stack.ports, stack.alertmanagers
    if len(members) < MAX_ALERTMANAGERS:
        return [("alertmanager", "alertmanager", ports.url("alertmanager"))]
    rows = []
    for i, (name, role) in enumerate(members.items(), 1):
        member = f"cluster member {i} of {len(members)}, gossip {ports.address(GOSSIP_ROLE[role])}"
        rows.append((name, name, f"{ports.url(role)}  ({member})"))
    return rows


def self_command() -> str:
    """This trading-ops as the user's shell can run it: `trading-ops` when that is what PATH finds, else the console
    script's path (`.venv/bin/trading-ops` under `make run`), else `python -m trading_ops`."""
    script = Path(sys.argv[0])
    if script.name == "trading-ops" and script.exists():
        found = shutil.which("trading-ops")
        if found and Path(found).resolve() == script.resolve():
            return "trading-ops"
        absolute = script.absolute()
        with contextlib.suppress(ValueError):
            return shlex.quote(str(absolute.relative_to(Path.cwd())))
        return shlex.quote(str(absolute))
    return f"{shlex.quote(sys.executable)} -m trading_ops"


async def _stop_all(
    services: Sequence[Service],
    printer: StatusPrinter,
    workloads: Sequence[str] = (WORKLOAD,),
    venue: str | None = None,
    leaving_first: Sequence[str] = (),
    bot_process: str | None = None,
) -> bool:
    """Stop the pipeline first (nothing reacts to the bots going away), then the bots (together), then their venue
    (each bot cancels its orders there as it stops); no restarts any more; True if all stopped on SIGTERM.
    `bot_process`: freqtrade, stopped with its sidecar (the workload).
    `leaving_first`: the Alertmanager pair's members but the first, stopped before the rest of the pipeline. A member
    that stops leaves the cluster and waits until its leave has reached a peer: when its only peer leaves a moment
    before it, it waits 10 s in vain (memberlist) and outlasts its stop timeout; one after the other, each is quick."""
    bots = {*workloads, *([bot_process] if bot_process else [])}
    phases = [
        [s for s in services if s.child.name in leaving_first],
        [
            s
            for s in services
            if s.child.name not in bots and s.child.name != venue and s.child.name not in leaving_first
        ],
        [s for s in services if s.child.name in bots],
        [s for s in services if venue and s.child.name == venue],
    ]
    clean = True
    for phase in phases:
        running = [s for s in phase if s.child.running()]
        if running:
            names = ", ".join(s.child.name for s in running[:STOPPING_NAMES_SHOWN])
            if len(running) > STOPPING_NAMES_SHOWN:
                names += f", ... ({len(running)} in all)"
            printer.message(f"stopping {names} ...")
        codes = await asyncio.gather(*(s.close() for s in phase))
        for service, code in zip(phase, codes, strict=True):
            child = service.child
            if child.proc is None:
                continue
            how = describe_exit(code)
            if child.killed:
                how = (
                    f"{how} (SIGKILL: it did not stop on SIGTERM)"
                    if code != -signal.SIGKILL
                    else f"{how} (it did not stop on SIGTERM)"
                )
            printer.message(f"  {child.name} (pid {child.pid}) {how}")
            clean = clean and not child.killed
    return clean


async def _watch(
    stack: Stack, session: aiohttp.ClientSession, stop: asyncio.Event, printer: StatusPrinter, interval: float
) -> int:
    """Refresh the status line until `stop`; returns 1 as soon as a pipeline child gives up (its start limit hit).
    The services restart what fails on their own (stack/service.py); the bot giving up leaves the rest running."""
    token_file = stack.app.read_token_file
    read_token = token_file.read_text(encoding="utf-8").strip() if token_file else ""
    ports, names = stack.ports, {c.name for c in stack.children}
    reported: set[str] = set()
    while not stop.is_set():
        failed = {s.child.name for s in stack.services if s.state == "failed"}
        for service in stack.services:
            child = service.child
            if service.state != "failed":
                reported.discard(child.name)
                continue
            if child.name in reported:
                continue
            reported.add(child.name)
            printer.message(
                f"!!! {service.unit} failed ({service.result}): {child.name} is not restarted any more; "
                f"last lines of {child.log_path}:\n{_tail(child.log_path)}"
            )
            if not stack.survives_without(child.name, failed):
                printer.message(f"!!! the alerting pipeline is broken without {child.name}: stopping the stack")
                return EXIT_FAILURE
            ctl = f"{self_command()} stackctl --state-dir {shlex.quote(str(stack.layout.state_dir))}"
            watch = "TradingBotDown fire, the reconciler's restart be refused and the escalation page"
            if child.name in stack.alertmanagers:
                others = ", ".join(m for m in stack.alertmanagers if m not in failed)
                watch = f"alerts go through {others}, and TradingOpsAlertmanagerDown fire for {child.name}"
            elif child.name == stack.bot_process:
                watch = "TradingBotFreqtradeDown fire, the reconciler's restart of freqtrade.service fail and escalate"
            elif child.name not in stack.workloads:
                watch = "the bot's broker alerts fire and the reconciler act and escalate"
            elif stack.bot_process:
                watch = "TradingBotFreqtradeSidecarDown fire, the reconciler's restart of its unit fail and escalate"
            printer.message(
                f"!!! the rest keeps running: watch {watch}; once the cause is fixed: {ctl} reset-failed && "
                f"{ctl} restart {service.unit}"
            )
        snap = await fetch(
            session,
            [ports.url(role) for role in stack.alertmanagers.values()],
            ports.url("prometheus") if "prometheus" in names else None,
            ports.url("reconciler"),
            read_token,
        )
        down = [s.child.name for s in stack.services if s.state != "active"]
        if stack.fleet:  # counted, not listed: `bots: 20 (19 active, 1 not: ccxt-7)`
            snap.bots = len(stack.workloads)
            snap.bots_down = [name for name in down if name in stack.workloads]
            down = [name for name in down if name not in stack.workloads]
        snap.down = sorted(down)
        printer.show(render(snap))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()
    return EXIT_OK


async def _start_in_order(
    stack: Stack, session: aiohttp.ClientSession, stop: asyncio.Event, printer: StatusPrinter, timeout: float
) -> bool:
    """Start the children, Prometheus last, each phase healthy before the next; True once all are (False: stopped
    first). Raises StartupFailed: a child that exits while starting is not restarted, its configuration is wrong."""
    first = [s for s in stack.services if s.child.name not in LAST_TO_START]
    last = [s for s in stack.services if s.child.name in LAST_TO_START]
    for phase in (first, last):
        for service in phase:
            await service.start(wait=False)
            printer.message(f"started {service.child.name}: pid {service.child.pid}, log {service.child.log_path}")
            # A child the next ones need (the gateway: the venue the bot connects to) is healthy before they start.
            if service.child.healthy_first and not await wait_healthy(session, [service.child], timeout, stop):
                return False
        # Bots starting together share the CPU: a fleet's phase gets FLEET_START_SECONDS more per bot.
        bots = sum(s.child.name in stack.workloads for s in phase)
        deadline = timeout + FLEET_START_SECONDS * max(0, bots - 1)
        if phase and not await wait_healthy(session, [s.child for s in phase], deadline, stop):
            return False
    return True


async def supervise(stack: Stack, options: UpOptions, printer: StatusPrinter) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(sig: int) -> None:
        # Ctrl-C after a first stop signal: no more waiting. A SIGTERM (or SIGHUP) again is the same request once more:
        # `timeout make run`, or a kill of make's process group, reaches `up` both directly and through make, which
        # passes SIGTERM on to its recipe; a process manager that will not wait sends SIGKILL, not a second SIGTERM.
        signals.append(sig)
        if sig == signal.SIGINT and len(signals) > 1:
            printer.message("Ctrl-C again: killing every child now")
            for child in stack.children:
                child.kill_now()
        stop.set()

    def on_restart(child: Child) -> Callable[[], None]:
        # The same line as at the start, with the new pid.
        return lambda: printer.message(f"started {child.name}: pid {child.pid}, log {child.log_path}")

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    for service in stack.services:
        service.on_event = lambda message: printer.message(f"!!! {message}")
        service.on_restart = on_restart(service.child)
    if stack.notify is not None:
        stack.notify.serve(lambda pid: next((s for s in stack.services if s.child.pid == pid), None))
    ctl = StackctlServer(stack.services, stack.layout.state_dir, lambda line: printer.message(f"--- {line}"))
    watchers: list[asyncio.Task[None]] = []
    code = EXIT_OK
    try:
        await ctl.start()
        async with aiohttp.ClientSession() as session:
            try:
                ready = await _start_in_order(stack, session, stop, printer, options.ready_timeout)
            except StartupFailed as exc:
                printer.message(
                    f"!!! trading-ops up: {exc}; last lines of {exc.child.log_path}:\n{_tail(exc.child.log_path)}"
                )
                ready, code = False, EXIT_FAILURE
            if ready:
                watchers = [asyncio.create_task(s.run(), name=f"service-{s.unit}") for s in stack.services]
                for line in [*_banner(stack), *await _loss_limit_notes(stack, session)]:
                    printer.message(line)
                interval = options.status_interval or (TTY_STATUS_SECONDS if printer.tty else PIPE_STATUS_SECONDS)
                code = await _watch(stack, session, stop, printer, interval)
    except OSError as exc:  # the stackctl socket: another `up` with this state directory
        printer.message(f"!!! trading-ops up: cannot serve stackctl for {stack.layout.state_dir}: {exc}")
        code = EXIT_FAILURE
    finally:
        await stop_tasks(watchers)  # no restarts from here on
        clean = await _stop_all(
            stack.services, printer, stack.workloads, stack.venue, list(stack.alertmanagers)[1:], stack.bot_process
        )
        await ctl.close()
        if stack.notify is not None:
            stack.notify.close()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    if code == EXIT_OK and not clean:
        code = EXIT_FAILURE
    printer.message("stack stopped" + ("" if code == EXIT_OK else " (exit 1: see above)"))
    return code


def lock_state_dir(options: UpOptions) -> StackLock:
    """The state directory's lock, taken before anything is written (stack_lock.py); raises UsageProblem naming the
    stack that runs there."""
    lock = StackLock(options.state_dir)
    roles = ["bot", "reconciler", "prometheus", "alertmanager"]
    if options.bot_kind in (GATEWAY_BOT_KIND, FREQTRADE_BOT_KIND):
        roles.append("gateway")
    try:
        ports = ", ".join(f"{role} {getattr(options.ports, role)}" for role in roles)
        lock.acquire(f"bot {options.bot_kind}, ports {ports}")
    except StackRunning as exc:
        raise UsageProblem(str(exc)) from None
    return lock


def run(options: UpOptions) -> int:
    """Prepare and run the stack until Ctrl-C/SIGTERM; raises UsageProblem for exit 2."""
    _stack_roles(options, binaries.find("prometheus"), binaries.find("alertmanager"))  # bad usage: nothing written
    lock = lock_state_dir(options)
    try:
        return _run_locked(options)
    finally:
        lock.release()


def _run_locked(options: UpOptions) -> int:
    printer = StatusPrinter()
    stack = prepare(options)
    for binary in stack.missing:
        printer.message(f"!!! {binary.install_hint}; starting the rest")
    for note in stack.notes:
        printer.message(f"note: {note}")
    printer.message(f"profile {stack.profile.name}: {stack.profile.summary}")
    printer.message(in_force(stack.app.config))
    return asyncio.run(supervise(stack, options, printer))
