"""The paper-trading bot end to end in-process: it trades, journals, exports, obeys control and every fault."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from decimal import Decimal

import psutil
import pytest
from paper_helpers import AUTH, TOKEN, IdleStrategy, control, counter_total, fast_config, get, submit_fresh, wait_for
from prometheus_client import CollectorRegistry, enable_created_metrics
from sqlalchemy import func, select

from trading_ops.bot.broker import BrokerError, Channel, OrderRequest, OrderType, Side, VenueFill, VenueOrder
from trading_ops.bot.instance_lock import AnotherInstanceRunning
from trading_ops.bot.journal import Journal
from trading_ops.bot.reconciliation import Trigger
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.shutdown import ShutdownDeadlineExceeded
from trading_ops.db.base import make_engine, make_sessionmaker, utcnow
from trading_ops.db.models import Fill, Order, Position
from trading_ops.paper.bot import CENT, PaperBot
from trading_ops.paper.chaos import CHAOS_COMMANDS


@pytest.fixture
async def bot(tmp_path):
    paper_bot = PaperBot(fast_config(tmp_path), token=TOKEN, registry=CollectorRegistry(), chaos=True)
    paper_bot.port = await paper_bot.start("127.0.0.1", 0)
    try:
        yield paper_bot
    finally:
        await paper_bot.stop()


def sample(bot: PaperBot, name: str, **labels: str) -> float | None:
    return bot.inst.registry.get_sample_value(name, labels)


async def test_trades_continuously_and_journals_everything(bot: PaperBot) -> None:
    await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= 10, timeout=20)
    sessions = make_sessionmaker(bot.engine)
    # Quiesce (no new orders, none working), then compare the journal with the bot's book and with the venue:
    # every fill the venue delivered ends up in the journal, so the views agree once the deliveries landed.
    assert (await control(bot.port, "pause"))[0] == 200
    async with bot._trade_lock:
        pass  # the strategy step in progress has finished; the next ones see the pause

    def journal_positions() -> dict[str, Decimal]:
        with sessions() as session:
            return {p.symbol: p.quantity for p in session.scalars(select(Position)) if p.quantity}

    async def settled() -> bool:
        if await bot.cancel_all() or await bot.broker.open_orders():
            return False
        await bot.journal.call(lambda: None)
        venue = {s: q for s, q in (await bot.broker.positions()).items() if q}
        return venue == journal_positions()

    await wait_for(settled)
    with sessions() as session:
        fills = session.scalar(select(func.count()).select_from(Fill))
        orders = session.scalar(select(func.count()).select_from(Order))
    assert fills is not None and fills >= 10
    assert orders is not None and orders >= fills / 2
    for symbol, quantity in journal_positions().items():
        assert quantity == bot.book.position(symbol)
    # What a restart restores (the positions and the day's realized P&L, each fill's stored with it) is this book.
    restored = await bot.journal.call(bot.journal.book_state)
    assert restored.realized_on_day == bot.book.realized_today
    assert {s: h.quantity for s, h in restored.holdings.items()} == {s: bot.book.position(s) for s in restored.holdings}
    await wait_for(lambda: sample(bot, "tradingbot_loop_iterations_total") > 5)
    assert sample(bot, "tradingbot_broker_connected", venue="paper", channel="orders") == 1
    assert sample(bot, "tradingbot_market_data_last_update_timestamp_seconds", venue="paper", symbol="BTC-USD")
    status, body = await get(bot.port, "/readyz")
    assert status == 200, body


async def test_drop_connection_until_reconnect(bot: PaperBot) -> None:
    await wait_for(lambda: bot.broker.is_connected(Channel.ORDERS))
    status, body = await control(bot.port, "drop_connection")
    assert status == 200 and body["heal"] == "reconnect"
    assert sample(bot, "tradingbot_broker_connected", venue="paper", channel="orders") == 0
    assert (await get(bot.port, "/readyz"))[0] == 503

    def network_errors() -> float:
        return sample(bot, "tradingbot_venue_errors_total", venue="paper", error_class="network") or 0

    # Count once the venue has refused orders: a fill delivered as the connection dropped is done by then. Then
    # let the trading loop go round (it keeps iterating; the bot itself holds back new risk until it reconciled).
    await wait_for(lambda: network_errors() > 1)
    fills_before = counter_total(bot, "tradingbot_fills")
    iterations = sample(bot, "tradingbot_loop_iterations_total") or 0
    await wait_for(lambda: (sample(bot, "tradingbot_loop_iterations_total") or 0) > iterations + 10)
    assert counter_total(bot, "tradingbot_fills") == fills_before  # nothing trades while the venue is unreachable
    status, body = await control(bot.port, "reconnect")
    assert status == 200 and body["connected"] == {"orders": True, "market_data": True}
    assert sample(bot, "tradingbot_broker_reconnects_total", venue="paper", channel="orders") == 1
    await wait_for(lambda: counter_total(bot, "tradingbot_fills") > fills_before, timeout=20)


async def test_stale_market_data_until_resubscribe(bot: PaperBot) -> None:
    await wait_for(lambda: bot.metrics.market_data_age("ETH-USD") is not None)
    status, _ = await control(bot.port, "stale_market_data", {"symbol": "ETH-USD"})
    assert status == 200
    await wait_for(lambda: (bot.metrics.market_data_age("ETH-USD") or 0) > 0.4)
    status, body = await get(bot.port, "/readyz")
    assert status == 503 and "ETH-USD" in body
    # The other symbols keep flowing: a BTC quote arrives while ETH's age keeps growing (not a wall-clock bound).
    await wait_for(
        lambda: (bot.metrics.market_data_age("BTC-USD") or 99) + 0.3 < (bot.metrics.market_data_age("ETH-USD") or 0)
    )
    assert (await control(bot.port, "resubscribe", {"symbol": "ETH-USD"}))[0] == 200
    await wait_for(lambda: (bot.metrics.market_data_age("ETH-USD") or 99) < 0.1)
    assert (await control(bot.port, "stale_market_data", {"symbol": "DOGE-USD"}))[0] == 400


async def healthz_passes(port: int) -> bool:
    return (await get(port, "/healthz"))[0] == 200


async def test_hang_loop_stops_the_heartbeat(bot: PaperBot) -> None:
    await wait_for(lambda: (sample(bot, "tradingbot_loop_iterations_total") or 0) > 2)
    await wait_for(lambda: healthz_passes(bot.port))
    assert (await control(bot.port, "hang_loop", {"seconds": 30}))[0] == 200
    # Inside the hang (not still in a slow iteration from before it, which would make progress again) and 0.6 s
    # without progress.
    await wait_for(lambda: bot.hanging() and (bot.metrics.heartbeat_age() or 0) > 0.6)
    status, body = await get(bot.port, "/healthz")
    assert status == 503 and "stalled" in body
    iterations = sample(bot, "tradingbot_loop_iterations_total")
    assert (await control(bot.port, "clear_chaos"))[0] == 200
    await wait_for(lambda: sample(bot, "tradingbot_loop_iterations_total") > iterations)
    await wait_for(lambda: healthz_passes(bot.port))  # waited for: a busy machine's next iteration may be late


async def test_leak_memory_and_fill_disk(bot: PaperBot) -> None:
    mib = 1024 * 1024
    resident = psutil.Process().memory_info
    before = resident().rss
    status, body = await control(bot.port, "leak_memory", {"mib_per_second": 200, "max_mib": 20})
    assert status == 200
    await wait_for(lambda: bot.chaos is not None and bot.chaos.status()["leaked_mib"] >= 20)
    assert resident().rss >= before + 18 * mib  # resident, every page touched
    status, body = await control(bot.port, "fill_disk", {"mib_per_second": 200, "max_mib": 5})
    scratch = bot.data_dir / "scratch"
    await wait_for(lambda: sum(p.stat().st_size for p in scratch.glob("fill-*.bin")) == 5 * 1024 * 1024)
    await wait_for(lambda: "fill_disk" not in bot.chaos._tasks)  # it stops at max_mib
    leaking = resident().rss
    assert (await control(bot.port, "clear_chaos"))[0] == 200
    assert not scratch.exists()
    assert bot.chaos is not None and bot.chaos.status()["leaked_mib"] == 0
    # Given back to the system, not only to the allocator: the memory alert resolves without a restart.
    assert resident().rss <= leaking - 18 * mib
    assert (await control(bot.port, "leak_memory", {"max_mib": 10**9}))[0] == 400  # bounded


async def test_position_drift_is_what_reconcile_finds(bot: PaperBot) -> None:
    status, body = await control(bot.port, "position_drift", {"symbol": "SOL-USD", "quantity": 3})
    assert status == 200 and body["trade_id"]
    _, result = await control(bot.port, "reconcile")
    assert result["clean"] is False and result["trigger"] == "command"
    drift = [d for d in result["discrepancies"] if d["key"] == body["trade_id"]]
    assert [(d["kind"], d["outcome"]) for d in drift] == [("missing_fill", "adopted")]
    assert bot.book.position("SOL-USD") == (await bot.broker.positions())["SOL-USD"]


async def test_loss_spike_moves_pnl_past_the_limit_and_stops_new_risk(tmp_path) -> None:
    bot = PaperBot(fast_config(tmp_path, daily_loss_limit=40), token=TOKEN, registry=CollectorRegistry(), chaos=True)
    bot.port = await bot.start("127.0.0.1", 0)
    try:
        await _loss_spike(bot)
        # Flattened while halted: a second spike has nothing to lose on and the bot opens nothing while halted, so
        # it says what would let it (it said "try again in a few seconds", which never succeeds).
        assert (await control(bot.port, "flatten"))[0] == 200
        await wait_for(lambda: all(bot.book.position(s) == 0 for s in bot.config.paper.symbols), timeout=20)
        status, body = await control(bot.port, "loss_spike")
        assert status == 400 and body["error"] == (
            "the bot holds no position to lose on, and opens none while halted: resume it (a halt: clear_halt, then "
            "resume) before a loss_spike"
        ), body
    finally:
        await bot.stop()


async def _loss_spike(bot: PaperBot) -> None:
    await wait_for(lambda: sum(abs(bot.book.notional(s)) for s in bot.config.paper.symbols) > 500, timeout=20)
    limit = bot.config.paper.daily_loss_limit
    assert bot.inst.state.state.value == "active"
    status, body = await control(bot.port, "loss_spike", {"amount": 1e9})
    assert status == 400 and "can lose at most" in body["error"], body  # never less than it says, silently
    assert bot.inst.state.state.value == "active"
    status, body = await control(bot.port, "loss_spike")
    assert status == 200, body
    assert float(body["expected_loss"]) == pytest.approx(limit * 1.2, abs=0.01)  # what it says is what it asks
    # The loss limit is enforced in-process: the bot halts at once (no alert round trip) and says why.
    await wait_for(lambda: bot.inst.state.state.value == "halted", timeout=10)
    assert bot.inst.state.reason.startswith("risk limit daily_loss")
    realized = sample(bot, "tradingbot_realized_pnl", venue="paper", strategy="demo") or 0
    unrealized = sample(bot, "tradingbot_unrealized_pnl", venue="paper", strategy="demo") or 0
    assert -(realized + unrealized) >= limit


async def test_loss_spike_without_an_amount_loses_what_the_book_can_when_that_still_passes_the_limit(tmp_path) -> None:
    """The default is 1.2x the daily loss limit; a book that cannot lose that much in one gap loses what it can (90 %
    of its exposure) if that still passes 1.05x the limit, and is refused, saying so, when it does not."""
    bot = PaperBot(fast_config(tmp_path, daily_loss_limit=40), token=TOKEN, registry=CollectorRegistry(), chaos=True)
    bot.port = await bot.start("127.0.0.1", 0)
    try:
        assert bot.chaos is not None
        exposure = 0.0

        def holds_enough() -> bool:
            nonlocal exposure
            exposure = float(sum(abs(bot.book.notional(s)) for s in bot.config.paper.symbols))
            return exposure > 500

        await wait_for(holds_enough, timeout=20)
        # One gap takes at most 0.9x the exposure: well under 1.05x a limit of twice it, although the bot trades on
        # (its book may grow between this measure and the command, on a busy machine by more than a sixth).
        bot.chaos.daily_loss_limit = 2 * exposure
        status, body = await control(bot.port, "loss_spike")
        assert status == 400 and "not enough to pass the daily loss limit" in body["error"], body
        assert bot.inst.state.state.value == "active"
        # The book must not move between its measure here and the gap: no new orders, none left working to fill,
        # and none still on its way to the venue (sent before the pause, it fills after the cancel).
        assert (await control(bot.port, "pause"))[0] == 200
        positions: dict[str, Decimal] = {}

        async def book_still() -> bool:
            assert (await control(bot.port, "cancel_all"))[0] == 200
            now = {s: bot.book.position(s) for s in bot.config.paper.symbols}
            still = now == positions
            positions.update(now)
            await asyncio.sleep(0.5)
            return still and now == {s: bot.book.position(s) for s in bot.config.paper.symbols}

        await wait_for(book_still, timeout=20)
        holds_enough()
        limit = exposure * 0.9 / 1.12  # 1.2x it is more than one gap can take, 1.05x it less
        bot.chaos.daily_loss_limit = limit
        status, body = await control(bot.port, "loss_spike")
        assert status == 200, body
        # All one gap can take: 90 % of every held price (to the cent, rounded down).
        assert float(body["price_move"]) == pytest.approx(0.9, abs=1e-4), (body, exposure)
        assert float(body["expected_loss"]) == pytest.approx(exposure * 0.9, rel=0.01), (body, exposure)
        assert 1.05 * limit <= float(body["expected_loss"]) < 1.2 * limit
    finally:
        await bot.stop()


def rejected(bot: PaperBot, reason: str) -> float:
    return sum(
        s.value
        for f in bot.inst.registry.collect()
        if f.name == "tradingbot_orders_rejected"
        for s in f.samples
        if s.name.endswith("_total") and s.labels.get("reason") == reason
    )


async def test_reject_storm_rejects_every_new_order_until_cleared(bot: PaperBot) -> None:
    await wait_for(lambda: counter_total(bot, "tradingbot_orders_submitted") > 0)
    status, body = await control(bot.port, "reject_storm", {"seconds": 60, "reason": "venue_busy"})
    assert status == 200 and body["reason"] == "venue_busy", body
    submitted, fills = counter_total(bot, "tradingbot_orders_submitted"), counter_total(bot, "tradingbot_fills")
    await wait_for(lambda: rejected(bot, "venue_busy") >= 5, timeout=20)  # the strategy keeps trying; all refused
    assert counter_total(bot, "tradingbot_orders_submitted") > submitted
    assert bot.broker.is_connected(Channel.ORDERS)  # the connection stays up: only orders are refused
    assert (await control(bot.port, "reject_storm", {"reason": "nope"}))[0] == 400
    assert (await control(bot.port, "clear_chaos"))[0] == 200
    await wait_for(lambda: counter_total(bot, "tradingbot_fills") > fills, timeout=20)


async def test_flatten_closes_every_position_then_pauses(bot: PaperBot) -> None:
    await wait_for(lambda: sum(1 for s in bot.config.paper.symbols if bot.book.position(s)) >= 2, timeout=20)
    status, body = await control(bot.port, "flatten")
    assert status == 200 and body["state"] == "flattening"
    await wait_for(lambda: bot.inst.state.state.value == "paused", timeout=20)
    assert all(bot.book.position(s) == 0 for s in bot.config.paper.symbols)
    assert all(q == 0 for q in (await bot.broker.positions()).values())


async def test_a_halted_bot_accepts_flatten_closes_every_position_and_stays_halted(bot: PaperBot) -> None:
    await wait_for(lambda: sum(1 for s in bot.config.paper.symbols if bot.book.position(s)) >= 2, timeout=20)
    assert (await control(bot.port, "halt"))[0] == 200
    status, body = await control(bot.port, "cancel_all")
    assert status == 200, body
    status, body = await control(bot.port, "flatten")
    assert status == 200 and body["state"] == "halted" and not body["changed"], body
    await wait_for(lambda: all(bot.book.position(s) == 0 for s in bot.config.paper.symbols), timeout=20)
    assert all(q == 0 for q in (await bot.broker.positions()).values())
    assert await bot.broker.open_orders() == []
    await wait_for(lambda: not bot.inst.state.flatten_while_halted, timeout=10)
    status, body = await control(bot.port, "status")
    assert body["state"] == "halted" and body["flatten_while_halted"] is False, body
    assert sample(bot, "tradingbot_kill_switch_engaged") == 1
    assert (await control(bot.port, "resume"))[0] == 409  # the halt stays: only clear_halt leaves it


async def test_halt_cancels_working_orders_and_refuses_resume(bot: PaperBot) -> None:
    await wait_for(lambda: bot.orders, timeout=20)
    assert (await control(bot.port, "halt"))[0] == 200
    assert await bot.broker.open_orders() == []
    status, body = await control(bot.port, "resume")
    assert status == 409 and body["state"] == "halted"
    assert sample(bot, "tradingbot_kill_switch_engaged") == 1


async def test_bad_token_and_unknown_fault(bot: PaperBot) -> None:
    status, _ = await control(bot.port, "drop_connection", headers={"Authorization": "Bearer nope"})
    assert status == 401
    assert bot.broker.is_connected(Channel.ORDERS)
    assert (await control(bot.port, "melt_down"))[0] == 404


async def test_without_chaos_the_fault_commands_do_not_exist(tmp_path) -> None:
    paper_bot = PaperBot(fast_config(tmp_path), token=TOKEN, registry=CollectorRegistry(), chaos=False)
    port = await paper_bot.start("127.0.0.1", 0)
    try:
        for fault in CHAOS_COMMANDS:
            assert (await control(port, fault))[0] == 404, fault
        assert (await control(port, "reconnect", headers=AUTH))[0] == 200
    finally:
        await paper_bot.stop()


async def rest_one_bid(bot: PaperBot) -> None:
    """The bot idle (no step places anything) with nothing working but one bid resting 10 % under the market, its
    acknowledgement (streamed after the submit) applied."""
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    async with bot._trade_lock:
        pass  # the step in progress (if any) has ended; the next ones place nothing
    await bot.cancel_all()
    mid = bot.broker.quote("BTC-USD").mid
    resting = await submit_fresh(
        bot, "BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), (mid * Decimal("0.9")).quantize(CENT)
    )
    assert resting is not None and resting.status.is_open
    await bot.broker.drain_events()


async def test_commands_needing_the_venue_answer_503_while_it_is_unreachable(bot: PaperBot) -> None:
    """After drop_connection: halt stands (state halted) with its cancel pending, cancel_all and resubscribe say
    the broker is unavailable; the next reconnect cancels the orders the halt could not."""
    await rest_one_bid(bot)
    assert (await control(bot.port, "drop_connection"))[0] == 200
    status, body = await control(bot.port, "halt")
    assert status == 503, body
    assert body["error"].startswith("broker unavailable: ") and body["state"] == "halted"
    assert body["cancel_pending"] is True and body["open_orders"] >= 1
    assert bot.inst.state.state.value == "halted"
    for command, args in (("cancel_all", {}), ("resubscribe", {"symbol": "ETH-USD"})):
        status, body = await control(bot.port, command, args)
        assert status == 503 and body["error"].startswith("broker unavailable: "), (command, body)
    assert (await control(bot.port, "status"))[1]["cancel_pending"] is True
    assert await_venue_open(bot)  # still working on the venue
    assert (await control(bot.port, "reconnect"))[0] == 200
    await wait_for(lambda: not bot.cancel_pending and not await_venue_open(bot), timeout=20)
    # The reconciliation after the reconnect adopts what the orders did while nobody listened.
    await wait_for(lambda: bot.reconciler.last and bot.reconciler.last["trigger"] == "reconnect", timeout=20)
    assert bot.inst.state.state.value == "halted" and bot.orders == {}
    failures = sample(bot, "tradingbot_control_command_failures_total", command="halt", reason="broker_unavailable")
    assert failures == 1


async def test_a_halt_whose_cancels_the_rate_limit_refused_cancels_them_once_it_allows_without_a_reconnect(
    bot: PaperBot, caplog: pytest.LogCaptureFixture
) -> None:
    """The halt's sweep finds the venue's rate limit spent (its cancels refused, the channel up): the halt stands, its
    status says the cancel is still owed, and the sweep is tried again while halted until the venue takes the
    cancels. No reconnect comes to do it."""
    await rest_one_bid(bot)
    bucket = bot.paper_venue.bucket
    rate = bucket.per_second
    bucket.per_second = 0.001  # spent, and refilled only by the test
    with contextlib.suppress(BrokerError):
        while True:
            bucket.spend()
    status, body = await control(bot.port, "halt")
    assert status == 200 and body["state"] == "halted", body  # the halt stands; the refused cancel is owed
    assert (await control(bot.port, "status"))[1]["cancel_pending"] is True
    assert bot.broker.is_connected(Channel.ORDERS)  # refused, not disconnected: no reconnect is coming
    # Tried again while the venue still refuses, 5 s after the halt's sweep and 10 s after that (backing off: an
    # order the venue never lets go of costs a sweep a minute at most). Lower bounds only: a loaded machine is late.
    refused = "open orders are still working"

    def sweeps() -> list[float]:
        return [r.created for r in caplog.records if refused in r.getMessage()]

    await wait_for(lambda: len(sweeps()) >= 3, timeout=60)
    first, second, third = sweeps()[:3]
    assert second - first >= 5.0 - 0.1 and third - second >= 10.0 - 0.1, (second - first, third - second)
    assert await_venue_open(bot)
    bucket.per_second = rate  # the venue's limit allows requests again
    # At its next try: 20 s after the third (backing off), and a loaded machine's margin.
    await wait_for(lambda: not bot.kill_switch.owes_cancels and not await_venue_open(bot), timeout=60)
    assert bot.inst.state.state.value == "halted"
    assert (await control(bot.port, "status"))[1]["cancel_pending"] is False


def await_venue_open(bot: PaperBot) -> list[str]:
    """The venue's open orders, read directly (its API refuses while the connection is down)."""
    return list(bot.paper_venue.book.open)


