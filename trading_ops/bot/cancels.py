"""The order engine's cancels: one order, all of the bot's, and the lookups of orders whose outcome is unknown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from trading_ops.bot.broker import Broker, BrokerError, VenueOrder
from trading_ops.bot.journal import Journal
from trading_ops.bot.journal_health import is_journal_failure
from trading_ops.bot.metrics import BotMetrics

log = logging.getLogger(__name__)

# Cancels the venue refused (rate limit) are retried this often within a cancel_everything budget.
CANCEL_RETRY_SECONDS = 0.1
# An order of unknown outcome (its submit's answer lost, the broker's own lookup failed) is looked up before it is
# canceled, at most this often at first, the wait doubling after each lookup that finds nothing, up to the cap: a
# strategy asking every step to cancel it must not spend the venue's call budget on it (a cancel by client order id
# of an order never placed is refused every time).
UNKNOWN_LOOKUP_SECONDS = 2.0
UNKNOWN_LOOKUP_MAX_SECONDS = 60.0


class Cancels:
    """Sends the bot's cancels and takes the venue's answers in through `apply_order` (the engine's, which journals
    them): which of the venue's open orders are the bot's, an order of unknown outcome looked up rather than canceled
    blind, and cancel_all / cancel_everything for the kill switch, the shutdown and the control commands.

    It reads the engine's view of its orders (`orders`: working, by key; `sent_at`: sent and not known closed) and
    keeps only what is its own: when each unknown order may next be looked up."""

    def __init__(
        self,
        broker: Broker,
        journal: Journal,
        metrics: BotMetrics,
        *,
        orders: Mapping[str, VenueOrder],
        sent_at: Mapping[str, float],
        id_prefix: str,
        apply_order: Callable[[VenueOrder], Awaitable[None]],
    ) -> None:
        self.broker = broker
        self.journal = journal
        self.metrics = metrics
        self.orders = orders
        self.sent_at = sent_at
        self.id_prefix = id_prefix
        self._apply_order = apply_order
        self._lookups: dict[str, tuple[float, float]] = {}  # unknown outcome: key -> (next lookup, wait after it)

    def forget(self, key: str) -> None:
        """The order is closed: no lookup of it any more."""
        self._lookups.pop(key, None)

    async def cancel(self, key: str, order: VenueOrder | None = None) -> bool:
        """Cancel a working order by its key (by venue order id for one placed without a client order id); `order`
        is the venue's view of one the bot does not track (yet)."""
        answer = await self._cancel_at_venue(key, order)
        if answer is None:
            return False
        # The answer is the venue's word on the order: it counts even when no event follows (a venue may send
        # none for an order placed by hand); when the event came first, it changes nothing.
        await self._apply_order(answer)
        return True

    async def _cancel_at_venue(self, key: str, order: VenueOrder | None = None) -> VenueOrder | None:
        if order is None or not order.venue_order_id:  # the venue's listing, when given, knows its id
            order = self.orders.get(key) or order
        if order is not None and not order.venue_order_id and order.client_order_id:
            # Its outcome is unknown: ask the venue what became of it rather than send a cancel it may refuse.
            order = await self._look_up_unknown(key)
            if order is None or not order.status.is_open:
                return order
        try:
            if order is not None and not order.client_order_id:
                return await self.broker.cancel(venue_order_id=order.venue_order_id)
            return await self.broker.cancel(key)
        except BrokerError as exc:
            self.metrics.venue_error(exc.error_class)
            log.info("cancel %s failed: %s", key, exc)
            return None

    def _placed_by_this_run(self, key: str) -> bool:
        """Tracked, in flight (sent, its answer not applied yet) or carrying this run's client order id prefix."""
        return key in self.orders or key in self.sent_at or key.startswith(f"{self.id_prefix}-")

    async def own_open_orders(self) -> list[VenueOrder]:
        """The venue's open orders that are this bot's: those this run placed (tracked, in flight, or answered by
        nothing), adopted ones, and any the journal holds as the bot's (a previous run's, kept at its shutdown or
        placed just before a crash). Orders placed by hand and never adopted are not: reconciliation's
        unknown_order policy decides about those. Raises BrokerError when the venue cannot be reached."""
        listed = await self.broker.open_orders()
        mine = [o for o in listed if self._placed_by_this_run(o.key)]
        others = [o for o in listed if not self._placed_by_this_run(o.key)]
        if others:
            rows = await self.journal.call(self.journal.orders_by_client_id, [o.key for o in others])
            journaled = {row.client_order_id for row in rows}
            mine.extend(o for o in others if o.key in journaled)
        return mine

    async def _look_up_unknown(self, key: str) -> VenueOrder | None:
        """The venue's view of a tracked order of unknown outcome (Broker.order_status, by its client order id), taken
        in as the venue's word; None when it is not time for another lookup, the venue cannot be asked, or it does
        not know the order (yet: the reconciliation its unknown outcome asked for settles it)."""
        now = time.monotonic()
        due, wait = self._lookups.get(key, (0.0, UNKNOWN_LOOKUP_SECONDS))
        if now < due:
            return None
        self._lookups[key] = (now + wait, min(wait * 2, UNKNOWN_LOOKUP_MAX_SECONDS))
        try:
            found = await self.broker.order_status(key)
        except BrokerError as exc:
            self.metrics.venue_error(exc.error_class)
            log.info("order %s: looking it up failed: %s", key, exc)
            return None
        if found is None:
            log.info("order %s: the venue does not know it (yet); left to reconciliation", key)
            return None
        log.info("order %s of unknown outcome found at the venue: %s %s", key, found.venue_order_id, found.status.value)
        self._lookups.pop(key, None)
        await self._apply_order(found)
        return found

    async def cancel_all(self) -> int:
        """Cancel every open order of the bot on the venue once (`own_open_orders`: in flight and journaled ones
        too, not only those it tracks); raises BrokerError when the venue cannot be reached. A cancel the venue
        refuses (rate limit) is logged and left. The cancels go out first, their answers are journaled after; a journal
        that cannot be written does not stop them (cancels reduce risk): an answer it could not take is left to the
        reconciliation that follows the journal's return."""
        answers = [await self._cancel_at_venue(o.key, o) for o in await self.own_open_orders()]
        for answer in answers:
            if answer is not None:
                try:
                    await self._apply_order(answer)
                except Exception as exc:
                    if not is_journal_failure(exc):
                        raise
                    log.warning("order %s canceled on the venue; not journaled (%s)", answer.key, exc)
        return sum(answer is not None for answer in answers)

    async def cancel_everything(self, budget: float) -> tuple[int, list[str]]:
        """cancel_all, then look at the venue again: while it still lists some of the bot's orders open (refused
        cancels, an order that landed meanwhile), cancel again every CANCEL_RETRY_SECONDS for up to `budget`
        seconds; returns (canceled, keys still open). Raises BrokerError when unreachable."""
        deadline = time.monotonic() + budget
        canceled = await self.cancel_all()
        while True:
            left = sorted(o.key for o in await self.own_open_orders())
            if not left or time.monotonic() >= deadline:
                return canceled, left
            await asyncio.sleep(CANCEL_RETRY_SECONDS)
            canceled += await self.cancel_all()
