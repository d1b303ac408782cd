"""A simulated venue: a real `Broker` with a random-walk market, fees, rejects, partial fills and fault injection.

Everything runs on one asyncio loop. State changes are synchronous; the events they produce (order updates,
fills, quotes, connection changes) are then awaited on the bot's callbacks, and only while the channel that
carries them is up: a fill that happens while the orders channel is down is executed and recorded but its
event is lost, as on a real venue, and reconciliation has to find it through `recent_fills`.

Conventions a caller relies on:

- Invalid requests (unknown symbol, quantity not positive after rounding to the step, limit without a price,
  duplicate client order id) raise `BrokerError("other", ...)` and leave no order behind, as a REST 400 does.
  Business rejects (`insufficient_funds`, `reduce_only`, random `venue_busy` / `price_out_of_band`) return a
  `VenueOrder` with status `rejected` and are also delivered through `on_order`.
- Requests (`submit`, `cancel`, `positions`, `balances`, `open_orders`, `recent_fills`, `server_time`) need the
  orders channel and raise `BrokerError("network", ..., outcome_unknown=False)` while it is down (nothing was
  sent). `submit` and `cancel` spend one token of the rate-limit bucket and raise `BrokerError("rate_limit", ...)`
  when it is empty. If the channel drops while a submit is in flight (during its latency), the order is placed
  but `submit` raises "network" with `outcome_unknown` true: the bot cannot know, as on a real venue.
- With `autosave_path`, the state file holds every change before any event or answer tells of it (written off the
  event loop, see `_persist`): a kill -9 of the process never leaves a bot knowing more than the file.
- Callbacks are awaited in order; an exception from one propagates to the request that caused it (`run()` logs
  it and keeps ticking).
- Prices are rounded to the symbol's tick, quantities down to its step; positions and balances are exact.
- Subscriptions survive a reconnect; a subscription (connect, reconnect of market data, resubscribe) starts with
  a snapshot quote, as venues send a book snapshot on subscribe.
- Orders are kept by venue order id: an order placed by hand may have an empty client order id, and several
  such orders stay distinct. `cancel` and `order_status` take either id.
- `drain_events()` returns once every notification of a change already made has been delivered (a venue
  operation changes its state at once, then awaits the callbacks one by one).
- Balances list every asset the venue ever held, except one withdrawn to zero by `transfer` (venues that list
  only non-zero assets do that).
- Funds: open orders reserve what they may spend (`reserved()`): a buy its remaining quantity at its limit price (a
  market order at the ask) plus the higher fee, in the quote asset; a sell its remaining quantity of the base asset.
  A buy the quote asset left over cannot pay is rejected `insufficient_funds`. A `spot` venue (as Kraken's spot
  accounts are; the Kraken gateway's venues are) holds sells to the same rule, so no balance ever goes negative: a
  sell beyond the base asset held less what open sells reserve is rejected `insufficient_funds`, a fill never takes
  more than the account holds (what it cannot pay for is canceled), and a hidden fill or an order placed by hand
  that the account cannot pay raises ValueError. Otherwise sells are not checked (positions may go short).
- Every fault-injection method is a coroutine; `faults()` is a plain query. `fail_queries` makes the `positions`
  or `balances` query raise `BrokerError("unavailable", ...)` for a while, everything else answering (an account
  endpoint in trouble: reconciliation must then leave those unknown, never read them as flat).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from trading_ops.bot.broker import (
    Broker,
    BrokerError,
    BrokerEvents,
    Channel,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    VenueFill,
    VenueOrder,
)

LOG = logging.getLogger(__name__)
DEFAULT_SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")
DEFAULT_PRICES = {"BTC-USD": Decimal("65000"), "ETH-USD": Decimal("3200"), "SOL-USD": Decimal("150")}
UNKNOWN_SYMBOL_PRICE = Decimal("100")
DEFAULT_TICK_SIZE = Decimal("0.01")
DEFAULT_STEP_SIZE = Decimal("0.0001")
DEFAULT_SPREAD = Decimal("0.0002")  # bid-to-ask, relative to mid: 2 bps
RANDOM_REJECT_REASONS = ("venue_busy", "price_out_of_band")
PARTIAL_FILL_FRACTION = (0.1, 0.9)  # a partial fill covers this share of what remains
MAX_RETAINED_FILLS = 1000
MAX_RETAINED_CLOSED_ORDERS = 1000
MAX_FAULT_RECORDS = 1000
# The account queries fail_queries can make fail.
ACCOUNT_QUERIES = ("positions", "balances")
MAX_ADVANCE_TICKS = 100_000  # past this, advance() takes coarser steps rather than running for minutes
STATE_VERSION = 2  # 2: reduce-only and silent orders by venue order id (1: by client order id)
DRAIN_TIMEOUT_SECONDS = 5.0

Notification = VenueOrder | VenueFill


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _order_to_json(order: VenueOrder) -> dict[str, Any]:
    return {
        "client_order_id": order.client_order_id,
        "venue_order_id": order.venue_order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "order_type": order.order_type.value,
        "quantity": str(order.quantity),
        "price": None if order.price is None else str(order.price),
        "filled_quantity": str(order.filled_quantity),
        "status": order.status.value,
        "reject_reason": order.reject_reason,
        "created_at": None if order.created_at is None else order.created_at.isoformat(),
    }


def _order_from_json(data: Mapping[str, Any]) -> VenueOrder:
    return VenueOrder(
        client_order_id=data["client_order_id"],
        venue_order_id=data["venue_order_id"],
        symbol=data["symbol"],
        side=Side(data["side"]),
        order_type=OrderType(data["order_type"]),
        quantity=Decimal(data["quantity"]),
        price=None if data["price"] is None else Decimal(data["price"]),
        filled_quantity=Decimal(data["filled_quantity"]),
        status=OrderStatus(data["status"]),
        reject_reason=data["reject_reason"],
        created_at=None if data["created_at"] is None else datetime.fromisoformat(data["created_at"]),
    )


def _fill_to_json(fill: VenueFill) -> dict[str, Any]:
    return {
        "trade_id": fill.trade_id,
        "client_order_id": fill.client_order_id,
        "venue_order_id": fill.venue_order_id,
        "symbol": fill.symbol,
        "side": fill.side.value,
        "quantity": str(fill.quantity),
        "price": str(fill.price),
        "fee": str(fill.fee),
        "fee_asset": fill.fee_asset,
        "liquidity": fill.liquidity,
        "executed_at": fill.executed_at.isoformat(),
    }


def _fill_from_json(data: Mapping[str, Any]) -> VenueFill:
    return VenueFill(
        trade_id=data["trade_id"],
        client_order_id=data["client_order_id"],
        venue_order_id=data["venue_order_id"],
        symbol=data["symbol"],
        side=Side(data["side"]),
        quantity=Decimal(data["quantity"]),
        price=Decimal(data["price"]),
        fee=Decimal(data["fee"]),
        fee_asset=data["fee_asset"],
        liquidity=data["liquidity"],
        executed_at=datetime.fromisoformat(data["executed_at"]),
    )


def _write_atomically(target: Path, data: str, *, durable: bool = False) -> None:
    """Write `data` to a temp file beside `target` and rename it into place: a reader (or a kill -9) sees the old or
    the new file, never half of one. The temp name is unique per thread, so writes from two threads never mix."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, target)