async def test_no_new_risk_on_stale_market_data_but_reduce_only_goes_out(tmp_path) -> None:
    bot = PaperBot(
        fast_config(tmp_path, partial_fill_probability=0), token=TOKEN, registry=CollectorRegistry(), chaos=True
    )
    bot.strategy = IdleStrategy()  # type: ignore[assignment]  # the test places what it needs
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    try:
        await _stale_market_data_gate(bot)
    finally:
        await bot.stop()


async def _stale_market_data_gate(bot: PaperBot) -> None:
    hidden = await bot.paper_venue.inject_hidden_fill("ETH-USD", Decimal("1"))
    assert (await bot.reconcile(Trigger.COMMAND))["discrepancies"][0]["key"] == hidden.trade_id
    assert (await control(bot.port, "stale_market_data", {"symbol": "ETH-USD"}))[0] == 200
    await wait_for(lambda: bot.market_data_stale("ETH-USD"))
    assert bot.order_refusal("ETH-USD", reduce_only=False) == "market data for ETH-USD is stale"
    assert await bot.submit("ETH-USD", Side.BUY, OrderType.MARKET, Decimal("0.1")) is None
    assert await bot.submit("ETH-USD", Side.SELL, OrderType.MARKET, Decimal("0.1")) is None  # could open a short
    # Closing risk on stale data is allowed: the venue lets a reduce-only order only shrink the position.
    closing = await bot.submit("ETH-USD", Side.SELL, OrderType.MARKET, Decimal("0.5"), reduce_only=True)
    assert closing is not None and closing.status.value == "filled"
    await wait_for(lambda: bot.book.position("ETH-USD") == Decimal("0.5"))  # its fill streamed after the ack
    assert bot.order_refusal("BTC-USD", reduce_only=False) is None  # the other symbols are fresh


