"""The systemd notify protocol on real unix datagram sockets (a path and an abstract '@' address), the watchdog's
pings while progress is reported and none while it is not, and the unit file shipped as package data."""

from __future__ import annotations

import os
import socket
import uuid
from importlib import resources

from paper_helpers import fast_config, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.bot.sdnotify import SystemdNotifier
from trading_ops.paper.bot import PaperBot


def recv_all(sock: socket.socket) -> list[str]:
    messages: list[str] = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_ready_and_stopping_on_an_abstract_socket() -> None:
    name = f"trading-ops-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled and notifier.ready("trading") and notifier.stopping()
        messages = recv_all(sock)
        await notifier.close()
    assert messages[0].splitlines()[:2] == ["READY=1", "STATUS=trading"]
    assert f"MAINPID={os.getpid()}" in messages[0]
    assert messages[1] == "STOPPING=1"


async def test_watchdog_pings_only_while_progressing(tmp_path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        progressing = True
        checks = 0

        def check() -> bool:
            nonlocal checks
            checks += 1
            return progressing

        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "40000"})
        assert notifier.watchdog_interval == 0.02
        notifier.start_watchdog(check)
        received: list[str] = []
        await wait_for(lambda: received.extend(recv_all(sock)) or received.count("WATCHDOG=1") >= 3)
        progressing = False
        seen = checks
        await wait_for(lambda: checks > seen)  # the watchdog looked at the hung loop: no ping is on its way
        pings = notifier.pings
        recv_all(sock)
        seen = checks
        await wait_for(lambda: checks >= seen + 5)  # five more looks, and still no ping
        assert notifier.pings == pings and recv_all(sock) == []
        await notifier.close()


def test_without_systemd_nothing_is_sent() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled and not notifier.ready()
    other_pid = SystemdNotifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval is None  # the watchdog is meant for another process


def test_unit_file_is_type_notify_with_a_watchdog() -> None:
    unit = resources.files("trading_ops.paper").joinpath("systemd/trading-ops-paper-bot.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "paper-bot" in unit


async def test_a_starting_bot_pings_the_watchdog_from_its_first_check(tmp_path, monkeypatch, caplog) -> None:
    """The watchdog starts with the trading loop, before its first iteration is done: that is a bot starting, not a
    hung loop. Its first check pings (no "no progress" error at every start, no gap of half a WatchdogSec)."""
    path = tmp_path / "notify.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # a check a second
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        config = fast_config(tmp_path)
        # A start is progress for a heartbeat timeout: 5 s, not the fast profile's 0.5 s, which a loaded machine's
        # start may take (a stall then, rightly) before the loop's first iteration.
        config.bot.heartbeat_timeout_seconds = 5.0
        bot = PaperBot(config, token="t" * 32, registry=CollectorRegistry(), chaos=True)
        await bot.start("127.0.0.1", 0)
        try:
            received: list[str] = []
            await wait_for(lambda: received.extend(recv_all(sock)) or "WATCHDOG=1" in received)
        finally:
            await bot.stop()
    assert received[0].startswith("READY=1")
    assert not [r for r in caplog.records if "makes no progress" in r.getMessage()]
