"""The paper venue's order entry: a submit or a cancel checked, rate-limited, placed in the book and told."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from decimal import Decimal

from trading_ops.bot.broker import BrokerError, Channel, OrderRequest, OrderStatus, OrderType, VenueOrder
from trading_ops.paper.book import OrderBook
from trading_ops.paper.clock import VenueClock
from trading_ops.paper.connection import VenueConnection
from trading_ops.paper.injection import FaultInjection
from trading_ops.paper.market import RandomWalkMarket
from trading_ops.paper.persistence import VenueState
from trading_ops.paper.rate_limit import RequestBucket


class OrderEntry:
    """Takes the orders channel's requests that change the account: each needs the channel up and a token of the
    rate limit; an invalid one raises BrokerError("other") and leaves nothing behind; a placed or canceled order is in
    the state file before the bot hears of it. `latency()` is the order's time in flight (the venue's setting, read at
    each submit)."""

    def __init__(
        self,
        *,
        market: RandomWalkMarket,
        book: OrderBook,
        clock: VenueClock,
        connection: VenueConnection,
        bucket: RequestBucket,
        persistence: VenueState,
        injection: FaultInjection,
        latency: Callable[[], float],
    ) -> None:
        self.market = market
        self.book = book
        self.clock = clock
        self.connection = connection
        self.bucket = bucket
        self.persistence = persistence
        self.injection = injection
        self._latency = latency

    def checked(self, request: OrderRequest) -> tuple[Decimal, Decimal | None]:
        """The quantity and price of a valid request, rounded; BrokerError("other") for an invalid one."""
        symbol = request.symbol
        if symbol not in self.market.mid:
            raise BrokerError("other", f"unknown symbol {symbol}")
        quantity = self.market.round_quantity(symbol, Decimal(request.quantity))
        if quantity <= 0:
            raise BrokerError("other", f"quantity must be at least one step ({self.market.step_sizes[symbol]})")
        price: Decimal | None = None
        if request.order_type is OrderType.LIMIT:
            if request.price is None or request.price <= 0:
                raise BrokerError("other", "a limit order needs a positive price")
            price = self.market.round_price(symbol, Decimal(request.price))
        self.book.check_new_id(request.client_order_id)
        return quantity, price

    async def submit(self, request: OrderRequest) -> VenueOrder:
        """Place an order (rejected `reject_orders`'s reason while that fault is in force). If the orders channel
        drops during its latency, the order is placed but BrokerError("network") with outcome unknown is raised."""
        connection = self.connection
        connection.require(Channel.ORDERS)
        self.bucket.spend()
        quantity, price = self.checked(request)
        await asyncio.sleep(self._latency())
        self.book.check_new_id(request.client_order_id)  # a concurrent submit may have taken the id meanwhile

        with connection.delivering():
            now = self.clock.now()
            order = self.book.new_order(
                request.client_order_id, request.symbol, request.side, request.order_type, quantity, price, now
            )
            rejecting = self.injection.rejecting()
            notifications = self.book.place(order, now, reduce_only=request.reduce_only, forced_reject=rejecting)
            await self.persistence.save_change()
            await connection.deliver(notifications)
        if not connection.is_up(Channel.ORDERS):
            # The order reached the venue but the answer is lost: the bot must find out by reconciling.
            raise BrokerError(
                "network", f"{connection.venue}: connection lost before the response to {order.client_order_id}"
            )
        return dataclasses.replace(order)

    async def cancel(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        """Cancel an open order, by either id."""
        connection = self.connection
        connection.require(Channel.ORDERS)
        self.bucket.spend()
        order = self.book.find(client_order_id, venue_order_id)
        if order is None:
            raise BrokerError("other", "unknown order")
        if not order.status.is_open:
            raise BrokerError("other", "order already closed")
        with connection.delivering():
            self.book.set_status(order, OrderStatus.CANCELED, self.clock.now())
            await self.persistence.save_change()
            await connection.deliver([dataclasses.replace(order)])
        return dataclasses.replace(order)
