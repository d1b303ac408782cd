"""CcxtBroker on ccxt's stock clients against the gateway (started per test on a free loopback port), every test whose
behaviour is the same on both run on both dialects, Kraken's (`[kraken]`) and Binance's (`[binance]`): orders, fills,
cancels, balances, events, every venue fault as its error class and metric, lost replies resolved without a second
order, the broker's polls finding the venue back. What only one venue does is a test named after it
(`test_krakens_...`; Binance's per-symbol calls are in test_ccxt_broker_binance.py). A bot on the runtime killed
mid-order, then reconciled, is in tests/venues/test_ccxt_bot.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import ccxt.async_support as ccxt
import pytest
from broker_recorder import Recorder
from broker_venues import VENUES, Venue, open_venue
from ccxt_helpers import (
    API_SECRET,
    OTHER_KEY,
    OTHER_SECRET,
    SUB_ACCOUNT,
    SYMBOLS,
    chaos,
    kraken,
    limit,
    market,
    running_gateway,
    wait_for,
)
from prometheus_client import CollectorRegistry
from secret_file import write_secret

from trading_ops.bot.broker import (
    BrokerError,
    BrokerEvents,
    Channel,
    OrderStatus,
    OrderType,
    Side,
)
from trading_ops.bot.loop import clock_offset
from trading_ops.bot.metrics import BotMetrics
from trading_ops.config import ConfigError, parse_config
from trading_ops.venues.ccxt.errors import error_class
from trading_ops.venues.ccxt.factory import broker_from_config, make_exchange
from trading_ops.venues.ccxt.rest import CcxtBroker

ROOT = Path(__file__).resolve().parents[2]


def connected_broker(base: str, **kwargs) -> CcxtBroker:  # type: ignore[no-untyped-def]
    options = {"poll_interval": 0.05, "quote_interval": 0.05, "lookup_backoff": 0.1, **kwargs}
    client_options = options.pop("client", {})
    symbols = options.pop("symbols", SYMBOLS)
    return CcxtBroker(kraken(base, **client_options), symbols, **options)


def venue_broker(venue: Venue, **kwargs) -> CcxtBroker:  # type: ignore[no-untyped-def]
    """connected_broker's broker on `venue`'s dialect (ccxt's stock client of that exchange, the main account's key)."""
    options = {"poll_interval": 0.05, "quote_interval": 0.05, "lookup_backoff": 0.1, **kwargs}
    client_options = options.pop("client", {})
    symbols = options.pop("symbols", SYMBOLS)
    return CcxtBroker(venue.client(**client_options), symbols, **options)


@pytest.mark.parametrize("venue_name", VENUES)
async def test_orders_fills_cancels_balances_and_events(venue_name: str) -> None:
    async with open_venue(venue_name, partial_fill_probability=0.0) as venue:
        gateway, seen = venue.gateway, Recorder()
        broker = venue_broker(venue)
        try:
            await broker.connect(seen.events())
            assert broker.is_connected(Channel.ORDERS) and broker.is_connected(Channel.MARKET_DATA)
            assert (Channel.ORDERS, True) in seen.connections and (Channel.MARKET_DATA, True) in seen.connections
            assert {q.symbol for q in seen.quotes} == set(SYMBOLS)
            assert all(q.bid < q.ask for q in seen.quotes)

            resting = await broker.submit(limit("b-1"))
            assert (resting.client_order_id, resting.status, resting.price) == ("b-1", OrderStatus.ACKNOWLEDGED, 1000)
            assert seen.orders == [resting]  # the acknowledgement is an event too, as a user-data stream sends it
            assert resting.venue_order_id == venue.wire_id(gateway.venue.orders()[0].venue_order_id)
            bought = await broker.submit(market("b-2"))
            assert bought.order_type is OrderType.MARKET and bought.price is None

            await wait_for(lambda: any(f.client_order_id == "b-2" for f in seen.fills))
            await wait_for(lambda: (o := seen.last("b-2")) is not None and o.status is OrderStatus.FILLED)
            venue_fill = (await gateway.venue.recent_fills())[0]
            (fill,) = seen.fills
            assert (fill.trade_id, fill.venue_order_id, fill.quantity, fill.price, fill.fee, fill.fee_asset) == (
                venue.wire_id(venue_fill.trade_id),
                bought.venue_order_id,
                venue_fill.quantity,
                venue_fill.price,
                venue_fill.fee,
                "USD",
            )
            assert fill.liquidity == "taker" and fill.side is Side.BUY

            assert [o.client_order_id for o in await broker.open_orders()] == ["b-1"]
            canceled = await broker.cancel("b-1")
            assert canceled.status is OrderStatus.CANCELED and canceled.venue_order_id == resting.venue_order_id
            with pytest.raises(BrokerError) as info:
                await broker.cancel(venue_order_id=resting.venue_order_id)
            assert info.value.error_class == "invalid_order" and not info.value.outcome_unknown

            assert await broker.balances() == await gateway.venue.balances()  # exact decimals, not floats
            assert (
                (await broker.positions())["ETH-USD"] == Decimal("0.5") == (await gateway.venue.positions())["ETH-USD"]
            )
            assert [f.trade_id for f in await broker.recent_fills()] == [venue.wire_id(venue_fill.trade_id)]
            assert await broker.recent_fills(venue_fill.executed_at.replace(year=2100)) == []
            assert abs((await broker.server_time()) - (await gateway.venue.server_time())).total_seconds() < 60
            assert await broker.order_status("b-1") == canceled
            assert await broker.order_status("nobody") is None
            assert await broker.order_status(venue_order_id=venue.unknown_order_id) is None

            # One SOL: worth Binance's minimum notional (5 USD) at these prices, far under the market's.
            by_hand = await broker.submit(limit("b-3", "SOL-USD", "10", "1"))
            await broker.submit(limit("b-4", "SOL-USD", "11", "1"))
            states = await broker.cancel_all()
            assert {(o.client_order_id, o.status) for o in states} == {
                ("b-3", OrderStatus.CANCELED),
                ("b-4", OrderStatus.CANCELED),
            }
            assert by_hand.key == "b-3" and await broker.open_orders() == []
        finally:
            await broker.close()
        assert not broker.is_connected(Channel.ORDERS)


@pytest.mark.parametrize("venue_name", VENUES)
async def test_partial_fills_arrive_as_fills_and_order_updates(venue_name: str) -> None:
    async with open_venue(venue_name, partial_fill_probability=1.0, tick_interval=0.05) as venue:
        gateway, seen = venue.gateway, Recorder()
        broker = venue_broker(venue)
        try:
            await broker.connect(seen.events())
            ask = gateway.venue.quote("ETH-USD").ask
            order = await broker.submit(limit("p-1", "ETH-USD", str(ask + 50), "2"))
            await wait_for(lambda: (o := seen.last("p-1")) is not None and o.status is OrderStatus.FILLED)
            mine = [f for f in seen.fills if f.client_order_id == "p-1"]
            assert len(mine) >= 2 and sum(f.quantity for f in mine) == Decimal(2)
            assert OrderStatus.PARTIALLY_FILLED in {o.status for o in seen.orders if o.key == "p-1"}
            assert {f.trade_id for f in mine} == {venue.wire_id(f.trade_id) for f in await gateway.venue.recent_fills()}
            assert order.venue_order_id == mine[0].venue_order_id
        finally:
            await broker.close()


@pytest.mark.parametrize("venue_name", VENUES)
async def test_fills_on_each_symbol_come_back_with_their_client_order_ids(venue_name: str) -> None:
    """The account's trades on two symbols (Kraken's broker asks the account's history, Binance's each symbol's)."""
    symbols = ["BTC-USD", "ETH-USD"]
    async with open_venue(venue_name) as venue:
        broker = CcxtBroker(venue.client(), symbols)
        try:
            await broker.connect(BrokerEvents())
            since = await broker.server_time()
            for n, symbol in enumerate(symbols):
                await broker.submit(market(f"bb-mkt-{n}", symbol, quantity="0.01"))
            fills = await broker.recent_fills(since)
            assert sorted((f.symbol, f.client_order_id) for f in fills) == [
                ("BTC-USD", "bb-mkt-0"),
                ("ETH-USD", "bb-mkt-1"),
            ]
            assert {f.trade_id for f in fills} == {
                venue.wire_id(f.trade_id) for f in await venue.gateway.venue.recent_fills()
            }
        finally:
            await broker.close()


