"""The fault model the paper venue and the Kraken gateway share: what is broken, until when, or for how many calls."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

UNTIL_HEALED = math.inf  # the deadline of a fault that lasts until the client heals it, or until cleared


class FaultModel:
    """The faults in force, each under a name and an optional subject (a symbol, an account query).

    A timed fault lasts until a deadline on `clock` (`UNTIL_HEALED`: until whoever reads it ends it, or `clear`); a
    counted fault breaks the next N calls that `take` it. Either may carry a detail (a reject reason, a lost reply's
    mode). The model only keeps time and counts: what a fault breaks is decided where it is read (PaperVenue's
    requests, the gateway's handlers). The deadline stays stored after it passes, until `end` or `clear`, so a reader
    can tell a fault that ran out from one that never was (the gateway logs an outage's end).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[tuple[str, str], float] = {}
        self._counts: dict[str, int] = {}
        self._details: dict[tuple[str, str], Any] = {}

    def now(self) -> float:
        return self._clock()

    # -- timed faults -----------------------------------------------------------------------------------------
    def start(self, name: str, seconds: float | None = None, *, subject: str = "", detail: Any = None) -> float:
        """Break `name` (for `subject`) for `seconds` (None: until healed or cleared); returns the deadline."""
        until = UNTIL_HEALED if seconds is None else self._clock() + seconds
        self._until[(name, subject)] = until
        if detail is not None:
            self._details[(name, subject)] = detail
        return until

    def until(self, name: str, subject: str = "") -> float:
        """The stored deadline (0.0: never started, or ended), even one that has passed."""
        return self._until.get((name, subject), 0.0)

    def active(self, name: str, subject: str = "") -> bool:
        until = self._until.get((name, subject))
        return until is not None and (until == UNTIL_HEALED or self._clock() < until)

    def end(self, name: str, subject: str = "") -> bool:
        """End a timed fault; True if one was stored (in force or run out)."""
        self._details.pop((name, subject), None)
        return self._until.pop((name, subject), None) is not None

    def subjects(self, name: str, *, active_only: bool = False) -> list[str]:
        """The subjects `name` is stored for (only those still in force with `active_only`), sorted."""
        now = self._clock()
        return sorted(s for (n, s), until in self._until.items() if n == name and (not active_only or now < until))

    def detail(self, name: str, subject: str = "", default: Any = None) -> Any:
        return self._details.get((name, subject), default)

    def remaining(self, name: str, subject: str = "") -> float | None:
        """Seconds left (inf until healed), or None when not in force."""
        until = self._until.get((name, subject), 0.0)
        now = self._clock()
        return None if until <= now else until - now

    # -- counted faults ---------------------------------------------------------------------------------------
    def add(self, name: str, count: int, *, detail: Any = None) -> None:
        """Break the next `count` calls that take `name` (on top of those still owed)."""
        self._counts[name] = self._counts.get(name, 0) + count
        if detail is not None:
            self._details[(name, "")] = detail

    def count(self, name: str) -> int:
        return self._counts.get(name, 0)

    def take(self, name: str) -> bool:
        """True, spending one, if a call of `name` is owed a failure."""
        if self._counts.get(name, 0) <= 0:
            return False
        self._counts[name] -= 1
        return True

    def clear(self) -> None:
        """Nothing is broken any more."""
        self._until.clear()
        self._counts.clear()
        self._details.clear()
