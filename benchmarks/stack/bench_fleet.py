"""A fleet of example bots on one paper gateway (`trading-ops up --bot ccxt-gateway --bots N`, fast profile): what it
costs and how it comes back from a venue-wide outage; prints JSON.

For one bot (the baseline, same run) and for N bots, on this machine: how long `up` takes until every child is
healthy and every bot is connected and ready; each bot's resident memory and the whole stack's (`up` and every
process under it); CPU of the stack at rest (user + system over --idle seconds, in % of one core, per part). Then, on
the fleet only, `gateway-chaos outage seconds=S` (every connection of every bot dropped, no reconnect ends it): how
long until every bot has noticed (tradingbot_broker_connected 0 on both channels), and how long after the venue is
back every bot is connected again, and every one has passed the reconciliation after that reconnect (its new-risk
gate open again), read from each bot's own /metrics and control API.

The reconciler's side of the outage, in the same round: the episodes the storm opened (by alert and outcome), the
actions it took (steps run), the pages (critical alerts Alertmanager held active and not inhibited or silenced during
the storm: each would reach the pager), the time from the venue's return to the all-clear (the venue-outage episode
closed recovered, every bot active again), the reconciler's peak RSS, and its intake lag (an episode's received_at
after its alert's startsAt). Against the DESIGN goal: one action per venue, all verified within 30 s of the venue's
return, the reconciler at most 150 MB.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

# Run as a script, a benchmark has its own folder on the path: the repository's root too, for benchmarks.*.
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._shared.loopback_ports import free_port, free_range  # noqa: E402

POLL_SECONDS = 0.2
TOKEN_BYTES = 24
STARTED_RE = re.compile(r"^started (?P<name>[\w-]+): pid (?P<pid>\d+)")
CONNECTED_RE = re.compile(r'^tradingbot_broker_connected\{[^}]*channel="(\w+)"[^}]*\} (\S+)$', re.MULTILINE)
MIB = 1024 * 1024
GOAL_ALL_CLEAR_SECONDS = 30.0
GOAL_RECONCILER_RSS_MIB = 150.0
PARTS = ("paper-gateway", "reconciler", "prometheus", "alertmanager")


def http(url: str, token: str = "", body: dict[str, Any] | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except OSError as exc:
        return 0, str(exc)


class Fleet:
    """`trading-ops up --bot ccxt-gateway --bots N` on free ports in a temp dir."""

    def __init__(self, root: Path, bots: int, ready_timeout: float) -> None:
        self.root, self.bots = root, bots
        secrets = root / "secrets"
        secrets.mkdir(mode=0o700)
        self.token = os.urandom(TOKEN_BYTES).hex()
        (secrets / "control-token").write_text(self.token)
        (secrets / "control-token").chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
        for name in ("reconciler-token", "reconciler-read-token"):
            (secrets / name).write_text(os.urandom(TOKEN_BYTES).hex())
            (secrets / name).chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
        config = {
            "database": {"url": f"sqlite:///{root / 'trading-ops.db'}"},
            "bot": {"data_dir": str(root / "bots"), "control_token_file": str(secrets / "control-token")},
            "reconciler": {
                "token_file": str(secrets / "reconciler-token"),
                "read_token_file": str(secrets / "reconciler-read-token"),
            },
        }
        self.config = root / "trading-ops.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.ports = {name: free_port() for name in ("reconciler", "prometheus", "alertmanager", "gateway", "bot")}
        self.bots_base = free_range(bots)
        self.bot_urls = [f"http://127.0.0.1:{self.bots_base + i}" for i in range(bots)]
        args = [sys.executable, "-m", "trading_ops", "--config", str(self.config), "up", "--bot", "ccxt-gateway"]
        args += ["--bots", str(bots), "--bots-base-port", str(self.bots_base), "--state-dir", str(root / "stack")]
        args += ["--ready-timeout", str(ready_timeout), "--status-interval", "5"]
        args += [f"--{name}-port={port}" for name, port in self.ports.items()]
        self.lines: list[str] = []
        self.up_seen = threading.Event()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "local stack is up" in line:
                self.up_seen.set()

    def children(self) -> dict[str, int]:
        return {m["name"]: int(m["pid"]) for line in self.lines if (m := STARTED_RE.match(line))}

    def wait_up(self, timeout: float) -> float:
        end = time.monotonic() + timeout
        while not self.up_seen.wait(POLL_SECONDS):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("trading-ops up did not start:\n" + "\n".join(self.lines[-30:]))
        return time.monotonic() - self.started

    def connected(self, pool: ThreadPoolExecutor) -> list[dict[str, float]]:
        """Each bot's tradingbot_broker_connected by channel ({} when its /metrics does not answer)."""

        def one(url: str) -> dict[str, float]:
            status, text = http(f"{url}/metrics")
            return {ch: float(v) for ch, v in CONNECTED_RE.findall(text)} if status == 200 else {}

        return list(pool.map(one, self.bot_urls))

    def reconnect_pending(self, pool: ThreadPoolExecutor) -> list[bool | None]:
        def one(url: str) -> bool | None:
            status, text = http(f"{url}/control/status", self.token, {})
            return json.loads(text).get("reconnect_reconciliation_pending") if status == 200 else None

        return list(pool.map(one, self.bot_urls))

    def until(self, what: str, probe: Any, timeout: float) -> float:
        """Seconds until `probe()` holds (RuntimeError naming `what` at the deadline)."""
        start = time.monotonic()
        while not probe():
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"{what}: not within {timeout:g}s")
            time.sleep(POLL_SECONDS)
        return time.monotonic() - start

    def processes(self) -> dict[str, psutil.Process]:
        found = {"up": psutil.Process(self.proc.pid)}
        for name, pid in self.children().items():
            with contextlib.suppress(psutil.Error):
                found[name] = psutil.Process(pid)
        return found

    def chaos(self, fault: str, **params: Any) -> dict[str, Any]:
        """POST /chaos/{fault} to the gateway with its generated token (directly: the answer comes at once)."""
        token = (self.root / "var" / "secrets" / "gateway-control-token").read_text().strip()
        status, text = http(f"http://127.0.0.1:{self.ports['gateway']}/chaos/{fault}", token, params)
        if status != 200:
            raise RuntimeError(f"gateway-chaos {fault}: {status} {text}")
        return dict(json.loads(text))

    def stop(self) -> tuple[int, float]:
        pids = self.children()
        start = time.monotonic()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    return self.proc.wait(120), time.monotonic() - start
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            return self.proc.wait(), time.monotonic() - start
        finally:
            for pid in pids.values():  # never leave a process behind, whatever happened
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def tree(proc: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [proc, *proc.children(recursive=True)]
    return []


def footprint(fleet: Fleet, idle: float) -> dict[str, Any]:
    """RSS now, and CPU (% of one core) over `idle` seconds at rest, per part of the stack."""
    procs = fleet.processes()
    groups: dict[str, list[psutil.Process]] = {name: tree(p) for name, p in procs.items() if name != "up"}
    groups["up"] = [procs["up"]]

    def cpu(ps: list[psutil.Process]) -> float:
        total = 0.0
        for p in ps:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    before = {name: cpu(ps) for name, ps in groups.items()}
    time.sleep(idle)
    used = {name: (cpu(ps) - before[name]) / idle * 100 for name, ps in groups.items()}
    rss = {}
    for name, ps in groups.items():
        total = 0
        for p in ps:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        rss[name] = total / MIB
    bots = [n for n in groups if n not in (*PARTS, "up")]
    bot_rss = [rss[n] for n in bots]
    bot_cpu = [used[n] for n in bots]
    return {
        "bot_rss_mib": {
            "min": round(min(bot_rss), 1),
            "median": round(statistics.median(bot_rss), 1),
            "max": round(max(bot_rss), 1),
        },
        "stack_rss_mib": round(sum(rss.values()), 1),
        "rss_mib": {n: round(rss[n], 1) for n in (*PARTS, "up") if n in rss} | {"bots": round(sum(bot_rss), 1)},
        "idle_cpu_percent_of_one_core": {
            "stack": round(sum(used.values()), 1),
            "bots": round(sum(bot_cpu), 1),
            "bot_median": round(statistics.median(bot_cpu), 2),
            **{n: round(used[n], 1) for n in (*PARTS, "up") if n in used},
        },
    }


def measure(bots: int, args: argparse.Namespace, outage: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-fleet-{bots}-") as tmp, ThreadPoolExecutor(16) as pool:
        fleet = Fleet(Path(tmp), bots, args.ready_timeout)
        try:
            result: dict[str, Any] = {"bots": bots, "up_seconds": round(fleet.wait_up(args.ready_timeout), 2)}

            def all_connected() -> bool:
                return all(c and set(c.values()) == {1.0} for c in fleet.connected(pool))

            fleet.until("every bot connected", all_connected, args.ready_timeout)
            result["all_connected_seconds"] = round(time.monotonic() - fleet.started, 2)
            time.sleep(args.settle)
            result.update(footprint(fleet, args.idle))
            if outage:
                result["outage"] = outage_round(fleet, pool, args)
            code, seconds = fleet.stop()
            result["stop"] = {"exit": code, "seconds": round(seconds, 2)}
            return result
        except BaseException:
            fleet.stop()
            print("\n".join(fleet.lines[-40:]), file=sys.stderr)
            raise


class StormWatch:
    """During the outage, in a thread: the reconciler's RSS and the pages Alertmanager holds, sampled twice a second."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.reconciler = psutil.Process(fleet.children()["reconciler"])
        self.peak_rss = 0.0
        self.pages: set[tuple[str, str]] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        am = f"http://127.0.0.1:{self.fleet.ports['alertmanager']}/api/v2/alerts?active=true&silenced=false&inhibited=false"
        while not self.stop.wait(0.5):
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.reconciler.memory_info().rss / MIB)
            status, body = http(am)
            if status == 200:
                for alert in json.loads(body):
                    labels = alert["labels"]
                    if labels.get("severity") == "critical" and labels.get("alertname") != "Watchdog":
                        self.pages.add((labels["alertname"], labels.get("instance") or labels.get("venue", "")))

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(5)


def reconciler_side(fleet: Fleet, since: float) -> dict[str, Any]:
    read = (fleet.root / "secrets" / "reconciler-read-token").read_text().strip()
    status, body = http(f"http://127.0.0.1:{fleet.ports['reconciler']}/api/v1/episodes?limit=500", read)
    episodes = [e for e in json.loads(body)["episodes"] if ts(e["received_at"]) >= since] if status == 200 else []
    steps = [s for e in episodes for a in e["attempts"] for s in a["steps"]]
    lags = [ts(e["received_at"]) - ts(e["starts_at"]) for e in episodes]
    return {
        "episodes": dict(sorted(collections.Counter(f"{e['alertname']}: {e['state']}" for e in episodes).items())),
        "actions": len(steps),
        "action_steps": [s["description"][:60] + " -> " + (s["output"].splitlines() or [""])[0][:60] for s in steps],
        "intake_lag_seconds": {
            "median": round(statistics.median(lags), 2) if lags else None,
            "max": round(max(lags), 2) if lags else None,
        },
        "venue_episode": next((e for e in episodes if e["alertname"] == "TradingBotVenueDown"), None),
    }


def ts(value: str | None) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else 0.0


def outage_round(fleet: Fleet, pool: ThreadPoolExecutor, args: argparse.Namespace) -> dict[str, Any]:
    starts = sum(1 for line in fleet.lines if STARTED_RE.match(line))
    storm_began = time.time()
    watch = StormWatch(fleet)
    fleet.chaos("outage", seconds=args.outage)
    ends = time.monotonic() + args.outage  # the gateway's deadline, set just before it answered

    def all_down() -> bool:
        return all(c and set(c.values()) == {0.0} for c in fleet.connected(pool))

    noticed = fleet.until("every bot disconnected", all_down, args.outage)
    back: dict[int, float] = {}

    def all_up() -> bool:
        now = time.monotonic()
        for i, c in enumerate(fleet.connected(pool)):
            if c and set(c.values()) == {1.0}:
                back.setdefault(i, now)
        return len(back) == fleet.bots

    fleet.until("every bot connected again", all_up, args.outage + args.ready_timeout)
    reconnected = [back[i] - ends for i in range(fleet.bots)]
    fleet.until(
        "every bot's reconnect reconciliation passed",
        lambda: all(p is False for p in fleet.reconnect_pending(pool)),
        args.ready_timeout,
    )
    gates_open = time.monotonic() - ends

    def all_clear() -> bool:
        side = reconciler_side(fleet, storm_began)
        venue = side["venue_episode"]
        states = [
            json.loads(b).get("state")
            for c, b in (http(f"{u}/control/status", fleet.token, {}) for u in fleet.bot_urls)
            if c == 200
        ]
        return bool(venue and venue["closed_at"] and len(states) == fleet.bots and set(states) == {"active"})

    fleet.until("the all-clear (venue episode closed, every bot active)", all_clear, args.ready_timeout)
    cleared = time.monotonic() - ends
    watch.finish()
    side = reconciler_side(fleet, storm_began)
    venue = side.pop("venue_episode")
    restarted = [m["name"] for line in fleet.lines[:] if (m := STARTED_RE.match(line))][starts:]
    return {
        "reconciler": {
            **side,
            "venue_episode_state": venue["state"] if venue else None,
            "pages": sorted(f"{a} ({where})" for a, where in watch.pages),
            "all_clear_after_end_seconds": round(cleared, 2),
            "peak_rss_mib": round(watch.peak_rss, 1),
            "goal": {
                "one_run_for_the_venue": side["episodes"].get("TradingBotVenueDown: recovered") == 1,
                "all_verified_within_30_s": cleared <= GOAL_ALL_CLEAR_SECONDS,
                "reconciler_rss_le_150_mb": watch.peak_rss <= GOAL_RECONCILER_RSS_MIB,
            },
        },
        "seconds": args.outage,
        "all_disconnected_after_seconds": round(noticed, 2),
        "reconnected_after_end_seconds": {
            "first": round(min(reconnected), 2),
            "median": round(statistics.median(reconnected), 2),
            "last": round(max(reconnected), 2),
        },
        "all_reconciled_after_end_seconds": round(gates_open, 2),
        # children `up` started again meanwhile (a watchdog, a crash, the playbook's restart through stackctl)
        "restarted": restarted,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=20)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of CPU sampling at rest")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after every bot connected, before that")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the venue is down")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-bot run")
    args = parser.parse_args()
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    if not args.no_baseline:
        report["baseline_one_bot"] = measure(1, args, outage=False)
    report["fleet"] = measure(args.bots, args, outage=True)
    if "baseline_one_bot" in report:
        one, many = report["baseline_one_bot"], report["fleet"]
        report["fleet_vs_one"] = {
            "stack_rss_added_per_bot_mib": round(
                (many["stack_rss_mib"] - one["stack_rss_mib"]) / max(1, args.bots - 1), 1
            ),
            "idle_cpu_added_per_bot_percent": round(
                (many["idle_cpu_percent_of_one_core"]["stack"] - one["idle_cpu_percent_of_one_core"]["stack"])
                / max(1, args.bots - 1),
                2,
            ),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