# What provokes a venue fault on each dialect where the gateway's own fault command does not: Binance has no nonce, its
# equivalent refusal is a timestamp outside recvWindow (-1021), for as long as the server's clock is 20 s behind.
VENUE_FAULTS = {"binance": {"nonce": ("binance_clock_drift", {"ms": -20_000})}}


@pytest.mark.parametrize("venue_name", VENUES)
@pytest.mark.parametrize(
    ("fault", "args", "error", "unknown"),
    [
        ("rate_limit", {}, "rate_limit", False),
        ("insufficient_funds", {}, "insufficient_funds", False),
        ("invalid_order", {}, "invalid_order", False),
        ("nonce", {"count": 10}, "nonce", False),  # more than the broker retries
        ("unavailable", {}, "unavailable", True),  # the lookups are refused too: nobody knows
        ("drop_connection", {}, "network", True),
    ],
)
async def test_each_venue_fault_is_its_error_class_and_metric(venue_name, fault, args, error, unknown) -> None:
    async with open_venue(venue_name) as venue:
        gateway, registry = venue.gateway, CollectorRegistry()
        metrics = BotMetrics(venue=venue_name, registry=registry)
        broker = venue_broker(venue)
        try:
            await broker.connect(BrokerEvents(on_venue_error=metrics.venue_error))
            command, command_args = VENUE_FAULTS.get(venue_name, {}).get(fault, (fault, args))
            await chaos(venue.base, command, **command_args)
            with pytest.raises(BrokerError) as info:
                await broker.submit(limit("e-1"))
            assert info.value.error_class == error and info.value.outcome_unknown is unknown
            metrics.venue_error(info.value.error_class)  # what the bot does with an error it is handed
            assert (
                registry.get_sample_value("tradingbot_venue_errors_total", {"venue": venue_name, "error_class": error})
                == 1 + broker.handled_errors[error]
            )
            assert [o.client_order_id for o in gateway.venue.orders()] == []  # refused: never placed
        finally:
            await broker.close()


