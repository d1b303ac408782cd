"""The local stack's services behave as production's systemd units (stack/service.py, stack/stackctl*.py): real child
processes talking the notify protocol through the bot library's own SystemdNotifier, restarted on failure, killed
by the watchdog when their pings stop, stopped by the start limit, and driven by `trading-ops stackctl`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from polling import until_async

from trading_ops.stack import stackctl, stackctl_server
from trading_ops.stack.service import NotifySocket, Service, ServiceError, ServicePolicy
from trading_ops.stack.supervisor import Child

# A service process: READY=1 after `ready_after` seconds, then a watchdog ping every 0.1 s while the file `hang`
# does not exist; exits with the status in the file `exit` when that appears.
CHILD = """
import asyncio, os, sys, time
from pathlib import Path
from trading_ops.bot.sdnotify import SystemdNotifier

here = Path(sys.argv[1])
(here / "starts").open("a").write(f"{os.getpid()}\\n")

async def main():
    notifier = SystemdNotifier()
    await asyncio.sleep(float(sys.argv[2]))
    notifier.ready("serving")
    while True:
        if (here / "exit").exists():
            sys.exit(int((here / "exit").read_text()))
        if not (here / "hang").exists():
            notifier.notify("WATCHDOG=1")
        await asyncio.sleep(0.1)

asyncio.run(main())
"""
DEADLINE = 20.0


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.notify = NotifySocket(f"trading-ops-test-{uuid.uuid4().hex[:12]}")
        self.services: list[Service] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.events: list[str] = []

    def service(self, ready_after: float = 0.0, **policy: Any) -> Service:
        script = self.dir / "child.py"
        script.write_text(CHILD)
        child = Child(
            "worker",
            [sys.executable, str(script), str(self.dir), str(ready_after)],
            self.dir / "worker.log",
            "",
            stop_timeout=5.0,
            env={**os.environ},
        )
        settings = {"unit": "worker.service", "restart_seconds": 0.2, "notify": True, **policy}
        service = Service(child, ServicePolicy(**settings), self.notify)
        service.on_event = self.events.append
        self.services.append(service)
        return service

    def run(self, service: Service) -> None:
        self.tasks.append(asyncio.create_task(service.run()))

    def starts(self) -> list[int]:
        path = self.dir / "starts"
        return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    h.notify.serve(lambda pid: next((s for s in h.services if s.child.pid == pid), None))
    yield h
    for task in h.tasks:
        task.cancel()
    for service in h.services:
        await service.close()
    h.notify.close()


# A process that handles SIGTERM itself (freqtrade does: it shuts its loop and API down), exiting with this status.
HANDLES_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
print("serving", flush=True)
while True:
    time.sleep(0.1)
"""


async def test_a_stopped_process_stops_on_sigterm_as_systemd_continues_it(tmp_path: Path) -> None:
    """systemd sends SIGCONT after the stop signal: a process someone froze (SIGSTOP, the local stack's `freqtrade
    hung` fault) that handles SIGTERM (a fatal default signal would kill it frozen) runs its handler at once instead
    of waiting out the stop timeout for SIGKILL."""
    script = tmp_path / "handles_sigterm.py"
    script.write_text(HANDLES_SIGTERM)
    log = tmp_path / "worker.log"
    child = Child("worker", [sys.executable, str(script)], log, "", stop_timeout=5.0)
    service = Service(child, ServicePolicy(unit="worker.service", restart_seconds=0.2))
    await service.start()
    try:
        await until_async("it serves", lambda: "serving" in log.read_text(), DEADLINE)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGSTOP)
        await service.stop()
        # Its handler ran (exit status 3): not the SIGKILL that ends the stop timeout.
        assert child.returncode == 3 and not child.killed
    finally:
        await service.close()


async def test_a_notify_service_is_active_only_once_it_says_ready(harness: Harness) -> None:
    service = harness.service(ready_after=0.5)
    await service.start(wait=False)
    assert service.state == "activating"
    await service.start()  # waits for READY=1, as systemctl start does
    assert service.state == "active" and service.status_text == "serving"
    assert service.describe()["ActiveState"] == "active"


async def test_a_crash_is_restarted_after_restart_sec_and_a_clean_exit_is_not(harness: Harness) -> None:
    service = harness.service()
    await service.start()
    harness.run(service)
    first = service.child.pid
    os.kill(first, signal.SIGKILL)
    await until_async("waiting RestartSec", lambda: service.state == "auto-restart", DEADLINE)
    assert service.describe()["SubState"] == "auto-restart" and service.result == "signal"
    await until_async("restarted", lambda: service.state == "active" and service.child.pid != first, DEADLINE)
    # A start resets the result, as systemd's does (tests/deploy/test_systemd_real.py saw it there).
    assert service.restarts == 1 and service.result == "success"
    assert any("killed by SIGKILL" in e for e in harness.events)
    (harness.dir / "exit").write_text("0")
    await until_async("stopped", lambda: service.state == "inactive", DEADLINE)
    (harness.dir / "exit").unlink()
    await asyncio.sleep(0.5)  # longer than RestartSec: a clean exit is not restarted
    assert service.state == "inactive" and len(harness.starts()) == 2


