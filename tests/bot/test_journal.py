"""The journal on SQLite and PostgreSQL: order updates never move an order back, adopting balances is exact (an asset
the venue omits is zero), removing duplicate fill rows takes their balance changes with them, and what a restart
restores (positions, the day's realized P&L) never needs the whole fill history; and the journal knows when it cannot
be written (JournalHealth)."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import delete
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from trading_ops.bot import journal as journal_module
from trading_ops.bot.book import Holding
from trading_ops.bot.broker import OrderRequest, OrderStatus, OrderType, Side, VenueFill, VenueOrder
from trading_ops.bot.journal import Journal, OrderUpdate
from trading_ops.bot.journal_health import (
    DATABASE_UNAVAILABLE,
    DISK_FULL,
    REASONS,
    WRITE_ERROR,
    JournalHealth,
    failure_reason,
)
from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.db.models import Fill

AT = datetime(2026, 11, 22, 12, tzinfo=UTC)


@pytest.fixture
def journal(database_url: str) -> Iterator[Journal]:
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    j = Journal(engine, "bot-1", "paper")
    yield j
    j.close()
    engine.dispose()


def venue_order(status: OrderStatus, filled: str, coid: str = "c-1") -> VenueOrder:
    return VenueOrder(
        coid, "P1", "BTC-USD", Side.BUY, OrderType.LIMIT, Decimal(1), Decimal(100), Decimal(filled), status
    )


def test_order_updates_move_forward_only(journal: Journal) -> None:
    journal.order_submitted(OrderRequest("c-1", "BTC-USD", Side.BUY, OrderType.LIMIT, Decimal(1), Decimal(100)), "s")
    steps = [
        (venue_order(OrderStatus.ACKNOWLEDGED, "0"), OrderUpdate.APPLIED),
        (venue_order(OrderStatus.ACKNOWLEDGED, "0"), OrderUpdate.UNCHANGED),  # the event and the answer both
        (venue_order(OrderStatus.PARTIALLY_FILLED, "0.4"), OrderUpdate.APPLIED),
        (venue_order(OrderStatus.PARTIALLY_FILLED, "0.2"), OrderUpdate.STALE),  # an older partial fill
        (venue_order(OrderStatus.ACKNOWLEDGED, "0"), OrderUpdate.STALE),
        (venue_order(OrderStatus.FILLED, "1"), OrderUpdate.APPLIED),
        (venue_order(OrderStatus.PARTIALLY_FILLED, "0.4"), OrderUpdate.STALE),  # a closed order never reopens
        (venue_order(OrderStatus.CANCELED, "1"), OrderUpdate.STALE),  # nor changes how it closed
        (venue_order(OrderStatus.FILLED, "1", coid="never-placed"), OrderUpdate.UNKNOWN),
    ]
    assert [journal.order_update(order) for order, _ in steps] == [outcome for _, outcome in steps]
    [row] = journal.orders_by_client_id(["c-1"])
    assert (row.status, row.filled_quantity, row.venue_order_id) == ("filled", Decimal(1), "P1")


def test_an_order_placed_by_hand_without_a_client_id_is_journaled_by_its_venue_id(journal: Journal) -> None:
    first = venue_order(OrderStatus.ACKNOWLEDGED, "0", coid="")
    second = VenueOrder(
        "", "P2", "BTC-USD", Side.SELL, OrderType.LIMIT, Decimal(2), Decimal(90), Decimal(0), first.status
    )
    journal.upsert_order(first, "external")
    journal.upsert_order(second, "external")
    rows = journal.orders_by_client_id(["venue:P1", "venue:P2"])
    assert sorted((r.client_order_id, r.quantity) for r in rows) == [("venue:P1", Decimal(1)), ("venue:P2", Decimal(2))]
    assert journal.order_update(venue_order(OrderStatus.CANCELED, "0", coid="")) is OrderUpdate.APPLIED


def test_adopting_the_same_balances_twice_changes_nothing(journal: Journal) -> None:
    journal.set_balances({"USD": Decimal(1000), "BTC": Decimal("0.5")})
    journal.set_balances({"USD": Decimal(990)})  # the venue lists only non-zero balances: BTC is gone
    assert journal.balances() == {"USD": Decimal(990), "BTC": Decimal(0)}
    journal.set_balances({"USD": Decimal(990)})
    assert journal.balances() == {"USD": Decimal(990), "BTC": Decimal(0)}


def test_removing_fill_rows_undoes_their_balance_changes_in_the_same_transaction(journal: Journal) -> None:
    fill = VenueFill("T1", "c-1", "P1", "BTC-USD", Side.BUY, Decimal(1), Decimal(100), Decimal(1), "USD", "taker", AT)
    journal.set_balances({"USD": Decimal(1000)})
    assert journal.fill(fill, (Decimal(1), Decimal(100), Decimal(-1)), {"BTC": Decimal(1), "USD": Decimal(-101)})
    [row] = journal.fills()
    journal.remove_fill_rows([row.id], {"BTC": Decimal(-1), "USD": Decimal(101)})
    assert journal.fills() == []
    assert journal.balances() == {"USD": Decimal(1000), "BTC": Decimal(0)}


def trade(trade_id: str, side: Side, quantity: str, price: int, at: datetime) -> VenueFill:
    return VenueFill(
        trade_id, "c-1", "P1", "BTC-USD", side, Decimal(quantity), Decimal(price), Decimal(0), "USD", "taker", at
    )


def test_a_start_reads_the_positions_and_the_last_days_fills_not_the_history(journal: Journal) -> None:
    """What a restart restores: the positions as journaled with each fill, and the realized P&L of the last day with
    fills. Older fills play no part: archiving them changes nothing."""
    yesterday = AT - timedelta(days=1)
    journal.fill(trade("T1", Side.BUY, "1", 100, yesterday), (Decimal(1), Decimal(100), Decimal(0)), None, Decimal(0))
    journal.fill(trade("T2", Side.SELL, "0.5", 110, AT), (Decimal("0.5"), Decimal(100), Decimal(5)), None, Decimal(5))
    later = AT + timedelta(hours=1)
    journal.fill(
        trade("T3", Side.SELL, "0.25", 120, later), (Decimal("0.25"), Decimal(100), Decimal(10)), None, Decimal(5)
    )
    state = journal.book_state()
    assert state.holdings == {"BTC-USD": Holding(Decimal("0.25"), Decimal(100), Decimal(10))}
    assert (state.day, state.realized_on_day) == (AT.date(), Decimal(10))
    with journal.engine.begin() as conn:  # yesterday's fill is archived elsewhere
        conn.execute(delete(Fill).where(Fill.trade_id == "T1"))
    assert journal.book_state() == state


def test_fills_journaled_without_their_realized_pnl_get_it_from_one_replay(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fills journaled by a version that did not store each fill's realized P&L: book_state says it cannot tell
    the day's P&L, and one replay of the history stores it (and the positions it gives). The replay reads the
    history in batches (two rows here), in execution order across them."""
    monkeypatch.setattr(journal_module, "REPLAY_BATCH", 2)
    yesterday = AT - timedelta(days=1)
    journal.fill(trade("T1", Side.BUY, "1", 100, yesterday), (Decimal(1), Decimal(100), Decimal(0)))
    journal.fill(trade("T2", Side.SELL, "0.4", 110, AT), (Decimal("0.6"), Decimal(100), Decimal(4)))
    journal.fill(trade("T3", Side.SELL, "0.1", 90, AT), (Decimal("0.5"), Decimal(100), Decimal(3)))
    journal.fill(trade("T4", Side.SELL, "0.1", 100, AT), (Decimal("0.4"), Decimal(100), Decimal(3)))
    journal.fill(trade("T5", Side.BUY, "0.4", 105, AT), (Decimal("0.8"), Decimal("102.5"), Decimal(3)))
    assert journal.book_state().realized_on_day is None
    assert journal.rebuild_positions(None) == ["BTC-USD"]
    assert [f.realized_pnl for f in journal.fills()] == [Decimal(0), Decimal(4), Decimal(-1), Decimal(0), Decimal(0)]
    state = journal.book_state()
    assert state.holdings == {"BTC-USD": Holding(Decimal("0.8"), Decimal("102.5"), Decimal(3))}
    assert state.realized_on_day == Decimal(3)


