"""In-process risk limits: each limit's breach stops the order that would cross it, before it leaves, against the
real paper venue; the bot moves to reduce-only (halted for the loss limit) at once, and says so in its metrics."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.paper_helpers import TOKEN, IdleStrategy, control, fast_config, wait_for
from trading_ops.bot.broker import OrderType, Side
from trading_ops.bot.risk import LIMITS
from trading_ops.bot.runtime import BotRuntime, risk_limits
from trading_ops.config import ConfigError, parse_config
from trading_ops.paper.bot import PaperBot, make_venue

SYMBOL = "BTC-USD"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def risk_bot(tmp_path: Path, **risk: Any) -> PaperBot:
    """A started paper bot placing nothing by itself, with these bot.risk limits (and no daily loss limit unless
    given), its market data fresh."""
    config = fast_config(tmp_path, partial_fill_probability=0.0)
    config.bot.risk.daily_loss_limit = 0.0
    for key, value in risk.items():
        setattr(config.bot.risk, key, value)
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), chaos=True)
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    await wait_for(lambda: bot.trading_allowed and not bot.market_data_stale(SYMBOL))
    return bot


def value(bot: PaperBot, name: str, **labels: str) -> float:
    return bot.inst.registry.get_sample_value(name, {"venue": "paper", "strategy": "demo", **labels}) or 0.0


def commanded(bot: PaperBot, command: str, source: str) -> float:
    """tradingbot_control_commands_total{command, source}: who changed the bot's state (a board's annotation)."""
    labels = {"command": command, "source": source}
    return bot.inst.registry.get_sample_value("tradingbot_control_commands_total", labels) or 0.0


def size_for(bot: PaperBot, notional: float, symbol: str = SYMBOL) -> Decimal:
    mid = bot.broker.quote(symbol).mid  # type: ignore[attr-defined]
    return (Decimal(str(notional)) / mid).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)


def far_bid(bot: PaperBot, symbol: str = SYMBOL) -> Decimal:
    """A buy limit price that rests on the book (half the mid)."""
    return (bot.broker.quote(symbol).mid / 2).quantize(Decimal("0.01"))  # type: ignore[attr-defined]


def assert_refused_for(bot: PaperBot, limit: str, state: str = "reduce_only") -> None:
    assert value(bot, "tradingbot_orders_refused_total", symbol=SYMBOL, reason=f"risk_{limit}") == 1
    assert value(bot, "tradingbot_risk_limit_breaches_total", limit=limit) == 1
    assert bot.inst.state.state.value == state
    assert bot.inst.state.reason.startswith(f"risk limit {limit}")
    assert commanded(bot, state if state != "halted" else "halt", "risk") == 1  # the bot's own limits did it


async def test_max_order_notional_refuses_the_order_over_it(tmp_path: Path) -> None:
    bot = await risk_bot(tmp_path, max_order_notional=500.0)
    try:
        assert value(bot, "tradingbot_risk_limit", limit="order_notional") == 500
        placed = await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 400), far_bid(bot))
        assert placed is not None
        before = len(await bot.broker.open_orders())
        assert await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 2_000) * 2, far_bid(bot)) is None
        assert len(await bot.broker.open_orders()) == before == 1  # it never reached the venue
        assert_refused_for(bot, "order_notional")
        # Reduce-only from now on: a new position is refused by the state, without another breach.
        assert await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 100), far_bid(bot)) is None
        assert value(bot, "tradingbot_risk_limit_breaches_total", limit="order_notional") == 1
    finally:
        await bot.stop()


async def test_max_position_notional_refuses_the_order_that_would_take_the_position_past_it(tmp_path: Path) -> None:
    bot = await risk_bot(tmp_path, max_position_notional=1_500.0)
    try:
        assert await bot.submit(SYMBOL, Side.BUY, OrderType.MARKET, size_for(bot, 1_000)) is not None
        await wait_for(lambda: bot.book.position(SYMBOL) > 0)
        held = bot.book.position(SYMBOL)
        assert await bot.submit(SYMBOL, Side.BUY, OrderType.MARKET, size_for(bot, 1_000)) is None
        await bot.broker.drain_events()
        assert (await bot.broker.positions())[SYMBOL] == held  # the second buy never reached the venue
        assert_refused_for(bot, "position_notional")
        # Shrinking the position is still allowed (and not held to the position limit).
        assert await bot.submit(SYMBOL, Side.SELL, OrderType.MARKET, held, reduce_only=True) is not None
        await wait_for(lambda: bot.book.position(SYMBOL) == 0)
    finally:
        await bot.stop()


async def test_max_open_orders_refuses_the_order_past_the_count(tmp_path: Path) -> None:
    bot = await risk_bot(tmp_path, max_open_orders=2)
    try:
        for _ in range(2):
            assert await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 100), far_bid(bot)) is not None
        assert await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 100), far_bid(bot)) is None
        assert len(await bot.broker.open_orders()) == 2
        assert_refused_for(bot, "open_orders")
    finally:
        await bot.stop()


async def test_orders_per_minute_refuses_the_order_over_the_rate(tmp_path: Path) -> None:
    bot = await risk_bot(tmp_path, max_orders_per_minute=3.0)
    try:
        for _ in range(3):
            assert await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 100), far_bid(bot)) is not None
        assert await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 100), far_bid(bot)) is None
        assert len(await bot.broker.open_orders()) == 3
        assert_refused_for(bot, "orders_per_minute")
    finally:
        await bot.stop()


async def test_orders_per_second_refuses_the_order_over_the_rate_and_the_window_slides(tmp_path: Path) -> None:
    bot = await risk_bot(tmp_path, max_orders_per_second=2.0)
    clock = FakeClock()
    bot.risk.clock = clock
    try:
        for _ in range(2):
            assert await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 100), far_bid(bot)) is not None
        assert await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 100), far_bid(bot)) is None
        assert len(await bot.broker.open_orders()) == 2
        assert_refused_for(bot, "orders_per_second")
        # A second later the window has room again: once an operator resumes, the next order goes out.
        clock.now += 1.0
        assert (await control(bot.port, "resume"))[0] == 200  # type: ignore[attr-defined]
        assert await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 100), far_bid(bot)) is not None
        assert value(bot, "tradingbot_risk_limit_breaches_total", limit="orders_per_second") == 1
    finally:
        await bot.stop()


async def test_daily_loss_limit_halts_at_once_and_survives_a_restart(tmp_path: Path) -> None:
    bot = await risk_bot(tmp_path, daily_loss_limit=40.0)
    config = bot.config
    try:
        assert await bot.submit(SYMBOL, Side.BUY, OrderType.MARKET, size_for(bot, 2_000)) is not None
        await wait_for(lambda: bot.book.position(SYMBOL) > 0)
        resting = await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 100), far_bid(bot))
        assert resting is not None
        await bot.broker.gap_price(SYMBOL, -0.05)  # type: ignore[attr-defined]  # about 100 lost
        await wait_for(lambda: bot.inst.state.state.value == "halted")
        assert bot.inst.state.reason.startswith("risk limit daily_loss")
        assert value(bot, "tradingbot_risk_limit_breaches_total", limit="daily_loss") == 1
        assert commanded(bot, "halt", "risk") == 1
        await wait_for(lambda: not bot.orders)  # the kill switch swept the resting order off the venue
        assert await bot.broker.open_orders() == []
        assert await bot.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(bot, 100), far_bid(bot)) is None
        status, body = await control(bot.port, "resume")  # type: ignore[attr-defined]
        assert status == 409 and body["state"] == "halted"
        status, body = await control(bot.port, "status")  # type: ignore[attr-defined]
        assert body["risk_limits"] == {"daily_loss": 40.0} and body["state_reason"].startswith("risk limit daily_loss")
    finally:
        await bot.stop()
    # The halt never clears by itself: a restart comes back halted, for the same reason.
    again = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    again.strategy = IdleStrategy()  # type: ignore[assignment]
    port = await again.start("127.0.0.1", 0)
    try:
        assert again.inst.state.state.value == "halted"
        assert again.inst.state.reason.startswith("risk limit daily_loss")
        assert commanded(again, "halt", "risk") == 1  # halted again at the start: by the risk limit, not a person
        # An operator clears it; an order that could add risk is still refused while the loss is past the limit,
        # and it halts the bot again.
        assert (await control(port, "clear_halt"))[0] == 200
        assert (await control(port, "resume"))[0] == 200
        await wait_for(lambda: again.trading_allowed and not again.market_data_stale(SYMBOL))
        assert await again.submit(SYMBOL, Side.BUY, OrderType.LIMIT, size_for(again, 100), far_bid(again)) is None
        assert value(again, "tradingbot_orders_refused_total", symbol=SYMBOL, reason="risk_daily_loss") == 1
        assert again.inst.state.state.value == "halted"
        assert commanded(again, "clear_halt", "operator") == 1 and commanded(again, "halt", "risk") == 2
    finally:
        await again.stop()


async def test_risk_limits_are_configured_under_bot_risk_and_only_the_paper_bot_reads_the_old_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """paper.daily_loss_limit is the paper bot's (where its limit used to live); any other bot without
    bot.risk.daily_loss_limit has no loss limit, and says so when it starts."""
    old = fast_config(tmp_path / "old", daily_loss_limit=123)
    assert old.bot.risk.daily_loss_limit is None
    paper = PaperBot(old, token=TOKEN, registry=CollectorRegistry())
    other = BotRuntime(
        fast_config(tmp_path / "other", daily_loss_limit=123),
        make_venue(old),
        IdleStrategy(),
        symbols=[SYMBOL],
        token=TOKEN,
        registry=CollectorRegistry(),
    )
    try:
        assert paper.risk.limits.daily_loss == 123 and other.risk.limits.daily_loss == 0
        assert "bot paper-1 trades without a daily loss limit: set bot.risk.daily_loss_limit" in caplog.text
        assert other.status()["risk_limits"] == {}
    finally:
        for bot in (paper, other):
            await bot.stop()
    new = parse_config(
        {"paper": {"daily_loss_limit": 123}, "bot": {"risk": {"daily_loss_limit": 50, "max_open_orders": 4}}},
        base_dir=tmp_path,
    )
    assert new.bot.risk.daily_loss_limit == 50 and new.bot.risk.max_open_orders == 4
    assert risk_limits(new).daily_loss == risk_limits(new, daily_loss_default=123).daily_loss == 50
    for bad, problem in (
        ({"max_open_orders": -1}, "bot.risk.max_open_orders: must be at least 0"),
        ({"max_orders_per_second": "fast"}, "bot.risk.max_orders_per_second: expected a number"),
        ({"daily_loss_limit": -5}, "bot.risk.daily_loss_limit: must be at least 0"),
        ({"max_loss": 1}, "bot.risk.max_loss: unknown key"),
    ):
        with pytest.raises(ConfigError, match=problem):
            parse_config({"bot": {"risk": bad}}, base_dir=tmp_path)


def test_every_limit_has_a_refusal_reason_and_an_action() -> None:
    from trading_ops.bot.risk import ACTION, REFUSED_PREFIX

    assert set(ACTION) == set(LIMITS)
    halting = {"daily_loss", "drawdown"}
    assert {ACTION[x] for x in halting} == {"halt"}
    assert {ACTION[x] for x in LIMITS if x not in halting} == {"reduce_only"}
    assert all(f"{REFUSED_PREFIX}{x}".isidentifier() for x in LIMITS)
