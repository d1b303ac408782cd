"""The systemd notify protocol (READY=1, WATCHDOG=1, STOPPING=1) written directly on $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to the service manager; does nothing when the bot does not run under systemd.

    The watchdog pings only while `progressing()` says the trading loop makes progress, so a hung loop
    lets `WatchdogSec` run out and systemd restarts the bot.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # Abstract namespace sockets are written with a leading '@' and addressed with a NUL byte.
        self.address: str | bytes | None = None
        if address.startswith("@"):
            self.address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self.address = address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` (e.g. "READY=1", "STATUS=trading") as one datagram; False when not possible."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.warning("systemd notification %s failed: %s", fields[0] if fields else "", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def start_watchdog(self, progressing: Callable[[], bool]) -> None:
        """Ping every WATCHDOG_USEC/2 while `progressing()` is true (no task without a watchdog)."""
        if self.address is None or self.watchdog_interval is None or self._task is not None:
            return
        self._task = asyncio.create_task(self._watchdog(progressing, self.watchdog_interval), name="sd-watchdog")

    async def _watchdog(self, progressing: Callable[[], bool], interval: float) -> None:
        stalled = False
        while True:
            if progressing():
                if self.notify("WATCHDOG=1"):
                    self.pings += 1
                if stalled:
                    log.warning("trading loop progressing again: systemd watchdog pings resumed")
                stalled = False
            elif not stalled:
                log.error("trading loop makes no progress: systemd watchdog pings stopped")
                stalled = True
            await asyncio.sleep(interval)

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None
        self.close_socket()

    def close_socket(self) -> None:
        """Close the socket (a process without a watchdog task: no loop needed)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
