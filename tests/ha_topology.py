"""docs/deployment.md's highly available topology on test hosts (network namespaces, tests/netns_hosts.py), every part
real: ops-a and ops-b each run a Prometheus of the pair (the shipped rules at a profile; its `external_labels` and
`alerting` section as `trading-ops config render --replica` writes them: told apart, the label dropped from alerts,
both Alertmanagers with the shipped timeout), an Alertmanager of the pair (clustered; its file as `config render
--alertmanager ... --reconciler-replica ra=URL --reconciler-replica rb=URL` writes it, a receiver per replica, each
route to the reconciler once per replica, at the profile's timings; its pager receiver a receiver of the test's
own), a reconciler replica (both Prometheus and both Alertmanagers
named, the ledger's multi-host URL) and PostgreSQL under Patroni (`synchronous_mode: true`), each beside an etcd
member; ops-c runs the third etcd member (the vote). A bot host runs Debian's prometheus-node-exporter and the
example ccxt bot on the Kraken-compatible gateway (the one simulated thing), which listens in this namespace, as does
the pager.

The Debian parts (etcd, Patroni, PostgreSQL's server, Prometheus, Alertmanager, the node exporter) are this host's
Debian 12 binaries or, with `release` DEBIAN13, Debian 13's, run with chroot from a cached trixie root inside each
host's network namespace (tests/debian_parts.py); the project's Python (the reconciler replicas, the example bot, the
gateway) from the checkout's virtualenv either way.

A host is killed whole (`kill_host`: its link cut, every process in its namespace SIGKILLed) and brought back
(`revive_host`: its link up, its etcd, Patroni, reconciler, Alertmanager and Prometheus started again on their data).
Used by tests/deploy/test_ha_topology_e2e.py (fast and standard profiles) and benchmarks/deploy/bench_ha_topology.py
(standard profile); `run` stages the sequence both measure and returns what it took."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import yaml
from debian_parts import DEBIAN12, DebianParts, Release, debian_parts
from e2e_stack import packaged_playbook
from gateway_helpers import API_KEY, API_SECRET, SIDECAR_KEY, SIDECAR_SECRET, Gateway, start_gateway
from netns_hosts import Host, Network, host_network, ip
from polling import until
from reconciler_server import BOT_TOKEN, READ_AUTH, READ_TOKEN, TOKEN
from secret_file import write_secret
from system_binaries import REPO_ROOT

from trading_ops.commands.config_cmd import prometheus_config as render_prometheus
from trading_ops.commands.config_cmd import reconciler_replicas, rendered_alertmanager
from trading_ops.config.loader import parse_config
from trading_ops.db import migrate
from trading_ops.db.states import CLOSED_STATES
from trading_ops.durations import format_duration, parse_duration
from trading_ops.stack.alertmanager_config import KEPT_GLOBAL, tune_routes
from trading_ops.stack.profiles import Profile
from trading_ops.stack.prometheus_config import adapt_rules
from trading_ops.stack.repo import load_yaml

EXAMPLE = REPO_ROOT / "examples" / "ccxt_bot.py"
BOT = "kraken-1"
# The catalogue's ports: every host has an address of its own.
BOT_PORT, NODE_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT, GOSSIP_PORT = 9101, 9100, 9090, 9093, 9094
RECONCILER_PORT, PG_PORT, PATRONI_PORT, ETCD_PORT, ETCD_PEER_PORT = 9102, 5432, 8008, 2379, 2380
RECONCILER_RESTART_SECONDS = 2.0  # trading-ops-reconciler.service's RestartSec
BOT_RESTART_SECONDS = 5.0  # trading-ops-bot@.service's RestartSec
HOOK = "/api/v1/alertmanager"
DATABASE = "trading_ops"
# Patroni's shipped timings (docs/deployment.md; tests/patroni_cluster.py says why not shorter).
PATRONI_DCS = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10}
# A former primary that returns (docs/deployment.md, "A returning PostgreSQL member"): killed, it may hold WAL its
# standby never received, so its timeline forked from the promoted standby's before its own end, and PostgreSQL then
# refuses to follow the new primary for ever ("new timeline 2 forked off current database system timeline 1 before
# current recovery point"): the member runs, never streams, and never becomes the synchronous standby. Patroni
# rewinds it (pg_rewind, from the new primary) and, should that fail, copies it anew.
REJOIN_DCS = {"use_pg_rewind": True}
REJOIN_LOCAL = {"remove_data_directory_on_rewind_failure": True, "remove_data_directory_on_diverged_timelines": True}
# What a returning member's Patroni log says of its rejoin (Patroni's own lines and PostgreSQL's, which it logs).
REJOIN_MARKS = (
    "Local timeline=",
    "primary_timeline=",
    "primary: history=",
    "pg_rewind",
    "crash recovery",
    "removing",
    "reinitializ",
    "bootstrap from leader",
    "forked off",
    "requested WAL segment",
    "requested starting point",
)
SWITCH = {"timeout_seconds": 15, "refresh_interval_seconds": 5}
# The playbook's rules the sequence needs, as packaged (cooldown 0: the same bot's faults follow each other).
RULES = ["broker-reconnect", "bot-host-down", "bot-restart"]
OPS = ("a", "b")
# The measured path (the bot, its host's node exporter, the Prometheus pair) well ahead of the rest of a busy 2-core
# test machine (load averages of 30 from other work): at the fast profile a scrape times out after 0.8 s, and starved
# of CPU both the bot's and its node exporter's do, which TradingBotHostDown takes for a dead host (a false page no
# production host, a machine of its own, would see; at -5 it still came, twice in one run).
AHEAD = ("nice", "-n", "-15")


class Pager:
    """Where both Alertmanagers' pager receiver posts (in place of PagerDuty and e-mail), on the test network's own
    address: every firing alert that reached it, with its labels and when (time.monotonic())."""

    def __init__(self, host: str) -> None:
        self.arrivals: list[tuple[float, dict[str, str]]] = []
        # Every notification, firing or resolved, with the address of the Alertmanager that sent it.
        self.log: list[tuple[float, str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        pager = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.monotonic()
                alerts = [(a["status"], {k: str(v) for k, v in a["labels"].items()}) for a in body["alerts"]]
                with pager.lock:
                    pager.arrivals.extend((now, labels) for status, labels in alerts if status == "firing")
                    pager.log.extend((now, self.client_address[0], status, labels) for status, labels in alerts)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def since(self, t: float, alertname: str | None = None) -> list[tuple[float, dict[str, str]]]:
        with self.lock:
            return [(at, a) for at, a in self.arrivals if at >= t and alertname in (None, a["alertname"])]

    def timeline(self, start: float, senders: dict[str, str]) -> list[str]:
        """Every notification but the Watchdog's, firing and resolved, in order: seconds from `start`, the sender (by
        `senders`), the alert."""
        with self.lock:
            return [
                f"{at - start:+.1f}s {senders.get(sender, sender)} {status} {labels['alertname']} "
                f"{labels.get('instance', '')}{' ' + labels['channel'] if 'channel' in labels else ''}"
                for at, sender, status, labels in self.log
                if labels["alertname"] != "Watchdog"
            ]

    def first(self, alertname: str, after: float) -> float | None:
        pages = self.since(after, alertname)
        return pages[0][0] if pages else None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def get_json(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (a test network's URL)
        return json.loads(resp.read() or b"null")


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            return 200 <= resp.status < 300
    except (OSError, ValueError):
        return False


@dataclass
class OpsHost:
    name: str  # a, b: the replica's letter
    host: Host
    folder: Path
    db: Path  # Patroni's folder (the postgres user's)
    patroni_log_start: int = 0  # where the Patroni log of its last start begins
    fork: dict[str, Any] = field(default_factory=dict)  # its WAL against the primary's timeline at its last return

    @property
    def address(self) -> str:
        return self.host.address

    def url(self, port: int) -> str:
        return f"http://{self.address}:{port}"


@dataclass
class Topology:
    profile: Profile
    tmp: Path
    network: Network
    gateway: Gateway
    pager: Pager
    ops: dict[str, OpsHost]
    vote: Host  # ops-c: etcd only
    bot: Host
    pg_root: Path
    scope: str
    debian: DebianParts  # where etcd, Patroni, PostgreSQL, Prometheus, Alertmanager and the node exporter come from
    dead: set[str] = field(default_factory=set)
    stopping: bool = False  # the topology is being stopped: nothing is started again
    bot_dead: bool = False  # the bot's host is dead (kill_bot): its bot is not started again

    # --- addresses ---------------------------------------------------------------------------------------------
    @property
    def bot_target(self) -> str:
        return f"{self.bot.address}:{BOT_PORT}"

    @property
    def node_target(self) -> str:
        return f"{self.bot.address}:{NODE_PORT}"

    def etcd_hosts(self) -> list[Host]:
        return [self.ops["a"].host, self.ops["b"].host, self.vote]

    def database_url(self) -> str:
        hosts = "&".join(f"host={o.address}:{PG_PORT}" for o in self.ops.values())
        return f"postgresql+psycopg://postgres@/{DATABASE}?{hosts}&target_session_attrs=read-write"

    def live(self) -> list[OpsHost]:
        return [o for name, o in self.ops.items() if name not in self.dead]

    # --- parts -------------------------------------------------------------------------------------------------
    def start_etcd(self, host: Host, index: int) -> None:
        folder = self.tmp / f"etcd-{index}"
        folder.mkdir(exist_ok=True)
        cluster = ",".join(f"e{i}=http://{h.address}:{ETCD_PEER_PORT}" for i, h in enumerate(self.etcd_hosts()))
        state = "existing" if (folder / "data").exists() else "new"
        host.popen(
            self.debian.argv(
                [
                    self.debian.binary("etcd"),
                    "--name",
                    f"e{index}",
                    "--data-dir",
                    str(folder / "data"),
                    "--listen-client-urls",
                    f"http://{host.address}:{ETCD_PORT}",
                    "--advertise-client-urls",
                    f"http://{host.address}:{ETCD_PORT}",
                    "--listen-peer-urls",
                    f"http://{host.address}:{ETCD_PEER_PORT}",
                    "--initial-advertise-peer-urls",
                    f"http://{host.address}:{ETCD_PEER_PORT}",
                    "--initial-cluster",
                    cluster,
                    "--initial-cluster-token",
                    self.scope,
                    "--initial-cluster-state",
                    state,
                    "--listen-metrics-urls",
                    "",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "etcd.log", "ab"),  # noqa: SIM115
        )

    def patroni_config(self, ops: OpsHost) -> dict[str, Any]:
        net = f"{self.network.prefix}.0/24"
        return {
            "scope": self.scope,
            "name": f"ops-{ops.name}",
            "log": {"level": "INFO"},
            "restapi": {"listen": f"{ops.address}:{PATRONI_PORT}", "connect_address": f"{ops.address}:{PATRONI_PORT}"},
            "etcd3": {"hosts": [f"{h.address}:{ETCD_PORT}" for h in self.etcd_hosts()]},
            "bootstrap": {
                "dcs": {
                    **PATRONI_DCS,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    "postgresql": {
                        **REJOIN_DCS,
                        "use_slots": True,
                        "parameters": {"wal_level": "replica", "max_wal_senders": 8, "max_replication_slots": 8},
                    },
                },
                # Data checksums: pg_rewind needs them (or wal_log_hints), as docs/deployment.md's initdb has them.
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}, "data-checksums"],
                "pg_hba": [
                    "local all all trust",
                    f"host all all {net} trust",
                    f"host replication all {net} trust",
                    "host all all 127.0.0.1/32 trust",
                ],
            },
            "postgresql": {
                "listen": f"{ops.address}:{PG_PORT}",
                "connect_address": f"{ops.address}:{PG_PORT}",
                "data_dir": str(ops.db / "data"),
                "bin_dir": str(self.debian.pg_bin_dir()),
                "pgpass": str(ops.db / "pgpass"),
                "authentication": {"superuser": {"username": "postgres"}, "replication": {"username": "postgres"}},
                "parameters": {"unix_socket_directories": str(ops.db), "fsync": "off"},
                **REJOIN_LOCAL,
            },
        }

    def start_patroni(self, ops: OpsHost) -> None:
        config = ops.db / "patroni.yml"
        config.write_text(yaml.safe_dump(self.patroni_config(ops)))
        self.debian.chown_postgres(config)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(ops.db), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        ops.host.popen(
            self.debian.as_postgres(["/usr/bin/python3", self.debian.binary("patroni"), str(config)]),
            stdout=open(ops.folder / "patroni.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ops.db,
        )

    def role(self, ops: OpsHost) -> str | None:
        """primary or sync (Patroni's REST API answers 200), else None."""
        for role, path in (("primary", "primary"), ("sync", "sync")):
            if answers(f"{ops.url(PATRONI_PORT)}/{path}", timeout=1.0):
                return role
        return None

    def synchronous_standbys(self, ops: OpsHost) -> str:
        """The primary's `synchronous_standby_names`, as Patroni set it."""
        dsn = f"host={ops.address} port={PG_PORT} user=postgres dbname=postgres connect_timeout=2"
        try:
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SHOW synchronous_standby_names").fetchone()
        except psycopg.Error as exc:
            raise OSError(f"ops-{ops.name}'s PostgreSQL: {exc}") from exc
        return str(row[0]) if row else ""

    def start_reconciler(self, ops: OpsHost) -> None:
        folder = ops.folder / "reconciler"
        folder.mkdir(exist_ok=True)
        for name, value in (
            ("webhook-token", TOKEN),
            ("read-token", READ_TOKEN),
            ("bot-token", BOT_TOKEN),
            ("venue-key", SIDECAR_KEY),
            ("venue-secret", SIDECAR_SECRET),
        ):
            write_secret(folder / name, value)
        write_secret(folder / "db-url", self.database_url())
        (folder / "playbook.yml").write_text(yaml.safe_dump(packaged_playbook(RULES)))
        others = [o for o in self.ops.values() if o is not ops]
        section = {
            "listen": {"host": ops.address, "port": RECONCILER_PORT},
            "instance": f"r{ops.name}",
            "token_file": str(folder / "webhook-token"),
            "read_token_file": str(folder / "read-token"),
            "playbook": str(folder / "playbook.yml"),
            # docs/deployment.md: both Prometheus, this host's Alertmanager first and the other as its peer.
            "prometheus_url": [ops.url(PROMETHEUS_PORT), *(o.url(PROMETHEUS_PORT) for o in others)],
            "alertmanager_url": ops.url(ALERTMANAGER_PORT),
            "alertmanager_peers": [o.url(ALERTMANAGER_PORT) for o in others],
            # The sequence stages five faults of the bot within the hour, each a reconnect per channel (two), and two
            # deaths of its host: the shipped 6 actions an hour would open its circuit by the fourth (as it should).
            "budgets": {"max_actions_per_target_per_hour": 20},
            "targets": {
                self.bot_target: {
                    "url": f"http://{self.bot_target}",
                    "token_file": str(folder / "bot-token"),
                    "venue": {
                        "exchange": "kraken",
                        "api_key_file": str(folder / "venue-key"),
                        "api_secret_file": str(folder / "venue-secret"),
                        "urls": {"public": self.gateway.url, "private": self.gateway.url},
                        "symbols": ["BTC-USD"],
                        "order_id_prefix": BOT,
                    },
                }
            },
        }
        (folder / "reconciler.yaml").write_text(
            yaml.safe_dump({"database": {"url_file": str(folder / "db-url")}, "reconciler": section})
        )
        argv = [sys.executable, "-m", "trading_ops", "-c", str(folder / "reconciler.yaml"), "reconciler"]

        def start() -> subprocess.Popen[Any]:
            return ops.host.popen(
                argv,
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=open(folder / "reconciler.log", "ab"),  # noqa: SIM115
            )

        # A replica that exits with an error (its database unreachable as its host comes back) is started again.
        self.supervise(start, lambda: ops.name not in self.dead, RECONCILER_RESTART_SECONDS)

    def supervise(
        self, start: Callable[[], subprocess.Popen[Any]], alive: Callable[[], bool], restart_seconds: float
    ) -> None:
        """`start()` under the shipped unit's Restart=on-failure: a process that exits with an error is started again
        `restart_seconds` later, while its host is `alive()` and the topology is not being stopped."""

        def loop(proc: subprocess.Popen[Any]) -> None:
            while proc.wait() != 0 and alive() and not self.stopping:
                time.sleep(restart_seconds)
                if not alive() or self.stopping:
                    return
                proc = start()

        threading.Thread(target=loop, args=(start(),), daemon=True).start()

    def alertmanager_config(self, ops: OpsHost) -> Path:
        """docs/deployment.md's Alertmanager of `ops` as `trading-ops config render --alertmanager ...
        --reconciler-replica ra=URL --reconciler-replica rb=URL` writes it (a receiver per replica, each route to the
        reconciler once per replica, the first copies continuing; its templates and token beside it), at the
        profile's timings (those of `trading-ops up`); its pager posting to the test's pager, the other people's
        receivers quiet. One receiver with a webhook per replica would share its alert groups: every flush of a group
        waits for each webhook, and a dead replica's retries hold it for Alertmanager's 10 s notify timeout, so the
        live replica got a recurring fault's alert up to 10 s late (9.8 s measured)."""
        folder = ops.folder / "alertmanager"
        folder.mkdir(exist_ok=True)
        write_secret(folder / "secrets" / "reconciler-token", TOKEN)
        config = parse_config({"reconciler": {"listen": {"host": ops.address, "port": RECONCILER_PORT}}})
        given = [f"r{o.name}={o.url(RECONCILER_PORT)}" for o in self.ops.values()]
        shipped = REPO_ROOT / "alertmanager" / "alertmanager.yml"
        files = rendered_alertmanager(shipped, config, folder, False, "ha-topology", reconciler_replicas(given))
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        rendered = yaml.safe_load((folder / "alertmanager.yml").read_text())
        rendered["global"] = {k: v for k, v in rendered.get("global", {}).items() if k in KEPT_GLOBAL}
        replicas = {r["name"] for r in rendered["receivers"] if r["name"].startswith("reconciler-")}
        # As the shipped pager's PagerDuty and e-mail: resolutions sent too.
        pager = {"name": "pager", "webhook_configs": [{"url": self.pager.url, "send_resolved": True}]}
        rendered["receivers"] = [
            r if r["name"] in replicas else pager if r["name"] == "pager" else {"name": r["name"]}
            for r in rendered["receivers"]
        ]
        tune_routes(rendered["route"], replicas, self.profile)
        path = folder / "alertmanager.yml"
        path.write_text(yaml.safe_dump(rendered))
        return path

    def start_alertmanager(self, ops: OpsHost) -> None:
        config = self.alertmanager_config(ops)
        peers = [f"--cluster.peer={o.address}:{GOSSIP_PORT}" for o in self.ops.values() if o is not ops]
        ops.host.popen(
            self.debian.argv(
                [
                    self.debian.binary("prometheus-alertmanager"),
                    f"--config.file={config}",
                    f"--storage.path={config.parent / 'data'}",
                    f"--web.listen-address={ops.address}:{ALERTMANAGER_PORT}",
                    f"--cluster.listen-address={ops.address}:{GOSSIP_PORT}",
                    f"--cluster.advertise-address={ops.address}:{GOSSIP_PORT}",
                    *peers,
                    *self.profile.cluster_flags(),
                    "--log.level=warn",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=open(config.parent / "alertmanager.log", "ab"),  # noqa: SIM115
        )

    def prometheus_config(self, ops: OpsHost) -> Path:
        folder = ops.folder / "prometheus"
        (folder / "rules").mkdir(parents=True, exist_ok=True)
        shipped = load_yaml(REPO_ROOT / "prometheus" / "prometheus.yml")
        for source in sorted((REPO_ROOT / "prometheus" / "rules").glob("*.yml")):
            adapted = adapt_rules(load_yaml(source), self.profile, str(source))
            (folder / "rules" / source.name).write_text(yaml.safe_dump(adapted))
        glob = dict(shipped["global"])
        for key, value in (
            ("scrape_interval", self.profile.scrape_interval),
            ("evaluation_interval", self.profile.evaluation_interval),
            ("scrape_timeout", self.profile.scrape_timeout),
        ):
            if value is not None:
                glob[key] = format_duration(value)
        targets = {
            "tradingbot": [self.bot_target],
            "node": [self.node_target],
            "trading-ops-reconciler": [f"{o.address}:{RECONCILER_PORT}" for o in self.ops.values()],
            "alertmanager": [f"{o.address}:{ALERTMANAGER_PORT}" for o in self.ops.values()],
            "prometheus": [f"{o.address}:{PROMETHEUS_PORT}" for o in self.ops.values()],
        }
        # The external label and `alerting` section as `trading-ops config render --replica NAME` writes them: told
        # apart by `replica`, dropped from the alerts; both Alertmanagers with the shipped timeout.
        first, *peers = (o.url(ALERTMANAGER_PORT) for o in self.ops.values())
        rendered = render_prometheus(
            parse_config({"reconciler": {"alertmanager_url": first, "alertmanager_peers": peers}}), folder, ops.name
        )
        config = {
            "global": {**glob, "external_labels": rendered["global"]["external_labels"]},
            "rule_files": [str(folder / "rules" / "*.yml")],
            "alerting": rendered["alerting"],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in targets.items()
            ],
        }
        path = folder / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start_prometheus(self, ops: OpsHost) -> None:
        config = self.prometheus_config(ops)
        resend = self.profile.alert_resend_delay
        ops.host.popen(
            [
                *AHEAD,
                *self.debian.argv([self.debian.binary("prometheus")]),
                f"--config.file={config}",
                f"--storage.tsdb.path={config.parent / 'data'}",
                f"--web.listen-address={ops.address}:{PROMETHEUS_PORT}",
                *([f"--rules.alert.resend-delay={format_duration(resend)}"] if resend is not None else []),
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(config.parent / "prometheus.log", "ab"),  # noqa: SIM115
        )

    def start_bot(self) -> None:
        folder = self.tmp / BOT
        folder.mkdir(exist_ok=True)
        for file, value in (("api-key", API_KEY), ("api-secret", API_SECRET), ("token", BOT_TOKEN)):
            (folder / file).write_text(value)
        url = f"sqlite:///{folder / 'journal.db'}"
        migrate.upgrade(url)
        settings = {
            "database": {"url": url},
            "bot": {
                "name": BOT,
                "venue": "kraken",
                "strategy": "mean-reverter",
                "listen": {"host": self.bot.address, "port": BOT_PORT},
                "control_token_file": str(folder / "token"),
                "data_dir": str(folder / "data"),
                "loop_interval_seconds": 0.2,
                "market_data_stale_seconds": 5,
                "dead_man_switch": SWITCH,
                "risk": {"daily_loss_limit": 5000},
            },
            "ccxt": {
                "exchange": "kraken",
                "api_key_file": str(folder / "api-key"),
                "api_secret_file": str(folder / "api-secret"),
                "urls": {"public": self.gateway.url, "private": self.gateway.url},
                "symbols": ["BTC-USD"],
                "poll_interval_seconds": 0.5,
                "quote_poll_interval_seconds": 0.5,
                "enable_rate_limit": False,
                "kraken_tier": "off",
                # The venue's market stands still (volatility 0: the bot's bid rests), so its book and ticker change
                # at no cadence: no silence timeout, as the configuration says for a pair that may be quiet for any
                # time (with the shipped 1 s, the ticker was judged silent and subscribed again every 3 s).
                "stream_book_cadence_seconds": 0,
            },
            "recovery": {"reconcile_interval_seconds": 0},
        }
        (folder / "bot.yaml").write_text(yaml.safe_dump(settings))

        def start() -> subprocess.Popen[Any]:
            with open(folder / "bot.log", "ab") as log:
                argv = [*AHEAD, sys.executable, str(EXAMPLE), str(folder / "bot.yaml")]
                return self.bot.popen(argv, cwd=REPO_ROOT, stdout=log, stderr=log)

        # trading-ops-bot@.service's Restart=on-failure: a start the venue refused (its host's link just up) again.
        self.supervise(start, lambda: not self.bot_dead, BOT_RESTART_SECONDS)
        with open(self.tmp / "node-exporter.log", "ab") as log:
            self.bot.popen(
                [
                    *AHEAD,
                    *self.debian.argv(
                        [self.debian.binary("prometheus-node-exporter"), f"--web.listen-address={self.node_target}"]
                    ),
                ],
                stdout=log,
                stderr=log,
            )

    # --- whole hosts -------------------------------------------------------------------------------------------
    def start_ops(self, ops: OpsHost) -> None:
        """Everything of an ops host but its etcd member (started first: Patroni needs the quorum)."""
        self.start_patroni(ops)
        self.start_reconciler(ops)
        self.start_alertmanager(ops)
        self.start_prometheus(ops)

    def kill_host(self, host: Host) -> None:
        """The host dies: its link cut, then every process in its namespace SIGKILLed at once (Patroni's PostgreSQL
        included). The link first, as a host that loses its power: the kernel of a killed process closes its
        connections (a FIN to each peer), which would tell every peer at once what a dead host never says (the
        primary's walsender of a dead standby gone at once, and Patroni dropping it within a loop, not after its
        `ttl`; the venue's session of the bot closed)."""
        host.link_down()
        pids = ip("netns", "pids", host.name).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        for proc in host.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def kill_ops(self, name: str) -> None:
        self.dead.add(name)
        self.kill_host(self.ops[name].host)

    def revive_ops(self, name: str) -> None:
        ops = self.ops[name]
        log = ops.folder / "patroni.log"
        ops.patroni_log_start = log.stat().st_size if log.exists() else 0
        ops.host.processes.clear()
        ops.host.link_up()
        self.dead.discard(name)  # alive again: a replica that exits on its way up is started again
        ops.fork = self.fork(ops)
        self.start_etcd(ops.host, OPS.index(name))
        self.start_ops(ops)

    def revive_bot(self) -> None:
        """The bot's host back: its link up, the bot (its journal and data dir as its death left them) and the node
        exporter started again; until the bot is ready and its bid rests."""
        self.bot.processes.clear()
        self.bot.link_up()
        self.bot_dead = False
        self.start_bot()
        self.wait("the bot ready again", lambda: answers(f"http://{self.bot_target}/readyz"), 120)
        self.wait("the bot's bid resting again", self.resting, 60)

    # --- what the parts say ------------------------------------------------------------------------------------
    def query(self, expr: str) -> list[dict[str, Any]]:
        """A query to any live Prometheus of the pair (the first that answers)."""
        error: Exception | None = None
        for ops in self.live():
            try:
                q = urllib.parse.quote(expr)
                return list(get_json(f"{ops.url(PROMETHEUS_PORT)}/api/v1/query?query={q}")["data"]["result"])
            except (OSError, ValueError, KeyError) as exc:
                error = exc
        raise AssertionError(f"no Prometheus of the pair answers: {error}")

    def scalar(self, expr: str, ops: OpsHost) -> float | None:
        q = urllib.parse.quote(expr)
        result = get_json(f"{ops.url(PROMETHEUS_PORT)}/api/v1/query?query={q}")["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def episodes(self, alertname: str) -> list[dict[str, Any]]:
        """The episodes of `alertname` as a live replica's API lists them (newest first, with their attempts); an
        OSError when none answers (a probe of `wait` waits that out)."""
        error: Exception = OSError("no live reconciler replica")
        for ops in self.live():
            try:
                url = f"{ops.url(RECONCILER_PORT)}/api/v1/episodes?limit=50"
                listed = get_json(url, READ_AUTH, timeout=10)["episodes"]
            except (OSError, ValueError) as exc:
                error = exc
                continue
            return [e for e in listed if e["alertname"] == alertname]
        raise OSError(f"no reconciler replica answers: {error}")

    def active(self, alertname: str) -> bool:
        """Whether any live Alertmanager holds `alertname` active."""
        q = urllib.parse.quote(f'alertname="{alertname}"')
        return any(
            get_json(f"{o.url(ALERTMANAGER_PORT)}/api/v2/alerts?filter={q}&silenced=false&inhibited=false")
            for o in self.live()
        )

    def resting(self) -> set[str]:
        return {
            str(o["clientOrderId"])
            for o in self.gateway.call("fetch_open_orders")
            if str(o.get("clientOrderId")).startswith(f"{BOT}-")
        }

    def logs(self) -> str:
        out = []
        for path in sorted(self.tmp.rglob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-8:]
            out.append(f"\n  {path.relative_to(self.tmp)}: ...\n  " + "\n  ".join(lines))
        return "".join(out)

    def wait(self, what: str, probe: Any, deadline: float, interval: float = 0.2) -> Any:
        try:
            return until(what, probe, deadline, interval, (OSError, ValueError))
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self.logs()}") from None

    def settled(self, what: str, deadline: float = 300) -> float:
        """Wait until the live ops hosts are whole again as a topology: a Patroni primary (with a synchronous
        standby when both members live) whose commits wait for no dead standby, each live replica answering /readyz
        (its ledger takes writes, and it claims again: back after a failover, a replica claims nothing until each had
        a poll to check its writes survived), each live Alertmanager and Prometheus ready, each live Alertmanager's
        cluster the live members only; the time it took.

        A dead synchronous standby holds every commit of the primary (the replicas' ledger writes: webhooks stored,
        claims, outcomes) until Patroni drops it from `synchronous_standby_names`, which it does once the dead
        member's key expires (`ttl`) at its next loop (`loop_wait`): /readyz does not see that (its check reads, and
        a commit waiting for the standby is not refused), so it is asked of the primary. An Alertmanager waits its
        position in the cluster times `peer_timeout` before it notifies (the members before it notify first): until
        gossip finds the dead member gone, a survivor behind it waits for it (3 s at the fast profile, 15 s as
        shipped)."""
        started = time.monotonic()

        def whole() -> bool:
            roles = {o.name: self.role(o) for o in self.live()}
            if "primary" not in roles.values() or (len(roles) == 2 and "sync" not in roles.values()):
                return False
            primary = next(self.ops[name] for name, role in roles.items() if role == "primary")
            if any(f"ops-{name}" in self.synchronous_standbys(primary) for name in self.dead):
                return False
            return all(
                len(get_json(f"{o.url(ALERTMANAGER_PORT)}/api/v2/status", timeout=2)["cluster"]["peers"])
                == len(self.live())
                and answers(f"{o.url(RECONCILER_PORT)}/readyz")
                and answers(f"{o.url(ALERTMANAGER_PORT)}/-/ready")
                and answers(f"{o.url(PROMETHEUS_PORT)}/-/ready")
                for o in self.live()
            )

        try:
            self.wait(what, whole, deadline)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self.patroni_state()}") from None
        return time.monotonic() - started

    def patroni_state(self) -> str:
        """What Patroni says of the live members (`patronictl list`) and what each did since its last start: how
        a returning member rejoined (its timeline against the primary's, a rewind, a new copy) or why it did not."""
        out = []
        for ops in self.live():
            patronictl = self.debian.binary("patronictl")
            listed = ops.host.run(
                *self.debian.argv([patronictl, "-c", str(ops.db / "patroni.yml"), "list"]), timeout=30
            )
            out.append(f"\n  ops-{ops.name}: patronictl list:\n{listed.stdout}{listed.stderr}")
            out.append(f"  ops-{ops.name}'s rejoin: " + "\n    ".join(["", *self.rejoin(ops)]))
        return "".join(out)

    def fork(self, ops: OpsHost) -> dict[str, Any]:
        """A returning member's WAL as its death left it, before its Patroni starts: its timeline, the live primary's
        switchpoint from it (the end of what the promoted standby had), and the WAL records it holds past that point
        (pg_waldump): any is a fork, which PostgreSQL cannot follow onto the new timeline without a rewind."""
        bin_dir, wal = self.debian.pg_bin_dir(), ops.db / "data" / "pg_wal"
        argv = self.debian.argv([str(bin_dir / "pg_controldata"), str(ops.db / "data")])
        control = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False).stdout
        found = re.search(r"Latest checkpoint's TimeLineID:\s+(\d+)", control)
        timeline = int(found.group(1)) if found else 0
        switchpoint = None
        for other in (o for o in self.live() if o is not ops):
            for history in sorted((other.db / "data" / "pg_wal").glob("*.history")):
                for fields in (line.split() for line in history.read_text().splitlines()):
                    if len(fields) >= 2 and fields[0] == str(timeline):
                        switchpoint = fields[1]
        if switchpoint is None:  # the primary's timeline is its own: nothing to fork from
            return {"timeline": timeline, "switchpoint": None}
        argv = self.debian.argv([str(bin_dir / "pg_waldump"), "-p", str(wal), "-t", str(timeline), "-s", switchpoint])
        dump = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        end = re.search(r"invalid record length at (\S+):", dump.stderr)
        return {
            "timeline": timeline,
            "switchpoint": switchpoint,
            "records_past_switchpoint": sum(line.startswith("rmgr:") for line in dump.stdout.splitlines()),
            "wal_end": end.group(1) if end else dump.stderr.strip()[-200:],
        }

    def rejoin(self, ops: OpsHost) -> list[str]:
        """What ops' Patroni log says, since its last start, of how the member rejoined: its local timeline and
        WAL position against the primary's history (a switchpoint before the local position is a fork), a rewind
        and its result, a data directory removed and copied anew, PostgreSQL refusing the new timeline."""
        log = ops.folder / "patroni.log"
        if not log.exists():
            return []
        with open(log, "rb") as f:
            f.seek(ops.patroni_log_start)
            text = f.read().decode(errors="replace")
        seen: list[str] = []
        for line in text.splitlines():
            if any(mark in line for mark in REJOIN_MARKS):
                said = line.split(": ", 1)[-1].strip() if line[:4].isdigit() else line.strip()
                if said not in seen:
                    seen.append(said)
        return seen[:20]

    def bot_watched(self) -> None:
        """The bot trading, its switch armed and its host's node exporter up, as every live Prometheus sees it."""
        armed = (
            f'tradingbot_dead_man_switch_armed{{instance="{self.bot_target}"}} == 1 '
            f'and on () up{{job="node", instance="{self.node_target}"}} == 1 '
            f'and on () tradingbot_broker_connected{{instance="{self.bot_target}"}} == 1'
        )
        for ops in self.live():
            self.wait(
                f"prometheus {ops.name}: the bot's switch armed, its host up", lambda o=ops: self.scalar(armed, o), 90
            )


@contextlib.contextmanager
def topology(tmp: Path, profile: Profile, release: Release = DEBIAN12) -> Iterator[Topology]:
    """The whole topology up and settled, its Debian parts `release`'s (tests/debian_parts.py; the project's Python
    from the checkout's virtualenv either way): the bot trading, watched by both Prometheus; stopped at the end
    whatever happened (every process by its pid, the hosts' namespaces, the gateway, the pager, then the root's
    mounts)."""
    pg_root = Path(tempfile.mkdtemp(prefix=f"trading-ops-ha-{os.getpid()}-"))  # under /tmp: postgres can reach it
    pg_root.chmod(0o755)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, pg_root, ignore_errors=True)
        # Outside `tmp`, which is bound into the root.
        workdir = Path(tempfile.mkdtemp(prefix=f"trading-ops-ha-root-{os.getpid()}-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        debian = stack.enter_context(debian_parts(release, workdir, [tmp, pg_root]))
        network = stack.enter_context(host_network())
        gateway = start_gateway(tmp / "gateway", host=network.gateway, volatility=0)
        pager = Pager(network.gateway)
        topo: Topology | None = None
        try:
            ops = {}
            for name in OPS:
                folder = tmp / f"ops-{name}"
                folder.mkdir()
                db = pg_root / f"ops-{name}"
                db.mkdir()
                debian.chown_postgres(db)
                db.chmod(0o700)
                ops[name] = OpsHost(name, network.add_host(f"ops{name}"), folder, db)
            vote, bot = network.add_host("opsc"), network.add_host("bot")
            topo = Topology(profile, tmp, network, gateway, pager, ops, vote, bot, pg_root, f"ha-{network.tag}", debian)
            topo.start_bot()
            for i, host in enumerate(topo.etcd_hosts()):
                topo.start_etcd(host, i)
            for host in topo.etcd_hosts():
                topo.wait(
                    f"etcd on {host.address}",
                    lambda h=host: get_json(f"http://{h.address}:{ETCD_PORT}/health")["health"] == "true",
                    60,
                )
            topo.start_patroni(ops["a"])
            topo.wait("ops-a's Patroni the primary", lambda: topo.role(ops["a"]) == "primary", 120)
            topo.start_patroni(ops["b"])
            topo.wait("ops-b's Patroni the synchronous standby", lambda: topo.role(ops["b"]) == "sync", 120)
            with psycopg.connect(f"host={ops['a'].address} port={PG_PORT} user=postgres dbname=postgres") as conn:
                conn.autocommit = True
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
            migrate.upgrade(topo.database_url())
            topo.wait("the bot ready", lambda: answers(f"http://{topo.bot_target}/readyz"), 120)
            topo.wait("the bot's bid resting", topo.resting, 60)
            for o in ops.values():
                topo.start_reconciler(o)
                topo.start_alertmanager(o)
                topo.start_prometheus(o)
            topo.settled("the topology up", 900)  # a busy machine imports and starts everything slowly
            topo.bot_watched()
            yield topo
        finally:
            if topo is not None:
                topo.stopping = True
            pager.close()
            for host in network.hosts:  # every process of every host, Patroni's PostgreSQL included
                with contextlib.suppress(Exception):
                    for pid in ip("netns", "pids", host.name, check=False).stdout.split():
                        with contextlib.suppress(ProcessLookupError, ValueError):
                            os.kill(int(pid), signal.SIGTERM)
            time.sleep(1)
            for host in network.hosts:
                with contextlib.suppress(Exception):
                    for pid in ip("netns", "pids", host.name, check=False).stdout.split():
                        with contextlib.suppress(ProcessLookupError, ValueError):
                            os.kill(int(pid), signal.SIGKILL)
            gateway.stop()


# --- the sequence --------------------------------------------------------------------------------------------------
def wall(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def broker_quiet(topo: Topology, label: str) -> None:
    """Wait for a quiet bot: no alert of a broker fault left in any Alertmanager and no run of one still to act. A
    dropped session fires one alert per channel, each its own episode, and the target's runs go one at a time: the
    second channel's run acts after the first one's verification (a run the dead ops host delayed would reconnect
    the bot right after the next fault, which then never fires; a run still to act when the bot's host dies fails
    on it and pages TradingOpsRemediationFailed)."""

    name = "TradingBotBrokerDisconnected"

    def quiet() -> bool:
        episodes = topo.episodes(name)
        return not topo.active(name) and all(e["state"] in CLOSED_STATES for e in episodes)

    try:
        topo.wait(f"{label}: no broker alert or run left", quiet, 180)
    except AssertionError as exc:
        # What was left: the episodes still open (their state, owner, last word) and where the alert is held.
        left = [
            {k: e.get(k) for k in ("id", "state", "owner", "labels", "received_at", "resolved_at", "detail")}
            for e in topo.episodes(name)
            if e["state"] not in CLOSED_STATES
        ]
        q = urllib.parse.quote(f'alertname="{name}"')
        held = {
            o.name: [
                a.get("labels", {}).get("channel")
                for a in get_json(f"{o.url(ALERTMANAGER_PORT)}/api/v2/alerts?filter={q}")
            ]
            for o in topo.live()
        }
        raise AssertionError(f"{label}: open episodes {left}; {name} held by {held}\n{exc}") from None


def shipped_alert_for(alertname: str, rules_file: str = "tradingbot-availability.yml") -> float:
    """The `for:` of the shipped alerting rule `alertname` (prometheus/rules/`rules_file`), in seconds."""
    groups = yaml.safe_load((REPO_ROOT / "prometheus" / "rules" / rules_file).read_text())["groups"]
    (found,) = [r for g in groups for r in g["rules"] if r.get("alert") == alertname]
    return parse_duration(str(found.get("for", "0s")))


# TradingBotHostDown's `for:`, as shipped.
HOST_DOWN_FOR_SECONDS = shipped_alert_for("TradingBotHostDown")


def healed_fault_grace() -> float:
    """How long the pager waits for a fault the playbook heals unattended (alertmanager/alertmanager.yml: the group_wait
    of the critical route's child, which every profile keeps)."""
    config = yaml.safe_load((REPO_ROOT / "alertmanager" / "alertmanager.yml").read_text())
    return max(
        parse_duration(child["group_wait"])
        for route in config["route"]["routes"]
        if route.get("receiver") == "pager"
        for child in route.get("routes", [])
        if "group_wait" in child
    )


def people_group_gone(topo: Topology) -> None:
    """Wait until the pager's alert group of the last broker fault is gone: the fault's alert arrived more than the
    pager's grace ago (and a second more). A fault staged sooner joins that group, which flushes at the first one's
    grace, and is paged at once while being healed: with the shipped playbook the second fault would be held by
    broker-reconnect's 5-minute cooldown and rightly paged, but the sequence's playbook has no cooldown."""
    arrived = [wall(e["received_at"]) for e in topo.episodes("TradingBotBrokerDisconnected") if e.get("received_at")]
    if arrived:
        left = max(arrived) + healed_fault_grace() + 1.0 - time.time()
        if left > 0:
            time.sleep(left)


def fault_to_verified(topo: Topology, label: str) -> dict[str, Any]:
    """The bot's session with the venue dropped (the gateway's drop_connection): TradingBotBrokerDisconnected fires,
    the playbook's broker-reconnect reconnects it and Prometheus verifies it. Seconds from the fault to the episode's
    verified end (the recovering attempt's finish, as the ledger holds it), which replica verified it, and where the
    time went (`stages`, seconds from the fault: the alert fired in Prometheus, the episode stored by the reconciler,
    its step started and done, verified)."""
    broker_quiet(topo, label)
    people_group_gone(topo)
    before = {e["id"] for e in topo.episodes("TradingBotBrokerDisconnected")}
    fault = time.time()
    topo.gateway.chaos("drop_connection")

    def recovered() -> dict[str, Any] | None:
        # The episode that acted: one whose remedy healed another channel's too closes that one without an attempt.
        for episode in topo.episodes("TradingBotBrokerDisconnected"):
            if episode["id"] not in before and episode["state"] in ("recovered", "escalated", "escalating", "failed"):
                if episode["attempts"] or episode["state"] != "recovered":
                    return episode
        return None

    episode = topo.wait(f"{label}: the broker disconnect healed", recovered, 240, 0.5)
    assert episode["state"] == "recovered", episode
    last = episode["attempts"][-1]
    step = last["steps"][0] if last["steps"] else {}

    def at(text: str | None) -> float | None:
        return round(wall(text) - fault, 1) if text else None

    return {
        "fault_to_verified_seconds": round(wall(last["finished_at"]) - fault, 1),
        "verified_by": last["owner"],
        "stages": {
            "fired": at(episode["starts_at"]),
            "stored": at(episode["received_at"]),
            "acted": at(step.get("started_at")),
            "acted_done": at(step.get("finished_at")),
            "verified": at(last["finished_at"]),
        },
        "episode": episode,
    }


def kill_bot_host(topo: Topology) -> dict[str, Any]:
    """The bot's host killed whole with its bid resting: seconds from the kill to its orders cancelled at the venue and
    to TradingBotHostDown at the pager. The bot holds no position (its bids rest, nothing fills): its orders cancelled,
    the account is flat, and no exposure page (TradingOpsBotHostDown) is owed. From a quiet bot: every run of the last
    broker fault done."""
    broker_quiet(topo, "the bot's host killed")
    topo.wait("the bot's bid resting", topo.resting, 60)
    killed, killed_at = time.monotonic(), time.time()
    topo.bot_dead = True
    topo.kill_host(topo.bot)
    topo.wait("the bot's orders cancelled at the venue", lambda: not topo.resting(), SWITCH["timeout_seconds"] + 10)
    cancelled = time.monotonic() - killed
    # Its own page: none can fire sooner than the rule's `for:` after the death (a firing sooner is a member's stale
    # view of the death before, which the test's judge counts false).
    detected = killed + topo.profile.alert_for(HOST_DOWN_FOR_SECONDS, scrape_failure=True)
    topo.wait("the host-down page at the pager", lambda: topo.pager.first("TradingBotHostDown", detected), 180)
    host_down = topo.pager.first("TradingBotHostDown", detected)
    assert host_down is not None
    return {
        "killed": killed,
        "killed_at": killed_at,
        "orders_cancelled_seconds": round(cancelled, 1),
        "host_down_page_seconds": round(host_down - killed, 1),
    }


def run_sequence(topo: Topology) -> dict[str, Any]:
    """The sequence the test and the benchmark stage: a bot fault healed with the topology whole, with ops-b dead
    (brought back after), with ops-a dead; then, ops-a still dead, the bot's host killed whole. What each took, which
    replica verified each fault, and when each ops host was dead (monotonic: its kill, then its return plus the time
    its down alerts take to resolve; inf while still dead) for telling a true member page from a false one.

    Each fault with an ops host dead is staged once the topology settled on the survivor: `ops_b_dead_settled_seconds`
    is ops-b's death to its primary's commits no longer waiting for it (Patroni dropped the dead synchronous standby:
    until then no replica stores a webhook or acts, and a fault staged then waits that long more),
    `ops_a_dead_settled_seconds` ops-a's death to ops-b's PostgreSQL promoted and taking writes."""
    out: dict[str, Any] = {"profile": topo.profile.name}
    dead: dict[str, tuple[float, float]] = {}
    verified: dict[str, str] = {}
    started = time.monotonic()
    healthy = fault_to_verified(topo, "healthy")
    out["fault_to_verified_healthy_seconds"] = healthy["fault_to_verified_seconds"]
    verified["healthy"] = healthy["verified_by"]
    out["stages_healthy"] = healthy["stages"]

    # ops-b (the synchronous standby's host) dies whole: its replica, Alertmanager, Prometheus, etcd and Patroni.
    killed = time.monotonic()
    topo.kill_ops("b")
    topo.settled("the topology on ops-a alone (its commits wait for ops-b no more)")
    out["ops_b_dead_settled_seconds"] = round(time.monotonic() - killed, 1)
    b_dead = fault_to_verified(topo, "ops-b dead")
    out["fault_to_verified_ops_b_dead_seconds"] = b_dead["fault_to_verified_seconds"]
    verified["ops_b_dead"] = b_dead["verified_by"]
    out["stages_ops_b_dead"] = b_dead["stages"]
    topo.revive_ops("b")
    out["ops_b_back_settled_seconds"] = round(topo.settled("ops-b back: a synchronous standby again"), 1)
    out["ops_b_back_fork"] = topo.ops["b"].fork
    out["ops_b_back_rejoin"] = topo.rejoin(topo.ops["b"])
    topo.bot_watched()
    # Its down pages may still arrive until its alerts resolve, an evaluation and a scrape after its return.
    resolve = 2 * (topo.profile.scrape_interval or 5) + 10
    dead["b"] = (killed, time.monotonic() + resolve)

    # ops-a (the PostgreSQL primary's host) dies whole: Patroni promotes ops-b's standby once the leader key
    # expires; ops-b's replica, Alertmanager and Prometheus carry on.
    killed = time.monotonic()
    topo.kill_ops("a")
    dead["a"] = (killed, float("inf"))
    topo.settled("the topology on ops-b alone (ops-b the primary)")
    out["ops_a_dead_settled_seconds"] = round(time.monotonic() - killed, 1)
    a_dead = fault_to_verified(topo, "ops-a dead")
    out["fault_to_verified_ops_a_dead_seconds"] = a_dead["fault_to_verified_seconds"]
    verified["ops_a_dead"] = a_dead["verified_by"]
    out["stages_ops_a_dead"] = a_dead["stages"]

    host = kill_bot_host(topo)
    out.update({k: v for k, v in host.items() if not k.startswith("killed")})
    return {
        "measured": out,
        "verified_by": verified,
        "dead": dead,
        "bot_host_killed": host["killed"],
        "bot_host_killed_at": host["killed_at"],
        "started": started,
    }


def returns_and_deaths(topo: Topology, run: dict[str, Any]) -> dict[str, Any]:
    """After run_sequence (ops-a dead, the bot's host killed): ops-a returns, its PostgreSQL a standby of ops-b's; the
    bot's host returns, then dies again; then, both ops hosts alive, a bot fault is staged and ops-b is killed while
    it is being healed. What each took, and when each happened (monotonic) for telling a true page from a false one:
    `dead` (run's, with ops-a's return and ops-b's second death, `b2`), `bot_down` (each of the bot host's deaths to its
    return)."""
    out: dict[str, Any] = {}
    dead = run["dead"]
    resolve = 2 * (topo.profile.scrape_interval or 5) + 10

    events = {"ops_a_returned": time.monotonic()}
    topo.revive_ops("a")
    out["ops_a_back_settled_seconds"] = round(topo.settled("ops-a back: ops-b's synchronous standby"), 1)
    out["ops_a_back_fork"] = topo.ops["a"].fork
    out["ops_a_back_rejoin"] = topo.rejoin(topo.ops["a"])
    dead["a"] = (dead["a"][0], time.monotonic() + resolve)

    # The bot's host returns: nothing pages for it; its host-down alerts end.
    returned = time.monotonic()
    out["bot_host_returned_seconds"] = round(returned - run["bot_host_killed"], 1)
    topo.revive_bot()
    topo.bot_watched()
    out["bot_host_back_watched_seconds"] = round(time.monotonic() - returned, 1)
    topo.wait("the bot host's alerts resolved", lambda: not topo.active("TradingBotHostDown"), 180)
    # ... and dies again: its orders cancelled and one page, as the first time.
    again = kill_bot_host(topo)
    out.update({f"again_{k}": v for k, v in again.items() if not k.startswith("killed")})

    # ops-b dies while a bot fault is being healed: the fault is healed anyway, by ops-a's replica.
    returned_again = time.monotonic()
    out["again_bot_host_returned_seconds"] = round(returned_again - again["killed"], 1)
    topo.revive_bot()
    topo.bot_watched()
    topo.wait("the bot host's alerts resolved again", lambda: not topo.active("TradingBotHostDown"), 180)
    broker_quiet(topo, "ops-b killed during a fault")
    people_group_gone(topo)
    before = {e["id"] for e in topo.episodes("TradingBotBrokerDisconnected")}
    fault, events["last_fault"] = time.time(), time.monotonic()
    topo.gateway.chaos("drop_connection")
    topo.wait(
        "the fault's episode stored",
        lambda: any(e["id"] not in before for e in topo.episodes("TradingBotBrokerDisconnected")),
        120,
    )
    killed, killed_at = time.monotonic(), time.time()
    topo.kill_ops("b")
    dead["b2"] = (killed, float("inf"))

    def healed() -> dict[str, Any] | None:
        for episode in topo.episodes("TradingBotBrokerDisconnected"):
            if episode["id"] not in before and episode["state"] in CLOSED_STATES:
                return episode
        return None

    episode = topo.wait("the fault's episode closed with ops-b killed during it", healed, 300, 0.5)
    # Closed by ops-a's replica: verified after its step, or resolved (the alert ended before a run acted: the bot's
    # own session check reconnected it while ops-b's run was lost with its host); up again either way.
    out["ops_b_killed_during_fault_closed_seconds"] = round(wall(episode["closed_at"]) - fault, 1)
    out["ops_b_killed_during_fault_attempts"] = [(a["owner"], a["outcome"]) for a in episode["attempts"]]
    topo.bot_watched()
    return {
        "measured": out,
        "episode": episode,
        "ops_b_killed_at": killed_at,
        "dead": dead,
        # The bot's host was down from each kill to its return (its pages owed then, none outside).
        "bot_down": [(run["bot_host_killed"], returned), (again["killed"], returned_again)],
        # When the other steps happened (monotonic), for reading the pager's timeline.
        "events": {**events, "ops_b_killed_again": killed},
    }
