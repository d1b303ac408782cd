"""One `trading-ops up` per state directory: an exclusive flock on STATE_DIR/up.lock, taken before anything is written.

A second `up` in the same checkout shares its state directory (var/stack), its configuration, its tokens and its
bot's data dir: started beside a running stack on other ports it would rewrite the running stack's Prometheus
targets and configuration before failing. The lock goes with the process that holds it (a kill -9 included), so a
crashed `up` never blocks the next one, as a pid file left behind would; its holder writes its pid and ports into
the file, which is how a second `up` names the stack that runs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "up.lock"
HOLDER_BYTES = 4096


class StackRunning(Exception):
    """Another `up` holds the state directory's lock; the message names it and says how to start another."""


def _holder(fd: int) -> str:
    text = os.pread(fd, HOLDER_BYTES, 0).decode("utf-8", errors="replace").strip()
    return text.splitlines()[0] if text else ""


class StackLock:
    """`acquire()` takes the state directory's lock or raises StackRunning; the lock is released by `release()` or
    with the process. The file descriptor is not inherited: a child left behind never holds the lock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, what: str) -> None:
        """Take the lock and write this process's pid and `what` it runs (its bot kind and ports) into it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "a process that has not yet said which"
            os.close(fd)
            raise StackRunning(
                f"a stack already runs with state directory {self.state_dir} ({holder}): one stack per checkout at a "
                "time; stop it first (Ctrl-C, or kill -INT its pid), or start another from a directory of its own "
                "(another checkout) with other ports (--base-port N)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {what}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