async def test_krakens_nonce_errors_are_counted_and_retried_with_a_fresh_nonce() -> None:
    """Kraken's own: a refused nonce (the gateway's `nonce` fault, the next N calls) is retried at once. Binance signs
    with a timestamp, not a nonce; its refusal lasts while the clocks disagree (the `nonce` case of the fault test)."""
    async with running_gateway() as (gateway, base):
        registry = CollectorRegistry()
        metrics = BotMetrics(venue="kraken", registry=registry)
        broker = connected_broker(base)
        try:
            await broker.connect(BrokerEvents(on_venue_error=metrics.venue_error))
            await chaos(base, "nonce", count=2)
            order = await broker.submit(limit("n-1"))
            assert order.status is OrderStatus.ACKNOWLEDGED
            assert [o.client_order_id for o in gateway.venue.orders()] == ["n-1"]  # once
            assert broker.handled_errors == {"nonce": 2}
            sample = registry.get_sample_value(
                "tradingbot_venue_errors_total", {"venue": "kraken", "error_class": "nonce"}
            )
            assert sample == 2
        finally:
            await broker.close()


@pytest.mark.parametrize("mode", ["close", "timeout"])
@pytest.mark.parametrize("venue_name", VENUES)
async def test_a_lost_reply_is_resolved_by_client_order_id_never_sent_twice(venue_name: str, mode: str) -> None:
    """The gateway's lost_reply fault places the order and loses its answer (the connection closed, or the answer held
    past the client's timeout): the broker finds the order by its client order id and never sends it again."""
    async with open_venue(venue_name) as venue:
        gateway = venue.gateway
        broker = venue_broker(venue, client={"timeout": 500})
        try:
            await broker.connect(BrokerEvents())
            await chaos(venue.base, "lost_reply", count=1, mode=mode, delay=2.0)
            order = await broker.submit(limit("l-1"))
            assert order.client_order_id == "l-1" and order.status is OrderStatus.ACKNOWLEDGED
            (placed,) = gateway.venue.orders()
            assert (placed.client_order_id, venue.wire_id(placed.venue_order_id)) == ("l-1", order.venue_order_id)
            assert venue.called("orders") == 0  # its only answer was the lost one
            assert broker.handled_errors == {"network": 1}
            # A market order whose answer is lost comes back filled.
            await chaos(venue.base, "lost_reply", count=1, mode=mode, delay=2.0)
            filled = await broker.submit(market("l-2"))
            assert filled.status is OrderStatus.FILLED and filled.filled_quantity == Decimal("0.5")
            assert [o.client_order_id for o in gateway.venue.orders()] == ["l-1", "l-2"]
        finally:
            await broker.close()