async def test_an_adopted_order_is_not_expired_by_the_strategy_but_canceled_at_shutdown(tmp_path) -> None:
    config = fast_config(tmp_path)
    config.recovery.policies["unknown_order"] = "adopt"
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    stopped = False
    try:
        mid = bot.broker.quote("BTC-USD").mid
        external = await bot.paper_venue.place_external_order("BTC-USD", Side.BUY, Decimal("0.01"), mid / 2)
        result = await bot.reconcile(Trigger.COMMAND)
        assert [(d["kind"], d["outcome"]) for d in result["discrepancies"]] == [("unknown_order", "adopted")]
        assert external.key in bot.external_orders
        # The strategy keeps trading (and expiring its own orders after 0.2 s) around it, many times over.
        canceled = counter_total(bot, "tradingbot_orders_canceled")
        await wait_for(lambda: counter_total(bot, "tradingbot_orders_canceled") >= canceled + 10, timeout=30)
        assert external.venue_order_id in bot.paper_venue.book.open
        assert (await control(bot.port, "status"))[1]["adopted_orders"] == 1
        await bot.stop()  # open_orders_on_shutdown: cancel, adopted orders included
        stopped = True
        assert bot.paper_venue.book.orders[external.venue_order_id].status.value == "canceled"
        run = await asyncio.to_thread(RecoveryStore(bot.engine, "paper-1", "paper").last_run)
        assert run is not None and run.clean_shutdown
    finally:
        if not stopped:
            await bot.stop()


