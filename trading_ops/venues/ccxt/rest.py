"""A Broker for any ccxt exchange: orders, fills, balances and market data through ccxt's asyncio API.

What it does that a bare ccxt call does not:

- Errors: ccxt's exception classes map once, in ERROR_CLASSES (trading_ops.venues.ccxt.errors), to the library's
  venue error classes. A network failure or an unavailable venue after a request went out leaves its outcome
  unknown; a connection that could not even be opened sent nothing (`outcome_unknown` false).
- A submit whose answer was lost is resolved by asking the venue for the order by its client order id, never by
  sending it again: found, the order is returned as if the answer had come; confirmed absent (twice), the submit
  fails for certain; the venue unreachable, BrokerError with `outcome_unknown` for the bot's reconciliation.
- A nonce error means the venue refused the request, so it is retried at once with a fresh nonce (NONCE_RETRIES).
  Errors the broker handles itself (retried nonces, resolved lost replies, failed lookups, failed polls) are
  counted in `handled_errors` and passed to BrokerEvents.on_venue_error (the runtime counts them in
  tradingbot_venue_errors_total); an error raised to the caller is the caller's to count.
- Events: `submit` calls `on_order` with the venue's answer (the acknowledgement a stream would send); a
  background task polls open orders and the account's trades (`poll_interval`) and calls `on_fill`
  for each new trade, then `on_order` for each order whose state changed (one that left the open list is looked
  up for its final state); another polls tickers (`quote_interval`) and calls `on_quote` for every symbol the
  answer quotes: a successful poll is fresh data, even on a quiet market whose bid and ask did not move (Kraken's
  ticker has no timestamp to tell otherwise); a symbol the venue stops quoting goes stale, and so does one whose
  ticker comes back as it was at the last poll, its time, bid and ask unchanged (Binance's 24-hour ticker keeps
  answering a market that makes no data, with its last values and `closeTime`: the same ticker again is no news).
  Only an unchanged time is old news, not an earlier one (a venue's clock may step back, and its ticker is then still
  its latest), nor an unchanged time with a bid or ask that moved (a venue that stamps its ticker with the last trade).
  A channel goes down when a call on it fails for a network reason and up again at its next success
  (`on_connection` each time).
- A session (connect, reconnect) starts as a careful client's does: the venue's status (`fetch_status`: one in
  maintenance is "unavailable"), then its markets, loaded again. `resubscribe` is what subscribing means to a
  polling client: the markets loaded again (the venue's current listing of the pairs), then a fresh ticker.
- Amounts are exact: the broker sets the exchange's `number` to `str` (ccxt's own switch) and reads decimals.
- Positions (spot): the venue's balance of each symbol's base asset less `position_baseline[base]` (what the
  account held that is not the bot's; zero by default, as on the paper venue).
- Kraken pages its trade history PAGE_SIZE at a time; `recent_fills` follows the pages (TradeHistory). Other
  exchanges return what one `fetch_my_trades(since)` returns.
- Exchanges whose client needs a symbol for the account's calls (PER_SYMBOL: Binance) are asked per symbol of the
  broker: its open orders (Binance weighs one symbol's at 6, the account's at 80, and ccxt refuses the latter unless
  told), its trades, an order looked up or canceled (by the symbol last seen for its id, else each symbol in turn
  until one knows it: an unknown order answers OrderNotFound) and cancel-all (only the symbols with open orders).
  Orders of other symbols on the account are not this broker's to see.
- On an account shared with other bots (`shared_account`: the bot's order-id prefix; config `ccxt.shared_account`,
  or `bots:` listing another bot on its account) the broker sees, counts and cancels only the orders whose client
  order id carries the bot's prefix, and only their fills (the open orders, the trades of a poll, a reconciliation
  and a stream, a cancel-all one order at a time: never Binance's cancel-all of a symbol, which takes every bot's);
  the balances that are its own are its symbols' base assets (`balance_assets`), which no other bot on the account
  trades (`config check` refuses two bots on one account with a base asset in common). AccountShare holds the rule.
- Kraken's call counter (trading_ops.venues.call_counter): with a `call_budget`, every private request spends from
  it, the order poll runs no oftener than the tier's decay allows (CallBudget.poll_interval), skips a cycle the
  budget cannot afford (asking the venue's clock instead, which is free, so an outage is still noticed), and asks
  for the trade history only when something may have filled (an open order's filled quantity moved, an order left
  the open list, the broker submitted or canceled one, a session began) or every `trades_interval`;
  reconciliation's `drain_events` always asks, and the snapshot's first `recent_fills` right after it reuses that
  answer (its second asks again). `rate_limit_headroom` is the budget's headroom; `reconciliation_room` reserves
  the budget for a reconciliation (the order poll skips its cycles) and waits, trading not held, until its calls
  fit.
  Without a budget (an exchange other than Kraken) the polls ask for everything each cycle and the headroom is
  unknown (None).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import (
    Broker,
    BrokerError,
    BrokerEvents,
    Channel,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    VenueFill,
    VenueOrder,
)
from trading_ops.tasks import stop_tasks
from trading_ops.venues.call_counter import (
    RECONCILIATION_POINTS,
    BudgetExhausted,
    CallBudget,
    Deferred,
    WeightBudget,
    background,
    impatient,
    patient,
    protective,
)
from trading_ops.venues.ccxt.balance_cache import BalanceCache
from trading_ops.venues.ccxt.errors import CLIENT_ORDER_IDS, EXTRA_ERRORS, broker_error
from trading_ops.venues.ccxt.request_limits import RequestLimits
from trading_ops.venues.ccxt.shared_account import AccountShare
from trading_ops.venues.ccxt.symbols import to_ccxt_symbol
from trading_ops.venues.ccxt.trade_history import FILL_OVERLAP_SECONDS, TradeHistory
from trading_ops.venues.ccxt.translation import Translator, decimal, ms_time

log = logging.getLogger(__name__)

NONCE_RETRIES = 3
LOOKUP_ATTEMPTS = 4  # lookups of an order whose submit answer was lost
LOOKUP_BACKOFF_SECONDS = 0.2  # times the attempt number
NOT_FOUND_CONFIRMATIONS = 2  # "no such order" answers before a lost submit counts as never placed
POLL_INTERVAL_SECONDS = 1.0
ORDER_LOOKUP_BATCH = 50
# Exchanges whose client looks orders up by a list of ids in one request though ccxt's `has` does not say so (ccxt's
# kraken: QueryOrders with up to 20 txids, one call on the call counter), and how many ids a request takes.
ORDER_LOOKUP_BATCHES = {"kraken": 20}
# Exchanges whose ccxt client takes no "all symbols" for the account's trades, order lookups and cancels (binance:
# ArgumentsRequired, and its account-wide open orders weigh 80 against 6 a symbol): asked per symbol.
PER_SYMBOL = frozenset({"binance"})


class CcxtBroker(Broker):
    """The Broker interface over one `ccxt.async_support` exchange instance (the caller builds it with its keys and
    urls; `close()` closes it).

    Bigger than most classes here because it is two things a websocket venue gives for free and ccxt's REST API
    does not: the Broker calls, and the polls that stand in for the event streams; they share the state of what was
    seen (the open orders, the poll's cursor and cycle, the count of changes that makes an answer stale). It wires
    parts that each own one concern: `share` (AccountShare, shared_account.py: which orders, fills and balances of a
    shared account are the bot's), `history` (TradeHistory, trade_history.py: the account's trades, kept with a call
    budget, and which were handed on), `balance_cache` (BalanceCache, balance_cache.py: the last balance answer and
    when it stands in), `translate` (Translator, translation.py: ccxt's orders and trades as ours, the ids learned on
    the way) and `limits` (RequestLimits, request_limits.py: the call and weight budgets, their headroom and
    metrics). Its public methods are the Broker interface (trading_ops.bot.broker) and nothing else, bar
    `orders_interval` and `check_session`, which its streaming subclasses override; the symbol and error tables, the
    call budget and the streams live in modules of their own (symbols.py, errors.py, venues/call_counter.py,
    streaming.py).
    """

    def __init__(
        self,
        exchange: ccxt_async.Exchange,
        symbols: list[str],
        *,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        quote_interval: float | None = None,
        position_baseline: Mapping[str, Decimal] | None = None,
        nonce_retries: int = NONCE_RETRIES,
        lookup_attempts: int = LOOKUP_ATTEMPTS,
        lookup_backoff: float = LOOKUP_BACKOFF_SECONDS,
        call_budget: CallBudget | None = None,
        weight_budget: WeightBudget | None = None,
        shared_account: str = "",
    ) -> None:
        if not symbols:
            raise ValueError("a ccxt broker needs at least one symbol")
        if poll_interval <= 0 or (quote_interval is not None and quote_interval <= 0):
            raise ValueError("poll intervals must be > 0")
        self.exchange = exchange
        self.venue = str(exchange.id)
        self.symbols = list(dict.fromkeys(symbols))
        self._unified = {s: to_ccxt_symbol(s) for s in self.symbols}
        self.poll_interval = poll_interval
        self.quote_interval = poll_interval if quote_interval is None else quote_interval
        self.position_baseline = {k: Decimal(v) for k, v in (position_baseline or {}).items()}
        self.nonce_retries = nonce_retries
        self.lookup_attempts = lookup_attempts
        self.lookup_backoff = lookup_backoff
        self.handled_errors: Counter[str] = Counter()
        self.call_budget = call_budget
        self.weight_budget = weight_budget
        self.limits = RequestLimits(exchange, call_budget, weight_budget)  # installed on the exchange's requests
        exchange.number = str  # amounts as the venue wrote them: exact decimals, never floats
        extra = EXTRA_ERRORS.get(self.venue)
        if extra:
            exceptions = dict(exchange.exceptions or {})
            for kind, table in extra.items():
                exceptions[kind] = {**exceptions.get(kind, {}), **table}
            exchange.exceptions = exceptions
        self._events = BrokerEvents()
        self._connected = dict.fromkeys(Channel, False)
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        # Counts the sessions begun: a call of an earlier one, failing because reconnect() closed its connections,
        # says nothing of the venue (it would mark a channel down the new session has just found up).
        self._session = 0
        self._open: dict[str, VenueOrder] = {}  # by venue order id: the open orders the last poll (or submit) saw
        self.translate = Translator()  # ccxt's orders and trades as ours; the client ids and symbols seen
        # Asked per symbol (PER_SYMBOL); which of the account's orders, fills and balances are the bot's (all of them,
        # unless the account is shared with other bots).
        self._per_symbol, self.share = (
            self.venue in PER_SYMBOL,
            AccountShare(shared_account, (u.split("/", 1)[0] for u in self._unified.values())),
        )
        self._fills_since: datetime | None = None
        self._time_resolution = 0.0
        self._poll_lock = asyncio.Lock()
        self._trades_due = True  # something may have filled since the trade history was last asked for
        self._trades_asked = 0.0  # monotonic time of that
        self._poll_cycle = 0  # order polls begun
        # The last balance answer, reused within a poll's callbacks and (with a call budget) while nothing changed.
        self.balance_cache = BalanceCache(reuse_unchanged=call_budget is not None)
        self._changes = 0  # submits, cancels and fills delivered: answers older than the last are stale
        self._tickers: dict[str, tuple[Any, Decimal, Decimal]] = {}  # by symbol: its last ticker's time, bid, ask
        self._delivering = False  # a poll is handing its events to the callbacks
        # The account's trades (kept with a call budget: recent_fills fetches only what it does not hold).
        self.history = TradeHistory(
            exchange,
            lambda what, method, *args: self._call(Channel.ORDERS, what, method, *args),
            symbols=list(self._unified.values()) if self._per_symbol else None,
            keep=call_budget is not None,
        )

    # -- connection -------------------------------------------------------------------------------------------
    async def connect(self, events: BrokerEvents) -> None:
        await stop_tasks(self._tasks)  # a second connect() replaces the first one's polls
        self._tasks = []
        self._events = events
        self._started = True
        await self._open_session()
        self._fills_since = await self.server_time()
        self._open = {o.venue_order_id: o for o in await self.open_orders()}
        await self._poll_quotes(self.symbols)
        self._start_polls()

    def _start_polls(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(
                self._every(lambda: self.orders_interval, self._background_poll), name=f"{self.venue}-orders"
            ),
            asyncio.create_task(self._every(self.quote_interval, self._background_quotes), name=f"{self.venue}-quotes"),
        ]

    @property
    def orders_interval(self) -> float:
        """How often the order poll runs: `poll_interval`, or less often when the call budget's tier needs it."""
        if self.call_budget is None:
            return self.poll_interval
        return max(self.poll_interval, self.call_budget.poll_interval(1.0))

    def rate_limit_headroom(self) -> float | None:
        return self.limits.headroom()

    def order_count_headroom(self) -> float | None:
        return self.limits.order_headroom()

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """With a weight budget (Binance): its families (RequestLimits.register_metrics)."""
        self.limits.register_metrics(registry)

    @contextlib.asynccontextmanager
    async def patient(self) -> AsyncIterator[None]:
        """With a call budget: the private calls inside wait for its decay instead of failing (call_counter.patient)."""
        with patient():
            yield

    @contextlib.asynccontextmanager
    async def protective(self) -> AsyncIterator[None]:
        """With a call budget: the private calls inside may spend its protective reserve (call_counter.protective)."""
        with protective():
            yield

    @contextlib.asynccontextmanager
    async def reconciliation_room(self) -> AsyncIterator[None]:
        """With a call budget: reserve it (the order poll skips its cycles until the reconciliation ends) and wait,
        holding nothing, until RECONCILIATION_POINTS fit under its ordinary ceiling (the protective reserve kept above
        it). The wait is bounded by the time the whole counter takes to decay; what other callers spend meanwhile is
        theirs (the reconciliation then starts with what room there is)."""
        budget = self.call_budget
        if budget is None:
            yield
            return
        budget.reserved += 1
        try:
            deadline = time.monotonic() + budget.tier.maximum / budget.tier.decay
            while (wait := budget.seconds_until_room(RECONCILIATION_POINTS)) > 0 and time.monotonic() < deadline:
                log.info("%s: reconciliation waits %.1f s for room in the call budget", self.venue, wait)
                await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())) + 0.01)
            yield
        finally:
            budget.reserved -= 1

    async def close(self) -> None:
        self._started = False
        await stop_tasks(self._tasks)
        self._tasks = []
        for channel in Channel:
            self._connected[channel] = False
        await self.exchange.close()

    def is_connected(self, channel: Channel) -> bool:
        return self._connected[channel]

    async def _open_session(self) -> None:
        """Open ccxt's session (again after a close(): ccxt refuses to reopen lazily what its user closed), ask the
        venue whether it is up, then load its markets again and check it lists every symbol."""
        self.exchange.open()
        if self.exchange.has.get("fetchStatus"):
            status = await self._call(Channel.ORDERS, "status", self.exchange.fetch_status)
            if status.get("status") not in ("ok", None):
                raise BrokerError("unavailable", f"{self.venue} status: {str(status.get('status'))[:32]}")
        await self._call(Channel.ORDERS, "load markets", self.exchange.load_markets, True)
        unknown = [s for s, u in self._unified.items() if u not in (self.exchange.markets or {})]
        if unknown:
            raise BrokerError("other", f"{self.venue} does not list {', '.join(unknown)}")

    async def reconnect(self) -> None:
        """A new session (ccxt's connections closed and opened again, the venue's status and markets asked), then
        one call on each channel."""
        self._session += 1
        self._trades_due = True
        await self.exchange.close()
        self._started = True
        await self._open_session()
        await self.open_orders()
        await self._poll_quotes(self.symbols)
        if self._fills_since is None:  # connect() never got this far
            self._fills_since = await self.server_time()
        self._start_polls()

    async def check_session(self) -> None:
        """What a client that rebuilds its connection needs of the venue, without starting this broker's polls: a
        session begun as connect's is (the venue's status, its markets loaded again, every symbol listed), then one
        private call (the account's balances). Raises BrokerError naming what the venue did not answer."""
        await self._open_session()
        await self.balances()

    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        targets = self.symbols if symbols is None else symbols
        unknown = [s for s in targets if s not in self._unified]
        if unknown:
            raise BrokerError("other", f"unknown symbol {', '.join(unknown)[:64]}")
        await self._call(Channel.MARKET_DATA, "load markets", self.exchange.load_markets, True)
        await self._poll_quotes(targets)

    async def _set_connected(self, channel: Channel, up: bool) -> None:
        if not self._started or self._connected[channel] is up:
            return
        self._connected[channel] = up
        log.log(
            logging.INFO if up else logging.WARNING,
            "%s: %s channel %s",
            self.venue,
            channel.value,
            "up" if up else "down",
        )
        if self._events.on_connection is not None:
            await self._events.on_connection(channel, up)

    async def _call(self, channel: Channel, what: str, method: Callable[..., Any], *args: Any) -> Any:
        """One ccxt call, its exception mapped (ERROR_CLASSES); a refused nonce is retried with a fresh one."""
        session = self._session
        for attempt in range(self.nonce_retries + 1):
            started = time.monotonic()
            try:
                result = await method(*args)
            except ccxt_async.BaseError as exc:
                self._requested(channel, started)
                error = broker_error(exc, what)
                if error.error_class == "nonce" and attempt < self.nonce_retries:
                    self._handled("nonce")  # refused, so nothing happened: safe to send again, fresh nonce
                    continue
                if error.error_class in ("network", "unavailable") and session == self._session:
                    await self._set_connected(channel, False)
                raise error from exc
            self._requested(channel, started)
            await self._set_connected(channel, True)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _requested(self, channel: Channel, started: float) -> None:
        if self._events.on_venue_request is not None:
            self._events.on_venue_request(channel.value, time.monotonic() - started)

    def _handled(self, error_class: str) -> None:
        self.handled_errors[error_class] += 1
        if self._events.on_venue_error is not None:
            self._events.on_venue_error(error_class)

    # -- orders -----------------------------------------------------------------------------------------------
    async def submit(self, request: OrderRequest) -> VenueOrder:
        pattern = CLIENT_ORDER_IDS.get(self.venue)
        if pattern is not None and not pattern.match(request.client_order_id):
            raise BrokerError(
                "invalid_order", f"{self.venue} takes client order ids of {pattern.pattern}", outcome_unknown=False
            )
        symbol = self._unified.get(request.symbol)
        if symbol is None:
            raise BrokerError("other", f"unknown symbol {request.symbol[:32]}")
        if not request.client_order_id:
            raise BrokerError("other", "client_order_id must not be empty")
        params: dict[str, Any] = {"clientOrderId": request.client_order_id}
        if request.reduce_only:
            params["reduceOnly"] = True
        price = None
        if request.order_type is OrderType.LIMIT:
            if request.price is None:
                raise BrokerError("other", "a limit order needs a price")
            price = str(request.price)
        what = f"submit {request.client_order_id}"
        try:
            raw = await self._call(
                Channel.ORDERS,
                what,
                self.exchange.create_order,
                symbol,
                request.order_type.value,
                request.side.value,
                str(request.quantity),
                price,
                params,
            )
        except BrokerError as exc:
            if not exc.outcome_unknown:
                raise
            return await self._resolve_lost_submit(request, exc)
        self._trades_due = True  # it may have filled at once (a market order never shows as open)
        self._changes += 1
        order = self.translate.order(raw, request)
        self._track(order)
        await self._acknowledged(order)
        return order

    async def _acknowledged(self, order: VenueOrder) -> None:
        """The venue took the order: `on_order` with its answer, as a user-data stream sends the acknowledgement (a
        bot's order engine learns of it there). The polls report only what changes after it."""
        if self._events.on_order is not None:
            await self._events.on_order(order)

    async def _resolve_lost_submit(self, request: OrderRequest, lost: BrokerError) -> VenueOrder:
        """Ask the venue whether an order whose answer was lost exists; never send it again."""
        cid = request.client_order_id
        log.warning("%s: the answer to %s was lost (%s); asking the venue for it", self.venue, cid, lost)
        misses = 0
        for attempt in range(self.lookup_attempts):
            if attempt:
                await asyncio.sleep(self.lookup_backoff * attempt)
            try:
                found = await self.order_status(cid)
            except BrokerError as exc:
                self._handled(exc.error_class)
                continue
            if found is not None:
                self._handled(lost.error_class)  # resolved: the caller never sees this error
                log.info("%s: %s was placed (%s %s)", self.venue, cid, found.venue_order_id, found.status.value)
                self._track(found)
                await self._acknowledged(found)
                return found
            misses += 1
            if misses >= NOT_FOUND_CONFIRMATIONS:
                raise BrokerError(
                    lost.error_class,
                    f"{lost} (the venue has no order {cid}: it was not placed)",
                    detail={"resolved": "not_placed"},
                    outcome_unknown=False,
                )
        raise BrokerError(
            lost.error_class,
            f"{lost} (the venue could not be asked whether {cid} was placed)",
            detail={"resolved": "unknown"},
            outcome_unknown=True,
        )

    async def cancel(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder:
        if not client_order_id and not venue_order_id:
            raise BrokerError("other", "cancel needs a client or a venue order id")
        with protective():  # the cancel's lookups may spend the call budget's protective reserve
            return await self._cancel(client_order_id, venue_order_id)

    async def _cancel(self, client_order_id: str, venue_order_id: str) -> VenueOrder:
        known = self._known(client_order_id, venue_order_id)
        symbol = self._unified.get(known.symbol) if known is not None else None
        params = {} if venue_order_id else {"clientOrderId": client_order_id}
        what = f"cancel {venue_order_id or client_order_id}"
        self._trades_due = True  # what filled before the cancel is told by the trade history
        self._changes += 1
        try:
            if self._per_symbol:
                await self._each_symbol(
                    self._symbol_of(venue_order_id, symbol), what, self.exchange.cancel_order, venue_order_id, params
                )
            else:
                await self._call(Channel.ORDERS, what, self.exchange.cancel_order, venue_order_id, symbol, params)
        except BrokerError as exc:
            if not exc.outcome_unknown:
                raise
            state = await self.order_status(client_order_id, venue_order_id=venue_order_id)
            if state is None or state.status.is_open:
                raise
            self._handled(exc.error_class)
        else:
            try:
                # Only if there is room now, even in a shutdown that waits for it: whoever cancels looks at the venue
                # again anyway (a shutdown's confirming look), and on Kraken's Starter tier each point waited for is
                # 3 s of the shutdown's deadline.
                with impatient():
                    state = await self.order_status(client_order_id, venue_order_id=venue_order_id)
            except BrokerError as exc:
                # The venue took the cancel (it costs nothing on Kraken's counter); only the lookup after it found no
                # room in the call budget: the order is canceled as last seen, its fills come with the next poll.
                if not isinstance(exc.__cause__, BudgetExhausted) or known is None:
                    raise
                state = dataclasses.replace(known, status=OrderStatus.CANCELED)
        if state is None:
            raise BrokerError("invalid_order", f"{what}: the venue no longer knows the order")
        if not state.status.is_open:
            self._open.pop(state.venue_order_id, None)
        if self._events.on_order is not None:
            await self._events.on_order(state)
        return state

    async def order_status(self, client_order_id: str = "", *, venue_order_id: str = "") -> VenueOrder | None:
        """By venue order id: fetch_order. By client order id: the open orders, then the closed ones, asked for that
        client order id (exchanges that ignore the filter are searched through what they return)."""
        if self._per_symbol and (venue_order_id or client_order_id):
            return await self._order_on_its_symbol(client_order_id, venue_order_id)
        if venue_order_id:
            try:
                raw = await self._call(
                    Channel.ORDERS, f"order {venue_order_id}", self.exchange.fetch_order, venue_order_id
                )
            except BrokerError as exc:
                if isinstance(exc.__cause__, ccxt_async.OrderNotFound):
                    return None
                raise
            return self.translate.order(raw)
        if not client_order_id:
            return None
        for fetch in (self.exchange.fetch_open_orders, self.exchange.fetch_closed_orders):
            raws = await self._call(
                Channel.ORDERS,
                f"order {client_order_id}",
                fetch,
                None,
                None,
                None,
                {"clientOrderId": client_order_id},
            )
            for raw in raws:
                if raw.get("clientOrderId") == client_order_id:
                    return self.translate.order(raw)
        return None

    async def _order_on_its_symbol(self, client_order_id: str, venue_order_id: str) -> VenueOrder | None:
        """order_status on a PER_SYMBOL venue: fetch_order by either id on the order's symbol (or each in turn)."""
        params = {} if venue_order_id else {"clientOrderId": client_order_id}
        try:
            raw = await self._each_symbol(
                self._symbol_of(venue_order_id),
                f"order {venue_order_id or client_order_id}",
                self.exchange.fetch_order,
                venue_order_id,
                params,
            )
        except BrokerError as exc:
            if isinstance(exc.__cause__, ccxt_async.OrderNotFound):
                return None
            raise
        return self.translate.order(raw)

    async def cancel_all(self) -> list[VenueOrder]:
        """Cancel every open order in one request where the exchange has one (else one by one); returns the
        orders' final states. Protective: its calls may spend the call budget's reserve."""
        with protective():
            return await self._cancel_all()

    async def _cancel_all(self) -> list[VenueOrder]:
        listed = await self.open_orders()
        if self.share.shared:  # a cancel-all of the account (or a symbol) takes others' orders
            return await self.share.cancel_each(
                listed,
                lambda o: self.cancel(o.client_order_id, venue_order_id=o.venue_order_id),
                lambda o: self.order_status(o.client_order_id, venue_order_id=o.venue_order_id),
            )
        if self._per_symbol:
            for unified in dict.fromkeys(self._unified[o.symbol] for o in listed if o.symbol in self._unified):
                try:
                    await self._call(Channel.ORDERS, f"cancel all {unified}", self.exchange.cancel_all_orders, unified)
                except BrokerError as exc:
                    if not isinstance(exc.__cause__, ccxt_async.OrderNotFound):  # none left there: -2011
                        raise
            return await self._final_states([o.venue_order_id for o in listed])
        if self.exchange.has.get("cancelAllOrders"):
            await self._call(Channel.ORDERS, "cancel all", self.exchange.cancel_all_orders)
            return await self._final_states([o.venue_order_id for o in listed])
        return [await self.cancel(o.client_order_id, venue_order_id=o.venue_order_id) for o in listed]

    def balance_assets(self) -> frozenset[str] | None:
        return self.share.balance_assets()

    def has_dead_man_switch(self) -> bool:
        return bool(self.exchange.has.get("cancelAllOrdersAfter"))

    async def cancel_all_orders_after(self, timeout: int) -> tuple[datetime, datetime | None]:
        """ccxt's `cancelAllOrdersAfter` (milliseconds; kraken sends whole seconds, 0 disarms). The times are the
        venue's where it says them (kraken's `result.currentTime` / `triggerTime`, "0" when disarmed), else ours."""
        if not self.has_dead_man_switch():
            raise NotImplementedError(f"{self.venue} has no cancelAllOrdersAfter in ccxt")
        sent = datetime.now(UTC)
        raw = await self._call(
            Channel.ORDERS, "dead man's switch", self.exchange.cancel_all_orders_after, int(timeout) * 1000
        )
        result = raw.get("result") if isinstance(raw, dict) else None
        if isinstance(result, dict) and "triggerTime" in result:
            now = ms_time(self.exchange.parse8601(result.get("currentTime"))) or sent
            if str(result["triggerTime"]) == "0":
                return now, None
            trigger = ms_time(self.exchange.parse8601(result["triggerTime"]))
            if trigger is not None:
                return now, trigger
        return sent, (sent + timedelta(seconds=timeout) if timeout else None)

    async def open_orders(self) -> list[VenueOrder]:
        if self._per_symbol:
            raws = []
            for unified in self._unified.values():
                raws.extend(
                    await self._call(Channel.ORDERS, f"open orders {unified}", self.exchange.fetch_open_orders, unified)
                )
        else:
            raws = await self._call(Channel.ORDERS, "open orders", self.exchange.fetch_open_orders)
        return [order for raw in raws if self.share.mine((order := self.translate.order(raw)).client_order_id)]

    def _symbol_of(self, venue_order_id: str, known: str | None = None) -> str | None:
        """The ccxt symbol an order was last seen on (`known` when given), else None."""
        return known or self.translate.symbol_of(venue_order_id)

    async def _each_symbol(self, first: str | None, what: str, method: Callable[..., Any], *args: Any) -> Any:
        """`method(args[0], symbol, *args[1:])` on `first`, else on each of the broker's symbols in turn until one
        does not answer OrderNotFound (PER_SYMBOL venues); the last OrderNotFound when none knows the order."""
        symbols = [first] if first else list(self._unified.values())
        head, rest = args[0], args[1:]
        for i, symbol in enumerate(symbols):
            try:
                return await self._call(Channel.ORDERS, f"{what} {symbol}", method, head, symbol, *rest)
            except BrokerError as exc:
                if i == len(symbols) - 1 or not isinstance(exc.__cause__, ccxt_async.OrderNotFound):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def drain_events(self) -> None:
        """One poll now: every fill and order change the venue already made is handed to the callbacks. With a call
        budget, the trade history is asked for only when an order of the poll's changed, the broker placed or
        canceled one, or it is older than one poll interval: a fill of the bot's own order always shows so; one of an
        order placed by hand since the last look is left to the snapshot that follows (a reconciliation's settling
        drains more than once, and each trade history costs 2 points)."""
        if not self._started:
            return
        every_trade = self.call_budget is None or time.monotonic() - self._trades_asked >= self.orders_interval
        asked = self._trades_asked
        self.history.hold_answer(None)
        try:
            await self._poll_orders(every_trade=every_trade)
        except BrokerError as exc:
            self._handled(exc.error_class)
            log.warning("%s: could not poll before a snapshot: %s", self.venue, exc)
            return
        if self._trades_asked != asked:  # it asked for the trade history: the snapshot that follows may reuse it
            self.history.hold_answer(self._changes)

    # -- account ----------------------------------------------------------------------------------------------
    async def balances(self) -> dict[str, Decimal]:
        """The venue's balances. Asked from a poll's event callbacks (a fill's), the answer of this poll cycle is
        reused, and the last answer stands in when the call budget has no room: a callback that raised would leave
        the poll's other events undelivered."""
        if self._delivering and (cycle := self.balance_cache.of_cycle(self._poll_cycle)) is not None:
            return cycle
        if (unchanged := self.balance_cache.unchanged(self._changes)) is not None:
            return unchanged
        try:
            raw = await self._call(Channel.ORDERS, "balances", self.exchange.fetch_balance)
        except Deferred:
            return self.balance_cache.stand_in()
        except BrokerError as exc:
            if self._delivering and isinstance(exc.__cause__, BudgetExhausted):
                return self.balance_cache.stand_in()
            raise
        totals = raw.get("total") or {}
        found = {asset: amount for asset, value in totals.items() if (amount := decimal(value)) is not None}
        self.balance_cache.store(found, self._poll_cycle, self._changes)
        return dict(found)

    async def positions(self) -> dict[str, Decimal]:
        balances = await self.balances()
        positions = {}
        for symbol, unified in self._unified.items():
            base = unified.split("/", 1)[0]
            positions[symbol] = balances.get(base, Decimal(0)) - self.position_baseline.get(base, Decimal(0))
        return positions

    async def recent_fills(self, since: datetime | None = None) -> list[VenueFill]:
        """Fills since `since`, oldest first. With a call budget, the venue's trades (which never change) are kept:
        once every trade since T is known, a later ask from T on fetches only what is newer than the newest known
        (less FILL_OVERLAP_SECONDS), instead of paging through the whole window again at 2 points a page
        (TradeHistory)."""
        trades = await self.history.since(since, self._changes)
        await self._learn_client_ids({str(raw["order"]) for raw in trades if raw.get("order")})
        fills = [fill for raw in trades if self.share.mine((fill := self.translate.fill(raw)).client_order_id)]
        # Oldest first; the venue's order among trades of one millisecond (newest first) reversed.
        fills.reverse()
        fills.sort(key=lambda f: f.executed_at)
        return fills

    async def server_time(self) -> datetime:
        ms = await self._call(Channel.ORDERS, "server time", self.exchange.fetch_time)
        at = ms_time(ms)
        if at is None:
            raise BrokerError("other", f"{self.venue} did not say its time")
        # ccxt gives milliseconds; some venues (Kraken's `unixtime`) only whole seconds, which read as a round number.
        self._time_resolution = 1.0 if int(ms) % 1000 == 0 else 0.001
        return at

    def server_time_resolution(self) -> float:
        return self._time_resolution

    # -- polling ----------------------------------------------------------------------------------------------
    async def _every(self, interval: float | Callable[[], float], poll: Callable[[], Any]) -> None:
        """Run `poll` every `interval` seconds; an interval that may change (a callable) is looked at every
        `poll_interval` at least, so a shorter one takes effect within that."""
        last = time.monotonic()
        while True:
            if callable(interval):
                wanted = interval()
                await asyncio.sleep(max(0.0, min(self.poll_interval, last + wanted - time.monotonic())))
                if time.monotonic() - last < interval():
                    continue
                last = time.monotonic()
            else:
                await asyncio.sleep(interval)
            try:
                await poll()
            except BrokerError as exc:
                self._handled(exc.error_class)
                log.debug("%s: poll failed: %s", self.venue, exc)
            except Exception:
                log.exception("%s: an event callback failed during a poll", self.venue)

    async def _poll_quotes(self, symbols: list[str]) -> None:
        asked = time.monotonic()
        unified = [self._unified[s] for s in symbols]
        if self.exchange.has.get("fetchTickers"):
            tickers = await self._call(Channel.MARKET_DATA, "tickers", self.exchange.fetch_tickers, unified)
        else:
            tickers = {}
            for u in unified:
                tickers[u] = await self._call(Channel.MARKET_DATA, f"ticker {u}", self.exchange.fetch_ticker, u)
        for symbol, u in zip(symbols, unified, strict=True):
            ticker = tickers.get(u) or {}
            bid, ask = decimal(ticker.get("bid")), decimal(ticker.get("ask"))
            if bid is None or ask is None:
                continue  # not quoted: no news is stale news
            self._rest_quote(symbol, asked, bid, ask)
            stamp = ticker.get("timestamp")
            if stamp is not None and self._tickers.get(symbol) == (stamp, bid, ask):
                continue  # the ticker of the last poll again: the venue's data did not move
            self._tickers[symbol] = (stamp, bid, ask)
            at = ms_time(stamp) or datetime.now(UTC)
            if self._events.on_quote is not None:
                await self._events.on_quote(Quote(symbol=symbol, bid=bid, ask=ask, timestamp=at))

    def _rest_quote(self, symbol: str, asked: float, bid: Decimal, ask: Decimal) -> None:
        """Each REST quote as answered, its poll sent at `asked` (monotonic), repeated or not: nothing here; a
        streaming broker judges its quiet channels by it."""

    async def _background_quotes(self) -> None:
        """The quote poll of the polling task; with a weight budget (Binance), skipped when it has too little room."""
        if not self.limits.polls_allowed():
            return
        await self._poll_quotes(self.symbols)

    async def _background_poll(self) -> None:
        """The order poll of the polling task: its calls keep the call budget's reserve; a cycle the budget cannot
        afford is skipped."""
        if not self.limits.polls_allowed():
            return  # stopped by a 429 or 418, or under the weight kept for cancels and submits (WeightBudget)
        if self.call_budget is not None:
            # Its usual cost: open orders, a lookup of those that left, the trade history when it is due.
            usual = 1.0 + (1.0 if self._open else 0.0) + (2.0 if self._trades_due or self._trades_stale() else 0.0)
            if not self.call_budget.affordable(usual):
                # Still ask the venue something free on the call counter (its clock, a public call on the same
                # connections), so that a venue gone quiet is noticed at the poll's cadence all the same.
                await self._call(Channel.ORDERS, "server time", self.exchange.fetch_time)
                return
        with background():
            try:
                await self._poll_orders(every_trade=self.call_budget is None)
            except Deferred:
                log.debug("%s: order poll deferred: the call budget has no room", self.venue)

    async def _poll_orders(self, *, every_trade: bool = True) -> None:
        """New trades (on_fill), then orders whose state changed (on_order), oldest first. The trade history is asked
        for always with `every_trade`, else only when something may have filled (or it is `trades_interval` old)."""
        async with self._poll_lock:
            self._poll_cycle += 1
            before = dict(self._open)
            since = self._fills_since
            due, self._trades_due = self._trades_due, False
            try:
                # Orders first, trades second: an order seen closed has every one of its fills in the trades that
                # follow, so no order update tells of a fill not yet delivered.
                listed = {o.venue_order_id: o for o in await self.open_orders()}
                updates = [
                    o
                    for vid, o in listed.items()
                    if (prev := before.get(vid)) is None
                    or (prev.status, prev.filled_quantity) != (o.status, o.filled_quantity)
                ]
                gone = [vid for vid in before if vid not in listed]
                updates.extend(await self._final_states(gone))
                moved = any(o.venue_order_id in before for o in updates)  # filled some more, or closed
                fills: list[VenueFill] = []
                if every_trade or due or gone or moved or self._trades_stale():
                    self._trades_asked = time.monotonic()
                    fills = await self.recent_fills(since)
            except BaseException:
                self._trades_due = self._trades_due or due
                raise
            fresh = self.history.new(fills)
            # Orders a submit added while this poll was out are looked at by the next one.
            added = {vid: o for vid, o in self._open.items() if vid not in before and vid not in listed}
            self._open = {**listed, **added}
            self._changes += len(fresh)
            if fills:
                newest = max(f.executed_at for f in fills).timestamp() - FILL_OVERLAP_SECONDS
                if since is None or newest > since.timestamp():
                    self._fills_since = datetime.fromtimestamp(newest, UTC)
            self._delivering = True
            try:
                for fill in fresh:
                    if self._events.on_fill is not None:
                        await self._events.on_fill(fill)
                for order in updates:
                    if self._events.on_order is not None:
                        await self._events.on_order(order)
            finally:
                self._delivering = False

    def _trades_stale(self) -> bool:
        if self.call_budget is None:
            return True
        return time.monotonic() - self._trades_asked >= self.call_budget.trades_interval()

    async def _final_states(self, venue_order_ids: list[str]) -> list[VenueOrder]:
        found: list[VenueOrder] = []
        if not venue_order_ids:
            return found
        batch_size = ORDER_LOOKUP_BATCHES.get(self.venue)
        if batch_size is None and self.exchange.has.get("fetchOrdersByIds"):
            batch_size = ORDER_LOOKUP_BATCH
        if batch_size is not None:
            for start in range(0, len(venue_order_ids), batch_size):
                batch = venue_order_ids[start : start + batch_size]
                raws = await self._call(Channel.ORDERS, "orders", self.exchange.fetch_orders_by_ids, batch)
                found.extend(self.translate.order(raw) for raw in raws)
        else:
            for vid in venue_order_ids:
                order = await self.order_status(venue_order_id=vid)
                if order is not None:
                    found.append(order)
        return found

    async def _learn_client_ids(self, venue_order_ids: set[str]) -> None:
        """Trades do not carry the client order id: learn it from the orders not seen yet."""
        missing = self.translate.unlearned(venue_order_ids)
        if missing:
            await self._final_states(missing)
            self.translate.orderless(missing)  # those the venue does not know as orders (a fill with none behind it)

    # -- translation ------------------------------------------------------------------------------------------
    def _known(self, client_order_id: str, venue_order_id: str) -> VenueOrder | None:
        if venue_order_id:
            return self._open.get(venue_order_id)
        return next((o for o in self._open.values() if o.client_order_id == client_order_id), None)

    def _track(self, order: VenueOrder) -> None:
        if order.status.is_open:
            self._open[order.venue_order_id] = order
