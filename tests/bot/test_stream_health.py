"""The stream checks as pure state: silence timeouts from a channel's cadence and the heartbeat, a channel with no
cadence found silent by what REST found first (subscribed again, then the connection replaced), a private channel's
sequence gaps, each book against its checksum (a book out of sync stays so until a snapshot), and the resync
backoff."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from trading_ops.bot.broker import Side, VenueFill
from trading_ops.bot.streams.checksum import Book
from trading_ops.bot.streams.fills import LOST_AFTER, owed_by
from trading_ops.bot.streams.health import Books, Sequences, Silence, silence_timeout
from trading_ops.bot.streams.resync import Backoff, SilentChannels


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


def fill(client_order_id: str | None, executed_at: datetime) -> VenueFill:
    return VenueFill(
        trade_id="T1",
        client_order_id=client_order_id,
        venue_order_id="O1",
        symbol="BTC-USD",
        side=Side.BUY,
        quantity=Decimal("0.1"),
        price=Decimal(100),
        fee=Decimal(0),
        fee_asset="USD",
        liquidity="taker",
        executed_at=executed_at,
    )


def test_executions_owe_what_rest_found_first_and_silent_past_it_are_resubscribed_then_reconnected() -> None:
    now = datetime.now(UTC)
    silence = Silence()
    silence.watch("executions", "", None, now=0.0)  # subscribed long ago (monotonic 0)
    assert owed_by(fill("c-1", now - timedelta(seconds=1)), now, silence) == LOST_AFTER - 1
    assert owed_by(fill("c-1", now - timedelta(seconds=10)), now, silence) == 0.0  # late already
    assert owed_by(fill(None, now), now, silence) is None  # a fill of no order: reconciliation's
    assert owed_by(fill("c-1", now), now, None) is None  # the socket down: nothing to owe
    heard = Silence()
    heard.watch("executions", "", None, now=0.0)
    heard.seen("executions", "", time.monotonic())  # it spoke after the fill: a lost message is a gap, not silence
    assert owed_by(fill("c-1", now - timedelta(seconds=1)), now, heard) is None
    fresh = Silence()
    fresh.watch("executions", "", None, now=time.monotonic())  # just subscribed: what executed before is the snapshot's
    assert owed_by(fill("c-1", now - timedelta(seconds=1)), now, fresh) is None

    policy = SilentChannels(silence)
    silence.owe("executions", by=10.0)
    silence.seen("executions", "", 9.0)  # a message in time: it pays the debt
    assert policy.due(11.0) == ([], None)
    silence.owe("executions", by=20.0)
    again, stuck = policy.due(20.5)
    assert [c.key for c in again] == [("executions", "")] and stuck is None and again[0].lost
    silence.watch("executions", "", None, now=20.5)  # subscribed again: a fresh clock, nothing owed
    policy.resubscribed(again[0], 20.6)
    assert policy.due(30.0) == ([], None)  # quiet is no silence without a debt
    silence.owe("executions", by=31.0)
    again, stuck = policy.due(31.5)  # owed again after the resubscribe: the connection goes
    assert again == [] and stuck is not None and stuck.key == ("executions", "") and policy.pending == {}


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