async def test_the_database_heartbeat_stops_while_the_loop_hangs(tmp_path) -> None:
    config = fast_config(tmp_path)
    config.recovery.heartbeat_interval_seconds = 0.05
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), chaos=True)
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    store = bot.recovery_store
    try:
        await wait_for(lambda: bot.heartbeat.beats >= 3)
        assert (await control(bot.port, "hang_loop", {"seconds": 60}))[0] == 200
        # Inside the hang (an iteration under way when the command came, slow on a busy machine, completes first and
        # the loop progresses again) and heartbeat_timeout_seconds (0.5) without progress.
        await wait_for(lambda: bot.hanging() and not bot.loop_progressing())
        # A beat that checked progress just before the loop counted as hung may still be writing: journal calls run
        # in submission order, so one more call waits it out before the count is taken.
        await bot.journal.call(lambda: None)
        await asyncio.sleep(0)
        beats = bot.heartbeat.beats
        frozen = (await bot.journal.call(store.last_run)).last_heartbeat_at  # type: ignore[union-attr]
        # Ten heartbeat intervals and more, measured on the hung loop's own heartbeat age.
        age = bot.metrics.heartbeat_age() or 0
        await wait_for(lambda: (bot.metrics.heartbeat_age() or 0) > age + 10 * 0.05)
        assert bot.heartbeat.beats == beats
        assert (await bot.journal.call(store.last_run)).last_heartbeat_at == frozen  # type: ignore[union-attr]
        assert (await control(bot.port, "clear_chaos"))[0] == 200
        await wait_for(lambda: bot.heartbeat.beats > beats)
        assert (await bot.journal.call(store.last_run)).last_heartbeat_at > frozen  # type: ignore[union-attr]
    finally:
        await bot.stop()


