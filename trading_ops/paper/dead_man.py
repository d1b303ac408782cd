"""The paper venue's dead man's switch, as Kraken's trading engine keeps it (`CancelAllOrdersAfter`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from trading_ops.bot.broker import BrokerError, OrderStatus, VenueOrder
from trading_ops.paper.book import OrderBook
from trading_ops.paper.clock import VenueClock
from trading_ops.paper.connection import VenueConnection

LOG = logging.getLogger(__name__)
# Kraken's CancelAllOrdersAfter takes a timeout under a day (docs.kraken.com, "Cancel All Orders After X").
MAX_CANCEL_AFTER_SECONDS = 86_400


class CancelAllAfter:
    """When every open order of the account is canceled, None when disarmed. The venue's own state, not persisted (a
    restarted venue forgets it, as Kraken's does)."""

    def __init__(
        self, book: OrderBook, clock: VenueClock, connection: VenueConnection, save: Callable[[], Awaitable[None]]
    ) -> None:
        self.book = book
        self.clock = clock
        self.connection = connection
        self._save = save
        self.trigger: datetime | None = None

    def arm(self, timeout: int) -> tuple[datetime, datetime | None]:
        """Cancel everything `timeout` seconds from now (0 disarms); the venue's time and the trigger time.
        BrokerError("other") for a timeout Kraken refuses (negative, or a day or more)."""
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout < MAX_CANCEL_AFTER_SECONDS:
            raise BrokerError(
                "other", f"{self.connection.venue}: the timeout must be 0 to 86399 whole seconds, got {timeout!r}"
            )
        now = self.clock.now()
        self.trigger = now + timedelta(seconds=timeout) if timeout else None
        return now, self.trigger

    async def expire(self) -> list[VenueOrder]:
        """When the trigger time has come: cancel every open order (its events delivered as a cancel's) and disarm.
        Returns the orders canceled (none before the trigger time)."""
        if self.trigger is None:
            return []
        now = self.clock.now()
        if now < self.trigger:
            return []
        self.trigger = None
        canceled = []
        connection = self.connection
        with connection.delivering():
            for order in list(self.book.open.values()):
                self.book.set_status(order, OrderStatus.CANCELED, now)
                canceled.append(dataclasses.replace(order))
            if canceled:
                await self._save()
            await connection.deliver(list(canceled))
        LOG.warning("%s: the dead man's switch triggered: %d open orders canceled", connection.venue, len(canceled))
        return canceled
