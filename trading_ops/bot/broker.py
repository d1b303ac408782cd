"""The broker interface a bot trades through and that reconciliation compares the journal against."""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# The key of an order placed without a client order id (by hand on the venue's website): its venue order id.
VENUE_ID_PREFIX = "venue:"
# Error classes after which a submission may still have reached the venue (the request went out, the answer did
# not come back): the order's outcome is unknown until the venue is asked. Any other class is a definite refusal.
AMBIGUOUS_ERROR_CLASSES = frozenset({"network", "unavailable"})


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class OrderStatus(enum.StrEnum):
    NEW = "new"  # submitted, not yet acknowledged
    ACKNOWLEDGED = "acknowledged"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def is_open(self) -> bool:
        return self in (OrderStatus.NEW, OrderStatus.ACKNOWLEDGED, OrderStatus.PARTIALLY_FILLED)

    @property
    def rank(self) -> int:
        """Position in the lifecycle: new < acknowledged < partially filled < closed (filled, canceled, rejected).
        An update never moves an order to a lower rank, and a closed order never changes again."""
        return _STATUS_RANK[self]


_STATUS_RANK = {
    OrderStatus.NEW: 0,
    OrderStatus.ACKNOWLEDGED: 1,
    OrderStatus.PARTIALLY_FILLED: 2,
    OrderStatus.FILLED: 3,
    OrderStatus.CANCELED: 3,
    OrderStatus.REJECTED: 3,
}


class Channel(enum.StrEnum):
    ORDERS = "orders"
    MARKET_DATA = "market_data"