def heartbeat_gauge_age(bot: PaperBot) -> float:
    """What Prometheus reads: now minus tradingbot_heartbeat_timestamp_seconds."""
    return time.time() - (bot.inst.registry.get_sample_value("tradingbot_heartbeat_timestamp_seconds") or 0.0)


async def test_a_reconciliation_longer_than_the_heartbeat_timeout_is_not_a_stalled_loop(tmp_path) -> None:
    """A reconciliation holds the trade lock for its whole run. One that waits long on the venue (each look at the
    account answered 0.25 s late; an order the bot did not place makes it look twice and adopt it: ten such looks and
    more, longer than the 2 s heartbeat timeout) is not a stalled loop: each step it completes is the waiting loop's
    heartbeat, and /healthz's check, which the watchdog's pings follow, stays healthy throughout. Without it the
    watchdog killed a bot in every long reconciliation. An idle strategy: the demo's own steps look at the venue too
    (its cancels' lookups), and a step that waits on them is the loop's own, not the run's (CI, stop 70)."""
    config = fast_config(tmp_path)
    config.bot.heartbeat_timeout_seconds = 2.0
    config.recovery.policies["unknown_order"] = "adopt"
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    await bot.start("127.0.0.1", 0)
    try:
        await wait_for(lambda: bot.metrics.heartbeat_age() is not None)
        mid = bot.broker.quote("BTC-USD").mid
        await bot.paper_venue.place_external_order("BTC-USD", Side.BUY, Decimal("0.01"), (mid / 2).quantize(CENT))
        bot.paper_venue.query_latency = 0.25
        started = time.monotonic()
        run = asyncio.create_task(bot.reconcile(Trigger.COMMAND))
        looks: list[tuple[bool, float | None, float]] = []
        while not run.done():
            looks.append((bot.loop_progressing(), bot.metrics.heartbeat_age(), heartbeat_gauge_age(bot)))
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        assert run.result()["result"] == "resolved", run.result()
        assert took > config.bot.heartbeat_timeout_seconds  # the case: a run longer than the timeout
        assert all(ok for ok, _, _ in looks), [look for look in looks if not look[0]]
        # The gauge Prometheus reads says the same as the age /healthz judges by.
        assert all(age is not None and abs(gauge - age) < 0.5 for _, age, gauge in looks), looks
    finally:
        await bot.stop()


