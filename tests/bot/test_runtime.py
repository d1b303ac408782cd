"""BotRuntime for a bot we did not write: a custom strategy on the paper venue gets the journal, the control API, the
gate and a clean shutdown from the runtime alone; on CcxtBroker, the errors its broker handled are counted and a quiet
market stays fresh. The example bot as a process of its own is in tests/venues/test_ccxt_bot.py."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
from ccxt_helpers import CONTROL_TOKEN, kraken, running_gateway
from paper_helpers import TOKEN, IdleStrategy, control, counter_total, fast_config, get, wait_for
from prometheus_client import CollectorRegistry
from system_binaries import REPO_ROOT

from trading_ops.bot.broker import OrderType, Side
from trading_ops.bot.runtime import BotRuntime
from trading_ops.bot.strategy import StrategyContext
from trading_ops.paper.bot import make_venue
from trading_ops.venues.ccxt.rest import CcxtBroker

README = REPO_ROOT / "README.md"


async def chaos(base: str, fault: str, **args: object) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/chaos/{fault}", json=args, headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}) as r,
    ):
        assert r.status == 200, await r.text()


class OneShot:
    """A third-party strategy: one buy, then nothing; it records what the runtime showed it."""

    def __init__(self) -> None:
        self.started = False
        self.steps = 0
        self.sent: list[object] = []

    async def on_start(self, ctx: StrategyContext) -> None:
        self.started = True

    async def step(self, ctx: StrategyContext) -> None:
        self.steps += 1
        quote = ctx.quote("ETH-USD")
        if quote is not None and not self.sent and ctx.order_refusal("ETH-USD", False) is None:
            self.sent.append(await ctx.submit("ETH-USD", Side.BUY, OrderType.MARKET, Decimal("0.1")))


async def test_a_custom_strategy_gets_journal_control_and_clean_shutdown_from_the_runtime(tmp_path: Path) -> None:
    config = fast_config(tmp_path)
    strategy = OneShot()
    venue = make_venue(config)
    bot = BotRuntime(
        config,
        venue,
        strategy,
        symbols=["ETH-USD"],
        token=TOKEN,
        registry=CollectorRegistry(),
        venue_task=venue.run,
    )
    port = await bot.start("127.0.0.1", 0)
    try:
        assert strategy.started

        async def journaled() -> bool:
            fills = await bot.journal.call(bot.journal.fills)
            return sum(f.quantity for f in fills) == Decimal("0.1")

        # Each fill is booked, journaled, then exported (the counter moves last); a market order may fill in parts.
        await wait_for(journaled)
        await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= 1)
        assert bot.book.position("ETH-USD") == Decimal("0.1")
        assert (await get(port, "/readyz"))[0] == 200
        status, body = await control(port, "flatten")
        assert status == 200 and body["state"] == "flattening"
        await wait_for(lambda: bot.inst.state.state.value == "paused", timeout=20)  # the runtime flattened it
        assert bot.book.position("ETH-USD") == 0
        assert (await control(port, "halt"))[0] == 200
        steps = strategy.steps
        await wait_for(lambda: strategy.steps > steps + 3)
        assert len(strategy.sent) == 1  # halted: the strategy still steps, nothing it may send goes out
    finally:
        await bot.stop()
    last = await asyncio.to_thread(bot.recovery_store.last_run)
    assert last is not None and last.clean_shutdown
    transitions = await asyncio.to_thread(bot.recovery_store.events, "state")
    assert [json.loads(e.detail)["after"] for e in transitions] == ["flattening", "paused", "halted"]


async def test_a_runtime_bot_on_the_ccxt_broker_counts_what_its_broker_handled_and_stays_ready_when_quiet(
    tmp_path: Path,
) -> None:
    """BotRuntime on CcxtBroker and ccxt's real kraken client, on the gateway (in this process, on a free port): nonce
    refusals the broker retried and a lost reply it resolved never reach the bot as errors, yet they are in
    tradingbot_venue_errors_total; and a market that does not move stays fresh (every poll answered is a quote)."""
    async with running_gateway(reject_probability=0.0) as (gateway, base):  # quiet: prices never move
        config = fast_config(tmp_path)  # market data stale after 0.3 s
        config.bot.venue = "kraken"
        registry = CollectorRegistry()
        broker = CcxtBroker(kraken(base), ["BTC-USD"], poll_interval=0.05, quote_interval=0.05, lookup_backoff=0.1)
        bot = BotRuntime(
            config, broker, IdleStrategy(), symbols=["BTC-USD"], token=TOKEN, registry=registry, loop_interval=0.05
        )
        clock_readings = 0
        server_time = broker.server_time

        async def counted_server_time() -> datetime:
            nonlocal clock_readings
            clock_readings += 1
            return await server_time()

        broker.server_time = counted_server_time  # type: ignore[method-assign]
        port = await bot.start("127.0.0.1", 0)
        try:
            quiet = gateway.venue.quote("BTC-USD")
            # Twenty polls, a second of a market that did not move, three times the stale threshold: still fresh.
            await wait_for(lambda: counter_total(bot, "tradingbot_market_data_updates") >= 20)
            assert (gateway.venue.quote("BTC-USD").bid, gateway.venue.quote("BTC-USD").ask) == (quiet.bid, quiet.ask)
            status, body = await get(port, "/readyz")
            assert status == 200, body
            # The venue's clock is read once per CLOCK_SKEW_INTERVAL_SECONDS, not at every loop step (twenty more steps,
            # no more reading); the gateway's clock is this host's, in whole seconds: no skew, however the round trip
            # fell.
            skew = {"venue": "kraken"}
            await wait_for(lambda: registry.get_sample_value("tradingbot_clock_skew_seconds", skew) is not None)
            readings, steps = clock_readings, counter_total(bot, "tradingbot_loop_iterations")
            await wait_for(lambda: counter_total(bot, "tradingbot_loop_iterations") > steps + 20)
            assert clock_readings == readings
            assert registry.get_sample_value("tradingbot_clock_skew_seconds", skew) == 0.0

            def errors(error_class: str) -> float:
                labels = {"venue": "kraken", "error_class": error_class}
                return registry.get_sample_value("tradingbot_venue_errors_total", labels) or 0.0

            price = (gateway.venue.quote("BTC-USD").bid / 2).quantize(Decimal("0.01"))
            await chaos(base, "nonce", count=2)
            first = await bot.submit("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), price)
            await chaos(base, "lost_reply", count=1, mode="close")
            second = await bot.submit("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), price)
            assert first is not None and second is not None and first.venue_order_id and second.venue_order_id
            assert [o.client_order_id for o in gateway.venue.orders()] == [
                first.client_order_id,
                second.client_order_id,
            ]
            assert broker.handled_errors["nonce"] >= 2 and broker.handled_errors["network"] >= 1
            assert {cls: errors(cls) for cls in broker.handled_errors} == dict(broker.handled_errors)
        finally:
            await bot.stop()
