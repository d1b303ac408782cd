"""The kill switch: halt, then sweep every working order off the venue, now or once the venue can be reached."""

from __future__ import annotations

import logging
import time

from trading_ops.bot.broker import BrokerError, Channel
from trading_ops.bot.orders import OrderEngine
from trading_ops.bot.state import StateMachine, TradingState
from trading_ops.bot.trade_lock import TradeLock

log = logging.getLogger(__name__)

# Cancels the venue refused (rate limit) are retried for up to this long on a halt.
KILL_SWITCH_CANCEL_SECONDS = 2.0
# A halt waits this long for the strategy step in progress (it may be sending an order) before it sweeps; a step
# stuck longer is refused at the order gate when it gets going again, and the sweep runs once more after it.
STEP_WAIT_SECONDS = 2.0
# While halted with orders the sweep could not cancel (the venue refused: its rate limit spent, an error while the
# channel stays up), the sweep runs again after a strategy step: no reconnect is coming to do it. First this long
# after, then twice as long each time the venue refuses again, at most SWEEP_RETRY_MAX_SECONDS (an order it never
# lets go of costs a sweep a minute, not every few seconds of a halt that can last for days).
SWEEP_RETRY_SECONDS = 5.0
SWEEP_RETRY_MAX_SECONDS = 60.0


class KillSwitch:
    """Sweeps the venue for a halt. When the venue cannot be reached the halt stands and the cancel is pending
    (`cancel_pending`) until the next reconnect; when a halt could not wait for the step in progress, or came from
    a risk limit in the middle of one, the sweep runs again right after that step (`sweep_after_step`). A sweep
    that left orders working with the orders channel up (the venue refused the cancels: its rate limit spent) runs
    again while halted, SWEEP_RETRY_SECONDS after and backing off."""

    def __init__(self, state: StateMachine, orders: OrderEngine, trade_lock: TradeLock) -> None:
        self.state = state
        self.orders = orders
        self.trade_lock = trade_lock
        self.cancel_pending = False  # the venue was unreachable at the halt: cancel after the reconnect
        self.sweep_after_step = False
        self.orders_left: list[str] = []  # what the last sweep left working (refused cancels)
        self._retry_at = 0.0  # time.monotonic() of the next sweep a refused one owes
        self._refusals = 0  # sweeps in a row that left cancels owed
        self._sweeping = False  # a sweep is under way (the reconnect's and a retry's never overlap)

    @property
    def owes_cancels(self) -> bool:
        """Halted, with orders the sweep could not cancel yet: unreachable (`cancel_pending`) or refused
        (`orders_left`). A halt cleared owes none (the reconnect drops a pending cancel then)."""
        return self.state.state is TradingState.HALTED and (self.cancel_pending or bool(self.orders_left))

    async def halt(self, reason: str) -> None:
        """Engaged by the bot itself (a reconciliation's halt policy): as the `halt` command does, the state first,
        then the sweep with trading held."""
        if self.state.state is not TradingState.HALTED:
            self.state.apply("halt", reason=reason[:200])
            async with self.trade_lock.hold(STEP_WAIT_SECONDS) as held:
                self.sweep_after_step = not held
                canceled = await self.sweep(raise_unreachable=False)
            log.error("kill switch engaged by %s; %d open orders canceled", reason, canceled)

    async def sweep(self, raise_unreachable: bool) -> int:
        """Cancel every working order (adopted ones too). When the venue cannot be reached the cancel is pending;
        `raise_unreachable` reports it to the caller as a BrokerError carrying `cancel_pending`."""
        self._sweeping = True
        try:
            canceled, left = await self.orders.cancel_everything(KILL_SWITCH_CANCEL_SECONDS)
        except BrokerError as exc:
            self.cancel_pending = True
            self._owed()
            log.error(
                "kill switch engaged but %d open orders could not be canceled (%s): they are canceled after the "
                "next reconnect, or sooner once the venue takes the cancels",
                self.orders.open_order_count(),
                exc,
            )
            if raise_unreachable:
                detail = {"cancel_pending": True, "open_orders": self.orders.open_order_count()}
                raise BrokerError(exc.error_class, str(exc), detail=detail) from exc
            return 0
        finally:
            self._sweeping = False
        if left:
            log.error("kill switch engaged but %d open orders are still working: %s", len(left), ", ".join(left[:5]))
        self.orders_left = left
        self.cancel_pending = False
        self._owed()
        return canceled

    def _owed(self) -> None:
        """After a sweep: when the next one is due if it left cancels owed (backing off), else the count reset."""
        if not self.owes_cancels:
            self._refusals = 0
            return
        delay = SWEEP_RETRY_SECONDS * 2 ** min(self._refusals, 8)
        self._retry_at = time.monotonic() + min(SWEEP_RETRY_MAX_SECONDS, delay)
        self._refusals += 1

    async def after_step(self) -> None:
        """Right after a strategy step: the sweep a halt during that step still owes, or the next try of one the venue
        refused with its orders channel up."""
        if self.state.state is not TradingState.HALTED:
            return
        if self.sweep_after_step:
            self.sweep_after_step = False
            canceled = await self.sweep(raise_unreachable=False)
            log.warning("kill switch: %d open orders canceled after the step in progress ended", canceled)
        elif (
            self.owes_cancels
            and not self._sweeping
            and self.orders.broker.is_connected(Channel.ORDERS)
            and time.monotonic() >= self._retry_at
        ):
            # The venue refused the last sweep's cancels with its channel up: no reconnect will come to retry them.
            canceled = await self.sweep(raise_unreachable=False)
            if not self.owes_cancels:
                log.warning(
                    "kill switch: the cancels the venue refused went through (%d open orders canceled)", canceled
                )

    async def after_reconnect(self) -> None:
        """The venue is back: the cancel a halt could not make happens now (unless the halt was cleared)."""
        if not self.cancel_pending:
            return
        if self.state.state is not TradingState.HALTED:
            self.cancel_pending = False
            log.warning("pending kill-switch cancel dropped: the halt was cleared before the venue came back")
            return
        canceled = await self.sweep(raise_unreachable=False)
        if not self.cancel_pending:
            log.warning("venue reachable again: %d open orders canceled for the kill switch", canceled)
