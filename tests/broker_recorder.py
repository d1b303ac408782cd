"""What a bot would have been told by a Broker (trading_ops.bot.broker): the BrokerEvents callbacks a test gives a
broker (the paper venue, CcxtBroker), recording every order, fill, quote and connection change that arrives."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

from trading_ops.bot.broker import BrokerEvents, Channel, Quote, VenueFill, VenueOrder
from trading_ops.venues.ccxt.rest import CcxtBroker

B = TypeVar("B", bound=CcxtBroker)


@dataclass
class Recorder:
    """The callbacks a bot gives the broker, recording what arrives."""

    orders: list[VenueOrder] = field(default_factory=list)
    fills: list[VenueFill] = field(default_factory=list)
    quotes: list[Quote] = field(default_factory=list)
    connections: list[tuple[Channel, bool]] = field(default_factory=list)

    def events(self) -> BrokerEvents:
        async def on_order(order: VenueOrder) -> None:
            self.orders.append(order)

        async def on_fill(fill: VenueFill) -> None:
            self.fills.append(fill)

        async def on_quote(quote: Quote) -> None:
            self.quotes.append(quote)

        async def on_connection(channel: Channel, up: bool) -> None:
            self.connections.append((channel, up))

        return BrokerEvents(on_order=on_order, on_fill=on_fill, on_quote=on_quote, on_connection=on_connection)

    def last(self, key: str) -> VenueOrder | None:
        """The last state of the order `key` that arrived (None if none did)."""
        mine = [o for o in self.orders if o.key == key]
        return mine[-1] if mine else None

    def clear(self) -> None:
        self.orders.clear()
        self.fills.clear()
        self.quotes.clear()
        self.connections.clear()


@contextlib.asynccontextmanager
async def connected(broker: B, recorder: Recorder) -> AsyncIterator[B]:
    """`broker` connected, `recorder` taking its events; closed at the end, its ccxt client too (what a bot's stop
    does), whatever the test did."""
    try:
        await broker.connect(recorder.events())
        yield broker
    finally:
        await broker.close()
        await broker.exchange.close()
