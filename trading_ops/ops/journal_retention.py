"""Retention of the bot's journal and recovery records by age, never losing what a bot still needs: an open order,
the fills of a position not flat since, the last day with fills, a bot's last run, an event not yet notified."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, and_, delete, exists, func, inspect, or_, select
from sqlalchemy.orm import aliased

from trading_ops.bot.broker import OrderStatus, Side
from trading_ops.bot.journal import day_bounds
from trading_ops.db.models import BotRun, Fill, Order, ReconciliationDiscrepancy, ReconciliationRun, RecoveryEvent

log = logging.getLogger(__name__)

# Rows per delete transaction: each holds SQLite's write lock for a fraction of a second (the bot's journal waits
# that long at most, well inside its busy timeout), and a pass over 100k rows commits 20 times, not 200.
BATCH = 5000
# Fill rows read per round trip while replaying a symbol's position.
REPLAY_BATCH = 2000
OPEN_STATUSES = [s.value for s in OrderStatus if s.is_open]
CLOSED_STATUSES = [s.value for s in OrderStatus if not s.is_open]


def _delete_batches(engine: Engine, table: Any, id_column: Any, condition: Any) -> int:
    """Delete the rows matching `condition`, BATCH per transaction, in id order (each batch reads on from where the
    last one stopped, so the whole pass reads the table once); how many."""
    total = 0
    last = None
    while True:
        query = select(id_column).where(condition).order_by(id_column).limit(BATCH)
        if last is not None:
            query = query.where(id_column > last)
        with engine.begin() as conn:
            ids = list(conn.execute(query).scalars())
            if not ids:
                return total
            total += int(conn.execute(delete(table).where(id_column.in_(ids))).rowcount)
        last = ids[-1]


def _last_flat_fill(engine: Engine, bot: str, venue: str, symbol: str, before: datetime) -> tuple[datetime, int] | None:
    """The last fill executed before `before` after which the symbol's position was flat (quantity 0): every fill up
    to it is history no position needs any more. None when there is no such point."""
    quantity = Decimal(0)
    flat: tuple[datetime, int] | None = None
    after: tuple[datetime, int] | None = None
    with engine.connect() as conn:
        while True:
            query = (
                select(Fill.id, Fill.side, Fill.quantity, Fill.executed_at)
                .where(Fill.bot == bot, Fill.venue == venue, Fill.symbol == symbol, Fill.executed_at < before)
                .order_by(Fill.executed_at, Fill.id)
                .limit(REPLAY_BATCH)
            )
            if after is not None:  # keyset pagination, as the journal replays
                at, row_id = after
                query = query.where(or_(Fill.executed_at > at, and_(Fill.executed_at == at, Fill.id > row_id)))
            rows = conn.execute(query).all()
            if not rows:
                return flat
            for row_id, side, qty, executed_at in rows:
                quantity += Side(side).sign * Decimal(qty)
                if quantity == 0:
                    flat = (executed_at, row_id)
            after = (rows[-1].executed_at, rows[-1].id)


def prune_journal(engine: Engine, cutoff: datetime) -> dict[str, int]:
    """Delete fills and closed orders older than `cutoff` that nothing needs; rows deleted by table."""
    deleted = {"fills": 0, "orders": 0}
    tables = set(inspect(engine).get_table_names())
    if not {"fills", "orders"} <= tables:
        return deleted
    with engine.connect() as conn:
        books = conn.execute(
            select(Fill.bot, Fill.venue, Fill.symbol, func.max(Fill.executed_at)).group_by(
                Fill.bot, Fill.venue, Fill.symbol
            )
        ).all()
        last_days = dict(
            ((bot, venue), last)
            for bot, venue, last in conn.execute(
                select(Fill.bot, Fill.venue, func.max(Fill.executed_at)).group_by(Fill.bot, Fill.venue)
            )
        )
    open_order = aliased(Order)
    for bot, venue, symbol, _ in books:
        # The bot's last day with fills gives its realized P&L at a start (Journal.book_state): kept whole. And
        # only a whole prefix of a symbol's fills may go (a replay of what is left must end where the full one
        # does), so the prefix ends before the first fill of an order still open.
        horizon = min(cutoff, day_bounds(last_days[(bot, venue)].date())[0])
        with engine.connect() as conn:
            first_open = conn.execute(
                select(func.min(Fill.executed_at)).where(
                    Fill.bot == bot,
                    Fill.venue == venue,
                    Fill.symbol == symbol,
                    exists().where(
                        open_order.bot == Fill.bot,
                        open_order.client_order_id == Fill.client_order_id,
                        open_order.status.in_(OPEN_STATUSES),
                    ),
                )
            ).scalar()
        if first_open is not None:
            horizon = min(horizon, first_open)
        flat = _last_flat_fill(engine, bot, venue, symbol, horizon)
        if flat is None:
            continue
        at, row_id = flat
        deleted["fills"] += _delete_batches(
            engine,
            Fill,
            Fill.id,
            and_(
                Fill.bot == bot,
                Fill.venue == venue,
                Fill.symbol == symbol,
                or_(Fill.executed_at < at, and_(Fill.executed_at == at, Fill.id <= row_id)),
            ),
        )
    deleted["orders"] = _delete_batches(
        engine,
        Order,
        Order.id,
        and_(
            Order.status.in_(CLOSED_STATUSES),
            Order.updated_at < cutoff,
            # By client order id alone (its index; with the bot too SQLite would scan the bot's fills per order). A
            # fill of another bot with the same id only keeps the order longer.
            ~exists().where(Fill.client_order_id == Order.client_order_id),
        ),
    )
    return deleted


def prune_recovery(engine: Engine, cutoff: datetime) -> dict[str, int]:
    """Delete reconciliation runs (with their discrepancies), notified recovery events and stopped bot runs older
    than `cutoff`; a bot's newest run and newest reconciliation run are always kept. Rows deleted by table."""
    deleted = {"reconciliation_discrepancies": 0, "reconciliation_runs": 0, "recovery_events": 0, "bot_runs": 0}
    tables = set(inspect(engine).get_table_names())
    if "bot_runs" not in tables:
        return deleted
    newer_run = aliased(ReconciliationRun)
    old_runs = and_(
        ReconciliationRun.finished_at < cutoff,
        exists().where(newer_run.bot == ReconciliationRun.bot, newer_run.id > ReconciliationRun.id),
    )
    old_run_ids = select(ReconciliationRun.id).where(old_runs)
    deleted["reconciliation_discrepancies"] = _delete_batches(
        engine,
        ReconciliationDiscrepancy,
        ReconciliationDiscrepancy.id,
        ReconciliationDiscrepancy.run_id.in_(old_run_ids),
    )
    deleted["reconciliation_runs"] = _delete_batches(engine, ReconciliationRun, ReconciliationRun.id, old_runs)
    deleted["recovery_events"] = _delete_batches(
        engine,
        RecoveryEvent,
        RecoveryEvent.id,
        and_(RecoveryEvent.detected_at < cutoff, RecoveryEvent.notified.is_(True)),
    )
    newer_bot_run = aliased(BotRun)
    deleted["bot_runs"] = _delete_batches(
        engine,
        BotRun,
        BotRun.id,
        and_(
            BotRun.last_heartbeat_at < cutoff,
            exists().where(newer_bot_run.bot == BotRun.bot, newer_bot_run.id > BotRun.id),
            ~exists().where(or_(RecoveryEvent.run_id == BotRun.id, RecoveryEvent.previous_run_id == BotRun.id)),
        ),
    )
    return deleted
