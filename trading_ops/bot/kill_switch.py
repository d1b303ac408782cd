"""The kill switch: halt, then sweep every working order off the venue, now or once the venue can be reached."""

from __future__ import annotations

import logging

from trading_ops.bot.broker import BrokerError
from trading_ops.bot.orders import OrderEngine
from trading_ops.bot.state import StateMachine, TradingState
from trading_ops.bot.trade_lock import TradeLock

log = logging.getLogger(__name__)

# Cancels the venue refused (rate limit) are retried for up to this long on a halt.
KILL_SWITCH_CANCEL_SECONDS = 2.0
# A halt waits this long for the strategy step in progress (it may be sending an order) before it sweeps; a step
# stuck longer is refused at the order gate when it gets going again, and the sweep runs once more after it.
STEP_WAIT_SECONDS = 2.0


class KillSwitch:
    """Sweeps the venue for a halt. When the venue cannot be reached the halt stands and the cancel is pending
    (`cancel_pending`) until the next reconnect; when a halt could not wait for the step in progress, or came from
    a risk limit in the middle of one, the sweep runs again right after that step (`sweep_after_step`)."""

    def __init__(self, state: StateMachine, orders: OrderEngine, trade_lock: TradeLock) -> None:
        self.state = state
        self.orders = orders
        self.trade_lock = trade_lock
        self.cancel_pending = False  # the venue was unreachable at the halt: cancel after the reconnect
        self.sweep_after_step = False

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
        try:
            canceled, left = await self.orders.cancel_everything(KILL_SWITCH_CANCEL_SECONDS)
        except BrokerError as exc:
            self.cancel_pending = True
            log.error(
                "kill switch engaged but %d open orders could not be canceled (%s): they are canceled after the "
                "next reconnect",
                self.orders.open_order_count(),
                exc,
            )
            if raise_unreachable:
                detail = {"cancel_pending": True, "open_orders": self.orders.open_order_count()}
                raise BrokerError(exc.error_class, str(exc), detail=detail) from exc
            return 0
        if left:
            log.error("kill switch engaged but %d open orders are still working: %s", len(left), ", ".join(left[:5]))
        self.cancel_pending = False
        return canceled

    async def after_step(self) -> None:
        """Right after a strategy step: the sweep a halt during that step still owes."""
        if self.sweep_after_step and self.state.state is TradingState.HALTED:
            self.sweep_after_step = False
            canceled = await self.sweep(raise_unreachable=False)
            log.warning("kill switch: %d open orders canceled after the step in progress ended", canceled)

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
