"""End to end: real Alertmanagers (single and a clustered pair) posting to the reconciler, two reconciler
processes on one PostgreSQL database, and kill -9 of a reconciler in the middle of an action.

Needs prometheus-alertmanager (started here) and PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from alertmanager_server import Alertmanager, start_alertmanager
from fake_bot import FakeBot, bot_targets
from polling import until_async
from ports import free_port
from reconciler_server import AUTH, BOT_TOKEN, TOKEN, make_config, write_playbook
from secret_file import write_secret
from server_process import stop, wait_http
from webhook_payloads import alert, payload

from trading_ops.db.base import make_engine
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.ledger import CLOSED_STATES, Ledger

pytestmark = [pytest.mark.alertmanager, pytest.mark.slow]

RECONNECT = {
    "name": "reconnect",
    "match": ['alertname="TradingBotBrokerDisconnected"'],
    "verify": False,
    "cooldown": 0,
    "steps": [{"action": "bot", "command": "reconnect", "body": {"key": "${key}"}}],
}


def am_alert(key: str, instance: str = "bot-1", starts_at: datetime | None = None) -> dict[str, Any]:
    return {
        "labels": {"alertname": "TradingBotBrokerDisconnected", "instance": instance, "key": key},
        "annotations": {"summary": "broker disconnected."},
        "startsAt": (starts_at or datetime.now(UTC)).isoformat(),
    }


async def serve(aiohttp_server: Any, tmp_path: Path, db: str, bot: FakeBot, **rc: Any) -> tuple[Any, Ledger]:
    port = free_port()
    config = make_config(
        tmp_path, db, playbook=str(write_playbook(tmp_path, [RECONNECT])), targets=bot_targets(bot, tmp_path), **rc
    )
    app = create_app(config)
    await aiohttp_server(app, port=port)
    return port, Ledger(make_engine(db))


async def test_real_alertmanager_resends_and_the_bot_is_acted_on_once(
    aiohttp_server: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    port, ledger = await serve(aiohttp_server, tmp_path, migrated_sqlite, fake_bot)
    am = await asyncio.to_thread(
        start_alertmanager, tmp_path / "am", f"http://127.0.0.1:{port}/api/v1/alertmanager", None, (), "1s"
    )
    try:
        am.post_alerts([am_alert("k1")])
        await until_async(
            "three notifications (repeat_interval resends)",
            lambda: ledger.notification_count() >= 3,
            30,
            in_thread=True,
        )
        assert fake_bot.calls == [("reconnect", {"key": "k1"})]
        episodes = ledger.list_episodes()
        assert len(episodes) == 1 and episodes[0]["state"] == "recovered"
    finally:
        stop(am.proc)
        ledger.engine.dispose()


async def test_a_clustered_alertmanager_pair_gets_one_action(
    aiohttp_server: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    port, ledger = await serve(aiohttp_server, tmp_path, migrated_sqlite, fake_bot)
    url = f"http://127.0.0.1:{port}/api/v1/alertmanager"
    c1, c2 = free_port(), free_port()
    ams: list[Alertmanager] = []
    try:
        ams.append(await asyncio.to_thread(start_alertmanager, tmp_path / "am1", url, c1, (c2,), "1s"))
        ams.append(await asyncio.to_thread(start_alertmanager, tmp_path / "am2", url, c2, (c1,), "1s"))
        starts = datetime.now(UTC)
        for am in ams:  # Prometheus sends every alert to every Alertmanager of the pair
            am.post_alerts([am_alert("ha", starts_at=starts)])
        await until_async(
            "notifications from both members", lambda: ledger.notification_count() >= 4, 30, in_thread=True
        )
        # Episodes are stored with the notifications: once none is open, every run that was due has happened.
        await until_async(
            "no open episode",
            lambda: all(e["state"] in CLOSED_STATES for e in ledger.list_episodes()),
            30,
            in_thread=True,
        )
        assert fake_bot.commands() == ["reconnect"]
        assert len(ledger.list_episodes()) == 1
    finally:
        for am in ams:
            stop(am.proc)
        ledger.engine.dispose()


# ---- reconciler processes ------------------------------------------------------------------------------


def write_config(
    tmp_path: Path, name: str, db_url: str, rules: list[dict[str, Any]], file: str = "", **rc: Any
) -> tuple[Path, int]:
    port = free_port()
    write_secret(tmp_path / "webhook-token", TOKEN)
    write_secret(tmp_path / "bot-token", BOT_TOKEN)
    data = {
        "database": {"url": db_url},
        "reconciler": {
            "listen": {"port": port},
            "instance": name,
            "token_file": str(tmp_path / "webhook-token"),
            "playbook": str(write_playbook(tmp_path, rules)),
            "poll_interval_seconds": 0.05,
            "lease_seconds": 5,
            "check_silences": False,
            "alertmanager_url": "http://127.0.0.1:9",
            "watchdog": {"window_seconds": 0},
            **rc,
        },
    }
    path = tmp_path / f"{file or name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, port


def spawn(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trading_ops", "-c", str(config), "reconciler"],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),
    )  # noqa: SIM115
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    return proc


def post(port: int, body: dict[str, Any]) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/alertmanager",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **AUTH},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "names",
    [
        ("replica-a", "replica-b"),
        # The default instance is the host name: two replicas on one host share it, and must still never take
        # each other's live runs (each run outlasts several polls of the other one here).
        ("", ""),
    ],
    ids=["named", "default-instance"],
)
async def test_two_reconcilers_on_one_postgresql_act_once_per_episode(
    tmp_path: Path, postgres_url: str, fake_bot: FakeBot, names: tuple[str, str]
) -> None:
    from trading_ops.db import migrate

    await asyncio.to_thread(migrate.upgrade, postgres_url)
    fake_bot.delay = 0.4  # a run spans many 50 ms polls of the other replica
    targets = {f"bot-{i}": {"url": fake_bot.url, "token_file": str(tmp_path / "bot-token")} for i in range(8)}
    procs = []
    try:
        ports = []
        for i, name in enumerate(names):
            config, port = write_config(tmp_path, name, postgres_url, [RECONNECT], targets=targets, file=f"r{i}")
            procs.append(await asyncio.to_thread(spawn, config, port, tmp_path / f"r{i}.log"))
            ports.append(port)
        bodies = [payload(alert(fingerprint=f"fp{i}", instance=f"bot-{i}", key=f"k{i}")) for i in range(8)]
        # Every notification reaches both replicas, three times (an HA pair with resends).
        sends = [asyncio.to_thread(post, port, body) for body in bodies for port in ports for _ in range(3)]
        assert set(await asyncio.gather(*sends)) == {200}
        ledger = Ledger(make_engine(postgres_url))
        try:
            await until_async(
                "8 recovered episodes",
                lambda: (
                    all(e["state"] == "recovered" for e in ledger.list_episodes()) and len(ledger.list_episodes()) == 8
                ),
                30,
                in_thread=True,
            )
            episodes = ledger.list_episodes()
        finally:
            ledger.engine.dispose()
        assert sorted(body["key"] for _, body in fake_bot.calls) == sorted(f"k{i}" for i in range(8))
        assert all([a["outcome"] for a in e["attempt_list"]] == ["success"] for e in episodes)
        expected = set(names) if all(names) else {socket.gethostname()}
        assert {a["owner"].rsplit(":", 1)[0] for e in episodes for a in e["attempt_list"]} <= expected
    finally:
        for proc in procs:
            stop(proc)


@pytest.mark.parametrize(
    ("max_attempts", "on_unknown", "final"),
    [(2, "retry", "recovered"), (1, "retry", "escalated"), (2, None, "escalated"), (2, "escalate", "escalated")],
)
async def test_kill_9_mid_action_leaves_an_unknown_outcome_that_on_unknown_decides_and_nothing_acked_is_lost(
    tmp_path: Path,
    migrated_sqlite: str,
    max_attempts: int,
    on_unknown: str | None,
    final: str,
    alertmanager: Alertmanager,
) -> None:
    # The step (exec: disruptive) was running when the reconciler was killed: nobody saw its outcome. After the
    # restart the episode says so (step and attempt `unknown`), and the rule's on_unknown decides: retry (within
    # max_attempts), or escalate without running anything again (the default for a disruptive step).
    started, pids, seen = tmp_path / "started", tmp_path / "pids", tmp_path / "seen-by-retry"
    # First run: start a helper in the step's process group (as a restart script's children would be), announce,
    # then hang: the reconciler is killed meanwhile. A retry first looks whether anything of the first run
    # still runs (it must not: one action at a time per target), then succeeds.
    script = f"""
