"""The journal on SQLite and PostgreSQL: order updates never move an order back, adopting balances is exact (an asset
the venue omits is zero), removing duplicate fill rows takes their balance changes with them, and what a restart
restores (positions, the day's realized P&L) never needs the whole fill history."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import delete

from trading_ops.bot import journal as journal_module
from trading_ops.bot.book import Holding
from trading_ops.bot.broker import OrderRequest, OrderStatus, OrderType, Side, VenueFill, VenueOrder
from trading_ops.bot.journal import Journal, OrderUpdate
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
