"""Whether freqtrade can write its database (its trades, orders, wallet history: its journal), as its log and its loop
tell it: the library's `journal_failing{venue,reason}` and `journal_write_failures_total{venue}`.

freqtrade's REST API says nothing of a database that refuses writes; its log quotes each failure (SQLAlchemy names the
driver's error: `(sqlite3.OperationalError) database or disk is full`). The journal is failing from the first such
record, for its reason (the latest failure's). It is writable again when freqtrade shows a write that landed after the
failure, or when its trading loop ran on for QUIET_SECONDS after the last failure without a new one:

- a write that landed: a trade the sidecar had not seen before, a trade that closed (/profit's count grew), or an
  order whose filled amount grew, each first seen after the failure: the API reads them from the database, so they
  were committed;
- a quiet loop: freqtrade's loop writes whatever changed at each iteration (an open trade's rates, orders, fills), so a
  database that still refuses writes shows again within a few iterations. QUIET_SECONDS is longer than the alert's
  `for:` (20 s), so a full disk that takes a write that fits now and then does not restart the alert each time, and a
  freqtrade with nothing to write for that long has nothing it cannot remember.

A freqtrade that is down, stopped or whose loop does not turn shows neither: the journal stays failing (freqtrade
exits on a database error its loop does not catch; its restart must prove the database writable again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from trading_ops.bot.journal_health import REASONS
from trading_ops.integrations.freqtrade.logs import DatabaseError

log = logging.getLogger(__name__)

# Seconds of freqtrade's own loop (its /health last_process) after the last database failure without a new one.
QUIET_SECONDS = 60.0


@dataclass
class FreqtradeJournal:
    """The journal state of one freqtrade. Failures count what happened while the sidecar watched: the log history
    it finds at its first poll sets the state but is not counted (as VenueLink)."""

    reason: str | None = None  # None while writable
    error: str = ""
    failed_at: float = 0.0  # the latest failure (freqtrade's Unix time)
    failures: float = 0.0
    _orders: dict[tuple[Any, Any], float] = field(default_factory=dict)  # filled amount per (trade, order id)
    _trades: set[Any] = field(default_factory=set)

    @property
    def failing(self) -> bool:
        return self.reason is not None

    def gauges(self) -> dict[str, int]:
        """journal_failing per reason: 1 for the current one, 0 for the others (all three always there)."""
        return {reason: 1 if reason == self.reason else 0 for reason in REASONS}

    def observe(
        self,
        errors: list[DatabaseError],
        trades: tuple[dict[str, Any], ...],
        closed: list[dict[str, Any]],
        loop_end: float | None,
        count: bool = True,
        count_failures: bool | None = None,
    ) -> None:
        """Take a poll's new database failures (oldest first), freqtrade's open trades, the trades that closed since the
        previous poll, and its last loop end (Unix time, or None). `count` false: the sidecar's first poll (history);
        `count_failures`, when given, for the failures alone (read from a log file, whose first read is history)."""
        wrote = self._wrote(trades, closed, count)
        self.failed(errors, count if count_failures is None else count_failures)
        if self.reason is None:
            return
        if errors:
            return  # a write seen in the same poll as a failure may predate it
        quiet = loop_end is not None and loop_end - self.failed_at >= QUIET_SECONDS
        if wrote or quiet:
            why = "a write landed" if wrote else f"its loop ran {QUIET_SECONDS:g} s without a failure"
            log.warning("freqtrade writes its database again (%s; was %s)", why, self.reason)
            self.reason, self.error = None, ""

    def failed(self, errors: list[DatabaseError], count: bool = True) -> None:
        """Take database failures (oldest first) read while freqtrade may not answer (its log file)."""
        for error in errors:
            if count:
                self.failures += 1
            if self.reason is None:
                log.error("freqtrade cannot write its database (%s): %s", error.reason, error.error)
            self.reason, self.error = error.reason, error.error
            self.failed_at = max(self.failed_at, error.at)

    def _wrote(self, trades: tuple[dict[str, Any], ...], closed: list[dict[str, Any]], count: bool) -> bool:
        """Whether this poll shows a write freqtrade committed since the previous one (never on the first poll)."""
        wrote = bool(closed) and count
        for trade in trades:
            trade_id = trade.get("trade_id")
            if trade_id not in self._trades:
                self._trades.add(trade_id)
                wrote = wrote or count
            for order in trade.get("orders") or ():
                key = (trade_id, order.get("order_id"))
                filled = _float(order.get("filled"))
                before = self._orders.get(key)
                if before is None or filled > before:
                    wrote = wrote or count
                self._orders[key] = filled
        live = {t.get("trade_id") for t in trades}
        self._trades &= live
        self._orders = {key: value for key, value in self._orders.items() if key[0] in live}
        return wrote


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
