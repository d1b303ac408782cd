"""A host that dies and returns under docs/deployment.md's Prometheus pair and Alertmanager cluster, every part real and
on 127.0.0.1: what the pager hears.

Two Prometheus (Debian's 2.42 and the long-term-support 3.5 of tests/monitoring_lts.py), each with the shipped
availability rules at a profile and the `external_labels` and `alerting` section `trading-ops config render --replica`
writes, both sending to an Alertmanager cluster of two (Debian's, gossiping on loopback ports, the profile's cluster
timings) with the repository's routing (as `trading-ops up` renders it) whose pager receiver posts to a receiver of
the test's own. The host is two tiny /metrics servers on loopback ports (its bot and its node exporter: one host,
127.0.0.1, as TradingBotHostDown joins them), stopped at once (a death: connection refused) and started again on the
same ports (a return).

`Pager` keeps every notification of the pager receiver; `judge` counts, per death and per return, the pages of
TradingBotHostDown as a pager counts them (PagerDuty: a notification whose group status is firing opens an incident
unless the group's incident is open; a resolved one closes it) and every alert that was notified firing again after
its resolution (the false page of a returning host). tests/monitoring/test_ha_pair_returns.py runs it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from polling import until
from ports import free_port
from prometheus_server import start_prometheus
from secret_file import write_secret
from server_process import stop, wait_http
from system_binaries import LTS, REPO_ROOT, SYSTEM, Generation, alertmanager_binary

from trading_ops.commands.config_cmd import prometheus_config as render_prometheus
from trading_ops.config.loader import parse_config
from trading_ops.durations import format_duration
from trading_ops.stack.alertmanager_config import render_alertmanager
from trading_ops.stack.layout import Ports
from trading_ops.stack.profiles import Profile
from trading_ops.stack.prometheus_config import adapt_rules
from trading_ops.stack.repo import load_yaml

HOST_DOWN = "TradingBotHostDown"
RULE_FILE = "tradingbot-availability.yml"
# The pair's members: their replica names and generations (one of each, as a user upgrading one member runs them).
MEMBERS = (("a", SYSTEM), ("b", LTS))


class Pager:
    """Where both Alertmanagers' pager receiver posts: every notification, with when it arrived (monotonic)."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        pager = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.rstrip("/").endswith("/pager"):
                    with pager.lock:
                        pager.notifications.append({**body, "at": time.monotonic()})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/pager"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def host_down(self) -> list[dict[str, Any]]:
        """The notifications of TradingBotHostDown's group, in order of arrival."""
        with self.lock:
            return [n for n in self.notifications if n["commonLabels"].get("alertname") == HOST_DOWN]

    def open(self) -> bool | None:
        """Whether the host-down incident is open (its last notification firing); None before any."""
        notes = self.host_down()
        return notes[-1]["status"] == "firing" if notes else None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MetricsServer:
    """A /metrics server on a fixed loopback port that can be stopped (connection refused) and started again."""

    def __init__(self, port: int, body: str) -> None:
        self.port, self.body = port, body.encode()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        served = self.body

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(served)))
                self.end_headers()
                self.wfile.write(served)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@dataclass
class Cycle:
    died: float
    returned: float | None = None
    paged: float | None = None  # the incident opened (monotonic)
    ended: float | None = None  # the incident closed


