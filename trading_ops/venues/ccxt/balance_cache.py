"""The account's last balance answer, and when it may stand in for asking the venue again.

Apart from the broker because reusing an answer is a policy of its own (how young, of which poll cycle, stale after
which change), read by the REST broker and by the streaming one, which applies the fills delivered since to it."""

from __future__ import annotations

import time
from decimal import Decimal

# With a call budget, a balance answer this young is reused when nothing changed since (no submit, cancel or fill):
# a reconciliation's snapshot asks positions() then balances(), the same call.
BALANCE_REUSE_SECONDS = 1.0


class BalanceCache:
    """The last balances the venue answered (`last`; None before the first), when (`answered_at`, monotonic), in
    which of the broker's poll cycles and after how many of its changes (submits, cancels, fills delivered). With
    `reuse_unchanged` (a call budget: each answer costs), a young answer stands for the next ask if nothing changed."""

    def __init__(self, *, reuse_unchanged: bool) -> None:
        self.reuse_unchanged = reuse_unchanged
        self.last: dict[str, Decimal] | None = None
        self.answered_at = 0.0
        self._cycle = -1
        self._changes = -1

    def store(self, balances: dict[str, Decimal], cycle: int, changes: int) -> None:
        """The venue's answer, in poll cycle `cycle` after `changes` changes."""
        self.last, self._cycle = balances, cycle
        self.answered_at, self._changes = time.monotonic(), changes

    def of_cycle(self, cycle: int) -> dict[str, Decimal] | None:
        """The answer of poll cycle `cycle` (a copy), if it came in that cycle: what a poll's callbacks read."""
        return dict(self.last) if self.last is not None and self._cycle == cycle else None

    def unchanged(self, changes: int) -> dict[str, Decimal] | None:
        """With `reuse_unchanged`: the last answer (a copy) if it is younger than BALANCE_REUSE_SECONDS and came after
        these `changes` (positions() then balances(), as a snapshot asks: one call)."""
        if (
            self.reuse_unchanged
            and self.last is not None
            and self._changes == changes
            and time.monotonic() - self.answered_at < BALANCE_REUSE_SECONDS
        ):
            return dict(self.last)
        return None

    def stand_in(self) -> dict[str, Decimal]:
        """The last answer (a copy; empty before the first), for when the venue cannot be asked now."""
        return dict(self.last or {})