def request(client_order_id: str) -> OrderRequest:
    return OrderRequest(client_order_id, "BTC-USD", Side.BUY, OrderType.LIMIT, Decimal(1), Decimal(100))


async def test_the_journal_is_failing_from_a_failed_call_until_a_write_lands_and_a_read_proves_nothing(
    journal: Journal,
) -> None:
    """JournalHealth follows the journal's calls: a database error makes it failing with a bounded reason (exported
    one-hot in tradingbot_journal_failing), a read that works leaves it failing (a full disk still serves reads), the
    first committed write makes it writable again; each change is told to the listeners once."""
    registry = CollectorRegistry()
    journal.health = JournalHealth(venue="paper", registry=registry)
    changes: list[str | None] = []
    journal.health.add_listener(changes.append)

    def failing(labels: dict[str, str]) -> float | None:
        return registry.get_sample_value("tradingbot_journal_failing", {"venue": "paper", **labels})

    await journal.call(journal.order_submitted, request("c-1"), "demo")
    assert not journal.health.failing and journal.health.last_write_age() is not None

    def disk_full() -> None:
        raise OperationalError("INSERT INTO orders", {}, sqlite3.OperationalError("database or disk is full"))

    for _ in range(2):
        with pytest.raises(OperationalError):
            await journal.call(disk_full)
    assert journal.health.reason == DISK_FULL and journal.health.failures == 2
    assert failing({"reason": "disk_full"}) == 1 and failing({"reason": "database_unavailable"}) == 0
    assert registry.get_sample_value("tradingbot_journal_write_failures_total", {"venue": "paper"}) == 2
    assert len(await journal.call(journal.open_orders)) == 1  # a read works: still failing
    assert journal.health.failing
    await journal.call(journal.order_submitted, request("c-2"), "demo")
    assert not journal.health.failing and journal.health.failing_for() == 0
    assert failing({"reason": "disk_full"}) == 0
    assert changes == [DISK_FULL, None]


