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
import dataclasses
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from trading_ops.bot.broker import (
    Broker,
    BrokerError,
    BrokerEvents,
    Channel,
    OrderRequest,
    OrderType,
    Quote,
    Side,
    VenueFill,
    VenueOrder,
)
from trading_ops.paper.book import RANDOM_REJECT_REASONS, Fees, OrderBook
from trading_ops.paper.clock import VenueClock, utcnow
from trading_ops.paper.connection import VenueConnection
from trading_ops.paper.dead_man import CancelAllAfter
from trading_ops.paper.faults import FaultModel
from trading_ops.paper.injection import FaultInjection
from trading_ops.paper.market import DEFAULT_SPREAD, RandomWalkMarket
from trading_ops.paper.order_entry import OrderEntry
from trading_ops.paper.persistence import VenueState
from trading_ops.paper.rate_limit import RequestBucket
from trading_ops.paper.simulation import MarketRun

if TYPE_CHECKING:
    from trading_ops.config import PaperConfig

__all__ = ["RANDOM_REJECT_REASONS", "PaperVenue"]

DEFAULT_SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")

Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def _request(channel: Channel, query: bool = False) -> Callable[[Method], Method]:
    """A Broker method that is one request to the venue: told to BrokerEvents.on_venue_request with how long it
    took, answered or failed (the API error ratio's denominator, as a real venue's REST call is). A `query` (a look at
    the account: what a reconciliation asks) is answered `query_latency` seconds late."""

    def wrap(method: Method) -> Method:
        @functools.wraps(method)
        async def timed(self: PaperVenue, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                if query and self.query_latency:
                    await asyncio.sleep(self.query_latency)
                return await method(self, *args, **kwargs)
            finally:
                self.connection.request_done(channel, time.monotonic() - started)

        return cast(Method, timed)

    return wrap


class PaperVenue(Broker):
    """A simulated venue implementing the broker interface; deterministic for a given seed and clock.

    A facade that wires parts, each owning one concern:
    - `market` (RandomWalkMarket): symbols, prices, the random generator;
    - `book` (OrderBook): the account's orders, fills, positions and balances, and the matching;
    - `persistence` (VenueState): the state file and its autosave;
    - `connection` (VenueConnection): the channels, the bot's callbacks, the delivery of events;
    - `clock` (VenueClock): the venue's time, with the injected skew;
    - `bucket` (RequestBucket): the request rate limit;
    - `order_entry` (OrderEntry): submit and cancel;
    - `switch` (CancelAllAfter): the dead man's switch;
    - `market_run` (MarketRun): ticks, a market followed from elsewhere, time passed unobserved;
    - `fault_model` (FaultModel, shared with the Kraken gateway): which faults are in force, and `injection`
      (FaultInjection): starting and clearing them, and changing the account behind the bot's back.
    What is left here is the Broker's requests: each checks its channel and its faults, then asks the part that owns
    the answer.

    Over 400 lines and 20 public methods because it is one object to three kinds of callers, and its names are their
    API: the bot (the Broker interface, ~20 methods); tests, the chaos commands and the gateway dialects (fault
    injection, ticks, the state file); and the settings a config sets (properties). Every method past the Broker's is
    a delegation of a line or two to the part that owns it: new behaviour goes in a part, not here.
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
        clock: Callable[[], datetime] = utcnow,
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
        self.query_latency = 0.0  # seconds each look at the account takes (positions, balances, orders, fills)
        self.tick_interval = tick_interval
        self.clock = VenueClock(clock, clock_skew)  # the skew is persisted with the state
        # Connection state (belongs to this process, never persisted).
        self.connection = VenueConnection(
            venue,
            muted=self._muted,
            silent=lambda venue_order_id: venue_order_id in self.book.silent,
        )
        self.bucket = RequestBucket(venue, rate_limit_per_second, rate_limit_burst, clock)
        self.switch = CancelAllAfter(self.book, self.clock, self.connection, self.persistence.save_change)
        self.market_run = MarketRun(
            self.market, self.book, self.clock, self.connection, self.persistence, self.switch, tick_interval
        )
        self.injection = FaultInjection(
            market=self.market,
            book=self.book,
            clock=self.clock,
            fault_model=self.fault_model,
            connection=self.connection,
            save=self.persistence.save_change,
            reconnect=self.reconnect,
            resubscribe=self.resubscribe,
        )
        self.order_entry = OrderEntry(
            market=self.market,
            book=self.book,
            clock=self.clock,
            connection=self.connection,
            bucket=self.bucket,
            persistence=self.persistence,
            injection=self.injection,
            latency=lambda: self.order_latency,
        )

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
        return self.market.quote(symbol, self.clock.now())

    def prices(self) -> dict[str, Decimal]:
        """The mid price of every symbol (what another account on the same market follows)."""
        return dict(self.market.mid)

    # -- the market running (MarketRun) -----------------------------------------------------------------------
    async def tick(self) -> dict[str, Quote]:
        """One random-walk step, its fills and quotes (MarketRun.tick)."""
        return await self.market_run.tick()

    async def follow(self, prices: Mapping[str, Decimal]) -> None:
        """Take another venue's mid prices (MarketRun.follow)."""
        await self.market_run.follow(prices)

    async def run(self, tick_interval: float | None = None) -> None:
        """Tick every `tick_interval` seconds (the constructor's by default) until close()."""
        await self.market_run.run(tick_interval)

    def advance(self, seconds: float) -> list[VenueFill]:
        """The venue ran `seconds` while nobody listened; the fills executed (MarketRun.advance)."""
        return self.market_run.advance(seconds)

    # -- Broker: connection -----------------------------------------------------------------------------------
    async def connect(self, events: BrokerEvents) -> None:
        connection = self.connection
        connection.events = events
        connection.closed.clear()
        self.injection.reconnected()
        self.injection.resubscribed()  # a new connection subscribes to every symbol
        for channel in Channel:
            await connection.bring_up(channel)
        await self._send_snapshots(self.symbols)

    async def close(self) -> None:
        self.connection.close()

    def is_connected(self, channel: Channel) -> bool:
        return self.connection.is_up(channel)

    async def reconnect(self) -> None:
        self.injection.reconnected()
        self.connection.closed.clear()
        for channel in Channel:
            if await self.connection.bring_up(channel) and channel is Channel.MARKET_DATA:
                await self._send_snapshots(self.symbols)

    @_request(Channel.MARKET_DATA)
    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        self.connection.require(Channel.MARKET_DATA)
        targets = self.symbols if symbols is None else symbols
        for symbol in targets:
            if symbol not in self.market.mid:
                raise BrokerError("other", f"unknown symbol {symbol}")
        self.injection.resubscribed(targets)
        await self._send_snapshots(targets)

    async def drain_events(self) -> None:
        """Wait (up to connection.DRAIN_TIMEOUT_SECONDS) until no operation is between its state change and its last
        event."""
        await self.connection.drain()

    def rate_limit_headroom(self) -> float:
        """Share of the request budget left, 0..1 (a token bucket refilled at `rate_limit_per_second`)."""
        return self.bucket.headroom()

    # -- Broker: orders ---------------------------------------------------------------------------------------
    @_request(Channel.ORDERS)
    async def submit(self, request: OrderRequest) -> VenueOrder:
        return await self.order_entry.submit(request)

    @_request(Channel.ORDERS)
    async def cancel(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        return await self.order_entry.cancel(client_order_id, venue_order_id=venue_order_id)

    @_request(Channel.ORDERS, query=True)
    async def order_status(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder | None:
        """Any order the venue still remembers (every open one, the last MAX_RETAINED_CLOSED_ORDERS closed)."""
        self.connection.require(Channel.ORDERS)
        order = self.book.find(client_order_id, venue_order_id)
        return None if order is None else dataclasses.replace(order)

    # -- Broker: the dead man's switch (CancelAllAfter) -------------------------------------------------------
    def has_dead_man_switch(self) -> bool:
        return True

    @_request(Channel.ORDERS)
    async def cancel_all_orders_after(self, timeout: int) -> tuple[datetime, datetime | None]:
        """Kraken's dead man's switch: every open order of the account is canceled `timeout` seconds from now unless
        a later call pushes the time back; 0 disarms it. Returns the venue's time and the trigger time (None:
        disarmed). Once triggered, it stays disarmed until armed again. BrokerError("other") for a timeout Kraken
        refuses (negative, or a day or more)."""
        self.connection.require(Channel.ORDERS)
        self._check_query("cancel_all_orders_after")
        return self.switch.arm(timeout)

    def dead_man_switch_trigger(self) -> datetime | None:
        """When the dead man's switch cancels every open order (None: disarmed)."""
        return self.switch.trigger

    async def expire_dead_man_switch(self) -> list[VenueOrder]:
        """When the switch's time has come, cancel every open order and disarm it (CancelAllAfter.expire)."""
        return await self.switch.expire()

    # -- Broker: account --------------------------------------------------------------------------------------
    @_request(Channel.ORDERS, query=True)
    async def positions(self) -> dict[str, Decimal]:
        self.connection.require(Channel.ORDERS)
        self._check_query("positions")
        return dict(self.book.positions)

    @_request(Channel.ORDERS, query=True)
    async def balances(self) -> dict[str, Decimal]:
        self.connection.require(Channel.ORDERS)
        self._check_query("balances")
        return dict(self.book.balances)

    @_request(Channel.ORDERS, query=True)
    async def open_orders(self) -> list[VenueOrder]:
        self.connection.require(Channel.ORDERS)
        return [dataclasses.replace(o) for o in self.book.open.values()]

    @_request(Channel.ORDERS, query=True)
    async def recent_fills(self, since: datetime | None = None) -> list[VenueFill]:
        self.connection.require(Channel.ORDERS)
        fills = sorted(self.book.fills, key=lambda f: (f.executed_at, int(f.trade_id[1:])))
        if since is None:
            return fills
        return [f for f in fills if f.executed_at >= since]

    @_request(Channel.ORDERS)
    async def server_time(self) -> datetime:
        self.connection.require(Channel.ORDERS)
        return self.clock.now()

    # -- fault injection (FaultInjection) ---------------------------------------------------------------------
    async def drop_connection(self) -> None:
        """Both channels go down; requests raise "network" until reconnect()."""
        await self.injection.drop_connection()

    async def reject_orders(self, reason: str, seconds: float) -> None:
        """Every new order is rejected with `reason` for `seconds`."""
        await self.injection.reject_orders(reason, seconds)

    async def fail_queries(self, queries: Iterable[str], seconds: float) -> None:
        """The account calls named fail as unavailable for `seconds`."""
        await self.injection.fail_queries(queries, seconds)

    async def stop_market_data(self, symbol: str) -> None:
        """Quotes for `symbol` stop, the connection staying up, until resubscribe()."""
        await self.injection.stop_market_data(symbol)

    async def inject_hidden_fill(self, symbol: str, quantity: Decimal, price: Decimal | None = None) -> VenueFill:
        """The account changes by a fill nobody is told about (signed quantity)."""
        return await self.injection.inject_hidden_fill(symbol, quantity, price)

    async def gap_price(self, symbol: str, relative_change: float) -> Quote:
        """The price jumps by `relative_change`; resting orders it crosses fill, a quote is sent."""
        return await self.injection.gap_price(symbol, relative_change)

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
        """An order placed by hand on the venue: in open_orders under an id the bot never issued, no events."""
        return await self.injection.place_external_order(
            symbol, side, quantity, price, order_type=order_type, client_order_id=client_order_id
        )

    async def fill_without_notifying(
        self, client_order_id: str = "", quantity: Decimal | None = None, *, venue_order_id: str = ""
    ) -> VenueFill:
        """Fill an open order (all that remains by default) and lose the events."""
        return await self.injection.fill_without_notifying(client_order_id, quantity, venue_order_id=venue_order_id)

    async def cancel_without_notifying(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        """The venue cancels an open order and the event is lost."""
        return await self.injection.cancel_without_notifying(client_order_id, venue_order_id=venue_order_id)

    async def transfer(self, asset: str, amount: Decimal) -> Decimal:
        """A deposit (> 0) or withdrawal (< 0) made outside the bot; returns the new balance."""
        return await self.injection.transfer(asset, amount)

    async def set_clock_skew(self, seconds: float) -> None:
        """The venue's clock runs `seconds` ahead of the local one (negative: behind)."""
        await self.injection.set_clock_skew(seconds)

    def faults(self) -> dict[str, Any]:
        """The faults in force and the account changes injected since the last clear_faults()."""
        return self.injection.faults()

    async def clear_faults(self) -> None:
        """Restore connectivity, market data and the clock; what faults did to the account stays."""
        await self.injection.clear_faults()

    # -- persistence (VenueState) -----------------------------------------------------------------------------
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
        self.clock.skew = float(data["clock_skew_seconds"])
        return datetime.fromisoformat(data["saved_at"])

    def _state_head(self) -> dict[str, Any]:
        return {
            "venue": self.venue,
            "quote_asset": self.quote_asset,
            "saved_at": self.clock.now().isoformat(),
            "clock_skew_seconds": self.clock.skew,
        }

    # -- internals --------------------------------------------------------------------------------------------
    def _check_query(self, query: str) -> None:
        if self.injection.failing(query):
            raise BrokerError("unavailable", f"{self.venue}: the {query} query is unavailable", outcome_unknown=False)

    def _muted(self, symbol: str) -> bool:
        return self.injection.muted(symbol)  # a part wired after the connection, which needs it

    async def _send_snapshots(self, symbols: Iterable[str]) -> None:
        """A snapshot quote of each symbol, as venues send a book snapshot on subscribe."""
        now = self.clock.now()
        await self.connection.send_snapshots((symbol, self.market.quote(symbol, now)) for symbol in symbols)
