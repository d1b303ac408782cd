"""A real Alertmanager for a test: started on a free loopback port (alone or in a cluster, optionally sending its
webhooks to a reconciler; or with the repository's configuration as `trading-ops up --profile fast` writes it), with
a client of its API v2 that fires, resolves and silences alerts as Prometheus and an operator would."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from ports import free_port
from reconciler_server import TOKEN, ThreadedServer
from server_process import wait_http
from system_binaries import REPO_ROOT, SYSTEM, Generation, alertmanager_binary

from trading_ops.stack.alertmanager_config import render_alertmanager
from trading_ops.stack.layout import Ports
from trading_ops.stack.profiles import FAST, Profile

# Alone: no gossip listener (another test's Alertmanager on this machine would join it).
STANDALONE = ("--cluster.listen-address=",)


def alertmanager_argv(
    config: Path, storage: Path, port: int, cluster: Sequence[str] = STANDALONE, generation: Generation = SYSTEM
) -> list[str]:
    """The command line of a real Alertmanager (of `generation`) on 127.0.0.1:`port`, its log at warnings and
    errors."""
    return [
        generation.binary("prometheus-alertmanager") if generation.bin_dir else alertmanager_binary(),
        f"--config.file={config}",
        f"--storage.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        *cluster,
    ]


def run_alertmanager(
    config: Path,
    storage: Path,
    port: int,
    log: Path,
    cluster: Sequence[str] = STANDALONE,
    generation: Generation = SYSTEM,
) -> Alertmanager:
    """Start one, its stderr in `log`, and wait until it is ready (it is killed when it is not)."""
    proc = subprocess.Popen(
        alertmanager_argv(config, storage, port, cluster, generation),
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc=proc)
    except Exception:
        proc.kill()
        raise
    return Alertmanager(f"http://127.0.0.1:{port}", proc)


@dataclass
class Alertmanager:
    url: str
    proc: subprocess.Popen[bytes]

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        req = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=5).close()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/api/v2/{path}", timeout=5) as resp:
            return json.loads(resp.read())

    def fire(self, labels: dict[str, str]) -> dict[str, Any]:
        """Post a firing alert (as Prometheus does) and return it as Alertmanager holds it (fingerprint,
        startsAt), to send the reconciler the webhook Alertmanager would."""
        self.post_alerts([{"labels": labels, "annotations": {"summary": "test alert."}}])
        for held in self.get("alerts"):
            if held["labels"] == labels:
                return held  # type: ignore[no-any-return]
        raise AssertionError(f"Alertmanager does not hold {labels}")

    def resolve(self, held: dict[str, Any]) -> None:
        """Resolve an alert as Prometheus does: the same labels with an end that has come."""
        ends = datetime.now(UTC).isoformat()
        self.post_alerts([{"labels": held["labels"], "startsAt": held["startsAt"], "endsAt": ends}])

    def silence(self, matchers: dict[str, str], seconds: float, created_by: str = "ops", comment: str = "test") -> str:
        now = datetime.now(UTC)
        body = {
            "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in matchers.items()],
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(seconds=seconds)).isoformat(),
            "createdBy": created_by,
            "comment": comment,
        }
        req = urllib.request.Request(
            f"{self.url}/api/v2/silences",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return str(json.loads(resp.read())["silenceID"])

    def expire(self, silence_id: str) -> None:
        req = urllib.request.Request(f"{self.url}/api/v2/silence/{silence_id}", method="DELETE")
        urllib.request.urlopen(req, timeout=5).close()


def start_alertmanager(
    tmp: Path,
    webhook_url: str | None = None,
    cluster_port: int | None = None,
    peers: tuple[int, ...] = (),
    repeat_interval: str = "1h",
    max_alerts: int = 0,
    port: int | None = None,
    inhibit_rules: list[dict[str, Any]] | None = None,
) -> Alertmanager:
    """A real Alertmanager; `port` to start it again where a stopped one listened (its clients keep their URL);
    `inhibit_rules` as in an alertmanager.yml (the repository's, say)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    receivers: list[dict[str, Any]] = [{"name": "null"}]
    route: dict[str, Any] = {
        "receiver": "null",
        "group_by": ["alertname", "instance"],
        "group_wait": "0s",
        "group_interval": "1s",
        "repeat_interval": repeat_interval,
    }
    if webhook_url:
        receivers.append(
            {
                "name": "reconciler",
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "max_alerts": max_alerts,
                        "http_config": {"authorization": {"type": "Bearer", "credentials": TOKEN}},
                    }
                ],
            }
        )
        route["receiver"] = "reconciler"
    config = {"route": route, "receivers": receivers, **({"inhibit_rules": inhibit_rules} if inhibit_rules else {})}
    (tmp / "am.yml").write_text(yaml.safe_dump(config))
    cluster: list[str] = list(STANDALONE)
    if cluster_port is not None:
        cluster = [
            f"--cluster.listen-address=127.0.0.1:{cluster_port}",
            f"--cluster.advertise-address=127.0.0.1:{cluster_port}",
            "--cluster.settle-timeout=1s",
            "--cluster.gossip-interval=50ms",
            "--cluster.pushpull-interval=1s",
            *(f"--cluster.peer=127.0.0.1:{p}" for p in peers),
        ]
    return run_alertmanager(tmp / "am.yml", tmp / "data", port, tmp / "am.log", cluster)


def start_repo_alertmanager(
    tmp: Path,
    port: int,
    reconciler: ThreadedServer,
    token_file: Path,
    generation: Generation = SYSTEM,
    pager_url: str | None = None,
    send_resolved: bool = False,
    profile: Profile = FAST,
) -> tuple[str, subprocess.Popen[bytes]]:
    """The repository's alertmanager.yml as `trading-ops up --profile fast` (or `profile`) writes it, on `port` (of
    `generation`); with `pager_url`, its pager receiver (PagerDuty and e-mail, quiet in the local stack) posts its
    pages to that webhook, so a test counts what would page a person (with `send_resolved`, its resolved notices
    too, as the shipped pager sends them)."""
    tmp.mkdir(parents=True, exist_ok=True)
    rendered = render_alertmanager(REPO_ROOT, Ports(reconciler=reconciler.port), profile, token_file)
    if pager_url is not None:
        for receiver in rendered.config["receivers"]:
            if receiver["name"] == "pager":
                receiver["webhook_configs"] = [{"url": pager_url, "send_resolved": send_resolved}]
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(rendered.config))
    am = run_alertmanager(tmp / "alertmanager.yml", tmp / "data", port, tmp / "alertmanager.log", generation=generation)
    return am.url, am.proc
