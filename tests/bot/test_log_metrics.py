"""The bot's log as the log_size and log_rotation criteria read it: a real paper bot logging to its own file
(bot.log_file), rotated at a small size; and the same bot logging to stderr, rotated by nobody, by Docker's driver
(bot.log_rotated_by) or by the journal ($JOURNAL_STREAM naming stderr)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from paper_helpers import TOKEN, fast_config
from prometheus_client import CollectorRegistry

from trading_ops import logsetup
from trading_ops.paper.bot import PaperBot


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """The bot's set-up replaces the root logger's handlers: pytest's are put back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    output = logsetup.LogOutput(**vars(logsetup.OUTPUT))
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        vars(logsetup.OUTPUT).update(vars(output))


def sample(bot: PaperBot, name: str) -> float | None:
    return bot.inst.registry.get_sample_value(name)


def make_bot(tmp_path: Path, **bot: object) -> PaperBot:
    config = fast_config(tmp_path)
    for key, value in bot.items():
        setattr(config.bot, key, value)
    return PaperBot(config, token=TOKEN, registry=CollectorRegistry())


def close(bot: PaperBot) -> None:
    bot.instance_lock.release()
    bot.engine.dispose()


def test_a_file_log_is_rotated_at_its_size_and_exported(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "bot.log"
    bot = make_bot(tmp_path, log_file=str(path), log_file_max_bytes=2000, log_file_backups=2)
    try:
        log = logging.getLogger("trading_ops.test")
        for i in range(100):
            log.warning("line %03d of the bot's log, long enough to fill the file in a few dozen lines", i)
        written = sample(bot, "tradingbot_log_written_bytes_total")
        assert written is not None and written >= 100 * 80
        size = sample(bot, "tradingbot_log_file_bytes")
        # The file rotated (two older files kept, no third) and the current one stays under its size.
        assert size == os.path.getsize(path) and 0 < size <= 2000
        assert sorted(p.name for p in path.parent.iterdir()) == ["bot.log", "bot.log.1", "bot.log.2"]
        assert sample(bot, "tradingbot_log_rotating") == 1
        assert "line 099" in path.read_text()
    finally:
        close(bot)


def test_a_file_log_without_a_size_limit_does_not_rotate(tmp_path: Path) -> None:
    bot = make_bot(tmp_path, log_file=str(tmp_path / "bot.log"), log_file_max_bytes=0)
    try:
        assert sample(bot, "tradingbot_log_rotating") == 0
    finally:
        close(bot)


@pytest.mark.parametrize(("rotated_by", "journal", "rotating"), [("", False, 0), ("docker", False, 1), ("", True, 1)])
def test_a_log_on_stderr_rotates_when_the_journal_or_docker_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rotated_by: str, journal: bool, rotating: int
) -> None:
    if journal:  # systemd names the journal's stream in $JOURNAL_STREAM: device and inode of the bot's stderr
        stat = os.fstat(sys.stderr.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logsetup.setup("INFO", "text")  # as `trading-ops paper-bot` does before the bot starts
    bot = make_bot(tmp_path, log_rotated_by=rotated_by)
    try:
        before = sample(bot, "tradingbot_log_written_bytes_total") or 0
        logging.getLogger("trading_ops.test").warning("one line on stderr")
        after = sample(bot, "tradingbot_log_written_bytes_total")
        assert after is not None and after - before >= len("one line on stderr")
        assert sample(bot, "tradingbot_log_file_bytes") is None
        assert sample(bot, "tradingbot_log_rotating") == rotating
    finally:
        close(bot)
