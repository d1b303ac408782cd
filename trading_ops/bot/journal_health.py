"""Whether the bot's journal can be written now: every journal call reports here, and the metrics say why not."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from trading_ops.bot.metrics import PREFIX

log = logging.getLogger(__name__)

# Why the journal cannot be written (the `reason` of tradingbot_journal_failing): its filesystem or the database's
# disk is full; the database cannot be reached (stopped, restarting, the network); any other database error.
DISK_FULL = "disk_full"
DATABASE_UNAVAILABLE = "database_unavailable"
WRITE_ERROR = "write_error"
REASONS = (DISK_FULL, DATABASE_UNAVAILABLE, WRITE_ERROR)
# SQLite's words for a full disk; PostgreSQL's SQLSTATE class 53 (insufficient resources: 53100 disk_full).
DISK_FULL_WORDS = ("database or disk is full", "no space left on device")
DISK_FULL_SQLSTATE = "53100"
# While writes keep failing, one line in this many is logged (the first always).
LOG_EVERY_FAILURES = 100


def is_journal_failure(exc: BaseException) -> bool:
    """A failure of the database or its storage; not a constraint the data broke (a duplicate is the caller's to
    handle) nor a bug in the query (raised as they are, counted nowhere here)."""
    if isinstance(exc, IntegrityError):
        return False
    return isinstance(exc, DBAPIError | DisconnectionError | PoolTimeout | OSError)


def failure_reason(exc: BaseException) -> str:
    """The bounded reason a journal call failed for (one of REASONS)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DISK_FULL
    text = str(exc).lower()
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    if any(word in text for word in DISK_FULL_WORDS) or getattr(orig, "sqlstate", None) == DISK_FULL_SQLSTATE:
        return DISK_FULL
    if isinstance(exc, DBAPIError) and (exc.connection_invalidated or type(orig).__name__ == "OperationalError"):
        # psycopg: connection refused, server closed the connection, admin shutdown; SQLite: the file is gone.
        return DATABASE_UNAVAILABLE
    return WRITE_ERROR


class JournalHealth:
    """Whether the journal can be written: failing from the first journal call that fails on the database, writable
    again at the first write that lands. A read that works says nothing (a full disk still serves reads).

    Listeners (`add_listener`) are called on the event loop at each change with the reason (None: writable again);
    `failing_for()` is how long it has been failing (what /healthz compares with
    `bot.journal_failure_timeout_seconds`).

    With `settle`, the metric and the clock of `failing_for()` stay as they were when a write lands again, until
    `settled()` (the runtime calls it once a reconciliation after the journal's return passed). A disk that is full
    flaps: a write that fits in space the database already holds lands, the next one that needs more fails; the alert
    must not start its `for:` over at every write that happened to fit.
    """

    def __init__(
        self,
        *,
        venue: str,
        registry: CollectorRegistry | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        settle: bool = False,
    ) -> None:
        self.reason: str | None = None  # None while writable
        self.settle = settle
        self.error = ""
        self.failures = 0  # failed calls in a row
        self._since: float | None = None
        self._last_write: float | None = None
        self._monotonic = monotonic
        self._listeners: list[Callable[[str | None], None]] = []
        failing = Gauge(
            f"{PREFIX}_journal_failing",
            "1 while the bot's journal cannot be written, for the reason it cannot (disk_full, database_unavailable, "
            "write_error): the bot places no order until it can and a reconciliation has passed.",
            ["venue", "reason"],
            registry=registry,
        )
        self._failing = {reason: failing.labels(venue, reason) for reason in REASONS}
        self._write_failures = Counter(
            f"{PREFIX}_journal_write_failures",
            "Journal calls (orders, fills, heartbeat, reconciliation) that failed on the database or its storage.",
            ["venue"],
            registry=registry,
        ).labels(venue)

    @property
    def failing(self) -> bool:
        return self.reason is not None

    def add_listener(self, listener: Callable[[str | None], None]) -> None:
        self._listeners.append(listener)

    def failing_for(self) -> float:
        """Seconds the journal has been failing (0 while writable; with `settle`, until settled)."""
        return 0.0 if self._since is None else self._monotonic() - self._since

    def last_write_age(self) -> float | None:
        """Seconds since the last write landed (None before the first)."""
        return None if self._last_write is None else self._monotonic() - self._last_write

    def failed(self, exc: BaseException) -> None:
        reason = failure_reason(exc)
        self.failures += 1
        self._write_failures.inc()
        self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if self.failures == 1 or self.failures % LOG_EVERY_FAILURES == 0:
            log.error("journal write failed (%s, %d in a row): %s", reason, self.failures, self.error)
        changed = self.reason is None
        if self._since is None:
            self._since = self._monotonic()
        if self.reason != reason:
            for name, child in self._failing.items():
                child.set(1 if name == reason else 0)
            self.reason = reason
        if changed:
            log.error("the journal cannot be written (%s): no order until it can and a reconciliation passed", reason)
            self._notify(reason)

    def wrote(self) -> None:
        self._last_write = self._monotonic()
        if self.reason is None:
            return
        log.warning(
            "the journal can be written again after %.1f s (%s, %d failed calls)",
            self.failing_for(),
            self.reason,
            self.failures,
        )
        self.reason = None
        self.failures = 0
        if not self.settle:
            self.settled()
        self._notify(None)

    def settled(self) -> None:
        """Writable and proven so (see the class): the metric and the clock of failing_for() clear."""
        if self.reason is not None:
            return
        self._since = None
        for child in self._failing.values():
            child.set(0)

    def _notify(self, reason: str | None) -> None:
        for listener in self._listeners:
            try:
                listener(reason)
            except Exception:
                log.exception("a journal health listener failed")
