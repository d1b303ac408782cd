"""The stack's child processes: each in its own process group, logging to a file, stopped with SIGTERM then SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# prctl(PR_SET_PDEATHSIG): the kernel sends a child this signal when `up` dies, even by SIGKILL, so a killed
# `up` leaves no servers behind. Linux only; elsewhere a killed `up` leaves its children running.
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: ask for SIGTERM when the parent dies; exit at once if it already has."""

    def setup() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return setup


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    health_url: str
    # How long a SIGTERM may take before SIGKILL.
    stop_timeout: float
    env: dict[str, str] | None = None
    # Healthy before the children after it start (what they connect to at their start).
    healthy_first: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    stopping: bool = False
    killed: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the child in a new session (its own process group: Ctrl-C in the terminal reaches only `up`,
        which stops the children in order). Call from the main thread: the death signal follows the thread."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"---- {self.name} starting: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
                preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509 - prctl only, no locks taken
            )

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM to the process group, then SIGCONT (as systemd does: a stopped process, a freqtrade someone froze
        with SIGSTOP, handles its SIGTERM only once continued), SIGKILL after `timeout`; the exit status (negative: a
        signal)."""
        if self.proc is None:
            return None
        self.stopping = True
        if self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)
            self.signal_group(signal.SIGCONT)
            try:
                await asyncio.to_thread(self.proc.wait, self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %gs of SIGTERM: SIGKILL", self.name, self.stop_timeout)
                self.killed = True
                self.signal_group(signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait)
        # Whatever the child started in its group (an exec action's command) goes with it.
        self.signal_group(signal.SIGKILL)
        return self.proc.returncode

    def kill_now(self) -> None:
        """SIGKILL the whole group without waiting (a second Ctrl-C, or cleanup after an error)."""
        if self.proc is not None:
            self.killed = self.killed or self.proc.poll() is None
            self.stopping = True
            self.signal_group(signal.SIGKILL)