@pytest.mark.parametrize("venue_name", VENUES)
async def test_an_order_the_venue_refused_while_unavailable_is_known_not_placed(venue_name: str) -> None:
    async with open_venue(venue_name) as venue:
        gateway = venue.gateway
        broker = venue_broker(venue, lookup_backoff=1.0)  # lookups 1, 3 and 6 s after the refusal
        try:
            await broker.connect(BrokerEvents())
            await chaos(venue.base, "unavailable", seconds=1.0)
            with pytest.raises(BrokerError) as info:
                await broker.submit(limit("u-1"))
            assert info.value.error_class == "unavailable" and info.value.outcome_unknown is False
            assert info.value.detail == {"resolved": "not_placed"}
            assert gateway.venue.orders() == []
        finally:
            await broker.close()


@pytest.mark.parametrize("venue_name", VENUES)
async def test_bad_key_and_bad_signature_are_auth_errors(venue_name: str) -> None:
    async with open_venue(venue_name) as venue:
        for client in ({"key": "nobody"}, {"secret": venue.wrong_secret}):
            broker = CcxtBroker(venue.client(**client), SYMBOLS)
            try:
                with pytest.raises(BrokerError) as info:
                    await broker.balances()
                assert info.value.error_class == "auth" and not info.value.outcome_unknown
            finally:
                await broker.close()


@pytest.mark.parametrize("venue_name", VENUES)
async def test_stale_market_data_stops_the_polled_quotes_and_heals_on_resubscribe(venue_name: str) -> None:
    """The gateway's fault ends the way it ends on a venue, by what the client does: no `clear` here. The polled
    quotes of the pair stop while the others go on: Kraken's Ticker leaves the pair out; Binance's 24-hour ticker
    answers it frozen, its last quote under its last `closeTime`, which the broker takes for no news."""
    async with open_venue(venue_name, tick_interval=0.02, volatility=0.002) as venue:
        gateway, seen = venue.gateway, Recorder()
        broker = venue_broker(venue)
        try:
            await broker.connect(seen.events())
            await chaos(venue.base, "stale_market_data", symbol="ETH-USD")
            polls = venue.called("tickers")
            await wait_for(lambda: venue.called("tickers") >= polls + 2)  # answered since the fault
            eth = len([q for q in seen.quotes if q.symbol == "ETH-USD"])
            # The other symbols keep quoting; ETH has nothing to say any more.
            before = len([q for q in seen.quotes if q.symbol == "BTC-USD"])
            await wait_for(lambda: len([q for q in seen.quotes if q.symbol == "BTC-USD"]) >= before + 5)
            assert len([q for q in seen.quotes if q.symbol == "ETH-USD"]) == eth
            assert broker.is_connected(Channel.MARKET_DATA)  # the session is fine: it is the feed that stopped
            await broker.resubscribe(["ETH-USD"])
            assert seen.quotes[-1].symbol == "ETH-USD" and gateway.fault_model.subjects("stale_market_data") == []
            eth = len([q for q in seen.quotes if q.symbol == "ETH-USD"])
            await wait_for(lambda: len([q for q in seen.quotes if q.symbol == "ETH-USD"]) > eth + 2)
            with pytest.raises(BrokerError) as info:
                await broker.resubscribe(["DOGE-USD"])
            assert info.value.error_class == "other"
        finally:
            await broker.close()


