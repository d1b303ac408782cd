"""Kraken's REST call counter (trading_ops.venues.call_counter): its costs and decay, the gateway refusing past the
maximum with Kraken's own string, and CcxtBroker on ccxt's real kraken client budgeting every private call against
it on a gateway that enforces it (started per test on a free loopback port): a headroom that moves with real
spending, falls under the alert's 0.2 when the bot overspends, is never overrun, and is saturated by the venue's
refusal when the estimate was wrong."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import ccxt.async_support as ccxt
import pytest
from broker_recorder import Recorder
from ccxt_helpers import (
    OTHER_KEY,
    OTHER_SECRET,
    SYMBOLS,
    chaos,
    kraken,
    limit,
    market,
    running_gateway,
    wait_for,
)
from paper_helpers import TOKEN, IdleStrategy, fast_config
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerError, Channel, OrderStatus, OrderType, Side
from trading_ops.bot.runtime import BotRuntime
from trading_ops.config import ConfigError, parse_config
from trading_ops.venues.call_counter import (
    RECONCILIATION_POINTS,
    TIERS,
    BudgetExhausted,
    CallBudget,
    CallCounter,
    CounterLimiter,
    Deferred,
    background,
    call_cost,
    protective,
)
from trading_ops.venues.ccxt.factory import broker_from_config
from trading_ops.venues.ccxt.rest import FILL_OVERLAP_SECONDS, CcxtBroker

HEADROOM_ALERT = 0.2  # TradingBotRateLimitHeadroomLow
RUNS = "tradingbot_reconciliation_runs_total"
LOOPS = "tradingbot_loop_iterations_total"
QUIET_CLOCK = {"tick_interval_seconds": 3600, "partial_fill_probability": 0.0}


class Clock:
    """A clock that moves only when told (the counter's decay without waiting for it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_costs_are_krakens_and_the_counter_decays_at_the_tiers_rate() -> None:
    assert [call_cost(m) for m in ("Balance", "OpenOrders", "QueryOrders", "ClosedOrders")] == [1, 1, 1, 1]
    assert call_cost("CancelAllOrdersAfter") == 1  # the dead man's switch: not an order placement or cancel
    assert [call_cost(m) for m in ("TradesHistory", "Ledgers")] == [2, 2]
    assert [call_cost(m) for m in ("AddOrder", "CancelOrder", "CancelAll")] == [0, 0, 0]
    assert {name: (t.maximum, t.decay) for name, t in TIERS.items()} == {
        "starter": (15, 0.33),
        "intermediate": (20, 0.5),
        "pro": (20, 1.0),
    }
    clock = Clock()
    counter = CallCounter(TIERS["intermediate"], clock)
    counter.add(10)
    clock.now += 4
    assert counter.level() == pytest.approx(8)
    assert counter.seconds_until(3, 10) == pytest.approx(2)
    clock.now += 100
    assert counter.level() == 0


def test_a_reconciliation_waits_for_its_room_and_the_polls_leave_the_counter_to_it_meanwhile() -> None:
    """Pro: hard ceiling 18, less the protective reserve (3) 15 for a reconciliation; its RECONCILIATION_POINTS (12)
    fit once the estimate is down to 3, and on Starter (ceiling 10 for it) it waits for an empty counter at most; while
    one holds a reservation, no poll cycle is affordable however empty the counter."""
    clock = Clock()
    budget = CallBudget("pro", clock=clock)
    assert RECONCILIATION_POINTS == 12 and budget.seconds_until_room(RECONCILIATION_POINTS) == 0
    budget.counter.add(13)
    assert budget.seconds_until_room(RECONCILIATION_POINTS) == pytest.approx(10)
    clock.now += 10
    assert budget.seconds_until_room(RECONCILIATION_POINTS) == 0
    starter = CallBudget("starter", clock=clock)
    starter.counter.add(3.3)
    assert starter.seconds_until_room(100) == pytest.approx(10)
    clock.now += 100
    assert budget.affordable(1)
    budget.reserved += 1
    assert not budget.affordable(1)
    budget.reserved -= 1
    assert budget.affordable(1)


def test_ordinary_calls_leave_the_protective_reserve_to_the_switch_and_the_cancels() -> None:
    """Starter: ordinary calls (a reconciliation's, a poll's) stop 3 points under the hard ceiling (13); the switch's
    refresh (CancelAllOrdersAfter, wherever it is sent) and a cancel's lookups (inside `protective()`) take those 3."""
    clock = Clock()
    budget = CallBudget("starter", clock=clock)
    assert (budget.hard_ceiling, budget.ceiling) == (13, 10)
    for _ in range(10):
        budget.spend("OpenOrders")
    with pytest.raises(BudgetExhausted):
        budget.spend("OpenOrders")  # an ordinary call: no room left for it
    with background(), pytest.raises(Deferred):
        budget.spend("OpenOrders")
    budget.spend("CancelAllOrdersAfter")  # the switch's refresh: the reserve
    with protective():
        budget.spend("OpenOrders")  # a cancel's lookups: the reserve
        budget.spend("ClosedOrders")
        with pytest.raises(BudgetExhausted):
            budget.spend("OpenOrders")  # the reserve spent too: the hard ceiling holds for everyone
    assert budget.protective_spent == 3 and budget.protective_exhausted == 1
    clock.now += 3 / TIERS["starter"].decay  # back under the ordinary ceiling by the decay alone
    assert budget.counter.level() == pytest.approx(10)


async def test_the_gateway_refuses_past_the_tiers_maximum_with_krakens_error() -> None:
    """Starter: 15 points. Balance costs 1, TradesHistory 2, AddOrder nothing; the 16th point is refused with
    `EAPI:Rate limit exceeded` (ccxt's DDoSProtection), and the counter's decay lets calls through again."""
    clock = Clock()
    async with running_gateway() as (gateway, base):
        gateway.call_counter = CounterLimiter("starter", clock)
        client, other = kraken(base), kraken(base, key=OTHER_KEY, secret=OTHER_SECRET)
        try:
            await client.load_markets()
            await client.fetch_my_trades()  # 2
            for _ in range(13):
                await client.fetch_balance()  # 15
            placed = await client.create_order("BTC/USD", "limit", "buy", 0.01, 1000)  # free
            await client.cancel_order(placed["id"])  # free
            with pytest.raises(ccxt.DDoSProtection, match="EAPI:Rate limit exceeded"):
                await client.fetch_open_orders()
            assert gateway.call_counter.refused == 1
            await other.fetch_balance()  # each key has its own counter
            clock.now += 3.1  # 0.33/s: one point decayed
            await client.fetch_open_orders()
            with pytest.raises(ccxt.DDoSProtection, match="EAPI:Rate limit exceeded"):
                await client.fetch_balance()
            assert gateway.call_counter.refused == 2
        finally:
            await client.close()
            await other.close()


async def test_the_brokers_headroom_moves_with_spending_and_the_venue_never_refuses_it() -> None:
    """The bot's estimate against the gateway's counter, both Kraken's Pro tier: at rest the polls leave most of the
    counter free; a burst of private calls (a reconciliation storm) takes the headroom down to the ceiling of ordinary
    calls and no further (the calls past it are refused by the bot itself, unsent), protective calls take it under the
    alert's threshold but never past the maximum; the venue refuses nothing."""
    async with running_gateway(partial_fill_probability=0.0) as (gateway, base):
        gateway.call_counter = CounterLimiter("pro")
        budget = CallBudget("pro")
        broker = CcxtBroker(kraken(base), SYMBOLS, poll_interval=0.05, quote_interval=0.05, call_budget=budget)
        seen = Recorder()
        try:
            assert broker.rate_limit_headroom() == 1.0
            await broker.connect(seen.events())
            assert broker.orders_interval == 2.0  # Pro decays 1 point/s; open orders (1) take half of it
            assert budget.spent >= 1 and broker.rate_limit_headroom() < 1.0
            # Polls find nothing changed: open orders each cycle, the trade history only every trades_interval.
            asked = dict(gateway.calls)
            await wait_for(lambda: gateway.calls.get("OpenOrders", 0) >= asked.get("OpenOrders", 0) + 3)
            assert gateway.calls.get("TradesHistory", 0) - asked.get("TradesHistory", 0) <= 1
            assert broker.rate_limit_headroom() > 0.5
            # A market order fills at once and never shows as open: the submit asks the next poll for the trades.
            bought = await broker.submit(market("m-1"))
            await wait_for(lambda: any(f.venue_order_id == bought.venue_order_id for f in seen.fills))
            # A resting order canceled: its final state comes from the cancel's lookup.
            resting = await broker.submit(limit("l-1"))
            assert (await broker.cancel("l-1")).status is OrderStatus.CANCELED
            assert resting.venue_order_id not in {o.venue_order_id for o in await broker.open_orders()}

            lowest, refused = 1.0, 0
            for _ in range(22):  # 22 points asked for at once: more than the whole counter
                try:
                    await broker.open_orders()
                except BrokerError as exc:  # never sent: the budget has no room
                    assert exc.error_class == "rate_limit" and "call budget" in str(exc), exc
                    refused += 1
                lowest = min(lowest, broker.rate_limit_headroom() or 0.0)
            # Ordinary calls stop at their ceiling, the protective reserve (3 points) left above it ...
            assert lowest == pytest.approx(1 - budget.ceiling / TIERS["pro"].maximum, abs=0.05)
            assert refused >= 1 and budget.exhausted == refused
            # ... which protective calls spend: then the headroom is under the alert's threshold.
            async with broker.protective():
                for _ in range(3):
                    with contextlib.suppress(BrokerError):  # the decay meanwhile may leave one more to refuse
                        await broker.open_orders()
                    lowest = min(lowest, broker.rate_limit_headroom() or 0.0)
            assert lowest < HEADROOM_ALERT
            assert gateway.call_counter.refused == 0
            assert gateway.call_counter.level(broker.exchange.apiKey) <= TIERS["pro"].maximum
            await wait_for(lambda: (broker.rate_limit_headroom() or 0) > 0.5, timeout=30)
            assert gateway.call_counter.refused == 0 and broker.is_connected(Channel.ORDERS)
        finally:
            await broker.close()


async def test_a_wrong_estimate_is_refused_by_the_venue_and_then_believed() -> None:
    """A bot that takes its account for Pro on a venue that counts it as Starter overruns the counter: the venue
    refuses with EAPI:Rate limit exceeded, the broker raises it as `rate_limit`, and its estimate is saturated (no
    headroom) so that what follows waits for the decay."""
    clock = Clock()
    async with running_gateway() as (gateway, base):
        gateway.call_counter = CounterLimiter("starter", clock)
        # Without the protective reserve, ordinary calls go up to Pro's hard ceiling (18), past Starter's maximum (15).
        budget = CallBudget("pro", reserve=0.0)
        broker = CcxtBroker(kraken(base), SYMBOLS, poll_interval=3600, quote_interval=3600, call_budget=budget)
        try:
            await broker.connect(Recorder().events())
            with pytest.raises(BrokerError) as info:
                for _ in range(16):
                    await broker.open_orders()
            assert info.value.error_class == "rate_limit" and "EAPI:Rate limit exceeded" in str(info.value)
            assert (broker.rate_limit_headroom() or 0.0) < 0.01
        finally:
            await broker.close()


async def test_calls_an_outage_left_unanswered_are_counted_back_out() -> None:
    """During an outage every request is closed unanswered: the venue counted none of them, and neither does the
    estimate, so the bot does not come back to a counter it believes full."""
    clock = Clock()
    async with running_gateway() as (_gateway, base):
        budget = CallBudget("pro", clock=clock)
        broker = CcxtBroker(kraken(base), SYMBOLS, poll_interval=3600, quote_interval=3600, call_budget=budget)
        try:
            await broker.connect(Recorder().events())
            level = budget.counter.level()
            await chaos(base, "outage", seconds=60)
            for _ in range(25):
                with pytest.raises(BrokerError) as info:
                    await broker.balances()
                assert info.value.error_class == "network"
            assert budget.counter.level() == level and budget.exhausted == 0
            await chaos(base, "clear")
            await broker.balances()
            assert budget.counter.level() == level + 1
        finally:
            await broker.close()


async def test_a_background_poll_never_waits_and_leaves_the_reserve_to_the_rest() -> None:
    """Past the poll ceiling (half the counter) the order poll skips its cycles; past the hard ceiling a background
    call raises Deferred rather than wait (holding the poll lock a reconciliation needs) and a fill's balance comes
    from the last answer; a cancel still goes through (it costs nothing), and after the decay the polls run again."""
    clock = Clock()
    async with running_gateway(partial_fill_probability=0.0) as (gateway, base):
        budget = CallBudget("pro", clock=clock)
        broker = CcxtBroker(kraken(base), SYMBOLS, poll_interval=0.05, quote_interval=0.05, call_budget=budget)
        try:
            await broker.connect(Recorder().events())
            before = await broker.balances()
            budget.counter.add(budget.poll_ceiling)  # a reconciliation just spent half the counter
            private = ("OpenOrders", "TradesHistory", "QueryOrders", "ClosedOrders", "Balance", "BalanceEx")

            def sent() -> dict[str, int]:
                return {m: n for m, n in gateway.calls.items() if m in private}

            asked = sent()
            clock.now += 0.5  # less than a point decayed: still no room for a poll
            time_asked = gateway.calls.get("Time", 0)
            await broker._background_poll()  # skipped: no room for a cycle under the poll ceiling
            assert sent() == asked and gateway.calls["Time"] > time_asked  # only the free clock, to notice an outage
            budget.counter.add(budget.hard_ceiling)  # ... and none at all
            with background():
                with pytest.raises(Deferred):
                    await broker.open_orders()
                assert await broker.balances() == before  # the last answer
            assert sent() == asked  # nothing was sent
            assert budget.deferred >= 1
            resting = await broker.submit(limit("l-1"))  # placing costs nothing on this counter
            clock.now += 100  # decayed: the polls run again
            await broker._background_poll()
            assert gateway.calls.get("OpenOrders", 0) > asked.get("OpenOrders", 0)
            assert (await broker.cancel(venue_order_id=resting.venue_order_id)).status is OrderStatus.CANCELED
        finally:
            await broker.close()


def test_the_tier_is_configured_and_a_broker_on_kraken_budgets_against_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_KEY", "k")
    monkeypatch.setenv("X_SECRET", "c2VjcmV0")
    config = parse_config(
        {
            "ccxt": {"api_key_env": "X_KEY", "api_secret_env": "X_SECRET", "kraken_tier": "intermediate"},
            "gateway": {"call_counter": "pro"},
        }
    )
    assert config.gateway.call_counter == "pro"
    broker = broker_from_config(config)
    assert broker.call_budget is not None and broker.call_budget.tier is TIERS["intermediate"]
    assert broker.orders_interval == 4.0  # 1 point at half of 0.5/s
    assert parse_config({}).gateway.call_counter == "off" and parse_config({}).ccxt.kraken_tier == "starter"
    with pytest.raises(ConfigError, match="ccxt.kraken_tier"):
        parse_config({"ccxt": {"kraken_tier": "gold"}})


async def test_a_reconciliations_trade_history_pages_once_then_only_whats_new() -> None:
    """Kraken pages trade history 50 at a time, 2 points a page: the whole window (a reconciliation's day) is paged
    once, then only what is newer than the newest trade known is asked for, so a second look costs one page."""
    async with running_gateway(partial_fill_probability=0.0, tick_interval=0.05) as (gateway, base):
        budget = CallBudget("pro")
        broker = CcxtBroker(kraken(base), SYMBOLS, poll_interval=3600, quote_interval=3600, call_budget=budget)
        try:
            await broker.connect(Recorder().events())
            for i in range(30):
                await broker.submit(market(f"m-{i}", "ETH-USD", quantity="0.1"))
                await broker.submit(market(f"s-{i}", "ETH-USD", Side.SELL, quantity="0.1"))
            # The newest trade stamped past the overlap the look-back allows for late stamps (Kraken's `start` is in
            # whole seconds): a look-back from it does not reach the sixty.
            await asyncio.sleep(FILL_OVERLAP_SECONDS + 2.5)
            await broker.submit(market("m-mid", "ETH-USD", quantity="0.1"))
            day = datetime.now(UTC) - timedelta(days=1)
            asked = gateway.calls.get("TradesHistory", 0)
            first = await broker.recent_fills(day)
            assert len(first) == 61 and gateway.calls["TradesHistory"] - asked == 2  # two pages
            await broker.submit(market("m-last", "ETH-USD", quantity="0.1"))
            second = await broker.recent_fills(day + timedelta(seconds=1))
            assert gateway.calls["TradesHistory"] - asked == 3  # one page: what is new
            assert [f.trade_id for f in second] == [f.trade_id for f in first] + [second[-1].trade_id]
            assert second[-1].client_order_id == "m-last"
        finally:
            await broker.close()


def _runs(bot: BotRuntime, trigger: str) -> dict[str, float]:
    """Reconciliation runs of `trigger` so far, by result."""
    registry = bot.inst.registry
    results = ("clean", "resolved", "failed", "halted", "unknown")
    labels = {"venue": bot.config.bot.venue, "trigger": trigger}
    return {r: registry.get_sample_value(RUNS, {**labels, "result": r}) or 0.0 for r in results}


async def test_a_busy_reject_then_the_reconciliation_it_triggers_never_fail_for_want_of_the_bots_own_budget(
    tmp_path: Path,
) -> None:
    """The demo stack's burst, on the real gateway with Kraken's Pro counter enforced: the counter part spent by
    recent activity, a submit rejected `EService:Busy` (the orders channel goes down, the lost submit is looked up:
    4 points, and found never placed; the channel is back up) and the reconnect reconciliation that follows at once.
    It reserves the budget and waits for the room it needs (the trading loop runs meanwhile) instead of starting
    into a counter it would overrun: it passes, the bot refuses none of its own calls, the venue refuses none."""
    config = fast_config(tmp_path, **QUIET_CLOCK)
    config.bot.market_data_stale_seconds = 3600.0
    async with running_gateway(partial_fill_probability=0.0) as (gateway, base):
        gateway.call_counter = CounterLimiter("pro")
        budget = CallBudget("pro")
        broker = CcxtBroker(kraken(base), SYMBOLS, poll_interval=0.05, quote_interval=0.05, call_budget=budget)
        bot = BotRuntime(config, broker, IdleStrategy(), symbols=SYMBOLS, token=TOKEN, registry=CollectorRegistry())
        await bot.start("127.0.0.1", 0)
        try:
            await wait_for(lambda: bot.gate.trading_allowed, timeout=30)
            await wait_for(lambda: budget.counter.level() < 1.0, timeout=30)  # the startup run's spending decayed
            while budget.counter.level() < 9.0:  # recent activity: about half the counter spent
                await broker.open_orders()
            before = _runs(bot, "reconnect")
            steps = bot.inst.registry.get_sample_value(LOOPS) or 0.0
            await gateway.venue.reject_orders("venue_busy", 30.0)
            refused = await bot.submit("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal("1000"))
            assert refused is None or not refused.status.is_open
            assert gateway.calls.get("ClosedOrders", 0) >= 2  # the lost submit was looked up

            def ran() -> bool:
                now = _runs(bot, "reconnect")
                return sum(now.values()) > sum(before.values())

            await wait_for(ran, timeout=60)
            after = _runs(bot, "reconnect")
            assert after["clean"] + after["resolved"] == before["clean"] + before["resolved"] + 1, (before, after)
            assert budget.exhausted == 0  # the bot refused none of its own calls
            assert gateway.call_counter.refused == 0  # nor did the venue: no EAPI:Rate limit exceeded
            loops = bot.inst.registry.get_sample_value(LOOPS) or 0.0
            assert loops > steps  # the trading loop ran while the reconciliation waited for its room
            assert not budget.reserved
        finally:
            await bot.stop()


# Real-rate lookups of an order of unknown outcome (about 100 s unloaded): its own waits bound it.
# Minutes at the venue's real rate: in `make test-deploy` (CI runs it after `make test`).
@pytest.mark.deploy
@pytest.mark.timeout(600)
async def test_an_order_of_unknown_outcome_is_looked_up_not_canceled_again_and_again(tmp_path: Path) -> None:
    """A submit refused `EService:Busy` whose own lookup found no room (here: none allowed) leaves an order of unknown
    outcome, which a strategy then asks to cancel at every step. The bot looks it up by its client order id instead (2 s
    apart, then longer), sends no cancel the venue would refuse, and the budget holds: Kraken's Starter counter,
    enforced by the gateway, never refuses a call. An order whose answer was lost but which the venue placed is found
    by the lookup and canceled by its venue id, once."""
    config = fast_config(tmp_path, **QUIET_CLOCK)
    config.bot.market_data_stale_seconds = 3600.0
    # The dead man's switch is armed at the start and disarmed at the stop, but not refreshed in between: a refresh
    # every 20 s (3 of the Starter tier's 20 points a minute) would only lengthen each wait for the counter's decay.
    config.bot.dead_man_switch.timeout_seconds = 3600
    config.bot.dead_man_switch.refresh_interval_seconds = 600.0
    async with running_gateway(partial_fill_probability=0.0) as (gateway, base):
        gateway.call_counter = CounterLimiter("starter")
        budget = CallBudget("starter")
        broker = CcxtBroker(
            kraken(base), SYMBOLS, poll_interval=1.0, quote_interval=1.0, call_budget=budget, lookup_attempts=0
        )
        bot = BotRuntime(config, broker, IdleStrategy(), symbols=SYMBOLS, token=TOKEN, registry=CollectorRegistry())
        await bot.start("127.0.0.1", 0)
        try:
            await wait_for(lambda: bot.gate.trading_allowed, timeout=60)
            await wait_for(lambda: budget.headroom() > 0.8, timeout=60)  # the start's spending decayed
            async with bot.hold_trading():  # no reconciliation settles it meanwhile: the strategy's steps only
                await chaos(base, "lost_reply", count=1)  # placed at the venue, its answer lost
                lost = await bot.submit("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal("1001"))
                assert lost is None
                (placed,) = [o for o in await gateway.venue.open_orders() if o.price == Decimal("1001")]
                assert not bot.orders[placed.client_order_id].venue_order_id
                cancels = gateway.calls.get("CancelOrder", 0)
                assert await bot.order_engine.cancel(placed.client_order_id) is True
                assert gateway.calls.get("CancelOrder", 0) == cancels + 1
                assert (await gateway.venue.order_status(placed.client_order_id)).status is OrderStatus.CANCELED
                assert placed.client_order_id not in bot.orders
            await wait_for(lambda: not bot.reconnect_reconciliation_pending, timeout=90)  # the orders channel is back
            await wait_for(lambda: budget.headroom() > 0.8, timeout=60)

            async with bot.hold_trading():
                await gateway.venue.reject_orders("venue_busy", 30.0)
                busy = await bot.submit("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal("1000"))
                await gateway.venue.clear_faults()
                assert busy is None
                (key,) = [k for k, o in bot.orders.items() if not o.venue_order_id]
                cancels, lookups = gateway.calls.get("CancelOrder", 0), gateway.calls.get("ClosedOrders", 0)
                for _ in range(20):  # a strategy stepping every 50 ms for a second
                    assert await bot.order_engine.cancel(key) is False
                    await asyncio.sleep(0.05)
                assert gateway.calls.get("CancelOrder", 0) == cancels  # nothing sent that the venue would refuse
                assert gateway.calls.get("ClosedOrders", 0) - lookups == 1  # one lookup (open, then closed orders)
                assert key in bot.orders  # still unknown: the reconciliation it asked for settles it
            await wait_for(lambda: key not in bot.orders, timeout=90)  # settled by the reconciliation: never placed
            assert gateway.call_counter.refused == 0
        finally:
            await bot.stop()
