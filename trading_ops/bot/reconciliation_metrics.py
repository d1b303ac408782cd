"""The `tradingbot_reconciliation_*` metrics and the per-symbol position mismatch gauge, on the bot's registry."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge

from trading_ops.bot.cardinality import ChildCache
from trading_ops.bot.classify import UNKNOWN_PARTS
from trading_ops.bot.metrics import PREFIX, BotMetrics
from trading_ops.config import RECONCILIATION_POLICIES

TRIGGERS = ("startup", "schedule", "reconnect", "command", "lost_reply", "journal")
RESULTS = ("clean", "resolved", "failed", "halted", "unknown")


class ReconciliationMetrics:
    """Runs by trigger and result, discrepancies by class, the last success and the mismatch per symbol.

    The last-success timestamp exists from the start, set to `started_at` (the bot's start) until a run succeeds:
    `time() - tradingbot_reconciliation_last_success_timestamp_seconds > N` then fires N seconds after the start of
    a bot that never reconciled successfully, as it does N seconds after the last success of one that did.
    """

    def __init__(self, metrics: BotMetrics, started_at: float | None = None) -> None:
        venue = metrics.venue
        registry = metrics.registry
        self.venue = venue
        self._runs = Counter(
            f"{PREFIX}_reconciliation_runs",
            "Reconciliations of the journal against the venue, by trigger and result.",
            ["venue", "trigger", "result"],
            registry=registry,
        )
        self._discrepancies = Counter(
            f"{PREFIX}_reconciliation_discrepancies",
            "Differences between the journal and the venue found by reconciliation, by class.",
            ["venue", "discrepancy"],
            registry=registry,
        )
        self._last_success = Gauge(
            f"{PREFIX}_reconciliation_last_success_timestamp_seconds",
            "Unix time at which the last reconciliation completed (clean or resolved); the bot's start time until one "
            "has.",
            ["venue"],
            registry=registry,
        )
        mismatch = Gauge(
            f"{PREFIX}_position_mismatch_quantity",
            "Absolute difference between the venue's and the journal's position after the last reconciliation, "
            "in units of the base asset.",
            ["venue", "symbol"],
            registry=registry,
        )
        self._mismatch = ChildCache(mismatch, ("symbol",), (venue,), metrics.guard)
        unknown = Gauge(
            f"{PREFIX}_reconciliation_unknown",
            "1 when the last reconciliation could not see this part of the account (the venue did not answer the "
            "positions or balances query): it was not compared, never taken as zero.",
            ["venue", "part"],
            registry=registry,
        )
        self._unknown = {part: unknown.labels(venue, part) for part in UNKNOWN_PARTS}
        for trigger in TRIGGERS:
            for result in RESULTS:
                self._runs.labels(venue, trigger, result)
        for kind in RECONCILIATION_POLICIES:
            self._discrepancies.labels(venue, kind)
        self._last_success.labels(venue).set(time.time() if started_at is None else started_at)

    def run(self, trigger: str, result: str, finished_at: float) -> None:
        self._runs.labels(self.venue, trigger, result).inc()
        if result in ("clean", "resolved"):
            self._last_success.labels(self.venue).set(finished_at)

    def unknown(self, parts: list[str]) -> None:
        """The parts the last run could not see (the others it saw)."""
        for part, child in self._unknown.items():
            child.set(1 if part in parts else 0)

    def discrepancy(self, kind: str) -> None:
        self._discrepancies.labels(self.venue, kind).inc()

    def position_mismatch(self, symbol: str, quantity: float) -> None:
        self._mismatch[(symbol,)].set(abs(quantity))
