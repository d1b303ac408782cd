"""Bot hosts that die and return under docs/deployment.md's Prometheus pair and Alertmanager cluster, every part real
and on 127.0.0.1: what the pager hears.

Two Prometheus (Debian's 2.42 and the long-term-support 3.5 of tests/monitoring_lts.py), each with the shipped
availability rules at a profile and the `external_labels` and `alerting` section `trading-ops config render --replica`
writes, both sending to an Alertmanager cluster of two (Debian's, gossiping on loopback ports, the profile's cluster
timings) with the repository's routing (as `trading-ops up` renders it) whose pager receiver posts to a receiver of
the test's own, and whose reconciler receiver posts to a real reconciler (its ledger on SQLite) that both members
send to. Each host is two tiny /metrics servers on a loopback address of its own (127.0.0.x: its bot and its node
exporter, one host as TradingBotHostDown joins them), served by a process of their own (tests/metrics_hosts.py),
stopped at once (a death: connection refused) and started again on the same ports (a return). Every fifth host (the
second, the seventh) runs a freqtrade and its sidecar instead of a bot on the runtime: its bot's target is in job
freqtrade, with the shipped freqtrade rules beside. The hosts live their sequences side by side, each its own alert
group, so ten deaths cost about the time of one or two.

The reconciler runs the packaged `bot-host-down` rule's page alone: its `escalate` of TradingOpsBotHostDown (the
exposure page, one alert group per death: its episode), posted to both members and ended by the reconciler once the
host's alert resolved (trading_ops/reconciler/page_ends.py), as it is for a bot that still holds something at the
venue. Its venue steps are left out (no venue here): whether a page is owed is tests/deploy/test_host_down_e2e.py's;
here, how the cluster pages its start and its end.

`Pager` keeps every notification of the pager receiver; `judge` counts, per death and per return, the pages (a pager
opens an incident for a group's firing notification unless that group's incident is open, and closes it on a
resolved one: PagerDuty's dedup key is the group's) of TradingBotHostDown and of the exposure page, the alerts
notified firing after their own resolution (the false page of a returning host) and the alerts whose last word was
not "resolved". tests/deploy/test_ha_pair_returns.py runs it."""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from metrics_hosts import MetricsHosts, MetricsServer
from polling import until
from ports import free_port
from prometheus_server import start_prometheus
from reconciler_server import READ_AUTH, ThreadedServer, make_config, write_playbook
from server_process import stop, wait_http
from system_binaries import LTS, REPO_ROOT, SYSTEM, Generation, alertmanager_binary

from trading_ops.commands.config_cmd import prometheus_config as render_prometheus
from trading_ops.config.loader import parse_config
from trading_ops.db import migrate
from trading_ops.durations import format_duration, parse_duration
from trading_ops.stack.alertmanager_config import render_alertmanager
from trading_ops.stack.layout import Ports
from trading_ops.stack.profiles import ALERTMANAGER_CLUSTER_DEFAULTS, Profile
from trading_ops.stack.prometheus_config import adapt_rules
from trading_ops.stack.repo import load_yaml

HOST_DOWN, EXPOSURE = "TradingBotHostDown", "TradingOpsBotHostDown"
# The pages a death owes: Prometheus's host-down page and the reconciler's exposure page.
PAGES = (HOST_DOWN, EXPOSURE)
# The shipped rules the hosts' alerts come from: availability (up, host down) and freqtrade's (its sidecar down).
RULE_FILES = ("tradingbot-availability.yml", "freqtrade.yml")
# Every FREQTRADE_EVERY-th host (from the second) runs a freqtrade and its sidecar instead of a bot on the runtime:
# its bot's target is in job freqtrade, which TradingBotHostDown joins too, and whose TradingBotFreqtradeSidecarDown
# must page nothing for a dead or returning host (any page of it is one of `Pager.others`).
FREQTRADE_EVERY = 5
# The pair's members: their replica names and generations (one of each, as a user upgrading one member runs them).
MEMBERS = (("a", SYSTEM), ("b", LTS))
# The packaged bot-host-down rule's page (trading_ops/reconciler/playbooks/default.yml) without its venue steps, and
# without its 10-minute cooldown, which a protective rule's new episode passes anyway (a host dead again).
EXPOSURE_RULE = {
    "name": "bot-host-down",
    "match": [f'alertname="{HOST_DOWN}"'],
    "max_attempts": 1,
    "cooldown": 0,
    "steps": [{"action": "escalate", "alertname": EXPOSURE}],
    "verify": {"enabled": False},
}
# The hosts' loopback addresses: 127.0.0.<HOST_BASE + i>.
HOST_BASE = 20
# How long a death may wait for its pages, and a return for their ends, before the run records them missing and
# goes on (a measure, not a limit on speed: the standard profile pages within about 20 s).
PAGE_DEADLINE_SECONDS = 90.0
END_DEADLINE_SECONDS = 120.0
# Margin on a page's time beyond the run's quickest before it counts as late: a loaded machine's second.
LATE_MARGIN_SECONDS = 2.0
# How often the run looks at the pager and the members: it decides only when a host dies or returns (every time
# measured is the pager's arrival against the death), and each look asks both members of a pair.
POLL_SECONDS = 0.5
# Alembic's migration context is the process's own: pairs started side by side migrate their ledgers in turn.
MIGRATING = threading.Lock()


