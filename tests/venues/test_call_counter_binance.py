"""Binance's limits in the ccxt broker (trading_ops.venues.call_counter.WeightBudget): the weight and order counts
are read from the gateway's `X-MBX-USED-WEIGHT-1M` / `X-MBX-ORDER-COUNT-*` headers and are the bot's rate-limit
headroom; past the weight limit (the gateway's `binance_weight_exhausted`: 429, then 418 for a client that keeps
calling) every call stops until the answer's Retry-After, so the bot itself never earns the ban; a ban another
client of the IP earned (418) stops every call too and is exported (`tradingbot_venue_ban_seconds`, which pages).
Real parts: the gateway's Binance dialect on a free loopback port, ccxt's stock binance client. One clock of the test's
is the budget's (both of its clocks) and the gateway's weight minute, so no test waits out a Retry-After or straddles
a real minute's end (a fault injected at :59.97 left the other client's calls answered in a fresh minute). The
broker's own polls are an hour apart: a test that needs a poll runs it, so no poll races a test's call for the venue's
answer (the order and quote polls, due together a second after the connect, each took the ban's 418 on a loaded
machine while the test's client closed: two 418s, the test's call then held unsent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import ccxt.async_support as ccxt_async
import pytest
from binance_helpers import binance, binance_gateway
from ccxt_helpers import chaos
from polling import until_async
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerError, BrokerEvents, OrderRequest, OrderType, Side
from trading_ops.paper.gateway.binance.dialect import BinanceDialect
from trading_ops.venues.call_counter import WEIGHT_POLL_FLOOR, WeightBudget
from trading_ops.venues.ccxt.rest import CcxtBroker

LOOPBACK = "127.0.0.1"
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def setup() -> AsyncIterator[tuple[BinanceDialect, str, CcxtBroker, WeightBudget, Clock]]:
    clock = Clock()
    budget = WeightBudget(clock=clock, wall=clock)
    async with binance_gateway() as (_gateway, dialect, base):
        dialect.weights.clock = clock
        broker = CcxtBroker(
            binance(base), ["BTC-USD", "ETH-USD"], poll_interval=HOUR, quote_interval=HOUR, weight_budget=budget
        )
        try:
            await broker.connect(BrokerEvents())
            yield dialect, base, broker, budget, clock
        finally:
            await broker.close()


async def test_the_headers_weight_and_order_counts_are_the_bots_headroom(
    setup: tuple[BinanceDialect, str, CcxtBroker, WeightBudget, Clock],
) -> None:
    dialect, _base, broker, budget, _clock = setup
    await broker.balances()
    used = dialect.rest.weights.used(LOOPBACK)
    assert used > 20 and budget.used() == used  # the connect's calls and the account's 20
    order = OrderRequest(
        client_order_id="wb-1", symbol="BTC-USD", side=Side.BUY, order_type=OrderType.MARKET, quantity=Decimal("0.01")
    )
    await broker.submit(order)
    assert budget.used("x-mbx-order-count-10s") == 1 and budget.used("x-mbx-order-count-1d") == 1
    headroom = broker.rate_limit_headroom()
    assert headroom is not None
    assert headroom == pytest.approx(min(1 - budget.used() / 6000, 1 - 1 / 100))


async def test_a_429_stops_every_call_until_its_retry_after_so_the_bot_never_earns_the_ban(
    setup: tuple[BinanceDialect, str, CcxtBroker, WeightBudget, Clock],
) -> None:
    dialect, base, broker, budget, clock = setup
    await chaos(base, "binance_weight_exhausted")
    with pytest.raises(BrokerError) as first:
        await broker.balances()
    assert first.value.error_class == "rate_limit" and budget.refusals == 1
    stop = budget.stop_seconds()
    assert 0 < stop <= 60 and broker.rate_limit_headroom() == 0.0
    for _ in range(dialect.rest.weights.refusals_before_ban + 5):  # what would earn a 418 were they sent
        with pytest.raises(BrokerError, match="past the limit") as held:
            await broker.server_time()
        assert held.value.error_class == "rate_limit"
    assert dialect.rest.weights.refusals == 1 and dialect.rest.weights.bans == 0  # none of them sent
    assert budget.held == dialect.rest.weights.refusals_before_ban + 5 and budget.ban_seconds() == 0
    await chaos(base, "clear")
    clock.now += stop  # the Retry-After passed
    assert (await broker.balances()) and budget.stop_seconds() == 0


async def test_a_1015_stops_new_orders_alone_and_the_cancels_lookups_and_markets_go_on(
    setup: tuple[BinanceDialect, str, CcxtBroker, WeightBudget, Clock],
) -> None:
    """The order counts are the account's, not the IP's weight: past them (-1015, a 429) only new orders wait for the
    window's end. A resting order is still canceled, the open orders looked up, the markets loaded again (a
    resubscribe's and a reconnect's calls), where a stop of every call had made a bot's remedy fail with 503."""
    dialect, _base, broker, budget, clock = setup
    dialect.rest.weights.orders_10s = 2
    price = Decimal("1000.00")

    def bid(n: int) -> OrderRequest:
        return OrderRequest(
            client_order_id=f"oc-{n}",
            symbol="BTC-USD",
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            quantity=Decimal("0.01"),
            price=price,
        )

    first = await broker.submit(bid(1))
    await broker.submit(bid(2))
    with pytest.raises(BrokerError, match="Too many new orders") as refused:
        await broker.submit(bid(3))
    assert refused.value.error_class == "rate_limit" and budget.refusals == 1
    assert budget.stop_seconds() == 0  # nothing else stopped
    sent = dict(dialect.rest.calls)
    with pytest.raises(BrokerError, match="order count past its limit") as held:
        await broker.submit(bid(4))
    assert held.value.error_class == "rate_limit" and dialect.rest.calls == sent  # held, never sent
    assert len(await broker.open_orders()) == 2
    canceled = await broker.cancel(first.client_order_id)
    assert canceled.status.value == "canceled"
    await broker.resubscribe()  # the markets loaded again and the quotes asked
    assert await broker.balances()
    dialect.rest.weights.orders_10s = 100
    clock.now += 11  # the order count's window passed
    assert (await broker.submit(bid(5))).client_order_id == "oc-5"


