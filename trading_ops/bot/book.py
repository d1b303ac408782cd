"""Positions and profit and loss from fills (average-cost method), marked to the latest prices."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext

ZERO = Decimal(0)

# The book rounds in a context of its own, never the thread's: a library in the bot's thread may change that one
# (ccxt's decimal_to_precision sets ROUND_HALF_UP and traps Underflow on its caller's context), while the journal
# sums a day's P&L in its own thread. Both must round alike, or a restart restores a different day's loss.
CONTEXT = Context(prec=28, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])


def total(values: Iterable[Decimal]) -> Decimal:
    """The sum of P&L values in the book's context, in the order given (a sum of 28-digit decimals rounds by its
    order)."""
    with localcontext(CONTEXT):
        return sum(values, ZERO)


@dataclass
class Holding:
    quantity: Decimal = ZERO  # signed: negative is short
    average_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO  # since the holding was created, net of fees

    def apply(self, signed_quantity: Decimal, price: Decimal, fee: Decimal) -> Decimal:
        """Apply one fill; returns the realized P&L it produced (net of its fee)."""
        with localcontext(CONTEXT):
            return self._apply(signed_quantity, price, fee)

    def _apply(self, signed_quantity: Decimal, price: Decimal, fee: Decimal) -> Decimal:
        realized = -fee
        q = self.quantity
        if q == 0 or (q > 0) == (signed_quantity > 0):
            total = q + signed_quantity
            self.average_price = (self.average_price * abs(q) + price * abs(signed_quantity)) / abs(total)
            self.quantity = total
        else:
            closing = min(abs(q), abs(signed_quantity))
            direction = 1 if q > 0 else -1
            realized += (price - self.average_price) * closing * direction
            self.quantity = q + signed_quantity
            if self.quantity == 0:
                self.average_price = ZERO
            elif (self.quantity > 0) != (q > 0):
                # Crossed through zero: the remainder opens a new position at the fill price.
                self.average_price = price
        self.realized_pnl += realized
        return realized


@dataclass(frozen=True)
class Checkpoint:
    """What one fill can change in a Book: the holding of its symbol (None: there was none) and the day's P&L."""

    symbol: str
    holding: Holding | None
    day: date | None
    realized_today: Decimal


class Book:
    """The bot's own view of its positions and P&L; the venue's view is the broker's."""

    def __init__(self) -> None:
        self.holdings: dict[str, Holding] = {}
        self.marks: dict[str, Decimal] = {}
        self._day: date | None = None
        self.realized_today = ZERO

    def holding(self, symbol: str) -> Holding:
        return self.holdings.setdefault(symbol, Holding())

    def apply_fill(
        self, symbol: str, signed_quantity: Decimal, price: Decimal, fee: Decimal, when: datetime
    ) -> Decimal:
        """Apply one fill; returns the realized P&L it produced (net of its fee)."""
        self.roll_day(when)
        realized = self.holding(symbol).apply(signed_quantity, price, fee)
        self.realized_today = total((self.realized_today, realized))
        return realized

    def checkpoint(self, symbol: str) -> Checkpoint:
        """Taken before applying a fill of `symbol`, so that `rollback` can undo it exactly."""
        holding = self.holdings.get(symbol)
        return Checkpoint(symbol, None if holding is None else replace(holding), self._day, self.realized_today)

    def rollback(self, checkpoint: Checkpoint) -> None:
        """Undo what was applied to `checkpoint.symbol` since the checkpoint (nothing else may have been)."""
        if checkpoint.holding is None:
            self.holdings.pop(checkpoint.symbol, None)
        else:
            self.holdings[checkpoint.symbol] = checkpoint.holding
        self._day = checkpoint.day
        self.realized_today = checkpoint.realized_today

    def restore(self, holdings: dict[str, Holding], day: date | None, realized_today: Decimal) -> None:
        """Take positions and the day's realized P&L as the journal stored them (at a start)."""
        self.holdings = dict(holdings)
        self._day = day
        self.realized_today = realized_today

    def roll_day(self, when: datetime) -> None:
        """The day's realized P&L starts at 0 on a new day (a fill rolls it; a start rolls it to today)."""
        day = when.date()
        if self._day != day:
            self._day = day
            self.realized_today = ZERO

    def mark(self, symbol: str, price: Decimal) -> None:
        self.marks[symbol] = price

    def position(self, symbol: str) -> Decimal:
        holding = self.holdings.get(symbol)
        return holding.quantity if holding else ZERO

    def notional(self, symbol: str) -> Decimal:
        mark = self.marks.get(symbol)
        if mark is None:
            return ZERO
        with localcontext(CONTEXT):
            return self.position(symbol) * mark

    def equity(self) -> Decimal | None:
        """Realized P&L of every position held so far plus unrealized P&L at the mark: what the drawdown limit
        measures (it does not restart with the day). None while a held symbol has no mark yet."""
        if any(h.quantity and symbol not in self.marks for symbol, h in self.holdings.items()):
            return None
        return total([*(h.realized_pnl for h in self.holdings.values()), self.unrealized_pnl()])

    def open_positions(self) -> int:
        """Symbols with a non-zero position."""
        return sum(1 for h in self.holdings.values() if h.quantity)

    def unrealized_pnl(self) -> Decimal:
        with localcontext(CONTEXT):
            return total(
                (mark - holding.average_price) * holding.quantity
                for symbol, holding in self.holdings.items()
                if holding.quantity and (mark := self.marks.get(symbol)) is not None
            )
