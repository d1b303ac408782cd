"""Reconciliation of the journal against the paper venue, in-process: each fault is found as its class, resolved
by its policy, stored and exported, and a second run finds nothing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from tests.paper_helpers import TOKEN, control, fast_config
from trading_ops.bot.broker import OrderType, Side, VenueFill
from trading_ops.bot.reconciliation import JournalFill, JournalSnapshot, Trigger, VenueSnapshot, classify
from trading_ops.config import ConfigError, parse_config
from trading_ops.paper.bot import PaperBot

# The strategy and the venue's clock stay still: only what a test does happens.
QUIET = {"loop_interval_seconds": 3600, "tick_interval_seconds": 3600, "partial_fill_probability": 0.0}


async def quiet_bot(tmp_path, policies: dict[str, str] | None = None) -> PaperBot:
    config = fast_config(tmp_path, **QUIET)
    if policies:
        config.recovery.policies.update(policies)
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), chaos=True)
    bot.inst.state.apply("pause")  # the strategy places nothing; the tests place what they need
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    return bot


@pytest.fixture
async def bot(tmp_path):
    paper_bot = await quiet_bot(tmp_path)
    try:
        yield paper_bot
    finally:
        await paper_bot.stop()


def kinds(summary: dict) -> list[tuple[str, str, str]]:
    return [(d["kind"], d["key"], d["outcome"]) for d in summary["discrepancies"]]


async def resting_order(bot: PaperBot, symbol: str = "ETH-USD", side: Side = Side.BUY) -> str:
    mid = bot.broker.quote(symbol).mid
    price = (mid * Decimal("0.98") if side is Side.BUY else mid * Decimal("1.02")).quantize(Decimal("0.01"))
    order = await bot.submit(symbol, side, OrderType.LIMIT, Decimal("0.1"), price)
    assert order is not None and order.status.is_open
    return order.client_order_id


def sample(bot: PaperBot, name: str, **labels: str) -> float | None:
    return bot.inst.registry.get_sample_value(name, labels)


async def test_startup_run_is_clean_and_opens_the_gate(bot: PaperBot) -> None:
    assert bot.trading_allowed and bot.orders == {}
    assert bot.reconciler.last is not None and bot.reconciler.last["result"] == "clean"
    assert sample(bot, "tradingbot_reconciliation_runs_total", venue="paper", trigger="startup", result="clean") == 1
    assert sample(bot, "tradingbot_reconciliation_last_success_timestamp_seconds", venue="paper")
    status, body = await control(bot.port, "status")
    assert status == 200 and body["reconciliation"]["result"] == "clean"


async def test_crash_between_fill_and_journal_write_is_adopted(bot: PaperBot) -> None:
    coid = await resting_order(bot)
    fill = await bot.broker.fill_without_notifying(coid)
    status, result = await control(bot.port, "reconcile")
    assert status == 200 and result["result"] == "resolved" and result["trigger"] == "command"
    assert kinds(result) == [
        ("missing_fill", fill.trade_id, "adopted"),
        ("order_state_mismatch", coid, "adopted"),
    ]
    assert bot.book.position("ETH-USD") == Decimal("0.1") == (await bot.broker.positions())["ETH-USD"]
    assert coid not in bot.orders
    journal = await bot.journal.call(bot.journal.balances)
    assert journal == {a: b for a, b in (await bot.broker.balances()).items() if a in journal}
    assert sample(bot, "tradingbot_reconciliation_discrepancies_total", venue="paper", discrepancy="missing_fill") == 1
    assert sample(bot, "tradingbot_position_mismatch_quantity", venue="paper", symbol="ETH-USD") == 0
    # Idempotent: the second run changes nothing and finds nothing.
    _, again = await control(bot.port, "reconcile")
    assert again["result"] == "clean" and again["discrepancies"] == []
    runs = await bot.journal.call(bot.recovery_store.reconciliation_runs)
    assert [(r.trigger, r.result, r.discrepancies) for r in runs] == [
        ("startup", "clean", 0),
        ("command", "resolved", 2),
        ("command", "clean", 0),
    ]
    stored = await bot.journal.call(bot.recovery_store.discrepancies, runs[1].id)
    assert [(d.kind, d.key, d.policy, d.outcome) for d in stored] == [
        ("missing_fill", fill.trade_id, "adopt", "adopted"),
        ("order_state_mismatch", coid, "adopt", "adopted"),
    ]


async def test_partial_fill_unseen_and_a_vanished_order(bot: PaperBot) -> None:
    partial = await resting_order(bot, "BTC-USD")
    gone = await resting_order(bot, "SOL-USD", Side.SELL)
    fill = await bot.broker.fill_without_notifying(partial, Decimal("0.04"))
    # The venue cancels an order and the event is lost (as while the bot was down).
    order = bot.broker._orders[gone]
    bot.broker._set_status(order, order.status.__class__("canceled"))
    result = await bot.reconcile(Trigger.COMMAND)
    assert kinds(result) == [
        ("missing_fill", fill.trade_id, "adopted"),
        ("order_state_mismatch", partial, "adopted"),
        ("vanished_order", gone, "adopted"),
    ]
    assert bot.orders[partial].filled_quantity == Decimal("0.04") and gone not in bot.orders
    assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"


async def test_fill_delivered_twice_counts_once(bot: PaperBot) -> None:
    coid = await resting_order(bot)
    fill = await bot.broker.fill_without_notifying(coid)
    assert await bot._apply_fill(fill) is True
    assert await bot._apply_fill(fill) is False  # the same trade id again: journaled once, booked once
    assert bot.book.position("ETH-USD") == Decimal("0.1")
    fills = [f for f in await bot.journal.call(bot.journal.fills) if f.trade_id == fill.trade_id]
    assert len(fills) == 1
    result = await bot.reconcile(Trigger.COMMAND)
    assert kinds(result) == [("order_state_mismatch", coid, "adopted")]  # only the order update was lost


async def test_venue_listing_a_trade_twice_is_a_duplicate_adopted_once(bot: PaperBot) -> None:
    hidden = await bot.broker.inject_hidden_fill("SOL-USD", Decimal("2"))
    original = bot.broker.recent_fills

    async def twice(since: datetime | None = None) -> list[VenueFill]:
        fills = await original(since)
        return fills + [f for f in fills if f.trade_id == hidden.trade_id]

    bot.broker.recent_fills = twice  # type: ignore[method-assign]
    result = await bot.reconcile(Trigger.COMMAND)
    assert kinds(result) == [
        ("duplicate_fill", hidden.trade_id, "adopted"),
        ("missing_fill", hidden.trade_id, "adopted"),
    ]
    assert bot.book.position("SOL-USD") == Decimal("2")
    assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"


async def test_order_placed_by_hand_is_canceled_by_policy(bot: PaperBot) -> None:
    mid = bot.broker.quote("BTC-USD").mid
    external = await bot.broker.place_external_order("BTC-USD", Side.BUY, Decimal("0.01"), mid * Decimal("0.9"))
    result = await bot.reconcile(Trigger.COMMAND)
    assert kinds(result) == [("unknown_order", external.client_order_id, "canceled")]
    assert await bot.broker.open_orders() == []
    assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"


async def test_halt_and_alert_policies(tmp_path) -> None:
    bot = await quiet_bot(tmp_path, {"missing_fill": "halt", "unknown_order": "alert"})
    try:
        mid = bot.broker.quote("BTC-USD").mid
        external = await bot.broker.place_external_order("BTC-USD", Side.BUY, Decimal("0.01"), mid * Decimal("0.9"))
        hidden = await bot.broker.inject_hidden_fill("SOL-USD", Decimal("-1"))
        result = await bot.reconcile(Trigger.COMMAND)
        assert result["result"] == "halted"
        assert kinds(result) == [
            ("missing_fill", hidden.trade_id, "halted"),
            ("unknown_order", external.client_order_id, "alerted"),
        ]
        assert bot.inst.state.state.value == "halted"
        assert sample(bot, "tradingbot_position_mismatch_quantity", venue="paper", symbol="SOL-USD") == 1
        assert sample(bot, "tradingbot_reconciliation_runs_total", venue="paper", trigger="command", result="halted")
        assert external.client_order_id in [o.client_order_id for o in await bot.broker.open_orders()]
        assert (await control(bot.port, "reconcile"))[1]["result"] == "halted"  # alert/halt change nothing
    finally:
        await bot.stop()


async def test_position_mismatch_no_fill_explains_is_adopted_as_an_adjustment(tmp_path) -> None:
    bot = await quiet_bot(tmp_path, {"position_mismatch": "adopt", "balance_mismatch": "alert"})
    try:
        bot.broker._positions["ETH-USD"] += Decimal("0.5")  # the venue's books moved with no fill behind it
        result = await bot.reconcile(Trigger.COMMAND)
        assert kinds(result) == [("position_mismatch", "ETH-USD", "adopted")]
        assert bot.book.position("ETH-USD") == Decimal("0.5")
        assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"
        bot.broker._balances["USD"] += Decimal("100")  # a deposit
        assert kinds(await bot.reconcile(Trigger.COMMAND)) == [("balance_mismatch", "USD", "alerted")]
    finally:
        await bot.stop()


async def test_bad_reconcile_argument_is_one_clear_error(bot: PaperBot) -> None:
    status, body = await control(bot.port, "reconcile", {"dry_run": True})
    assert status == 400 and body["error"] == "reconcile takes no arguments, got dry_run"


def test_bad_policy_is_one_clear_config_error() -> None:
    with pytest.raises(ConfigError, match=r"recovery.policies.missing_fill: expected one of adopt, alert, halt"):
        parse_config({"recovery": {"policies": {"missing_fill": "cancel"}}})
    with pytest.raises(ConfigError, match="recovery.policies.lost_fill: unknown discrepancy class"):
        parse_config({"recovery": {"policies": {"lost_fill": "adopt"}}})
    with pytest.raises(ConfigError, match="recovery.open_orders_on_shutdown: expected one of 'cancel', 'keep'"):
        parse_config({"recovery": {"open_orders_on_shutdown": "drop"}})


def test_classification_is_deterministic_and_finds_journal_duplicates() -> None:
    at = datetime(2026, 11, 21, 12, tzinfo=UTC)
    fills = [
        VenueFill(
            f"T{i}", None, f"P{i}", "BTC-USD", Side.BUY, Decimal("1"), Decimal("10"), Decimal("0"), "USD", "taker", at
        )
        for i in (3, 1, 2)
    ]
    journal = JournalSnapshot(
        orders={},
        trade_ids={"T1"},
        duplicate_fills=[
            JournalFill(5, "T1", "BTC-USD", "buy", Decimal("1"), Decimal("10"), Decimal("0"), "USD"),
            JournalFill(9, "T1", "BTC-USD", "buy", Decimal("1"), Decimal("10"), Decimal("0"), "USD"),
        ],
        positions={"BTC-USD": Decimal("2")},
        balances={"USD": Decimal("-10"), "BTC": Decimal("1")},
    )
    venue = VenueSnapshot({"BTC-USD": Decimal("3")}, {"USD": Decimal("-30"), "BTC": Decimal("3")}, [], fills)
    first = [dataclasses.asdict(d) for d in classify(journal, venue)]
    assert first == [dataclasses.asdict(d) for d in classify(journal, venue)]
    assert [(d["kind"], d["key"]) for d in first] == [
        ("duplicate_fill", "T1"),
        ("missing_fill", "T2"),
        ("missing_fill", "T3"),
    ]  # the position and balances are what the fills explain: no mismatch of their own
    assert first[0]["detail"] == {"source": "journal", "times": 2, "extra_rows": [9]}
