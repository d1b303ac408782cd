"""A real NautilusTrader `TradingNode` for the integration's tests: Nautilus's sandbox execution client (its simulated
exchange) fed by a data client that polls the paper gateway's public Kraken API (Ticker) for quotes, one small
strategy, and the trading-ops controller. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from nautilus_trader.adapters.sandbox.config import SandboxExecutionClientConfig
from nautilus_trader.adapters.sandbox.factory import SandboxLiveExecClientFactory
from nautilus_trader.cache.cache import Cache
from nautilus_trader.common.component import LiveClock, MessageBus
from nautilus_trader.common.config import LoggingConfig
from nautilus_trader.common.providers import InstrumentProvider
from nautilus_trader.config import LiveDataClientConfig, LiveExecEngineConfig, StrategyConfig
from nautilus_trader.data.messages import SubscribeQuoteTicks, UnsubscribeQuoteTicks
from nautilus_trader.live.config import TradingNodeConfig
from nautilus_trader.live.data_client import LiveMarketDataClient
from nautilus_trader.live.factories import LiveDataClientFactory
from nautilus_trader.live.node import TradingNode
from nautilus_trader.model.currencies import Currency
from nautilus_trader.model.data import QuoteTick
from nautilus_trader.model.enums import OrderSide, TimeInForce
from nautilus_trader.model.identifiers import ClientId, ClientOrderId, InstrumentId, Symbol, TraderId, Venue
from nautilus_trader.model.instruments import CurrencyPair
from nautilus_trader.model.objects import Price, Quantity
from nautilus_trader.trading.strategy import Strategy

from trading_ops.integrations.nautilus import TradingOpsController, controller_config

VENUE = "PAPER"
SYMBOL = "BTC/USD"
INSTRUMENT_ID = f"{SYMBOL}.{VENUE}"
STARTING_BALANCES = ["1000000 USD", "10 BTC"]


# -- a data client fed by the paper gateway -------------------------------------------------------------------------
class PaperQuotesConfig(LiveDataClientConfig, frozen=True, kw_only=True):
    url: str
    venue: str = VENUE
    poll_interval_seconds: float = 0.2


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    if body.get("error"):
        raise RuntimeError(f"{url}: {body['error']}")
    return body["result"]


def paper_instruments(url: str, venue: str) -> dict[str, tuple[CurrencyPair, str]]:
    """The gateway's pairs (AssetPairs) as Nautilus currency pairs, by instrument id, with the Kraken pair name."""
    found = {}
    for pair in _get(f"{url}/0/public/AssetPairs").values():
        base, quote = (part.replace("XBT", "BTC") for part in pair["wsname"].split("/"))
        price_precision, size_precision = int(pair["pair_decimals"]), int(pair["lot_decimals"])
        instrument = CurrencyPair(
            instrument_id=InstrumentId(Symbol(f"{base}/{quote}"), Venue(venue)),
            raw_symbol=Symbol(pair["altname"]),
            base_currency=Currency.from_str(base),
            quote_currency=Currency.from_str(quote),
            price_precision=price_precision,
            size_precision=size_precision,
            price_increment=Price(Decimal(pair["tick_size"]), price_precision),
            size_increment=Quantity(Decimal(pair["ordermin"]), size_precision),
            ts_event=0,
            ts_init=0,
            maker_fee=Decimal(str(pair["fees_maker"][0][1])) / 100,
            taker_fee=Decimal(str(pair["fees"][0][1])) / 100,
        )
        found[instrument.id.value] = (instrument, pair["altname"])
    return found