def group_interval(alertname: str) -> float:
    """The shipped alertmanager.yml's group_interval of `alertname`'s pager route, in seconds."""
    routes = load_yaml(REPO_ROOT / "alertmanager" / "alertmanager.yml")["route"]["routes"]
    (route,) = [r for r in routes if r.get("receiver") == "pager" and f'alertname="{alertname}"' in r["matchers"]]
    return parse_duration(route["group_interval"])


# How much later than the peer timeout after the other member's "resolved" a stale view's "firing" may arrive (its
# delivery, a loaded machine).
STALE_VIEW_MARGIN_SECONDS = 1.0


def peer_timeout(profile: Profile) -> float:
    """The Alertmanager cluster's --cluster.peer-timeout at `profile`."""
    return dict(profile.alertmanager_cluster).get("peer-timeout", ALERTMANAGER_CLUSTER_DEFAULTS["peer-timeout"])


def quiet_seconds(profile: Profile) -> float:
    """After a return's ends reached the pager and neither Prometheus holds the alert, how long a late member could
    still page it: its wait for the first member (the peer timeout) and a group interval, and a second of room
    (8 s at the fast profile, 36 s at the standard)."""
    return peer_timeout(profile) + profile.people_group_interval(group_interval(HOST_DOWN)) + 1.0