async def test_a_duplicate_or_a_bug_is_no_journal_failure(journal: Journal) -> None:
    """A constraint the data broke (a client order id journaled twice) and an error that is not the database's are
    raised as they are, and the journal stays writable."""
    await journal.call(journal.order_submitted, request("c-1"), "demo")
    with pytest.raises(IntegrityError):
        await journal.call(journal.order_submitted, request("c-1"), "demo")

    def bug() -> None:
        raise ValueError("a bug in the caller")

    with pytest.raises(ValueError):
        await journal.call(bug)
    assert not journal.health.failing and journal.health.failures == 0


def test_failure_reasons_are_bounded_and_name_the_cause() -> None:
    assert failure_reason(OSError(errno.ENOSPC, "No space left on device")) == DISK_FULL
    full = OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
    assert failure_reason(full) == DISK_FULL

    class PgOperationalError(Exception):  # what psycopg raises for a refused or dropped connection
        sqlstate = None

    PgOperationalError.__name__ = "OperationalError"
    refused = OperationalError("SELECT 1", {}, PgOperationalError("connection refused"))
    assert failure_reason(refused) == DATABASE_UNAVAILABLE
    assert failure_reason(DBAPIError("SELECT 1", {}, Exception("odd"))) == WRITE_ERROR
    assert {DISK_FULL, DATABASE_UNAVAILABLE, WRITE_ERROR} == set(REASONS)


def test_with_settle_the_metric_holds_until_a_reconciliation_settles_it() -> None:
    """A full disk flaps (a write that fits lands, the next fails): with `settle` (the runtime's), a write that lands
    makes the journal writable for the gate, but the metric and the failing clock hold until settled()."""
    registry = CollectorRegistry()
    health = JournalHealth(venue="paper", registry=registry, settle=True)
    labels = {"venue": "paper", "reason": DISK_FULL}
    health.failed(OSError(errno.ENOSPC, "No space left on device"))
    health.wrote()
    assert not health.failing and health.failing_for() > 0
    assert registry.get_sample_value("tradingbot_journal_failing", labels) == 1
    health.failed(OSError(errno.ENOSPC, "No space left on device"))
    health.settled()  # not while failing
    assert registry.get_sample_value("tradingbot_journal_failing", labels) == 1
    health.wrote()
    health.settled()
    assert registry.get_sample_value("tradingbot_journal_failing", labels) == 0 and health.failing_for() == 0


def test_the_day_the_journal_restores_is_the_books_to_the_last_digit_whatever_ccxt_did_to_the_threads_context(
    journal: Journal,
) -> None:
    """ccxt's decimal_to_precision leaves its caller's thread rounding half up (and trapping underflow); the bot
    calls it in the thread that keeps the book, while the journal sums the day's P&L in a thread of its own. The
    book rounds in its own context, so the restart's day total is the book's own, digit for digit (on PostgreSQL, to
    the 18 decimal places its columns keep)."""
    from ccxt.base.decimal_to_precision import ROUND, decimal_to_precision

    from trading_ops.bot.book import Book

    decimal_to_precision("1.25", ROUND, 1)  # as the broker does when it sizes an order
    book = Book()
    # An average price of 28 digits (0.7 at 102 and 0.6 at 97), then three sells whose 28-digit realized amounts
    # add up to a tie in the last digit: summed half up and half even, they differ there.
    fills = [("0.7", 102), ("0.6", 97), ("0.6", 96), ("0.25", 96), ("0.3", 99)]
    for n, (quantity, price) in enumerate(fills):
        side = Side.BUY if n < 2 else Side.SELL
        fill = trade(f"T{n}", side, quantity, price, AT + timedelta(minutes=n))
        realized = book.apply_fill(fill.symbol, side.sign * fill.quantity, fill.price, fill.fee, fill.executed_at)
        h = book.holding(fill.symbol)
        journal.fill(fill, (h.quantity, h.average_price, h.realized_pnl), None, realized)
    with ThreadPoolExecutor(1) as journal_thread:  # as the bot calls it (Journal.call)
        restored = journal_thread.submit(journal.book_state).result()
    held = book.holding("BTC-USD")
    if journal.engine.dialect.name == "postgresql":
        kept = Decimal("1e-18")
        book.realized_today = book.realized_today.quantize(kept)
        held = Holding(*(value.quantize(kept) for value in (held.quantity, held.average_price, held.realized_pnl)))
    assert restored.realized_on_day == book.realized_today
    assert restored.holdings["BTC-USD"] == held