@pytest.mark.parametrize("venue_name", VENUES)
async def test_a_dropped_connection_heals_on_reconnect(venue_name: str) -> None:
    """The gateway's fault ends the way it ends on a venue, by what the client does (a new session): no `clear` here."""
    async with open_venue(venue_name, tick_interval=0.02, volatility=0.002) as venue:
        gateway, seen = venue.gateway, Recorder()
        broker = venue_broker(venue)
        try:
            await broker.connect(seen.events())
            await chaos(venue.base, "drop_connection")
            await wait_for(lambda: (Channel.ORDERS, False) in seen.connections)
            await wait_for(lambda: (Channel.MARKET_DATA, False) in seen.connections)
            failed = broker.handled_errors["network"]
            await wait_for(lambda: broker.handled_errors["network"] > failed + 2)  # the polls do not get through
            assert not broker.is_connected(Channel.ORDERS) and not broker.is_connected(Channel.MARKET_DATA)
            await broker.reconnect()
            assert broker.is_connected(Channel.ORDERS) and broker.is_connected(Channel.MARKET_DATA)
            assert seen.connections[-2:] in (
                [(Channel.ORDERS, True), (Channel.MARKET_DATA, True)],
                [(Channel.MARKET_DATA, True), (Channel.ORDERS, True)],
            )
            assert gateway.fault_model.until("drop_connection") == 0
        finally:
            await broker.close()


@pytest.mark.parametrize("venue_name", VENUES)
async def test_after_a_venue_outage_the_polls_find_the_venue_back_by_themselves(venue_name: str) -> None:
    """An outage no reconnect can end: the broker's polls keep failing (each channel down once), and the first poll
    that gets through after it marks each channel up again, with no reconnect from anyone."""
    async with open_venue(venue_name, tick_interval=0.02, volatility=0.002) as venue:
        gateway, base, seen = venue.gateway, venue.base, Recorder()
        broker = venue_broker(venue)
        try:
            await broker.connect(seen.events())
            await chaos(base, "outage", seconds=600)
            await wait_for(lambda: {(Channel.ORDERS, False), (Channel.MARKET_DATA, False)} <= set(seen.connections))
            failed = broker.handled_errors["network"]
            await wait_for(lambda: broker.handled_errors["network"] > failed + 4)  # still polling, still down
            assert not broker.is_connected(Channel.ORDERS) and not broker.is_connected(Channel.MARKET_DATA)
            down = len(seen.connections)
            await chaos(base, "outage", seconds=0.3)  # the venue comes back a moment from now, by itself
            await wait_for(lambda: broker.is_connected(Channel.ORDERS) and broker.is_connected(Channel.MARKET_DATA))
            back = seen.connections[down:]
            assert len(back) == 2 and set(back) == {(Channel.ORDERS, True), (Channel.MARKET_DATA, True)}
            assert gateway.fault_model.until("outage") == 0
        finally:
            await broker.close()


@pytest.mark.parametrize("venue_name", VENUES)
async def test_a_call_of_the_session_a_reconnect_closed_does_not_mark_the_new_one_down(venue_name: str) -> None:
    """reconnect() closes ccxt's connections under the calls in flight (a poll): their failures are the old session's
    and say nothing of the venue, which the new session has just found up. A failure in the new session still does."""
    async with open_venue(venue_name, tick_interval=0.02, volatility=0.002) as venue:
        seen = Recorder()
        broker = venue_broker(venue, poll_interval=3600, quote_interval=3600)
        try:
            await broker.connect(seen.events())
            assert broker.is_connected(Channel.ORDERS)
            release = asyncio.Event()

            async def in_flight() -> None:
                await release.wait()
                raise ccxt.NetworkError(f"{venue_name} GET {venue.base}: Connection closed")

            old = asyncio.create_task(broker._call(Channel.ORDERS, "open orders", in_flight))
            await asyncio.sleep(0)  # the call is under way
            await broker.reconnect()
            release.set()
            with pytest.raises(BrokerError) as info:
                await old
            assert info.value.error_class == "network"
            assert broker.is_connected(Channel.ORDERS) and (Channel.ORDERS, False) not in seen.connections

            async def now_failing() -> None:
                raise ccxt.NetworkError(f"{venue_name} GET {venue.base}: Connection reset")

            with pytest.raises(BrokerError):
                await broker._call(Channel.ORDERS, "open orders", now_failing)
            assert not broker.is_connected(Channel.ORDERS) and seen.connections[-1] == (Channel.ORDERS, False)
        finally:
            await broker.close()