@dataclass
class Pair:
    profile: Profile
    pager: Pager
    bot: MetricsServer
    node: MetricsServer
    prometheus: dict[str, str]  # replica name -> URL
    alertmanagers: list[str]
    cycles: list[Cycle] = field(default_factory=list)

    def query(self, url: str, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.quote(expr)
        with urllib.request.urlopen(f"{url}/api/v1/query?query={q}", timeout=5) as resp:
            return list(json.loads(resp.read())["data"]["result"])

    def firing_in(self, url: str) -> bool:
        return bool(self.query(url, f'ALERTS{{alertname="{HOST_DOWN}", alertstate="firing"}}'))

    def watched(self) -> None:
        """Both members scrape the host (bot and node exporter up) and hold no host-down alert."""
        expr = 'count(up{job=~"tradingbot|node"} == 1) == 2'
        for name, url in self.prometheus.items():
            until(f"prometheus {name} sees the host", lambda u=url: self.query(u, expr), deadline=60)
            until(f"prometheus {name} holds no host-down", lambda u=url: not self.firing_in(u), deadline=60)

    def die(self) -> Cycle:
        cycle = Cycle(time.monotonic())
        self.bot.stop()
        self.node.stop()
        self.cycles.append(cycle)
        until("the host-down page at the pager", self.pager.open, deadline=90, interval=0.1)
        cycle.paged = time.monotonic()
        return cycle

    def come_back(self, quiet: float) -> None:
        """The host answers again; wait until the pager's incident closed and neither member holds the alert, then
        `quiet` seconds (when a late member's firing would page again)."""
        cycle = self.cycles[-1]
        self.node.start()
        self.bot.start()
        cycle.returned = time.monotonic()
        until("the host-down incident closed", lambda: self.pager.open() is False, deadline=90, interval=0.1)
        cycle.ended = time.monotonic()
        for name, url in self.prometheus.items():
            until(f"prometheus {name} holds no host-down", lambda u=url: not self.firing_in(u), deadline=60)
        time.sleep(quiet)


def alert_identity(alert: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(alert["labels"].items()))


def judge(pair: Pair) -> dict[str, Any]:
    """Per cycle: pages (incidents opened) while the host was dead and after it returned, and the alerts notified
    firing after their own resolution; totals over the cycles."""
    notes = pair.pager.host_down()
    rows = []
    false_refires: list[str] = []
    open_ = False
    resolved: set[tuple[Any, ...]] = set()
    opened_at: list[float] = []
    for note in notes:
        if note["status"] == "firing" and not open_:
            opened_at.append(note["at"])
        open_ = note["status"] == "firing"
        for alert in note["alerts"]:
            key = (alert_identity(alert), alert["startsAt"][:19])
            if alert["status"] == "resolved":
                resolved.add(key)
            elif key in resolved:
                false_refires.append(f"{dict(key[0])} firing again after its resolution ({note['externalURL']})")
    for i, cycle in enumerate(pair.cycles):
        end = pair.cycles[i + 1].died if i + 1 < len(pair.cycles) else float("inf")
        back = cycle.returned if cycle.returned is not None else end
        rows.append(
            {
                "cycle": i + 1,
                "pages_while_dead": sum(1 for t in opened_at if cycle.died <= t < back),
                "pages_after_return": sum(1 for t in opened_at if back <= t < end),
                "page_seconds": None if cycle.paged is None else round(cycle.paged - cycle.died, 1),
                "resolved_seconds": None
                if cycle.ended is None or cycle.returned is None
                else round(cycle.ended - cycle.returned, 1),
            }
        )
    return {
        "cycles": rows,
        "pages_while_dead": sum(r["pages_while_dead"] for r in rows),
        "false_pages_after_return": sum(r["pages_after_return"] for r in rows),
        "alerts_firing_after_resolved": len(false_refires),
        "refires": false_refires,
        "notifications": len(notes),
    }


def account(pair: Pair) -> str:
    """Every host-down notification relative to the first death (a failure's message)."""
    zero = pair.cycles[0].died if pair.cycles else 0.0
    lines = [f"deaths at {[round(c.died - zero, 1) for c in pair.cycles]}"]
    lines += [f"returns at {[round((c.returned or zero) - zero, 1) for c in pair.cycles]}"]
    for n in pair.pager.host_down():
        alerts = ", ".join(f"{a['status']} {a['labels'].get('member', '')}".strip() for a in n["alerts"])
        lines.append(f"{n['at'] - zero:7.1f}s {n['status']:8} from {n['externalURL']}: {alerts}")
    return "\n".join(lines)


def prometheus_file(tmp: Path, replica: str, profile: Profile, bot: str, node: str, managers: list[str]) -> Path:
    """One member's prometheus.yml: the shipped availability rules at `profile`, the profile's timings, and the
    `external_labels` and `alerting` section `config render --replica` writes for this pair."""
    folder = tmp / f"prometheus-{replica}"
    folder.mkdir(parents=True)
    source = REPO_ROOT / "prometheus" / "rules" / RULE_FILE
    (folder / RULE_FILE).write_text(yaml.safe_dump(adapt_rules(load_yaml(source), profile, str(source))))
    first, *peers = managers
    config = parse_config({"reconciler": {"alertmanager_url": first, "alertmanager_peers": peers}})
    rendered = render_prometheus(config, folder, replica)
    interval = format_duration(profile.scrape_interval or 5.0)
    timeout = format_duration(profile.scrape_timeout or 4.0)
    data = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": timeout,
            "external_labels": rendered["global"]["external_labels"],
        },
        "rule_files": [str(folder / RULE_FILE)],
        "alerting": rendered["alerting"],
        "scrape_configs": [
            {"job_name": "tradingbot", "static_configs": [{"targets": [bot]}]},
            {"job_name": "node", "static_configs": [{"targets": [node]}]},
        ],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def alertmanager_file(tmp: Path, name: str, profile: Profile, pager: Pager) -> Path:
    """The repository's routing as `trading-ops up` renders it at `profile`, its pager receiver posting to `pager`
    (resolved notices included, as the shipped pager sends them), the reconciler's receivers to the pager's server
    (which ignores them)."""
    folder = tmp / f"alertmanager-{name}"
    folder.mkdir(parents=True)
    write_secret(folder / "secrets" / "token", "webhook-token-of-the-test-0123456789")
    rendered = render_alertmanager(REPO_ROOT, Ports(reconciler=pager.port), profile, folder / "secrets" / "token")
    for receiver in rendered.config["receivers"]:
        if receiver["name"] == "pager":
            receiver["webhook_configs"] = [{"url": pager.url, "send_resolved": True}]
    path = folder / "alertmanager.yml"
    path.write_text(yaml.safe_dump(rendered.config))
    return path