class BrokerError(Exception):
    """An error returned by the venue; `error_class` is one of the metric catalogue's venue error classes.

    `detail` is what a caller that got this far already did (the control API adds it to its 503 answer).
    `outcome_unknown` says whether the request may have taken effect anyway (a submit whose answer was lost):
    by default true for the AMBIGUOUS_ERROR_CLASSES; a broker that knows the request never left (no connection
    to send it on) passes False.
    """

    def __init__(
        self,
        error_class: str,
        message: str,
        *,
        detail: dict[str, Any] | None = None,
        outcome_unknown: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.detail = detail or {}
        self.outcome_unknown = error_class in AMBIGUOUS_ERROR_CLASSES if outcome_unknown is None else outcome_unknown


@dataclass(frozen=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    price: Decimal | None = None  # required for limit orders
    reduce_only: bool = False


@dataclass
class VenueOrder:
    """An order as the venue knows it."""

    client_order_id: str
    venue_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    price: Decimal | None
    filled_quantity: Decimal
    status: OrderStatus
    reject_reason: str | None = None
    created_at: datetime | None = None
    closed_at: datetime | None = None  # when it was filled, canceled or rejected (None while open, or not known)

    @property
    def key(self) -> str:
        return order_key(self.client_order_id, self.venue_order_id)


def order_key(client_order_id: str | None, venue_order_id: str | None) -> str:
    """The id a bot tracks an order by: its client order id, or `venue:<venue order id>` for one placed without
    a client order id (several such orders must not collapse into one)."""
    return client_order_id or f"{VENUE_ID_PREFIX}{venue_order_id or ''}"


@dataclass(frozen=True)
class VenueFill:
    """One execution; `trade_id` is unique per venue and is what deduplicates fills."""

    trade_id: str
    client_order_id: str | None
    venue_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_asset: str
    liquidity: str  # maker or taker
    executed_at: datetime


@dataclass(frozen=True)
class Quote:
    symbol: str
    bid: Decimal
    ask: Decimal
    timestamp: datetime

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2


@dataclass
class BrokerEvents:
    """Callbacks the broker calls as the venue reports events (what a user-data stream delivers).

    `on_venue_error(error_class)` is told of every venue error the broker handles itself and never raises to a
    caller: a nonce refusal it retried, a submit whose lost answer it resolved, a background poll that failed, a
    stream that dropped. An error raised to the caller is the caller's to count, so each error is counted once
    (the runtime wires it to `tradingbot_venue_errors_total`). `on_venue_request(channel, seconds)` is told of every
    request the broker makes, each attempt of a retried one included.
    """

    on_order: Callable[[VenueOrder], Awaitable[None]] | None = None
    on_fill: Callable[[VenueFill], Awaitable[None]] | None = None
    on_quote: Callable[[Quote], Awaitable[None]] | None = None
    on_connection: Callable[[Channel, bool], Awaitable[None]] | None = None
    on_venue_error: Callable[[str], None] | None = None
    # Every request the broker makes to the venue's API (channel, seconds it took), answered or failed: the
    # denominator of the API error ratio and its latency (the runtime wires it to tradingbot_venue_requests_total).
    on_venue_request: Callable[[str, float], None] | None = None
    extra: dict[str, object] = field(default_factory=dict)


class Broker(abc.ABC):
    """What a venue offers a bot. Implementations: the paper venue; real venues in a bot's own code.

    Over 20 public methods because each is one thing a bot asks of any venue (orders, fills, balances, time, the
    dead man's switch, its channels' health), and a venue implements every one: splitting the interface would make
    each venue implement several and the runtime hold several references to one connection."""

    venue: str

    @abc.abstractmethod
    async def connect(self, events: BrokerEvents) -> None:
        """Open the order and market-data channels and start delivering events (BrokerEvents says which)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every channel; no events are delivered afterwards."""

    @abc.abstractmethod
    def is_connected(self, channel: Channel) -> bool: ...

    @abc.abstractmethod
    async def reconnect(self) -> None:
        """Re-establish every channel that is down."""

    @abc.abstractmethod
    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        """Subscribe again to market data (all symbols when None)."""

    @abc.abstractmethod
    async def submit(self, request: OrderRequest) -> VenueOrder:
        """Send an order; returns the venue's view once acknowledged or rejected. Raises BrokerError."""

    @abc.abstractmethod
    async def cancel(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        """Cancel an open order, by its venue order id when given, else by its client order id (an order placed by
        hand may have none). Raises BrokerError (unknown order, already closed, ...)."""

    @abc.abstractmethod
    async def positions(self) -> dict[str, Decimal]:
        """Signed position per symbol (base units), as the venue reports it."""

    @abc.abstractmethod
    async def balances(self) -> dict[str, Decimal]:
        """Total balance per asset, as the venue reports it."""

    @abc.abstractmethod
    async def open_orders(self) -> list[VenueOrder]: ...

    @abc.abstractmethod
    async def recent_fills(self, since: datetime | None = None) -> list[VenueFill]:
        """Fills executed at or after `since` (all retained fills when None), oldest first."""

    @abc.abstractmethod
    async def server_time(self) -> datetime:
        """The venue's clock, for skew measurement."""

    def server_time_resolution(self) -> float:
        """How coarse the last `server_time()` answer was, in seconds (a venue that answers in whole seconds, as
        Kraken does, reads up to 1 s behind): the skew measurement allows for it. 0 for an exact clock."""
        return 0.0

    async def order_status(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder | None:
        """The venue's view of one order, open or closed (by venue order id when given); None when the venue does
        not know it (never placed, or aged out of its history). Raises BrokerError.

        The default knows nothing: reconciliation then infers how a vanished order ended from its fills.
        """
        return None

    async def drain_events(self) -> None:
        """Return once every event for a change the venue already made has been handed to the callbacks.

        Reconciliation calls it before a snapshot, so that fills and order updates still on their way are not
        mistaken for discrepancies. A streaming connection cannot know what is in flight: the default returns at
        once, and reconciliation confirms what it finds on a second snapshot instead.
        """

    def base_asset(self, symbol: str) -> str:
        """The asset a symbol's quantity is counted in (BTC for BTC-USD); a venue with other symbol names says."""
        for sep in ("-", "/", "_"):
            if sep in symbol:
                return symbol.split(sep, 1)[0]
        return symbol

    def balance_assets(self) -> frozenset[str] | None:
        """The assets whose balances are the bot's alone, the only ones reconciliation compares; None (the default):
        every asset of the account is the bot's. On an account shared with other bots (ccxt's `shared_account`) the
        quote asset is every bot's, so only its symbols' base assets (no other bot on the account trades them)."""
        return None

    def has_dead_man_switch(self) -> bool:
        """Whether the venue has a dead man's switch (Kraken's CancelAllOrdersAfter, ccxt's cancelAllOrdersAfter):
        `cancel_all_orders_after` works. The runtime keeps it armed from its trading loop."""
        return False

    async def cancel_all_orders_after(self, timeout: int) -> tuple[datetime, datetime | None]:
        """Arm (or push back) the venue's dead man's switch: every open order of the account is canceled `timeout`
        seconds from now unless called again before; 0 disarms it. Returns the venue's time and the trigger time
        (None: disarmed). Raises BrokerError; NotImplementedError where `has_dead_man_switch()` is false."""
        raise NotImplementedError(f"{type(self).__name__} has no dead man's switch")

    def market_data_in_sync(self, symbol: str) -> bool:
        """False while the broker knows its market data of `symbol` is wrong (a streamed book that disagrees with the
        venue's checksum): the order gate then treats it as stale. The default: True."""
        return True

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Register the broker's own metrics (a stream's health) on the bot's registry; called once, before
        `connect`. The default has none."""

    def rate_limit_headroom(self) -> float | None:
        """Fraction (0-1) of the venue's request rate limit still available, or None when the broker cannot tell
        (then tradingbot_rate_limit_headroom_ratio stays absent)."""
        return None

    def order_count_headroom(self) -> float | None:
        """Fraction (0-1) of the venue's limit on new orders still available (Binance's orders per 10 s and per day,
        the tighter), or None where the venue has no such limit or the broker cannot tell. The order gate refuses
        new risk when it runs low, keeping the rest for reduce-only orders (cancels are not new orders)."""
        return None

    @contextlib.asynccontextmanager
    async def patient(self) -> AsyncIterator[None]:
        """Entered around work nothing else waits on and that must not fail for want of the venue's rate limit (the
        start before the trading loop runs, a shutdown's cancels): a broker that budgets the limit makes the calls
        inside (in this task) wait for room rather than fail. The default: nothing changes."""
        yield

    @contextlib.asynccontextmanager
    async def protective(self) -> AsyncIterator[None]:
        """Entered around calls that protect money (a shutdown's cancels, disarming the dead man's switch): a broker
        that budgets the venue's rate limit lets the calls inside (in this task) spend the room it keeps for them,
        which no reconciliation or poll may take. The default: nothing changes."""
        yield

    @contextlib.asynccontextmanager
    async def reconciliation_room(self) -> AsyncIterator[None]:
        """Entered before a reconciliation takes the trade lock, held until it ends: a broker that budgets the
        venue's rate limit returns once a reconciliation's calls fit (waiting for the limit's decay, the trading
        loop free meanwhile) and leaves the limit to it while it runs (its own polls wait). The default: at once."""
        yield
