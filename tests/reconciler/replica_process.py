"""Reconciler replicas as processes of their own, for the tests that take the database, the network or the host from
under them (failover, Patroni, partition, an outage longer than the lease): one configuration and one start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from ports import free_port
from reconciler_server import BOT_TOKEN, TOKEN, write_playbook
from secret_file import write_secret
from server_process import wait_http
from webhook_payloads import alert, payload

# A safe command, sent again when its outcome is unknown (`on_unknown: retry`): a run taken from a live replica would
# show as the command reaching the bot twice.
RECONNECT_RULE: dict[str, Any] = {
    "name": "reconnect",
    "match": ['alertname="TradingBotBrokerDisconnected"'],
    "verify": False,
    "cooldown": 0,
    "max_attempts": 3,
    "on_unknown": "retry",
    "backoff": {"initial": "100ms"},
    "steps": [{"action": "bot", "command": "reconnect", "body": {"key": "${key}"}}],
}
# No budget stands between a stream of alerts and the bot: what is counted is the reconciler's doing, not its caps.
UNCAPPED = {"max_actions_per_target_per_hour": 100_000, "max_actions_per_hour": 100_000}


def start_replica(
    tmp_path: Path,
    name: str,
    db_url: str,
    bot_url: str,
    instances: Iterable[str],
    *,
    lease_seconds: float,
    alertmanager_url: str = "http://127.0.0.1:9",
    rule: dict[str, Any] = RECONNECT_RULE,
    listen_host: str = "127.0.0.1",
    popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    started: list[subprocess.Popen[bytes]] | None = None,
    **reconciler: Any,
) -> tuple[subprocess.Popen[bytes], int]:
    """A reconciler process named `name` on `db_url` acting on the bot at `bot_url` for `instances`, listening on
    `listen_host` (started through `popen`: a test host's, or this one's); (process, port) once it answers /healthz.
    The process is appended to `started` as soon as it runs, so the caller stops it even when it never answers.
    `reconciler` adds to or overrides its `reconciler:` section."""
    folder = tmp_path / name
    folder.mkdir()
    port = free_port()
    write_secret(folder / "webhook-token", TOKEN)
    write_secret(folder / "bot-token", BOT_TOKEN)
    section: dict[str, Any] = {
        "listen": {"host": listen_host, "port": port},
        "instance": name,
        "token_file": str(folder / "webhook-token"),
        "playbook": str(write_playbook(folder, [rule])),
        "poll_interval_seconds": 0.05,
        "lease_seconds": lease_seconds,
        "check_silences": False,
        "alertmanager_url": alertmanager_url,
        "watchdog": {"window_seconds": 0},
        "targets": {i: {"url": bot_url, "token_file": str(folder / "bot-token")} for i in instances},
        "budgets": UNCAPPED,
        **reconciler,
    }
    (folder / "reconciler.yaml").write_text(yaml.safe_dump({"database": {"url": db_url}, "reconciler": section}))
    proc = popen(
        [sys.executable, "-m", "trading_ops", "-c", str(folder / "reconciler.yaml"), "reconciler"],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "reconciler.log", "ab"),  # noqa: SIM115
    )
    if started is not None:
        started.append(proc)
    wait_http(f"http://{listen_host}:{port}/healthz", deadline=90, proc=proc)
    return proc, port


def disconnected(i: int, instances: tuple[str, ...]) -> dict[str, Any]:
    """The i-th notification of a stream: a TradingBotBrokerDisconnected of its own (fingerprint fp<i>, key k<i>) for
    one of `instances` in turn."""
    return payload(
        alert("TradingBotBrokerDisconnected", fingerprint=f"fp{i}", instance=instances[i % len(instances)], key=f"k{i}")
    )