import os, pathlib, subprocess, sys, time
import psutil
started, pids, seen = pathlib.Path({str(started)!r}), pathlib.Path({str(pids)!r}), pathlib.Path({str(seen)!r})
if not started.exists():
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    pids.write_text(f"{{os.getpid()}} {{helper.pid}}")
    started.write_text("1")
    time.sleep(120)
else:
    def running(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    seen.write_text(repr([pid for pid in map(int, pids.read_text().split()) if running(pid)]))
"""
    rules = [
        {
            "name": "slow",
            "match": ['alertname="TradingBotDiskSpaceLow"'],
            "verify": False,
            "cooldown": 0,
            "max_attempts": max_attempts,
            "backoff": {"initial": "100ms"},
            "steps": [{"action": "exec", "argv": [sys.executable, "-c", script], "timeout": "2m"}],
            **({"on_unknown": on_unknown} if on_unknown else {}),
        }
    ]
    config, port = write_config(tmp_path, "solo", migrated_sqlite, rules, alertmanager_url=alertmanager.url)
    log = tmp_path / "reconciler.log"
    proc = await asyncio.to_thread(spawn, config, port, log)
    acked = 0
    try:
        assert await asyncio.to_thread(post, port, payload(alert("TradingBotDiskSpaceLow", fingerprint="disk"))) == 200
        acked += 1
        await until_async("the step to start", started.exists, 30, in_thread=True)
        old = [int(p) for p in pids.read_text().split()]
        for i in range(20):  # more notifications, each acknowledged before the kill
            acked += await asyncio.to_thread(post, port, payload(alert("Other", fingerprint=f"o{i}"))) == 200
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc = await asyncio.to_thread(spawn, config, port, log)
        ledger = Ledger(make_engine(migrated_sqlite))
        try:

            def done() -> bool:
                return any(
                    e["alertname"] == "TradingBotDiskSpaceLow" and e["state"] == final for e in ledger.list_episodes()
                )

            await until_async(f"the episode to end {final}", done, 30, in_thread=True)
            assert ledger.notification_count() == acked
            episode = next(e for e in ledger.list_episodes() if e["alertname"] == "TradingBotDiskSpaceLow")
            outcomes = [a["outcome"] for a in episode["attempt_list"]]
            retried = final == "recovered"
            assert outcomes == (["unknown", "success"] if retried else ["unknown"]), episode
            step = episode["attempt_list"][0]["steps"][0]
            assert step["outcome"] == "unknown"
            if not retried:
                why = "no attempts left" if on_unknown == "retry" else "not run again (on_unknown: escalate)"
                assert "is unknown" in episode["detail"] and why in episode["detail"], episode["detail"]
                assert not seen.exists(), "the step ran again"
            # The step's command died with the reconciler (PR_SET_PDEATHSIG); what it had started was found by
            # the sweep after the restart, through the process group recorded in the step, and killed.
            assert step["process"] and "still ran: killed" in step["output"]
            if retried:
                assert seen.read_text() == "[]", f"the retry started while {seen.read_text()} of the first run ran"
            for pid in old:
                assert not _running(pid), f"process {pid} of the interrupted run survived"
        finally:
            ledger.engine.dispose()
    finally:
        stop(proc)
        for pid in map(int, pids.read_text().split()) if pids.exists() else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
