"""Tests for the paper venue: a deterministic, simulated Broker with fault injection and persistence."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from broker_recorder import Recorder
from paper_helpers import wait_for

from trading_ops.bot.broker import (
    BrokerError,
    BrokerEvents,
    Channel,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    VenueFill,
)
from trading_ops.paper.venue import RANDOM_REJECT_REASONS, PaperVenue

START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
D = Decimal


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_venue(clock: FakeClock) -> Callable[..., PaperVenue]:
    def make(**overrides: Any) -> PaperVenue:
        params: dict[str, Any] = {"seed": 7, "volatility": 0.0, "clock": clock}
        params.update(overrides)
        return PaperVenue(**params)

    return make


@pytest.fixture
async def connected(make_venue: Callable[..., PaperVenue]) -> tuple[PaperVenue, Recorder]:
    venue = make_venue()
    recorder = Recorder()
    await venue.connect(recorder.events())
    recorder.clear()
    return venue, recorder


def market(cid: str, side: Side, qty: str, symbol: str = "BTC-USD", reduce_only: bool = False) -> OrderRequest:
    return OrderRequest(cid, symbol, side, OrderType.MARKET, D(qty), reduce_only=reduce_only)


def limit(cid: str, side: Side, qty: str, price: str, symbol: str = "BTC-USD") -> OrderRequest:
    return OrderRequest(cid, symbol, side, OrderType.LIMIT, D(qty), D(price))


# -- prices -----------------------------------------------------------------------------------------------------
async def test_same_seed_gives_the_same_prices_and_another_seed_does_not(clock: FakeClock) -> None:
    async def walk(seed: int) -> list[dict[str, Quote]]:
        venue = PaperVenue(seed=seed, volatility=0.002, clock=clock)
        return [await venue.tick() for _ in range(20)]

    first, again, other = await walk(1), await walk(1), await walk(2)
    assert first == again
    assert first != other
    moved = first[-1]["BTC-USD"]
    assert moved.mid != D(65000)
    assert moved.bid < moved.ask
    assert moved.bid == moved.bid.quantize(D("0.01"))


def test_initial_prices_defaults_and_spread(make_venue: Callable[..., PaperVenue]) -> None:
    venue = make_venue(symbols=["BTC-USD", "ETH-USD", "SOL-USD", "DOGE-USD"])
    assert venue.quote("BTC-USD").bid == D("64993.50")
    assert venue.quote("BTC-USD").ask == D("65006.50")
    assert venue.quote("ETH-USD").mid == D(3200)
    assert venue.quote("SOL-USD").mid == D(150)
    assert venue.quote("DOGE-USD").mid == D(100)


async def test_run_ticks_and_publishes_quotes_until_closed(make_venue: Callable[..., PaperVenue]) -> None:
    venue = make_venue(volatility=0.001)
    quotes: list[Quote] = []
    enough = asyncio.Event()

    async def on_quote(quote: Quote) -> None:
        quotes.append(quote)
        if len(quotes) >= 30:
            enough.set()

    await venue.connect(BrokerEvents(on_quote=on_quote))
    runner = asyncio.create_task(venue.run(0))
    async with asyncio.timeout(5):
        await enough.wait()
    await venue.close()
    async with asyncio.timeout(5):
        await runner
    assert {q.symbol for q in quotes} == {"BTC-USD", "ETH-USD", "SOL-USD"}
    assert len({q.mid for q in quotes if q.symbol == "BTC-USD"}) > 1
    assert not venue.is_connected(Channel.ORDERS)
    delivered = len(quotes)
    await venue.tick()
    assert len(quotes) == delivered  # nothing after close()


async def test_run_keeps_ticking_when_a_callback_fails(
    make_venue: Callable[..., PaperVenue], caplog: pytest.LogCaptureFixture
) -> None:
    venue = make_venue()
    calls = 0
    enough = asyncio.Event()

    async def broken(quote: Quote) -> None:
        nonlocal calls
        calls += 1
        if calls >= 10:
            enough.set()
        if calls > 3:
            raise RuntimeError("bot bug")

    await venue.connect(BrokerEvents(on_quote=broken))
    runner = asyncio.create_task(venue.run(0))
    async with asyncio.timeout(5):
        await enough.wait()
    await venue.close()
    async with asyncio.timeout(5):
        await runner
    assert "an event callback failed during a tick" in caplog.text


# -- orders and fills -------------------------------------------------------------------------------------------
async def test_market_buy_fills_at_the_ask_and_updates_position_balances_and_fees(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, recorder = connected
    order = await venue.submit(market("c1", Side.BUY, "0.1"))

    assert order.status is OrderStatus.FILLED
    assert order.filled_quantity == D("0.1")
    assert [o.status for o in recorder.orders] == [OrderStatus.ACKNOWLEDGED, OrderStatus.FILLED]
    [fill] = recorder.fills
    assert (fill.client_order_id, fill.price, fill.quantity, fill.liquidity) == ("c1", D("65006.50"), D("0.1"), "taker")
    assert fill.fee == D("6500.650") * D("0.0005") == D("3.2503250")
    assert fill.fee_asset == "USD"
    assert (await venue.positions())["BTC-USD"] == D("0.1")
    balances = await venue.balances()
    assert balances["USD"] == D(100000) - D("6500.650") - D("3.2503250")
    assert balances["BTC"] == D("0.1")
    assert await venue.recent_fills() == [fill]


async def test_market_sell_fills_at_the_bid_and_credits_the_quote_asset(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, recorder = connected
    await venue.submit(market("c1", Side.SELL, "2", symbol="ETH-USD"))
    [fill] = recorder.fills
    assert fill.price == D("3199.68")
    assert (await venue.positions())["ETH-USD"] == D(-2)
    assert (await venue.balances())["USD"] == D(100000) + D("6399.36") - D("6399.36") * D("0.0005")


async def test_quantities_and_prices_are_rounded_to_step_and_tick(connected: tuple[PaperVenue, Recorder]) -> None:
    venue, _ = connected
    order = await venue.submit(limit("c1", Side.BUY, "0.123456", "60000.004"))
    assert order.quantity == D("0.1234")
    assert order.price == D("60000.00")


async def test_limit_order_that_crosses_fills_at_once_as_taker_at_the_better_price(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, recorder = connected
    order = await venue.submit(limit("c1", Side.BUY, "0.5", "66000"))
    assert order.status is OrderStatus.FILLED
    assert recorder.fills[0].price == D("65006.50")
    assert recorder.fills[0].liquidity == "taker"


async def test_limit_order_rests_then_fills_as_maker_when_the_market_reaches_it(
    make_venue: Callable[..., PaperVenue],
) -> None:
    venue = make_venue(volatility=0.003)
    recorder = Recorder()
    await venue.connect(recorder.events())
    resting = await venue.submit(limit("c1", Side.BUY, "0.2", "64900"))
    assert resting.status is OrderStatus.ACKNOWLEDGED
    assert [o.client_order_id for o in await venue.open_orders()] == ["c1"]
    assert recorder.fills == []

    for _ in range(200):
        await venue.tick()
        if recorder.fills:
            break
    [fill] = recorder.fills
    assert (fill.price, fill.liquidity, fill.quantity) == (D("64900.00"), "maker", D("0.2"))
    assert fill.fee == D("0.2") * D("64900.00") * D("0.0002")
    assert recorder.orders[-1].status is OrderStatus.FILLED
    assert await venue.open_orders() == []
    assert (await venue.positions())["BTC-USD"] == D("0.2")


async def test_price_gap_fills_resting_orders_it_crosses(connected: tuple[PaperVenue, Recorder]) -> None:
    venue, recorder = connected
    await venue.submit(limit("buy-low", Side.BUY, "0.1", "62000"))
    await venue.submit(limit("buy-lower", Side.BUY, "0.1", "55000"))
    quote = await venue.gap_price("BTC-USD", -0.08)
    assert quote.mid == D("59800.00")
    assert recorder.quotes[-1] == quote
    assert [f.client_order_id for f in recorder.fills] == ["buy-low"]
    assert recorder.fills[0].price == D("62000.00")
    assert [o.client_order_id for o in await venue.open_orders()] == ["buy-lower"]


async def test_an_account_that_follows_another_venues_prices_fills_what_they_cross(
    connected: tuple[PaperVenue, Recorder], make_venue: Callable[..., PaperVenue]
) -> None:
    """A sub-account: its own orders and ids (from `id_base`), the market's prices taken from another venue."""
    account, recorder = connected
    market = make_venue(seed=99)
    await market.connect(BrokerEvents())
    own = make_venue(id_base=1000)
    await own.connect(BrokerEvents())
    assert (await own.submit(limit("x", Side.BUY, "0.1", "1000"))).venue_order_id == "P1001"
    await account.submit(limit("buy-low", Side.BUY, "0.1", "62000"))
    await market.gap_price("BTC-USD", -0.08)
    await account.follow(market.prices())
    assert account.prices() == market.prices() and recorder.quotes[-1].mid == market.quote("BTC-USD").mid
    assert [f.client_order_id for f in recorder.fills] == ["buy-low"] and recorder.fills[0].liquidity == "maker"
    quotes = len(recorder.quotes)
    await account.follow(market.prices())  # nothing moved: nothing to tell
    assert len(recorder.quotes) == quotes


