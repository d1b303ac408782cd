"""A bot host that dies, comes back and dies again, as operators live it, with real parts: what reaches the pager.

The host is a test host of its own (tests/netns_hosts.py) running the example ccxt bot (examples/ccxt_bot.py on the
Kraken-compatible gateway, its dead man's switch armed) and Debian's prometheus-node-exporter. Real Prometheus with
the repository's availability and trading rules at a profile, the repository's Alertmanager routing (its pager
receiver posting to a receiver of the caller's own, resolved notices included, as the shipped pager has them) and
the reconciler with the packaged bot-host-down, bot-restart and bot-loop-restart rules as shipped (their cooldowns
included). Each death SIGKILLs every process of the host and cuts its link; each return brings its link, its node
exporter and then its bot back.

`HostDeaths.die` and `HostDeaths.come_back` are the steps; `Pager` keeps every notification; `judge` tells, per death,
when its orders were gone from the venue and when each page it owes arrived (the host-down page: the bot holds no
position, so no exposure page is owed), and counts false pages (anything else paged, or a page twice), late pages (a
death's page later than the first death's by more than LATE_MARGIN_SECONDS) and resolved notices of an earlier outage
that arrived after the next death. tests/deploy/test_host_down_e2e.py and benchmarks/deploy/bench_host_deaths.py run
it."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from alertmanager_server import start_repo_alertmanager
from e2e_stack import PLAYBOOK, Monitoring
from gateway_helpers import API_KEY, API_SECRET, SIDECAR_KEY, SIDECAR_SECRET, Gateway, start_gateway
from netns_hosts import Host, host_network
from polling import until
from ports import free_port
from prometheus_server import start_prometheus
from reconciler_server import ThreadedServer, make_config
from secret_file import write_secret
from server_process import stop, wait_http
from system_binaries import REPO_ROOT, require_binary

from trading_ops.db import migrate
from trading_ops.durations import format_duration
from trading_ops.stack.profiles import FAST, Profile
from trading_ops.stack.prometheus_config import adapt_rules
from trading_ops.stack.repo import load_yaml

EXAMPLE = REPO_ROOT / "examples" / "ccxt_bot.py"
BOT = "kraken-1"
BOT_PORT, NODE_PORT = 9101, 9100
BOT_TOKEN = "control-token-of-the-bots-0123456789"
# The dead man's switch as a user configures it, shortened for the test (Kraken recommends 60 s, refreshed every
# 15-30 s).
SWITCH = {"timeout_seconds": 15, "refresh_interval_seconds": 5}
# A Binance bot's REST polls (its fills and book stream; the polls are the fallback): every second one symbol's open
# orders (weight 6) and trades (20), about 1,600 of the IP's 6,000 weight a minute.
BINANCE_POLL_SECONDS = 1.0
# The pages a host's death owes: the host-down page (Prometheus's). The bot holds no position here (a market that stands
# still: its bids rest, nothing fills), so the exposure page (the reconciler's) is owed to nobody: its orders cancelled,
# the account is flat, and a page about nothing is skipped (tests/deploy/test_host_down_e2e.py's first test pages one
# for a position held). An exposure page here is a false page.
HOST_DOWN, EXPOSURE = "TradingBotHostDown", "TradingOpsBotHostDown"
DEATH_PAGES = (HOST_DOWN,)
# A death's page later than the same run's first death's by more than this is late (the pager's 1-minute slot, or a
# cooldown, is what late means here; a scrape or two of difference is not).
LATE_MARGIN_SECONDS = 10.0
# The rule files of the shipped pack the host's alerts come from (availability: up, host down, heartbeat; trading:
# the switch).
RULE_FILES = ("tradingbot-availability.yml", "tradingbot-trading.yml")
# The packaged rules the reconciler runs, as shipped.
RULES = ("bot-host-down", "bot-restart", "bot-loop-restart")


def bot_config(
    tmp: Path,
    name: str,
    symbol: str,
    listen: str,
    port: int,
    key: tuple[str, str],
    venue: str,
    exchange: str = "kraken",
    **policies: str,
) -> Path:
    """examples/ccxt_bot.py's configuration for a bot of its own account: `symbol` only, the gateway at `venue` with
    the API `key`, streaming; on `exchange` kraken (the gateway's Kraken API, the switch as SWITCH says) or binance
    (its Binance spot dialect: no switch to arm, polls paced to Binance's weights as BINANCE_POLL_SECONDS says);
    `policies` its recovery policies."""
    tmp.mkdir(parents=True, exist_ok=True)
    for file, value in (("api-key", key[0]), ("api-secret", key[1]), ("token", BOT_TOKEN)):
        write_secret(tmp / file, value)
    url = f"sqlite:///{tmp / 'journal.db'}"
    migrate.upgrade(url)
    settings: dict[str, Any] = {
        "database": {"url": url},
        "bot": {
            "name": name,
            "venue": "kraken",
            "strategy": "mean-reverter",
            "listen": {"host": listen, "port": port},
            "control_token_file": str(tmp / "token"),
            "data_dir": str(tmp / "data"),
            "loop_interval_seconds": 0.2,
            "market_data_stale_seconds": 5,
            "dead_man_switch": SWITCH,
            "risk": {"daily_loss_limit": 5000},
        },
        "ccxt": {
            "exchange": "kraken",
            "api_key_file": str(tmp / "api-key"),
            "api_secret_file": str(tmp / "api-secret"),
            "urls": {"public": venue, "private": venue},
            "symbols": [symbol],
            "poll_interval_seconds": 0.5,
            "quote_poll_interval_seconds": 0.5,
            "enable_rate_limit": False,
            "kraken_tier": "off",  # the gateway here keeps no call counter (tests/venues/test_call_counter.py does)
        },
        "recovery": {"reconcile_interval_seconds": 0, "policies": policies},
    }
    if exchange == "binance":
        settings["bot"]["venue"] = "binance"
        del settings["bot"]["dead_man_switch"]  # Binance spot has none: the reconciler's venue step stands in for it
        rest = f"{venue}/api/v3"  # every other REST URL of ccxt's binance keeps its path on this host
        settings["ccxt"].update(
            exchange="binance",
            urls={"public": rest, "private": rest},
            poll_interval_seconds=BINANCE_POLL_SECONDS,
            quote_poll_interval_seconds=BINANCE_POLL_SECONDS,
        )
        del settings["ccxt"]["kraken_tier"]
    path = tmp / "bot.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@dataclass
class Notice:
    """One alert of a notification that reached the pager."""

    at: float  # time.monotonic() when it arrived
    alertname: str
    status: str  # firing or resolved
    starts_at: str


class Pager:
    """Where Alertmanager's pager receiver posts (in place of PagerDuty and e-mail): every alert of every notification,
    firing and resolved, with when it arrived."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []
        pager = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.monotonic()
                for a in body["alerts"]:
                    name = str(a["labels"]["alertname"])
                    pager.notices.append(Notice(now, name, str(a["status"]), str(a.get("startsAt", ""))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def pages(self) -> list[str]:
        """The alert names it was paged with (firing), in order."""
        return [n.alertname for n in self.notices if n.status == "firing"]

    @property
    def arrived(self) -> dict[str, float]:
        """When each page (by alert name) last reached the pager."""
        return {n.alertname: n.at for n in self.notices if n.status == "firing"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Pager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def prometheus_config(
    tmp: Path, bot: str, node: str, alertmanager_url: str, profile: Profile = FAST, files: tuple[str, ...] = RULE_FILES
) -> Path:
    """Prometheus scraping the bot and its host's node exporter with the shipped rule `files` at `profile`."""
    paths = []
    for name in files:
        source = REPO_ROOT / "prometheus" / "rules" / name
        rules = tmp / name
        rules.write_text(yaml.safe_dump(adapt_rules(load_yaml(source), profile, str(source))))
        paths.append(str(rules))
    # The standard profile: the shipped scrape and evaluation timings (5 s, timeout 4 s); without them Prometheus's
    # defaults (1 m) made a host-down page take 114 to 145 s (bench_host_deaths, 2026-11-27).
    shipped = load_yaml(REPO_ROOT / "prometheus" / "prometheus.yml")["global"]
    global_ = {k: shipped[k] for k in ("scrape_interval", "evaluation_interval", "scrape_timeout")}
    if profile.scrape_interval:
        interval = format_duration(profile.scrape_interval)
        global_ = {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": "800ms"}
    config = {
        "global": global_,
        "rule_files": paths,
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}]},
        "scrape_configs": [
            {"job_name": "tradingbot", "static_configs": [{"targets": [bot]}]},
            {"job_name": "node", "static_configs": [{"targets": [node]}]},
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def shipped_rules(names: tuple[str, ...] = RULES) -> dict[str, Any]:
    """The packaged default playbook's rules `names`, as shipped (cooldowns included)."""
    packaged = yaml.safe_load(PLAYBOOK.read_text())
    return {"rules": [r for r in packaged["rules"] if r["name"] in names]}


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@dataclass
class Death:
    """One death of the host: when it died, how, and when (monotonic) it came back (None: not yet)."""

    kind: str
    killed: float
    killed_at: datetime
    returned: float | None = None
    cancelled: float | None = None  # time.monotonic() when none of the bot's orders rested at the venue any more


@dataclass
class HostDeaths:
    """The host, its bot and the ops stack watching it; `die` and `come_back` in any order the caller plays."""

    tmp: Path
    host: Host
    gateway: Gateway
    pager: Pager
    stack: Monitoring
    reconciler: ThreadedServer
    node_exporter: str
    bot_file: Path
    deaths: list[Death] = field(default_factory=list)
    starts: int = 0

    @property
    def bot_target(self) -> str:
        return f"{self.host.address}:{BOT_PORT}"

    @property
    def node_target(self) -> str:
        return f"{self.host.address}:{NODE_PORT}"

    def start_host(self) -> None:
        """The host's node exporter, then its bot (as a host's boot starts them)."""
        self.starts += 1
        with open(self.tmp / f"node-exporter-{self.starts}.log", "wb") as log:
            self.host.popen([self.node_exporter, f"--web.listen-address={self.node_target}"], stdout=log, stderr=log)
        node_up = f'up{{job="node", instance="{self.node_target}"}}'
        if self.starts > 1:  # the node exporter scraped first: the bot starts while its host already answers
            until("the host's node exporter scraped again", lambda: self.stack.scalar(node_up) == 1, deadline=60)
        with open(self.tmp / f"{BOT}-{self.starts}.log", "wb") as log:
            self.host.popen([sys.executable, str(EXAMPLE), str(self.bot_file)], cwd=REPO_ROOT, stdout=log, stderr=log)

    def resting(self) -> set[str]:
        return {
            str(o["clientOrderId"])
            for o in self.gateway.call("fetch_open_orders")
            if str(o.get("clientOrderId")).startswith(f"{BOT}-")
        }

    def trading(self) -> bool:
        phase = f'tradingbot_phase{{instance="{self.bot_target}", phase="trading"}}'
        return ready(f"http://{self.bot_target}") and self.stack.scalar(phase) == 1

    def die(self, kind: str) -> Death:
        """Every process of the host SIGKILLed at once, and its link cut."""
        death = Death(kind, time.monotonic(), datetime.now().astimezone())
        for proc in self.host.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        self.host.link_down()
        self.deaths.append(death)
        return death

    def paged(self, death: Death) -> bool:
        """Every page the death owes reached the pager (firing: a resolved notice of an earlier death is no page)."""
        return all(
            any(n.at >= death.killed and n.status == "firing" for n in self.pager.notices if n.alertname == a)
            for a in DEATH_PAGES
        )

    def come_back(self) -> None:
        """Its link up, its node exporter, then its bot: returned once it trades again."""
        self.host.link_up()
        self.start_host()
        until("the returned bot trading", self.trading, deadline=120)
        self.deaths[-1].returned = time.monotonic()

    def host_down_over(self) -> bool:
        """Prometheus no longer holds the host-down alert firing (the host answers again)."""
        expr = f'ALERTS{{alertname="{HOST_DOWN}", alertstate="firing", instance="{self.bot_target}"}}'
        return self.stack.scalar(expr) is None

    def over_at_pager(self, death: Death) -> bool:
        """Every page of `death` was ended at the pager: each firing notice since its kill has its resolved notice
        (the operators were told the death is over)."""
        since = [n for n in self.pager.notices if n.at >= death.killed and n.alertname in DEATH_PAGES]
        ended = {(n.alertname, n.starts_at) for n in since if n.status == "resolved"}
        return all((n.alertname, n.starts_at) in ended for n in since if n.status == "firing")

    def quiet(self, seconds: float) -> None:
        """Let `seconds` pass (the window in which a returning host's false pages would come)."""
        time.sleep(seconds)


@contextlib.contextmanager
def host_deaths(tmp: Path, pager: Pager, profile: Profile = FAST) -> Iterator[HostDeaths]:
    """The whole set-up, the bot trading and its switch armed; everything stopped at the end, whatever happened."""
    node_exporter = require_binary("prometheus-node-exporter")
    write_secret(tmp / "venue-key", SIDECAR_KEY)
    write_secret(tmp / "venue-secret", SIDECAR_SECRET)
    procs: list[subprocess.Popen[bytes]] = []
    reconciler: ThreadedServer | None = None
    with host_network() as network:
        host = network.add_host("bot")
        bot_target, node_target = f"{host.address}:{BOT_PORT}", f"{host.address}:{NODE_PORT}"
        gateway = start_gateway(tmp / "gateway", host=network.gateway, volatility=0)
        try:
            bot_file = bot_config(
                tmp / BOT,
                BOT,
                "BTC-USD",
                host.address,
                BOT_PORT,
                (API_KEY, API_SECRET),
                gateway.url,
                unknown_order="alert",
            )
            db = f"sqlite:///{tmp / 'reconciler.db'}"
            migrate.upgrade(db)
            (tmp / "playbook.yml").write_text(yaml.safe_dump(shipped_rules()))
            prometheus_port, alertmanager_port = free_port(), free_port()
            config = make_config(
                tmp,
                db,
                playbook=str(tmp / "playbook.yml"),
                prometheus_url=f"http://127.0.0.1:{prometheus_port}",
                alertmanager_url=f"http://127.0.0.1:{alertmanager_port}",
                targets={
                    bot_target: {
                        "url": f"http://{bot_target}",
                        "token_file": str(tmp / BOT / "token"),
                        "venue": {
                            "exchange": "kraken",
                            "api_key_file": str(tmp / "venue-key"),
                            "api_secret_file": str(tmp / "venue-secret"),
                            "urls": {"public": gateway.url, "private": gateway.url},
                            "symbols": ["BTC-USD"],
                            "order_id_prefix": BOT,
                        },
                    }
                },
            )
            reconciler = ThreadedServer(config)
            am_url, am_proc = start_repo_alertmanager(
                tmp / "alertmanager",
                alertmanager_port,
                reconciler,
                tmp / "webhook-token",
                pager_url=pager.url,
                send_resolved=True,
                profile=profile,
            )
            procs.append(am_proc)
            stack = Monitoring(f"http://127.0.0.1:{prometheus_port}", am_url, reconciler)
            deaths = HostDeaths(tmp, host, gateway, pager, stack, reconciler, node_exporter, bot_file)
            deaths.start_host()
            until("the bot ready", lambda: ready(f"http://{bot_target}"), deadline=120)
            until("the bot's bid resting", deaths.resting, deadline=60)
            # Prometheus once the bot answers: a bot still starting at Prometheus's first look would read as down.
            prometheus_file = prometheus_config(tmp, bot_target, node_target, am_url, profile)
            procs.append(start_prometheus(prometheus_file, tmp / "prometheus-data", prometheus_port))
            wait_http(f"http://127.0.0.1:{prometheus_port}/-/ready", proc=procs[-1], deadline=30)
            armed = f'tradingbot_dead_man_switch_armed{{instance="{bot_target}"}} and on () up{{job="node"}} == 1'
            until("the bot's switch armed, its host's node exporter up", lambda: stack.scalar(armed) == 1, deadline=60)
            yield deaths
        finally:
            if reconciler is not None:
                reconciler.stop()
            for proc in reversed(procs):
                stop(proc)
            gateway.stop()


# How each death comes: the first; after the host came back and traded a while (within the rule's cooldown); and at
# once after the host's previous death resolved, inside the pager group's interval.
FIRST, AFTER_RETURN, INSIDE_INTERVAL = "first", "after-return", "inside-interval"


def plan(deaths: int) -> list[str]:
    """The kinds of `deaths` deaths in a row: the first, then after a return and inside the interval in turn."""
    return [FIRST] + [(AFTER_RETURN, INSIDE_INTERVAL)[i % 2] for i in range(deaths - 1)]


def play(run: HostDeaths, kinds: list[str], quiet_seconds: float, page_deadline: float = 120) -> None:
    """Each death of `kinds` in turn: killed, its orders cancelled and its pages at the pager, then the host
    back; an after-return death waits `quiet_seconds` of trading first, an inside-interval one dies as soon as the
    previous death's host-down alert is over in Prometheus and its pages' ends reached the pager (its bot still
    starting). After the last death the host comes back and trades for
    `quiet_seconds` (a return that pages is a false page)."""
    for i, kind in enumerate(kinds):
        if kind == AFTER_RETURN:
            until("the bot's bid resting", run.resting, deadline=60)
            run.quiet(quiet_seconds)
        elif kind == INSIDE_INTERVAL:
            # Over in Prometheus and at the pager (the pages' routes flush an end within a second): dying before the
            # pager could hear of the end would make any end a "resolved" read during the new death.
            until(
                "the previous death's pages over",
                lambda d=run.deaths[-1]: run.host_down_over() and run.over_at_pager(d),
                deadline=120,
                interval=0.1,
            )
        death = run.die(kind)
        until(
            f"death {i + 1}'s orders cancelled at the venue",
            lambda: not run.resting(),
            deadline=SWITCH["timeout_seconds"] + 10,
            interval=0.2,
        )
        death.cancelled = time.monotonic()
        try:
            until(f"death {i + 1}'s pages at the pager", lambda d=death: run.paged(d), deadline=page_deadline)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{account(run)}") from None
        if i + 1 < len(kinds) and kinds[i + 1] == INSIDE_INTERVAL:
            run.host.link_up()  # back, and dead again before its bot trades
            run.start_host()
        else:
            run.come_back()
    until("the bot's bid resting", run.resting, deadline=60)
    run.quiet(quiet_seconds)


def account(run: HostDeaths) -> str:
    """What the pager heard and what the reconciler did, relative to the deaths (a failure's message)."""
    zero = run.deaths[0].killed if run.deaths else 0.0
    lines = [f"deaths at {[round(d.killed - zero, 1) for d in run.deaths]} (kinds {[d.kind for d in run.deaths]})"]
    lines += [f"{n.at - zero:7.1f}s {n.status:8} {n.alertname} (startsAt {n.starts_at})" for n in run.pager.notices]
    with contextlib.suppress(OSError, ValueError):
        for e in run.stack.all_episodes():
            steps = [f"{s['action']}:{s['outcome']}" for a in e["attempts"] for s in a["steps"]]
            lines.append(
                f"episode {e['id']} {e['alertname']} {e['starts_at']} {e['state']} {steps} {e['detail'][:200]}"
            )
    return "\n".join(lines)


def judge(run: HostDeaths) -> dict[str, Any]:
    """Per death: when its orders were gone from the venue and its pages (DEATH_PAGES) reached the pager (seconds from
    the kill) and how often; and
    the counts of false pages (anything else paged, a death's page more than once), late pages (later than the first
    death's by more than LATE_MARGIN_SECONDS) and resolved notices of an earlier death that arrived after a later
    kill."""
    notices = sorted(run.pager.notices, key=lambda n: n.at)
    deaths = run.deaths
    per_death: list[dict[str, Any]] = []
    false_pages: list[str] = []
    stale_resolved: list[str] = []
    for i, death in enumerate(deaths):
        end = deaths[i + 1].killed if i + 1 < len(deaths) else float("inf")
        window = [n for n in notices if death.killed <= n.at < end]
        row: dict[str, Any] = {"death": i + 1, "kind": death.kind}
        if death.cancelled is not None:
            row["orders_cancelled_seconds"] = round(death.cancelled - death.killed, 1)
        for name in DEATH_PAGES:
            firing = [n for n in window if n.alertname == name and n.status == "firing"]
            row[f"{name}_seconds"] = round(firing[0].at - death.killed, 1) if firing else None
            row[f"{name}_count"] = len({n.starts_at for n in firing})
            false_pages += [f"death {i + 1}: {name} paged again" for _ in firing[1:]]
        for n in window:
            if n.status == "firing" and n.alertname not in DEATH_PAGES:
                false_pages.append(f"death {i + 1}: {n.alertname} {n.at - death.killed:.1f}s after the kill")
            if n.status == "resolved" and n.alertname in DEATH_PAGES and i > 0:
                if _before(n.starts_at, death.killed_at):
                    stale_resolved.append(
                        f"death {i + 1}: {n.alertname} resolved (of an earlier death) {n.at - death.killed:.1f}s "
                        "after the kill"
                    )
        per_death.append(row)
    before_first = [n for n in notices if deaths and n.at < deaths[0].killed and n.status == "firing"]
    false_pages += [f"before the first death: {n.alertname}" for n in before_first]
    late: list[str] = []
    for name in DEATH_PAGES:
        base = per_death[0][f"{name}_seconds"] if per_death else None
        for row in per_death:
            took = row[f"{name}_seconds"]
            if took is None:
                late.append(f"death {row['death']}: no {name}")
            elif base is not None and took > base + LATE_MARGIN_SECONDS:
                late.append(f"death {row['death']}: {name} {took}s (the first death's {base}s)")
    return {
        "deaths": per_death,
        "false_pages": false_pages,
        "late_pages": late,
        "stale_resolved": stale_resolved,
        "false_page_count": len(false_pages),
        "late_page_count": len(late),
    }


def _before(starts_at: str, moment: datetime) -> bool:
    """Whether an alert's startsAt (RFC 3339, as Alertmanager sends it: up to 9 fractional digits) is before
    `moment`."""
    match = re.fullmatch(r"([^.]+)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", starts_at)
    if match is None:
        return False
    head, fraction, zone = match.groups()
    text = f"{head}.{(fraction or '0')[:6]}{'+00:00' if zone in (None, 'Z') else zone}"
    try:
        return datetime.fromisoformat(text) < moment
    except ValueError:
        return False
