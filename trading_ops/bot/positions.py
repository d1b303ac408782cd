"""The order engine's positions: the book of what the bot holds, written with each fill, exported and restored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from trading_ops.bot.book import Book
from trading_ops.bot.broker import Broker, Quote, VenueFill
from trading_ops.bot.classify import balance_changes, split_symbol
from trading_ops.bot.gate import OrderGate
from trading_ops.bot.journal import Journal
from trading_ops.bot.metrics import BotMetrics

log = logging.getLogger(__name__)


class Positions:
    """Owns the bot's book (positions, average prices, the day's realized P&L, the marks the quotes set): a fill
    changes it and its journal row together, one fill at a time (`fill_lock`); what it holds is exported as metrics
    and told to the risk engine (the day's loss, the equity), and taken from the journal again at a start or after
    fill rows were removed."""

    def __init__(
        self,
        broker: Broker,
        journal: Journal,
        metrics: BotMetrics,
        gate: OrderGate,
        *,
        symbols: Sequence[str],
        quote_asset: str,
    ) -> None:
        self.broker = broker
        self.journal = journal
        self.metrics = metrics
        self.gate = gate
        self.symbols = list(symbols)
        self.quote_asset = quote_asset
        self.book = Book()
        self.quotes: dict[str, Quote] = {}
        self.fill_lock = asyncio.Lock()  # one fill at a time between the book and its journal write

    def split_symbol(self, symbol: str) -> tuple[str, str]:
        _, quote = split_symbol(symbol)
        return self.broker.base_asset(symbol), quote or self.quote_asset

    async def book_fill(self, fill: VenueFill, adjustment: bool) -> bool:
        """Book and journal a fill (with its position, balance changes unless it is an `adjustment`, and realized
        P&L, in one transaction); False when its trade id is already journaled. The book is put back as it was when
        the write fails (a duplicate, or a database error: then the fill is in neither, and reconciliation adopts it
        once)."""
        async with self.fill_lock:
            checkpoint = self.book.checkpoint(fill.symbol)
            realized = self.book.apply_fill(
                fill.symbol, fill.side.sign * fill.quantity, fill.price, fill.fee, fill.executed_at
            )
            h = self.book.holding(fill.symbol)
            changes = None if adjustment else balance_changes(fill, self.split_symbol)
            try:
                stored = await self.journal.call(
                    self.journal.fill, fill, (h.quantity, h.average_price, h.realized_pnl), changes, realized
                )
            except BaseException:
                self.book.rollback(checkpoint)
                raise
            if not stored:  # the same trade id twice: undo, count nothing
                self.book.rollback(checkpoint)
                return False
        return True

    def on_quote(self, quote: Quote) -> None:
        self.quotes[quote.symbol] = quote
        self.book.mark(quote.symbol, quote.mid)
        self.metrics.market_data(quote.symbol)

    def export_position(self, symbol: str) -> None:
        self.metrics.position(symbol, float(self.book.position(symbol)), float(self.book.notional(symbol)))

    def export_pnl(self) -> None:
        """Positions and P&L as metrics, and the day's loss and the equity to the risk engine (their limits halt
        the bot)."""
        for symbol in self.symbols:
            self.export_position(symbol)
        self.metrics.pnl(float(self.book.realized_today), float(self.book.unrealized_pnl()))
        self.gate.risk.observe_loss(-(self.book.realized_today + self.book.unrealized_pnl()))
        self.gate.risk.observe_equity(self.book.equity(), self.book.open_positions())

    async def rebuild(self, symbols: list[str]) -> None:
        """Fill rows of `symbols` were removed from the journal: replay those symbols' fills into their positions
        (and each fill's realized P&L), then take the book from the journal again."""
        async with self.fill_lock:
            await self.journal.call(self.journal.rebuild_positions, symbols)
            await self.restore()

    async def restore(self) -> None:
        """Take positions and today's realized P&L from the journal, so a restart continues where the bot stopped:
        the positions table (written with every fill) and the last day's fills, never the whole history."""
        state = await self.journal.call(self.journal.book_state)
        if state.realized_on_day is None:  # fills journaled before their realized P&L was: computed once, here
            symbols = await self.journal.call(self.journal.rebuild_positions, None)
            log.warning("realized P&L of the journaled fills computed from their history (%s)", ", ".join(symbols))
            state = await self.journal.call(self.journal.book_state)
        self.book.restore(state.holdings, state.day, state.realized_on_day or Decimal(0))
        self.book.roll_day(datetime.now(UTC))  # the last fills were yesterday's: today's loss starts at 0
        for symbol in self.symbols:
            self.export_position(symbol)
