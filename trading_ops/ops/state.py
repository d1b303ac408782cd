"""The persisted record of a scheduled operation (last success, counters): one JSON file, updated under a lock.

Backups and upkeep run from the CLI and from the reconciler's scheduler, in different processes; each run adds to
this record, and the metrics collectors read it on every scrape, so whichever process serves /metrics exports the
truth and a restart forgets nothing."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class OpsState:
    """A JSON object in `path`; `update` changes it atomically (flock on `<path>.lock`, write, fsync, rename)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any]:
        """The record, or {} when there is none yet (or it cannot be read: logged, never raised)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply `change` to the record in place and store it; returns the new record."""
        with self._locked():
            data = self.read()
            change(data)
            write_json_atomic(self.path, data)
            return data


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` so a reader sees the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def add_count(data: dict[str, Any], key: str, amount: float = 1) -> None:
    """Add to a counter of the record (counters only grow: they back Prometheus counters)."""
    data[key] = float(data.get(key, 0)) + amount
