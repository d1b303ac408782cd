"""The disk space the bot's data directory takes, measured in a worker thread at a bounded rate, never on a scrape."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)

# The directory is walked at most once a second, so a scrape every second (the fast profile) sees a cleanup or a
# burst of writes within about two seconds ...
MIN_INTERVAL_SECONDS = 1.0
# ... and never for more than 5 % of the time: a directory that takes 0.2 s to walk is measured every 4 s.
MAX_SHARE_OF_TIME = 0.05
# st_blocks counts 512-byte units whatever the filesystem's block size (POSIX).
STAT_BLOCK_BYTES = 512


def directory_bytes(root: Path, exclude: Iterable[Path] = ()) -> int:
    """Bytes allocated on disk to `root` and everything under it, as `du -s` counts them: a hard-linked file once,
    symbolic links not followed, entries deleted while the walk runs skipped, the directories in `exclude` left
    out. OSError when `root` cannot be read."""
    root = root.resolve()
    skip = {str(path.resolve()) for path in exclude}
    total = os.stat(root, follow_symlinks=False).st_blocks * STAT_BLOCK_BYTES
    seen: set[tuple[int, int]] = set()
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        try:
            entries = os.scandir(directory)
        except FileNotFoundError:
            if directory == str(root):
                raise
            continue  # removed since it was listed (a cleanup running)
        with entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if entry.path in skip:
                        continue
                    pending.append(entry.path)
                elif info.st_nlink > 1:
                    if (info.st_dev, info.st_ino) in seen:
                        continue
                    seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * STAT_BLOCK_BYTES
    return total


class DataDirSize:
    """The latest size of a directory, refreshed by a task that walks it in a worker thread: at most every
    MIN_INTERVAL_SECONDS, and less often when a walk is slow, so its cost stays under MAX_SHARE_OF_TIME whatever
    the directory holds. `bytes` is None until the first walk, and again while walks fail (`error` says why).
    `exclude`: directories inside it that are not the bot's to budget (a backup catalog kept there)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        exclude: Iterable[str | os.PathLike[str]] = (),
        min_interval: float = MIN_INTERVAL_SECONDS,
        share: float = MAX_SHARE_OF_TIME,
    ) -> None:
        self.path = Path(path)
        self.exclude = [Path(p) for p in exclude]
        self.min_interval = min_interval
        self.share = share
        self.bytes: int | None = None
        self.error: str | None = None
        self.walks = 0
        self._task: asyncio.Task[None] | None = None

    def measure(self) -> float:
        """Walk the directory now (blocking: call it off the event loop); returns how long the walk took."""
        started = time.monotonic()
        try:
            size = directory_bytes(self.path, self.exclude)
        except OSError as exc:
            if self.error is None:
                log.error("cannot measure the data directory %s: %s", self.path, exc)
            self.bytes, self.error = None, f"{type(exc).__name__}: {exc}"
        else:
            if self.error is not None:
                log.info("the data directory %s can be measured again", self.path)
            self.bytes, self.error = size, None
        self.walks += 1
        return time.monotonic() - started

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="data-dir-size")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None

    async def _run(self) -> None:
        while True:
            took = await asyncio.to_thread(self.measure)
            await asyncio.sleep(max(self.min_interval, took / self.share))