class PaperQuotesClient(LiveMarketDataClient):
    """Quotes by polling the gateway's Ticker, per subscribed instrument. A subscription starts as a polling client's
    does on Kraken: AssetPairs for the pair (the gateway's stale_market_data fault ends there), then Ticker every
    poll interval. A pair the gateway leaves out of Ticker (its feed stopped) publishes nothing until renewed; a
    request the gateway does not answer marks the client disconnected until it is connected again."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, name: str, config: PaperQuotesConfig, msgbus: Any, cache: Any, clock: Any
    ) -> None:
        super().__init__(
            loop=loop,
            client_id=ClientId(name),
            venue=Venue(config.venue),
            msgbus=msgbus,
            cache=cache,
            clock=clock,
            instrument_provider=InstrumentProvider(),
            config=config,
        )
        self._url = config.url
        self._interval = config.poll_interval_seconds
        self._pairs = {iid: altname for iid, (_i, altname) in paper_instruments(config.url, config.venue).items()}
        self._session: aiohttp.ClientSession | None = None
        self._polls: dict[InstrumentId, asyncio.Task[None]] = {}
        self.quotes_published = 0

    async def _connect(self) -> None:
        self._session = aiohttp.ClientSession()
        # A new session starts as a careful client's does, with the venue's status (the gateway's drop_connection
        # fault ends there).
        async with self._session.get(f"{self._url}/0/public/SystemStatus") as resp:
            resp.raise_for_status()
        for instrument_id in self.subscribed_quote_ticks():
            await self._renew(instrument_id)

    async def _disconnect(self) -> None:
        for task in self._polls.values():
            task.cancel()
        self._polls.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _subscribe_quote_ticks(self, command: SubscribeQuoteTicks) -> None:
        await self._renew(command.instrument_id)

    async def _unsubscribe_quote_ticks(self, command: UnsubscribeQuoteTicks) -> None:
        task = self._polls.pop(command.instrument_id, None)
        if task is not None:
            task.cancel()

    async def _renew(self, instrument_id: InstrumentId) -> None:
        assert self._session is not None
        altname = self._pairs[instrument_id.value]
        async with self._session.get(f"{self._url}/0/public/AssetPairs", params={"pair": altname}) as resp:
            resp.raise_for_status()
        old = self._polls.pop(instrument_id, None)
        if old is not None:
            old.cancel()
        self._polls[instrument_id] = self._loop.create_task(self._poll(instrument_id, altname))

    async def _poll(self, instrument_id: InstrumentId, altname: str) -> None:
        instrument = self._cache.instrument(instrument_id)
        while True:
            try:
                assert self._session is not None
                async with self._session.get(f"{self._url}/0/public/Ticker", params={"pair": altname}) as resp:
                    body = await resp.json()
                for ticker in (body.get("result") or {}).values():
                    now = self._clock.timestamp_ns()
                    self._handle_data(
                        QuoteTick(
                            instrument_id=instrument_id,
                            bid_price=instrument.make_price(float(ticker["b"][0])),
                            ask_price=instrument.make_price(float(ticker["a"][0])),
                            bid_size=instrument.make_qty(1),
                            ask_size=instrument.make_qty(1),
                            ts_event=now,
                            ts_init=now,
                        )
                    )
                    self.quotes_published += 1
            except (aiohttp.ClientError, ValueError) as exc:
                # The session is lost (the venue closed it): the client says so, and waits for a reconnect.
                self._log.warning(f"Ticker {altname}: {exc}")
                if self.is_connected:
                    self._set_connected(False)
            await asyncio.sleep(self._interval)


class PaperQuotesFactory(LiveDataClientFactory):
    @staticmethod
    def create(  # type: ignore[override]
        loop: asyncio.AbstractEventLoop,
        name: str,
        config: PaperQuotesConfig,
        msgbus: MessageBus,
        cache: Cache,
        clock: LiveClock,
    ) -> PaperQuotesClient:
        # The instruments are in the cache before any client connects: the sandbox's simulated exchange takes its
        # venue's instruments from the cache when it connects.
        for instrument, _altname in paper_instruments(config.url, config.venue).values():
            cache.add_instrument(instrument)
        return PaperQuotesClient(loop, name, config, msgbus, cache, clock)


# -- a small strategy ----------------------------------------------------------------------------------------------
class HoldConfig(StrategyConfig, frozen=True, kw_only=True):
    instrument_id: str = INSTRUMENT_ID
    quantity: str = "0.5"
    # A resting limit buy this far below the bid (never fills in a test's time): an open order.
    rest_below: float = 0.5


class Hold(Strategy):
    """Buys `quantity` at market on its first quote and rests a limit buy far below the market, once."""

    def __init__(self, config: HoldConfig) -> None:
        super().__init__(config)
        self.instrument_id = InstrumentId.from_str(config.instrument_id)
        self.placed = False
        self.quotes = 0

    def on_start(self) -> None:
        self.subscribe_quote_ticks(self.instrument_id)

    def on_quote_tick(self, tick: QuoteTick) -> None:
        self.quotes += 1
        if self.placed:
            return
        self.placed = True
        instrument = self.cache.instrument(self.instrument_id)
        quantity = instrument.make_qty(Decimal(self.config.quantity))
        self.submit_order(self.order_factory.market(self.instrument_id, OrderSide.BUY, quantity))
        rest = instrument.make_price(float(tick.bid_price) * (1 - self.config.rest_below))
        self.submit_order(
            self.order_factory.limit(self.instrument_id, OrderSide.BUY, quantity, rest, time_in_force=TimeInForce.GTC)
        )

    def buy(self, quantity: str) -> ClientOrderId:
        """A market buy of `quantity`, as the strategy would send one (the RiskEngine decides); its client order id,
        for a test to wait on the order itself."""
        instrument = self.cache.instrument(self.instrument_id)
        order = self.order_factory.market(self.instrument_id, OrderSide.BUY, instrument.make_qty(Decimal(quantity)))
        self.submit_order(order)
        return order.client_order_id


# -- the node ------------------------------------------------------------------------------------------------------
@dataclass
class Node:
    node: TradingNode
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    strategy: Hold

    @property
    def controller(self) -> TradingOpsController:
        controller = self.node.kernel._controller
        assert isinstance(controller, TradingOpsController)
        return controller

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.controller.port}"

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.controller.port}"

    def on_loop(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """`fn()` on the node's loop thread (where Nautilus's objects are touched), its result here."""

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def describe(self) -> str:
        """What a failed wait on the node's trading should say, read on its loop in one go: the strategy, the net
        position, the venue's balances, every order (its status and fill), the last quote, the RiskEngine's state."""

        def read() -> dict[str, Any]:
            kernel = self.node.kernel
            cache, iid = kernel.cache, self.strategy.instrument_id
            quote = cache.quote_tick(iid)
            return {
                "strategy": f"{self.strategy.id.value} {self.strategy.state.name} (quotes seen {self.strategy.quotes})",
                "trading_state": kernel.risk_engine.trading_state.name,
                "net_position": str(kernel.portfolio.net_position(iid)),
                "balances": {
                    c.code: f"total {b.total} locked {b.locked}"
                    for a in cache.accounts()
                    for c, b in a.balances().items()
                },
                "orders": [
                    f"{o.client_order_id.value} {o.side_string()} {o.quantity} {o.type_string()} {o.status_string()} "
                    f"filled {o.filled_qty}" + (" reduce-only" if o.is_reduce_only else "")
                    for o in cache.orders()
                ],
                "open_orders": [o.client_order_id.value for o in cache.orders_open()],
                "last_quote": None if quote is None else f"{quote.bid_price}/{quote.ask_price} at {quote.ts_init}",
                "quotes_published": self.data_client.quotes_published,
            }

        try:
            return json.dumps(self.on_loop(read), indent=1)
        except Exception as exc:  # the loop stuck or gone: that is the answer
            return f"the node's state unreadable: {type(exc).__name__}: {exc}"

    def diagnostics(self) -> str:
        """What a failed test's report carries of the node (tests/conftest.py reads it from each fixture value)."""
        return self.describe()

    @property
    def data_client(self) -> PaperQuotesClient:
        client = self.node.kernel.data_engine._clients[ClientId(VENUE)]
        assert isinstance(client, PaperQuotesClient)
        return client

    def stop(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.node.stop_async(), self.loop).result(60)
        self.thread.join(60)
        self.node.dispose()


