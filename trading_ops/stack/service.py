"""systemd's service semantics for a child of the local stack: Type=notify readiness and WatchdogSec over
$NOTIFY_SOCKET, Restart=on-failure after RestartSec, a start limit, and the verbs `systemctl` offers on it.

In production the bot and the reconciler run under systemd (trading_ops/*/systemd/*.service): a crash is restarted
after RestartSec, a hung trading loop stops its watchdog pings and is killed (SIGABRT) and restarted, and a crash
loop hits StartLimitBurst and stays failed until a human runs `systemctl reset-failed`. `trading-ops up` gives its
children the same, so what heals in production heals locally, and what production gives up on ends with a human
locally too. The reconciler's `systemd` steps reach a `Service` through `trading-ops stackctl` (stack/stackctl.py,
answered by stack/stackctl_server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from trading_ops.stack.supervisor import Child, describe_exit

log = logging.getLogger(__name__)

# How often a service looks at its process, its watchdog and a pending restart (cheap: a poll() and a clock).
TICK_SECONDS = 0.1
# Exit signals systemd's Restart=on-failure counts as a clean exit (SuccessExitStatus's default signals).
CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})
START_LIMIT_REFUSED = "start request repeated too quickly; run `trading-ops stackctl reset-failed` first"
# A notification datagram is a few short KEY=VALUE lines.
NOTIFY_DATAGRAM_BYTES = 4096
UCRED = struct.Struct("3i")  # pid, uid, gid of SCM_CREDENTIALS
# This module's states as systemd's (ActiveState, SubState): auto-restart is systemd's activating/auto-restart.
SYSTEMD_STATES = {
    "inactive": ("inactive", "dead"),
    "activating": ("activating", "start"),
    "active": ("active", "running"),
    "deactivating": ("deactivating", "stop-sigterm"),
    "auto-restart": ("activating", "auto-restart"),
    "failed": ("failed", "failed"),
}


@dataclass(frozen=True)
class ServicePolicy:
    """The [Service]/[Unit] settings a child runs under (names as in systemd.service(5))."""

    unit: str
    restart_seconds: float = 5.0  # RestartSec (Restart=on-failure)
    start_limit_burst: int = 5  # StartLimitBurst ...
    start_limit_interval: float = 600.0  # ... within StartLimitIntervalSec
    notify: bool = False  # Type=notify: active once the child sends READY=1
    watchdog_seconds: float | None = None  # WatchdogSec (Type=notify only)
    start_timeout: float = 120.0  # TimeoutStartSec: no READY=1 by then is a failed start


class ServiceError(Exception):
    """A verb that cannot be carried out (systemctl's error message, one line)."""


class NotifySocket:
    """The stack's $NOTIFY_SOCKET: one abstract unix datagram socket; each datagram is credited to the service whose
    main process sent it (systemd's NotifyAccess=main), by the sender's pid the kernel vouches for."""

    def __init__(self, name: str) -> None:
        self.address = "@" + name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind("\0" + name)
        self._by_pid: Callable[[int], Service | None] = lambda _pid: None

    def serve(self, by_pid: Callable[[int], Service | None]) -> None:
        self._by_pid = by_pid
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._receive)

    def _receive(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(NOTIFY_DATAGRAM_BYTES, socket.CMSG_SPACE(UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("notify socket: %s", exc)
                return
            pid = next(
                (
                    UCRED.unpack(d[: UCRED.size])[0]
                    for level, kind, d in ancdata
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                ),
                None,
            )
            service = self._by_pid(pid) if pid is not None else None
            if service is None:
                log.warning("notify socket: ignored a notification from pid %s (not a service's main process)", pid)
                continue
            fields = dict(
                line.split("=", 1) for line in data.decode("utf-8", errors="replace").splitlines() if "=" in line
            )
            service.notified(fields)

    def close(self) -> None:
        with contextlib.suppress(ValueError, RuntimeError):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()


class Service:
    """One child under a ServicePolicy. States as systemctl shows them: inactive, activating, active, deactivating,
    auto-restart (waiting RestartSec after a failure) and failed (gave up: a failed start past the start limit, or
    stopped by a human after a failure). `run()` is the loop that restarts; the verbs are `start`, `stop`,
    `restart`, `try_restart` and `reset_failed`."""

    def __init__(self, child: Child, policy: ServicePolicy, notify: NotifySocket | None = None) -> None:
        self.child = child
        self.policy = policy
        if policy.notify:
            if notify is None:
                raise ValueError(f"{policy.unit}: Type=notify needs the notify socket")
            extra = {"NOTIFY_SOCKET": notify.address}
            if policy.watchdog_seconds:
                extra["WATCHDOG_USEC"] = str(int(policy.watchdog_seconds * 1_000_000))
            child.env = {**(child.env if child.env is not None else os.environ), **extra}
        self.state = "inactive"
        # Why it last failed: success, exit-code, signal, watchdog, timeout; start-limit-hit only when a start is
        # refused while there was no failure to tell (systemd keeps the first failure's result). A start resets it.
        self.result = "success"
        self.restarts = 0  # automatic restarts (systemd's NRestarts)
        self.status_text = ""  # the last STATUS= it sent
        self.on_event: Callable[[str], None] = lambda _message: None
        self.on_restart: Callable[[], None] = lambda: None  # after each automatic restart's process started
        self.started_at_wall: float | None = None  # when the main process last started (ExecMainStartTimestamp)
        # systemd's start rate limit: a window of StartLimitIntervalSec from its first start, at most StartLimitBurst
        # starts in it; a start after the window opens a new one.
        self._window_begin: float | None = None
        self._window_starts = 0
        self._started_at = 0.0
        self._last_ping = 0.0
        self._restart_at: float | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._stopping = False  # a verb is stopping the process on purpose: its exit is not a failure
        self._lock = asyncio.Lock()  # one verb at a time, as systemd's job queue

    # -- what the notify socket and the status line see -----------------------------------------------------
    @property
    def unit(self) -> str:
        return self.policy.unit

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child.running() else None

    def notified(self, fields: dict[str, str]) -> None:
        if "STATUS" in fields:
            self.status_text = fields["STATUS"][:200]
        if fields.get("WATCHDOG") == "1":
            self._last_ping = time.monotonic()
        if fields.get("READY") == "1" and self.state == "activating":
            self._active()
        if fields.get("STOPPING") == "1" and self.state == "active":
            self.state = "deactivating"

    def describe(self) -> dict[str, object]:
        """What `systemctl status` and `systemctl show` tell of a unit, in systemd's terms."""
        active, sub = SYSTEMD_STATES[self.state]
        return {
            "unit": self.unit,
            "name": self.child.name,
            "state": self.state,
            "result": self.result,
            "pid": self.pid,
            "restarts": self.restarts,
            "status": self.status_text,
            "ActiveState": active,
            "SubState": sub,
            "Result": self.result,
            "MainPID": self.pid or 0,
            "NRestarts": self.restarts,
            "ExecMainStartTimestamp": self.started_at_wall,
        }

    # -- the loop ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Watch the process until the stack stops: an exit, a missed watchdog or a start that never becomes ready
        is a failure, restarted after RestartSec unless the start limit is hit."""
        while not self._closing:
            now = time.monotonic()
            if self._stopping:
                pass
            elif self.state in ("activating", "active", "deactivating") and not self.child.running():
                self._exited(self._exit_result(self.child.returncode))
            elif self.state == "activating" and now - self._started_at > self.policy.start_timeout:
                async with self._lock:
                    if self.state == "activating" and time.monotonic() - self._started_at > self.policy.start_timeout:
                        self.on_event(f"{self.unit}: no READY=1 within {self.policy.start_timeout:g}s: killing it")
                        await self._kill("timeout")
            elif self.state == "active" and self._watchdog_expired(now):
                async with self._lock:
                    if self.state == "active" and self._watchdog_expired(time.monotonic()):
                        self.on_event(
                            f"{self.unit}: watchdog timeout (no WATCHDOG=1 for {self.policy.watchdog_seconds:g}s): "
                            "SIGABRT"
                        )
                        await self._kill("watchdog", signal.SIGABRT)
            elif self.state == "auto-restart" and self._restart_at is not None and now >= self._restart_at:
                async with self._lock:
                    if self.state == "auto-restart" and not self._closing:
                        self.restarts += 1
                        self._start_now()
                        if self.child.running():
                            self.on_event(f"{self.unit}: restarted (restart {self.restarts})")
                            self.on_restart()
            await asyncio.sleep(TICK_SECONDS)

    def _watchdog_expired(self, now: float) -> bool:
        return bool(self.policy.watchdog_seconds) and now - self._last_ping > (self.policy.watchdog_seconds or 0)

    def _exit_result(self, code: int | None) -> str:
        if code is None or code == 0:
            return "success"
        if code < 0:
            return "success" if -code in CLEAN_SIGNALS else "signal"
        return "exit-code"

    def _exited(self, result: str) -> None:
        """The main process is gone while the service ran: Restart=on-failure decides."""
        code = self.child.returncode
        self._ready.set()  # whoever waits for readiness learns it failed
        if self.state == "deactivating" and result == "success":
            self.state, self.result = "inactive", "success"
            return
        self.result = result if result != "success" else self.result
        if result == "success":
            self.state = "inactive"
            self.on_event(f"{self.unit}: {self.child.name} {describe_exit(code)}: stopped")
            return
        self._fail_or_restart(f"{self.child.name} (pid {self.child.pid}) {describe_exit(code)}")

    def _fail_or_restart(self, what: str) -> None:
        if self._closing:
            self.state = "failed"
            return
        self.state = "auto-restart"
        self._restart_at = time.monotonic() + self.policy.restart_seconds
        self.on_event(f"{self.unit}: {what} ({self.result}); restarting in {self.policy.restart_seconds:g}s")

    async def _kill(self, result: str, sig: int = signal.SIGTERM) -> None:
        self.result = result
        self.child.signal_group(sig)
        # A hung process may ignore SIGABRT's handler or SIGTERM: SIGKILL after the stop timeout, like systemd's
        # TimeoutAbortSec/TimeoutStopSec.
        deadline = time.monotonic() + self.child.stop_timeout
        while self.child.running() and time.monotonic() < deadline:
            await asyncio.sleep(TICK_SECONDS)
        if self.child.running():
            self.child.signal_group(signal.SIGKILL)
            await asyncio.to_thread(self._wait_child)
        self.child.signal_group(signal.SIGKILL)  # what it left in its group
        self._ready.set()
        self._fail_or_restart(f"{self.child.name} (pid {self.child.pid}) {describe_exit(self.child.returncode)}")

    def _wait_child(self) -> None:
        if self.child.proc is not None:
            self.child.proc.wait()

    def _start_allowed(self, now: float) -> bool:
        """systemd's ratelimit of starts (StartLimitBurst within StartLimitIntervalSec): counts this start."""
        if self._window_begin is None or now - self._window_begin > self.policy.start_limit_interval:
            self._window_begin, self._window_starts = now, 0
        if self._window_starts >= self.policy.start_limit_burst:
            return False
        self._window_starts += 1
        return True

    def _start_now(self) -> None:
        """Start the process, or refuse it past the start limit (the service then stays failed, with the result of
        the failure that led there, as systemd keeps it)."""
        now = time.monotonic()
        if not self._start_allowed(now):
            self.state = "failed"
            if self.result == "success":
                self.result = "start-limit-hit"
            self._restart_at = None
            self._ready.set()
            self.on_event(
                f"{self.unit}: start request repeated too quickly ({self.policy.start_limit_burst} starts within "
                f"{self.policy.start_limit_interval:g}s): failed; `trading-ops stackctl reset-failed` once fixed"
            )
            return
        self.result = "success"
        self._restart_at = None
        self._ready = asyncio.Event()
        self.child.stopping = False
        self.child.killed = False
        self.child.start()
        self.started_at_wall = time.time()
        self._started_at = self._last_ping = now
        self.state = "activating"
        if not self.policy.notify:
            self._active()

    def _active(self) -> None:
        self.state = "active"
        self._last_ping = time.monotonic()  # the watchdog runs from the moment the start completed
        self._ready.set()

    async def _wait_started(self) -> None:
        """Until the start completes (READY=1 for Type=notify), like `systemctl start` without --no-block."""
        await self._ready.wait()
        if self.state != "active":
            raise ServiceError(f"{self.unit}: start failed ({self.result}); see {self.child.log_path}")

    # -- the verbs --------------------------------------------------------------------------------------------
    async def start(self, wait: bool = True) -> None:
        async with self._lock:
            if self.state not in ("active", "activating"):
                self._start_now()
                if self.state == "failed":
                    raise ServiceError(f"{self.unit}: {START_LIMIT_REFUSED}")
        if wait:
            await self._wait_started()

    async def stop(self) -> int | None:
        """Stop without restarting (SIGTERM, SIGKILL after the child's stop timeout)."""
        async with self._lock:
            return await self._stop_locked()

    async def _stop_locked(self) -> int | None:
        self._restart_at = None
        if self.child.running():
            self.state = "deactivating"
            self._stopping = True
            try:
                code = await self.child.stop()
            finally:
                self._stopping = False
        else:
            code = self.child.returncode
        self.state = "failed" if self.state == "failed" else "inactive"
        if self.child.killed:
            self.result = "timeout"
        self._ready.set()
        return code

    async def restart(self) -> None:
        async with self._lock:
            await self._stop_locked()
            self._start_now()
            if self.state == "failed":
                raise ServiceError(f"{self.unit}: {START_LIMIT_REFUSED}")
        await self._wait_started()

    async def try_restart(self) -> None:
        if self.state in ("active", "activating", "deactivating", "auto-restart"):
            await self.restart()

    def reset_failed(self) -> None:
        """Forget the failure and the start limit's window (systemctl reset-failed)."""
        self._window_begin, self._window_starts = None, 0
        if self.state == "failed":
            self.state, self.result = "inactive", "success"

    async def close(self) -> int | None:
        """The stack stops: no more restarts; stop the process."""
        self._closing = True
        async with self._lock:
            return await self._stop_locked()
