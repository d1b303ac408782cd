"""The runtime keeps the venue's dead man's switch armed (trading_ops.bot.dead_man_switch): on CcxtBroker with ccxt's
real kraken client against the Kraken-compatible gateway (served by this process on a free port), it is armed after the
startup reconciliation and refreshed from the trading loop, so a hung loop lets the venue cancel the bot's orders
within the timeout; a graceful shutdown that canceled its orders disarms it. On the paper venue, a switch the venue
refuses makes the bot reduce-only until it is armed. The example bot SIGKILLed with orders resting is in
tests/venues/test_ccxt_bot.py."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from ccxt_helpers import kraken, running_gateway
from paper_helpers import TOKEN, IdleStrategy, control, fast_config, get, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerError, OrderStatus, OrderType, Side
from trading_ops.bot.dead_man_switch import REASON
from trading_ops.bot.runtime import BotRuntime
from trading_ops.config import ConfigError, parse_config
from trading_ops.paper.bot import make_venue
from trading_ops.tasks import stop_tasks
from trading_ops.venues.call_counter import CallBudget, CounterLimiter
from trading_ops.venues.ccxt.rest import CcxtBroker

KRAKEN = {"venue": "kraken"}
# Scheduled reconciliations the Starter-tier run waits for (each one fills the counter to what it may take).
RECONCILIATIONS = 2
# ... and the switch refreshes it counts at least.
REFRESHES = 10


def sample(registry: CollectorRegistry, name: str, venue: str = "kraken") -> float | None:
    return registry.get_sample_value(name, {"venue": venue})


async def test_armed_after_the_startup_reconciliation_refreshed_by_the_loop_and_a_hung_loop_lets_the_venue_cancel(
    tmp_path: Path,
) -> None:
    async with running_gateway(tick_interval=0.05) as (gateway, base):
        config = fast_config(tmp_path)
        config.bot.venue = "kraken"
        switch = config.bot.dead_man_switch
        switch.timeout_seconds, switch.refresh_interval_seconds = 2, 0.5
        registry = CollectorRegistry()
        broker = CcxtBroker(kraken(base), ["BTC-USD"], poll_interval=0.05, quote_interval=0.05)
        assert broker.has_dead_man_switch()  # ccxt's kraken has cancelAllOrdersAfter
        bot = BotRuntime(
            config, broker, IdleStrategy(), symbols=["BTC-USD"], token=TOKEN, registry=registry, loop_interval=0.05
        )
        port = await bot.start("127.0.0.1", 0)
        try:
            # Armed by the start itself: the venue's trigger is set and the gauges say so.
            first = gateway.venue.dead_man_switch_trigger()
            assert first is not None
            assert sample(registry, "tradingbot_dead_man_switch_armed") == 1
            trigger = sample(registry, "tradingbot_dead_man_switch_trigger_timestamp_seconds")
            assert trigger is not None and abs(trigger - first.timestamp()) < 1  # Kraken's answer is to the second
            # Refreshed from the loop: the venue's trigger moves on while the bot lives, and the bot counts the refresh
            # (once the venue's answer is back: the venue moves its trigger before it answers).
            await wait_for(lambda: (gateway.venue.dead_man_switch_trigger() or first) > first, timeout=10)
            await wait_for(
                lambda: (sample(registry, "tradingbot_dead_man_switch_refreshes_total") or 0) >= 2, timeout=10
            )
            code, status = await control(port, "status")
            assert code == 200 and status["dead_man_switch"]["armed"] is True

            order = await bot.submit("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal("1000"))
            assert order is not None and [o.client_order_id for o in await gateway.venue.open_orders()] == [
                order.client_order_id
            ]
            bot.hang(30)  # the trading loop stops: nobody refreshes the switch
            await wait_for(lambda: gateway.venue.book.open == {}, timeout=2 + 10)
            assert gateway.venue.dead_man_switch_trigger() is None  # it fired, and stays disarmed until armed again
            await wait_for(lambda: sample(registry, "tradingbot_dead_man_switch_armed") == 0, timeout=5)
            assert (await get(port, "/metrics"))[0] == 200
            bot.hang(0)
            await wait_for(lambda: gateway.venue.dead_man_switch_trigger() is not None, timeout=10)  # the loop re-arms
            await wait_for(lambda: sample(registry, "tradingbot_dead_man_switch_armed") == 1, timeout=5)
        finally:
            await bot.stop()
        # The shutdown canceled the open orders (none were left), then disarmed the switch.
        assert gateway.venue.dead_man_switch_trigger() is None
        assert sample(registry, "tradingbot_dead_man_switch_trigger_timestamp_seconds") == 0


async def test_a_shutdown_that_keeps_its_orders_leaves_the_switch_armed_and_the_venue_cancels_them(
    tmp_path: Path,
) -> None:
    """recovery.open_orders_on_shutdown keep with disarm_on_shutdown after_cancel (the default): nothing was canceled
    by the shutdown, so the switch stays armed and the venue cancels the kept orders at the trigger."""
    async with running_gateway(tick_interval=0.05) as (gateway, base):
        config = fast_config(tmp_path)
        config.bot.venue = "kraken"
        config.recovery.open_orders_on_shutdown = "keep"
        config.bot.dead_man_switch.timeout_seconds = 2
        config.bot.dead_man_switch.refresh_interval_seconds = 0.5
        broker = CcxtBroker(kraken(base), ["BTC-USD"], poll_interval=0.05, quote_interval=0.05)
        bot = BotRuntime(config, broker, IdleStrategy(), symbols=["BTC-USD"], token=TOKEN, registry=CollectorRegistry())
        await bot.start("127.0.0.1", 0)
        try:
            order = await bot.submit("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal("1000"))
            assert order is not None
        finally:
            await bot.stop()
        assert gateway.venue.dead_man_switch_trigger() is not None  # left armed
        assert len(gateway.venue.book.open) == 1  # kept ...
        await wait_for(lambda: gateway.venue.book.open == {}, timeout=2 + 10)  # ... until the venue's trigger


async def test_a_switch_the_venue_refuses_makes_the_bot_reduce_only_until_it_is_armed(tmp_path: Path) -> None:
    """The paper venue has the switch (as Kraken does); refused at the start, the bot says so (the gauge, the failures,
    status) and opens no position, reduce-only, until a refresh arms it; then it is active again by itself."""
    config = fast_config(tmp_path)
    config.bot.dead_man_switch.timeout_seconds = 5
    config.bot.dead_man_switch.refresh_interval_seconds = 1
    venue = make_venue(config)
    registry = CollectorRegistry()
    bot = BotRuntime(
        config, venue, IdleStrategy(), symbols=["ETH-USD"], token=TOKEN, registry=registry, venue_task=venue.run
    )
    await venue.fail_queries(["cancel_all_orders_after"], 3)
    port = await bot.start("127.0.0.1", 0)
    try:
        assert bot.inst.state.state.value == "reduce_only" and bot.inst.state.reason == REASON
        assert sample(registry, "tradingbot_dead_man_switch_armed", "paper") == 0
        assert (sample(registry, "tradingbot_dead_man_switch_refresh_failures_total", "paper") or 0) >= 1
        code, status = await control(port, "status")
        assert code == 200 and status["dead_man_switch"]["armed"] is False
        assert "unavailable" in status["dead_man_switch"]["last_error"]
        refused = await bot.submit("ETH-USD", Side.BUY, OrderType.MARKET, Decimal("0.1"))
        assert refused is None and bot.book.position("ETH-USD") == 0
        await wait_for(lambda: bot.inst.state.state.value == "active", timeout=15)
        assert sample(registry, "tradingbot_dead_man_switch_armed", "paper") == 1
        assert venue.dead_man_switch_trigger() is not None
        assert await bot.submit("ETH-USD", Side.BUY, OrderType.MARKET, Decimal("0.1")) is not None
    finally:
        await bot.stop()


async def test_an_operators_reduce_only_is_never_lifted_by_the_switch(tmp_path: Path) -> None:
    """The switch lifts only the reduce-only it set: with on_failure alert it sets none, and an operator's stays."""
    config = fast_config(tmp_path)
    config.bot.dead_man_switch.on_failure = "alert"
    config.bot.dead_man_switch.refresh_interval_seconds = 0.2
    venue = make_venue(config)
    bot = BotRuntime(
        config,
        venue,
        IdleStrategy(),
        symbols=["ETH-USD"],
        token=TOKEN,
        registry=CollectorRegistry(),
        venue_task=venue.run,
    )
    await venue.fail_queries(["cancel_all_orders_after"], 1)
    port = await bot.start("127.0.0.1", 0)
    try:
        assert bot.inst.state.state.value == "active"  # alert only
        assert (await control(port, "reduce_only"))[0] == 200
        await wait_for(lambda: venue.dead_man_switch_trigger() is not None, timeout=10)
        refreshes = bot.dead_man.failures
        assert refreshes >= 1 and bot.inst.state.state.value == "reduce_only"
    finally:
        await bot.stop()


