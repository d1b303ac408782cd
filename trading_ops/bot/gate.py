"""The order gate: the last check before an order leaves, in one place for every bot on the runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from trading_ops.bot.broker import OrderRequest
from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.risk import Breach, Exposure, RiskEngine
from trading_ops.bot.state import StateMachine

log = logging.getLogger(__name__)

# Why the bot itself kept an order from the venue (the `reason` of tradingbot_orders_refused_total); a risk limit's
# refusal is `risk_<limit>` (trading_ops.bot.risk).
REFUSED_SHUTTING_DOWN = "shutting_down"
REFUSED_STARTUP = "startup_reconciliation"
REFUSED_STATE = "trading_state"
REFUSED_RECONNECT = "reconnect_reconciliation"
REFUSED_STALE = "stale_market_data"
REFUSED_JOURNAL = "journal"
REFUSED_JOURNAL_RECONCILIATION = "journal_reconciliation"
REFUSED_INSTANCE_LOCK = "instance_lock"
REFUSED_ORDER_COUNT = "venue_order_count"
# New risk stops once no more than this share of the venue's limit on new orders is left (Binance: 10 of its 100 orders
# per 10 s): the rest is kept for reduce-only orders (a flatten's, one per symbol, and their retries), which the
# venue counts too. Cancels are not new orders on any venue: they always go. Past the limit Binance answers -1015 and
# takes no order at all, reducing included, until its window ends.
ORDER_COUNT_FLOOR = 0.1


@dataclass(frozen=True)
class Refusal:
    reason: str  # the metric's label
    message: str
    breach: Breach | None = None  # a risk limit the order would cross


class OrderGate:
    """Says whether an order may go out now: shutdown, a journal that cannot be written, the safe-start gate, the
    trading state, a reconciliation still due after a reconnect or after the journal came back, market data
    freshness, then the risk limits.

    Every order is journaled before it leaves, so while the journal cannot be written (`journal_failing`) none may
    go, reduce-only ones included (cancels are not orders: they still go). Nor while the single-instance lock is not
    known held on the database the journal writes to (`instance_lock()` says why: the database reconnected, after a
    restart or a failover, and the lock was not confirmed there yet, or another instance holds it): two processes
    must never trade one account, reducing included. Once it can be written again, fills and
    order events may have been missed meanwhile: as after a reconnect, no order that can add risk goes out until a
    reconciliation that started after it came back passes (`journal_reconcile_pending`).

    Nothing goes out while shutting down or before a startup reconciliation passed (the journal may not know what
    the bot holds). The trading state decides next (`TradingState.may_submit`: nothing while paused or halted,
    only reduce-only orders while reduce_only or flattening). An order that can add risk also needs a book the
    bot can trust (after the orders channel dropped, the reconciliation that follows the reconnect must pass
    first: fills may have been missed meanwhile) and fresh market data for its symbol. A reduce-only order needs
    neither (the venue lets it only shrink a position, and flattening during a market-data outage is exactly what
    an operator may need). Nor while the venue's room for new orders is down to ORDER_COUNT_FLOOR (`order_headroom`,
    Binance's order counts: past them the venue takes no order at all, reduce-only ones included, for the rest of its
    window). Last come the risk limits (RiskEngine.check).
    """

    def __init__(
        self,
        state: StateMachine,
        metrics: BotMetrics,
        risk: RiskEngine,
        market_data_stale: Callable[[str], bool],
        instance_lock: Callable[[], str | None] = lambda: None,
        order_headroom: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.risk = risk
        self.market_data_stale = market_data_stale
        self.instance_lock = instance_lock
        self.order_headroom = order_headroom  # the venue's room for new orders (Broker.order_count_headroom)
        self.accepting = True  # False once shutting down: no new orders
        self.trading_allowed = False  # the safe-start gate: opened by the first clean or resolved reconciliation
        # The orders channel dropped: fills may have been missed, so the book may be stale. No order that can add
        # risk goes out until a reconciliation that started after the reconnect passes.
        self.reconnect_pending = False
        self.stopping = False  # refusals while stopping are expected: logged quietly
        self.journal_failing: str | None = None  # why the journal cannot be written now, or None
        self.journal_reconcile_pending = False  # written again: new risk waits for a reconciliation

    def refusal(
        self, symbol: str, reduce_only: bool, book: Exposure, request: OrderRequest | None = None
    ) -> Refusal | None:
        """Why this order may not go out now, or None. Without `request`: whether an order of this kind may."""
        refusal = self._bot_refusal(reduce_only)
        if refusal is None and not reduce_only:
            refusal = self._new_risk_refusal(symbol)
        if refusal is not None:
            return refusal
        breach = self.risk.check(symbol, reduce_only, request, book)
        if breach is not None:
            return Refusal(breach.reason, breach.message, breach)
        return None

    def _bot_refusal(self, reduce_only: bool) -> Refusal | None:
        """Why the bot sends no order of this kind now (shutting down, journal, single-instance lock, safe start, its
        trading state)."""
        if not self.accepting:
            return Refusal(REFUSED_SHUTTING_DOWN, "shutting down")
        if self.journal_failing is not None:
            return Refusal(REFUSED_JOURNAL, f"the journal cannot be written ({self.journal_failing})")
        lock_problem = self.instance_lock()
        if lock_problem is not None:
            return Refusal(REFUSED_INSTANCE_LOCK, lock_problem)
        if not self.trading_allowed:
            return Refusal(REFUSED_STARTUP, "the startup reconciliation has not passed")
        state_refusal = self.state.order_refusal(reduce_only)
        return None if state_refusal is None else Refusal(REFUSED_STATE, state_refusal)

    def _new_risk_refusal(self, symbol: str) -> Refusal | None:
        """Why no order that can add risk on `symbol` goes out now (a reconciliation owed, stale market data, the
        venue's order count near its limit)."""
        if self.journal_reconcile_pending:
            return Refusal(
                REFUSED_JOURNAL_RECONCILIATION,
                "the reconciliation after the journal could be written again has not passed",
            )
        if self.reconnect_pending:
            return Refusal(REFUSED_RECONNECT, "the reconciliation after the orders channel reconnected has not passed")
        if self.market_data_stale(symbol):
            return Refusal(REFUSED_STALE, f"market data for {symbol} is stale")
        headroom = self.order_headroom()
        if headroom is not None and headroom <= ORDER_COUNT_FLOOR:
            return Refusal(
                REFUSED_ORDER_COUNT,
                f"the venue's order count is near its limit ({headroom:.0%} left; "
                f"the last {ORDER_COUNT_FLOOR:.0%} is kept for reduce-only orders)",
            )
        return None

    def refuse(self, symbol: str, refusal: Refusal) -> None:
        """Count and log an order the gate kept back; a risk limit's breach restricts the bot at once."""
        self.metrics.order_refused(symbol, refusal.reason)
        log.log(logging.INFO if self.stopping else logging.WARNING, "order for %s refused: %s", symbol, refusal.message)
        if refusal.breach is not None:
            self.risk.breached(refusal.breach)
