"""Fault -> verified recovery through the real stack (`trading-ops up`, fast profile: the real paper bot, reconciler,
Prometheus and Alertmanager), against the DESIGN goal p50 <= 10 s, p95 <= 20 s; prints JSON.

Each round injects a fault through the bot's control API and measures, on this machine's clock and from the
reconciler's episode timestamps: fault -> alert pending and firing in Prometheus (the baseline: the floor set by
scraping, evaluation and `for:`, which no reconciler can beat) -> in Alertmanager -> episode received -> first action
-> episode `recovered` (verified in Prometheus). The difference is what the alert pipeline and the reconciler add.
silent_stream (see FAULTS) lasts until the reconciler's first step is in the episode, then the round clears it
(`fault_cleared`), so that the reconciler's action meets the venue speaking again; its episode may also close
`resolved` (Alertmanager's resolved notice first), which `ended_as` reports and `recovered` then times.

The stack runs the packaged default playbook with one change: no rule's cooldown is longer than --gap, the pause
between rounds (the default playbook's 5 minutes would hold every round after the first); the budgets are raised for
the same reason. The gap also lets Alertmanager drop the previous round's alert group (it does that every 30 s), so
each fault starts a new group, as an independent fault would.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
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
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from trading_ops.durations import parse_duration
from trading_ops.stack.binaries import find as find_binary
from trading_ops.stack.profiles import PROFILES

# Run as a script, a benchmark has its own folder on the path: the repository's root too, for benchmarks.*.
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._shared.loopback_ports import free_port  # noqa: E402

GOAL_P50_SECONDS = 10.0
GOAL_P95_SECONDS = 20.0
POLL_SECONDS = 0.1
STARTUP_SECONDS = 120.0
# Alertmanager deletes empty alert groups every 30 s; a fault in a lingering group waits for its group_interval.
DEFAULT_GAP_SECONDS = 35.0
FAULTS = {
    # fault command -> (alert it raises, its body, the bot command that heals it)
    "drop_connection": ("TradingBotBrokerDisconnected", {}, "reconnect"),
    # Not stale_market_data: the paper bot streams its tickers (paper.stream, the default) and subscribes a silent one
    # again itself at its silence timeout (3 s), before any alert. What the reconciler heals is a ticker silent across
    # the bot's own resubscribes and reconnects (`persistent`): TradingBotStreamChannelStale, stream-resubscribe.
    "silent_stream": (
        "TradingBotStreamChannelStale",
        {"channel": "ticker", "symbol": "ETH-USD", "persistent": True},
        "resubscribe",
    ),
}
# A fault that lasts until the reconciler's run begins (its first step seen in the episode), then ends with this
# control command, so that the reconciler's action meets the venue speaking again (as in
# tests/deploy/test_stream_e2e.py).
CLEAR_WHEN_ACTING = {"silent_stream": "clear_chaos"}
# States besides `recovered` that end a round as designed: silent_stream's episode may close resolved when
# Alertmanager's resolved notice (from the expression the verification polls) beats the verification's next poll.
ALSO_ENDS = {"silent_stream": ("resolved",)}
TOKEN_BYTES = 24
STARTED_RE = re.compile(r"^started (?P<name>[\w-]+): pid (?P<pid>\d+)")


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
        return json.loads(resp.read())


def post_json(url: str, token: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return round(ordered[rank], 3)


class Stack:
    """`trading-ops up` as a child process on free ports, with a configuration written for the benchmark."""

    def __init__(
        self, root: Path, profile: str, cooldown: float, bot: dict[str, Any] | None = None, alertmanagers: int = 1
    ) -> None:
        # The benchmarks measure the whole pipeline: without either server `up` would start the rest and nothing fires.
        for server in ("prometheus", "alertmanager"):
            if (binary := find_binary(server)).path is None:
                raise SystemExit(f"{Path(sys.argv[0]).name}: {binary.install_hint} (make bench does)")
        self.root = root
        names = ["bot", "reconciler", "prometheus", "alertmanager"]
        if alertmanagers == 2:  # a clustered pair: the second member and both gossip ports
            names += ["alertmanager-2", "alertmanager-gossip", "alertmanager-2-gossip"]
        self.ports = {name: free_port() for name in names}
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}
        secrets = root / "secrets"
        secrets.mkdir(mode=0o700)
        self.token = os.urandom(TOKEN_BYTES).hex()
        (secrets / "control-token").write_text(self.token)
        (secrets / "control-token").chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
        (secrets / "reconciler-token").write_text(os.urandom(TOKEN_BYTES).hex())
        (secrets / "reconciler-token").chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
        self.read_token = os.urandom(TOKEN_BYTES).hex()
        (secrets / "reconciler-read-token").write_text(self.read_token)
        (secrets / "reconciler-read-token").chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
        playbook_source = importlib.resources.files("trading_ops.reconciler") / "playbooks" / "default.yml"
        playbook = yaml.safe_load(playbook_source.read_text(encoding="utf-8"))
        for rule in [playbook.setdefault("defaults", {}), *playbook.get("rules", [])]:
            rule["cooldown"] = f"{min(parse_duration(rule.get('cooldown', '5m')), cooldown):g}s"
        self.playbook = playbook
        (root / "playbook.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
        config = {
            "database": {"url": f"sqlite:///{root / 'trading-ops.db'}"},
            "bot": {
                "data_dir": str(root / "bot"),
                "control_token_file": str(secrets / "control-token"),
                **(bot or {}),
            },
            "reconciler": {
                "token_file": str(secrets / "reconciler-token"),
                "read_token_file": str(secrets / "reconciler-read-token"),
                "playbook": str(root / "playbook.yml"),
                "budgets": {"max_actions_per_target_per_hour": 1000, "max_actions_per_hour": 1000},
            },
        }
        self.config = root / "trading-ops.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = open(root / "up.log", "w+", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.lines: list[str] = []
        self.up_seen = threading.Event()
        args = [sys.executable, "-m", "trading_ops", "--config", str(self.config), "up", "--profile", profile]
        args += ["--state-dir", str(root / "stack"), "--status-interval", "5", "--alertmanagers", str(alertmanagers)]
        args += [f"--{name}-port={port}" for name, port in self.ports.items()]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.log.write(line)
            if "local stack is up" in line:
                self.up_seen.set()

    def child_pids(self) -> dict[str, int]:
        return {m["name"]: int(m["pid"]) for line in self.lines if (m := STARTED_RE.match(line))}

    def wait_ready(self) -> None:
        end = time.monotonic() + STARTUP_SECONDS
        while not self.up_seen.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("trading-ops up did not start:\n" + "\n".join(self.lines[-30:]))
        # The pipeline works end to end once Watchdog has gone Prometheus -> Alertmanager.
        while not any(a["labels"].get("alertname") == "Watchdog" for a in self.am_alerts()):
            if time.monotonic() > end:
                raise RuntimeError("Watchdog never reached Alertmanager")
            time.sleep(0.5)

    def prom_alerts(self) -> list[dict[str, Any]]:
        return list(get_json(f"{self.urls['prometheus']}/api/v1/alerts")["data"]["alerts"])

    def am_alerts(self) -> list[dict[str, Any]]:
        return list(get_json(f"{self.urls['alertmanager']}/api/v2/alerts?active=true"))

    def episodes(self) -> list[dict[str, Any]]:
        url = f"{self.urls['reconciler']}/api/v1/episodes?limit=50"
        return list(get_json(url, {"Authorization": f"Bearer {self.read_token}"})["episodes"])

    def episodes_all(self) -> list[dict[str, Any]]:
        """The newest 500 episodes (the API's largest page): a soak's whole history."""
        url = f"{self.urls['reconciler']}/api/v1/episodes?limit=500"
        return list(get_json(url, {"Authorization": f"Bearer {self.read_token}"})["episodes"])

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.urls['prometheus']}/api/v1/query?query={urllib.parse.quote(expr)}"
        return list(get_json(url)["data"]["result"])

    def stop(self) -> int:
        pids = self.child_pids()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    return self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            return self.proc.wait()
        finally:
            for pid in pids.values():  # never leave a server behind, whatever happened
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.log.close()


def quiet(stack: Stack, alertname: str, deadline: float) -> None:
    """Wait until the alert is neither pending nor firing and no episode of it is open."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        busy = any(a["labels"].get("alertname") == alertname for a in stack.prom_alerts())
        busy = busy or any(e["alertname"] == alertname and not e["closed_at"] for e in stack.episodes())
        if not busy:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{alertname} did not settle within {deadline:g}s")


def watch_round(
    stack: Stack,
    alertname: str,
    known: set[Any],
    ends: tuple[str, ...],
    clear: str | None,
    end: float,
    seen: dict[str, float],
    result: dict[str, Any],
) -> dict[str, Any] | None:
    """Poll until an episode of the round ends in one of `ends` (returned), all closed otherwise or `end` (monotonic)
    passes (`result["failure"]`). Stamps `seen`; sends `clear` once the reconciler's first step is in the episode."""
    while time.monotonic() < end:
        # Each source is stamped when its answer arrives (polls are ~POLL_SECONDS apart).
        for alert in stack.prom_alerts():
            if alert["labels"].get("alertname") == alertname:
                if "pending" not in seen and (active := ts(alert.get("activeAt"))) is not None:
                    seen["pending"] = active
                if alert["state"] == "firing":
                    seen.setdefault("firing", time.time())
        if any(a["labels"].get("alertname") == alertname for a in stack.am_alerts()):
            seen.setdefault("alertmanager", time.time())
        mine = [e for e in stack.episodes() if e["id"] not in known and e["alertname"] == alertname]
        if clear is not None and "cleared" not in seen and any(a["steps"] for e in mine for a in e["attempts"]):
            post_json(f"{stack.urls['bot']}/control/{clear}", stack.token, {})
            seen["cleared"] = time.time()
        ended = next((e for e in mine if e["state"] in ends), None)
        if ended is not None:
            seen.setdefault("recovered_observed", time.time())
            return ended
        if mine and all(e["closed_at"] for e in mine) and seen.get("firing"):
            result["failure"] = "episodes closed without a verified recovery: " + ", ".join(
                f"#{e['id']} {e['state']} ({e['detail'][:120]})" for e in mine
            )
            return None
        time.sleep(POLL_SECONDS)
    result["failure"] = f"no {' or '.join(ends)} episode in time"
    return None


def run_round(stack: Stack, number: int, fault: str, timeout: float) -> dict[str, Any]:
    alertname, body, heal = FAULTS[fault]
    known = {e["id"] for e in stack.episodes()}
    fault_at = time.time()
    post_json(f"{stack.urls['bot']}/control/{fault}", stack.token, body)
    seen: dict[str, float] = {}
    result: dict[str, Any] = {"round": number, "fault": fault, "alert": alertname}
    clear = CLEAR_WHEN_ACTING.get(fault)
    ends = ("recovered", *ALSO_ENDS.get(fault, ()))
    try:
        recovered = watch_round(stack, alertname, known, ends, clear, time.monotonic() + timeout, seen, result)
    finally:
        if clear is not None:  # whatever happened, the venue speaks again before the next round
            post_json(f"{stack.urls['bot']}/control/{clear}", stack.token, {})
    pending_at = seen.pop("pending", None)
    mine = [e for e in stack.episodes() if e["id"] not in known and e["alertname"] == alertname]
    steps = [s for e in mine for a in e["attempts"] for s in a["steps"]]
    result["actions"] = [s["description"] for s in steps]
    result["episodes"] = {str(e["id"]): e["state"] for e in mine}

    def since(value: float | None) -> float | None:
        return round(value - fault_at, 3) if value is not None else None

    result["seconds"] = {
        "prometheus_pending": since(pending_at),
        "prometheus_firing": since(seen.get("firing")),
        "alertmanager": since(seen.get("alertmanager")),
    }
    if recovered is not None:
        first_step = min((ts(s["started_at"]) or 0.0 for a in recovered["attempts"] for s in a["steps"]), default=None)
        result["seconds"].update(
            {
                "episode_received": since(ts(recovered["received_at"])),
                "first_action": since(first_step),
                "recovered": since(ts(recovered["closed_at"])),
                "recovered_observed": since(seen.get("recovered_observed")),
            }
        )
        result["heal_actions"] = sum(1 for s in steps if heal in s["description"])
        result["ended_as"] = recovered["state"]
    if "cleared" in seen:
        result["seconds"]["fault_cleared"] = since(seen["cleared"])
    return result


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "max": round(max(values), 3) if values else None,
        "mean": round(statistics.fmean(values), 3) if values else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--faults",
        default="drop_connection",
        help=f"comma-separated faults, taken in turn (known: {', '.join(FAULTS)})",
    )
    parser.add_argument("--profile", default="fast", choices=["fast", "standard"])
    parser.add_argument("--round-timeout", type=float, default=90.0)
    parser.add_argument("--gap", type=float, default=DEFAULT_GAP_SECONDS, help="seconds between rounds")
    args = parser.parse_args()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if not faults or any(f not in FAULTS for f in faults):
        parser.error(f"--faults: choose from {', '.join(FAULTS)}")

    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        stack = Stack(Path(tmp), args.profile, args.gap)
        rounds: list[dict[str, Any]] = []
        try:
            stack.wait_ready()
            for number in range(1, args.rounds + 1):
                fault = faults[(number - 1) % len(faults)]
                if number > 1:
                    time.sleep(args.gap)
                rounds.append(run_round(stack, number, fault, args.round_timeout))
                print(json.dumps(rounds[-1]), file=sys.stderr)
                quiet(stack, FAULTS[fault][0], args.round_timeout)
        finally:
            code = stack.stop()
    ok = [r for r in rounds if "failure" not in r]
    recovery = [r["seconds"]["recovered"] for r in ok]
    firing = [r["seconds"]["prometheus_firing"] for r in rounds if r["seconds"]["prometheus_firing"] is not None]
    added = [r["seconds"]["recovered"] - r["seconds"]["prometheus_firing"] for r in ok]
    per_fault = {
        f: summary([r["seconds"]["recovered"] for r in ok if r["fault"] == f]) for f in faults if len(faults) > 1
    }
    alerts = {FAULTS[f][0] for f in faults}
    rules = {
        r["name"]: {k: r.get(k) for k in ("wait_for", "cooldown", "verify") if k in r}
        for r in stack.playbook.get("rules", [])
        if any(a in " ".join(r.get("match", [])) for a in alerts)
    }
    stages = sorted(
        {k for r in ok for k in r["seconds"]},
        key=lambda k: percentile([r["seconds"][k] for r in ok if r["seconds"].get(k) is not None], 0.5) or 0,
    )
    failures = len(rounds) - len(ok)
    p50, p95 = percentile(recovery, 0.5), percentile(recovery, 0.95)
    report = {
        "benchmark": "fault -> verified recovery (episode recovered): real paper bot, reconciler, Prometheus, "
        "Alertmanager",
        "profile": PROFILES[args.profile].settings(),
        "playbook": {
            "source": "packaged default; cooldowns capped at --gap, budgets raised (rounds come back to back)",
            "defaults": stack.playbook.get("defaults"),
            "rules": rules,
        },
        "gap_seconds": args.gap,
        "rounds": rounds,
        "recovery_seconds": [round(v, 3) for v in recovery],
        **{k: v for k, v in summary(recovery).items() if k != "n"},
        "per_fault": per_fault or None,
        "failures": failures,
        "baseline": {
            "what": "fault -> alert firing in Prometheus (scrape + evaluation + for:), the floor for any reconciler",
            **summary(firing),
        },
        "added_by_pipeline_and_reconciler": {
            "what": "alert firing in Prometheus -> verified recovery (Alertmanager, wait_for, action, verification)",
            **summary(added),
        },
        "stages_p50_seconds_after_fault": {
            k: percentile([r["seconds"][k] for r in ok if r["seconds"].get(k) is not None], 0.5) for k in stages
        },
        "goal": {"p50_seconds": GOAL_P50_SECONDS, "p95_seconds": GOAL_P95_SECONDS},
        "goal_met": bool(recovery)
        and not failures
        and (p50 or 0) <= GOAL_P50_SECONDS
        and (p95 or 0) <= GOAL_P95_SECONDS,
        "up_exit_status": code,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["goal_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
