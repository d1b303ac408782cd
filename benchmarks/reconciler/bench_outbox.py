"""Escalation outbox drain time after Alertmanager returns (N pages owed while it was down -> all delivered): JSON.

A real Alertmanager is stopped by pid (SIGTERM, or SIGSTOP with --freeze: it accepts connections and answers none),
a reconciler process (SQLite ledger, a playbook whose only step fails) is sent N alerts, so N pages fall due while
Alertmanager is away; after --outage seconds Alertmanager is started again on the same port (or continued). Measured
on this machine's clock: Alertmanager back -> the outbox empty (every page taken: `reconciler_escalations.posted_at`),
and -> Alertmanager holding all N. The reconciler runs its shipped `reconciler.escalation` settings unless given.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trading_ops.config import EscalationConfig
from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.reconciler.ledger import Ledger
from trading_ops.reconciler.outbox import OutboxStore
from trading_ops.stack.binaries import find as find_binary

# Run as a script, a benchmark has its own folder on the path: the repository's root too, for benchmarks.*.
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._shared.loopback_ports import free_port  # noqa: E402

TOKEN = "bench-outbox-token"
POLL_SECONDS = 0.05
DEADLINE_SECONDS = 300.0


def wait(what: str, probe: Any, deadline: float = DEADLINE_SECONDS) -> None:
    end = time.monotonic() + deadline
    while not probe():
        if time.monotonic() > end:
            raise SystemExit(f"bench_outbox: {what} not reached within {deadline:g}s")
        time.sleep(POLL_SECONDS)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def start_alertmanager(binary: str, tmp: Path, port: int) -> subprocess.Popen[bytes]:
    config = {"route": {"receiver": "null", "group_by": ["alertname", "instance"]}, "receivers": [{"name": "null"}]}
    (tmp / "am.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'am.yml'}",
            f"--storage.path={tmp / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait("Alertmanager ready", lambda: answers(f"http://127.0.0.1:{port}/-/ready"), 30)
    return proc


def held_escalations(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/alerts", timeout=5) as resp:
        return sum(1 for a in json.loads(resp.read()) if "episode" in a["labels"])


def post_alert(port: int, index: int) -> None:
    body = {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "reconciler",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "TradingBotStalled", "instance": f"bot-{index}"},
                "annotations": {},
                "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": f"outbox{index}",
            }
        ],
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/alertmanager",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    urllib.request.urlopen(req, timeout=10).close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Alertmanager:
    """The Alertmanager the reconciler pages, away for the outage: stopped (SIGTERM), or frozen (SIGSTOP) with
    `freeze`, and back on the same port."""

    binary: str
    tmp: Path
    port: int
    freeze: bool
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, binary: str, tmp: Path, port: int, freeze: bool) -> Alertmanager:
        return cls(binary, tmp, port, freeze, start_alertmanager(binary, tmp, port))

    def away(self) -> None:
        if self.freeze:
            os.kill(self.proc.pid, signal.SIGSTOP)
        else:
            stop(self.proc)

    def back(self) -> None:
        if self.freeze:
            os.kill(self.proc.pid, signal.SIGCONT)
        else:
            self.proc = start_alertmanager(self.binary, self.tmp, self.port)

    def stop(self) -> None:
        stop(self.proc)


@dataclass(frozen=True)
class Drain:
    """What one outage measured (seconds on this machine's clock)."""

    owed: float  # Alertmanager away -> every page owed (the episodes escalating)
    drained: float  # Alertmanager back -> the outbox empty
    held: float  # Alertmanager back -> Alertmanager holding every page
    escalated: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = EscalationConfig()
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds Alertmanager is away")
    parser.add_argument("--freeze", action="store_true", help="SIGSTOP Alertmanager instead of stopping it")
    parser.add_argument("--retry-initial", type=float, default=defaults.retry_initial_seconds)
    parser.add_argument("--retry-max", type=float, default=defaults.retry_max_seconds)
    parser.add_argument("--fallback-after", type=float, default=3600.0, help="apprise fallback (no URLs here)")
    return parser.parse_args()


def write_config(tmp: Path, db: str, port: int, am_port: int, args: argparse.Namespace) -> Path:
    """The reconciler's token, its playbook (one rule whose only step fails, so every alert owes a page) and its
    configuration in `tmp`; returns the configuration's path."""
    (tmp / "token").write_text(TOKEN)
    (tmp / "token").chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
    playbook = {
        "version": 1,
        "rules": [
            {
                "name": "fails",
                "match": ['alertname="TradingBotStalled"'],
                "cooldown": 0,
                "max_attempts": 1,
                "verify": False,
                "steps": [{"action": "exec", "argv": [sys.executable, "-c", "raise SystemExit(3)"]}],
            }
        ],
    }
    (tmp / "playbook.yml").write_text(yaml.safe_dump(playbook))
    config = {
        "database": {"url": db},
        "reconciler": {
            "listen": {"port": port},
            "token_file": str(tmp / "token"),
            "playbook": str(tmp / "playbook.yml"),
            "check_silences": False,
            "alertmanager_url": f"http://127.0.0.1:{am_port}",
            "watchdog": {"window_seconds": 0},
            "max_concurrent_runs": 8,
            "escalation": {
                "retry_initial_seconds": args.retry_initial,
                "retry_max_seconds": args.retry_max,
                "fallback_after_seconds": args.fallback_after,
            },
        },
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp / "config.yaml"


def outage(am: Alertmanager, port: int, pages: int, seconds: float, ledger: Ledger, store: OutboxStore) -> Drain:
    """Alertmanager away while `pages` alerts reach the reconciler at `port`, back after `seconds`; the drain timed."""
    am.away()
    down = time.monotonic()
    for i in range(pages):
        post_alert(port, i)
    wait(
        f"{pages} pages owed",
        lambda: len(ledger.list_episodes(limit=pages + 1, state="escalating")) == pages,
    )
    owed = time.monotonic() - down
    time.sleep(max(0.0, seconds - (time.monotonic() - down)))
    am.back()
    back = time.monotonic()
    wait("the outbox drained", lambda: store.stats().pending == 0)
    drained = time.monotonic() - back
    wait("Alertmanager holding every page", lambda: held_escalations(am.port) == pages)
    held = time.monotonic() - back
    escalated = len(ledger.list_episodes(limit=pages + 1, state="escalated"))
    return Drain(owed=owed, drained=drained, held=held, escalated=escalated)


def main() -> int:
    args = parse_args()
    binary = find_binary("alertmanager").path
    if binary is None:
        print(find_binary("alertmanager").install_hint, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as raw:
        tmp = Path(raw)
        db = f"sqlite:///{tmp / 'ledger.db'}"
        migrate.upgrade(db)
        am_port, port = free_port(), free_port()
        config = write_config(tmp, db, port, am_port, args)
        am = Alertmanager.start(binary, tmp, am_port, args.freeze)
        reconciler = subprocess.Popen(
            [sys.executable, "-m", "trading_ops", "-c", str(config), "reconciler"],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "reconciler.log", "wb"),  # noqa: SIM115
        )
        ledger = Ledger(make_engine(db))
        store = OutboxStore(ledger)
        try:
            wait("reconciler ready", lambda: answers(f"http://127.0.0.1:{port}/healthz"), 60)
            drain = outage(am, port, args.pages, args.outage, ledger, store)
        finally:
            stop(reconciler)
            am.stop()
            ledger.engine.dispose()
    report = {
        "pages": args.pages,
        "outage_seconds": round(args.outage, 1),
        "how": "SIGSTOP" if args.freeze else "stopped",
        "retry_initial_seconds": args.retry_initial,
        "retry_max_seconds": args.retry_max,
        "all_owed_after_seconds": round(drain.owed, 3),
        "drain_seconds": round(drain.drained, 3),
        "all_held_by_alertmanager_seconds": round(drain.held, 3),
        "episodes_escalated": drain.escalated,
    }
    print(json.dumps(report, indent=2))
    return 0 if drain.escalated == args.pages else 1


if __name__ == "__main__":
    raise SystemExit(main())