async def test_a_reconciliation_stuck_on_one_answer_is_a_stalled_loop(tmp_path) -> None:
    """A step of the reconciliation is progress, a wait inside one is not: an answer held longer than the heartbeat
    timeout leaves the loop stalled for /healthz (so the watchdog's pings stop) and for the gauge Prometheus reads
    (TradingBotHeartbeatStale), and the loop progresses again once the run has ended."""
    config = fast_config(tmp_path)
    timeout = config.bot.heartbeat_timeout_seconds
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    await bot.start("127.0.0.1", 0)
    try:
        await wait_for(lambda: bot.metrics.heartbeat_age() is not None)
        bot.paper_venue.query_latency = 4 * timeout + 1.0
        run = asyncio.create_task(bot.reconcile(Trigger.COMMAND))
        await wait_for(lambda: not bot.loop_progressing(), timeout=30)
        assert heartbeat_gauge_age(bot) > timeout
        assert not run.done()
        bot.paper_venue.query_latency = 0.0  # the rest of the run answered at once
        assert (await run)["result"] in ("clean", "resolved")
        await wait_for(bot.loop_progressing, timeout=30)
    finally:
        await bot.stop()


async def test_keep_policy_leaves_working_orders_on_the_venue_and_the_next_start_takes_them_back(tmp_path) -> None:
    config = fast_config(tmp_path, order_max_age_seconds=60)
    config.recovery.open_orders_on_shutdown = "keep"
    # What `keep` keeps is the bot's: no dead man's switch to cancel it at the venue between the two starts (on a busy
    # machine the second start came after the switch's timeout, and the venue had cancelled the kept orders).
    config.bot.dead_man_switch.enabled = False
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    await bot.start("127.0.0.1", 0)
    await wait_for(lambda: counter_total(bot, "tradingbot_fills") > 0, timeout=20)
    mid = bot.broker.quote("BTC-USD").mid
    far = await submit_fresh(
        bot, "BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), (mid * Decimal("0.8")).quantize(CENT)
    )
    assert far is not None and far.status.is_open
    await bot.stop()
    kept = [o.key for o in bot.paper_venue.book.open.values()]
    assert far.key in kept  # nothing canceled it
    run = await asyncio.to_thread(bot.recovery_store.last_run)
    assert run is not None and run.clean_shutdown and run.stop_reason == "stop"
    # The next start (same venue, nothing happened meanwhile) finds them in the journal, clean, and works them.
    again = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), venue=bot.paper_venue)
    again.inst.state.apply("pause")
    await again.start("127.0.0.1", 0)
    try:
        assert again.crash is None
        assert again.reconciler.last is not None and again.reconciler.last["result"] == "clean"
        assert sorted(again.orders) == sorted(kept)
    finally:
        await again.stop()


async def test_a_failed_cancel_at_shutdown_is_named_and_the_next_start_is_no_crash(tmp_path) -> None:
    """The venue is unreachable at SIGTERM: the orders cannot be canceled. The local steps still run, so the run is
    marked clean (it stopped in order) and its stop reason names what the venue did not confirm; the process would
    exit 1 saying so (`orders_left_open`); the next start is no crash and reconciles with the venue as always."""
    config = fast_config(tmp_path)
    config.recovery.crash_timeout_seconds = 3600  # a wait for an old heartbeat would hang this test
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    await bot.start("127.0.0.1", 0)
    await wait_for(lambda: bot.orders, timeout=20)
    await bot.paper_venue.drop_connection()
    await bot.shutdown("SIGTERM")
    run = await asyncio.to_thread(bot.recovery_store.last_run)
    assert run is not None and run.clean_shutdown and run.stopped_at is not None
    assert run.stop_reason == "SIGTERM; unconfirmed at the venue: open orders: cancel"
    assert bot.orders_left_open.startswith("shutdown could not confirm the cancel of its open orders (")
    await bot.paper_venue.clear_faults()
    again = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), venue=bot.paper_venue)
    async with asyncio.timeout(30):
        await again.start("127.0.0.1", 0)
    try:
        assert again.crash is None
        assert again.reconciler.last is not None and again.reconciler.last["result"] in ("clean", "resolved")
        events = await again.journal.call(again.recovery_store.events)
        assert [e.kind for e in events] == []
    finally:
        await again.stop()


async def test_the_whole_shutdown_is_under_one_deadline(tmp_path) -> None:
    """A step after the clean marker (the HTTP server's stop) hangs: the deadline still ends the shutdown and names
    it, and the marker written before it stands."""
    config = fast_config(tmp_path)
    config.recovery.shutdown_deadline_seconds = 0.5
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    await bot.start("127.0.0.1", 0)
    server_stop = bot.inst.stop

    async def stuck() -> None:
        await asyncio.Event().wait()

    bot.inst.stop = stuck  # type: ignore[method-assign]
    try:
        with pytest.raises(ShutdownDeadlineExceeded) as info:
            async with asyncio.timeout(30):  # a shutdown without a deadline on this step would hang here
                await bot.shutdown("SIGTERM")
        assert info.value.unfinished == [
            "stop the HTTP server",
            "close the journal",
            "release the single-instance lock",
        ]
        run = RecoveryStore(bot.engine, "paper-1", "paper").last_run()
        assert run is not None and run.clean_shutdown
    finally:
        await server_stop()


async def test_the_paper_bot_exports_no_created_series(tmp_path) -> None:
    # prometheus_client's switch is process-wide: turn it back on so only the bot can turn it off.
    enable_created_metrics()
    paper_bot = PaperBot(fast_config(tmp_path), token=TOKEN, registry=CollectorRegistry(), chaos=False)
    port = await paper_bot.start("127.0.0.1", 0)
    try:
        await wait_for(lambda: counter_total(paper_bot, "tradingbot_fills") >= 1, timeout=20)
        status, body = await get(port, "/metrics")
    finally:
        await paper_bot.stop()
    assert status == 200 and "tradingbot_fills_total" in body
    assert [line for line in body.splitlines() if "_created" in line] == []


