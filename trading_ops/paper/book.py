"""The paper venue's account and matching engine: orders, fills, positions and balances, and what changes them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import BrokerError, OrderStatus, OrderType, Quote, Side, VenueFill, VenueOrder
from trading_ops.paper.market import RandomWalkMarket

RANDOM_REJECT_REASONS = ("venue_busy", "price_out_of_band")
PARTIAL_FILL_FRACTION = (0.1, 0.9)  # a partial fill covers this share of what remains
MAX_RETAINED_FILLS = 1000
MAX_RETAINED_CLOSED_ORDERS = 1000
MAX_FAULT_RECORDS = 1000

Notification = VenueOrder | VenueFill


@dataclasses.dataclass
class Fees:
    """What the venue charges and how it misbehaves at random when it matches (PaperVenue's settings)."""

    maker: Decimal
    taker: Decimal
    reject_probability: float
    partial_fill_probability: float


class OrderBook:
    """One account's orders (by venue order id), fills, positions and balances, and the matching that fills its orders
    against the market's quotes: reservations of open orders, rejects, partial fills, reduce-only and spot rules.

    It changes state synchronously and returns what happened (order updates, fills) as notifications; it never
    delivers events, persists, or knows about connections (PaperVenue does). It also makes the account changes that
    fault injection needs (a hidden fill, an order placed by hand, a silent fill or cancel, a transfer) and keeps the
    record of the injected fills.
    """

    def __init__(
        self, market: RandomWalkMarket, fees: Fees, *, starting_balance: Decimal, id_base: int, spot: bool
    ) -> None:
        self.market = market
        self.fees = fees
        self.quote_asset = market.quote_asset
        self.id_base = id_base  # venue order and trade ids count up from here (sub-accounts never share an id)
        self.spot = spot  # no balance may go negative
        self.positions = {s: Decimal(0) for s in market.symbols}
        self.balances = {self.quote_asset: Decimal(starting_balance)}
        for s in market.symbols:
            self.balances.setdefault(market.base_asset(s), Decimal(0))
        self.orders: dict[str, VenueOrder] = {}  # by venue order id, in submission order
        self.open: dict[str, VenueOrder] = {}  # the open ones among them, so a tick does not scan history
        self.by_client: dict[str, str] = {}  # client order id -> venue order id, for orders that have one
        self.reduce_only: set[str] = set()  # venue order ids
        self.silent: set[str] = set()  # venue order ids of orders whose events are never delivered (by hand)
        self.fills: list[VenueFill] = []
        self.order_seq = 0
        self.trade_seq = 0
        self.external_seq = 0
        self.hidden_fills: list[str] = []  # trade ids of injected fills (since the last clear)
        self.unnotified_fills: list[str] = []

    # -- orders -----------------------------------------------------------------------------------------------
    def check_new_id(self, client_order_id: str) -> None:
        if not client_order_id:
            raise BrokerError("other", "client_order_id must not be empty")
        if client_order_id in self.by_client:
            raise BrokerError("other", f"duplicate client_order_id {client_order_id}")

    def find(self, client_order_id: str, venue_order_id: str) -> VenueOrder | None:
        if venue_order_id:
            return self.orders.get(venue_order_id)
        found = self.by_client.get(client_order_id) if client_order_id else None
        return None if found is None else self.orders.get(found)

    def new_order(
        self,
        client_order_id: str,
        symbol: str,
        side: Side,
        order_type: OrderType,
        quantity: Decimal,
        price: Decimal | None,
        now: datetime,
    ) -> VenueOrder:
        self.order_seq += 1
        order = VenueOrder(
            client_order_id=client_order_id,
            venue_order_id=f"P{self.id_base + self.order_seq}",
            symbol=symbol,
            side=side,
            order_type=order_type,
            quantity=quantity,
            price=price,
            filled_quantity=Decimal(0),
            status=OrderStatus.ACKNOWLEDGED,
            created_at=now,
        )
        self.orders[order.venue_order_id] = order
        self.open[order.venue_order_id] = order
        if client_order_id:
            self.by_client[client_order_id] = order.venue_order_id
        return order

    def place(
        self, order: VenueOrder, now: datetime, *, reduce_only: bool, forced_reject: str | None
    ) -> list[Notification]:
        """Accept or reject a new order, then fill what crosses at once; the notifications, the order's first."""
        if reduce_only:
            self.reduce_only.add(order.venue_order_id)
        reason = forced_reject or self._reject_reason(order, reduce_only)
        if reason is not None:
            self.set_status(order, OrderStatus.REJECTED, now)
            order.reject_reason = reason
        notifications: list[Notification] = [dataclasses.replace(order)]
        if reason is None:
            notifications.extend(self.try_fill(order, now, on_arrival=True))
        self.prune()
        return notifications

    def forget(self, order: VenueOrder) -> None:
        """Undo `new_order` of an order that was never placed."""
        self.order_seq -= 1
        del self.orders[order.venue_order_id]
        del self.open[order.venue_order_id]
        if order.client_order_id:
            del self.by_client[order.client_order_id]

    def set_status(self, order: VenueOrder, status: OrderStatus, at: datetime) -> None:
        """Move `order` to `status` at the venue time `at` (a closing status stamps its `closed_at`)."""
        order.status = status
        if status.is_open:
            self.open[order.venue_order_id] = order
        else:
            self.open.pop(order.venue_order_id, None)
            if order.closed_at is None:
                order.closed_at = at

    def prune(self) -> None:
        if len(self.orders) - len(self.open) <= MAX_RETAINED_CLOSED_ORDERS:
            return
        closed = [vid for vid in self.orders if vid not in self.open]
        for vid in closed[: max(0, len(closed) - MAX_RETAINED_CLOSED_ORDERS)]:
            order = self.orders.pop(vid)
            if self.by_client.get(order.client_order_id) == vid:
                del self.by_client[order.client_order_id]
            self.reduce_only.discard(vid)
            self.silent.discard(vid)

    # -- funds ------------------------------------------------------------------------------------------------
    def reserved(self) -> dict[str, Decimal]:
        """What the open orders hold of each asset (see PaperVenue.reserved)."""
        held: dict[str, Decimal] = {}
        for order in self.open.values():
            asset, amount = self._reservation(order)
            held[asset] = held.get(asset, Decimal(0)) + amount
        return held

    def _reservation(self, order: VenueOrder) -> tuple[str, Decimal]:
        left = order.quantity - order.filled_quantity
        if order.side is Side.SELL:
            return self.market.base_asset(order.symbol), left
        price = order.price if order.price is not None else self.market.bid_ask(order.symbol)[1]
        return self.quote_asset, left * price * (1 + max(self.fees.maker, self.fees.taker))

    def available(self, asset: str, exclude: str | None = None) -> Decimal:
        """The balance of `asset` not reserved by open orders (other than the order `exclude`)."""
        reserved = Decimal(0)
        for order in self.open.values():
            if order.venue_order_id != exclude:
                held, amount = self._reservation(order)
                if held == asset:
                    reserved += amount
        return self.balances.get(asset, Decimal(0)) - reserved

    def unfunded(self, order: VenueOrder) -> bool:
        """The account cannot pay for `order` with what open orders leave (a sell checked on a spot venue only)."""
        asset, amount = self._reservation(order)
        if order.side is Side.SELL and not self.spot:
            return False
        return amount > self.available(asset, exclude=order.venue_order_id)

    def _reject_reason(self, order: VenueOrder, reduce_only: bool) -> str | None:
        if reduce_only:
            position = self.positions[order.symbol]
            if position * order.side.sign >= 0 or order.quantity > abs(position):
                return "reduce_only"
        if self.unfunded(order):
            return "insufficient_funds"
        if self.market.rng.random() < self.fees.reject_probability:
            return self.market.rng.choice(RANDOM_REJECT_REASONS)
        return None

    def _affordable(self, order: VenueOrder, price: Decimal, liquidity: str) -> Decimal:
        """On a spot venue, the most of `order` the account can pay for at `price` (rounded down to the step)."""
        if order.side is Side.SELL:
            return self.available(self.market.base_asset(order.symbol), exclude=order.venue_order_id)
        fee = self.fees.maker if liquidity == "maker" else self.fees.taker
        funds = self.available(self.quote_asset, exclude=order.venue_order_id)
        return self.market.round_quantity(order.symbol, max(Decimal(0), funds) / (price * (1 + fee)))

    # -- matching ---------------------------------------------------------------------------------------------
    def _fill_price(self, order: VenueOrder, quote: Quote, on_arrival: bool) -> tuple[Decimal, str] | None:
        """The price and liquidity of a fill of `order` at `quote`, or None when it does not cross."""
        if order.order_type is OrderType.MARKET or order.price is None:
            return self.market.taker_price(order.side, quote), "taker"
        crosses = quote.ask <= order.price if order.side is Side.BUY else quote.bid >= order.price
        if not crosses:
            return None
        if on_arrival:  # it takes liquidity at the better book price
            return self.market.taker_price(order.side, quote), "taker"
        return order.price, "maker"  # it rested in the book and the market came to it

    def _fill_quantity(self, order: VenueOrder) -> Decimal:
        """What remains of `order`, or a random part of it (partial fills)."""
        remaining = order.quantity - order.filled_quantity
        if self.market.rng.random() < self.fees.partial_fill_probability:
            share = Decimal(repr(self.market.rng.uniform(*PARTIAL_FILL_FRACTION)))
            part = self.market.round_quantity(order.symbol, remaining * share)
            if 0 < part < remaining:
                return part
        return remaining

    def try_fill(
        self, order: VenueOrder, now: datetime, *, on_arrival: bool, quote: Quote | None = None
    ) -> list[Notification]:
        """Fill what the current price allows; returns the fill and the order update, or nothing."""
        if quote is None:
            quote = self.market.quote(order.symbol, now)
        priced = self._fill_price(order, quote, on_arrival)
        if priced is None:
            return []
        price, liquidity = priced
        qty = self._fill_quantity(order)
        if order.venue_order_id in self.reduce_only:
            position = self.positions[order.symbol]
            allowed = abs(position) if position * order.side.sign < 0 else Decimal(0)
            if allowed <= 0:  # the position it was to reduce is gone: the venue cancels it
                self.set_status(order, OrderStatus.CANCELED, now)
                return [dataclasses.replace(order)]
            qty = min(qty, allowed)
        if self.spot:
            qty = min(qty, self._affordable(order, price, liquidity))
            if qty <= 0:  # the account cannot pay for any of it (a market order's price moved on): canceled
                self.set_status(order, OrderStatus.CANCELED, now)
                return [dataclasses.replace(order)]
        fill = self.execute(order, qty, price, liquidity, now)
        return [fill, dataclasses.replace(order)]

    def match(self, now: datetime) -> list[Notification]:
        """Fill the resting orders the market now crosses."""
        notifications: list[Notification] = []
        quotes: dict[str, Quote] = {}
        for order in list(self.open.values()):
            quote = quotes.get(order.symbol)
            if quote is None:
                quote = quotes[order.symbol] = self.market.quote(order.symbol, now)
            notifications.extend(self.try_fill(order, now, on_arrival=False, quote=quote))
        if notifications:
            self.prune()
        return notifications

    def execute(self, order: VenueOrder, qty: Decimal, price: Decimal, liquidity: str, now: datetime) -> VenueFill:
        order.filled_quantity += qty
        done = order.filled_quantity >= order.quantity
        self.set_status(order, OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED, now)
        return self._record_fill(
            order.client_order_id, order.venue_order_id, order.symbol, order.side, qty, price, liquidity, now
        )

    def _record_fill(
        self,
        client_order_id: str | None,
        venue_order_id: str,
        symbol: str,
        side: Side,
        qty: Decimal,
        price: Decimal,
        liquidity: str,
        now: datetime,
    ) -> VenueFill:
        notional = qty * price
        fee = notional * (self.fees.maker if liquidity == "maker" else self.fees.taker)
        self.trade_seq += 1
        fill = VenueFill(
            trade_id=f"T{self.id_base + self.trade_seq}",
            client_order_id=client_order_id,
            venue_order_id=venue_order_id,
            symbol=symbol,
            side=side,
            quantity=qty,
            price=price,
            fee=fee,
            fee_asset=self.quote_asset,
            liquidity=liquidity,
            executed_at=now,
        )
        self.positions[symbol] += side.sign * qty
        self.balances[self.quote_asset] -= side.sign * notional + fee
        base = self.market.base_asset(symbol)
        self.balances[base] = self.balances.get(base, Decimal(0)) + side.sign * qty
        self.fills.append(fill)
        if len(self.fills) > MAX_RETAINED_FILLS:
            del self.fills[: len(self.fills) - MAX_RETAINED_FILLS]
        return fill

    # -- account changes fault injection makes ----------------------------------------------------------------
    def hidden_fill(self, symbol: str, quantity: Decimal, price: Decimal | None, now: datetime) -> VenueFill:
        """A fill nobody is told about (signed quantity), at `price` or the taker price, taker fee."""
        market = self.market
        signed = market.round_quantity(symbol, abs(Decimal(quantity))) * (1 if quantity > 0 else -1)
        if signed == 0:
            raise ValueError("a hidden fill needs a quantity of at least one step")
        side = Side.BUY if signed > 0 else Side.SELL
        quote = market.quote(symbol, now)
        at = market.round_price(symbol, Decimal(price)) if price is not None else market.taker_price(side, quote)
        if self.spot:
            asset = market.base_asset(symbol) if side is Side.SELL else self.quote_asset
            need = abs(signed) if side is Side.SELL else abs(signed) * at * (1 + self.fees.taker)
            if need > self.available(asset):
                raise ValueError(f"a spot account cannot pay for it: {self.available(asset)} {asset} available")
        self.order_seq += 1
        fill = self._record_fill(None, f"P{self.id_base + self.order_seq}", symbol, side, abs(signed), at, "taker", now)
        _remember(self.hidden_fills, fill.trade_id)
        return fill

    def place_external(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal,
        price: Decimal | None,
        order_type: OrderType,
        client_order_id: str | None,
        now: datetime,
    ) -> VenueOrder:
        """An order placed by hand (see PaperVenue.place_external_order)."""
        market = self.market
        qty = market.round_quantity(symbol, Decimal(quantity))
        if qty <= 0:
            raise ValueError("an external order needs a quantity of at least one step")
        limit: Decimal | None = None
        if order_type is OrderType.LIMIT:
            if price is None or price <= 0:
                raise ValueError("an external limit order needs a positive price")
            limit = market.round_price(symbol, Decimal(price))
        if client_order_id is None:
            self.external_seq += 1
            client_order_id = f"manual-{self.external_seq}"
        if client_order_id and client_order_id in self.by_client:
            raise ValueError(f"client order id {client_order_id} is already in use")
        order = self.new_order(client_order_id, symbol, side, order_type, qty, limit, now)
        if self.spot and self.unfunded(order):
            self.forget(order)
            raise ValueError(f"a spot account cannot pay for {side.value} {qty} {symbol}")
        self.silent.add(order.venue_order_id)
        self.try_fill(order, now, on_arrival=True)
        return order

    def fill_silently(self, order: VenueOrder | None, name: str, quantity: Decimal | None, now: datetime) -> VenueFill:
        """Fill an open order (all that remains by default) without a notification: a limit order at its price as
        maker, a market order at the taker price."""
        if order is None or not order.status.is_open:
            raise ValueError(f"no open order {name}")
        remaining = order.quantity - order.filled_quantity
        qty = remaining if quantity is None else self.market.round_quantity(order.symbol, Decimal(quantity))
        if not 0 < qty <= remaining:
            raise ValueError(f"quantity must be more than 0 and at most the remaining {remaining}")
        if order.order_type is OrderType.LIMIT and order.price is not None:
            fill = self.execute(order, qty, order.price, "maker", now)
        else:
            taker_price = self.market.taker_price(order.side, self.market.quote(order.symbol, now))
            fill = self.execute(order, qty, taker_price, "taker", now)
        _remember(self.unnotified_fills, fill.trade_id)
        return fill

    def transfer(self, asset: str, amount: Decimal) -> Decimal:
        """A deposit (> 0) or withdrawal (< 0); the new balance (a balance at zero is no longer listed)."""
        total = self.balances.get(asset, Decimal(0)) + Decimal(amount)
        if total < 0:
            raise ValueError(f"cannot withdraw {-Decimal(amount)} {asset}: the balance is {total - Decimal(amount)}")
        if total == 0:
            self.balances.pop(asset, None)
        else:
            self.balances[asset] = total
        return total

    def external_open_orders(self) -> list[str]:
        return [o.client_order_id or o.venue_order_id for vid, o in self.open.items() if vid in self.silent]

    # -- state ------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The account without its history (orders and fills, which persistence encodes once each)."""
        return {
            "positions": {s: str(q) for s, q in self.positions.items()},
            "balances": {a: str(b) for a, b in self.balances.items()},
            "reduce_only": sorted(self.reduce_only & self.orders.keys()),  # venue order ids
            "silent_orders": sorted(self.silent & self.orders.keys()),
            "counters": {"order": self.order_seq, "trade": self.trade_seq, "external": self.external_seq},
            "hidden_fills": list(self.hidden_fills),
            "unnotified_fills": list(self.unnotified_fills),
        }

    def load(self, data: Mapping[str, Any], orders: list[VenueOrder], fills: list[VenueFill], version: int) -> None:
        """Take the account of a saved state (its orders and fills already decoded)."""
        self.positions = {s: Decimal(0) for s in self.market.symbols}
        self.positions.update({s: Decimal(q) for s, q in data["positions"].items()})
        self.balances = {a: Decimal(b) for a, b in data["balances"].items()}
        self.orders = {o.venue_order_id: o for o in orders}
        self.open = {vid: o for vid, o in self.orders.items() if o.status.is_open}
        self.by_client = {o.client_order_id: o.venue_order_id for o in orders if o.client_order_id}
        reduce_only, silent = set(data["reduce_only"]), set(data["silent_orders"])
        if version == 1:  # those sets were kept by client order id
            reduce_only = {self.by_client[c] for c in reduce_only if c in self.by_client}
            silent = {self.by_client[c] for c in silent if c in self.by_client}
        self.reduce_only, self.silent = reduce_only, silent
        self.fills = fills
        counters = data["counters"]
        self.order_seq, self.trade_seq = int(counters["order"]), int(counters["trade"])
        self.external_seq = int(counters["external"])
        self.hidden_fills = list(data["hidden_fills"])
        self.unnotified_fills = list(data["unnotified_fills"])


def _remember(records: list[str], trade_id: str) -> None:
    records.append(trade_id)
    if len(records) > MAX_FAULT_RECORDS:
        del records[: len(records) - MAX_FAULT_RECORDS]
