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
  event loop, see `VenueState.persist`): a kill -9 of the process never leaves a bot knowing more than the file.
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
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

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
from trading_ops.paper.book import RANDOM_REJECT_REASONS, Fees, Notification, OrderBook
from trading_ops.paper.faults import FaultModel
from trading_ops.paper.market import DEFAULT_SPREAD, RandomWalkMarket
from trading_ops.paper.persistence import VenueState

if TYPE_CHECKING:
    from trading_ops.config import PaperConfig

__all__ = ["RANDOM_REJECT_REASONS", "PaperVenue"]

LOG = logging.getLogger(__name__)
DEFAULT_SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")
# The account calls fail_queries can make fail (cancel_all_orders_after: the dead man's switch refused).
ACCOUNT_QUERIES = ("positions", "balances", "cancel_all_orders_after")
MAX_ADVANCE_TICKS = 100_000  # past this, advance() takes coarser steps rather than running for minutes
DRAIN_TIMEOUT_SECONDS = 5.0
# Kraken's CancelAllOrdersAfter takes a timeout under a day (docs.kraken.com, "Cancel All Orders After X").
MAX_CANCEL_AFTER_SECONDS = 86_400
# The faults PaperVenue keeps in its FaultModel (subjects: a symbol, an account query).
DROPPED = "drop_connection"
STALE = "stale_market_data"
REJECTING = "reject_orders"
FAILING_QUERY = "fail_query"