async def idle_bot(tmp_path, **paper: object) -> PaperBot:
    """A started bot whose strategy places nothing: the test places exactly what it needs."""
    bot = PaperBot(fast_config(tmp_path, **paper), token=TOKEN, registry=CollectorRegistry(), chaos=True)
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    # Its quotes stream: the first of each symbol arrives after the start, on the public endpoint.
    await wait_for(lambda: not any(bot.market_data_stale(s) for s in bot.symbols))
    return bot


async def test_halt_waits_for_the_step_in_progress_and_nothing_goes_out_after_it(tmp_path) -> None:
    """The kill switch comes in while a strategy step is sending its first order (the venue answers after 50 ms)
    and has more symbols to quote: the command answers once that step ended and its orders are canceled. After
    it nothing is sent, nothing fills and nothing is left working."""
    config = fast_config(tmp_path, order_latency_seconds=0.05, order_max_age_seconds=60, partial_fill_probability=0)
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    venue = bot.paper_venue
    original = venue.submit
    sent: list[str] = []
    first_in_flight = asyncio.Event()

    async def submit(request: OrderRequest) -> VenueOrder:
        sent.append(request.client_order_id)
        if request.symbol == config.paper.symbols[0]:
            first_in_flight.set()
        return await original(request)

    venue.submit = submit  # type: ignore[method-assign]
    await bot.start("127.0.0.1", 0)
    try:
        async with asyncio.timeout(20):
            await first_in_flight.wait()  # a step is inside the venue's submit, the other symbols still to quote
        await bot.inst.control.run("halt", {})
        sent_at_halt = len(sent)
        await bot.broker.drain_events()  # the fills the venue made before the halt, still on the stream
        fills_at_halt = counter_total(bot, "tradingbot_fills")
        assert await venue.open_orders() == []
        iterations = sample(bot, "tradingbot_loop_iterations_total") or 0
        await wait_for(lambda: (sample(bot, "tradingbot_loop_iterations_total") or 0) >= iterations + 10)
        await bot.broker.drain_events()
        assert sent[sent_at_halt:] == []
        assert counter_total(bot, "tradingbot_fills") == fills_at_halt
        assert await venue.open_orders() == []
    finally:
        await bot.stop()


async def test_an_order_whose_journal_write_outlasts_a_pause_is_not_sent(tmp_path) -> None:
    """The state is checked again right before the venue: a pause that lands while the order is being journaled
    keeps it off the venue, and the journal says why it never went."""
    bot = await idle_bot(tmp_path)
    try:
        journal_submitted = bot.journal.order_submitted

        def paused_meanwhile(request: OrderRequest, strategy: str) -> None:
            journal_submitted(request, strategy)
            bot.inst.state.apply("pause", reason="while journaling")

        bot.journal.order_submitted = paused_meanwhile  # type: ignore[method-assign]
        assert await bot.submit("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01")) is None
        assert await bot.broker.open_orders() == [] and await bot.broker.recent_fills() == []
        with make_sessionmaker(bot.engine)() as session:
            [row] = session.scalars(select(Order)).all()
        assert (row.status, row.reject_reason) == ("rejected", "refused: trading_state")
        refused = sample(
            bot,
            "tradingbot_orders_refused_total",
            venue="paper",
            strategy="demo",
            symbol="BTC-USD",
            reason="trading_state",
        )
        assert refused == 1
        # While paused nothing goes out, reduce-only included; reduce_only lets only reduce-only orders through.
        assert await bot.submit("BTC-USD", Side.SELL, OrderType.MARKET, Decimal("0.01"), reduce_only=True) is None
        bot.inst.state.apply("reduce_only")
        assert bot.order_refusal("BTC-USD", reduce_only=False) == "only reduce-only orders while reduce_only"
        assert bot.order_refusal("BTC-USD", reduce_only=True) is None
    finally:
        await bot.stop()


async def test_kill_switch_and_shutdown_cancel_the_bots_orders_it_does_not_track(tmp_path) -> None:
    """Orders of the bot the venue works but the bot does not track: one a previous run journaled (its answer was
    lost in a crash), one this run sent whose answer it never applied. The kill switch cancels both, and so does
    the shutdown (or it writes no clean marker); an order placed by hand stays, for reconciliation's policy."""
    bot = await idle_bot(tmp_path, order_max_age_seconds=60)
    stopped = False
    try:
        far = (bot.broker.quote("BTC-USD").mid * Decimal("0.8")).quantize(CENT)

        async def untracked(client_order_id: str, journaled: bool) -> str:
            request = OrderRequest(client_order_id, "BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), far)
            if journaled:
                await bot.journal.call(bot.journal.order_submitted, request, "demo")
            await bot.broker.submit(request)  # straight to the venue: the bot does not track it
            assert client_order_id not in bot.orders
            return client_order_id

        previous_run = await untracked("paper-1-previous-run-1", journaled=True)
        answer_lost = await untracked(bot.order_engine.next_client_order_id(), journaled=False)
        by_hand = await bot.paper_venue.place_external_order("BTC-USD", Side.BUY, Decimal("0.01"), far)
        assert {o.key for o in await bot.broker.open_orders()} == {previous_run, answer_lost, by_hand.key}
        status, body = await control(bot.port, "halt")
        assert status == 200, body
        assert [o.key for o in await bot.broker.open_orders()] == [by_hand.key]

        kept_from_before = await untracked("paper-1-previous-run-2", journaled=True)
        await bot.stop()  # open_orders_on_shutdown: cancel
        stopped = True
        assert bot.paper_venue.book.orders[bot.paper_venue.book.by_client[kept_from_before]].status.value == "canceled"
        assert [o.key for o in bot.paper_venue.book.open.values()] == [by_hand.key]
        run = await asyncio.to_thread(bot.recovery_store.last_run)
        assert run is not None and run.clean_shutdown
    finally:
        if not stopped:
            await bot.stop()


async def test_no_new_risk_after_a_reconnect_until_its_reconciliation_passes(tmp_path) -> None:
    """Fills made while the orders channel was down reach the bot only through the reconciliations that follow
    the reconnect (the streaming broker's REST one, the bot's own): until the bot's passes, no order that can add
    risk goes out (the book may be stale) and /readyz says so; a reduce-only order may go."""
    bot = await idle_bot(tmp_path, partial_fill_probability=0)
    try:
        assert (await control(bot.port, "drop_connection"))[0] == 200
        hidden = await bot.paper_venue.inject_hidden_fill("ETH-USD", Decimal("1"))  # a fill the bot never hears of
        async with bot._trade_lock:  # the reconciliation the reconnect asks for has to wait for this
            assert (await control(bot.port, "reconnect"))[0] == 200
            assert not bot.market_data_stale("BTC-USD")
            waiting = "the reconciliation after the orders channel reconnected has not passed"
            assert bot.order_refusal("BTC-USD", reduce_only=False) == waiting
            assert await bot.submit("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01")) is None
            status, body = await get(bot.port, "/readyz")
            assert status == 503 and "reconnected" in body
            closing = await bot.submit("ETH-USD", Side.SELL, OrderType.MARKET, Decimal("0.5"), reduce_only=True)
            assert closing is not None and closing.status.value == "filled"
        await wait_for(lambda: not bot.reconnect_reconciliation_pending)
        last = bot.reconciler.last
        # The streaming broker reconciles over REST as its stream comes back (and before the bot's snapshot, while
        # it is not back), so the hidden fill reaches the bot by its poll and the bot's reconciliation finds it
        # delivered (clean) or, when its snapshot came first, adopts it (resolved); never anything else.
        assert last is not None and last["trigger"] == "reconnect" and last["result"] in ("clean", "resolved"), last
        assert {d["key"] for d in last["discrepancies"]} <= {hidden.trade_id}, last["discrepancies"]
        assert bot.book.position("ETH-USD") == Decimal("0.5") == (await bot.broker.positions())["ETH-USD"]
        assert bot.order_refusal("BTC-USD", reduce_only=False) is None
        labels = {"venue": "paper", "strategy": "demo", "symbol": "BTC-USD", "reason": "reconnect_reconciliation"}
        assert sample(bot, "tradingbot_orders_refused_total", **labels) == 1
        assert (await get(bot.port, "/readyz"))[0] == 200
    finally:
        await bot.stop()


