"""The paper venue's fault injection: what tests, the chaos commands and the gateway break or change on purpose."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import Channel, OrderStatus, OrderType, Quote, Side, VenueFill, VenueOrder
from trading_ops.paper.book import OrderBook
from trading_ops.paper.clock import VenueClock
from trading_ops.paper.connection import VenueConnection
from trading_ops.paper.faults import FaultModel
from trading_ops.paper.market import RandomWalkMarket

# The account calls fail_queries can make fail (cancel_all_orders_after: the dead man's switch refused).
ACCOUNT_QUERIES = ("positions", "balances", "cancel_all_orders_after")
# The faults the paper venue keeps in its FaultModel (subjects: a symbol, an account query).
DROPPED = "drop_connection"
STALE = "stale_market_data"
REJECTING = "reject_orders"
FAILING_QUERY = "fail_query"


class FaultInjection:
    """Starts and clears the venue's faults (kept in `fault_model`, which the venue's requests read) and changes the
    account behind the bot's back (hidden fills, orders placed by hand, lost events, transfers, the clock's skew).

    Every method that changes something is a coroutine that returns once the state file holds the change; `faults()`
    is a plain query. `reconnect` and `resubscribe` are the venue's own (clear_faults heals through them, as a client
    would).
    """

    def __init__(
        self,
        *,
        market: RandomWalkMarket,
        book: OrderBook,
        clock: VenueClock,
        fault_model: FaultModel,
        connection: VenueConnection,
        save: Callable[[], Awaitable[None]],
        reconnect: Callable[[], Awaitable[None]],
        resubscribe: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self.market = market
        self.book = book
        self.clock = clock
        self.fault_model = fault_model
        self.connection = connection
        self._save = save
        self._reconnect = reconnect
        self._resubscribe = resubscribe

    # -- faults in force ----------------------------------------------------------------------------------------
    async def drop_connection(self) -> None:
        """Both channels go down (on_connection(ch, False), each drop a "network" on_venue_error, as a stream that
        closes reports); requests raise "network" until reconnect()."""
        self.fault_model.start(DROPPED)
        await self.connection.drop()

    async def reject_orders(self, reason: str, seconds: float) -> None:
        """Every new order is rejected with `reason` for `seconds` (a margin call, a venue in cancel-only mode, a
        sizing bug): the connection stays up, cancels still work."""
        self.fault_model.start(REJECTING, seconds, detail=reason)

    def rejecting(self) -> str | None:
        """The reason every new order is rejected for now, None when orders are taken."""
        return self.fault_model.detail(REJECTING) if self.fault_model.active(REJECTING) else None

    async def fail_queries(self, queries: Iterable[str], seconds: float) -> None:
        """The account calls named (`positions`, `balances`, `cancel_all_orders_after`) fail as unavailable for
        `seconds`, everything else answering (an account endpoint in trouble while orders and fills still flow)."""
        for query in queries:
            if query not in ACCOUNT_QUERIES:
                raise ValueError(f"unknown account query {query!r}; one of {', '.join(ACCOUNT_QUERIES)}")
            self.fault_model.start(FAILING_QUERY, seconds, subject=query)

    def failing(self, query: str) -> bool:
        return self.fault_model.active(FAILING_QUERY, query)

    async def stop_market_data(self, symbol: str) -> None:
        """Quotes for `symbol` stop, the connection staying up, until resubscribe()."""
        self.market.check_symbol(symbol)
        self.fault_model.start(STALE, subject=symbol)

    def muted(self, symbol: str) -> bool:
        """Whether `symbol`'s quotes are stopped."""
        return self.fault_model.active(STALE, symbol)

    def reconnected(self) -> None:
        """The connection was made again: the drop is over (a stale symbol stays stale until subscribed again)."""
        self.fault_model.end(DROPPED)

    def resubscribed(self, symbols: Iterable[str] | None = None) -> None:
        """`symbols` (None: every stale one, as a new connection subscribes to every symbol) were subscribed again."""
        for symbol in self.fault_model.subjects(STALE) if symbols is None else symbols:
            self.fault_model.end(STALE, symbol)

    # -- the account changed behind the bot's back --------------------------------------------------------------
    async def inject_hidden_fill(self, symbol: str, quantity: Decimal, price: Decimal | None = None) -> VenueFill:
        """The venue's account changes by a fill nobody is told about (signed quantity: > 0 buys, < 0 sells).

        It is recorded in recent_fills with client_order_id None, at `price` or the taker price, taker fee.
        """
        self.market.check_symbol(symbol)
        fill = self.book.hidden_fill(symbol, quantity, price, self.clock.now())
        await self._save()
        return fill

    async def gap_price(self, symbol: str, relative_change: float) -> Quote:
        """The price jumps by `relative_change` (-0.08 is -8 %); resting orders it crosses fill, a quote is sent."""
        self.market.check_symbol(symbol)
        if relative_change <= -1:
            raise ValueError("a price cannot fall by 100 % or more")
        moved = self.market.mid[symbol] * (1 + Decimal(str(relative_change)))
        connection = self.connection
        with connection.delivering():
            self.market.set_mid(symbol, moved)
            now = self.clock.now()
            notifications = self.book.match(now)
            await self._save()
            quote = self.market.quote(symbol, now)
            await connection.publish_quote(symbol, quote)
            await connection.deliver(notifications)
        return quote

    async def place_external_order(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal,
        price: Decimal | None = None,
        *,
        order_type: OrderType = OrderType.LIMIT,
        client_order_id: str | None = None,
    ) -> VenueOrder:
        """An order placed by hand on the venue: in open_orders under an id the bot never issued, no events.

        `client_order_id` None gives `manual-N`; "" places it without one, as a venue's website does.
        A limit order that crosses fills at once, like any other; so does a market order.
        """
        self.market.check_symbol(symbol)
        now = self.clock.now()
        order = self.book.place_external(symbol, side, quantity, price, order_type, client_order_id, now)
        await self._save()
        return dataclasses.replace(order)

    async def fill_without_notifying(
        self, client_order_id: str = "", quantity: Decimal | None = None, *, venue_order_id: str = ""
    ) -> VenueFill:
        """Fill an open order (all that remains by default) and lose the events, as when a bot dies mid-fill.

        A limit order fills at its price as maker, a market order at the taker price.
        """
        order = self.book.find(client_order_id, venue_order_id)
        fill = self.book.fill_silently(order, client_order_id or venue_order_id, quantity, self.clock.now())
        await self._save()
        return fill

    async def cancel_without_notifying(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        """The venue cancels an open order (expiry, self-trade prevention, an operator) and the event is lost."""
        order = self.book.find(client_order_id, venue_order_id)
        if order is None or not order.status.is_open:
            raise ValueError(f"no open order {client_order_id or venue_order_id}")
        self.book.set_status(order, OrderStatus.CANCELED, self.clock.now())
        await self._save()
        return dataclasses.replace(order)

    async def transfer(self, asset: str, amount: Decimal) -> Decimal:
        """A deposit (> 0) or withdrawal (< 0) made outside the bot; returns the new balance. A balance withdrawn to
        zero is no longer listed by `balances()`, as venues that list only non-zero assets do."""
        total = self.book.transfer(asset, amount)
        await self._save()
        return total

    async def set_clock_skew(self, seconds: float) -> None:
        """The venue's clock runs `seconds` ahead of the local one (negative: behind)."""
        self.clock.skew = float(seconds)
        await self._save()

    # -- what is in force, and healing it -----------------------------------------------------------------------
    def faults(self) -> dict[str, Any]:
        """The faults in force and the account changes injected since the last clear_faults()."""
        model = self.fault_model
        return {
            "connection_dropped": model.active(DROPPED) and not all(self.connection.connected.values()),
            "stale_symbols": model.subjects(STALE),
            "rejecting_orders": self.rejecting(),
            "failing_queries": model.subjects(FAILING_QUERY, active_only=True),
            "clock_skew_seconds": self.clock.skew,
            "external_open_orders": self.book.external_open_orders(),
            "hidden_fills": list(self.book.hidden_fills),
            "unnotified_fills": list(self.book.unnotified_fills),
        }

    async def clear_faults(self) -> None:
        """Restore connectivity, market data and the clock; forget the records of injected fills.

        What faults did to the account (hidden and unnotified fills, external orders) stays: it is the venue's
        truth now, and reconciliation is what must deal with it.
        """
        model = self.fault_model
        self.clock.skew = 0.0
        model.end(REJECTING)
        for query in model.subjects(FAILING_QUERY):
            model.end(FAILING_QUERY, query)
        self.book.hidden_fills.clear()
        self.book.unnotified_fills.clear()
        if model.active(DROPPED):
            await self._reconnect()
        stale = model.subjects(STALE)
        if stale and self.connection.is_up(Channel.MARKET_DATA):
            await self._resubscribe(stale)
        model.clear()
        await self._save()
