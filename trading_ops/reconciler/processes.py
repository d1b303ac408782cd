"""Process identities that survive a restart (host, pid, start time): who holds a claim, which child a step
started, whether that process is provably gone, and killing a step's left-over process group."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
PID_NAMESPACE_PATH = "/proc/self/ns/pid"
# Owners are stored in String(128) columns; the instance name gets what the identity leaves.
OWNER_MAX = 128
INSTANCE_MAX = 60
# psutil derives start times from clock ticks (1/100 s): two readings of one process may differ by a tick.
START_TOLERANCE_CENTISECONDS = 1
KILL_WAIT_SECONDS = 5.0


@functools.cache
def host_token() -> str:
    """This kernel boot and pid namespace: processes with the same token see the same pids ("" if unknown).

    Two replicas on one host (same boot, same namespace) can check each other's pids; a container with its own
    pid namespace, another machine or an earlier boot cannot, so nothing is ever concluded across them."""
    try:
        boot = BOOT_ID_PATH.read_text().strip().replace("-", "")[:12]
        namespace = os.stat(PID_NAMESPACE_PATH).st_ino
    except OSError:
        return ""
    return f"{boot}{namespace:x}"


@dataclass(frozen=True)
class ProcessId:
    """One process for as long as it lives: a pid alone is reused, a pid with its start time is not."""

    host: str
    pid: int
    started: int  # start time in centiseconds since the epoch

    def token(self) -> str:
        return f"{self.host}.{self.pid}.{self.started}"

    @classmethod
    def parse(cls, token: str | None) -> ProcessId | None:
        parts = (token or "").split(".")
        if len(parts) < 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]))

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The identity of a live local process, None when it is already gone (or its host is unknown)."""
        host = host_token()
        if not host:
            return None
        try:
            started = round(psutil.Process(pid).create_time() * 100)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.Error:
            return None
        return cls(host, pid, started)

    def alive(self) -> bool | None:
        """True while this very process runs, False when it is provably gone, None when this host cannot tell."""
        if self.host != host_token():
            return None
        try:
            proc = psutil.Process(self.pid)
            started = round(proc.create_time() * 100)
            zombie = proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return None
        if abs(started - self.started) > START_TOLERANCE_CENTISECONDS:
            return False  # the pid was reused by another process
        return not zombie


def make_owner(instance: str) -> str:
    """An owner id for claims: the replica's instance name, then this process's identity and a per-app suffix
    (two applications in one process, as tests run them, must not share claims)."""
    me = ProcessId.of(os.getpid())
    identity = me.token() if me else "unknown.0.0"
    return f"{instance[:INSTANCE_MAX]}:{identity}.{uuid.uuid4().hex[:8]}"[:OWNER_MAX]


def owner_process(owner: str | None) -> ProcessId | None:
    if not owner or ":" not in owner:
        return None
    return ProcessId.parse(owner.rsplit(":", 1)[1])


def owner_is_dead(owner: str | None) -> bool:
    """Whether the process behind a claim is provably gone; an owner on another host is never presumed dead."""
    process = owner_process(owner)
    return process is not None and process.alive() is False


def group_members(process: ProcessId) -> list[psutil.Process]:
    """Live processes of the group `process` led (its pid is the group id: exec starts a new session)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != process.pid:
                continue
            # Members of the step's group started after its leader; a younger group with a reused id does not
            # exist while any of ours lives (a group id is not reused as a pid while the group has members).
            if round(proc.create_time() * 100) + START_TOLERANCE_CENTISECONDS < process.started:
                continue
            if proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return members


def kill_leftover_group(process: ProcessId, wait: float = KILL_WAIT_SECONDS) -> int | None:
    """SIGKILL the process group a step started when any of it still runs here; the number of processes
    killed (0: none left), or None when this host cannot see that process."""
    if process.host != host_token():
        return None
    if not _leader_pid_is_free_or_ours(process):
        return 0  # the pid now belongs to an unrelated process: its group is not ours
    members = group_members(process)
    if not members:
        return 0
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_running(p) for p in members):
        time.sleep(0.02)
    return len(members)


def _leader_pid_is_free_or_ours(process: ProcessId) -> bool:
    try:
        started = round(psutil.Process(process.pid).create_time() * 100)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    return abs(started - process.started) <= START_TOLERANCE_CENTISECONDS


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