def late_after(profile: Profile, alertname: str) -> float:
    """How much later than the run's quickest page of `alertname` a death's page may come and still be on time: a
    scrape and an evaluation (where in their cycles the death fell), the group's next slot that a death right after the
    last one's end waits for (at the pager's route for the host-down page; at the reconciler's for the exposure page,
    each death's a group of its own at the pager), and a loaded machine's margin. 8 s and 5 s at the fast profile, 32 s
    and 22 s at the standard."""
    cycle = (profile.scrape_interval or 5.0) + (profile.evaluation_interval or 5.0)
    if alertname == HOST_DOWN:
        slot = profile.people_group_interval(group_interval(HOST_DOWN))
    elif profile.reconciler_group_interval is not None:
        slot = profile.reconciler_group_interval
    else:
        routes = load_yaml(REPO_ROOT / "alertmanager" / "alertmanager.yml")["route"]["routes"]
        (route,) = [r for r in routes if r.get("receiver") == "reconciler" and r["matchers"] == ['severity="critical"']]
        slot = parse_duration(route["group_interval"])
    return cycle + slot + LATE_MARGIN_SECONDS


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

    def pages(self) -> list[dict[str, Any]]:
        """The notifications of the pages a death owes (PAGES), in order of arrival."""
        with self.lock:
            return [n for n in self.notifications if n["commonLabels"].get("alertname") in PAGES]

    def others(self) -> list[str]:
        """Every other page (a host's TradingBotDown, a failed remediation): each one false here."""
        with self.lock:
            notes = [n for n in self.notifications if n["commonLabels"].get("alertname") not in PAGES]
        return [f"{n['status']} {n['groupLabels']} from {n['externalURL']}" for n in notes]

    def stale_views(self, window: float) -> set[int]:
        """The positions in `pages()` of the notifications prometheus/alertmanager#2447 makes (open upstream, as #4008
        is): a firing notification whose every firing alert the other member's notification resolved less than
        `window` ago. The second member took its view of the group just before the alert's end reached it, waited
        the peer timeout, then found the first member's "resolved" in the notification log: it sends its view as a
        change. Its next flush resolves the alert again. None with `window` 0."""
        stale: set[int] = set()
        if window <= 0:
            return stale
        resolved: dict[tuple[Any, ...], tuple[float, str]] = {}
        for i, note in enumerate(self.pages()):
            firing = [alert_identity(a) for a in note["alerts"] if a["status"] == "firing"]
            if (
                note["status"] == "firing"
                and firing
                and all(
                    key in resolved
                    and resolved[key][1] != note["externalURL"]
                    and note["at"] - resolved[key][0] <= window
                    for key in firing
                )
            ):
                stale.add(i)
                continue
            for alert in note["alerts"]:
                key = alert_identity(alert)
                if alert["status"] == "resolved":
                    resolved[key] = (note["at"], note["externalURL"])
                else:
                    resolved.pop(key, None)
        return stale

    def incidents(self, stale_window: float = 0.0) -> list[tuple[float, str, str]]:
        """(when, alertname, instance) of every incident opened: a firing notification of a group whose incident was
        not open (its last notification was not firing); but for `stale_views(stale_window)`."""
        opened = []
        open_groups: set[str] = set()
        stale = self.stale_views(stale_window)
        for i, note in enumerate(self.pages()):
            if i in stale:
                continue
            key = note["groupKey"]
            if note["status"] == "firing" and key not in open_groups:
                labels = note["groupLabels"]
                opened.append((note["at"], labels["alertname"], labels.get("instance", "")))
            (open_groups.add if note["status"] == "firing" else open_groups.discard)(key)
        return opened

    def open_for(self, instance: str) -> set[str]:
        """The alertnames of the incidents open for `instance` (their group's last notification firing)."""
        last: dict[str, dict[str, Any]] = {}
        for note in self.pages():
            last[note["groupKey"]] = note
        return {
            n["groupLabels"]["alertname"]
            for n in last.values()
            if n["status"] == "firing" and n["groupLabels"].get("instance") == instance
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Death:
    died: float
    paged: dict[str, float] = field(default_factory=dict)  # alertname -> the incident opened (monotonic)
    returned: float | None = None
    ended: float | None = None  # every page's incident closed, neither Prometheus holding the alert


@dataclass
class Host:
    """One bot host and the sequence it lives: it dies, returns, and dies again `gaps[i]` seconds after its i-th
    return's end reached the pager (0: at once, while its alert groups still exist), one death more than `gaps` has;
    its last return is followed by the run's quiet (`quiet_seconds`). None: it lives through the run."""

    address: str
    bot: MetricsServer
    node: MetricsServer
    job: str = "tradingbot"  # the bot's scrape job: tradingbot (a bot on the runtime) or freqtrade (its sidecar)
    gaps: tuple[float, ...] | None = None
    start_at: float = 0.0
    deaths: list[Death] = field(default_factory=list)
    state: str = "alive"
    next_at: float = 0.0

    @property
    def instance(self) -> str:
        return f"{self.address}:{self.bot.port}"


@dataclass
class Pair:
    profile: Profile
    pager: Pager
    hosts: list[Host]
    prometheus: dict[str, str]  # replica name -> URL
    alertmanagers: list[str]
    metrics: MetricsHosts  # the process serving the hosts' /metrics
    reconciler: ThreadedServer | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pages: tuple[str, ...] = PAGES

    def close(self) -> None:
        """Stop everything the pair runs (its pager's notifications stay for the judge); again, nothing."""
        if self.reconciler is not None:
            self.reconciler.stop()
            self.reconciler = None
        while self.procs:
            stop(self.procs.pop())
        self.metrics.close()  # every host's servers with it
        self.pager.close()

    def host_down_episodes(self) -> list[dict[str, Any]]:
        """The reconciler's episodes of TradingBotHostDown (at most the API's 200 newest: a run has ten deaths)."""
        assert self.reconciler is not None
        url = f"http://127.0.0.1:{self.reconciler.port}/api/v1/episodes?limit=200"
        with urllib.request.urlopen(urllib.request.Request(url, headers=READ_AUTH), timeout=10) as resp:
            listed = json.loads(resp.read())["episodes"]
        return [e for e in listed if e["alertname"] == HOST_DOWN]

    def query(self, url: str, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.quote(expr)
        with urllib.request.urlopen(f"{url}/api/v1/query?query={q}", timeout=5) as resp:
            return list(json.loads(resp.read())["data"]["result"])

    def unanswered_while_alive(self) -> list[str]:
        """Every failed scrape (`up` 0, as either member stored it) of a host's bot or node exporter while the host
        was alive: listening, not dead. Its servers run in the test's process, so a machine loaded enough to stall it
        past the scrape timeout (0.8 s at the fast profile) makes a live host look dead, and its TradingBotHostDown
        then fires as it should, a page no return caused. Each as "instance job at +Ns (member)", seconds from the
        first death."""
        deaths = [d for h in self.hosts for d in h.deaths]
        if not deaths:
            return []
        wall = time.time() - time.monotonic()  # a monotonic time plus this: the wall clock's
        zero = min(d.died for d in deaths)
        span = int(time.monotonic() - zero) + 60
        by_address: dict[str, list[tuple[float, float]]] = {}
        for host in self.hosts:
            # Dead from its death until its servers listened again (`returned` is set once they do).
            by_address[host.address] = [
                (d.died + wall, (d.returned if d.returned is not None else float("inf")) + wall) for d in host.deaths
            ]
        found: set[tuple[float, str, str, str]] = set()
        for name, url in self.prometheus.items():
            for series in self.query(url, f'up{{job=~"tradingbot|freqtrade|node"}}[{span}s]'):
                instance, job = series["metric"]["instance"], series["metric"]["job"]
                dead = by_address.get(instance.rsplit(":", 1)[0], [])
                for at, value in series["values"]:
                    if float(value) == 0 and not any(start <= float(at) <= end for start, end in dead):
                        found.add((float(at), instance, job, name))
        return [f"{i} {j} at +{at - wall - zero:.1f}s ({m})" for at, i, j, m in sorted(found)]

    def held(self) -> set[str]:
        """The instances either member holds TradingBotHostDown for (firing or pending)."""
        expr = f'ALERTS{{alertname="{HOST_DOWN}"}}'
        return {r["metric"]["instance"] for url in self.prometheus.values() for r in self.query(url, expr)}

    def watched(self) -> None:
        """Both members scrape every host (bot and node exporter up) and hold no host-down alert."""
        expr = f'count(up{{job=~"tradingbot|freqtrade|node"}} == 1) == {2 * len(self.hosts)}'
        for name, url in self.prometheus.items():
            until(f"prometheus {name} sees the hosts", functools.partial(self.query, url, expr), deadline=60)
        until("neither member holds a host-down alert", lambda: not self.held(), deadline=60)

    def plan(self, sequences: list[tuple[float, ...]], stagger: float) -> None:
        """Give host i the sequence `sequences[i]` (Host.gaps; a host without one lives through the run), its first
        death `stagger` x i seconds after host 0's (the deaths fall at other moments of the groups' and rules'
        cycles)."""
        start = time.monotonic()
        for i, host in enumerate(self.hosts):
            host.gaps = sequences[i] if i < len(sequences) else None
            host.start_at = start + stagger * i
            host.state = "alive" if host.gaps is not None else "done"

    def step(self, now: float) -> bool:
        """Move every host's sequence on by what the pager and the members say now; whether any is not done."""
        # The members are asked only once a returned host's pages ended at the pager (the cheap look first).
        ending = [h for h in self.hosts if h.state == "back" and not self.pager.open_for(h.instance)]
        held = self.held() if ending else set()
        opened = self.pager.incidents()
        for host in self.hosts:
            if host.state == "alive" and now >= host.start_at:
                host.deaths.append(Death(time.monotonic()))
                host.bot.stop()
                host.node.stop()
                host.state = "dead"
            elif host.state == "dead":
                death = host.deaths[-1]
                for at, name, instance in opened:
                    if instance == host.instance and at >= death.died and name not in death.paged:
                        death.paged[name] = at
                if set(self.pages) <= set(death.paged) or now - death.died > PAGE_DEADLINE_SECONDS:
                    host.node.start()  # the node exporter first, as a booting host's units start
                    host.bot.start()
                    death.returned = time.monotonic()
                    host.state = "back"
            elif host.state == "back":
                death = host.deaths[-1]
                assert death.returned is not None
                over = not self.pager.open_for(host.instance) and host.instance not in held
                if over or now - death.returned > END_DEADLINE_SECONDS:
                    death.ended = time.monotonic() if over else None
                    gaps = host.gaps or ()
                    last = len(host.deaths) > len(gaps)
                    host.next_at = now + (quiet_seconds(self.profile) if last else gaps[len(host.deaths) - 1])
                    host.state = "quiet" if last else "waiting"
            elif host.state == "waiting" and now >= host.next_at:
                host.start_at, host.state = now, "alive"
            elif host.state == "quiet" and now >= host.next_at:
                host.state = "done"
        return any(h.state != "done" for h in self.hosts)


def run(pairs: list[Pair], finished: Callable[[Pair], None]) -> None:
    """Every pair's hosts through their sequences, side by side; a pair whose hosts are all done is handed to
    `finished` and closed at once (its servers cost the others nothing more)."""
    going = list(pairs)
    while going:
        for pair in [p for p in going if not p.step(time.monotonic())]:
            going.remove(pair)
            try:
                finished(pair)
            finally:
                pair.close()
        if going:
            time.sleep(POLL_SECONDS)


def summary(seconds: list[float]) -> dict[str, float] | None:
    """min, median and max of `seconds` (None for none)."""
    if not seconds:
        return None
    return {"min": min(seconds), "median": round(statistics.median(seconds), 1), "max": max(seconds)}


def alert_identity(alert: dict[str, Any]) -> tuple[Any, ...]:
    return (tuple(sorted(alert["labels"].items())), alert["startsAt"][:19])


def judge(pair: Pair) -> dict[str, Any]:
    """Per death: each page's count while the host was dead and its time, the pages after its return (until its
    next death or the run's end); the alerts notified firing after their own resolution, the alerts whose last word
    was "firing"; totals, with each page's times (min, median, max) and the late ones (later than the run's quickest
    by more than `late_after`)."""
    # alertmanager#2447's stale views: told apart, counted and shown, not judged (docs/deployment.md).
    window = peer_timeout(pair.profile) + STALE_VIEW_MARGIN_SECONDS
    stale = pair.pager.stale_views(window)
    opened = pair.pager.incidents(window)
    rows: list[dict[str, Any]] = []
    for host in pair.hosts:
        for i, death in enumerate(host.deaths):
            back = death.returned if death.returned is not None else float("inf")
            end = host.deaths[i + 1].died if i + 1 < len(host.deaths) else float("inf")
            mine = [(at, name) for at, name, instance in opened if instance == host.instance]
            rows.append(
                {
                    "host": host.instance,
                    "death": i + 1,
                    **{
                        f"{name}_pages": sum(1 for at, n in mine if n == name and death.died <= at < back)
                        for name in pair.pages
                    },
                    **{
                        f"{name}_seconds": round(death.paged[name] - death.died, 1) if name in death.paged else None
                        for name in pair.pages
                    },
                    "pages_after_return": sum(1 for at, _ in mine if back <= at < end),
                    "ended_seconds": None
                    if death.ended is None or death.returned is None
                    else round(death.ended - death.returned, 1),
                }
            )
    refires: list[str] = []
    last: dict[tuple[Any, ...], str] = {}
    # The last word on each alert as a pager keys it: by its labels. An Alertmanager that merged the pair's copies
    # of one alert resolves it under the earlier start it then holds, not always the start it first sent firing.
    last_word: dict[tuple[Any, ...], str] = {}
    stale_notes: list[str] = []
    for i, note in enumerate(pair.pager.pages()):
        if i in stale:
            stale_notes.append(f"{note['status']} {note['groupLabels']} from {note['externalURL']}")
            last_word.update((alert_identity(a)[0], a["status"]) for a in note["alerts"])  # still its last word
            continue
        for alert in note["alerts"]:
            key = alert_identity(alert)
            if alert["status"] == "firing" and last.get(key) == "resolved":
                name, instance = alert["labels"]["alertname"], dict(key[0]).get("instance")
                refires.append(f"{name} {instance} firing again after its resolution ({note['externalURL']})")
            last[key] = alert["status"]
            last_word[key[0]] = alert["status"]
    times = {name: [r[f"{name}_seconds"] for r in rows if r[f"{name}_seconds"] is not None] for name in pair.pages}
    late = [
        f"{r['host']} death {r['death']}: {name} after {r[f'{name}_seconds']} s"
        for name in pair.pages
        for r in rows
        if r[f"{name}_seconds"] is not None and r[f"{name}_seconds"] > min(times[name]) + late_after(pair.profile, name)
    ]
    # One firing, one episode: each death's alert acted on once. The pair's copies of it (their startsAt apart) are
    # closed skipped, naming the episode that acted; a resolution under a start nothing fired with is stored closed
    # `resolved` (an Alertmanager resolves under the earliest start it holds).
    episodes = pair.host_down_episodes()
    unanswered = pair.unanswered_while_alive()
    copies = [e for e in episodes if e["state"] == "skipped" and "the same firing as episode" in (e["detail"] or "")]
    acting = [e for e in episodes if e["state"] not in ("skipped", "resolved")]
    return {
        "profile": pair.profile.name,
        "deaths": len(rows),
        "host_down_episodes_acting": len(acting),
        "host_down_copies_skipped": len(copies),
        "host_down_episode_states": sorted(e["state"] for e in episodes),
        # A failure's account of them: which alert, which start, when heard and ended, what became of it.
        "host_down_episodes": [
            f"{e['id']} {e['target']} start {e['starts_at']} received {e['received_at']} resolved {e['resolved_at']} "
            f"{e['state']}: {(e['detail'] or '')[:120]}"
            for e in sorted(episodes, key=lambda e: e["id"])
        ],
        "deaths_rows": rows,
        # Not judged (a lone failed scrape pages nothing): what tells a page of the machine's load from the cluster's.
        "unanswered_while_alive": len(unanswered),
        "unanswered_scrapes": unanswered[:40],
        "pages_per_death": {name: sorted({r[f"{name}_pages"] for r in rows}) for name in pair.pages},
        "missing": sum(1 for r in rows for name in pair.pages if r[f"{name}_pages"] == 0),
        "extra_pages_while_dead": sum(max(0, r[f"{name}_pages"] - 1) for r in rows for name in pair.pages),
        "false_pages_after_return": sum(r["pages_after_return"] for r in rows),
        "alerts_firing_after_resolved": len(refires),
        "stale_view_pages": len(stale_notes),
        "stale_view_notes": stale_notes,
        "other_pages": pair.pager.others(),
        "refires": refires,
        "last_word_firing": sum(1 for status in last_word.values() if status != "resolved"),
        "not_ended": sum(1 for r in rows if r["ended_seconds"] is None),
        "late": late,
        "page_seconds": {
            name: {"min": min(t), "median": round(statistics.median(t), 1), "max": max(t), "all": t}
            for name, t in times.items()
            if t
        },
        "ended_seconds": summary([r["ended_seconds"] for r in rows if r["ended_seconds"] is not None]),
        "notifications": len(pair.pager.pages()),
    }


def account(pair: Pair) -> str:
    """Every page's notification relative to the first death (a failure's message)."""
    deaths = [d.died for h in pair.hosts for d in h.deaths]
    zero = min(deaths) if deaths else 0.0
    lines = []
    for host in pair.hosts:
        for d in host.deaths:
            lines.append(
                f"{host.instance}: died {d.died - zero:.1f}s, returned "
                f"{'-' if d.returned is None else f'{d.returned - zero:.1f}s'}, ended "
                f"{'-' if d.ended is None else f'{d.ended - zero:.1f}s'}"
            )
    for n in pair.pager.pages():
        alerts = ", ".join(f"{a['status']} {a['startsAt'][11:19]}" for a in n["alerts"])
        labels = n["groupLabels"]
        lines.append(
            f"{n['at'] - zero:7.1f}s {n['status']:8} {labels['alertname']} {labels.get('instance', '')} "
            f"{labels.get('episode', '')} from {n['externalURL']}: {alerts}"
        )
    return "\n".join(lines)


def prometheus_file(tmp: Path, replica: str, profile: Profile, hosts: list[Host], managers: list[str]) -> Path:
    """One member's prometheus.yml: the shipped availability rules at `profile`, the profile's timings, and the
    `external_labels` and `alerting` section `config render --replica` writes for this pair."""
    folder = tmp / f"prometheus-{replica}"
    folder.mkdir(parents=True)
    for rule_file in RULE_FILES:
        source = REPO_ROOT / "prometheus" / "rules" / rule_file
        (folder / rule_file).write_text(yaml.safe_dump(adapt_rules(load_yaml(source), profile, str(source))))
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
        "rule_files": [str(folder / rule_file) for rule_file in RULE_FILES],
        "alerting": rendered["alerting"],
        "scrape_configs": [
            *(
                {"job_name": job, "static_configs": [{"targets": [h.instance for h in hosts if h.job == job]}]}
                for job in ("tradingbot", "freqtrade")
            ),
            {"job_name": "node", "static_configs": [{"targets": [f"{h.address}:{h.node.port}" for h in hosts]}]},
        ],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def alertmanager_file(tmp: Path, name: str, profile: Profile, pager: Pager, reconciler: int, token: Path) -> Path:
    """The repository's routing as `trading-ops up` renders it at `profile`, its pager receiver posting to `pager`
    (resolved notices included, as the shipped pager sends them), the reconciler's to the reconciler on port
    `reconciler` with its webhook token (the file `token`)."""
    folder = tmp / f"alertmanager-{name}"
    folder.mkdir(parents=True)
    rendered = render_alertmanager(REPO_ROOT, Ports(reconciler=reconciler), profile, token)
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
    hosts: int,
    first_address: int = HOST_BASE,
    members: tuple[tuple[str, Generation], ...] = MEMBERS,
    alertmanager: Generation = SYSTEM,
) -> Iterator[Pair]:
    """The pair, the cluster (of `alertmanager`'s generation), the reconciler and `hosts` hosts (at 127.0.0.x from
    `first_address` on), up and watching; everything stopped at the end (Pair.close)."""
    metrics = MetricsHosts()
    machines = [
        Host(
            f"127.0.0.{first_address + i}",
            metrics.server(f"127.0.0.{first_address + i}", "tradingbot_up_for_the_test 1\n"),
            metrics.server(f"127.0.0.{first_address + i}", "node_up_for_the_test 1\n"),
            job="freqtrade" if i % FREQTRADE_EVERY == 1 else "tradingbot",
        )
        for i in range(hosts)
    ]
    web = [free_port() for _ in members]
    gossip = [free_port() for _ in members]
    prometheus_ports = [free_port() for _ in members]
    managers = [f"http://127.0.0.1:{p}" for p in web]
    pair = Pair(profile, Pager(), machines, {}, managers, metrics)
    try:
        for host in machines:
            host.bot.start()
            host.node.start()
        folder = tmp / "reconciler"
        folder.mkdir(parents=True)
        db = f"sqlite:///{folder / 'ledger.db'}"
        with MIGRATING:
            migrate.upgrade(db)
        config = make_config(
            folder,
            db,
            playbook=str(write_playbook(folder, [EXPOSURE_RULE])),
            prometheus_url=[f"http://127.0.0.1:{p}" for p in prometheus_ports],
            alertmanager_url=managers[0],
            alertmanager_peers=managers[1:],
            # The shipped poll (the tests' 0.05 s costs CPU for nothing here): how soon an ended host's exposure page
            # is ended, a second at most after the host's alert resolved in the ledger.
            poll_interval_seconds=1.0,
        )
        pair.reconciler = ThreadedServer(config)
        for i, (name, _) in enumerate(members):
            path = alertmanager_file(tmp, name, profile, pair.pager, pair.reconciler.port, folder / "webhook-token")
            peers = [f"--cluster.peer=127.0.0.1:{p}" for j, p in enumerate(gossip) if j != i]
            argv = [
                alertmanager.binary("prometheus-alertmanager") if alertmanager.bin_dir else alertmanager_binary(),
                f"--config.file={path}",
                f"--storage.path={path.parent / 'data'}",
                f"--web.listen-address=127.0.0.1:{web[i]}",
                f"--web.external-url=http://127.0.0.1:{web[i]}",
                f"--cluster.listen-address=127.0.0.1:{gossip[i]}",
                f"--cluster.advertise-address=127.0.0.1:{gossip[i]}",
                *peers,
                *profile.cluster_flags(),
                "--log.level=warn",
            ]
            pair.procs.append(
                subprocess.Popen(
                    argv,
                    stdout=subprocess.DEVNULL,
                    stderr=open(path.parent / "alertmanager.log", "wb"),  # noqa: SIM115
                )
            )
        for url, proc in zip(managers, list(pair.procs), strict=True):
            wait_http(f"{url}/-/ready", proc=proc, deadline=60)
        for (name, generation), port in zip(members, prometheus_ports, strict=True):
            path = prometheus_file(tmp, name, profile, machines, managers)
            flags = []
            if profile.alert_resend_delay is not None:
                flags.append(f"--rules.alert.resend-delay={format_duration(profile.alert_resend_delay)}")
            pair.procs.append(start_prometheus(path, path.parent / "data", port, *flags, generation=generation))
            pair.prometheus[name] = f"http://127.0.0.1:{port}"
        for url, proc in zip(pair.prometheus.values(), pair.procs[len(members) :], strict=True):
            wait_http(f"{url}/-/ready", proc=proc, deadline=60)
        pair.watched()
        yield pair
    finally:
        pair.close()


def ha_pairs(stack: contextlib.ExitStack, tmp: Path, hosts: dict[Profile, int]) -> list[Pair]:
    """A pair (ha_pair) per profile with its number of hosts, started side by side (each on addresses of its own);
    `stack` stops them at its end."""
    managers = [
        ha_pair(tmp / profile.name, profile, count, first_address=HOST_BASE + 20 * i)
        for i, (profile, count) in enumerate(hosts.items())
    ]
    with ThreadPoolExecutor(len(managers)) as pool:
        futures = [pool.submit(manager.__enter__) for manager in managers]
    pairs, problems = [], []
    for manager, future in zip(managers, futures, strict=True):
        problem = future.exception()
        if problem is None:
            pairs.append(future.result())
            stack.push(manager.__exit__)
        else:
            problems.append(problem)
    if problems:
        raise problems[0]
    return pairs


# A verdict's parts kept for a failure's message, not printed with its numbers.
UNPRINTED = ("deaths_rows", "refires", "host_down_episodes", "unanswered_scrapes", "stale_view_notes")
# The measure: pages per sequence over ten deaths and returns at each profile.
DEATHS = 10


def sequences(profile: Profile, again: bool) -> list[tuple[float, ...]]:
    """DEATHS deaths of the hosts, as Host.gaps: with `again`, five hosts each dead twice, three of them again as soon
    as the first end reached the pager (their alert groups still there), two once the quiet after the end passed;
    without, ten hosts dead once."""
    if not again:
        return [()] * DEATHS
    return [(0.0,) if i % 2 == 0 else (quiet_seconds(profile),) for i in range(DEATHS // 2)]


def stagger(profile: Profile, hosts: int) -> float:
    """Seconds between the hosts' first deaths: together they span a scrape interval, so that the deaths fall at every
    moment of the scrapes' and evaluations' cycles, and of the groups' slots."""
    return (profile.scrape_interval or 5.0) / hosts


def live_and_judge(tmp: Path, plans: dict[Profile, list[tuple[float, ...]]]) -> None:
    """A pair per profile (side by side) whose hosts live `plans`, judged; each page once per death, on time, none
    after a return, no alert firing after its resolution, the last word "resolved" on every one, and nothing else
    paged (a freqtrade host's TradingBotFreqtradeSidecarDown among them: its host's TradingBotHostDown is the page).
    Prints, per profile, the pages per death and the seconds from each death to each page."""
    verdicts: dict[str, dict[str, Any]] = {}
    accounts: dict[str, str] = {}
    deaths = {profile.name: sum(len(gaps) + 1 for gaps in plan) for profile, plan in plans.items()}

    def finished(pair: Pair) -> None:
        verdicts[pair.profile.name] = {**judge(pair), "sequences_seconds": round(time.monotonic() - began, 1)}
        accounts[pair.profile.name] = account(pair)

    with contextlib.ExitStack() as stack:
        pairs = ha_pairs(stack, tmp, {profile: len(plan) for profile, plan in plans.items()})
        for pair, plan in zip(pairs, plans.values(), strict=True):
            pair.plan(plan, stagger(pair.profile, len(plan)))
        began = time.monotonic()
        run(pairs, finished)
    for verdict in verdicts.values():
        print(json.dumps({k: v for k, v in verdict.items() if k not in UNPRINTED}))
    for name, verdict in verdicts.items():
        detail = f"{json.dumps(verdict, indent=1)}\n{accounts[name]}"
        assert verdict["deaths"] == deaths[name], detail
        assert verdict["host_down_episodes_acting"] == deaths[name], detail
        assert verdict["pages_per_death"] == {page: [1] for page in PAGES}, detail
        assert verdict["false_pages_after_return"] == 0, detail
        assert verdict["alerts_firing_after_resolved"] == 0, detail
        assert verdict["other_pages"] == [], detail
        assert verdict["last_word_firing"] == 0 and verdict["not_ended"] == 0, detail
        assert verdict["late"] == [], detail
    assert sorted(verdicts) == sorted(p.name for p in plans), verdicts