async def test_partial_fill_leaves_the_rest_working_until_it_fills(make_venue: Callable[..., PaperVenue]) -> None:
    venue = make_venue(partial_fill_probability=1.0)
    recorder = Recorder()
    await venue.connect(recorder.events())
    order = await venue.submit(market("c1", Side.BUY, "1"))
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert D(0) < order.filled_quantity < D(1)
    assert [o.client_order_id for o in await venue.open_orders()] == ["c1"]
    assert (await venue.positions())["BTC-USD"] == order.filled_quantity

    venue.partial_fill_probability = 0.0
    await venue.tick()
    assert len(recorder.fills) == 2
    assert sum(f.quantity for f in recorder.fills) == D(1)
    assert recorder.orders[-1].status is OrderStatus.FILLED
    assert recorder.orders[-1].filled_quantity == D(1)
    assert (await venue.positions())["BTC-USD"] == D(1)
    assert await venue.open_orders() == []


# -- rejects ----------------------------------------------------------------------------------------------------
async def test_buy_the_balance_cannot_pay_is_rejected_as_insufficient_funds(
    make_venue: Callable[..., PaperVenue],
) -> None:
    venue = make_venue(starting_balance=D(1000))
    recorder = Recorder()
    await venue.connect(recorder.events())
    order = await venue.submit(market("c1", Side.BUY, "1"))
    assert order.status is OrderStatus.REJECTED
    assert order.reject_reason == "insufficient_funds"
    assert recorder.orders == [order]
    assert recorder.fills == []
    assert (await venue.balances())["USD"] == D(1000)

    # Money set aside for a resting buy is not available to the next one.
    assert (await venue.submit(limit("c3", Side.BUY, "6", "100", symbol="SOL-USD"))).status is OrderStatus.ACKNOWLEDGED
    assert (await venue.submit(limit("c4", Side.BUY, "6", "100", symbol="SOL-USD"))).reject_reason == (
        "insufficient_funds"
    )


