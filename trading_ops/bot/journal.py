"""The bot's journal: orders, fills, positions and balances written to the database as they happen."""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, delete, event, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from trading_ops.bot.book import Holding, total
from trading_ops.bot.broker import OrderRequest, OrderStatus, Side, VenueFill, VenueOrder
from trading_ops.bot.journal_health import JournalHealth, is_journal_failure
from trading_ops.db.base import make_sessionmaker, utcnow
from trading_ops.db.models import Balance, EquityPeak, Fill, Order, Position

log = logging.getLogger(__name__)
T = TypeVar("T")
# Rows per IN (...) query: well under SQLite's bound-parameter limit.
IN_CHUNK = 500
# Fill rows read per round trip when positions are rebuilt from the whole history (memory stays flat).
REPLAY_BATCH = 1000


class OrderUpdate(enum.StrEnum):
    """What `Journal.order_update` did with an order update from the venue."""

    APPLIED = "applied"
    UNCHANGED = "unchanged"  # what the journal already holds (an event and the request's answer both told it)
    STALE = "stale"  # older than what is journaled (events can arrive out of order): ignored
    UNKNOWN = "unknown"  # an order the bot never placed


@dataclass(frozen=True)
class BookState:
    """What a bot's book starts from: the journaled positions and the realized P&L of the last UTC day with fills
    (`realized_on_day` None when some of that day's fills were journaled without their realized P&L)."""

    holdings: dict[str, Holding]
    day: date | None
    realized_on_day: Decimal | None


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