async def test_a_418_ban_stops_every_call_until_its_retry_after_and_is_exported(
    setup: tuple[BinanceDialect, str, CcxtBroker, WeightBudget, Clock],
) -> None:
    dialect, base, broker, budget, clock = setup
    registry = CollectorRegistry()
    broker.register_metrics(registry)
    assert registry.get_sample_value("tradingbot_venue_ban_seconds", {"venue": "binance"}) == 0
    # Another client on the bot's IP keeps calling after its 429s: the IP is banned.
    await chaos(base, "binance_weight_exhausted")
    other = binance(base)
    try:
        for _ in range(dialect.rest.weights.refusals_before_ban + 1):
            with pytest.raises(ccxt_async.DDoSProtection):
                await other.fetch_time()
    finally:
        await other.close()
    assert dialect.rest.weights.bans == 1
    with pytest.raises(BrokerError) as banned:
        await broker.open_orders()
    assert banned.value.error_class == "rate_limit" and budget.bans == 1
    ban = budget.ban_seconds()
    assert 60 < ban <= 120
    assert registry.get_sample_value("tradingbot_venue_ban_seconds", {"venue": "binance"}) == ban
    assert registry.get_sample_value("tradingbot_venue_rate_limit_refusals", {"venue": "binance", "status": "418"}) == 1
    sent = dialect.rest.calls.copy()
    with pytest.raises(BrokerError, match="banned"):
        await broker.balances()
    await broker._background_poll()  # the order poll sends nothing either, nor the quote poll
    await broker._background_quotes()
    assert dialect.rest.calls == sent
    await chaos(base, "clear")
    clock.now += ban
    assert budget.ban_seconds() == 0
    assert registry.get_sample_value("tradingbot_venue_ban_seconds", {"venue": "binance"}) == 0
    assert await broker.open_orders() == []


async def test_the_polls_keep_a_share_of_the_weight_for_cancels_and_submits() -> None:
    """A bot polling far faster than its weight allows (every 20 ms, a budget of 400 a minute): its polls stop once
    less than WEIGHT_POLL_FLOOR of the room is left, the venue never answers 429, and an order still goes out and is
    canceled with the room kept."""
    budget = WeightBudget(weight_limit=400)
    async with binance_gateway() as (gateway, dialect, base):
        broker = CcxtBroker(binance(base), ["BTC-USD", "ETH-USD"], poll_interval=0.02, weight_budget=budget)
        try:
            await broker.connect(BrokerEvents())

            async def skipping() -> bool:
                return budget.polls_skipped >= 20

            await until_async("the polls skip their cycles", skipping, deadline=30)
            used = dialect.rest.weights.used(LOOPBACK)
            assert used <= 400 * (1 - WEIGHT_POLL_FLOOR) + 2 * 80  # at most a cycle past the floor (a new minute: less)
            price = (gateway.venue.quote("BTC-USD").bid * Decimal("0.9")).quantize(Decimal("0.01"))
            order = OrderRequest(
                client_order_id="wb-kept",
                symbol="BTC-USD",
                side=Side.BUY,
                order_type=OrderType.LIMIT,
                quantity=Decimal("0.01"),
                price=price,
            )
            placed = await broker.submit(order)
            canceled = await broker.cancel("wb-kept", venue_order_id=placed.venue_order_id)
            assert canceled.status.value == "canceled"
            assert dialect.rest.weights.refusals == 0 and budget.refusals == 0
        finally:
            await broker.close()


async def test_a_quote_poll_of_several_symbols_costs_ccxts_throttle_their_weight_not_every_symbols() -> None:
    """ccxt's throttle (enableRateLimit, a configuration's default) costs a ticker/24hr asking for `symbols` as one
    for every symbol (weight 80: 0.8 s of its 50 ms tokens), so a quote poll every second queued every other call of
    the bot behind it, its fills handed over seconds late (benchmarks/venues/bench_binance_bot.py). With the weight
    budget it costs what Binance weighs it, and the gateway charges: two symbols weigh one symbol's 2."""
    clock = Clock()
    async with binance_gateway() as (_gateway, dialect, base):
        dialect.weights.clock = clock  # one minute of weight throughout
        exchange = binance(base, enableRateLimit=True)
        costs: list[float | None] = []
        throttle = exchange.throttle

        async def recording(cost: float | None = None) -> None:
            costs.append(cost)
            await throttle(cost)

        exchange.throttle = recording
        broker = CcxtBroker(
            exchange, ["BTC-USD", "ETH-USD"], poll_interval=HOUR, quote_interval=HOUR, weight_budget=WeightBudget()
        )
        try:
            await broker.connect(BrokerEvents())
            costs.clear()
            used = dialect.rest.weights.used(LOOPBACK)
            await broker._background_quotes()
            assert dialect.rest.weights.used(LOOPBACK) - used == 2
            assert costs == [pytest.approx(0.4)]  # ccxt's units: 0.2 a weight (its myTrades, weight 20, costs 4)
        finally:
            await broker.close()
