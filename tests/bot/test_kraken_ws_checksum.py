"""Kraken's book checksum (v2) and book maintenance, pure functions over Decimal: Kraken's own worked example from its
"Book checksum (v2)" guide (BTC/USD at price precision 1, qty precision 8: 3310070434), and the gateway's book feed
whose updates, applied by a client and truncated to its depth, give the book the checksum says."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal

from trading_ops.bot.broker import Quote
from trading_ops.bot.streams.checksum import Book, apply_levels, book_checksum, diff_levels, level_text
from trading_ops.paper.gateway.kraken.ws.book_feed import BookFeed
from trading_ops.paper.gateway.kraken.ws.messages import dumps

# Kraken's worked example, as its guide gives the snapshot (JSON numbers at the pair's precision).
GUIDE_SNAPSHOT = """{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",
"bids":[{"price":45283.5,"qty":0.10000000},{"price":45283.4,"qty":1.54582015},{"price":45282.1,"qty":0.10000000},
{"price":45281.0,"qty":0.10000000},{"price":45280.3,"qty":1.54592586},{"price":45279.0,"qty":0.07990000},
{"price":45277.6,"qty":0.03310103},{"price":45277.5,"qty":0.30000000},{"price":45277.3,"qty":1.54602737},
{"price":45276.6,"qty":0.15445238}],
"asks":[{"price":45285.2,"qty":0.00100000},{"price":45286.4,"qty":1.54571953},{"price":45286.6,"qty":1.54571109},
{"price":45289.6,"qty":1.54560911},{"price":45290.2,"qty":0.15890660},{"price":45291.8,"qty":1.54553491},
{"price":45294.7,"qty":0.04454749},{"price":45296.1,"qty":0.35380000},{"price":45297.5,"qty":0.09945542},
{"price":45299.5,"qty":0.18772827}],"checksum":3310070434}]}"""
GUIDE_ASKS_TEXT = (
    "452852100000452864154571953452866154571109452896154560911452902158906604529181545534914529474454749"
    "45296135380000452975994554245299518772827"
)


def parse(text: str) -> dict:
    return json.loads(text, parse_float=Decimal)


def levels(side: list[dict]) -> list[tuple[Decimal, Decimal]]:
    return [(level["price"], level["qty"]) for level in side]


def test_kraken_worked_example_gives_its_checksum() -> None:
    data = parse(GUIDE_SNAPSHOT)["data"][0]
    book = Book(depth=10, price_decimals=1, qty_decimals=8)
    assert book.apply(levels(data["asks"]), levels(data["bids"]), snapshot=True) == data["checksum"] == 3310070434
    asks = dict(levels(data["asks"]))
    assert "".join(level_text(p, asks[p], 1, 8) for p in sorted(asks)) == GUIDE_ASKS_TEXT
    # The guide's own steps for one level: "45285.2" -> "452852", "0.00100000" -> "100000"; a whole price keeps its
    # decimal place at the pair's precision ("45281.0" -> "452810").
    assert level_text(Decimal("45285.2"), Decimal("0.001"), 1, 8) == "452852100000"
    assert level_text(Decimal("45281"), Decimal("0.1"), 1, 8) == "45281010000000"


def test_a_wrong_precision_or_a_changed_level_changes_the_checksum() -> None:
    data = parse(GUIDE_SNAPSHOT)["data"][0]
    asks, bids = dict(levels(data["asks"])), dict(levels(data["bids"]))
    assert book_checksum(asks, bids, 1, 8) == 3310070434
    assert book_checksum(asks, bids, 2, 8) != 3310070434  # rendered at the wrong precision
    bids[Decimal("45276.6")] = Decimal("0.15445239")
    assert book_checksum(asks, bids, 1, 8) != 3310070434


def test_updates_remove_zero_levels_and_truncate_to_the_depth() -> None:
    side = {Decimal(p): Decimal(1) for p in ("100", "101", "102")}
    apply_levels(
        side,
        [(Decimal("101"), Decimal(0)), (Decimal("99"), Decimal(2)), (Decimal("98"), Decimal(3))],
        3,
        descending=False,
    )
    assert side == {Decimal("98"): Decimal(3), Decimal("99"): Decimal(2), Decimal("100"): Decimal(1)}
    bids = {Decimal(p): Decimal(1) for p in ("100", "99")}
    apply_levels(bids, [(Decimal("101"), Decimal(5))], 2, descending=True)
    assert bids == {Decimal("101"): Decimal(5), Decimal("100"): Decimal(1)}  # 99 fell out of scope, no qty 0 for it


def test_the_feeds_updates_on_the_wire_keep_a_clients_book_in_step() -> None:
    """The gateway's book at depth 10 over 300 random quotes: every message, written as the gateway writes it and
    read back as Decimal, keeps a client's copy equal to the gateway's, and its checksum the gateway's."""
    rng = random.Random(3)
    feed = BookFeed("BTC-USD", 10, Decimal("0.1"), Decimal("0.00000001"))
    client = Book(depth=10, price_decimals=1, qty_decimals=8)
    mid = Decimal("45000.0")
    for i in range(300):
        mid += Decimal(rng.randint(-30, 30)) / 10
        quote = Quote("BTC-USD", mid - Decimal("0.5"), mid + Decimal("0.5"), datetime.now(UTC))
        asks, bids = feed.advance(quote)
        wire = parse(
            dumps(
                {
                    "asks": [{"price": p, "qty": feed.qty(q)} for p, q in asks],
                    "bids": [{"price": p, "qty": feed.qty(q)} for p, q in bids],
                }
            )
        )
        got = client.apply(levels(wire["asks"]), levels(wire["bids"]), snapshot=i == 0)
        assert got == feed.checksum(), i
        assert (client.asks, client.bids) == (feed.asks, feed.bids)
    assert diff_levels(feed.asks, feed.asks) == []