async def test_a_hung_service_is_killed_by_the_watchdog_and_restarted(harness: Harness) -> None:
    service = harness.service(watchdog_seconds=1.0)
    await service.start()
    harness.run(service)
    first = service.child.pid
    (harness.dir / "hang").touch()  # pings stop; the process stays alive
    await until_async(
        "watchdog kill", lambda: service.state == "auto-restart" and service.result == "watchdog", DEADLINE
    )
    assert service.child.pid == first  # not started again yet: RestartSec first
    assert any("watchdog timeout" in e for e in harness.events)
    (harness.dir / "hang").unlink()
    await until_async("active again", lambda: service.state == "active", DEADLINE)
    assert service.restarts == 1


async def test_a_crash_loop_hits_the_start_limit_and_stays_failed_until_reset(harness: Harness) -> None:
    (harness.dir / "exit").write_text("3")
    service = harness.service(start_limit_burst=3, start_limit_interval=60.0)
    await service.start(wait=False)
    harness.run(service)
    await until_async("failed", lambda: service.state == "failed", DEADLINE)
    # Burst starts ran, the next was refused; the unit keeps the result of the crash that led there, as systemd's
    # does (not start-limit-hit: that shows only where no failure came before the refusal).
    assert service.result == "exit-code" and len(harness.starts()) == 3 and service.restarts == 3
    with pytest.raises(ServiceError, match="start request repeated too quickly"):
        await service.restart()
    assert len(harness.starts()) == 3
    (harness.dir / "exit").unlink()
    service.reset_failed()
    await service.restart()
    assert service.state == "active" and len(harness.starts()) == 4


async def test_restarting_a_healthy_service_too_often_hits_the_start_limit(harness: Harness) -> None:
    """No failure came before the refused start: then the result says start-limit-hit, and the unit is stopped."""
    service = harness.service(start_limit_burst=2, start_limit_interval=60.0)
    await service.start()
    await service.restart()
    with pytest.raises(ServiceError, match="start request repeated too quickly"):
        await service.restart()
    assert (service.state, service.result, len(harness.starts())) == ("failed", "start-limit-hit", 2)
    assert service.pid is None
    service.reset_failed()
    await service.start()
    assert service.state == "active" and len(harness.starts()) == 3


async def test_stop_does_not_restart_even_when_the_process_exits_with_an_error(harness: Harness) -> None:
    service = harness.service()
    await service.start()
    harness.run(service)
    (harness.dir / "exit").write_text("1")  # the process exits 1 just as it is told to stop
    await service.stop()
    await asyncio.sleep(0.5)
    assert service.state == "inactive" and len(harness.starts()) == 1


async def test_a_notification_from_another_process_is_ignored(harness: Harness) -> None:
    service = harness.service(ready_after=3600)
    await service.start(wait=False)
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from trading_ops.bot.sdnotify import SystemdNotifier; SystemdNotifier().ready()",
        ],
        env={**os.environ, "NOTIFY_SOCKET": harness.notify.address},
        check=True,
    )
    assert other.returncode == 0
    await asyncio.sleep(0.3)
    assert service.state == "activating"  # only the main process may say READY=1 (NotifyAccess=main)


async def test_stackctl_speaks_to_the_services_of_its_state_directory(harness: Harness, tmp_path: Path) -> None:
    service = harness.service()
    await service.start()
    harness.run(service)
    lines: list[str] = []
    server = stackctl_server.Server(harness.services, tmp_path, lines.append)
    await server.start()
    try:
        cli = [sys.executable, "-m", "trading_ops", "stackctl", "--state-dir", str(tmp_path)]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*cli, *args], check=False, capture_output=True, text=True, timeout=60)

        status = await asyncio.to_thread(run, "status")
        assert status.returncode == 0 and status.stdout.startswith("worker.service") and "active" in status.stdout
        first = service.child.pid
        restarted = await asyncio.to_thread(run, "restart", "worker")
        assert restarted.returncode == 0, restarted.stderr
        assert service.child.pid != first and service.state == "active"
        assert lines == ["stackctl restart worker", "stackctl restart worker: done"]
        shown = await asyncio.to_thread(
            run, "--timestamp=unix", "--property=ActiveState,ExecMainStartTimestamp", "show", "worker.service"
        )
        props = dict(line.split("=", 1) for line in shown.stdout.splitlines())
        assert props["ActiveState"] == "active"
        assert abs(int(props["ExecMainStartTimestamp"].lstrip("@")) - time.time()) < 60
        missing = await asyncio.to_thread(run, "restart", "nosuch.service")
        assert missing.returncode == 1 and missing.stderr.count("\n") == 1
        assert "unit nosuch.service not found (units of this stack: worker.service)" in missing.stderr
        usage = await asyncio.to_thread(run, "reboot")
        assert usage.returncode == 2 and usage.stderr.count("\n") == 1
    finally:
        await server.close()
    nobody = subprocess.run(
        [sys.executable, "-m", "trading_ops", "stackctl", "--state-dir", str(tmp_path / "x"), "status"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nobody.returncode == 1 and "no `trading-ops up` runs with state directory" in nobody.stderr


def test_a_malformed_request_gets_an_answer_not_a_crash(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        server = stackctl_server.Server([], tmp_path)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection("\0" + stackctl.socket_name(tmp_path))
            writer.write(b"{not json\n")
            await writer.drain()
            answer = json.loads(await reader.readline())
            writer.close()
            return dict(answer)
        finally:
            await server.close()

    assert asyncio.run(scenario()) == {"ok": False, "error": "malformed request"}