class Journal:
    """Synchronous writes, one transaction per event; `call` runs them in order on one worker thread so the
    event loop never waits on the disk.

    Every call reports to `health` (JournalHealth): one that fails on the database or its storage makes the journal
    failing; one that committed a transaction makes it writable again. A commit is seen on the engine (any writer
    on the journal's thread: the journal's own methods and the recovery store's heartbeat alike).

    Over 400 lines and 20 public methods because it is every table a bot writes as it trades (orders, fills,
    positions, balances, equity peaks), one small method each, all on its one worker thread and one session factory:
    callers run its bound methods through `call`, in order with every other write. The run records, the heartbeat and
    the reconciliations' tables are apart (recovery_store.py), and so is its health (journal_health.py)."""

    def __init__(self, engine: Engine, bot: str, venue: str, health: JournalHealth | None = None) -> None:
        self.engine = engine
        self.bot = bot
        self.venue = venue
        self.health = health if health is not None else JournalHealth(venue=venue)
        self._sessions = make_sessionmaker(engine, immediate=True)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._local = threading.local()  # commits seen on this thread during the current call
        event.listen(engine, "commit", self._committed)

    def _committed(self, _conn: Any) -> None:
        self._local.commits = getattr(self._local, "commits", 0) + 1

    def _counted(self, fn: Callable[..., T], *args: Any) -> tuple[T, bool]:
        """Run `fn` on the journal's thread; also whether it committed a transaction (a write landed)."""
        self._local.commits = 0
        result = fn(*args)
        return result, self._local.commits > 0

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a journal method on the journal's own thread, in submission order."""
        try:
            result, wrote = await asyncio.get_running_loop().run_in_executor(self._executor, self._counted, fn, *args)
        except Exception as exc:
            if is_journal_failure(exc):
                self.health.failed(exc)
            raise
        if wrote:
            self.health.wrote()
        return result

    def close(self, wait: bool = True) -> None:
        """Stop the worker thread; without `wait`, drop queued writes and leave a stuck write behind."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
        if event.contains(self.engine, "commit", self._committed):
            event.remove(self.engine, "commit", self._committed)

    # -- orders ---------------------------------------------------------------------------------------
    def order_submitted(self, request: OrderRequest, strategy: str) -> None:
        with self._sessions.begin() as session:
            session.add(
                Order(
                    bot=self.bot,
                    client_order_id=request.client_order_id,
                    venue=self.venue,
                    symbol=request.symbol,
                    side=request.side.value,
                    order_type=request.order_type.value,
                    quantity=request.quantity,
                    price=request.price,
                    filled_quantity=Decimal(0),
                    status=OrderStatus.NEW.value,
                    strategy=strategy,
                )
            )

    def order_update(self, order: VenueOrder) -> OrderUpdate:
        """Store the venue's view of an order the bot knows, unless it is older than what is journaled: an update
        never moves an order back in its lifecycle (a closed order never reopens, a partial fill never shrinks).
        Reconciliation, which adopts the venue's current state, uses `upsert_order` instead."""
        with self._sessions.begin() as session:
            row = session.scalars(
                select(Order).where(Order.bot == self.bot, Order.client_order_id == order.key)
            ).one_or_none()
            if row is None:
                return OrderUpdate.UNKNOWN
            current = OrderStatus(row.status)
            if order.status is current and order.filled_quantity == row.filled_quantity:
                if order.venue_order_id and row.venue_order_id != order.venue_order_id:
                    row.venue_order_id = order.venue_order_id
                return OrderUpdate.UNCHANGED
            if (
                order.status.rank < current.rank
                or (not current.is_open and order.status is not current)
                or order.filled_quantity < row.filled_quantity
            ):
                log.info(
                    "order %s: update %s %s is older than the journal's %s %s; ignored",
                    order.key,
                    order.status.value,
                    order.filled_quantity,
                    row.status,
                    row.filled_quantity,
                )
                return OrderUpdate.STALE
            row.venue_order_id = order.venue_order_id
            row.status = order.status.value
            row.filled_quantity = order.filled_quantity
            if order.reject_reason:
                row.reject_reason = order.reject_reason[:64]
            return OrderUpdate.APPLIED

    def order_failed(self, client_order_id: str, reason: str) -> None:
        """The order is certainly not on the venue: it refused the submission (rate limited, bad request...) or the
        bot never sent it. A submission whose answer was lost is not that: its order stays open (new) until
        reconciliation finds out."""
        with self._sessions.begin() as session:
            row = session.scalars(
                select(Order).where(Order.bot == self.bot, Order.client_order_id == client_order_id)
            ).one_or_none()
            if row is not None:
                row.status = OrderStatus.REJECTED.value
                row.reject_reason = reason[:64]

    def upsert_order(self, order: VenueOrder, strategy: str) -> Order:
        """Store the venue's view of an order, creating its row for one the bot did not place (adopted). The row's
        client order id is the order's key: `venue:<venue order id>` for an order placed without one."""
        with self._sessions.begin() as session:
            row = session.scalars(
                select(Order).where(Order.bot == self.bot, Order.client_order_id == order.key)
            ).one_or_none()
            if row is None:
                row = Order(
                    bot=self.bot,
                    client_order_id=order.key,
                    venue=self.venue,
                    symbol=order.symbol,
                    side=order.side.value,
                    order_type=order.order_type.value,
                    quantity=order.quantity,
                    price=order.price,
                    filled_quantity=order.filled_quantity,
                    status=order.status.value,
                    strategy=strategy,
                )
                session.add(row)
            row.venue_order_id = order.venue_order_id
            row.status = order.status.value
            row.filled_quantity = order.filled_quantity
            if order.reject_reason:
                row.reject_reason = order.reject_reason[:64]
            return row

    def orders_by_client_id(self, client_order_ids: list[str]) -> list[Order]:
        """Orders by client order id (order keys, for orders adopted without one)."""
        rows: list[Order] = []
        with self._sessions() as session:
            for i in range(0, len(client_order_ids), IN_CHUNK):
                chunk = client_order_ids[i : i + IN_CHUNK]
                rows.extend(
                    session.scalars(select(Order).where(Order.bot == self.bot, Order.client_order_id.in_(chunk)))
                )
        return rows

    def open_orders(self) -> list[Order]:
        open_states = [s.value for s in OrderStatus if s.is_open]
        with self._sessions() as session:
            return list(session.scalars(select(Order).where(Order.bot == self.bot, Order.status.in_(open_states))))

    # -- fills and positions --------------------------------------------------------------------------
    def fill(
        self,
        fill: VenueFill,
        position: tuple[Decimal, Decimal, Decimal] | None,
        balance_changes: dict[str, Decimal] | None = None,
        realized: Decimal | None = None,
    ) -> bool:
        """Record a fill once (by trade id) with the resulting position (quantity, average price, realized
        P&L), the balance changes it makes and the P&L it realized, in the same transaction. Returns False when
        the trade id was already journaled."""
        try:
            with self._sessions.begin() as session:
                session.add(
                    Fill(
                        bot=self.bot,
                        venue=self.venue,
                        trade_id=fill.trade_id,
                        client_order_id=fill.client_order_id,
                        venue_order_id=fill.venue_order_id,
                        symbol=fill.symbol,
                        side=fill.side.value,
                        quantity=fill.quantity,
                        price=fill.price,
                        fee=fill.fee,
                        fee_asset=fill.fee_asset,
                        liquidity=fill.liquidity,
                        executed_at=fill.executed_at,
                        realized_pnl=realized,
                    )
                )
                session.flush()
                if position is not None:
                    self._upsert_position(session, fill.symbol, *position)
                if balance_changes:
                    self._change_balances(session, balance_changes)
        except IntegrityError:
            log.warning("fill %s already journaled; ignored", fill.trade_id)
            return False
        return True

    def has_fill(self, trade_id: str) -> bool:
        with self._sessions() as session:
            found = session.scalars(
                select(Fill.id).where(Fill.bot == self.bot, Fill.venue == self.venue, Fill.trade_id == trade_id)
            ).first()
            return found is not None

    def known_trade_ids(self, trade_ids: list[str]) -> set[str]:
        """The trade ids among `trade_ids` that are journaled."""
        known: set[str] = set()
        with self._sessions() as session:
            for i in range(0, len(trade_ids), IN_CHUNK):
                chunk = trade_ids[i : i + IN_CHUNK]
                known.update(
                    session.scalars(
                        select(Fill.trade_id).where(
                            Fill.bot == self.bot, Fill.venue == self.venue, Fill.trade_id.in_(chunk)
                        )
                    )
                )
        return known

    def duplicate_fills(self) -> list[Fill]:
        """Every row of a trade id journaled more than once (the unique key makes this empty unless it was
        dropped or rows were copied in by hand), oldest row first."""
        with self._sessions() as session:
            twice = (
                select(Fill.trade_id)
                .where(Fill.bot == self.bot, Fill.venue == self.venue)
                .group_by(Fill.trade_id)
                .having(func.count() > 1)
            )
            return list(
                session.scalars(
                    select(Fill)
                    .where(Fill.bot == self.bot, Fill.venue == self.venue, Fill.trade_id.in_(twice))
                    .order_by(Fill.trade_id, Fill.id)
                )
            )

    def remove_fill_rows(self, ids: list[int], balance_changes: dict[str, Decimal] | None = None) -> None:
        """Delete fill rows (extra copies of a trade) and apply `balance_changes` (what undoes them) at once."""
        with self._sessions.begin() as session:
            session.execute(delete(Fill).where(Fill.bot == self.bot, Fill.id.in_(ids)))
            if balance_changes:
                self._change_balances(session, balance_changes)

    def fills(self) -> list[Fill]:
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(Fill)
                    .where(Fill.bot == self.bot, Fill.venue == self.venue)
                    .order_by(Fill.executed_at, Fill.id)
                )
            )

    def book_state(self) -> BookState:
        """Positions as journaled with each fill, and the realized P&L of the last day that has fills: what a
        restart needs, read in time independent of the length of the history."""
        with self._sessions() as session:
            holdings = {
                row.symbol: Holding(row.quantity, row.average_price, row.realized_pnl)
                for row in session.scalars(
                    select(Position).where(Position.bot == self.bot, Position.venue == self.venue)
                )
            }
            last = session.scalar(
                select(func.max(Fill.executed_at)).where(Fill.bot == self.bot, Fill.venue == self.venue)
            )
            if last is None:
                return BookState(holdings, None, Decimal(0))
            day = last.astimezone(UTC).date() if last.tzinfo else last.date()
            start, end = day_bounds(day)
            values = list(
                session.scalars(
                    select(Fill.realized_pnl)
                    .where(
                        Fill.bot == self.bot,
                        Fill.venue == self.venue,
                        Fill.executed_at >= start,
                        Fill.executed_at < end,
                    )
                    # In the order the book applied them: a sum of 28-digit decimals rounds by its order.
                    .order_by(Fill.id)
                )
            )
        if any(v is None for v in values):
            return BookState(holdings, day, None)
        return BookState(holdings, day, total(v for v in values if v is not None))

    def rebuild_positions(self, symbols: list[str] | None = None) -> list[str]:
        """Replay the fills of `symbols` (every symbol with fills when None) in execution order: store each fill's
        realized P&L where it differs and the resulting positions, in one transaction. For repairs (fill rows
        removed, fills journaled before their realized P&L was stored): it reads the whole history of those
        symbols, in batches. Returns the symbols rebuilt."""
        with self._sessions.begin() as session:
            if symbols is None:
                symbols = sorted(
                    session.scalars(
                        select(Fill.symbol).where(Fill.bot == self.bot, Fill.venue == self.venue).distinct()
                    )
                )
            for symbol in symbols:
                holding = Holding()
                after: tuple[datetime, int] | None = None
                while True:
                    query = (
                        select(
                            Fill.id, Fill.side, Fill.quantity, Fill.price, Fill.fee, Fill.realized_pnl, Fill.executed_at
                        )
                        .where(Fill.bot == self.bot, Fill.venue == self.venue, Fill.symbol == symbol)
                        .order_by(Fill.executed_at, Fill.id)
                        .limit(REPLAY_BATCH)
                    )
                    if after is not None:  # keyset pagination: the rows after the last one read
                        at, row_id = after
                        query = query.where(or_(Fill.executed_at > at, and_(Fill.executed_at == at, Fill.id > row_id)))
                    batch = session.execute(query).all()
                    if not batch:
                        break
                    changed = []
                    for row_id, side, quantity, price, fee, stored, _ in batch:
                        realized = holding.apply(Side(side).sign * quantity, price, fee)
                        if stored != realized:
                            changed.append({"id": row_id, "realized_pnl": realized})
                    if changed:
                        session.execute(update(Fill), changed)
                    after = (batch[-1].executed_at, batch[-1].id)
                self._upsert_position(session, symbol, holding.quantity, holding.average_price, holding.realized_pnl)
        return symbols

    def positions(self) -> dict[str, Position]:
        with self._sessions() as session:
            rows = session.scalars(select(Position).where(Position.bot == self.bot, Position.venue == self.venue))
            return {row.symbol: row for row in rows}

    def set_position(self, symbol: str, quantity: Decimal, average_price: Decimal, realized_pnl: Decimal) -> None:
        with self._sessions.begin() as session:
            self._upsert_position(session, symbol, quantity, average_price, realized_pnl)

    def _upsert_position(
        self, session: Any, symbol: str, quantity: Decimal, average_price: Decimal, realized_pnl: Decimal
    ) -> None:
        row = session.scalars(
            select(Position).where(Position.bot == self.bot, Position.venue == self.venue, Position.symbol == symbol)
        ).one_or_none()
        if row is None:
            row = Position(bot=self.bot, venue=self.venue, symbol=symbol)
            session.add(row)
        row.quantity = quantity
        row.average_price = average_price
        row.realized_pnl = realized_pnl
        row.updated_at = utcnow()

    def _change_balances(self, session: Any, changes: dict[str, Decimal]) -> None:
        rows = {
            row.asset: row
            for row in session.scalars(
                select(Balance).where(
                    Balance.bot == self.bot, Balance.venue == self.venue, Balance.asset.in_(list(changes))
                )
            )
        }
        for asset, change in changes.items():
            row = rows.get(asset)
            if row is None:
                session.add(Balance(bot=self.bot, venue=self.venue, asset=asset, total=change))
            else:
                row.total = row.total + change
                row.updated_at = utcnow()

    def balances(self) -> dict[str, Decimal]:
        with self._sessions() as session:
            rows = session.scalars(select(Balance).where(Balance.bot == self.bot, Balance.venue == self.venue))
            return {row.asset: row.total for row in rows}

    def equity_peaks(self) -> dict[datetime, Decimal]:
        """The highest equity of each journaled bucket of the drawdown window, by the bucket's start."""
        with self._sessions() as session:
            rows = session.scalars(select(EquityPeak).where(EquityPeak.bot == self.bot, EquityPeak.venue == self.venue))
            return {row.bucket_start: row.equity for row in rows}

    def save_equity_peaks(self, peaks: dict[datetime, Decimal], older_than: datetime) -> None:
        """Store the highest equity of these buckets (a bucket's value only rises) and delete the buckets that
        start before `older_than` (out of the window), in one transaction."""
        with self._sessions.begin() as session:
            session.execute(
                delete(EquityPeak).where(
                    EquityPeak.bot == self.bot, EquityPeak.venue == self.venue, EquityPeak.bucket_start < older_than
                )
            )
            rows = {
                row.bucket_start: row
                for row in session.scalars(
                    select(EquityPeak).where(
                        EquityPeak.bot == self.bot,
                        EquityPeak.venue == self.venue,
                        EquityPeak.bucket_start.in_(list(peaks)),
                    )
                )
            }
            for start, equity in peaks.items():
                row = rows.get(start)
                if row is None:
                    session.add(EquityPeak(bot=self.bot, venue=self.venue, bucket_start=start, equity=equity))
                elif equity > row.equity:
                    row.equity = equity

    def flush(self) -> None:
        """Nothing to do: awaiting `call(journal.flush)` returns once every earlier write has landed."""

    def set_balances(self, balances: dict[str, Decimal]) -> None:
        """Make the journal's balances exactly `balances`: an asset it lists that `balances` omits is zero now
        (venues leave zero balances out), so adopting the same balances twice changes nothing."""
        with self._sessions.begin() as session:
            existing = {
                row.asset: row
                for row in session.scalars(select(Balance).where(Balance.bot == self.bot, Balance.venue == self.venue))
            }
            for asset in sorted(set(existing) | set(balances)):
                total = balances.get(asset, Decimal(0))
                row = existing.get(asset)
                if row is None:
                    session.add(Balance(bot=self.bot, venue=self.venue, asset=asset, total=total))
                elif row.total != total:
                    row.total = total
                    row.updated_at = utcnow()
