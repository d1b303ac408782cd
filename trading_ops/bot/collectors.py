"""Process and host collectors of a bot: disk, data directory, file descriptors, threads, memory, budgets, lag."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from trading_ops.bot.data_dir_size import DataDirSize
from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)

PREFIX = "tradingbot"
# The process's own cgroup (a systemd unit's: /system.slice/NAME.service; a container's with its own cgroup namespace:
# /) under the cgroup v2 tree or the cgroup v1 memory controller's; its limit, or a parent's (a slice's), applies.
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_V2_ROOT = Path("/sys/fs/cgroup")
CGROUP_V1_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
# cgroup v1 reports "no limit" as a number near 2**63.
CGROUP_V1_UNLIMITED = 1 << 60
# The lag gauge reports the worst sample over this window, so a scrape every 5 s sees every stall.
LAG_WINDOW_SECONDS = 10.0


def register_process_collectors(registry: CollectorRegistry | None) -> None:
    """prometheus_client's process and GC collectors, on `registry` (already on the default one)."""
    if registry is None or registry is REGISTRY:
        return
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)


def memory_limit_bytes(configured: int = 0) -> int:
    """The memory the process may use: configured, else the cgroup limit, else the machine's memory."""
    if configured > 0:
        return configured
    limit = cgroup_memory_limit()
    return limit if limit is not None else int(psutil.virtual_memory().total)


def cgroup_memory_limit(
    proc_cgroup: Path = PROC_SELF_CGROUP, v2_root: Path = CGROUP_V2_ROOT, v1_root: Path = CGROUP_V1_MEMORY_ROOT
) -> int | None:
    """The lowest memory limit of the process's cgroup and its parents (a unit's MemoryMax, its slice's), cgroup v2
    (memory.max) or v1 (the memory controller's memory.limit_in_bytes); None when nothing limits it."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    v2, v1 = "/", "/"
    for line in lines:
        _id, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    limits = [int(text) for text in _read_up(v2_root, v2, "memory.max") if text != "max" and text.isdigit()]
    limits += [
        value
        for value in (int(text) for text in _read_up(v1_root, v1, "memory.limit_in_bytes") if text.isdigit())
        if value < CGROUP_V1_UNLIMITED
    ]
    return min(limits) if limits else None


def _read_up(root: Path, cgroup: str, name: str) -> list[str]:
    """`name` in the cgroup's directory under `root` and in each parent up to `root` (those that exist and read)."""
    parts = [p for p in cgroup.split("/") if p and p != "."]
    if ".." in parts:  # a cgroup outside this namespace's view: only the root's file is ours to read
        parts = []
    found = []
    for depth in range(len(parts), -1, -1):
        with contextlib.suppress(OSError):
            found.append((root.joinpath(*parts[:depth]) / name).read_text().strip())
    return found


class EventLoopLagMonitor:
    """Measures how late the event loop wakes a sleeping task; a blocked loop shows as lag."""

    def __init__(self, interval: float = 0.25, window: float = LAG_WINDOW_SECONDS) -> None:
        self.interval = interval
        self.samples: collections.deque[float] = collections.deque(maxlen=max(1, int(window / interval)))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None

    async def _run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, time.monotonic() - start - self.interval))

    def worst(self) -> float:
        return max(self.samples, default=0.0)


class ResourceCollector(Collector):
    """Yields fresh families on every scrape; a failing probe is counted and skipped, never fatal."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        errors: Counter,
        lag: EventLoopLagMonitor | None = None,
        memory_limit: int = 0,
        *,
        data_dir_size: DataDirSize | None = None,
        memory_budget: int = 0,
        data_dir_budget: int = 0,
    ) -> None:
        """`data_dir_size` is measured elsewhere (off the event loop); the collector only reads its latest value.
        A budget of 0 is not set and not exported: the alerts then judge against the machine."""
        self._data_dir = Path(data_dir)
        self._errors = errors
        self._lag = lag
        self._memory_limit = memory_limit
        self._data_dir_size = data_dir_size
        self._memory_budget = memory_budget
        self._data_dir_budget = data_dir_budget
        self._process = psutil.Process()
        for name, _ in self._probes():  # each collector's errors exported from 0: "no error yet", not "no data"
            errors.labels(name)

    def _probes(self) -> tuple[tuple[str, Callable[[], Iterator[GaugeMetricFamily]]], ...]:
        return (
            ("disk", self._disk),
            ("data_dir", self._data_dir_families),
            ("process", self._process_families),
            ("memory", self._memory),
            ("event_loop", self._event_loop),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, probe in self._probes():
            try:
                families = list(probe())
            except Exception:
                log.exception("collector %s failed", name)
                self._errors.labels(name).inc()
                continue
            yield from families

    def _disk(self) -> Iterator[GaugeMetricFamily]:
        usage = psutil.disk_usage(str(self._data_dir))
        yield GaugeMetricFamily(
            f"{PREFIX}_disk_free_bytes", "Free bytes on the filesystem of the bot's data directory.", usage.free
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_disk_total_bytes", "Size in bytes of the filesystem of the bot's data directory.", usage.total
        )

    def _data_dir_families(self) -> Iterator[GaugeMetricFamily]:
        if self._data_dir_budget > 0:
            yield GaugeMetricFamily(
                f"{PREFIX}_data_dir_budget_bytes",
                "Disk space the bot's data directory may take (bot.resources.data_dir_budget_bytes).",
                self._data_dir_budget,
            )
        size = self._data_dir_size
        if size is None:
            return
        if size.error is not None:
            raise OSError(size.error)
        if size.bytes is not None:  # None: not measured yet (the first walk runs at start)
            yield GaugeMetricFamily(
                f"{PREFIX}_data_dir_bytes",
                "Disk space taken by the bot's data directory and everything under it as du counts it (a backup "
                "catalog kept there excepted).",
                size.bytes,
            )

    def _process_families(self) -> Iterator[GaugeMetricFamily]:
        with self._process.oneshot():
            fds = self._process.num_fds()
            threads = self._process.num_threads()
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        yield GaugeMetricFamily(f"{PREFIX}_process_open_fds", "Open file descriptors of the bot process.", fds)
        yield GaugeMetricFamily(
            f"{PREFIX}_process_max_fds", "Soft limit on open file descriptors of the bot process.", soft
        )
        yield GaugeMetricFamily(f"{PREFIX}_process_threads", "Threads of the bot process.", threads)

    def _memory(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            f"{PREFIX}_memory_limit_bytes",
            "Memory the bot may use: the configured limit, the cgroup limit, or the machine's memory.",
            memory_limit_bytes(self._memory_limit),
        )
        if self._memory_budget > 0:
            yield GaugeMetricFamily(
                f"{PREFIX}_memory_budget_bytes",
                "Resident memory the bot should stay within (bot.resources.memory_budget_bytes).",
                self._memory_budget,
            )

    def _event_loop(self) -> Iterator[GaugeMetricFamily]:
        if self._lag is None:
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_event_loop_lag_seconds",
            "Worst delay of the asyncio event loop in waking a task over the last 10 seconds.",
            self._lag.worst(),
        )
