"""The data directory's size: counted as coreutils' `du` counts it, measured off the event loop, never on a scrape, and
exported with the bot's budgets for the memory and disk alerts."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from trading_ops.bot.collectors import ResourceCollector
from trading_ops.bot.data_dir_size import MAX_SHARE_OF_TIME, DataDirSize, directory_bytes
from trading_ops.bot.instrumentation import Instrumentation

MIB = 1024 * 1024


def du_bytes(path: Path) -> int:
    """What coreutils' du says the tree takes (allocated blocks, hard links once, symlinks not followed)."""
    du = shutil.which("du")
    assert du is not None, "coreutils' du is missing"
    out = subprocess.run([du, "-s", "-B1", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def tree(root: Path) -> Path:
    """A data directory as a bot leaves it: a journal, nested logs, a hard link, a symlink out, a backup catalog."""
    (root / "log" / "old").mkdir(parents=True)
    (root / "journal.db").write_bytes(os.urandom(300_000))
    (root / "log" / "bot.log").write_bytes(b"x" * 70_000)
    (root / "log" / "old" / "bot.log.1").write_bytes(b"y" * 5000)
    os.link(root / "journal.db", root / "journal-link.db")  # counted once
    outside = root.parent / "outside.bin"
    outside.write_bytes(os.urandom(MIB))
    (root / "outside").symlink_to(outside)  # not followed
    (root / "backups").mkdir()
    (root / "backups" / "b1.db").write_bytes(os.urandom(200_000))
    return root


async def poll(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(0.01)


def test_the_size_is_what_du_counts(tmp_path: Path) -> None:
    root = tree(tmp_path / "data")
    assert directory_bytes(root) == du_bytes(root)
    # A backup catalog kept inside is left out: the bot's budget is for what the bot writes.
    assert directory_bytes(root, [root / "backups"]) == du_bytes(root) - du_bytes(root / "backups")
    with pytest.raises(FileNotFoundError):
        directory_bytes(tmp_path / "missing")


async def test_the_walk_runs_off_the_event_loop_and_follows_what_is_written(tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    walked_on: set[int] = set()

    class Recording(DataDirSize):
        def measure(self) -> float:
            walked_on.add(threading.get_ident())
            return super().measure()

    size = Recording(tmp_path, min_interval=0.01)
    size.start()
    try:
        await poll(lambda: size.bytes is not None)
        before = size.bytes or 0
        (tmp_path / "scratch").mkdir()
        (tmp_path / "scratch" / "fill.bin").write_bytes(os.urandom(4 * MIB))
        await poll(lambda: (size.bytes or 0) >= before + 4 * MIB)
        shutil.rmtree(tmp_path / "scratch")
        await poll(lambda: (size.bytes or 0) < before + MIB)
    finally:
        await size.stop()
    assert walked_on and loop_thread not in walked_on


async def test_a_slow_walk_is_repeated_less_often(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pause after a walk is at least the minimum interval and at least 1/MAX_SHARE_OF_TIME times the walk."""
    pauses: list[float] = []
    took = iter([0.001, 0.5, 2.0])
    real_sleep = asyncio.sleep

    class Timed(DataDirSize):
        def measure(self) -> float:
            super().measure()
            return next(took)

    async def record(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            raise asyncio.CancelledError
        await real_sleep(0)

    size = Timed(tmp_path, min_interval=1.0)
    monkeypatch.setattr("trading_ops.bot.data_dir_size.asyncio.sleep", record)
    with pytest.raises(asyncio.CancelledError):
        await size._run()
    assert pauses == [1.0, 0.5 / MAX_SHARE_OF_TIME, 2.0 / MAX_SHARE_OF_TIME]


def resources(tmp_path: Path, size: DataDirSize | None, **budgets: int) -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    errors = Counter("tradingbot_collector_errors", "Errors of a collector.", ["collector"], registry=registry)
    registry.register(ResourceCollector(tmp_path, errors, data_dir_size=size, **budgets))
    return registry, errors


def test_budgets_are_exported_only_when_set(tmp_path: Path) -> None:
    size = DataDirSize(tmp_path)
    registry, _ = resources(tmp_path, size, memory_budget=384 * MIB, data_dir_budget=256 * MIB)
    assert registry.get_sample_value("tradingbot_memory_budget_bytes") == 384 * MIB
    assert registry.get_sample_value("tradingbot_data_dir_budget_bytes") == 256 * MIB
    # Not measured yet (the walk runs once the bot starts): no made-up 0 that reads as an empty directory.
    assert registry.get_sample_value("tradingbot_data_dir_bytes") is None
    size.measure()
    assert registry.get_sample_value("tradingbot_data_dir_bytes") == du_bytes(tmp_path)

    unbudgeted, _ = resources(tmp_path, size)
    text = generate_latest(unbudgeted).decode()
    assert "tradingbot_data_dir_bytes" in text and "budget" not in text  # the alerts judge against the machine


def test_a_data_directory_that_cannot_be_read_is_counted_not_exported(tmp_path: Path) -> None:
    size = DataDirSize(tmp_path / "gone")
    registry, _ = resources(tmp_path, size, data_dir_budget=MIB)
    size.measure()
    assert size.bytes is None and size.error is not None and "FileNotFoundError" in size.error
    text = generate_latest(registry).decode()
    assert "tradingbot_data_dir_bytes " not in text
    assert registry.get_sample_value("tradingbot_collector_errors_total", {"collector": "data_dir"}) == 1
    assert registry.get_sample_value("tradingbot_disk_free_bytes") is not None  # the other probes go on
    (tmp_path / "gone").mkdir()
    size.measure()
    assert size.error is None and registry.get_sample_value("tradingbot_data_dir_bytes") == du_bytes(tmp_path / "gone")


async def test_only_a_data_directory_the_bot_names_is_walked(tmp_path: Path) -> None:
    named = Instrumentation(venue="paper", token="t", registry=CollectorRegistry(), data_dir=tmp_path)
    unnamed = Instrumentation(venue="paper", token="t", registry=CollectorRegistry())
    await named.start("127.0.0.1", 0)
    await unnamed.start("127.0.0.1", 0)
    try:
        await poll(lambda: named.registry.get_sample_value("tradingbot_data_dir_bytes") is not None)
        # The working directory (the default) is no data directory: its filesystem is exported, nothing is walked.
        assert unnamed.data_dir_size is None
        text = generate_latest(unnamed.registry).decode()
        assert "tradingbot_disk_free_bytes " in text and "tradingbot_data_dir_bytes" not in text
    finally:
        await named.stop()
        await unnamed.stop()