@pytest.mark.parametrize("venue_name", VENUES)
async def test_a_session_check_ends_a_dropped_connection_but_not_an_outage_and_starts_no_polls(venue_name: str) -> None:
    """check_session (the freqtrade sidecar's test before a reload_config) starts a session as a careful client does:
    it ends a drop_connection for every client, is refused by an outage, and never starts the broker's own polls."""
    async with open_venue(venue_name, tick_interval=0.02, volatility=0.002) as venue:
        gateway, base = venue.gateway, venue.base
        broker = venue_broker(venue)
        try:
            await chaos(base, "outage", seconds=600)
            with pytest.raises(BrokerError) as info:
                await broker.check_session()
            assert info.value.error_class in ("network", "unavailable")
            assert gateway.fault_model.until("outage") > 0
            await chaos(base, "clear")
            await chaos(base, "drop_connection")
            status_calls = venue.called("status")
            await broker.check_session()
            assert gateway.fault_model.until("drop_connection") == 0
            assert venue.called("status") == status_calls + 1
            assert venue.called("balances") == 1  # the private call
            tickers = venue.called("tickers")
            await asyncio.sleep(0.3)  # six quote intervals: a started broker would have polled
            assert venue.called("tickers") == tickers and broker._tasks == []
        finally:
            await broker.close()


@pytest.mark.parametrize("venue_name", VENUES)
async def test_brokers_on_two_accounts_of_one_venue_never_see_or_cancel_each_others_orders(venue_name: str) -> None:
    """Two bots' brokers, each with its own key to its own account of the venue (a sub-account): open orders, fills,
    positions are each one's own, and one's cancel_all (Kraken's CancelAll, Binance's DELETE openOrders of a symbol)
    leaves the other's orders resting."""
    async with open_venue(venue_name, sub_account=True) as venue:
        gateway = venue.gateway
        sub_key, sub_secret = venue.key("sub")
        a = venue_broker(venue)
        b = venue_broker(venue, client={"key": sub_key, "secret": sub_secret})
        try:
            await a.connect(BrokerEvents())
            await b.connect(BrokerEvents())
            await a.submit(limit("a-1"))
            await b.submit(limit("b-1"))
            await b.submit(limit("b-2", symbol="ETH-USD", price="100", quantity="0.1"))  # Binance's minimum notional
            await b.submit(market("b-3"))
            assert [o.client_order_id for o in await a.open_orders()] == ["a-1"]
            assert sorted(o.client_order_id for o in await b.open_orders()) == ["b-1", "b-2"]
            assert await a.recent_fills() == []
            assert [f.client_order_id for f in await b.recent_fills()] == ["b-3"]
            assert (await a.positions())["ETH-USD"] == 0 and (await b.positions())["ETH-USD"] == Decimal("0.5")
            canceled = await a.cancel_all()
            assert [(o.client_order_id, o.status) for o in canceled] == [("a-1", OrderStatus.CANCELED)]
            assert await a.open_orders() == []
            assert sorted(o.client_order_id for o in await b.open_orders()) == ["b-1", "b-2"]
            assert len(await gateway.accounts[SUB_ACCOUNT].open_orders()) == 2
        finally:
            await a.close()
            await b.close()


@pytest.mark.parametrize("venue_name", VENUES)
async def test_a_quiet_market_stays_fresh_every_successful_poll_is_a_quote(venue_name: str) -> None:
    """Kraken's ticker has no timestamp: a poll that answers is fresh data even when nothing moved. Binance's 24-hour
    ticker is stamped with its close time, the server's time of the answer: fresh on a quiet market too."""
    async with open_venue(venue_name) as venue:  # quiet: the venue does not tick, prices never move
        gateway, seen = venue.gateway, Recorder()
        broker = venue_broker(venue, symbols=["BTC-USD"])
        try:
            await broker.connect(seen.events())
            await wait_for(lambda: len(seen.quotes) >= 10)
            assert {(q.bid, q.ask) for q in seen.quotes} == {
                (gateway.venue.quote("BTC-USD").bid, gateway.venue.quote("BTC-USD").ask)
            }
            stamps = [q.timestamp for q in seen.quotes]
            assert stamps == sorted(stamps) and stamps[0] < stamps[-1]  # each stamped when it was seen
        finally:
            await broker.close()


