"""Kraken's book checksum (v2) and book maintenance, as pure functions over Decimal levels rendered at the pair's
precision: the gateway computes what it sends with them, and a client checks what it receives with the same ones."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

CHECKSUM_LEVELS = 10  # the checksum covers the top 10 levels of each side, whatever the depth
DEFAULT_DEPTH = 10  # a book subscription's depth when it names none (Kraken v2's default)


def decimals(step: Decimal) -> int:
    """The places of a tick or lot size (0.01 -> 2)."""
    return max(0, -int(step.as_tuple().exponent))


def level_text(price: Decimal, qty: Decimal, price_decimals: int, qty_decimals: int) -> str:
    """One level as the checksum reads it: price and qty at the pair's precision, the point and leading zeros
    removed ("45285.2", "0.00100000" -> "452852" + "100000")."""
    p = format(price.quantize(Decimal(1).scaleb(-price_decimals)), "f").replace(".", "").lstrip("0")
    q = format(qty.quantize(Decimal(1).scaleb(-qty_decimals)), "f").replace(".", "").lstrip("0")
    return p + q


def book_checksum(
    asks: Mapping[Decimal, Decimal], bids: Mapping[Decimal, Decimal], price_decimals: int, qty_decimals: int
) -> int:
    """CRC32 (unsigned) of the top 10 asks (low to high) then the top 10 bids (high to low)."""
    text = "".join(
        level_text(p, asks[p], price_decimals, qty_decimals) for p in sorted(asks)[:CHECKSUM_LEVELS]
    ) + "".join(
        level_text(p, bids[p], price_decimals, qty_decimals) for p in sorted(bids, reverse=True)[:CHECKSUM_LEVELS]
    )
    return zlib.crc32(text.encode("ascii")) & 0xFFFFFFFF


def apply_levels(
    side: dict[Decimal, Decimal], updates: Iterable[tuple[Decimal, Decimal]], depth: int, *, descending: bool
) -> None:
    """Apply one message's updates to one side in order (qty 0 removes the level), then truncate to `depth` best
    levels: levels pushed out of scope get no qty 0 of their own."""
    for price, qty in updates:
        if qty == 0:
            side.pop(price, None)
        else:
            side[price] = qty
    if len(side) > depth:
        keep = sorted(side, reverse=descending)[:depth]
        for price in set(side) - set(keep):
            del side[price]


@dataclass
class Book:
    """A client's copy of one pair's book at a subscribed depth."""

    depth: int
    price_decimals: int
    qty_decimals: int
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    bids: dict[Decimal, Decimal] = field(default_factory=dict)

    def apply(
        self, asks: Iterable[tuple[Decimal, Decimal]], bids: Iterable[tuple[Decimal, Decimal]], *, snapshot: bool
    ) -> int:
        """Apply a snapshot (replacing the book) or an update; the checksum the book has afterwards."""
        if snapshot:
            self.asks.clear()
            self.bids.clear()
        apply_levels(self.asks, asks, self.depth, descending=False)
        apply_levels(self.bids, bids, self.depth, descending=True)
        return self.checksum()

    def checksum(self) -> int:
        return book_checksum(self.asks, self.bids, self.price_decimals, self.qty_decimals)


def diff_levels(old: Mapping[Decimal, Decimal], new: Mapping[Decimal, Decimal]) -> list[tuple[Decimal, Decimal]]:
    """The updates that turn side `old` into side `new`: qty 0 for each level gone, the level for each one new or
    changed (a client that applies them and truncates to the depth holds `new`)."""
    gone = [(p, Decimal(0)) for p in old if p not in new]
    changed = [(p, q) for p, q in new.items() if old.get(p) != q]
    return gone + changed