@contextlib.contextmanager
def ha_pair(
    tmp: Path,
    profile: Profile,
    members: tuple[tuple[str, Generation], ...] = MEMBERS,
    alertmanager: Generation = SYSTEM,
    stagger: float = 0.0,
) -> Iterator[Pair]:
    """The pair, the cluster (of `alertmanager`'s generation) and the host, up and watching; everything stopped at
    the end. `stagger`: seconds between the two Alertmanagers' starts (their housekeeping, which drops an alert group
    once empty every 30 s, then runs at other moments: one member may still hold a group the other dropped)."""
    procs: list[subprocess.Popen[bytes]] = []
    pager = Pager()
    bot = MetricsServer(free_port(), "tradingbot_up_for_the_test 1\n")
    node = MetricsServer(free_port(), "node_up_for_the_test 1\n")
    try:
        bot.start()
        node.start()
        web = [free_port() for _ in members]
        gossip = [free_port() for _ in members]
        managers = [f"http://127.0.0.1:{p}" for p in web]
        for i, (name, _) in enumerate(members):
            if i:
                time.sleep(stagger)
            config = alertmanager_file(tmp, name, profile, pager)
            peers = [f"--cluster.peer=127.0.0.1:{p}" for j, p in enumerate(gossip) if j != i]
            argv = [
                alertmanager.binary("prometheus-alertmanager") if alertmanager.bin_dir else alertmanager_binary(),
                f"--config.file={config}",
                f"--storage.path={config.parent / 'data'}",
                f"--web.listen-address=127.0.0.1:{web[i]}",
                f"--web.external-url=http://127.0.0.1:{web[i]}",
                f"--cluster.listen-address=127.0.0.1:{gossip[i]}",
                f"--cluster.advertise-address=127.0.0.1:{gossip[i]}",
                *peers,
                *profile.cluster_flags(),
                "--log.level=warn",
            ]
            procs.append(
                subprocess.Popen(
                    argv,
                    stdout=subprocess.DEVNULL,
                    stderr=open(config.parent / "alertmanager.log", "wb"),  # noqa: SIM115
                )
            )
        for i in range(len(members)):
            wait_http(f"http://127.0.0.1:{web[i]}/-/ready", proc=procs[i], deadline=60)
        prometheus = {}
        for name, generation in members:
            port = free_port()
            path = prometheus_file(tmp, name, profile, f"127.0.0.1:{bot.port}", f"127.0.0.1:{node.port}", managers)
            flags = []
            if profile.alert_resend_delay is not None:
                flags.append(f"--rules.alert.resend-delay={format_duration(profile.alert_resend_delay)}")
            procs.append(start_prometheus(path, path.parent / "data", port, *flags, generation=generation))
            wait_http(f"http://127.0.0.1:{port}/-/ready", proc=procs[-1], deadline=60)
            prometheus[name] = f"http://127.0.0.1:{port}"
        pair = Pair(profile, pager, bot, node, prometheus, managers)
        pair.watched()
        yield pair
    finally:
        for proc in reversed(procs):
            stop(proc)
        bot.stop()
        node.stop()
        pager.close()
