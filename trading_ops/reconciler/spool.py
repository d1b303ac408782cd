"""A local, durable spool of step outcomes: written before the ledger, replayed into it at start-up before a sweep."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)
PREFIX = "step-"
SUFFIX = ".json"
# Appended to a spooled outcome's file the ledger refused for another reason than being unreachable (kept for a human).
REJECTED = ".rejected"


class OutcomeWriter(Protocol):
    def finish_step(self, step_id: int, outcome: str, output: str, finished_at: datetime | None = None) -> str: ...


@dataclass(frozen=True)
class SpooledOutcome:
    step_id: int
    outcome: str
    output: str
    finished_at: datetime
    # The step's episode, to page about when the ledger lost the step (0: a file written before it was kept).
    episode_id: int = 0


class OutcomeSpool:
    """One file per step outcome the ledger has not taken yet (`step-<id>.json`, written whole: a temporary file,
    fsync, rename, fsync of the folder). A kill -9 after a step finished leaves its outcome here; the next start of
    the reconciler writes it to the ledger before its sweep can call the step's outcome unknown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Steps whose outcome a run of this process is writing itself: a replay leaves them to it (written twice, the
        # second write would race the run's own, and a failure of either would be the other's to explain).
        self.held: set[int] = set()
        # Outcomes a replay found no step for (`missing`), for the engine to report: the ledger went back in time.
        self.missing: list[SpooledOutcome] = []
        # Steps whose outcome this process spooled and has not removed: none of them was acknowledged by the ledger
        # (a run removes its file once the ledger took the outcome), so a replay that finds such a step gone has found
        # a lost step row, which this process remembers and its check reports, not a lost outcome. Only a file an
        # earlier life left may hold an outcome the ledger took and then lost (that life died before removing it).
        self.ours: set[int] = set()

    def hold(self, step_id: int) -> None:
        """The run writing this step's outcome is alive here: replays skip it until `release`."""
        self.held.add(step_id)

    def release(self, step_id: int) -> None:
        """The run is done with this step's outcome: written and removed, or left here for the next replay."""
        self.held.discard(step_id)

    def put(self, item: SpooledOutcome) -> None:
        self.ours.add(item.step_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(item.step_id)
        tmp = path.with_name(f".{path.name}.tmp")
        data = {
            "step_id": item.step_id,
            "outcome": item.outcome,
            "output": item.output,
            "finished_at": item.finished_at.isoformat(),
            "episode_id": item.episode_id,
        }
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._sync_directory()

    def remove(self, step_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(step_id).unlink()
        self.ours.discard(step_id)

    def pending(self) -> list[SpooledOutcome]:
        """The spooled outcomes, oldest step first (a file that cannot be read is logged and left for a human)."""
        if not self.directory.is_dir():
            return []
        out = []
        for path in sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                out.append(
                    SpooledOutcome(
                        int(data["step_id"]),
                        str(data["outcome"]),
                        str(data["output"]),
                        datetime.fromisoformat(data["finished_at"]),
                        int(data.get("episode_id", 0)),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("spooled step outcome %s cannot be read (left in place): %s", path, exc)
        return sorted(out, key=lambda item: item.step_id)

    def replay(self, ledger: OutcomeWriter, transient: Callable[[Exception], bool]) -> int:
        """Write every spooled outcome to the ledger, removing each once written; how many were written. An error
        `transient` says will pass (the database unreachable) stops the replay, raised: what is left stays spooled
        for the next try. Any other error is that outcome's own: it is logged and its file set aside (REJECTED), so
        that one bad file never holds back the others, nor the sweeps that wait for them. Outcomes a live run of this
        process is writing (`held`) are its own to write."""
        written = 0
        for item in self.pending():
            if item.step_id in self.held:
                continue
            try:
                taken = ledger.finish_step(item.step_id, item.outcome, item.output, item.finished_at)
            except Exception as exc:
                if transient(exc):
                    raise
                log.exception("step %s: its spooled outcome cannot be written: set aside", item.step_id)
                path = self._path(item.step_id)
                with contextlib.suppress(FileNotFoundError):
                    path.rename(path.with_name(path.name + REJECTED))
                self.ours.discard(item.step_id)
                continue
            # An outcome this process spooled was never in the ledger: its step's row is the write that was lost.
            earlier_life = item.step_id not in self.ours
            self.remove(item.step_id)
            # Another replica took the run over and found the step unknown; or the step is gone.
            if taken == "missing" and earlier_life:
                self.missing.append(item)
            if taken in ("fenced", "missing"):
                if taken == "fenced":
                    why = "its run was taken over meanwhile (the step is unknown)"
                elif earlier_life:
                    why = "no such step"
                else:
                    why = "no such step (its row is gone: the check of this replica's writes reports it)"
                log.warning("step %s: spooled outcome %s not written: %s", item.step_id, item.outcome, why)
                continue
            written += 1
            log.warning("step %s: outcome %s written from the spool into the ledger", item.step_id, item.outcome)
        return written

    def _path(self, step_id: int) -> Path:
        return self.directory / f"{PREFIX}{step_id}{SUFFIX}"

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