def test_the_refresh_must_come_well_within_the_timeout() -> None:
    with pytest.raises(ConfigError, match="bot.dead_man_switch.refresh_interval_seconds"):
        parse_config({"bot": {"dead_man_switch": {"timeout_seconds": 30, "refresh_interval_seconds": 20}}})
    with pytest.raises(ConfigError, match="bot.dead_man_switch.timeout_seconds"):
        parse_config({"bot": {"dead_man_switch": {"timeout_seconds": 86_400}}})
    defaults = parse_config({}).bot.dead_man_switch
    assert (defaults.enabled, defaults.timeout_seconds, defaults.refresh_interval_seconds) == (True, 60, 20.0)


# Two minutes of the Starter tier's call budget decaying at its real rate (~125 s unloaded): its own waits bound it.
# Minutes at the venue's real rate: in `make test-deploy` (CI runs it after `make test`).
@pytest.mark.deploy
@pytest.mark.timeout(600)
async def test_on_the_starter_tier_reconciliations_and_polls_never_take_the_switchs_refresh(tmp_path: Path) -> None:
    """Kraken's Starter counter kept by the gateway per key, the bot budgeting against it (`kraken_tier: starter`),
    polls a second as documented, a scheduled reconciliation every 10 s and the switch refreshed every 5 s (a 15 s
    timeout). Beside them a storm of ordinary private calls (what a reconciliation and the polls spend, the test's own
    through the broker) takes all the counter they may whenever no reconciliation holds it: the switch's refreshes
    and a cancel's lookups find the protective reserve. Counted over the run: every refresh attempted succeeded, every
    protective call was sent, the venue never fired the switch nor refused a call, and the reconciliations ran."""
    async with running_gateway(tick_interval=0.05) as (gateway, base):
        gateway.call_counter = CounterLimiter("starter")
        config = fast_config(tmp_path)
        config.bot.venue = "kraken"
        config.bot.market_data_stale_seconds = 3600.0
        config.bot.heartbeat_timeout_seconds = 30.0
        config.recovery.reconcile_interval_seconds = 10.0
        switch = config.bot.dead_man_switch
        switch.timeout_seconds, switch.refresh_interval_seconds = 15, 5
        registry = CollectorRegistry()
        budget = CallBudget("starter")
        broker = CcxtBroker(kraken(base), ["BTC-USD"], poll_interval=1.0, quote_interval=1.0, call_budget=budget)
        bot = BotRuntime(config, broker, IdleStrategy(), symbols=["BTC-USD"], token=TOKEN, registry=registry)
        await bot.start("127.0.0.1", 0)
        storm_refused = 0

        async def storm() -> None:
            nonlocal storm_refused
            while True:
                if not budget.reserved:  # a reconciliation holds the counter: the storm, like the polls, waits
                    try:
                        await broker.open_orders()
                        continue
                    except BrokerError:  # unsent: no room for an ordinary call
                        storm_refused += 1
                await asyncio.sleep(0.2)

        storming = asyncio.create_task(storm())
        try:
            order = await bot.submit("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal("1000"))
            assert order is not None
            runs = "tradingbot_reconciliation_runs_total"
            scheduled = {"venue": "kraken", "trigger": "schedule"}

            def reconciliations() -> float:
                return sum(
                    registry.get_sample_value(runs, {**scheduled, "result": r}) or 0.0
                    for r in ("clean", "resolved", "failed", "halted", "unknown")
                )

            def attempted() -> float:
                refreshes = sample(registry, "tradingbot_dead_man_switch_refreshes_total") or 0
                return refreshes + (sample(registry, "tradingbot_dead_man_switch_refresh_failures_total") or 0)

            await wait_for(
                lambda: reconciliations() >= RECONCILIATIONS and attempted() >= REFRESHES,
                timeout=RECONCILIATIONS * 90,
                interval=0.5,
            )
            refreshes = sample(registry, "tradingbot_dead_man_switch_refreshes_total") or 0
            failures = sample(registry, "tradingbot_dead_man_switch_refresh_failures_total") or 0
            print(
                f"starter tier, {reconciliations():g} scheduled reconciliations and {storm_refused} ordinary calls "
                f"refused for want of room: switch refreshes attempted {refreshes + failures:g}, succeeded "
                f"{refreshes:g}; protective calls sent {budget.protective_spent}, refused "
                f"{budget.protective_exhausted}; calls refused by the venue {gateway.call_counter.refused}"
            )
            assert storm_refused > 0  # the storm did reach the ceiling of ordinary calls
            assert refreshes >= REFRESHES and failures == 0
            # The order still rests: the venue's switch never fired on a live bot.
            assert [o.client_order_id for o in await gateway.venue.open_orders()] == [order.client_order_id]
            # A cancel now, the counter as full as ordinary calls may make it: its lookups spend the reserve.
            await wait_for(lambda: budget.counter.level() > budget.ceiling - 1, timeout=30)
            assert (await broker.cancel(order.client_order_id)).status is OrderStatus.CANCELED
            assert budget.protective_spent >= refreshes and budget.protective_exhausted == 0
            assert gateway.call_counter.refused == 0
            assert gateway.venue.dead_man_switch_trigger() is not None  # armed all along
            assert order.client_order_id not in {o.client_order_id for o in await gateway.venue.open_orders()}
        finally:
            await stop_tasks([storming])
            await bot.stop()
