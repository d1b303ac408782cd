"""Each book against Kraken's checksum at the pair's precision, as pure state (each channel's silence and a private
channel's sequence: trading_ops.bot.streams.health)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from trading_ops.bot.streams.checksum import Book


def _levels(side: Iterable[Mapping[str, Any]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(str(level["price"])), Decimal(str(level["qty"]))) for level in side]


class Books:
    """Each pair's book kept from its snapshot and updates; `apply` says whether the checksum agrees."""

    def __init__(self, precision: Mapping[str, tuple[int, int]]) -> None:
        self.precision = dict(precision)  # symbol (BTC/USD) -> (price decimals, qty decimals)
        self.books: dict[str, Book] = {}
        self.in_sync: dict[str, bool] = {}

    def apply(self, data: Mapping[str, Any], depth: int, *, snapshot: bool) -> bool:
        """Apply one book message's data; True when the book's checksum is the message's (a book out of sync stays
        out of sync, whatever its updates say, until a snapshot)."""
        symbol = str(data["symbol"])
        book = self.books.get(symbol)
        if snapshot or book is None:
            prices, qtys = self.precision[symbol]
            book = self.books[symbol] = Book(depth, prices, qtys)
            snapshot = True
        elif not self.in_sync.get(symbol, False):
            return False
        ok = book.apply(_levels(data.get("asks", [])), _levels(data.get("bids", [])), snapshot=snapshot)
        self.in_sync[symbol] = ok == int(data["checksum"])
        return self.in_sync[symbol]