async def test_krakens_whole_second_clock_is_not_skew_and_a_real_offset_still_shows() -> None:
    """Kraken's Time answers whole seconds, up to 1 s behind: read naively (now minus its answer), half the readings
    of a perfectly synchronised host would be over the 0.5 s TradingBotClockSkew threshold."""
    async with running_gateway() as (gateway, base):
        broker = connected_broker(base, symbols=["BTC-USD"])
        try:
            await broker.connect(Recorder().events())

            async def reading() -> tuple[float, float]:
                sent = datetime.now(UTC)
                server = await broker.server_time()
                received = datetime.now(UTC)
                assert server.microsecond == 0 and broker.server_time_resolution() == 1.0
                return (received - server).total_seconds(), clock_offset(
                    sent, received, server, broker.server_time_resolution()
                )

            readings = [await reading()]
            while max(naive for naive, _ in readings) <= 0.5 and len(readings) < 100:  # what the bot used to export
                await asyncio.sleep(0.07)  # on through the second
                readings.append(await reading())
            assert max(naive for naive, _ in readings) > 0.5
            assert [offset for _, offset in readings] == [0.0] * len(readings)
            # A venue clock 3 s ahead is a real skew: at least 2 s of it shows, whatever the truncation.
            await gateway.venue.set_clock_skew(3.0)
            _, offset = await reading()
            assert -4.0 < offset <= -2.0
        finally:
            await broker.close()


def test_the_ccxt_error_table_maps_each_class_once() -> None:
    import ccxt.async_support as ccxt

    expected = {
        ccxt.InvalidNonce: "nonce",
        ccxt.RateLimitExceeded: "rate_limit",
        ccxt.DDoSProtection: "rate_limit",
        ccxt.RequestTimeout: "network",
        ccxt.ExchangeNotAvailable: "unavailable",
        ccxt.OnMaintenance: "unavailable",
        ccxt.NetworkError: "network",
        ccxt.AuthenticationError: "auth",
        ccxt.PermissionDenied: "auth",
        ccxt.InsufficientFunds: "insufficient_funds",
        ccxt.InvalidOrder: "invalid_order",
        ccxt.OrderNotFound: "invalid_order",
        ccxt.BadSymbol: "other",
        ccxt.ExchangeError: "other",
    }
    assert {cls: error_class(cls("x")) for cls in expected} == expected
    try:
        raise ccxt.ExchangeNotAvailable("dropped") from aiohttp.ServerDisconnectedError()
    except ccxt.ExchangeNotAvailable as exc:
        assert error_class(exc) == "network"


def test_factory_from_config_overrides_urls_and_reads_secrets(tmp_path, monkeypatch) -> None:
    key_file = tmp_path / "key"
    write_secret(key_file, "k1\n")
    monkeypatch.setenv("MY_SECRET", API_SECRET)
    config = parse_config(
        {
            "ccxt": {
                "exchange": "kraken",
                "api_key_file": str(key_file),
                "api_secret_env": "MY_SECRET",
                "urls": {"public": "http://127.0.0.1:1", "private": "http://127.0.0.1:1"},
                "symbols": ["BTC-USD", "ETH-USD"],
                "enable_rate_limit": False,
                "timeout_seconds": 2,
                "position_baseline": {"BTC": 0.5},
            }
        }
    )
    broker = broker_from_config(config)
    ex = broker.exchange
    assert (ex.apiKey, ex.secret, ex.enableRateLimit, ex.timeout) == ("k1", API_SECRET, False, 2000)
    assert ex.urls["api"]["public"] == ex.urls["api"]["private"] == "http://127.0.0.1:1"
    assert "zendesk" in ex.urls["api"]  # the other URLs are kept
    assert ex.session is None and ex.markets is None  # nothing was fetched, no connection opened
    assert broker.symbols == ["BTC-USD", "ETH-USD"] and broker.position_baseline == {"BTC": Decimal("0.5")}
    with pytest.raises(ConfigError, match="ccxt.exchange: ccxt has no exchange 'nowhere'"):
        make_exchange(parse_config({"ccxt": {"exchange": "nowhere"}}))
    monkeypatch.delenv("TRADING_OPS_CCXT_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ccxt.api_key: not set"):
        make_exchange(parse_config({}))
    with pytest.raises(ConfigError, match=r"ccxt.symbols\[0\]: expected BASE-QUOTE"):
        parse_config({"ccxt": {"symbols": ["btc/usd"]}})
    with pytest.raises(ConfigError, match="ccxt.urls.private: expected an http"):
        parse_config({"ccxt": {"urls": {"private": "ftp://x"}}})


