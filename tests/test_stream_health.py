"""The stream checks as pure state: silence timeouts from a channel's cadence and the heartbeat, a private
channel's sequence gaps, each book against its checksum (a book out of sync stays so until a snapshot), and the
resync backoff."""

from __future__ import annotations

import random
from decimal import Decimal

from trading_ops.venues.kraken_ws.checksum import Book
from trading_ops.venues.streams.health import Books, Sequences, Silence, silence_timeout
from trading_ops.venues.streams.resync import Backoff


def test_a_channel_is_silent_after_three_of_its_cadences_never_under_three_heartbeats() -> None:
    assert silence_timeout(2.0) == 6.0
    assert silence_timeout(0.05) == 3.0  # a fast channel still waits for three heartbeats
    assert silence_timeout(None) is None  # trades may rightly be quiet
    silence = Silence()
    silence.watch("book", "BTC/USD", 0.5, now=100.0)
    silence.watch("trade", "BTC/USD", None, now=100.0)
    silence.seen("book", "BTC/USD", 102.0)
    assert silence.silent_channels(104.9) == []
    assert [c.channel for c in silence.silent_channels(105.1)] == ["book"]
    silence.heard(105.0)  # a heartbeat: the socket lives while the book is silent
    assert not silence.socket_silent(107.0) and silence.socket_silent(108.1)


def test_sequence_gaps_count_the_messages_lost() -> None:
    seq = Sequences()
    assert [seq.check("executions", n, snapshot=n <= 2) for n in (1, 2, 3, 4)] == [0, 0, 0, 0]
    assert seq.check("executions", 7, snapshot=False) == 2
    seq.reset("executions")  # a new subscription starts over
    assert seq.check("executions", 1, snapshot=True) == 0


def test_a_book_out_of_sync_stays_so_until_a_snapshot() -> None:
    books = Books({"BTC/USD": (1, 8)})
    snapshot = {
        "symbol": "BTC/USD",
        "asks": [{"price": "45285.2", "qty": "0.00100000"}],
        "bids": [{"price": "45283.5", "qty": "0.10000000"}],
    }
    book = Book(10, 1, 8)
    right = book.apply([(Decimal("45285.2"), Decimal("0.001"))], [(Decimal("45283.5"), Decimal("0.1"))], snapshot=True)
    assert books.apply({**snapshot, "checksum": right}, 10, snapshot=True)
    update = {"symbol": "BTC/USD", "asks": [], "bids": [{"price": "45283.6", "qty": "1"}]}
    after = book.apply([], [(Decimal("45283.6"), Decimal("1"))], snapshot=False)
    assert not books.apply({**update, "checksum": after + 1}, 10, snapshot=False)
    # The next update carries the right checksum for the venue's book, but this copy is out of sync: still false.
    assert not books.apply({"symbol": "BTC/USD", "asks": [], "bids": [], "checksum": after}, 10, snapshot=False)
    assert books.apply({**snapshot, "checksum": right}, 10, snapshot=True)


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(1))
    waits = [backoff.next() for _ in range(6)]
    assert all(0.8 * w0 <= w <= w0 for w, w0 in zip(waits, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0], strict=True))
    backoff.reset()
    assert backoff.next() <= 0.1
