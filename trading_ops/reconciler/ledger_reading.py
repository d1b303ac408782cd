"""A figure /metrics exports from the ledger, read in the background: a scrape never waits on the database for long.

A live replica whose database host died (a PostgreSQL failover, a whole ops host lost) kept serving /metrics only
after its ledger's connection timeout, so its scrapes timed out and TradingOpsReconcilerDown paged for a replica that
never stopped. Now a scrape starts a read in a worker thread (at most one at a time) and waits for it at most
PATIENCE_SECONDS: a database that answers gives the current figure as before; one that does not leaves the last
figure, and the scrapes that follow while that read hangs do not wait at all. A figure older than `stale` (the
database has not answered since) is not exported, as a read that fails was not."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a scrape waits for the read it started (an aggregate query answers in milliseconds).
PATIENCE_SECONDS = 0.5
# A figure newer than this is exported without a new read (0: every scrape reads, as the collectors always did).
REFRESH_SECONDS = 0.0
# Figures older than this are left out: a pending count long since sent would keep a stuck-outbox alert firing.
STALE_SECONDS = 60.0


@dataclass(frozen=True)
class Reading(Generic[T]):
    at: float  # time.monotonic() of the read
    value: T


class BackgroundReading(Generic[T]):
    """The latest result of `read` (a blocking ledger query), read again by a worker thread when a scrape asks for it
    and it is older than `refresh`, one read at a time; a scrape waits for the read it started `patience` seconds at
    most, and not at all for one already under way."""

    def __init__(
        self,
        name: str,
        read: Callable[[], T],
        refresh: float = REFRESH_SECONDS,
        stale: float = STALE_SECONDS,
        patience: float = PATIENCE_SECONDS,
    ) -> None:
        self.name = name
        self._read = read
        self.refresh = refresh
        self.stale = stale
        self.patience = patience
        self.reading: Reading[T] | None = None
        self._lock = threading.Lock()
        self._under_way: threading.Event | None = None
        self._failing = False

    def read(self) -> T | None:
        """Read now (blocking: off the event loop); None when the database does not answer."""
        try:
            value = self._read()
        except Exception as exc:
            if not self._failing:
                log.warning("%s not readable for /metrics: %s", self.name, exc)
            self._failing = True
            return None
        if self._failing:
            log.info("%s readable again for /metrics", self.name)
        self._failing = False
        self.reading = Reading(time.monotonic(), value)
        return value

    def latest(self) -> T | None:
        """The latest figure if it is fresh enough (None: none yet, or stale), after a read when one is due: waited for
        `patience` seconds at most when this call started it, not at all when one was already under way."""
        reading = self.reading
        if reading is None or time.monotonic() - reading.at >= self.refresh:
            done: threading.Event | None = None
            with self._lock:
                if self._under_way is None:
                    done = self._under_way = threading.Event()
            if done is not None:
                threading.Thread(
                    target=self._read_in_background, args=(done,), name=f"metrics-{self.name}", daemon=True
                ).start()
                done.wait(self.patience)
        reading = self.reading
        if reading is None or time.monotonic() - reading.at > self.stale:
            return None
        return reading.value

    def _read_in_background(self, done: threading.Event) -> None:
        try:
            self.read()
        finally:
            with self._lock:
                self._under_way = None
            done.set()