async def test_a_spot_venue_sells_only_what_it_holds_and_open_sells_hold_it(
    make_venue: Callable[..., PaperVenue],
) -> None:
    """Without `spot` a sell of nothing goes short (the paper bot's venue); with it, a sell beyond the base asset
    held less what open sells reserve is rejected, and `reserved()` says what open orders hold."""
    loose = make_venue()
    await loose.connect(Recorder().events())
    assert (await loose.submit(market("short", Side.SELL, "1"))).status is OrderStatus.FILLED
    assert (await loose.balances())["BTC"] == D(-1)

    venue = make_venue(starting_balance=D(100_000), spot=True)
    await venue.connect(Recorder().events())
    assert (await venue.submit(market("s0", Side.SELL, "0.001"))).reject_reason == "insufficient_funds"
    assert (await venue.submit(market("b1", Side.BUY, "1"))).status is OrderStatus.FILLED
    resting = await venue.submit(limit("s1", Side.SELL, "0.6", "1000000"))
    assert resting.status is OrderStatus.ACKNOWLEDGED
    assert venue.reserved() == {"BTC": D("0.6")}
    assert (await venue.submit(market("s2", Side.SELL, "0.5"))).reject_reason == "insufficient_funds"
    assert (await venue.submit(market("s3", Side.SELL, "0.4"))).status is OrderStatus.FILLED
    with pytest.raises(ValueError, match="cannot pay"):  # by hand or by a fault, no more than the account holds
        await venue.inject_hidden_fill("BTC-USD", D("-0.1"))
    with pytest.raises(ValueError, match="cannot pay"):
        await venue.place_external_order("BTC-USD", Side.SELL, D("0.1"), D("1000000"))
    assert [o.client_order_id for o in await venue.open_orders()] == ["s1"]
    await venue.cancel("s1")
    assert venue.reserved() == {} and (await venue.balances())["BTC"] == D("0.6")
    assert all(b >= 0 for b in (await venue.balances()).values())