def start_node(
    gateway_url: str,
    token_file: Path,
    *,
    port: int,
    trader_id: str = "NAUTILUS-001",
    daily_loss_limit: float | None = None,
    quantity: str = "0.5",
    log_level: str = "WARNING",
    **controller: Any,
) -> Node:
    """A TradingNode on its own loop thread, started; returns once the controller serves and the strategy placed. The
    controller's data dir (its halt, its journal of control commands) is `controller/` beside the token file unless
    `data_dir` says otherwise: never the temporary directory other runs share."""
    controller.setdefault("data_dir", str(token_file.parent / "controller"))
    config = TradingNodeConfig(
        trader_id=TraderId(trader_id),
        logging=LoggingConfig(log_level=log_level),
        exec_engine=LiveExecEngineConfig(reconciliation=True),
        data_clients={VENUE: PaperQuotesConfig(url=gateway_url)},
        exec_clients={
            VENUE: SandboxExecutionClientConfig(
                venue=VENUE,
                starting_balances=STARTING_BALANCES,
                account_type="CASH",
                oms_type="NETTING",
            )
        },
        controller=controller_config(
            port=port, token_file=str(token_file), daily_loss_limit=daily_loss_limit, **controller
        ),
        timeout_connection=10.0,
        timeout_reconciliation=5.0,
        timeout_portfolio=5.0,
        timeout_disconnection=5.0,
        timeout_post_stop=0.5,
    )
    loop = asyncio.new_event_loop()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGABRT)}
    node = TradingNode(config=config, loop=loop)
    # The kernel takes SIGINT, SIGTERM and SIGABRT for its loop: in a test process they stay pytest's.
    for sig, handler in handlers.items():
        loop.remove_signal_handler(sig)
        signal.signal(sig, handler)
    strategy = Hold(HoldConfig(quantity=quantity))
    node.trader.add_strategy(strategy)
    node.add_data_client_factory(VENUE, PaperQuotesFactory)
    node.add_exec_client_factory(VENUE, SandboxLiveExecClientFactory)
    node.build()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(node.run_async())

    thread = threading.Thread(target=run, name=f"nautilus-{trader_id}", daemon=True)
    thread.start()
    return Node(node, loop, thread, strategy)
