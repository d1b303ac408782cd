"""The order engine: working orders, submit and cancel through the gate, venue events, fills, positions and P&L."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from decimal import Decimal

from trading_ops.bot.broker import (
    Broker,
    BrokerError,
    Channel,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    VenueFill,
    VenueOrder,
    order_key,
)
from trading_ops.bot.cancels import Cancels
from trading_ops.bot.classify import ADJUSTMENT_LIQUIDITY
from trading_ops.bot.gate import REFUSED_JOURNAL, OrderGate, Refusal
from trading_ops.bot.journal import Journal, OrderUpdate
from trading_ops.bot.journal_health import is_journal_failure
from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.positions import Positions
from trading_ops.db.base import utcnow

log = logging.getLogger(__name__)

EXTERNAL_STRATEGY = "external"  # strategy recorded for orders adopted from the venue
# Rounds of "drain the venue, journal what was held back" before a reconciliation snapshot.
SETTLE_ROUNDS = 5
# The statuses that say the venue took an order (tradingbot_orders_acknowledged_total).
ACCEPTED = (OrderStatus.ACKNOWLEDGED, OrderStatus.PARTIALLY_FILLED)


class OrderEngine:
    """Owns what the bot has working on the venue: every order goes out through the gate and is journaled before it
    leaves; every venue event and fill is journaled and booked once (fills by trade id), and exported. During a
    reconciliation venue events wait (`reconciling`) and are applied after it, in arrival order. It is also the
    reconciliation's hooks (settle, adopt_*, adjust_position, fills_changed, halt).

    Two parts own a concern of their own beside it: `positions` (Positions: the book of what the bot holds, written
    with each fill, exported, restored) and `cancels` (Cancels: one order, all of the bot's, the lookups of an order of
    unknown outcome), which reads this engine's view of its orders. About 400 lines because submit and the two event
    streams must share that one view of every order (working, in flight, adopted, filled so far); splitting them would
    put it in two places. Its 29 public methods are the interfaces to it: the strategy's (submit, cancel,
    order_refusal, ...), the risk engine's (position, mark, open_order_count, ...), the venue's events (on_order,
    on_fill, on_quote and their apply_*), the reconciliation's hooks (settle, adopt_*, adjust_position, fills_changed,
    halt), the runtime's start (restore_book, adopt_open_orders) and stop (cancel_everything); those of the parts are
    a line each.
    """

    def __init__(
        self,
        broker: Broker,
        journal: Journal,
        metrics: BotMetrics,
        gate: OrderGate,
        *,
        order_id_prefix: str,
        strategy: str,
        symbols: Sequence[str],
        quote_asset: str,
        on_outcome_unknown: Callable[[], None],
        on_halt: Callable[[str], Awaitable[None]],
        on_applied: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.journal = journal
        self.metrics = metrics
        self.gate = gate
        self.strategy = strategy
        self.symbols = list(symbols)
        self.quote_asset = quote_asset
        self._on_outcome_unknown = on_outcome_unknown
        self._on_halt = on_halt
        # Called after venue events (and a reconciliation's adoptions) changed the book or the orders: the runtime
        # ends a flatten there, not a step later.
        self._on_applied = on_applied or (lambda: None)
        self.positions = Positions(broker, journal, metrics, gate, symbols=symbols, quote_asset=quote_asset)
        self.book = self.positions.book  # the parts' own, shared as they were (the loop and the strategy read them)
        self.orders: dict[str, VenueOrder] = {}  # working orders by key (the client order id, if they have one)
        self.order_sent_at: dict[str, float] = {}  # sent and not known closed: in flight until acknowledged
        self._sent: dict[str, OrderRequest] = {}  # what was sent, while its answer has not come (see in_flight)
        self.external_orders: set[str] = set()  # keys of working orders adopted from the venue (placed by hand)
        self._filled_seen: dict[str, Decimal] = {}  # quantity of the fills seen per working order (see apply_fill)
        self.quotes = self.positions.quotes
        self.reconciling = False
        self._deferred: list[VenueFill | VenueOrder] = []  # venue events that arrived during a reconciliation
        self._ids = itertools.count(1)
        self.id_prefix = f"{order_id_prefix}-{int(time.time() * 1000):x}"
        self.cancels = Cancels(
            broker,
            journal,
            metrics,
            orders=self.orders,
            sent_at=self.order_sent_at,
            id_prefix=self.id_prefix,
            apply_order=self.apply_order,
        )

    # -- what the risk engine reads (risk.Exposure) ---------------------------------------------------
    def position(self, symbol: str) -> Decimal:
        return self.book.position(symbol)

    def mark(self, symbol: str) -> Decimal | None:
        return self.book.marks.get(symbol)

    def open_order_count(self) -> int:
        """The orders working: acknowledged ones and those sent whose answer has not come (in flight)."""
        return len(self.orders.keys() | self.order_sent_at.keys())

    def in_flight(self) -> dict[str, OrderRequest]:
        """The orders sent whose answer has not come yet, by client order id: they count as working wherever "no
        working order" or "flat" decides anything (a flatten's end, a halt's status, the stop drill), until the
        venue's answer, an event or a lookup by client order id (outcome unknown) settles them."""
        return {key: request for key, request in self._sent.items() if key not in self.orders}

    def exposed_symbols(self) -> set[str]:
        held = {symbol for symbol, holding in self.book.holdings.items() if holding.quantity}
        working = {order.symbol for order in self.orders.values()}
        return held | working | {request.symbol for request in self.in_flight().values()}

    # -- orders ---------------------------------------------------------------------------------------
    def next_client_order_id(self) -> str:
        return f"{self.id_prefix}-{next(self._ids)}"

    def order_refusal(self, symbol: str, reduce_only: bool) -> str | None:
        """Why an order of this kind may not go out now (OrderGate), or None."""
        refusal = self.gate.refusal(symbol, reduce_only, self)
        return None if refusal is None else refusal.message

    async def submit(
        self,
        symbol: str,
        side: Side,
        order_type: OrderType,
        quantity: Decimal,
        price: Decimal | None = None,
        reduce_only: bool = False,
    ) -> VenueOrder | None:
        """Journal and send an order; None when it was refused (the gate, or a journal that cannot be written), the
        venue did not take it, or its answer was lost (the order is then tracked as in flight until reconciliation
        says what became of it)."""
        draft = OrderRequest("", symbol, side, order_type, quantity, price, reduce_only)
        refusal = self.gate.refusal(symbol, reduce_only, self, draft)
        if refusal is not None:
            self.gate.refuse(symbol, refusal)
            return None
        request = replace(draft, client_order_id=self.next_client_order_id())
        try:
            await self.journal.call(self.journal.order_submitted, request, self.strategy)
        except Exception as exc:
            if not is_journal_failure(exc):
                raise
            # Not journaled, so never sent: the gate refuses from now on (JournalHealth told it), this one included.
            self.gate.refuse(symbol, Refusal(REFUSED_JOURNAL, f"the journal cannot be written: {exc}"[:200]))
            return None
        # The gate again, after the last await before sending: a halt or pause may have come in meanwhile.
        refusal = self.gate.refusal(symbol, reduce_only, self, request)
        if refusal is not None:
            await self.journal.call(self.journal.order_failed, request.client_order_id, f"refused: {refusal.reason}")
            self.gate.refuse(symbol, refusal)
            return None
        self.order_sent_at[request.client_order_id] = time.monotonic()
        self._sent[request.client_order_id] = request
        self.gate.risk.sent()
        self.metrics.order_submitted(symbol, side.value, order_type.value, request.client_order_id)
        try:
            answer = await self._send(request)
            if answer is not None:
                await self._take_answer(answer)
        finally:
            # Answered (or its outcome unknown: then tracked in `orders` until a lookup or a reconciliation settles
            # it; or closed already by its events): no longer in flight.
            self._sent.pop(request.client_order_id, None)
        return answer

    async def _take_answer(self, answer: VenueOrder) -> None:
        """The venue's answer to a submit is its word on the order: one it took and left open is working from now
        on, whether or not its event came first. A broker whose events arrive after the answer (a stream, a poll)
        left it in flight only until then: not in `orders` (nor the status's open orders) while resting on the
        venue, and a halt in that moment showed a bot with no working order and one left on the venue. Any other
        answer (filled at once, rejected; new, not yet taken) is left to the events, which bring its fills with it."""
        if answer.status not in ACCEPTED:
            return
        known = self.orders.get(answer.key)
        if known is not None and (known.status, known.filled_quantity) == (answer.status, answer.filled_quantity):
            return  # its event came first (a venue that delivers them with the answer): nothing new
        try:
            await self.apply_order(answer)
        except Exception as exc:  # placed all the same: it stays in flight until its event or a reconciliation
            if not is_journal_failure(exc):
                log.exception("order %s placed; taking in the venue's answer failed", answer.key)
            else:
                log.warning("order %s placed; the venue's answer not journaled (%s)", answer.key, exc)

    async def _send(self, request: OrderRequest) -> VenueOrder | None:
        """Send a journaled order to the venue; None when the venue did not take it or its answer was lost."""
        symbol = request.symbol
        try:
            return await self.broker.submit(request)
        except BrokerError as exc:
            self.metrics.venue_error(exc.error_class)
            if exc.outcome_unknown:
                self._outcome_unknown(request, f"{exc.error_class}: {exc}")
                return None
            self.metrics.order_rejected(symbol, exc.error_class, request.client_order_id)
            self.order_sent_at.pop(request.client_order_id, None)
            await self.journal.call(self.journal.order_failed, request.client_order_id, exc.error_class)
            log.info("order %s not placed: %s (%s)", request.client_order_id, exc, exc.error_class)
            return None
        except Exception as exc:  # our own event handling failed while the venue took the order (a journal write)
            log.exception("order %s: handling the venue's answer failed", request.client_order_id)
            self._outcome_unknown(request, f"{type(exc).__name__}: {exc}")
            return None
        except BaseException:  # cancelled while the request was out: it may have reached the venue
            self._outcome_unknown(request, "cancelled while in flight")
            raise

    def _outcome_unknown(self, request: OrderRequest, why: str) -> None:
        """A submission that may have reached the venue: its journal row stays open (new), the bot keeps tracking
        it (its symbol counts as working, cancel_all and the kill switch cancel it) and asks for a reconciliation,
        which adopts the venue's view of it or closes it as vanished."""
        key = request.client_order_id
        self.metrics.order_outcome_unknown(request.symbol)
        log.warning("order %s: outcome unknown (%s); tracked until reconciliation settles it", key, why)
        if key not in self.order_sent_at:
            return  # an event closed it meanwhile: nothing is unknown any more
        if key not in self.orders:
            self.orders[key] = VenueOrder(
                client_order_id=key,
                venue_order_id="",
                symbol=request.symbol,
                side=request.side,
                order_type=request.order_type,
                quantity=request.quantity,
                price=request.price,
                filled_quantity=Decimal(0),
                status=OrderStatus.NEW,
            )
        self._on_outcome_unknown()

    async def cancel(self, key: str, order: VenueOrder | None = None) -> bool:
        """Cancel a working order by its key; `order` is the venue's view of one the bot does not track (yet)
        (Cancels.cancel)."""
        return await self.cancels.cancel(key, order)

    async def own_open_orders(self) -> list[VenueOrder]:
        """The venue's open orders that are this bot's (Cancels.own_open_orders)."""
        return await self.cancels.own_open_orders()

    async def cancel_all(self) -> int:
        """Cancel every open order of the bot on the venue once (Cancels.cancel_all)."""
        return await self.cancels.cancel_all()

    async def cancel_everything(self, budget: float) -> tuple[int, list[str]]:
        """cancel_all until the venue lists none of the bot's orders, for up to `budget` seconds
        (Cancels.cancel_everything)."""
        return await self.cancels.cancel_everything(budget)

    async def flatten_step(self) -> None:
        """One step of `flatten`: cancel every working limit order (adopted ones too), then close each position
        that has no order still working on its symbol with a reduce-only market order."""
        for key, order in list(self.orders.items()):
            if order.order_type is OrderType.LIMIT:
                await self.cancel(key)
        working = {o.symbol for o in self.orders.values()}
        for symbol in self.symbols:
            position = self.book.position(symbol)
            if position and symbol not in working:
                side = Side.SELL if position > 0 else Side.BUY
                await self.submit(symbol, side, OrderType.MARKET, abs(position), reduce_only=True)

    # -- venue events ---------------------------------------------------------------------------------
    async def on_order(self, order: VenueOrder) -> None:
        if self.reconciling:
            self._deferred.append(order)
            return
        await self.apply_order(order)
        self._on_applied()

    async def apply_order(self, order: VenueOrder) -> None:
        key = order.key
        # The journal decides whether the update is news: one it already holds (the event and the request's answer
        # both tell it) or one older than what it holds (events arrive out of order; reconciliation may have
        # adopted a later state) changes nothing, here either.
        outcome = await self.journal.call(self.journal.order_update, order)
        if outcome is OrderUpdate.UNKNOWN:
            log.warning("order update for an order this bot did not place: %s", key)
            return
        if outcome is not OrderUpdate.APPLIED or (key not in self.orders and key not in self.order_sent_at):
            return
        m = self.metrics
        if order.status is OrderStatus.REJECTED:
            m.order_rejected(order.symbol, order.reject_reason or "unknown", key)
        elif order.status is OrderStatus.CANCELED:
            m.order_canceled(order.symbol, key)
        elif order.status in ACCEPTED and (key not in self.orders or not self.orders[key].venue_order_id):
            # The first word that the venue took it: its acknowledgement, or a submit's answer (or a poll) that
            # found it partly filled already (the acknowledgement's event, coming after, is then stale).
            m.order_acknowledged(order.symbol, order.side.value, order.order_type.value, key)
        if order.status.is_open:
            # The venue's view, with the largest filled quantity known (a fill may have been seen before it).
            order.filled_quantity = max(order.filled_quantity, self._filled_seen.get(key, Decimal(0)))
            self.orders[key] = order
        else:
            self._forget(key)

    def _forget(self, key: str) -> None:
        """The order is closed: no longer working, in flight or adopted."""
        self.cancels.forget(key)
        self.orders.pop(key, None)
        self.order_sent_at.pop(key, None)
        self._sent.pop(key, None)
        self.external_orders.discard(key)
        self._filled_seen.pop(key, None)

    async def on_fill(self, fill: VenueFill) -> None:
        if self.reconciling:
            self._deferred.append(fill)
            return
        await self.apply_fill(fill)
        self._on_applied()

    async def apply_fill(self, fill: VenueFill, adjustment: bool = False) -> bool:
        """Book and journal a fill (with its position, balance changes and realized P&L, in one transaction) and
        export it; False when its trade id is already journaled (a fill delivered twice counts once).

        One fill at a time: the book changes, the journal write, and the book is put back as it was when the write
        fails (a duplicate, or a database error: then the fill is in neither, and reconciliation adopts it once).
        """
        if not await self.positions.book_fill(fill, adjustment):
            return False
        if adjustment:
            self.export_pnl()
            return True
        key = order_key(fill.client_order_id, fill.venue_order_id)
        order = self.orders.get(key)
        done = False
        if order is not None or key in self.order_sent_at:
            self._filled_seen[key] = self._filled_seen.get(key, Decimal(0)) + fill.quantity
        if order is not None:
            # Fills add up; an order update carries the venue's cumulative quantity, and may come before the fill
            # it reports: the larger of the two is what is known to be filled, never their sum.
            order.filled_quantity = max(order.filled_quantity, self._filled_seen[key])
            done = order.filled_quantity >= order.quantity
            if done:
                self._forget(key)
        self.metrics.order_filled(
            fill.symbol,
            fill.side.value,
            float(fill.quantity),
            float(fill.price),
            float(fill.fee),
            fill.liquidity,
            order_type=order.order_type.value if order else "limit",
            client_order_id=fill.client_order_id,
            order_done=done or order is None,
        )
        self.positions.export_position(fill.symbol)
        if self.broker.is_connected(Channel.ORDERS):
            own = self.broker.balance_assets()  # on a shared account, the quote asset is no one bot's to export
            for asset, total in (await self.broker.balances()).items():
                if own is None or asset in own:
                    self.metrics.balance(asset, float(total))
        self.export_pnl()
        return True

    def split_symbol(self, symbol: str) -> tuple[str, str]:
        return self.positions.split_symbol(symbol)

    async def on_quote(self, quote: Quote) -> None:
        self.positions.on_quote(quote)

    def export_pnl(self) -> None:
        """Positions and P&L as metrics, and the day's loss and the equity to the risk engine (Positions)."""
        self.positions.export_pnl()

    # -- reconciliation hooks (trading_ops.bot.reconciliation.ReconciliationHooks) ---------------------
    async def settle(self) -> None:
        """Before a snapshot: let the venue hand over every event it produced, and journal those held back."""
        for _ in range(SETTLE_ROUNDS):
            await self.broker.drain_events()
            if not self._deferred:
                return
            await self.apply_deferred()
        log.warning("venue events kept arriving while settling for a reconciliation snapshot")

    async def apply_deferred(self) -> None:
        while self._deferred:
            event = self._deferred.pop(0)
            if isinstance(event, VenueFill):
                await self.apply_fill(event)
            else:
                await self.apply_order(event)
        self._on_applied()

    async def adopt_fill(self, fill: VenueFill) -> bool:
        adopted = await self.apply_fill(fill)
        self._on_applied()
        return adopted

    async def adopt_order(self, order: VenueOrder) -> None:
        """An order the bot did not place (or whose state it missed) takes the venue's state. One adopted from the
        venue is the bot's responsibility from now on: cancel_all, the kill switch, flatten and the shutdown's
        cancel policy cancel it; a strategy sees it only among all working orders (see StrategyContext)."""
        key = order.key
        row = await self.journal.call(self.journal.upsert_order, order, EXTERNAL_STRATEGY)
        if order.status.is_open:
            self.orders[key] = order
            self.order_sent_at.setdefault(key, time.monotonic())
            if row.strategy == EXTERNAL_STRATEGY:
                self.external_orders.add(key)
        else:
            self._forget(key)
            self.metrics.order_closed(key)
        self._on_applied()

    async def adjust_position(self, symbol: str, quantity: Decimal, reference: str) -> None:
        holding = self.book.holding(symbol)
        price = holding.average_price or self.book.marks.get(symbol) or Decimal(0)
        fill = VenueFill(
            trade_id=reference[:64],
            client_order_id=None,
            venue_order_id="reconciliation",
            symbol=symbol,
            side=Side.BUY if quantity > 0 else Side.SELL,
            quantity=abs(quantity),
            price=price,
            fee=Decimal(0),
            fee_asset=self.quote_asset,
            liquidity=ADJUSTMENT_LIQUIDITY,
            executed_at=utcnow(),
        )
        await self.apply_fill(fill, adjustment=True)

    async def fills_changed(self, symbols: list[str]) -> None:
        """Fill rows of `symbols` were removed from the journal: their positions replayed, the book taken again."""
        await self.positions.rebuild(symbols)

    async def halt(self, reason: str) -> None:
        await self._on_halt(reason)

    # -- start ----------------------------------------------------------------------------------------
    async def restore_book(self) -> None:
        """Take positions and today's realized P&L from the journal (Positions.restore)."""
        await self.positions.restore()

    async def adopt_open_orders(self) -> None:
        """Journaled orders the venue still works are this bot's again (their ages restart now)."""
        venue_open = {o.key: o for o in await self.broker.open_orders()}
        for order in await self.journal.call(self.journal.open_orders):
            key = order.client_order_id
            if key in venue_open:
                self.orders[key] = venue_open[key]
                self.order_sent_at[key] = time.monotonic()
                if order.strategy == EXTERNAL_STRATEGY:
                    self.external_orders.add(key)