class PaperVenue(Broker):
    """A simulated venue implementing the broker interface; deterministic for a given seed and clock."""

    def __init__(
        self,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        *,
        quote_asset: str = "USD",
        starting_balance: Decimal = Decimal("100000"),
        initial_prices: Mapping[str, Decimal] | None = None,
        seed: int = 0,
        volatility: float = 0.001,
        spread: Decimal = DEFAULT_SPREAD,
        order_latency: float = 0.0,
        reject_probability: float = 0.0,
        partial_fill_probability: float = 0.0,
        maker_fee: Decimal = Decimal("0.0002"),
        taker_fee: Decimal = Decimal("0.0005"),
        tick_sizes: Mapping[str, Decimal] | None = None,
        step_sizes: Mapping[str, Decimal] | None = None,
        tick_interval: float = 1.0,
        rate_limit_per_second: float = 20.0,
        rate_limit_burst: float = 20.0,
        clock_skew: float = 0.0,
        clock: Callable[[], datetime] = _utcnow,
        venue: str = "paper",
        autosave_path: str | os.PathLike[str] | None = None,
        id_base: int = 0,
        spot: bool = False,
    ) -> None:
        self.symbols = list(dict.fromkeys(symbols))
        if not self.symbols:
            raise ValueError("a paper venue needs at least one symbol")
        for name, value in (
            ("reject_probability", reject_probability),
            ("partial_fill_probability", partial_fill_probability),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if order_latency < 0 or volatility < 0 or tick_interval <= 0 or rate_limit_burst < 1:
            raise ValueError("order_latency and volatility must be >= 0, tick_interval > 0, rate_limit_burst >= 1")
        self.venue = venue
        self.quote_asset = quote_asset
        self.volatility = volatility
        self.spread = Decimal(spread)
        self.order_latency = order_latency
        self.reject_probability = reject_probability
        self.partial_fill_probability = partial_fill_probability
        self.maker_fee = Decimal(maker_fee)
        self.taker_fee = Decimal(taker_fee)
        self.tick_interval = tick_interval
        self.rate_limit_per_second = rate_limit_per_second
        self.rate_limit_burst = rate_limit_burst
        self.autosave_path = None if autosave_path is None else Path(autosave_path)
        self.spot = spot  # no balance may go negative (see the module's docstring)
        # Venue order and trade ids count up from here: accounts of one venue (sub-accounts) never share an id.
        self.id_base = id_base
        self._clock = clock
        self._tick_sizes = {s: Decimal((tick_sizes or {}).get(s, DEFAULT_TICK_SIZE)) for s in self.symbols}
        self._step_sizes = {s: Decimal((step_sizes or {}).get(s, DEFAULT_STEP_SIZE)) for s in self.symbols}
        prices = {**DEFAULT_PRICES, **(initial_prices or {})}

        # Venue state (what save_state persists).
        self._rng = random.Random(seed)
        self._mid = {s: self._round_price(s, Decimal(prices.get(s, UNKNOWN_SYMBOL_PRICE))) for s in self.symbols}
        self._positions = {s: Decimal(0) for s in self.symbols}
        self._balances = {quote_asset: Decimal(starting_balance)}
        for s in self.symbols:
            self._balances.setdefault(self.base_asset(s), Decimal(0))
        self._orders: dict[str, VenueOrder] = {}  # by venue order id, in submission order
        self._open: dict[str, VenueOrder] = {}  # the open ones among them, so a tick does not scan history
        self._by_client: dict[str, str] = {}  # client order id -> venue order id, for orders that have one
        self._reduce_only: set[str] = set()  # venue order ids
        self._silent: set[str] = set()  # venue order ids of orders whose events are never delivered (by hand)
        self._fills: list[VenueFill] = []
        self._fills_json: list[str] = []  # each fill encoded once, so saving after every event stays cheap
        self._order_seq = 0
        self._trade_seq = 0
        self._external_seq = 0
        self._skew = float(clock_skew)
        self._hidden_fills: list[str] = []
        self._unnotified_fills: list[str] = []
        self._closed_json: dict[str, str] = {}  # closed orders (they never change again), encoded once each

        # Autosave progress: changes made, changes in the file, the newest change a write put there.
        self._changes = 0
        self._saved = 0
        self._written = 0
        self._save_lock = asyncio.Lock()
        self._write_lock = threading.Lock()

        # Connection state (belongs to this process, never persisted).
        self._events = BrokerEvents()
        self._connected = dict.fromkeys(Channel, False)
        self._dropped = False
        self._stale: set[str] = set()
        # reject_orders(): every new order is rejected with this reason until this time (time.monotonic()).
        self._reject_until = 0.0
        self._failing_queries: dict[str, float] = {}  # account query -> monotonic time its fault ends
        self._reject_with = ""
        self._closed = asyncio.Event()
        self._tokens = float(rate_limit_burst)
        self._bucket_at = self._clock()
        self._busy = 0  # operations between a state change and the end of its event delivery
        self._idle = asyncio.Event()
        self._idle.set()

    # -- market data ------------------------------------------------------------------------------------------
    def base_asset(self, symbol: str) -> str:
        """The asset a symbol trades: BTC for BTC-USD."""
        suffix = f"-{self.quote_asset}"
        if symbol.endswith(suffix):
            return symbol[: -len(suffix)]
        return symbol.split("-", 1)[0]

    def tick_size(self, symbol: str) -> Decimal:
        """The price increment of `symbol`."""
        self._check_symbol(symbol)
        return self._tick_sizes[symbol]

    def step_size(self, symbol: str) -> Decimal:
        """The quantity increment (and minimum) of `symbol`."""
        self._check_symbol(symbol)
        return self._step_sizes[symbol]

    def orders(self) -> list[VenueOrder]:
        """Every order the venue remembers (all open ones, the last MAX_RETAINED_CLOSED_ORDERS closed), oldest
        first: what a venue's order history endpoints serve."""
        return [dataclasses.replace(o) for o in self._orders.values()]

    def quote(self, symbol: str) -> Quote:
        """The current bid/ask around the mid price, stamped with the venue clock."""
        self._check_symbol(symbol)
        return self._quote(symbol, self._venue_now())

    async def tick(self) -> dict[str, Quote]:
        """Advance every price one random-walk step, fill resting orders that now cross, publish quotes."""
        with self._delivering():
            now = self._venue_now()
            quotes = self._step_prices(now)
            notifications = self._match(now)
            if notifications:
                self._changed()
            for symbol, quote in quotes.items():
                await self._publish_quote(symbol, quote)
            await self._persist()
            await self._deliver(notifications)
        return quotes

    def prices(self) -> dict[str, Decimal]:
        """The mid price of every symbol (what another account on the same market follows)."""
        return dict(self._mid)

    async def follow(self, prices: Mapping[str, Decimal]) -> None:
        """The market moved elsewhere: take these mid prices (another venue's `prices()`: an account of its own on
        the same market, as a sub-account is), fill the resting orders that now cross, publish quotes."""
        moved = [s for s, mid in prices.items() if s in self._mid and self._mid[s] != mid]
        if not moved:
            return  # what did not cross at these prices does not cross now
        with self._delivering():
            now = self._venue_now()
            for symbol in moved:
                self._mid[symbol] = prices[symbol]
            notifications = self._match(now)
            if notifications:
                self._changed()
            for symbol in moved:
                await self._publish_quote(symbol, self._quote(symbol, now))
            await self._persist()
            await self._deliver(notifications)

    async def run(self, tick_interval: float | None = None) -> None:
        """Tick every `tick_interval` seconds (the constructor's by default) until close()."""
        interval = self.tick_interval if tick_interval is None else tick_interval
        while not self._closed.is_set():
            try:
                async with asyncio.timeout(interval):
                    await self._closed.wait()
            except TimeoutError:
                try:
                    await self.tick()
                except Exception:  # a failing callback is the bot's problem; the market goes on
                    LOG.exception("%s: an event callback failed during a tick", self.venue)

    def advance(self, seconds: float) -> list[VenueFill]:
        """Simulate the venue running for `seconds` while nobody listened: ticks and fills, no events.

        Ticks are stamped in the past, ending now, so a bot restarted after `seconds` of downtime sees the
        fills at the times they would have happened. Returns the fills executed.
        """
        ticks = int(seconds // self.tick_interval)
        if ticks <= 0:
            return []
        step = self.tick_interval if ticks <= MAX_ADVANCE_TICKS else seconds / MAX_ADVANCE_TICKS
        ticks = min(ticks, MAX_ADVANCE_TICKS)
        start = self._venue_now() - timedelta(seconds=step * ticks)
        fills: list[VenueFill] = []
        for i in range(1, ticks + 1):
            at = start + timedelta(seconds=step * i)
            self._step_prices(at)
            fills.extend(n for n in self._match(at) if isinstance(n, VenueFill))
        self._changed()
        self._save_now()
        return fills

    # -- Broker: connection -----------------------------------------------------------------------------------
    async def connect(self, events: BrokerEvents) -> None:
        self._events = events
        self._closed.clear()
        self._dropped = False
        self._stale.clear()  # a new connection subscribes to every symbol
        for channel in Channel:
            if not self._connected[channel]:
                self._connected[channel] = True
                await self._notify_connection(channel, True)
        await self._send_snapshots(self.symbols)

    async def close(self) -> None:
        for channel in Channel:
            self._connected[channel] = False
        self._closed.set()

    def is_connected(self, channel: Channel) -> bool:
        return self._connected[channel]

    async def reconnect(self) -> None:
        self._dropped = False
        self._closed.clear()
        for channel in Channel:
            if not self._connected[channel]:
                self._connected[channel] = True
                await self._notify_connection(channel, True)
                if channel is Channel.MARKET_DATA:
                    await self._send_snapshots(self.symbols)

    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        self._require(Channel.MARKET_DATA)
        targets = self.symbols if symbols is None else symbols
        for symbol in targets:
            if symbol not in self._mid:
                raise BrokerError("other", f"unknown symbol {symbol}")
        self._stale.difference_update(targets)
        await self._send_snapshots(targets)

    # -- Broker: orders ---------------------------------------------------------------------------------------
    async def submit(self, request: OrderRequest) -> VenueOrder:
        self._require(Channel.ORDERS)
        self._spend_token()
        symbol = request.symbol
        if symbol not in self._mid:
            raise BrokerError("other", f"unknown symbol {symbol}")
        quantity = self._round_quantity(symbol, Decimal(request.quantity))
        if quantity <= 0:
            raise BrokerError("other", f"quantity must be at least one step ({self._step_sizes[symbol]})")
        price: Decimal | None = None
        if request.order_type is OrderType.LIMIT:
            if request.price is None or request.price <= 0:
                raise BrokerError("other", "a limit order needs a positive price")
            price = self._round_price(symbol, Decimal(request.price))
        self._check_new_id(request.client_order_id)
        await asyncio.sleep(self.order_latency)
        self._check_new_id(request.client_order_id)  # a concurrent submit may have taken the id meanwhile

        with self._delivering():
            now = self._venue_now()
            order = self._new_order(
                request.client_order_id, symbol, request.side, request.order_type, quantity, price, now
            )
            if request.reduce_only:
                self._reduce_only.add(order.venue_order_id)
            reason = self._reject_reason(order, request.reduce_only)
            if reason is not None:
                self._set_status(order, OrderStatus.REJECTED)
                order.reject_reason = reason
            notifications: list[Notification] = [dataclasses.replace(order)]
            if reason is None:
                notifications.extend(self._try_fill(order, now, on_arrival=True))
            self._prune_orders()
            await self._autosave()
            await self._deliver(notifications)
        if not self._connected[Channel.ORDERS]:
            # The order reached the venue but the answer is lost: the bot must find out by reconciling.
            raise BrokerError(
                "network", f"{self.venue}: connection lost before the response to {order.client_order_id}"
            )
        return dataclasses.replace(order)

    async def cancel(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        self._require(Channel.ORDERS)
        self._spend_token()
        order = self._find(client_order_id, venue_order_id)
        if order is None:
            raise BrokerError("other", "unknown order")
        if not order.status.is_open:
            raise BrokerError("other", "order already closed")
        with self._delivering():
            self._set_status(order, OrderStatus.CANCELED)
            await self._autosave()
            await self._deliver([dataclasses.replace(order)])
        return dataclasses.replace(order)

    async def order_status(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder | None:
        """Any order the venue still remembers (every open one, the last MAX_RETAINED_CLOSED_ORDERS closed)."""
        self._require(Channel.ORDERS)
        order = self._find(client_order_id, venue_order_id)
        return None if order is None else dataclasses.replace(order)

    async def drain_events(self) -> None:
        """Wait (up to DRAIN_TIMEOUT_SECONDS) until no operation is between its state change and its last event."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                await self._idle.wait()
        except TimeoutError:
            LOG.warning("%s: events still being delivered after %g s", self.venue, DRAIN_TIMEOUT_SECONDS)

    # -- Broker: account --------------------------------------------------------------------------------------
    async def positions(self) -> dict[str, Decimal]:
        self._require(Channel.ORDERS)
        self._check_query("positions")
        return dict(self._positions)

    async def balances(self) -> dict[str, Decimal]:
        self._require(Channel.ORDERS)
        self._check_query("balances")
        return dict(self._balances)

    async def open_orders(self) -> list[VenueOrder]:
        self._require(Channel.ORDERS)
        return [dataclasses.replace(o) for o in self._open.values()]

    async def recent_fills(self, since: datetime | None = None) -> list[VenueFill]:
        self._require(Channel.ORDERS)
        fills = sorted(self._fills, key=lambda f: (f.executed_at, int(f.trade_id[1:])))
        if since is None:
            return fills
        return [f for f in fills if f.executed_at >= since]

    async def server_time(self) -> datetime:
        self._require(Channel.ORDERS)
        return self._venue_now()

    def rate_limit_headroom(self) -> float:
        """Share of the request budget left, 0..1 (a token bucket refilled at `rate_limit_per_second`)."""
        self._refill()
        return max(0.0, min(1.0, self._tokens / self.rate_limit_burst))

    # -- fault injection --------------------------------------------------------------------------------------
    async def drop_connection(self) -> None:
        """Both channels go down (on_connection(ch, False), each drop a "network" on_venue_error, as a stream that
        closes reports); requests raise "network" until reconnect()."""
        self._dropped = True
        for channel in Channel:
            if self._connected[channel]:
                self._connected[channel] = False
                if self._events.on_venue_error is not None:
                    self._events.on_venue_error("network")
                await self._notify_connection(channel, False)

    async def reject_orders(self, reason: str, seconds: float) -> None:
        """Every new order is rejected with `reason` for `seconds` (a margin call, a venue in cancel-only mode, a
        sizing bug): the connection stays up, cancels still work."""
        self._reject_with = reason
        self._reject_until = time.monotonic() + seconds

    async def fail_queries(self, queries: Iterable[str], seconds: float) -> None:
        """The account queries named (`positions`, `balances`) fail as unavailable for `seconds`, everything else
        answering (an account endpoint in trouble while orders and fills still flow)."""
        until = time.monotonic() + seconds
        for query in queries:
            if query not in ACCOUNT_QUERIES:
                raise ValueError(f"unknown account query {query!r}; one of {', '.join(ACCOUNT_QUERIES)}")
            self._failing_queries[query] = until

    def _check_query(self, query: str) -> None:
        if time.monotonic() < self._failing_queries.get(query, 0.0):
            raise BrokerError("unavailable", f"{self.venue}: the {query} query is unavailable", outcome_unknown=False)

    async def stop_market_data(self, symbol: str) -> None:
        """Quotes for `symbol` stop, the connection staying up, until resubscribe()."""
        self._check_symbol(symbol)
        self._stale.add(symbol)

    async def inject_hidden_fill(self, symbol: str, quantity: Decimal, price: Decimal | None = None) -> VenueFill:
        """The venue's account changes by a fill nobody is told about (signed quantity: > 0 buys, < 0 sells).

        It is recorded in recent_fills with client_order_id None, at `price` or the taker price, taker fee.
        """
        self._check_symbol(symbol)
        signed = self._round_quantity(symbol, abs(Decimal(quantity))) * (1 if quantity > 0 else -1)
        if signed == 0:
            raise ValueError("a hidden fill needs a quantity of at least one step")
        side = Side.BUY if signed > 0 else Side.SELL
        now = self._venue_now()
        quote = self._quote(symbol, now)
        at = self._round_price(symbol, Decimal(price)) if price is not None else self._taker_price(side, quote)
        if self.spot:
            asset = self.base_asset(symbol) if side is Side.SELL else self.quote_asset
            need = abs(signed) if side is Side.SELL else abs(signed) * at * (1 + self.taker_fee)
            if need > self._available(asset):
                raise ValueError(f"a spot account cannot pay for it: {self._available(asset)} {asset} available")
        self._order_seq += 1
        fill = self._record_fill(
            None, f"P{self.id_base + self._order_seq}", symbol, side, abs(signed), at, "taker", now
        )
        self._remember(self._hidden_fills, fill.trade_id)
        await self._autosave()
        return fill

    async def gap_price(self, symbol: str, relative_change: float) -> Quote:
        """The price jumps by `relative_change` (-0.08 is -8 %); resting orders it crosses fill, a quote is sent."""
        self._check_symbol(symbol)
        if relative_change <= -1:
            raise ValueError("a price cannot fall by 100 % or more")
        moved = self._mid[symbol] * (1 + Decimal(str(relative_change)))
        with self._delivering():
            self._mid[symbol] = max(self._tick_sizes[symbol], self._round_price(symbol, moved))
            now = self._venue_now()
            notifications = self._match(now)
            await self._autosave()
            quote = self._quote(symbol, now)
            await self._publish_quote(symbol, quote)
            await self._deliver(notifications)
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
        self._check_symbol(symbol)
        qty = self._round_quantity(symbol, Decimal(quantity))
        if qty <= 0:
            raise ValueError("an external order needs a quantity of at least one step")
        limit: Decimal | None = None
        if order_type is OrderType.LIMIT:
            if price is None or price <= 0:
                raise ValueError("an external limit order needs a positive price")
            limit = self._round_price(symbol, Decimal(price))
        if client_order_id is None:
            self._external_seq += 1
            client_order_id = f"manual-{self._external_seq}"
        if client_order_id and client_order_id in self._by_client:
            raise ValueError(f"client order id {client_order_id} is already in use")
        now = self._venue_now()
        order = self._new_order(client_order_id, symbol, side, order_type, qty, limit, now)
        if self.spot and self._unfunded(order):
            self._forget(order)
            raise ValueError(f"a spot account cannot pay for {side.value} {qty} {symbol}")
        self._silent.add(order.venue_order_id)
        self._try_fill(order, now, on_arrival=True)
        await self._autosave()
        return dataclasses.replace(order)

    async def fill_without_notifying(
        self, client_order_id: str = "", quantity: Decimal | None = None, *, venue_order_id: str = ""
    ) -> VenueFill:
        """Fill an open order (all that remains by default) and lose the events, as when a bot dies mid-fill.

        A limit order fills at its price as maker, a market order at the taker price.
        """
        order = self._find(client_order_id, venue_order_id)
        if order is None or not order.status.is_open:
            raise ValueError(f"no open order {client_order_id or venue_order_id}")
        remaining = order.quantity - order.filled_quantity
        qty = remaining if quantity is None else self._round_quantity(order.symbol, Decimal(quantity))
        if not 0 < qty <= remaining:
            raise ValueError(f"quantity must be more than 0 and at most the remaining {remaining}")
        now = self._venue_now()
        if order.order_type is OrderType.LIMIT and order.price is not None:
            fill = self._execute(order, qty, order.price, "maker", now)
        else:
            taker_price = self._taker_price(order.side, self._quote(order.symbol, now))
            fill = self._execute(order, qty, taker_price, "taker", now)
        self._remember(self._unnotified_fills, fill.trade_id)
        await self._autosave()
        return fill

    async def cancel_without_notifying(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        """The venue cancels an open order (expiry, self-trade prevention, an operator) and the event is lost."""
        order = self._find(client_order_id, venue_order_id)
        if order is None or not order.status.is_open:
            raise ValueError(f"no open order {client_order_id or venue_order_id}")
        self._set_status(order, OrderStatus.CANCELED)
        await self._autosave()
        return dataclasses.replace(order)

    async def transfer(self, asset: str, amount: Decimal) -> Decimal:
        """A deposit (> 0) or withdrawal (< 0) made outside the bot; returns the new balance. A balance withdrawn to
        zero is no longer listed by `balances()`, as venues that list only non-zero assets do."""
        total = self._balances.get(asset, Decimal(0)) + Decimal(amount)
        if total < 0:
            raise ValueError(f"cannot withdraw {-Decimal(amount)} {asset}: the balance is {total - Decimal(amount)}")
        if total == 0:
            self._balances.pop(asset, None)
        else:
            self._balances[asset] = total
        await self._autosave()
        return total

    async def set_clock_skew(self, seconds: float) -> None:
        """The venue's clock runs `seconds` ahead of the local one (negative: behind)."""
        self._skew = float(seconds)
        await self._autosave()

    def faults(self) -> dict[str, Any]:
        """The faults in force and the account changes injected since the last clear_faults()."""
        external = [o.client_order_id or o.venue_order_id for vid, o in self._open.items() if vid in self._silent]
        return {
            "connection_dropped": self._dropped and not all(self._connected.values()),
            "stale_symbols": sorted(self._stale),
            "rejecting_orders": self._reject_with if time.monotonic() < self._reject_until else None,
            "failing_queries": sorted(q for q, until in self._failing_queries.items() if time.monotonic() < until),
            "clock_skew_seconds": self._skew,
            "external_open_orders": external,
            "hidden_fills": list(self._hidden_fills),
            "unnotified_fills": list(self._unnotified_fills),
        }

    async def clear_faults(self) -> None:
        """Restore connectivity, market data and the clock; forget the records of injected fills.

        What faults did to the account (hidden and unnotified fills, external orders) stays: it is the venue's
        truth now, and reconciliation is what must deal with it.
        """
        self._skew = 0.0
        self._reject_until = 0.0
        self._failing_queries.clear()
        self._hidden_fills.clear()
        self._unnotified_fills.clear()
        if self._dropped:
            await self.reconnect()
        if self._stale and self._connected[Channel.MARKET_DATA]:
            await self.resubscribe(sorted(self._stale))
        self._stale.clear()
        await self._autosave()

    # -- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that outlives the process, as JSON-ready data (what save_state writes)."""
        state = self._state_without_history()
        state["orders"] = [_order_to_json(o) for o in self._orders.values()]
        state["fills"] = [_fill_to_json(f) for f in self._fills]
        return state

    def _state_without_history(self) -> dict[str, Any]:
        rng_version, rng_internal, rng_gauss = self._rng.getstate()
        return {
            "version": STATE_VERSION,
            "venue": self.venue,
            "quote_asset": self.quote_asset,
            "saved_at": self._venue_now().isoformat(),
            "prices": {s: str(p) for s, p in self._mid.items()},
            "positions": {s: str(q) for s, q in self._positions.items()},
            "balances": {a: str(b) for a, b in self._balances.items()},
            "reduce_only": sorted(self._reduce_only & self._orders.keys()),  # venue order ids
            "silent_orders": sorted(self._silent & self._orders.keys()),
            "counters": {"order": self._order_seq, "trade": self._trade_seq, "external": self._external_seq},
            "rng": [rng_version, list(rng_internal), rng_gauss],
            "clock_skew_seconds": self._skew,
            "hidden_fills": list(self._hidden_fills),
            "unnotified_fills": list(self._unnotified_fills),
        }

    def _encode_state(self) -> str:
        """state_dict() as JSON, with what never changes (fills, closed orders) encoded only once."""
        head = json.dumps(self._state_without_history(), separators=(",", ":"))
        orders = ",".join(self._order_json(o) for o in self._orders.values())
        return f'{head[:-1]},"orders":[{orders}],"fills":[{",".join(self._fills_json)}]}}'

    def _order_json(self, order: VenueOrder) -> str:
        vid = order.venue_order_id
        if vid in self._open:
            return json.dumps(_order_to_json(order), separators=(",", ":"))
        encoded = self._closed_json.get(vid)
        if encoded is None:
            encoded = self._closed_json[vid] = json.dumps(_order_to_json(order), separators=(",", ":"))
        return encoded

    def save_state(self, path: str | os.PathLike[str], *, durable: bool = False) -> None:
        """Write the state as JSON atomically (temp file + os.replace); `durable` also fsyncs it.

        A kill -9 leaves either the old or the new file; fsync only matters for power loss.
        """
        _write_atomically(Path(path), self._encode_state(), durable=durable)

    def load_state(self, path: str | os.PathLike[str]) -> datetime:
        """Replace the venue's state with the one saved at `path`; returns when it was saved (venue clock).

        Symbols in the file are kept even if not configured (their positions are real); configured symbols
        missing from the file start fresh. Connections and subscriptions are not part of the state.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        version = data.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"{path}: unsupported paper venue state version {version!r}")
        if data["quote_asset"] != self.quote_asset:
            raise ValueError(f"{path}: state is in {data['quote_asset']}, this venue in {self.quote_asset}")
        for symbol in data["prices"]:
            if symbol not in self._mid:
                self.symbols.append(symbol)
                self._tick_sizes[symbol] = DEFAULT_TICK_SIZE
                self._step_sizes[symbol] = DEFAULT_STEP_SIZE
        self._mid.update({s: Decimal(p) for s, p in data["prices"].items()})
        self._positions = {s: Decimal(0) for s in self.symbols}
        self._positions.update({s: Decimal(q) for s, q in data["positions"].items()})
        self._balances = {a: Decimal(b) for a, b in data["balances"].items()}
        orders = [_order_from_json(o) for o in data["orders"]]
        self._orders = {o.venue_order_id: o for o in orders}
        self._open = {vid: o for vid, o in self._orders.items() if o.status.is_open}
        self._by_client = {o.client_order_id: o.venue_order_id for o in orders if o.client_order_id}
        reduce_only, silent = set(data["reduce_only"]), set(data["silent_orders"])
        if version == 1:  # those sets were kept by client order id
            reduce_only = {self._by_client[c] for c in reduce_only if c in self._by_client}
            silent = {self._by_client[c] for c in silent if c in self._by_client}
        self._reduce_only, self._silent = reduce_only, silent
        self._fills = [_fill_from_json(f) for f in data["fills"]]
        self._fills_json = [json.dumps(f, separators=(",", ":")) for f in data["fills"]]
        self._closed_json.clear()
        self._saved = self._changes  # the file holds this state: nothing to write until it changes
        counters = data["counters"]
        self._order_seq, self._trade_seq = int(counters["order"]), int(counters["trade"])
        self._external_seq = int(counters["external"])
        rng_version, rng_internal, rng_gauss = data["rng"]
        self._rng.setstate((rng_version, tuple(rng_internal), rng_gauss))
        self._skew = float(data["clock_skew_seconds"])
        self._hidden_fills = list(data["hidden_fills"])
        self._unnotified_fills = list(data["unnotified_fills"])
        return datetime.fromisoformat(data["saved_at"])

    # -- internals: prices ------------------------------------------------------------------------------------
    def _venue_now(self) -> datetime:
        return self._clock() + timedelta(seconds=self._skew)

    def _check_symbol(self, symbol: str) -> None:
        if symbol not in self._mid:
            raise ValueError(f"unknown symbol {symbol}")

    def _round_price(self, symbol: str, price: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
        return price.quantize(self._tick_sizes[symbol], rounding=rounding)

    def _round_quantity(self, symbol: str, quantity: Decimal) -> Decimal:
        return quantity.quantize(self._step_sizes[symbol], rounding=ROUND_DOWN)

    def _quote(self, symbol: str, at: datetime) -> Quote:
        mid = self._mid[symbol]
        half = mid * self.spread / 2
        tick = self._tick_sizes[symbol]
        bid = max(tick, self._round_price(symbol, mid - half, ROUND_FLOOR))
        ask = max(bid + tick, self._round_price(symbol, mid + half, ROUND_CEILING))
        return Quote(symbol=symbol, bid=bid, ask=ask, timestamp=at)

    def _step_prices(self, at: datetime) -> dict[str, Quote]:
        quotes: dict[str, Quote] = {}
        for symbol in self.symbols:
            change = Decimal(repr(self._rng.gauss(0.0, self.volatility)))
            moved = self._round_price(symbol, self._mid[symbol] * (1 + change))
            self._mid[symbol] = max(self._tick_sizes[symbol], moved)
            quotes[symbol] = self._quote(symbol, at)
        return quotes

    @staticmethod
    def _taker_price(side: Side, quote: Quote) -> Decimal:
        return quote.ask if side is Side.BUY else quote.bid

    # -- internals: orders and fills --------------------------------------------------------------------------
    def _check_new_id(self, client_order_id: str) -> None:
        if not client_order_id:
            raise BrokerError("other", "client_order_id must not be empty")
        if client_order_id in self._by_client:
            raise BrokerError("other", f"duplicate client_order_id {client_order_id}")

    def _find(self, client_order_id: str, venue_order_id: str) -> VenueOrder | None:
        if venue_order_id:
            return self._orders.get(venue_order_id)
        found = self._by_client.get(client_order_id) if client_order_id else None
        return None if found is None else self._orders.get(found)

    @contextlib.contextmanager
    def _delivering(self) -> Iterator[None]:
        """Marks an operation that changes state and then delivers its events: drain_events() waits for it."""
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    def _new_order(
        self,
        client_order_id: str,
        symbol: str,
        side: Side,
        order_type: OrderType,
        quantity: Decimal,
        price: Decimal | None,
        now: datetime,
    ) -> VenueOrder:
        self._order_seq += 1
        order = VenueOrder(
            client_order_id=client_order_id,
            venue_order_id=f"P{self.id_base + self._order_seq}",
            symbol=symbol,
            side=side,
            order_type=order_type,
            quantity=quantity,
            price=price,
            filled_quantity=Decimal(0),
            status=OrderStatus.ACKNOWLEDGED,
            created_at=now,
        )
        self._orders[order.venue_order_id] = order
        self._open[order.venue_order_id] = order
        if client_order_id:
            self._by_client[client_order_id] = order.venue_order_id
        return order

    def _forget(self, order: VenueOrder) -> None:
        """Undo `_new_order` of an order that was never placed."""
        self._order_seq -= 1
        del self._orders[order.venue_order_id]
        del self._open[order.venue_order_id]
        if order.client_order_id:
            del self._by_client[order.client_order_id]

    def _set_status(self, order: VenueOrder, status: OrderStatus) -> None:
        order.status = status
        if status.is_open:
            self._open[order.venue_order_id] = order
        else:
            self._open.pop(order.venue_order_id, None)

    def reserved(self) -> dict[str, Decimal]:
        """What the open orders hold of each asset (Kraken's `hold_trade`): a buy its remaining quantity at its limit
        price (a market order at the ask) plus the higher fee, in the quote asset; a sell its remaining quantity of the
        base asset."""
        held: dict[str, Decimal] = {}
        for order in self._open.values():
            asset, amount = self._reservation(order)
            held[asset] = held.get(asset, Decimal(0)) + amount
        return held

    def _reservation(self, order: VenueOrder) -> tuple[str, Decimal]:
        left = order.quantity - order.filled_quantity
        if order.side is Side.SELL:
            return self.base_asset(order.symbol), left
        price = order.price if order.price is not None else self._quote(order.symbol, self._venue_now()).ask
        return self.quote_asset, left * price * (1 + max(self.maker_fee, self.taker_fee))

    def _available(self, asset: str, exclude: str | None = None) -> Decimal:
        """The balance of `asset` not reserved by open orders (other than the order `exclude`)."""
        reserved = Decimal(0)
        for order in self._open.values():
            if order.venue_order_id != exclude:
                held, amount = self._reservation(order)
                if held == asset:
                    reserved += amount
        return self._balances.get(asset, Decimal(0)) - reserved

    def _unfunded(self, order: VenueOrder) -> bool:
        """The account cannot pay for `order` with what open orders leave (a sell checked on a spot venue only)."""
        asset, amount = self._reservation(order)
        if order.side is Side.SELL and not self.spot:
            return False
        return amount > self._available(asset, exclude=order.venue_order_id)

    def _reject_reason(self, order: VenueOrder, reduce_only: bool) -> str | None:
        if time.monotonic() < self._reject_until:
            return self._reject_with
        if reduce_only:
            position = self._positions[order.symbol]
            if position * order.side.sign >= 0 or order.quantity > abs(position):
                return "reduce_only"
        if self._unfunded(order):
            return "insufficient_funds"
        if self._rng.random() < self.reject_probability:
            return self._rng.choice(RANDOM_REJECT_REASONS)
        return None

    def _affordable(self, order: VenueOrder, price: Decimal, liquidity: str) -> Decimal:
        """On a spot venue, the most of `order` the account can pay for at `price` (rounded down to the step)."""
        if order.side is Side.SELL:
            return self._available(self.base_asset(order.symbol), exclude=order.venue_order_id)
        fee = self.maker_fee if liquidity == "maker" else self.taker_fee
        funds = self._available(self.quote_asset, exclude=order.venue_order_id)
        return self._round_quantity(order.symbol, max(Decimal(0), funds) / (price * (1 + fee)))

    def _try_fill(
        self, order: VenueOrder, now: datetime, *, on_arrival: bool, quote: Quote | None = None
    ) -> list[Notification]:
        """Fill what the current price allows; returns the fill and the order update, or nothing."""
        if quote is None:
            quote = self._quote(order.symbol, now)
        if order.order_type is OrderType.MARKET or order.price is None:
            price, liquidity = self._taker_price(order.side, quote), "taker"
        else:
            crosses = quote.ask <= order.price if order.side is Side.BUY else quote.bid >= order.price
            if not crosses:
                return []
            if on_arrival:  # it takes liquidity at the better book price
                price, liquidity = self._taker_price(order.side, quote), "taker"
            else:  # it rested in the book and the market came to it
                price, liquidity = order.price, "maker"
        remaining = order.quantity - order.filled_quantity
        qty = remaining
        if self._rng.random() < self.partial_fill_probability:
            share = Decimal(repr(self._rng.uniform(*PARTIAL_FILL_FRACTION)))
            part = self._round_quantity(order.symbol, remaining * share)
            if 0 < part < remaining:
                qty = part
        if order.venue_order_id in self._reduce_only:
            position = self._positions[order.symbol]
            allowed = abs(position) if position * order.side.sign < 0 else Decimal(0)
            if allowed <= 0:  # the position it was to reduce is gone: the venue cancels it
                self._set_status(order, OrderStatus.CANCELED)
                return [dataclasses.replace(order)]
            qty = min(qty, allowed)
        if self.spot:
            qty = min(qty, self._affordable(order, price, liquidity))
            if qty <= 0:  # the account cannot pay for any of it (a market order's price moved on): canceled
                self._set_status(order, OrderStatus.CANCELED)
                return [dataclasses.replace(order)]
        fill = self._execute(order, qty, price, liquidity, now)
        return [fill, dataclasses.replace(order)]

    def _match(self, now: datetime) -> list[Notification]:
        notifications: list[Notification] = []
        quotes: dict[str, Quote] = {}
        for order in list(self._open.values()):
            quote = quotes.get(order.symbol)
            if quote is None:
                quote = quotes[order.symbol] = self._quote(order.symbol, now)
            notifications.extend(self._try_fill(order, now, on_arrival=False, quote=quote))
        if notifications:
            self._prune_orders()
        return notifications

    def _execute(self, order: VenueOrder, qty: Decimal, price: Decimal, liquidity: str, now: datetime) -> VenueFill:
        order.filled_quantity += qty
        done = order.filled_quantity >= order.quantity
        self._set_status(order, OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED)
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
        fee = notional * (self.maker_fee if liquidity == "maker" else self.taker_fee)
        self._trade_seq += 1
        fill = VenueFill(
            trade_id=f"T{self.id_base + self._trade_seq}",
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
        self._positions[symbol] += side.sign * qty
        self._balances[self.quote_asset] -= side.sign * notional + fee
        base = self.base_asset(symbol)
        self._balances[base] = self._balances.get(base, Decimal(0)) + side.sign * qty
        self._fills.append(fill)
        self._fills_json.append(json.dumps(_fill_to_json(fill), separators=(",", ":")))
        if len(self._fills) > MAX_RETAINED_FILLS:
            del self._fills[: len(self._fills) - MAX_RETAINED_FILLS]
            del self._fills_json[: len(self._fills_json) - MAX_RETAINED_FILLS]
        return fill

    def _prune_orders(self) -> None:
        if len(self._orders) - len(self._open) <= MAX_RETAINED_CLOSED_ORDERS:
            return
        closed = [vid for vid in self._orders if vid not in self._open]
        for vid in closed[: max(0, len(closed) - MAX_RETAINED_CLOSED_ORDERS)]:
            order = self._orders.pop(vid)
            self._closed_json.pop(vid, None)
            if self._by_client.get(order.client_order_id) == vid:
                del self._by_client[order.client_order_id]
            self._reduce_only.discard(vid)
            self._silent.discard(vid)

    @staticmethod
    def _remember(records: list[str], trade_id: str) -> None:
        records.append(trade_id)
        if len(records) > MAX_FAULT_RECORDS:
            del records[: len(records) - MAX_FAULT_RECORDS]

    # -- internals: requests and events -----------------------------------------------------------------------
    def _require(self, channel: Channel) -> None:
        if not self._connected[channel]:
            # Nothing was sent: a definite failure, unlike a connection lost while a submit waits for its answer.
            raise BrokerError(
                "network", f"{self.venue}: {channel.value} channel is not connected", outcome_unknown=False
            )

    def _refill(self) -> None:
        now = self._clock()
        elapsed = (now - self._bucket_at).total_seconds()
        if elapsed > 0:
            self._tokens = min(self.rate_limit_burst, self._tokens + elapsed * self.rate_limit_per_second)
        self._bucket_at = now

    def _spend_token(self) -> None:
        self._refill()
        if self._tokens < 1:
            raise BrokerError("rate_limit", f"{self.venue}: more than {self.rate_limit_per_second:g} requests/s")
        self._tokens -= 1

    def _changed(self) -> None:
        """The state changed: the next `_persist` writes it to the autosave file."""
        self._changes += 1

    async def _autosave(self) -> None:
        self._changed()
        await self._persist()

    async def _persist(self) -> None:
        """Return once the autosave file holds every change made so far. Called before anyone hears of a change (an
        event delivered, a request answered), so a kill -9 never leaves a bot knowing of a fill or an order the
        venue's file lacks (the restarted venue would reuse its ids).

        Off the event loop: the state is encoded on the loop (cheap: fills and closed orders are encoded once each),
        then written and renamed into place on a worker thread. Writes never overlap; the changes made while one is
        under way all go out in the next, so a burst of events costs one or two writes, not one each.
        """
        if self.autosave_path is None or self._saved >= self._changes:
            return
        wanted = self._changes
        async with self._save_lock:
            if self._saved >= wanted:
                return  # a write that started after that change took it along
            generation, data = self._changes, self._encode_state()
            await asyncio.to_thread(self._write_autosave, self.autosave_path, data, generation)
            self._saved = max(self._saved, generation)

    def _save_now(self) -> None:
        """Write the autosave file synchronously (advance(): once at a start, before trading begins)."""
        if self.autosave_path is not None:
            generation = self._changes
            self._write_autosave(self.autosave_path, self._encode_state(), generation)
            self._saved = max(self._saved, generation)

    def _write_autosave(self, target: Path, data: str, generation: int) -> None:
        """On any thread: replace the file, unless a newer state is there already (writes may finish in any
        order)."""
        with self._write_lock:
            if generation <= self._written:
                return
            _write_atomically(target, data)
            self._written = generation

    async def _notify_connection(self, channel: Channel, up: bool) -> None:
        if self._events.on_connection is not None:
            await self._events.on_connection(channel, up)

    async def _publish_quote(self, symbol: str, quote: Quote) -> None:
        if self._connected[Channel.MARKET_DATA] and symbol not in self._stale and self._events.on_quote is not None:
            await self._events.on_quote(quote)

    async def _send_snapshots(self, symbols: Iterable[str]) -> None:
        now = self._venue_now()
        for symbol in symbols:
            await self._publish_quote(symbol, self._quote(symbol, now))

    async def _deliver(self, notifications: list[Notification]) -> None:
        """Hand order updates and fills to the bot, in order; lost while the orders channel is down."""
        for item in notifications:
            if not self._connected[Channel.ORDERS] or item.venue_order_id in self._silent:
                continue
            if isinstance(item, VenueFill):
                if self._events.on_fill is not None:
                    await self._events.on_fill(item)
            elif self._events.on_order is not None:
                await self._events.on_order(item)
