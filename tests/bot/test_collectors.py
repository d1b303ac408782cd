"""Process and host collectors: event-loop lag of a blocked loop, disk, file descriptors, threads, memory limit,
and a failing probe that is counted and skipped instead of failing the scrape."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from trading_ops.bot.collectors import (
    EventLoopLagMonitor,
    ResourceCollector,
    cgroup_memory_limit,
    register_process_collectors,
)
from trading_ops.bot.instrumentation import Instrumentation

# The loop is blocked for BLOCK_SECONDS; the lag must show at least LAG_SEEN_SECONDS of it. The monitor wakes
# every few milliseconds, so anything it reports above LAG_SEEN_SECONDS can only come from the block.
BLOCK_SECONDS = 0.5
LAG_SEEN_SECONDS = 0.4


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def collector(registry: CollectorRegistry, data_dir: Path, memory_limit: int = 0) -> Counter:
    errors = Counter("tradingbot_collector_errors", "Errors of a collector.", ["collector"], registry=registry)
    registry.register(ResourceCollector(data_dir, errors, EventLoopLagMonitor(), memory_limit))
    return errors


async def poll(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


async def test_a_blocked_event_loop_shows_as_lag(registry: CollectorRegistry, tmp_path: Path) -> None:
    inst = Instrumentation(venue="paper", token="t", registry=registry, data_dir=tmp_path, lag_interval=0.01)
    inst.lag.start()
    try:
        await poll(lambda: len(inst.lag.samples) >= 5)
        before = sample(registry, "tradingbot_event_loop_lag_seconds")
        assert before is not None and before < LAG_SEEN_SECONDS
        time.sleep(BLOCK_SECONDS)  # deliberately block the event loop, as a CPU-bound or blocking call would
        await poll(lambda: (sample(registry, "tradingbot_event_loop_lag_seconds") or 0.0) >= LAG_SEEN_SECONDS)
    finally:
        await inst.stop()


async def test_lag_monitor_stops_cleanly() -> None:
    monitor = EventLoopLagMonitor(interval=0.01)
    monitor.start()
    task = monitor._task
    await poll(lambda: len(monitor.samples) >= 2)
    await monitor.stop()
    assert task is not None and task.done() and monitor._task is None  # no task left running


def test_disk_values_are_those_of_the_data_directory(registry: CollectorRegistry, tmp_path: Path) -> None:
    collector(registry, tmp_path)
    usage = psutil.disk_usage(str(tmp_path))
    total = sample(registry, "tradingbot_disk_total_bytes")
    free = sample(registry, "tradingbot_disk_free_bytes")
    assert total == usage.total
    assert free is not None and 0 < free <= total


def test_file_descriptors_threads_and_limits_are_exported(registry: CollectorRegistry, tmp_path: Path) -> None:
    collector(registry, tmp_path, memory_limit=123_456_789)
    before = sample(registry, "tradingbot_process_open_fds")
    assert before is not None
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=True)
    with contextlib.ExitStack() as stack:
        for i in range(20):
            stack.enter_context((tmp_path / f"f{i}").open("w"))
        worker.start()
        try:
            opened = sample(registry, "tradingbot_process_open_fds")
            live_threads = threading.active_count()
            threads = sample(registry, "tradingbot_process_threads")
        finally:
            release.set()
            worker.join()
    assert opened is not None and opened >= before + 20
    # Every Python thread is an OS thread; other threads of the test process may come and go meanwhile.
    assert threads is not None and threads >= live_threads >= 2
    assert sample(registry, "tradingbot_process_max_fds") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert sample(registry, "tradingbot_memory_limit_bytes") == 123_456_789


def test_a_failing_probe_is_counted_and_the_scrape_goes_on(
    registry: CollectorRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collector(registry, tmp_path / "missing")  # the data directory does not exist: the disk probe fails
    caplog.set_level(logging.ERROR, logger="trading_ops.bot.collectors")
    text = generate_latest(registry).decode()
    assert "tradingbot_disk_free_bytes" not in text
    assert "tradingbot_process_open_fds" in text and "tradingbot_event_loop_lag_seconds" in text
    assert sample(registry, "tradingbot_collector_errors_total", collector="disk") == 1
    generate_latest(registry)
    assert sample(registry, "tradingbot_collector_errors_total", collector="disk") == 2
    assert sample(registry, "tradingbot_collector_errors_total", collector="process") == 0  # exported from 0
    assert any("collector disk failed" in r.getMessage() for r in caplog.records)


def test_process_and_gc_collectors_on_a_bot_registry(registry: CollectorRegistry) -> None:
    register_process_collectors(registry)
    assert (sample(registry, "process_cpu_seconds_total") or 0) > 0
    assert sample(registry, "process_open_fds") is not None
    assert sample(registry, "python_gc_collections_total", generation="0") is not None


def _tree(base: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text + "\n")
    return base


@pytest.mark.parametrize(
    ("proc_cgroup", "v2", "v1", "limit"),
    [
        # A systemd unit on cgroup v2: its MemoryMax, not the root's "max" (what the bot read before it looked up
        # its own cgroup: every systemd host then exported the machine's memory as the limit).
        (
            "0::/system.slice/bot.service",
            {"memory.max": "max", "system.slice/bot.service/memory.max": "536870912"},
            {},
            512,
        ),
        # A slice's lower limit applies to the unit in it.
        (
            "0::/system.slice/bot.service",
            {"system.slice/memory.max": "268435456", "system.slice/bot.service/memory.max": "536870912"},
            {},
            256,
        ),
        # A systemd unit on cgroup v1 (the memory controller's own hierarchy; the unified one holds no limits).
        (
            "4:memory:/system.slice/bot.service\n0::/system.slice/bot.service",
            {},
            {"memory.limit_in_bytes": str(2**63 - 4096), "system.slice/bot.service/memory.limit_in_bytes": "536870912"},
            512,
        ),
        # A container with its own cgroup namespace (Docker): its cgroup is the root of what it sees.
        ("0::/", {"memory.max": "402653184"}, {}, 384),
        # Outside this namespace's view (v1 without a cgroup namespace): the root's file, which is the container's.
        ("4:memory:/../docker/abc", {}, {"memory.limit_in_bytes": "134217728"}, 128),
        ("0::/user.slice", {"memory.max": "max", "user.slice/memory.max": "max"}, {}, None),
    ],
    ids=["v2-unit", "v2-slice", "v1-unit", "v2-namespace", "v1-outside", "unlimited"],
)
def test_the_memory_limit_is_that_of_the_process_cgroup(
    tmp_path: Path, proc_cgroup: str, v2: dict[str, str], v1: dict[str, str], limit: int | None
) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text(proc_cgroup + "\n")
    v2_root = _tree(tmp_path / "v2", v2)
    v1_root = _tree(tmp_path / "v1", v1)
    expected = None if limit is None else limit * 1024 * 1024
    assert cgroup_memory_limit(proc, v2_root, v1_root) == expected


def test_the_loop_has_a_heartbeat_timeout_from_its_start_not_from_the_process_start(
    registry: CollectorRegistry, tmp_path: Path
) -> None:
    """A bot whose start took longer than the heartbeat timeout (it waited for a crashed run's heartbeat to age, as
    under systemd after every crash) is not reported stalled, and so keeps its watchdog pings, before its loop ran."""
    inst = Instrumentation(venue="paper", token="t", registry=registry, data_dir=tmp_path, heartbeat_timeout=0.2)
    time.sleep(0.3)  # the start: crash wait, startup reconciliation
    assert inst.loop_health()[0] is False  # no iteration and past the timeout: stalled
    inst.loop_starting()
    healthy, detail = inst.loop_health()
    assert healthy and detail["status"] == "starting"
    time.sleep(0.3)
    healthy, detail = inst.loop_health()
    assert not healthy and detail["status"] == "no loop iteration yet"