async def test_krakens_order_placed_by_hand_without_a_client_order_id() -> None:
    """Kraken's own: an order needs no client order id there (ccxt's binance client always sends one, its own if not
    given), and Kraken refuses one of the broker's internal form (`anonymous:`) with its own words."""
    async with running_gateway() as (gateway, base):
        by_hand = kraken(base, key=OTHER_KEY, secret=OTHER_SECRET)
        broker = connected_broker(base)
        try:
            await by_hand.load_markets()
            placed = await by_hand.create_order("BTC/USD", "limit", "buy", 0.01, 1000)
            assert placed["clientOrderId"] is None
            with pytest.raises(ccxt.InsufficientFunds):  # the venue's checks apply to such orders too
                await by_hand.create_order("BTC/USD", "limit", "buy", 100, 60000)
            await broker.connect(BrokerEvents())
            (listed,) = await broker.open_orders()
            assert (listed.client_order_id, listed.key) == ("", f"venue:{placed['id']}")
            with pytest.raises(ccxt.ExchangeError, match="EGeneral:Invalid arguments:cl_ord_id"):  # internal ids
                await by_hand.create_order("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "anonymous:x"})
            canceled = await broker.cancel(venue_order_id=placed["id"])
            assert canceled.status is OrderStatus.CANCELED and canceled.client_order_id == ""
            assert [o.status for o in gateway.venue.orders()] == [OrderStatus.CANCELED, OrderStatus.REJECTED]
        finally:
            await by_hand.close()
            await broker.close()


async def test_krakens_price_rejects_funds_and_a_wrong_secret_are_the_classes_they_are() -> None:
    """Kraken words a refused price `EOrder:Invalid price:<why>`, of which stock ccxt knows one wording: the broker
    counts every one as `invalid_order` (the gateway's random price_out_of_band reject included), a busy venue as
    `unavailable`, a sell of what the spot account does not hold as `insufficient_funds`, a wrong secret as `auth`."""
    async with running_gateway(reject_probability=1.0) as (gateway, base):
        broker, wrong = connected_broker(base), connected_broker(base, client={"secret": OTHER_SECRET})
        try:
            await broker.connect(BrokerEvents())
            classes = set()
            for i in range(40):
                with pytest.raises(BrokerError) as info:
                    await broker.submit(limit(f"r-{i}"))
                classes.add((info.value.error_class, "EOrder:Invalid price" in str(info.value)))
                if len(classes) == 2:
                    break
            assert classes == {("invalid_order", True), ("unavailable", False)}
            gateway.venue.reject_probability = 0.0
            with pytest.raises(ccxt.InvalidOrder, match="price can only be specified up to 2 decimals") as raised:
                await broker.exchange.private_post_addorder(
                    {"pair": "XXBTZUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "1.001"}
                )
            assert error_class(raised.value) == "invalid_order"
            with pytest.raises(BrokerError) as info:
                await broker.submit(market("s-1", "SOL-USD", Side.SELL, "1"))
            assert info.value.error_class == "insufficient_funds" and not info.value.outcome_unknown
            with pytest.raises(BrokerError) as info:
                await wrong.connect(BrokerEvents())
            assert info.value.error_class == "auth"
        finally:
            await broker.close()
            await wrong.close()
