"""The paper-trading bot end to end in-process: it trades, journals, exports, obeys control and every fault."""

from __future__ import annotations

from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from tests.paper_helpers import AUTH, TOKEN, control, fast_config, get, wait_for
from trading_ops.bot.broker import Channel
from trading_ops.db.base import make_sessionmaker
from trading_ops.db.models import Fill, Order, Position
from trading_ops.paper.bot import PaperBot


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


def total_fills(bot: PaperBot) -> float:
    return sum(
        s.value
        for f in bot.inst.registry.collect()
        if f.name == "tradingbot_fills"
        for s in f.samples
        if s.name == "tradingbot_fills_total"
    )


async def test_trades_continuously_and_journals_everything(bot: PaperBot) -> None:
    await wait_for(lambda: total_fills(bot) >= 10, timeout=20)
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
    fills_before = total_fills(bot)
    await wait_for(
        lambda: (sample(bot, "tradingbot_venue_errors_total", venue="paper", error_class="network") or 0) > 1
    )
    assert total_fills(bot) == fills_before  # nothing trades while the venue is unreachable
    status, body = await control(bot.port, "reconnect")
    assert status == 200 and body["connected"] == {"orders": True, "market_data": True}
    assert sample(bot, "tradingbot_broker_reconnects_total", venue="paper", channel="orders") == 1
    await wait_for(lambda: total_fills(bot) > fills_before, timeout=20)


async def test_stale_market_data_until_resubscribe(bot: PaperBot) -> None:
    await wait_for(lambda: bot.metrics.market_data_age("ETH-USD") is not None)
    status, _ = await control(bot.port, "stale_market_data", {"symbol": "ETH-USD"})
    assert status == 200
    await wait_for(lambda: (bot.metrics.market_data_age("ETH-USD") or 0) > 0.4)
    status, body = await get(bot.port, "/readyz")
    assert status == 503 and "ETH-USD" in body
    assert (bot.metrics.market_data_age("BTC-USD") or 99) < 0.3  # the other symbols keep flowing
    assert (await control(bot.port, "resubscribe", {"symbol": "ETH-USD"}))[0] == 200
    await wait_for(lambda: (bot.metrics.market_data_age("ETH-USD") or 99) < 0.1)
    assert (await control(bot.port, "stale_market_data", {"symbol": "DOGE-USD"}))[0] == 400


async def test_hang_loop_stops_the_heartbeat(bot: PaperBot) -> None:
    await wait_for(lambda: (sample(bot, "tradingbot_loop_iterations_total") or 0) > 2)
    assert (await get(bot.port, "/healthz"))[0] == 200
    assert (await control(bot.port, "hang_loop", {"seconds": 30}))[0] == 200
    await wait_for(lambda: (bot.metrics.heartbeat_age() or 0) > 0.6)
    status, body = await get(bot.port, "/healthz")
    assert status == 503 and "stalled" in body
    iterations = sample(bot, "tradingbot_loop_iterations_total")
    assert (await control(bot.port, "clear_chaos"))[0] == 200
    await wait_for(lambda: sample(bot, "tradingbot_loop_iterations_total") > iterations)
    assert (await get(bot.port, "/healthz"))[0] == 200


async def test_leak_memory_and_fill_disk(bot: PaperBot) -> None:
    status, body = await control(bot.port, "leak_memory", {"mib_per_second": 200, "max_mib": 20})
    assert status == 200
    await wait_for(lambda: bot.chaos is not None and bot.chaos.status()["leaked_mib"] >= 20)
    status, body = await control(bot.port, "fill_disk", {"mib_per_second": 200, "max_mib": 5})
    scratch = bot.data_dir / "scratch"
    await wait_for(lambda: sum(p.stat().st_size for p in scratch.glob("fill-*.bin")) == 5 * 1024 * 1024)
    await wait_for(lambda: "fill_disk" not in bot.chaos._tasks)  # it stops at max_mib
    assert (await control(bot.port, "clear_chaos"))[0] == 200
    assert not scratch.exists()
    assert bot.chaos is not None and bot.chaos.status()["leaked_mib"] == 0
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
    finally:
        await bot.stop()


async def _loss_spike(bot: PaperBot) -> None:
    await wait_for(lambda: sum(abs(bot.book.notional(s)) for s in bot.config.paper.symbols) > 500, timeout=20)
    limit = bot.config.paper.daily_loss_limit
    assert bot.inst.state.state.value == "active"
    status, body = await control(bot.port, "loss_spike")
    assert status == 200, body
    await wait_for(lambda: bot.inst.state.state.value == "reduce_only", timeout=10)
    realized = sample(bot, "tradingbot_realized_pnl", venue="paper", strategy="demo") or 0
    unrealized = sample(bot, "tradingbot_unrealized_pnl", venue="paper", strategy="demo") or 0
    assert -(realized + unrealized) >= limit


async def test_flatten_closes_every_position_then_pauses(bot: PaperBot) -> None:
    await wait_for(lambda: sum(1 for s in bot.config.paper.symbols if bot.book.position(s)) >= 2, timeout=20)
    status, body = await control(bot.port, "flatten")
    assert status == 200 and body["state"] == "flattening"
    await wait_for(lambda: bot.inst.state.state.value == "paused", timeout=20)
    assert all(bot.book.position(s) == 0 for s in bot.config.paper.symbols)
    assert all(q == 0 for q in (await bot.broker.positions()).values())


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
        for fault in (
            "hang_loop",
            "crash",
            "drop_connection",
            "stale_market_data",
            "leak_memory",
            "fill_disk",
            "position_drift",
            "loss_spike",
            "clear_chaos",
        ):
            assert (await control(port, fault))[0] == 404, fault
        assert (await control(port, "reconnect", headers=AUTH))[0] == 200
    finally:
        await paper_bot.stop()