def _utcnow() -> datetime:
    return datetime.now(UTC)


Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def _request(channel: Channel) -> Callable[[Method], Method]:
    """A Broker method that is one request to the venue: told to BrokerEvents.on_venue_request with how long it
    took, answered or failed (the API error ratio's denominator, as a real venue's REST call is)."""

    def wrap(method: Method) -> Method:
        @functools.wraps(method)
        async def timed(self: PaperVenue, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return await method(self, *args, **kwargs)
            finally:
                report = self._events.on_venue_request
                if report is not None:
                    report(channel.value, time.monotonic() - started)

        return cast(Method, timed)

    return wrap


class PaperVenue(Broker):
    """A simulated venue implementing the broker interface; deterministic for a given seed and clock.

    A facade over the parts that do the work, each owning one concern: `market` (RandomWalkMarket: symbols, prices,
    the random generator), `book` (OrderBook: the account's orders, fills, positions and balances, and the matching),
    `persistence` (VenueState: the state file and its autosave) and `fault_model` (FaultModel, shared with the Kraken
    gateway: which faults are in force). It owns what ties them together: the connection (channels, callbacks and
    the order in which a change is saved and then told), the request rate limit and the venue clock.

    Its size is its two interfaces: the Broker methods a bot calls, and the fault-injection methods tests, the chaos
    commands and the gateway call; each of the latter is a few lines over `book` or `fault_model`.
    """

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
        for name, value in (
            ("reject_probability", reject_probability),
            ("partial_fill_probability", partial_fill_probability),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if order_latency < 0 or volatility < 0 or tick_interval <= 0 or rate_limit_burst < 1:
            raise ValueError("order_latency and volatility must be >= 0, tick_interval > 0, rate_limit_burst >= 1")
        self.market = RandomWalkMarket(
            symbols,
            quote_asset=quote_asset,
            initial_prices=initial_prices,
            tick_sizes=tick_sizes,
            step_sizes=step_sizes,
            spread=spread,
            volatility=volatility,
            seed=seed,
        )
        fees = Fees(Decimal(maker_fee), Decimal(taker_fee), reject_probability, partial_fill_probability)
        # Venue order and trade ids count up from id_base: accounts of one venue (sub-accounts) never share an id.
        self.book = OrderBook(self.market, fees, starting_balance=starting_balance, id_base=id_base, spot=spot)
        path = None if autosave_path is None else Path(autosave_path)
        self.persistence = VenueState(self.market, self.book, self._state_head, path)
        self.fault_model = FaultModel()  # deadlines on time.monotonic, like every fault's `seconds`
        self.venue = venue
        self.order_latency = order_latency
        self.tick_interval = tick_interval
        self.rate_limit_per_second = rate_limit_per_second
        self.rate_limit_burst = rate_limit_burst
        self._clock = clock
        self._skew = float(clock_skew)  # persisted with the state

        # Connection state (belongs to this process, never persisted).
        self._events = BrokerEvents()
        self._connected = dict.fromkeys(Channel, False)
        self._closed = asyncio.Event()
        self._tokens = float(rate_limit_burst)
        self._bucket_at = self._clock()
        self._busy = 0  # operations between a state change and the end of its event delivery
        self._idle = asyncio.Event()
        self._idle.set()
        # The dead man's switch (cancel_all_orders_after): when every open order is canceled, None when disarmed.
        # The venue's own state, as Kraken's trading engine keeps it; not persisted (a restarted venue forgets it).
        self._cancel_all_at: datetime | None = None

    # -- settings the parts own -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, paper: PaperConfig, symbols: Iterable[str], *, seed: int, **options: Any) -> PaperVenue:
        """The venue the config's `paper` section sets up (quote asset and balance, market, latency, rejects, partial
        fills, fees, tick); `options` are the rest of __init__'s (venue, autosave_path, ...)."""
        return cls(
            symbols,
            quote_asset=paper.quote_asset,
            starting_balance=Decimal(str(paper.starting_balance)),
            seed=seed,
            volatility=paper.volatility,
            order_latency=paper.order_latency_seconds,
            reject_probability=paper.reject_probability,
            partial_fill_probability=paper.partial_fill_probability,
            maker_fee=Decimal(str(paper.maker_fee_rate)),
            taker_fee=Decimal(str(paper.taker_fee_rate)),
            tick_interval=paper.tick_interval_seconds,
            **options,
        )

    @property
    def symbols(self) -> list[str]:
        return self.market.symbols

    @property
    def quote_asset(self) -> str:
        return self.market.quote_asset

    @property
    def volatility(self) -> float:
        return self.market.volatility

    @volatility.setter
    def volatility(self, value: float) -> None:
        self.market.volatility = value

    @property
    def spread(self) -> Decimal:
        return self.market.spread

    @property
    def maker_fee(self) -> Decimal:
        return self.book.fees.maker

    @property
    def taker_fee(self) -> Decimal:
        return self.book.fees.taker

    @property
    def reject_probability(self) -> float:
        return self.book.fees.reject_probability

    @reject_probability.setter
    def reject_probability(self, value: float) -> None:
        self.book.fees.reject_probability = value

    @property
    def partial_fill_probability(self) -> float:
        return self.book.fees.partial_fill_probability

    @partial_fill_probability.setter
    def partial_fill_probability(self, value: float) -> None:
        self.book.fees.partial_fill_probability = value

    @property
    def spot(self) -> bool:
        """No balance may go negative (see the module's docstring)."""
        return self.book.spot

    @spot.setter
    def spot(self, value: bool) -> None:
        self.book.spot = value

    @property
    def id_base(self) -> int:
        return self.book.id_base

    @property
    def autosave_path(self) -> Path | None:
        return self.persistence.autosave_path

    # -- market data ------------------------------------------------------------------------------------------
    def base_asset(self, symbol: str) -> str:
        """The asset a symbol trades: BTC for BTC-USD."""
        return self.market.base_asset(symbol)

    def tick_size(self, symbol: str) -> Decimal:
        """The price increment of `symbol`."""
        self.market.check_symbol(symbol)
        return self.market.tick_sizes[symbol]

    def step_size(self, symbol: str) -> Decimal:
        """The quantity increment (and minimum) of `symbol`."""
        self.market.check_symbol(symbol)
        return self.market.step_sizes[symbol]

    def orders(self) -> list[VenueOrder]:
        """Every order the venue remembers (all open ones, the last MAX_RETAINED_CLOSED_ORDERS closed), oldest
        first: what a venue's order history endpoints serve."""
        return [dataclasses.replace(o) for o in self.book.orders.values()]

    def reserved(self) -> dict[str, Decimal]:
        """What the open orders hold of each asset (Kraken's `hold_trade`): a buy its remaining quantity at its limit
        price (a market order at the ask) plus the higher fee, in the quote asset; a sell its remaining quantity of the
        base asset."""
        return self.book.reserved()

    def quote(self, symbol: str) -> Quote:
        """The current bid/ask around the mid price, stamped with the venue clock."""
        self.market.check_symbol(symbol)
        return self.market.quote(symbol, self._venue_now())

    async def tick(self) -> dict[str, Quote]:
        """Advance every price one random-walk step, fill resting orders that now cross, publish quotes (after the
        dead man's switch, when its time has come, canceled every open order)."""
        await self.expire_dead_man_switch()
        with self._delivering():
            now = self._venue_now()
            quotes = self.market.step(now)
            notifications = self.book.match(now)
            if notifications:
                self.persistence.changed()
            for symbol, quote in quotes.items():
                await self._publish_quote(symbol, quote)
            await self.persistence.persist()
            await self._deliver(notifications)
        return quotes

    def prices(self) -> dict[str, Decimal]:
        """The mid price of every symbol (what another account on the same market follows)."""
        return dict(self.market.mid)

    async def follow(self, prices: Mapping[str, Decimal]) -> None:
        """The market moved elsewhere: take these mid prices (another venue's `prices()`: an account of its own on
        the same market, as a sub-account is), fill the resting orders that now cross, publish quotes."""
        mid = self.market.mid
        moved = [s for s, price in prices.items() if s in mid and mid[s] != price]
        if not moved:
            return  # what did not cross at these prices does not cross now
        with self._delivering():
            now = self._venue_now()
            for symbol in moved:
                mid[symbol] = prices[symbol]
            notifications = self.book.match(now)
            if notifications:
                self.persistence.changed()
            for symbol in moved:
                await self._publish_quote(symbol, self.market.quote(symbol, now))
            await self.persistence.persist()
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
            self.market.step(at)
            fills.extend(n for n in self.book.match(at) if isinstance(n, VenueFill))
        self.persistence.changed()
        self.persistence.save_now()
        return fills

    # -- Broker: connection -----------------------------------------------------------------------------------
    async def connect(self, events: BrokerEvents) -> None:
        self._events = events
        self._closed.clear()
        self.fault_model.end(DROPPED)
        for symbol in self.fault_model.subjects(STALE):  # a new connection subscribes to every symbol
            self.fault_model.end(STALE, symbol)
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
        self.fault_model.end(DROPPED)
        self._closed.clear()
        for channel in Channel:
            if not self._connected[channel]:
                self._connected[channel] = True
                await self._notify_connection(channel, True)
                if channel is Channel.MARKET_DATA:
                    await self._send_snapshots(self.symbols)

    @_request(Channel.MARKET_DATA)
    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        self._require(Channel.MARKET_DATA)
        targets = self.symbols if symbols is None else symbols
        for symbol in targets:
            if symbol not in self.market.mid:
                raise BrokerError("other", f"unknown symbol {symbol}")
        for symbol in targets:
            self.fault_model.end(STALE, symbol)
        await self._send_snapshots(targets)

    # -- Broker: orders ---------------------------------------------------------------------------------------
    def _checked_request(self, request: OrderRequest) -> tuple[Decimal, Decimal | None]:
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

    @_request(Channel.ORDERS)
    async def submit(self, request: OrderRequest) -> VenueOrder:
        self._require(Channel.ORDERS)
        self._spend_token()
        quantity, price = self._checked_request(request)
        await asyncio.sleep(self.order_latency)
        self.book.check_new_id(request.client_order_id)  # a concurrent submit may have taken the id meanwhile

        with self._delivering():
            now = self._venue_now()
            order = self.book.new_order(
                request.client_order_id, request.symbol, request.side, request.order_type, quantity, price, now
            )
            rejecting = self.fault_model.detail(REJECTING) if self.fault_model.active(REJECTING) else None
            notifications = self.book.place(order, now, reduce_only=request.reduce_only, forced_reject=rejecting)
            await self._autosave()
            await self._deliver(notifications)
        if not self._connected[Channel.ORDERS]:
            # The order reached the venue but the answer is lost: the bot must find out by reconciling.
            raise BrokerError(
                "network", f"{self.venue}: connection lost before the response to {order.client_order_id}"
            )
        return dataclasses.replace(order)

    @_request(Channel.ORDERS)
    async def cancel(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        self._require(Channel.ORDERS)
        self._spend_token()
        order = self.book.find(client_order_id, venue_order_id)
        if order is None:
            raise BrokerError("other", "unknown order")
        if not order.status.is_open:
            raise BrokerError("other", "order already closed")
        with self._delivering():
            self.book.set_status(order, OrderStatus.CANCELED, self._venue_now())
            await self._autosave()
            await self._deliver([dataclasses.replace(order)])
        return dataclasses.replace(order)

    def has_dead_man_switch(self) -> bool:
        return True

    @_request(Channel.ORDERS)
    async def cancel_all_orders_after(self, timeout: int) -> tuple[datetime, datetime | None]:
        """Kraken's dead man's switch: every open order of the account is canceled `timeout` seconds from now unless
        a later call pushes the time back; 0 disarms it. Returns the venue's time and the trigger time (None:
        disarmed). Once triggered, it stays disarmed until armed again. BrokerError("other") for a timeout Kraken
        refuses (negative, or a day or more)."""
        self._require(Channel.ORDERS)
        self._check_query("cancel_all_orders_after")
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout < MAX_CANCEL_AFTER_SECONDS:
            raise BrokerError("other", f"{self.venue}: the timeout must be 0 to 86399 whole seconds, got {timeout!r}")
        now = self._venue_now()
        self._cancel_all_at = now + timedelta(seconds=timeout) if timeout else None
        return now, self._cancel_all_at

    def dead_man_switch_trigger(self) -> datetime | None:
        """When the dead man's switch cancels every open order (None: disarmed)."""
        return self._cancel_all_at

    async def expire_dead_man_switch(self) -> list[VenueOrder]:
        """When the dead man's switch's time has come: cancel every open order of the account (its events delivered
        as a cancel's) and disarm it. Returns the orders canceled (none before the trigger time)."""
        if self._cancel_all_at is None:
            return []
        now = self._venue_now()
        if now < self._cancel_all_at:
            return []
        self._cancel_all_at = None
        canceled = []
        with self._delivering():
            for order in list(self.book.open.values()):
                self.book.set_status(order, OrderStatus.CANCELED, now)
                canceled.append(dataclasses.replace(order))
            if canceled:
                await self._autosave()
            await self._deliver(list(canceled))
        LOG.warning("%s: the dead man's switch triggered: %d open orders canceled", self.venue, len(canceled))
        return canceled

    @_request(Channel.ORDERS)
    async def order_status(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder | None:
        """Any order the venue still remembers (every open one, the last MAX_RETAINED_CLOSED_ORDERS closed)."""
        self._require(Channel.ORDERS)
        order = self.book.find(client_order_id, venue_order_id)
        return None if order is None else dataclasses.replace(order)

    async def drain_events(self) -> None:
        """Wait (up to DRAIN_TIMEOUT_SECONDS) until no operation is between its state change and its last event."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                await self._idle.wait()
        except TimeoutError:
            LOG.warning("%s: events still being delivered after %g s", self.venue, DRAIN_TIMEOUT_SECONDS)

    # -- Broker: account --------------------------------------------------------------------------------------
    @_request(Channel.ORDERS)
    async def positions(self) -> dict[str, Decimal]:
        self._require(Channel.ORDERS)
        self._check_query("positions")
        return dict(self.book.positions)

    @_request(Channel.ORDERS)
    async def balances(self) -> dict[str, Decimal]:
        self._require(Channel.ORDERS)
        self._check_query("balances")
        return dict(self.book.balances)

    @_request(Channel.ORDERS)
    async def open_orders(self) -> list[VenueOrder]:
        self._require(Channel.ORDERS)
        return [dataclasses.replace(o) for o in self.book.open.values()]

    @_request(Channel.ORDERS)
    async def recent_fills(self, since: datetime | None = None) -> list[VenueFill]:
        self._require(Channel.ORDERS)
        fills = sorted(self.book.fills, key=lambda f: (f.executed_at, int(f.trade_id[1:])))
        if since is None:
            return fills
        return [f for f in fills if f.executed_at >= since]

    @_request(Channel.ORDERS)
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
        self.fault_model.start(DROPPED)
        for channel in Channel:
            if self._connected[channel]:
                self._connected[channel] = False
                if self._events.on_venue_error is not None:
                    self._events.on_venue_error("network")
                await self._notify_connection(channel, False)

    async def reject_orders(self, reason: str, seconds: float) -> None:
        """Every new order is rejected with `reason` for `seconds` (a margin call, a venue in cancel-only mode, a
        sizing bug): the connection stays up, cancels still work."""
        self.fault_model.start(REJECTING, seconds, detail=reason)

    async def fail_queries(self, queries: Iterable[str], seconds: float) -> None:
        """The account calls named (`positions`, `balances`, `cancel_all_orders_after`) fail as unavailable for
        `seconds`, everything else answering (an account endpoint in trouble while orders and fills still flow)."""
        for query in queries:
            if query not in ACCOUNT_QUERIES:
                raise ValueError(f"unknown account query {query!r}; one of {', '.join(ACCOUNT_QUERIES)}")
            self.fault_model.start(FAILING_QUERY, seconds, subject=query)

    async def stop_market_data(self, symbol: str) -> None:
        """Quotes for `symbol` stop, the connection staying up, until resubscribe()."""
        self.market.check_symbol(symbol)
        self.fault_model.start(STALE, subject=symbol)

    async def inject_hidden_fill(self, symbol: str, quantity: Decimal, price: Decimal | None = None) -> VenueFill:
        """The venue's account changes by a fill nobody is told about (signed quantity: > 0 buys, < 0 sells).

        It is recorded in recent_fills with client_order_id None, at `price` or the taker price, taker fee.
        """
        self.market.check_symbol(symbol)
        fill = self.book.hidden_fill(symbol, quantity, price, self._venue_now())
        await self._autosave()
        return fill

    async def gap_price(self, symbol: str, relative_change: float) -> Quote:
        """The price jumps by `relative_change` (-0.08 is -8 %); resting orders it crosses fill, a quote is sent."""
        self.market.check_symbol(symbol)
        if relative_change <= -1:
            raise ValueError("a price cannot fall by 100 % or more")
        moved = self.market.mid[symbol] * (1 + Decimal(str(relative_change)))
        with self._delivering():
            self.market.set_mid(symbol, moved)
            now = self._venue_now()
            notifications = self.book.match(now)
            await self._autosave()
            quote = self.market.quote(symbol, now)
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
        self.market.check_symbol(symbol)
        now = self._venue_now()
        order = self.book.place_external(symbol, side, quantity, price, order_type, client_order_id, now)
        await self._autosave()
        return dataclasses.replace(order)

    async def fill_without_notifying(
        self, client_order_id: str = "", quantity: Decimal | None = None, *, venue_order_id: str = ""
    ) -> VenueFill:
        """Fill an open order (all that remains by default) and lose the events, as when a bot dies mid-fill.

        A limit order fills at its price as maker, a market order at the taker price.
        """
        order = self.book.find(client_order_id, venue_order_id)
        fill = self.book.fill_silently(order, client_order_id or venue_order_id, quantity, self._venue_now())
        await self._autosave()
        return fill

    async def cancel_without_notifying(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        """The venue cancels an open order (expiry, self-trade prevention, an operator) and the event is lost."""
        order = self.book.find(client_order_id, venue_order_id)
        if order is None or not order.status.is_open:
            raise ValueError(f"no open order {client_order_id or venue_order_id}")
        self.book.set_status(order, OrderStatus.CANCELED, self._venue_now())
        await self._autosave()
        return dataclasses.replace(order)

    async def transfer(self, asset: str, amount: Decimal) -> Decimal:
        """A deposit (> 0) or withdrawal (< 0) made outside the bot; returns the new balance. A balance withdrawn to
        zero is no longer listed by `balances()`, as venues that list only non-zero assets do."""
        total = self.book.transfer(asset, amount)
        await self._autosave()
        return total

    async def set_clock_skew(self, seconds: float) -> None:
        """The venue's clock runs `seconds` ahead of the local one (negative: behind)."""
        self._skew = float(seconds)
        await self._autosave()

    def faults(self) -> dict[str, Any]:
        """The faults in force and the account changes injected since the last clear_faults()."""
        model = self.fault_model
        return {
            "connection_dropped": model.active(DROPPED) and not all(self._connected.values()),
            "stale_symbols": model.subjects(STALE),
            "rejecting_orders": model.detail(REJECTING) if model.active(REJECTING) else None,
            "failing_queries": model.subjects(FAILING_QUERY, active_only=True),
            "clock_skew_seconds": self._skew,
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
        self._skew = 0.0
        model.end(REJECTING)
        for query in model.subjects(FAILING_QUERY):
            model.end(FAILING_QUERY, query)
        self.book.hidden_fills.clear()
        self.book.unnotified_fills.clear()
        if model.active(DROPPED):
            await self.reconnect()
        stale = model.subjects(STALE)
        if stale and self._connected[Channel.MARKET_DATA]:
            await self.resubscribe(stale)
        model.clear()
        await self._autosave()

    # -- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that outlives the process, as JSON-ready data (what save_state writes)."""
        return self.persistence.state_dict()

    def save_state(self, path: str | os.PathLike[str], *, durable: bool = False) -> None:
        """Write the state as JSON atomically (temp file + os.replace); `durable` also fsyncs it.

        A kill -9 leaves either the old or the new file; fsync only matters for power loss.
        """
        self.persistence.save(path, durable=durable)

    def load_state(self, path: str | os.PathLike[str]) -> datetime:
        """Replace the venue's state with the one saved at `path`; returns when it was saved (venue clock).

        Symbols in the file are kept even if not configured (their positions are real); configured symbols
        missing from the file start fresh. Connections and subscriptions are not part of the state.
        """
        data = self.persistence.load(path, self.quote_asset)
        self._skew = float(data["clock_skew_seconds"])
        return datetime.fromisoformat(data["saved_at"])

    def _state_head(self) -> dict[str, Any]:
        return {
            "venue": self.venue,
            "quote_asset": self.quote_asset,
            "saved_at": self._venue_now().isoformat(),
            "clock_skew_seconds": self._skew,
        }

    async def _autosave(self) -> None:
        self.persistence.changed()
        await self.persistence.persist()

    # -- internals: requests and events -----------------------------------------------------------------------
    def _venue_now(self) -> datetime:
        return self._clock() + timedelta(seconds=self._skew)

    def _require(self, channel: Channel) -> None:
        if not self._connected[channel]:
            # Nothing was sent: a definite failure, unlike a connection lost while a submit waits for its answer.
            raise BrokerError(
                "network", f"{self.venue}: {channel.value} channel is not connected", outcome_unknown=False
            )

    def _check_query(self, query: str) -> None:
        if self.fault_model.active(FAILING_QUERY, query):
            raise BrokerError("unavailable", f"{self.venue}: the {query} query is unavailable", outcome_unknown=False)

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

    async def _notify_connection(self, channel: Channel, up: bool) -> None:
        if self._events.on_connection is not None:
            await self._events.on_connection(channel, up)

    async def _publish_quote(self, symbol: str, quote: Quote) -> None:
        if (
            self._connected[Channel.MARKET_DATA]
            and self._events.on_quote is not None
            and not self.fault_model.active(STALE, symbol)
        ):
            await self._events.on_quote(quote)

    async def _send_snapshots(self, symbols: Iterable[str]) -> None:
        now = self._venue_now()
        for symbol in symbols:
            await self._publish_quote(symbol, self.market.quote(symbol, now))

    async def _deliver(self, notifications: list[Notification]) -> None:
        """Hand order updates and fills to the bot, in order; lost while the orders channel is down."""
        for item in notifications:
            if not self._connected[Channel.ORDERS] or item.venue_order_id in self.book.silent:
                continue
            if isinstance(item, VenueFill):
                if self._events.on_fill is not None:
                    await self._events.on_fill(item)
            elif self._events.on_order is not None:
                await self._events.on_order(item)