async def test_a_reconnect_reconciliation_that_did_not_pass_is_retried_and_counted_as_the_reconnects(tmp_path) -> None:
    """The venue back, its positions query still failing for a moment: the run after the reconnect ends unknown, and
    the retry that passes (the schedule's, seconds later) is the reconnect's too, counted as such: the passed
    reconnect reconciliation that allows new risk again is in tradingbot_reconciliation_runs_total{trigger="reconnect"}
    (what the fleet's stack test asks Prometheus for), not a scheduled run."""
    bot = await idle_bot(tmp_path)
    bot.config.recovery.reconcile_retry_seconds = 0.2  # the retry after a run that did not pass: 0.4 s, 0.8 s, ...
    runs = "tradingbot_reconciliation_runs_total"

    def passed(trigger: str) -> float:
        return sum(sample(bot, runs, venue="paper", trigger=trigger, result=r) or 0 for r in ("clean", "resolved"))

    try:
        assert (await control(bot.port, "drop_connection"))[0] == 200
        await bot.paper_venue.fail_queries(["positions"], 1.0)
        assert (await control(bot.port, "reconnect"))[0] == 200
        await wait_for(lambda: sample(bot, runs, venue="paper", trigger="reconnect", result="unknown"))
        await wait_for(lambda: not bot.reconnect_reconciliation_pending, timeout=20)
        assert bot.reconciler.last is not None and bot.reconciler.last["trigger"] == "reconnect", bot.reconciler.last
        assert passed("reconnect") == 1
        assert passed("schedule") == 0
    finally:
        await bot.stop()


async def test_a_second_instance_of_the_same_bot_does_not_start(tmp_path) -> None:
    """The single-instance lock (same host): a second bot with the same name and data directory is refused before
    it reads or writes anything, naming the holder; once the first stopped, the bot starts again."""
    config = fast_config(tmp_path)
    first = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    await first.start("127.0.0.1", 0)
    try:
        holder = rf"bot 'paper-1' is already running: pid {os.getpid()} on {re.escape(socket.gethostname())} since "
        with pytest.raises(AnotherInstanceRunning, match=holder):
            PaperBot(config, token=TOKEN, registry=CollectorRegistry())
        assert first.trading_allowed and first.instance_lock.held
    finally:
        await first.stop()
    again = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    await again.start("127.0.0.1", 0)
    try:
        assert again.crash is None  # the first stopped cleanly
    finally:
        await again.stop()


async def test_a_start_takes_the_book_from_the_journaled_positions_not_by_replaying_fills(tmp_path) -> None:
    """The fills of earlier days were archived out of the journal (or there are simply many): a start restores the
    positions the journal holds and today's realized P&L from today's fills."""
    config = fast_config(tmp_path)
    engine = make_engine(config.database_url())
    journal = Journal(engine, "paper-1", "paper")
    # Earlier: 1 BTC bought at 100 (that fill archived since). Today: half of it sold at 110, 5 realized.
    sold = VenueFill(
        "T2", "c-2", "P2", "BTC-USD", Side.SELL, Decimal("0.5"), Decimal(110), Decimal(0), "USD", "taker", utcnow()
    )
    await journal.call(journal.fill, sold, (Decimal("0.5"), Decimal(100), Decimal(5)), None, Decimal(5))
    journal.close()
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), engine=engine)
    try:
        await bot.order_engine.restore_book()
        holding = bot.book.holding("BTC-USD")
        assert (holding.quantity, holding.average_price, bot.book.realized_today) == (
            Decimal("0.5"),
            Decimal(100),
            Decimal(5),
        )
        assert sample(bot, "tradingbot_position_quantity", venue="paper", symbol="BTC-USD") == 0.5
    finally:
        bot.journal.close()
        bot.instance_lock.release()
        engine.dispose()