async def test_reduce_only_order_that_would_grow_the_position_is_rejected(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, _ = connected
    flat = await venue.submit(market("r1", Side.SELL, "0.1", reduce_only=True))
    assert (flat.status, flat.reject_reason) == (OrderStatus.REJECTED, "reduce_only")

    await venue.submit(market("open", Side.BUY, "0.3"))
    same_way = await venue.submit(market("r2", Side.BUY, "0.1", reduce_only=True))
    too_much = await venue.submit(market("r3", Side.SELL, "0.4", reduce_only=True))
    assert same_way.reject_reason == too_much.reject_reason == "reduce_only"

    closing = await venue.submit(market("r4", Side.SELL, "0.3", reduce_only=True))
    assert closing.status is OrderStatus.FILLED
    assert (await venue.positions())["BTC-USD"] == D(0)


async def test_resting_reduce_only_order_is_canceled_when_its_position_is_gone(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, recorder = connected
    await venue.submit(market("open", Side.BUY, "0.2"))
    take_profit = OrderRequest("tp", "BTC-USD", Side.SELL, OrderType.LIMIT, D("0.2"), D("70000"), reduce_only=True)
    assert (await venue.submit(take_profit)).status is OrderStatus.ACKNOWLEDGED
    await venue.submit(market("flatten", Side.SELL, "0.2"))
    await venue.gap_price("BTC-USD", 0.1)
    assert recorder.orders[-1].client_order_id == "tp"
    assert recorder.orders[-1].status is OrderStatus.CANCELED
    assert (await venue.positions())["BTC-USD"] == D(0)  # it did not open a short


async def test_random_rejects_use_the_venue_reasons(make_venue: Callable[..., PaperVenue]) -> None:
    venue = make_venue(reject_probability=1.0)
    await venue.connect(BrokerEvents())
    order = await venue.submit(market("c1", Side.BUY, "0.1"))
    assert order.status is OrderStatus.REJECTED
    assert order.reject_reason in RANDOM_REJECT_REASONS
    assert (await venue.positions())["BTC-USD"] == D(0)


async def test_invalid_requests_raise_and_leave_no_order(connected: tuple[PaperVenue, Recorder]) -> None:
    venue, recorder = connected
    cases = [
        market("c1", Side.BUY, "1", symbol="XRP-USD"),
        OrderRequest("c2", "BTC-USD", Side.BUY, OrderType.LIMIT, D("0.1")),
        market("c3", Side.BUY, "0"),
        market("c4", Side.BUY, "0.00001"),
    ]
    messages = []
    for request in cases:
        with pytest.raises(BrokerError) as caught:
            await venue.submit(request)
        assert caught.value.error_class == "other"
        messages.append(str(caught.value))
    assert "unknown symbol XRP-USD" in messages[0]
    assert "price" in messages[1]
    assert recorder.orders == []
    assert await venue.open_orders() == []

    await venue.submit(limit("dup", Side.BUY, "0.1", "60000"))
    with pytest.raises(BrokerError, match="duplicate"):
        await venue.submit(limit("dup", Side.BUY, "0.1", "60000"))


# -- cancel -----------------------------------------------------------------------------------------------------
async def test_cancel_open_unknown_and_closed_orders(connected: tuple[PaperVenue, Recorder]) -> None:
    venue, recorder = connected
    await venue.submit(limit("resting", Side.BUY, "0.1", "60000"))
    canceled = await venue.cancel("resting")
    assert canceled.status is OrderStatus.CANCELED
    assert recorder.orders[-1].status is OrderStatus.CANCELED
    assert await venue.open_orders() == []

    with pytest.raises(BrokerError, match="order already closed") as closed:
        await venue.cancel("resting")
    assert closed.value.error_class == "other"
    with pytest.raises(BrokerError, match="unknown order") as unknown:
        await venue.cancel("never-sent")
    assert unknown.value.error_class == "other"
    await venue.submit(market("filled", Side.BUY, "0.1"))
    with pytest.raises(BrokerError, match="order already closed"):
        await venue.cancel("filled")


# -- connection and market data ---------------------------------------------------------------------------------
async def test_connect_reports_both_channels_and_sends_a_snapshot(make_venue: Callable[..., PaperVenue]) -> None:
    venue = make_venue()
    recorder = Recorder()
    with pytest.raises(BrokerError) as before:
        await venue.submit(market("c1", Side.BUY, "0.1"))
    assert before.value.error_class == "network"
    await venue.connect(recorder.events())
    assert recorder.connections == [(Channel.ORDERS, True), (Channel.MARKET_DATA, True)]
    assert venue.is_connected(Channel.ORDERS) and venue.is_connected(Channel.MARKET_DATA)
    assert [q.symbol for q in recorder.quotes] == ["BTC-USD", "ETH-USD", "SOL-USD"]


async def test_dropped_connection_stops_everything_until_reconnect(connected: tuple[PaperVenue, Recorder]) -> None:
    venue, recorder = connected
    await venue.drop_connection()
    assert recorder.connections == [(Channel.ORDERS, False), (Channel.MARKET_DATA, False)]
    assert not venue.is_connected(Channel.ORDERS)
    assert venue.faults()["connection_dropped"] is True
    with pytest.raises(BrokerError) as caught:
        await venue.submit(market("c1", Side.BUY, "0.1"))
    assert caught.value.error_class == "network"
    with pytest.raises(BrokerError):
        await venue.positions()
    await venue.tick()
    await venue.tick()
    assert recorder.quotes == []
    assert not venue.is_connected(Channel.MARKET_DATA)  # it does not come back on its own

    recorder.clear()
    await venue.reconnect()
    assert recorder.connections == [(Channel.ORDERS, True), (Channel.MARKET_DATA, True)]
    assert venue.faults()["connection_dropped"] is False
    assert (await venue.submit(market("c1", Side.BUY, "0.1"))).status is OrderStatus.FILLED
    recorder.quotes.clear()
    await venue.tick()
    assert len(recorder.quotes) == 3


async def test_fills_while_the_orders_channel_is_down_are_executed_but_not_delivered(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, recorder = connected
    await venue.submit(limit("c1", Side.BUY, "0.1", "62000"))
    await venue.drop_connection()
    await venue.gap_price("BTC-USD", -0.05)
    assert recorder.fills == []
    await venue.reconnect()
    [fill] = await venue.recent_fills()
    assert fill.client_order_id == "c1"
    assert (await venue.positions())["BTC-USD"] == D("0.1")


async def test_connection_lost_while_a_submit_is_in_flight_places_the_order_but_loses_the_answer(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, recorder = connected
    in_flight = asyncio.create_task(venue.submit(market("c1", Side.BUY, "0.1")))
    await asyncio.sleep(0)  # the submit is now waiting out the venue's (zero) latency
    await venue.drop_connection()
    with pytest.raises(BrokerError) as caught:
        await in_flight
    assert caught.value.error_class == "network"
    assert recorder.orders == [] and recorder.fills == []
    await venue.reconnect()
    assert [f.client_order_id for f in await venue.recent_fills()] == ["c1"]
    assert (await venue.positions())["BTC-USD"] == D("0.1")


async def test_stopped_market_data_resumes_after_resubscribe(connected: tuple[PaperVenue, Recorder]) -> None:
    venue, recorder = connected
    await venue.stop_market_data("BTC-USD")
    await venue.tick()
    assert {q.symbol for q in recorder.quotes} == {"ETH-USD", "SOL-USD"}
    assert venue.faults()["stale_symbols"] == ["BTC-USD"]
    assert venue.is_connected(Channel.MARKET_DATA)

    recorder.clear()
    await venue.resubscribe(["BTC-USD"])
    assert [q.symbol for q in recorder.quotes] == ["BTC-USD"]  # the subscription snapshot
    await venue.tick()
    assert {q.symbol for q in recorder.quotes} == {"BTC-USD", "ETH-USD", "SOL-USD"}
    assert venue.faults()["stale_symbols"] == []


async def test_server_time_is_the_venue_clock_with_its_skew(
    connected: tuple[PaperVenue, Recorder], clock: FakeClock
) -> None:
    venue, _ = connected
    assert await venue.server_time() == START
    await venue.set_clock_skew(-2.5)
    assert await venue.server_time() == START - timedelta(seconds=2.5)
    assert venue.faults()["clock_skew_seconds"] == -2.5
    clock.advance(10)
    assert await venue.server_time() == START + timedelta(seconds=7.5)


async def test_clear_faults_restores_connection_market_data_and_clock(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, recorder = connected
    await venue.stop_market_data("ETH-USD")
    await venue.set_clock_skew(30)
    await venue.drop_connection()
    await venue.clear_faults()
    assert venue.is_connected(Channel.ORDERS) and venue.is_connected(Channel.MARKET_DATA)
    assert await venue.server_time() == START
    recorder.quotes.clear()
    await venue.tick()
    assert len(recorder.quotes) == 3
    faults = venue.faults()
    assert faults["connection_dropped"] is False
    assert faults["stale_symbols"] == []
    assert faults["clock_skew_seconds"] == 0.0


# -- account faults ---------------------------------------------------------------------------------------------
async def test_hidden_fill_changes_the_account_without_telling_the_bot(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, recorder = connected
    fill = await venue.inject_hidden_fill("ETH-USD", D("-1.5"), price=D("3100"))
    assert recorder.fills == [] and recorder.orders == []
    assert (fill.side, fill.quantity, fill.price, fill.client_order_id) == (Side.SELL, D("1.5"), D("3100.00"), None)
    assert (await venue.positions())["ETH-USD"] == D("-1.5")
    assert (await venue.balances())["USD"] == D(100000) + D("4650.00") - D("4650.00") * D("0.0005")
    assert await venue.recent_fills() == [fill]
    assert venue.faults()["hidden_fills"] == [fill.trade_id]


async def test_external_order_is_visible_in_open_orders_under_an_unknown_id(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, recorder = connected
    external = await venue.place_external_order("SOL-USD", Side.SELL, D(3), D(200))
    assert external.client_order_id == "manual-1"
    assert [(o.client_order_id, o.symbol, o.quantity) for o in await venue.open_orders()] == [
        ("manual-1", "SOL-USD", D(3))
    ]
    assert recorder.orders == []
    assert venue.faults()["external_open_orders"] == ["manual-1"]

    await venue.gap_price("SOL-USD", 0.5)  # it fills, and nobody is told
    assert recorder.fills == [] and recorder.orders == []
    assert (await venue.positions())["SOL-USD"] == D(-3)
    assert venue.faults()["external_open_orders"] == []


async def test_fill_without_notifying_fills_an_open_order_and_loses_the_events(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, recorder = connected
    await venue.submit(limit("c1", Side.BUY, "0.4", "60000"))
    recorder.clear()
    fill = await venue.fill_without_notifying("c1", D("0.1"))
    assert recorder.fills == [] and recorder.orders == []
    assert (fill.client_order_id, fill.quantity, fill.price, fill.liquidity) == ("c1", D("0.1"), D("60000.00"), "maker")
    [still_open] = await venue.open_orders()
    assert (still_open.status, still_open.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, D("0.1"))
    assert (await venue.positions())["BTC-USD"] == D("0.1")

    await venue.fill_without_notifying("c1")
    assert await venue.open_orders() == []
    assert (await venue.positions())["BTC-USD"] == D("0.4")
    assert [f.client_order_id for f in await venue.recent_fills()] == ["c1", "c1"]
    assert len(venue.faults()["unnotified_fills"]) == 2
    with pytest.raises(ValueError):
        await venue.fill_without_notifying("c1")


# -- rate limit -------------------------------------------------------------------------------------------------
async def test_requests_past_the_rate_limit_are_refused_until_the_bucket_refills(
    connected: tuple[PaperVenue, Recorder], clock: FakeClock
) -> None:
    venue, _ = connected
    assert venue.rate_limit_headroom() == 1.0
    for i in range(20):
        await venue.submit(limit(f"c{i}", Side.BUY, "0.001", "50000"))
    assert venue.rate_limit_headroom() == 0.0
    with pytest.raises(BrokerError) as caught:
        await venue.submit(limit("one-too-many", Side.BUY, "0.001", "50000"))
    assert caught.value.error_class == "rate_limit"
    assert len(await venue.open_orders()) == 20

    clock.advance(0.5)
    assert venue.rate_limit_headroom() == 0.5
    await venue.submit(limit("after-refill", Side.BUY, "0.001", "50000"))
    assert len(await venue.open_orders()) == 21


# -- history ----------------------------------------------------------------------------------------------------
async def test_recent_fills_since_returns_fills_at_or_after_oldest_first(
    connected: tuple[PaperVenue, Recorder], clock: FakeClock
) -> None:
    venue, _ = connected
    await venue.submit(market("c1", Side.BUY, "0.1"))
    clock.advance(60)
    await venue.submit(market("c2", Side.BUY, "0.1"))
    clock.advance(60)
    await venue.submit(market("c3", Side.SELL, "0.2"))
    everything = await venue.recent_fills()
    assert [f.client_order_id for f in everything] == ["c1", "c2", "c3"]
    since = START + timedelta(seconds=60)
    assert [f.client_order_id for f in await venue.recent_fills(since)] == ["c2", "c3"]
    assert await venue.recent_fills(START + timedelta(hours=1)) == []


async def test_every_trade_id_is_unique_across_orders_faults_and_restarts(
    make_venue: Callable[..., PaperVenue], tmp_path: Any
) -> None:
    venue = make_venue(volatility=0.002, partial_fill_probability=0.5, rate_limit_burst=1000)
    await venue.connect(BrokerEvents())
    for i in range(40):
        side = Side.BUY if i % 2 == 0 else Side.SELL
        await venue.submit(market(f"m{i}", side, "0.05", symbol=venue.symbols[i % 3]))
        await venue.tick()
    await venue.inject_hidden_fill("BTC-USD", D("0.01"))
    path = tmp_path / "venue.json"
    venue.save_state(path)
    restarted = make_venue(volatility=0.002, rate_limit_burst=1000)
    restarted.load_state(path)
    await restarted.connect(BrokerEvents())
    await restarted.submit(market("after", Side.BUY, "0.05"))
    ids = [f.trade_id for f in await restarted.recent_fills()]
    assert len(ids) > 42
    assert len(ids) == len(set(ids))


# -- persistence ------------------------------------------------------------------------------------------------
async def test_save_and_load_reproduce_the_same_venue(make_venue: Callable[..., PaperVenue], tmp_path: Any) -> None:
    original = make_venue(volatility=0.002, partial_fill_probability=0.3)
    await original.connect(BrokerEvents())
    await original.submit(market("c1", Side.BUY, "0.5"))
    await original.submit(limit("c2", Side.SELL, "1", "3300", symbol="ETH-USD"))
    await original.submit(market("r1", Side.SELL, "0.1", reduce_only=True))
    await original.inject_hidden_fill("SOL-USD", D(4))
    await original.place_external_order("BTC-USD", Side.BUY, D("0.01"), D(50000))
    await original.set_clock_skew(1.5)
    for _ in range(5):
        await original.tick()
    path = tmp_path / "venue.json"
    original.save_state(path)
    assert not [p for p in tmp_path.iterdir() if p.name != "venue.json"]  # no temp file left behind
    assert json.loads(path.read_text())["version"] == 2

    copy = make_venue(volatility=0.002, partial_fill_probability=0.3)
    saved_at = copy.load_state(path)
    assert saved_at == START + timedelta(seconds=1.5)
    assert copy.state_dict() == original.state_dict()
    await copy.connect(BrokerEvents())
    assert await copy.positions() == await original.positions()
    assert await copy.balances() == await original.balances()
    assert await copy.open_orders() == await original.open_orders()
    assert await copy.recent_fills() == await original.recent_fills()
    # Same random state: the two venues go on identically.
    for _ in range(5):
        assert await copy.tick() == await original.tick()
    assert copy.state_dict() == original.state_dict()


async def test_autosave_keeps_the_file_current_after_each_order(
    make_venue: Callable[..., PaperVenue], tmp_path: Any
) -> None:
    path = tmp_path / "venue.json"
    venue = make_venue(autosave_path=path)
    await venue.connect(BrokerEvents())
    await venue.submit(market("c1", Side.BUY, "0.1"))
    on_disk = make_venue()
    on_disk.load_state(path)
    assert D(on_disk.state_dict()["positions"]["BTC-USD"]) == D("0.1")
    await venue.submit(limit("c2", Side.BUY, "0.1", "60000"))
    on_disk.load_state(path)
    assert [o["client_order_id"] for o in on_disk.state_dict()["orders"] if o["status"] == "acknowledged"] == ["c2"]


async def test_the_autosave_is_written_off_the_event_loop_before_anyone_hears_of_the_change(
    make_venue: Callable[..., PaperVenue], tmp_path: Any
) -> None:
    """While the state file is being written (a slow disk), the event loop keeps running, and the order's events and
    answer wait for the write: a kill -9 at any moment never leaves a bot knowing of an order the file lacks."""
    path = tmp_path / "venue.json"
    venue = make_venue(autosave_path=path)
    recorder = Recorder()
    await venue.connect(recorder.events())
    writing, release = threading.Event(), threading.Event()
    write = venue.persistence.write

    def slow_disk(*args: Any) -> None:
        writing.set()
        assert release.wait(30)
        write(*args)

    venue.persistence.write = slow_disk  # type: ignore[method-assign]
    submit = asyncio.create_task(venue.submit(market("c1", Side.BUY, "0.1")))
    await wait_for(writing.is_set)  # a poll on the event loop: it runs while the write is under way
    await wait_for(lambda: venue.quote("BTC-USD"))  # and goes on running
    assert not submit.done()
    assert recorder.orders == [] and recorder.fills == []  # nobody heard of the order yet
    assert not path.exists()  # and a crash now loses it at the venue too: the bot never knew
    release.set()
    assert (await submit).status is OrderStatus.FILLED
    assert [o.client_order_id for o in recorder.orders] == ["c1", "c1"] and len(recorder.fills) == 1
    on_disk = make_venue()
    on_disk.load_state(path)
    assert D(on_disk.state_dict()["positions"]["BTC-USD"]) == D("0.1")


async def test_a_burst_of_changes_is_written_in_one_or_two_writes(
    make_venue: Callable[..., PaperVenue], tmp_path: Any
) -> None:
    """Changes made while a write is under way go out together in the next one, and the file ends up with all."""
    path = tmp_path / "venue.json"
    venue = make_venue(autosave_path=path, rate_limit_burst=100)
    await venue.connect(BrokerEvents())
    written: list[int] = []
    write = venue.persistence.write

    def counted(target: Any, data: str, generation: int) -> None:
        written.append(generation)
        write(target, data, generation)

    venue.persistence.write = counted  # type: ignore[method-assign]
    await asyncio.gather(*(venue.submit(limit(f"c{i}", Side.BUY, "0.01", "60000")) for i in range(10)))
    assert 1 <= len(written) <= 2, written
    on_disk = make_venue()
    on_disk.load_state(path)
    assert on_disk.state_dict() == {**venue.state_dict(), "saved_at": on_disk.state_dict()["saved_at"]}
    assert len([o for o in on_disk.state_dict()["orders"] if o["status"] == "acknowledged"]) == 10
    assert not [p for p in tmp_path.iterdir() if p.name != "venue.json"]  # no temp file left behind


async def test_history_is_capped_so_the_state_file_stays_small(
    make_venue: Callable[..., PaperVenue], tmp_path: Any
) -> None:
    venue = make_venue()
    await venue.connect(BrokerEvents())
    for _ in range(1100):
        await venue.inject_hidden_fill("SOL-USD", D("0.01"))
    fills = await venue.recent_fills()
    assert len(fills) == 1000
    assert fills[-1].trade_id == "T1100"
    path = tmp_path / "venue.json"
    venue.save_state(path)
    assert path.stat().st_size < 1_000_000


async def test_advance_fills_resting_orders_while_the_bot_was_down(
    make_venue: Callable[..., PaperVenue], clock: FakeClock, tmp_path: Any
) -> None:
    path = tmp_path / "venue.json"
    before_crash = make_venue(volatility=0.003, autosave_path=path)
    recorder = Recorder()
    await before_crash.connect(recorder.events())
    await before_crash.submit(limit("c1", Side.BUY, "0.2", "64800"))
    del before_crash  # kill -9: the process is gone, the file stays

    clock.advance(600)
    restarted = make_venue(volatility=0.003)
    saved_at = restarted.load_state(path)
    fills = restarted.advance((clock() - saved_at).total_seconds())
    assert [f.client_order_id for f in fills] == ["c1"]
    assert START < fills[0].executed_at < START + timedelta(seconds=600)
    assert fills[0].price == D("64800.00") and fills[0].liquidity == "maker"

    await restarted.connect(recorder.events())
    assert [f.trade_id for f in recorder.fills] == []  # nothing was delivered
    assert await restarted.open_orders() == []
    assert (await restarted.positions())["BTC-USD"] == D("0.2")
    assert await restarted.recent_fills(START) == fills


# -- orders without a client order id, lookups, draining --------------------------------------------------------
async def test_orders_placed_without_a_client_id_stay_distinct_and_are_canceled_by_venue_id(
    connected: tuple[PaperVenue, Recorder],
) -> None:
    venue, _ = connected
    first = await venue.place_external_order("BTC-USD", Side.BUY, D("0.01"), D(50000), client_order_id="")
    second = await venue.place_external_order("BTC-USD", Side.BUY, D("0.02"), D(50000), client_order_id="")
    assert first.venue_order_id != second.venue_order_id
    assert sorted(o.quantity for o in await venue.open_orders()) == [D("0.01"), D("0.02")]
    assert first.key == f"venue:{first.venue_order_id}"
    with pytest.raises(BrokerError, match="unknown order"):
        await venue.cancel("")  # no client order id: nothing to find by it
    canceled = await venue.cancel(venue_order_id=first.venue_order_id)
    assert canceled.status is OrderStatus.CANCELED and canceled.quantity == D("0.01")
    assert [o.venue_order_id for o in await venue.open_orders()] == [second.venue_order_id]


async def test_order_status_reports_open_and_closed_orders_by_either_id(connected: tuple[PaperVenue, Recorder]) -> None:
    venue, _ = connected
    filled = await venue.submit(market("m1", Side.BUY, "0.1"))
    resting = await venue.submit(limit("l1", Side.BUY, "0.1", "60000"))
    assert (await venue.order_status("m1")).status is OrderStatus.FILLED  # type: ignore[union-attr]
    by_id = await venue.order_status(venue_order_id=resting.venue_order_id)
    assert by_id is not None and (by_id.client_order_id, by_id.status) == ("l1", OrderStatus.ACKNOWLEDGED)
    assert filled.status is OrderStatus.FILLED
    assert await venue.order_status("never-sent") is None
    await venue.cancel_without_notifying("l1")
    assert (await venue.order_status("l1")).status is OrderStatus.CANCELED  # type: ignore[union-attr]
    await venue.drop_connection()
    with pytest.raises(BrokerError):
        await venue.order_status("l1")


async def test_drain_events_waits_for_a_delivery_in_progress(make_venue: Callable[..., PaperVenue]) -> None:
    """A tick changes the venue at once and then awaits the bot's callbacks one by one: drain_events returns only
    after the last of them."""
    venue = make_venue()
    release = asyncio.Event()
    delivered: list[str] = []

    async def slow_fill(fill: VenueFill) -> None:
        await release.wait()  # the bot is busy writing its journal
        delivered.append(fill.trade_id)

    await venue.connect(BrokerEvents(on_fill=slow_fill))
    await venue.submit(limit("c1", Side.BUY, "0.1", "64990"))
    await venue.submit(limit("c2", Side.BUY, "0.1", "64990"))
    tick = asyncio.create_task(venue.gap_price("BTC-USD", -0.01))  # both fill at once
    await wait_until(lambda: venue.connection.busy)
    assert len(await venue.recent_fills()) == 2 and delivered == []
    drained = asyncio.create_task(venue.drain_events())
    await asyncio.sleep(0)
    assert not drained.done()
    release.set()
    await drained
    assert len(delivered) == 2
    await tick


async def wait_until(predicate: Callable[[], Any]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0)


async def test_a_balance_withdrawn_to_zero_is_no_longer_listed(connected: tuple[PaperVenue, Recorder]) -> None:
    venue, _ = connected
    assert await venue.transfer("DOGE", D(5)) == D(5)
    assert (await venue.balances())["DOGE"] == D(5)
    assert await venue.transfer("DOGE", D(-5)) == 0
    assert "DOGE" not in await venue.balances()
    with pytest.raises(ValueError, match="cannot withdraw"):
        await venue.transfer("USD", D(-(10**9)))


async def test_a_version_1_state_file_still_loads(make_venue: Callable[..., PaperVenue], tmp_path: Any) -> None:
    """Before version 2, reduce-only and silent orders were saved by client order id."""
    original = make_venue()
    await original.connect(BrokerEvents())
    await original.submit(market("b1", Side.BUY, "0.5"))
    await original.submit(limit("r1", Side.SELL, "0.1", "70000"))
    original.book.reduce_only.add(original.book.by_client["r1"])
    external = await original.place_external_order("BTC-USD", Side.BUY, D("0.01"), D(50000))
    state = original.state_dict()
    by_venue_id = {o["venue_order_id"]: o["client_order_id"] for o in state["orders"]}
    state.update(
        version=1,
        reduce_only=[by_venue_id[v] for v in state["reduce_only"]],
        silent_orders=[by_venue_id[v] for v in state["silent_orders"]],
    )
    path = tmp_path / "venue.json"
    path.write_text(json.dumps(state))
    copy = make_venue()
    copy.load_state(path)
    assert copy.state_dict() == original.state_dict()
    assert copy.faults()["external_open_orders"] == [external.client_order_id]


async def test_failing_account_queries_leave_orders_and_fills_answering() -> None:
    """fail_queries: the positions (or balances) query fails as unavailable while the rest of the venue answers; it is
    listed among the faults, and clear_faults ends it."""
    venue = PaperVenue(["BTC-USD"], seed=3)
    await venue.connect(BrokerEvents())
    await venue.fail_queries(["positions"], 60)
    with pytest.raises(BrokerError) as raised:
        await venue.positions()
    assert raised.value.error_class == "unavailable" and not raised.value.outcome_unknown
    assert await venue.balances() and await venue.open_orders() == [] and await venue.recent_fills() == []
    assert venue.faults()["failing_queries"] == ["positions"]
    with pytest.raises(ValueError):
        await venue.fail_queries(["orders"], 60)
    await venue.clear_faults()
    assert venue.faults()["failing_queries"] == [] and "BTC-USD" in await venue.positions()


async def test_the_dead_man_switch_cancels_every_open_order_at_its_trigger_and_then_stays_disarmed(
    connected: tuple[PaperVenue, Recorder], clock: FakeClock
) -> None:
    """Kraken's CancelAllOrdersAfter on the paper venue: armed for 60 s, pushed back, then left to run out; at the
    first tick past the trigger every open order is canceled (each told through on_order, closed at that time), and it
    stays disarmed. 0 disarms; a timeout Kraken refuses raises, arming nothing."""
    venue, recorder = connected
    assert venue.has_dead_man_switch()
    now, trigger = await venue.cancel_all_orders_after(60)
    assert (now, trigger) == (START, START + timedelta(seconds=60))
    assert (await venue.cancel_all_orders_after(0))[1] is None and venue.dead_man_switch_trigger() is None
    for bad in (-1, 86_400, 1.5, True):
        with pytest.raises(BrokerError):
            await venue.cancel_all_orders_after(bad)  # type: ignore[arg-type]
    assert venue.dead_man_switch_trigger() is None

    await venue.submit(limit("bid-1", Side.BUY, "0.1", "1000"))
    await venue.submit(limit("bid-2", Side.BUY, "0.1", "1001", symbol="ETH-USD"))
    await venue.cancel_all_orders_after(60)
    clock.advance(50)
    await venue.cancel_all_orders_after(60)  # pushed back: now due at START + 110 s
    clock.advance(50)
    await venue.tick()
    assert len(await venue.open_orders()) == 2
    recorder.clear()
    clock.advance(11)
    await venue.tick()
    assert await venue.open_orders() == []
    told = {o.client_order_id: o for o in recorder.orders if o.status is OrderStatus.CANCELED}
    assert set(told) == {"bid-1", "bid-2"}
    assert all(o.closed_at == START + timedelta(seconds=111) for o in told.values())
    assert venue.dead_man_switch_trigger() is None  # fired: disarmed until armed again
