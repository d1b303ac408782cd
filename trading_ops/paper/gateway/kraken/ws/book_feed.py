"""The gateway's order book per pair and depth, built from the paper market's quotes: its levels, each message's
updates (diffs) and checksum, as pure functions of the quote and the book's generation."""

from __future__ import annotations

import zlib
from decimal import Decimal

from trading_ops.bot.broker import Quote
from trading_ops.bot.streams.checksum import book_checksum, decimals, diff_levels

# The levels' quantities change every this many quotes (a book whose sizes move, not only its prices).
QUOTES_PER_GENERATION = 3
# A level holds 1 to this many lots of the pair's step.
MAX_LOTS = 20_000
DEPTHS = (10, 25, 100, 500, 1000)

Levels = dict[Decimal, Decimal]


def level_qty(symbol: str, price: Decimal, generation: int, step: Decimal) -> Decimal:
    """A level's quantity: a whole number of lots, the same for a price within one generation."""
    lots = 1 + zlib.crc32(f"{symbol}|{price}|{generation}".encode()) % MAX_LOTS
    return (step * lots).quantize(step)


def book_levels(quote: Quote, tick: Decimal, step: Decimal, depth: int, generation: int) -> tuple[Levels, Levels]:
    """The asks (from the ask up, one tick apart) and bids (from the bid down, above 0) of `depth` levels."""
    asks = {}
    bids = {}
    for i in range(depth):
        ask = (quote.ask + i * tick).quantize(tick)
        asks[ask] = level_qty(quote.symbol, ask, generation, step)
        bid = (quote.bid - i * tick).quantize(tick)
        if bid > 0:
            bids[bid] = level_qty(quote.symbol, bid, generation, step)
    return asks, bids


class BookFeed:
    """One pair's book at one depth as the gateway last published it: `advance` moves it to a new quote and answers
    the updates that take a client there."""

    def __init__(self, symbol: str, depth: int, tick: Decimal, step: Decimal) -> None:
        self.symbol = symbol
        self.depth = depth
        self.tick = tick
        self.step = step
        self.price_decimals = decimals(tick)
        self.qty_decimals = decimals(step)
        self.asks: Levels = {}
        self.bids: Levels = {}
        self.quotes = 0

    def advance(self, quote: Quote) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """Take the new quote; the ask and bid updates since the last one (both empty when nothing changed)."""
        self.quotes += 1
        asks, bids = book_levels(quote, self.tick, self.step, self.depth, self.quotes // QUOTES_PER_GENERATION)
        ask_updates, bid_updates = diff_levels(self.asks, asks), diff_levels(self.bids, bids)
        self.asks, self.bids = asks, bids
        return ask_updates, bid_updates

    def checksum(self) -> int:
        return book_checksum(self.asks, self.bids, self.price_decimals, self.qty_decimals)

    def qty(self, value: Decimal) -> Decimal:
        """A quantity at the pair's lot precision (a removed level's 0 included)."""
        return value.quantize(self.step)
