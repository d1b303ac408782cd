"""Reconciliation of the journal against the paper venue, in-process: each fault is found as its class, resolved
by its policy, stored and exported, and a second run finds nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from paper_helpers import TOKEN, IdleStrategy, control, counter_total, fast_config, get, submit_fresh, wait_for
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from trading_ops.bot.broker import BrokerError, OrderRequest, OrderType, Side, VenueFill, VenueOrder
from trading_ops.bot.classify import JournalFill, JournalOrder, JournalSnapshot, VenueSnapshot, classify
from trading_ops.bot.reconciliation import Trigger
from trading_ops.config import ConfigError, parse_config
from trading_ops.paper.bot import PaperBot, make_venue, startup_retry_delay
from trading_ops.paper.venue import PaperVenue

# The strategy and the venue's clock stay still: only what a test does happens.
QUIET = {"loop_interval_seconds": 3600, "tick_interval_seconds": 3600, "partial_fill_probability": 0.0}


def quiet_config(tmp_path):
    """fast_config with the clock still. The venue publishes its quotes once, at start: they must stay fresh for
    the whole test, or the order gate refuses the test's own orders as soon as a loaded machine takes 0.3 s."""
    config = fast_config(tmp_path, **QUIET)
    config.bot.market_data_stale_seconds = 3600.0
    return config


async def quiet_bot(tmp_path, policies: dict[str, str] | None = None, *, stream: bool = True) -> PaperBot:
    config = quiet_config(tmp_path)
    config.paper.stream = stream
    if policies:
        config.recovery.policies.update(policies)
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), chaos=True)
    bot.strategy = IdleStrategy()  # type: ignore[assignment]  # the tests place what they need
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    return bot


@pytest.fixture
async def bot(tmp_path):
    paper_bot = await quiet_bot(tmp_path)
    try:
        yield paper_bot
    finally:
        await paper_bot.stop()


@pytest.fixture
async def rest_bot(tmp_path):
    """A REST-only paper bot (paper.stream: false): the venue's events reach it as direct calls, so an event the
    venue withholds (fill_without_notifying, inject_hidden_fill, a reply lost) is found by the bot's own
    reconciliation alone. A streaming bot's REST poll finds it first (tests/paper/test_paper_streaming.py)."""
    paper_bot = await quiet_bot(tmp_path, stream=False)
    try:
        yield paper_bot
    finally:
        await paper_bot.stop()


def kinds(summary: dict) -> list[tuple[str, str, str]]:
    return [(d["kind"], d["key"], d["outcome"]) for d in summary["discrepancies"]]


async def resting_order(bot: PaperBot, symbol: str = "ETH-USD", side: Side = Side.BUY) -> str:
    mid = bot.broker.quote(symbol).mid
    price = (mid * Decimal("0.98") if side is Side.BUY else mid * Decimal("1.02")).quantize(Decimal("0.01"))
    order = await submit_fresh(bot, symbol, side, OrderType.LIMIT, Decimal("0.1"), price)
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
    fill = await bot.paper_venue.fill_without_notifying(coid)
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
    fill = await bot.paper_venue.fill_without_notifying(partial, Decimal("0.04"))
    await bot.paper_venue.cancel_without_notifying(gone)  # the venue cancels it and the event is lost
    result = await bot.reconcile(Trigger.COMMAND)
    assert kinds(result) == [
        ("missing_fill", fill.trade_id, "adopted"),
        ("order_state_mismatch", partial, "adopted"),
        ("vanished_order", gone, "adopted"),
    ]
    assert result["discrepancies"][2]["detail"] == {"final_state": "canceled 0", "source": "venue"}
    assert bot.orders[partial].filled_quantity == Decimal("0.04") and gone not in bot.orders
    assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"


async def test_fill_delivered_twice_counts_once(bot: PaperBot) -> None:
    coid = await resting_order(bot)
    fill = await bot.paper_venue.fill_without_notifying(coid)
    assert await bot.order_engine.apply_fill(fill) is True
    assert await bot.order_engine.apply_fill(fill) is False  # the same trade id again: journaled once, booked once
    assert bot.book.position("ETH-USD") == Decimal("0.1")
    fills = [f for f in await bot.journal.call(bot.journal.fills) if f.trade_id == fill.trade_id]
    assert len(fills) == 1
    result = await bot.reconcile(Trigger.COMMAND)
    assert kinds(result) == [("order_state_mismatch", coid, "adopted")]  # only the order update was lost


async def test_venue_listing_a_trade_twice_is_a_duplicate_adopted_once(bot: PaperBot) -> None:
    hidden = await bot.paper_venue.inject_hidden_fill("SOL-USD", Decimal("2"))
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
    external = await bot.paper_venue.place_external_order("BTC-USD", Side.BUY, Decimal("0.01"), mid * Decimal("0.9"))
    result = await bot.reconcile(Trigger.COMMAND)
    assert kinds(result) == [("unknown_order", external.venue_order_id, "canceled")]
    assert result["discrepancies"][0]["detail"] == {"client_order_id": external.client_order_id}
    assert await bot.broker.open_orders() == []
    assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"


async def test_halt_and_alert_policies(tmp_path) -> None:
    bot = await quiet_bot(tmp_path, {"missing_fill": "halt", "unknown_order": "alert"})
    try:
        mid = bot.broker.quote("BTC-USD").mid
        far = mid * Decimal("0.9")
        external = await bot.paper_venue.place_external_order("BTC-USD", Side.BUY, Decimal("0.01"), far)
        hidden = await bot.paper_venue.inject_hidden_fill("SOL-USD", Decimal("-1"))
        result = await bot.reconcile(Trigger.COMMAND)
        assert result["result"] == "halted"
        assert kinds(result) == [
            ("missing_fill", hidden.trade_id, "halted"),
            ("unknown_order", external.venue_order_id, "alerted"),
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
        bot.paper_venue.book.positions["ETH-USD"] += Decimal("0.5")  # the venue's books moved with no fill behind it
        result = await bot.reconcile(Trigger.COMMAND)
        assert kinds(result) == [("position_mismatch", "ETH-USD", "adopted")]
        assert bot.book.position("ETH-USD") == Decimal("0.5")
        assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"
        bot.paper_venue.book.balances["USD"] += Decimal("100")  # a deposit
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
        # The duplicate row was journaled like any fill: with its position and its balance changes.
        positions={"BTC-USD": Decimal("2")},
        balances={"USD": Decimal("-20"), "BTC": Decimal("2")},
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


def drop_fill_uniqueness(engine: Engine) -> None:
    """The journal's unique key on trade ids is gone (a restore without constraints): a trade can be journaled
    twice. Rebuilds SQLite's fills table without it, as SQLite cannot drop a constraint."""
    with engine.begin() as conn:
        ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'fills'").scalar_one()
        without = re.sub(r",\s*CONSTRAINT uq_fills_bot_venue_trade_id UNIQUE \(bot, venue, trade_id\)", "", ddl)
        assert without != ddl
        conn.exec_driver_sql("ALTER TABLE fills RENAME TO fills_old")
        conn.exec_driver_sql(without)
        conn.exec_driver_sql("INSERT INTO fills SELECT * FROM fills_old")
        conn.exec_driver_sql("DROP TABLE fills_old")


async def test_scheduled_runs_under_live_trading_come_back_clean(tmp_path) -> None:
    """A healthy bot trading fast, reconciled every 50 ms with every class set to halt: no run may find anything
    (a fill or order update on its way to the journal is not a discrepancy), so the bot never halts."""
    config = fast_config(tmp_path)
    config.recovery.reconcile_interval_seconds = 0.05
    config.recovery.policies.update(dict.fromkeys(config.recovery.policies, "halt"))
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    await bot.start("127.0.0.1", 0)
    try:
        await wait_for(lambda: counter_total(bot, "tradingbot_fills") > 0, timeout=20)
        fills_at_start = counter_total(bot, "tradingbot_fills")

        def scheduled() -> float:
            return sample(
                bot, "tradingbot_reconciliation_runs_total", venue="paper", trigger="schedule", result="clean"
            )

        def halted() -> bool:
            return bot.inst.state.state.value == "halted"

        await wait_for(
            lambda: halted() or (scheduled() >= 60 and counter_total(bot, "tradingbot_fills") >= fills_at_start + 30),
            timeout=90,
        )
        runs = await bot.journal.call(bot.recovery_store.reconciliation_runs)
        assert [(r.id, r.result, r.error) for r in runs if r.result != "clean"] == []
        assert not halted() and len(runs) > 60
        for result in ("resolved", "failed", "halted"):
            assert (
                sample(bot, "tradingbot_reconciliation_runs_total", venue="paper", trigger="schedule", result=result)
                == 0
            )
    finally:
        await bot.stop()


async def test_adopting_balances_twice_changes_nothing_when_the_venue_omits_a_zero_balance(bot: PaperBot) -> None:
    await bot.paper_venue.transfer("DOGE", Decimal("5"))  # an airdrop
    assert kinds(await bot.reconcile(Trigger.COMMAND)) == [("balance_mismatch", "DOGE", "adopted")]
    assert (await bot.journal.call(bot.journal.balances))["DOGE"] == Decimal("5")
    await bot.paper_venue.transfer("DOGE", Decimal("-5"))  # withdrawn: the venue no longer lists DOGE at all
    assert "DOGE" not in await bot.broker.balances()
    assert kinds(await bot.reconcile(Trigger.COMMAND)) == [("balance_mismatch", "DOGE", "adopted")]
    assert (await bot.journal.call(bot.journal.balances))["DOGE"] == 0
    again = await bot.reconcile(Trigger.COMMAND)
    assert again["result"] == "clean", again["discrepancies"]


async def test_duplicate_fill_row_is_removed_with_its_balance_changes(bot: PaperBot) -> None:
    """A fill delivered twice into a journal that lost its unique key: two rows, the position and balances changed
    twice. Reconciliation removes the extra row and undoes both, and finds nothing else (no false balance
    mismatch); a second run is clean."""
    await bot.journal.call(drop_fill_uniqueness, bot.engine)
    coid = await resting_order(bot)
    fill = await bot.paper_venue.fill_without_notifying(coid)
    assert await bot.order_engine.apply_fill(fill) is True
    assert await bot.order_engine.apply_fill(fill) is True  # journaled twice: nothing stops it any more
    rows = [f for f in await bot.journal.call(bot.journal.fills) if f.trade_id == fill.trade_id]
    assert len(rows) == 2
    status, result = await control(bot.port, "reconcile")
    assert status == 200 and result["result"] == "resolved"
    assert kinds(result) == [
        ("duplicate_fill", fill.trade_id, "adopted"),
        ("order_state_mismatch", coid, "adopted"),  # its order update was lost
    ]
    assert [f.id for f in await bot.journal.call(bot.journal.fills) if f.trade_id == fill.trade_id] == [rows[0].id]
    venue_balances = await bot.broker.balances()
    journal_balances = await bot.journal.call(bot.journal.balances)
    assert journal_balances == {a: venue_balances.get(a, Decimal(0)) for a in journal_balances}
    positions = await bot.journal.call(bot.journal.positions)
    assert positions["ETH-USD"].quantity == Decimal("0.1") == bot.book.position("ETH-USD")
    _, again = await control(bot.port, "reconcile")
    assert again["result"] == "clean", again["discrepancies"]


async def test_order_updates_never_move_an_order_back(
    rest_bot: PaperBot,
) -> None:
    bot = rest_bot  # the bot's own reconciliation, which nothing pre-empts (rest_bot)
    coid = await resting_order(bot)
    acknowledged = dataclasses.replace(bot.orders[coid])
    await bot.paper_venue.fill_without_notifying(coid, Decimal("0.04"))
    partial = dataclasses.replace(bot.paper_venue.book.orders[acknowledged.venue_order_id])
    await bot.paper_venue.fill_without_notifying(coid)
    filled = dataclasses.replace(bot.paper_venue.book.orders[acknowledged.venue_order_id])
    await bot.order_engine.on_order(filled)
    # Events arriving late and out of order: neither reopens the order, in the journal or in the bot.
    await bot.order_engine.on_order(partial)
    await bot.order_engine.on_order(acknowledged)
    [row] = await bot.journal.call(bot.journal.orders_by_client_id, [coid])
    assert (row.status, row.filled_quantity) == ("filled", Decimal("0.1"))
    assert coid not in bot.orders


async def test_vanished_order_takes_the_final_state_the_venue_reports(tmp_path) -> None:
    """An order filled at the venue, its fill older than the lookback window: the fills cannot say it filled, the
    venue's order lookup does."""
    bot = await quiet_bot(tmp_path, {"position_mismatch": "adopt"})
    try:
        bot.reconciler.fills_lookback = 60
        coid = await resting_order(bot)
        await bot.paper_venue.set_clock_skew(-3600)  # the fill happens an hour ago by the venue's clock
        await bot.paper_venue.fill_without_notifying(coid)
        await bot.paper_venue.set_clock_skew(0)
        result = await bot.reconcile(Trigger.COMMAND)
        [order] = [d for d in result["discrepancies"] if d["key"] == coid]
        assert (order["kind"], order["outcome"]) == ("order_state_mismatch", "adopted")
        assert order["detail"] == {"final_state": "filled 0.1000", "source": "venue"}
        [row] = await bot.journal.call(bot.journal.orders_by_client_id, [coid])
        assert (row.status, row.filled_quantity) == ("filled", Decimal("0.1"))
        assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"
    finally:
        await bot.stop()


def test_an_order_the_venue_forgot_ends_as_its_fills_say() -> None:
    at = datetime(2026, 11, 21, 12, tzinfo=UTC)
    mine = JournalOrder(
        "c-1", "P1", "BTC-USD", "buy", "limit", Decimal("1"), Decimal("10"), Decimal("0"), "acknowledged"
    )
    journal = JournalSnapshot({"c-1": mine}, {"T1"}, [], {"BTC-USD": Decimal("0.4")}, {})
    fill = VenueFill(
        "T1", "c-1", "P1", "BTC-USD", Side.BUY, Decimal("0.4"), Decimal("10"), Decimal(0), "USD", "maker", at
    )
    venue = VenueSnapshot({"BTC-USD": Decimal("0.4")}, {}, [], [fill], closed_orders={"c-1": None})
    [gone] = classify(journal, venue)
    assert (gone.kind, gone.key, gone.detail) == (
        "vanished_order",
        "c-1",
        {"final_state": "canceled 0.4", "source": "fills"},
    )


async def test_orders_placed_by_hand_without_a_client_id_stay_distinct(tmp_path) -> None:
    for policy in ("cancel", "adopt"):
        bot = await quiet_bot(tmp_path / policy, {"unknown_order": policy})
        try:
            mid = bot.broker.quote("BTC-USD").mid
            first = await bot.paper_venue.place_external_order(
                "BTC-USD", Side.BUY, Decimal("0.01"), mid / 2, client_order_id=""
            )
            second = await bot.paper_venue.place_external_order(
                "BTC-USD", Side.BUY, Decimal("0.02"), mid / 2, client_order_id=""
            )
            result = await bot.reconcile(Trigger.COMMAND)
            outcome = "canceled" if policy == "cancel" else "adopted"
            assert kinds(result) == [
                ("unknown_order", first.venue_order_id, outcome),
                ("unknown_order", second.venue_order_id, outcome),
            ]
            assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"
            if policy == "adopt":  # both are the bot's now, and it can cancel them by their venue ids
                assert len(await bot.broker.open_orders()) == 2
                assert await bot.cancel_all() == 2
            assert await bot.broker.open_orders() == []
            assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"
        finally:
            await bot.stop()


async def test_no_order_goes_out_before_the_startup_run_passes(tmp_path) -> None:
    config = quiet_config(tmp_path)
    config.recovery.policies["missing_fill"] = "halt"
    venue = make_venue(config)
    await venue.inject_hidden_fill("SOL-USD", Decimal("2"))  # while the bot was away
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), venue=venue)
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    try:
        assert bot.reconciler.last is not None and bot.reconciler.last["result"] == "halted"
        assert not bot.trading_allowed
        assert bot.order_refusal("BTC-USD", reduce_only=False) == "the startup reconciliation has not passed"
        assert await bot.submit("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01")) is None
        assert await bot.submit("SOL-USD", Side.SELL, OrderType.MARKET, Decimal("1"), reduce_only=True) is None
        assert await venue.open_orders() == [] and len(await venue.recent_fills()) == 1
        status, body = await get(bot.port, "/readyz")
        assert status == 503 and "startup reconciliation not passed" in body
    finally:
        await bot.stop()


async def test_startup_retries_back_off_and_stop_while_halted(tmp_path) -> None:
    config = fast_config(tmp_path)
    config.recovery.reconcile_retry_seconds = 0.01
    config.recovery.policies["missing_fill"] = "halt"
    venue = UnreachableAccountVenue(list(config.paper.symbols), seed=1)
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), venue=venue)
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    try:
        # The venue's account API fails: each retry waits twice as long as the one before. The positions it could not
        # see are unknown (never flat): the run does not pass.
        await wait_for(lambda: bot.startup_failures >= 5, timeout=30)
        assert bot.next_reconciliation_delay() == pytest.approx(0.01 * 2**bot.startup_failures)
        runs = await bot.journal.call(bot.recovery_store.reconciliation_runs)
        assert {(r.trigger, r.result) for r in runs} == {("startup", "unknown")}
        # The account API is back, with a fill the bot never saw: the next retry halts, and retries stop.
        await venue.inject_hidden_fill("SOL-USD", Decimal("1"))
        venue.account_down = False
        await wait_for(lambda: last_run(bot)["result"] == "halted", timeout=30)
        assert bot.inst.state.state.value == "halted"
        assert bot.next_reconciliation_delay() is None and not bot.trading_allowed
        runs = await bot.journal.call(bot.recovery_store.reconciliation_runs)
        halted_runs = len(runs)
        iterations = sample(bot, "tradingbot_loop_iterations_total") or 0
        await wait_for(lambda: (sample(bot, "tradingbot_loop_iterations_total") or 0) > iterations + 50, timeout=30)
        assert len(await bot.journal.call(bot.recovery_store.reconciliation_runs)) == halted_runs  # no retry
        # clear_halt tries once more (it halts again: the fill is still unexplained).
        assert (await control(bot.port, "clear_halt"))[0] == 200
        await wait_for(lambda: last_run(bot)["run_id"] > runs[-1].id, timeout=30)
        assert bot.inst.state.state.value == "halted"
        runs = await bot.journal.call(bot.recovery_store.reconciliation_runs)
        assert [(r.trigger, r.result) for r in runs[halted_runs:]] == [("startup", "halted")]
        # An operator adopts it instead; the reconcile command opens the gate; scheduled runs take over.
        bot.reconciler.policies["missing_fill"] = "adopt"
        assert (await control(bot.port, "clear_halt"))[0] == 200
        await wait_for(lambda: bot.trading_allowed, timeout=30)
        assert bot.next_reconciliation_delay() == config.recovery.reconcile_interval_seconds
    finally:
        await bot.stop()


def last_run(bot: PaperBot) -> dict:
    assert bot.reconciler.last is not None
    return bot.reconciler.last


class UnreachableAccountVenue(PaperVenue):
    """A paper venue whose account endpoints fail (an API outage on the venue's side) until told otherwise."""

    account_down = True

    async def positions(self) -> dict[str, Decimal]:
        if self.account_down:
            raise BrokerError("venue_busy", "account service unavailable")
        return await super().positions()


def test_startup_retry_delay_doubles_up_to_its_cap() -> None:
    assert [startup_retry_delay(n, 2.0) for n in range(4)] == [2.0, 4.0, 8.0, 16.0]
    assert startup_retry_delay(50, 2.0) == startup_retry_delay(10_000, 2.0) == 300.0


async def test_last_success_timestamp_is_exported_from_the_start(tmp_path) -> None:
    """A bot that never reconciled successfully still exports the gauge, at its start time, so `time() - x > N`
    fires N seconds after a start that never passed."""
    before = time.time()
    config = quiet_config(tmp_path)
    config.recovery.policies["missing_fill"] = "halt"
    venue = make_venue(config)
    await venue.inject_hidden_fill("SOL-USD", Decimal("2"))
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), venue=venue)
    await bot.start("127.0.0.1", 0)
    try:
        assert bot.reconciler.last_success is None
        exported = sample(bot, "tradingbot_reconciliation_last_success_timestamp_seconds", venue="paper")
        assert exported is not None and before <= exported <= time.time()
    finally:
        await bot.stop()


async def test_reconnect_triggers_a_reconciliation(
    rest_bot: PaperBot,
) -> None:
    bot = rest_bot  # the bot's own reconciliation, which nothing pre-empts (rest_bot)
    await bot.paper_venue.drop_connection()
    hidden = await bot.paper_venue.inject_hidden_fill("ETH-USD", Decimal("1"))  # while the bot could not hear it
    assert (await control(bot.port, "reconnect"))[0] == 200
    await wait_for(lambda: bot.reconciler.last and bot.reconciler.last["trigger"] == "reconnect")
    assert bot.reconciler.last is not None
    assert kinds(bot.reconciler.last) == [("missing_fill", hidden.trade_id, "adopted")]
    assert sample(bot, "tradingbot_reconciliation_runs_total", venue="paper", trigger="reconnect", result="resolved")


async def test_scheduled_runs_wait_while_the_orders_channel_is_down_and_the_reconnect_runs_one(tmp_path) -> None:
    """A scheduled run with the orders channel down could only fail, and TradingBotReconciliationFailing would fire for
    its 15-minute window after a drop of a few seconds: it is skipped; the reconnect's own run reads the gap."""
    config = fast_config(tmp_path)
    config.recovery.reconcile_interval_seconds = 0.05
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    port = await bot.start("127.0.0.1", 0)
    try:
        await wait_for(
            lambda: sample(
                bot, "tradingbot_reconciliation_runs_total", venue="paper", trigger="schedule", result="clean"
            )
        )
        await bot.paper_venue.drop_connection()
        dropped = datetime.now(UTC)  # a run already under way may fail: it began before
        await asyncio.sleep(1.0)  # twenty intervals with the channel down
        back = datetime.now(UTC)
        assert (await control(port, "reconnect"))[0] == 200
        await wait_for(lambda: bot.reconciler.last and bot.reconciler.last["trigger"] == "reconnect")
        runs = await bot.journal.call(bot.recovery_store.reconciliation_runs)
        assert [(r.trigger, r.result) for r in runs if dropped < r.started_at < back] == []
        assert bot.reconciler.last["result"] in ("clean", "resolved")
    finally:
        await bot.stop()


async def test_a_failed_fill_write_leaves_the_book_as_the_journal_and_reconciliation_counts_it_once(
    rest_bot: PaperBot,
) -> None:
    """The journal write of a fill fails (the database was locked for a moment): the fill is in neither the book
    nor the journal, the order's outcome is unknown, and reconciliation adopts the fill once. Book, journal and
    venue then agree, and a second run finds nothing."""
    bot = rest_bot  # the bot's own reconciliation, which nothing pre-empts (rest_bot)
    journal_fill = bot.journal.fill
    failures = []

    def locked_once(*args: object) -> bool:
        if not failures:
            failures.append(args)
            raise OperationalError("INSERT INTO fills", {}, Exception("database is locked"))
        return journal_fill(*args)  # type: ignore[arg-type]

    bot.journal.fill = locked_once  # type: ignore[method-assign]
    async with bot._trade_lock:  # the reconciliation the unknown outcome asks for waits until this is checked
        assert await bot.submit("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01")) is None
        assert failures and bot.book.position("BTC-USD") == 0 == await journal_position(bot, "BTC-USD")
        labels = {"venue": "paper", "strategy": "demo", "symbol": "BTC-USD"}
        assert sample(bot, "tradingbot_orders_outcome_unknown_total", **labels) == 1
    await wait_for(lambda: bot.reconciler.last and bot.reconciler.last["trigger"] == "lost_reply")
    result = bot.reconciler.last
    assert result is not None
    assert [(d["kind"], d["outcome"]) for d in result["discrepancies"]] == [
        ("missing_fill", "adopted"),
        ("order_state_mismatch", "adopted"),
    ]
    venue = (await bot.broker.positions())["BTC-USD"]
    assert bot.book.position("BTC-USD") == Decimal("0.01") == venue == await journal_position(bot, "BTC-USD")
    assert bot.orders == {}
    again = await bot.reconcile(Trigger.COMMAND)
    assert again["result"] == "clean", again["discrepancies"]


async def journal_position(bot: PaperBot, symbol: str) -> Decimal:
    positions = await bot.journal.call(bot.journal.positions)
    return positions[symbol].quantity if symbol in positions else Decimal(0)


async def test_a_submit_whose_answer_was_lost_stays_open_until_reconciliation_settles_it(
    rest_bot: PaperBot,
) -> None:
    """The connection drops while the venue takes the order (200 ms): the venue has it, the bot got no answer. It is
    not journaled as rejected: it stays open (new) and tracked, its symbol counts as working, and the
    reconciliation after the reconnect adopts what the venue did with it."""
    bot = rest_bot  # the bot's own reconciliation, which nothing pre-empts (rest_bot)
    venue = bot.paper_venue
    venue.order_latency = 0.2
    venue_submit = venue.submit
    in_flight = asyncio.Event()

    async def sent(request: OrderRequest) -> VenueOrder:
        in_flight.set()
        return await venue_submit(request)

    venue.submit = sent  # type: ignore[method-assign]
    mid = venue.quote("ETH-USD").mid
    price = (mid * Decimal("0.98")).quantize(Decimal("0.01"))
    submit = asyncio.create_task(bot.submit("ETH-USD", Side.BUY, OrderType.LIMIT, Decimal("0.1"), price))
    await in_flight.wait()  # journaled and sent: the venue is working on it
    await venue.drop_connection()
    assert await submit is None
    [key] = bot.orders
    [row] = await bot.journal.call(bot.journal.orders_by_client_id, [key])
    assert (row.status, row.reject_reason) == ("new", None)
    assert bot.orders[key].symbol == "ETH-USD" and (await control(bot.port, "status"))[1]["orders_outcome_unknown"] == 1
    assert venue.book.orders[venue.book.by_client[key]].status.value == "acknowledged"  # it is on the venue
    await venue.reconnect()
    await wait_for(lambda: bot.reconciler.last and bot.reconciler.last["trigger"] == "reconnect")
    assert kinds(bot.reconciler.last) == [("order_state_mismatch", key, "adopted")]  # type: ignore[arg-type]
    assert bot.orders[key].venue_order_id and bot.orders[key].status.value == "acknowledged"
    assert await bot.cancel_all() == 1 and await venue.open_orders() == []
    assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"


async def test_a_submit_that_never_reached_the_venue_is_closed_by_the_reconciliation_it_asks_for(
    bot: PaperBot,
) -> None:
    """A timeout-like failure with the connection up (the venue may or may not have the order): the bot asks for a
    reconciliation at once, which finds the order nowhere and closes it as vanished."""
    lost = BrokerError("unavailable", "gateway timeout")

    async def no_answer(_request: OrderRequest) -> VenueOrder:
        raise lost

    bot.broker.submit = no_answer  # type: ignore[method-assign]
    assert await bot.submit("SOL-USD", Side.SELL, OrderType.MARKET, Decimal("1")) is None
    [key] = bot.orders
    await wait_for(lambda: bot.reconciler.last and bot.reconciler.last["trigger"] == "lost_reply")
    assert kinds(bot.reconciler.last) == [("vanished_order", key, "adopted")]  # type: ignore[arg-type]
    assert bot.orders == {}
    [row] = await bot.journal.call(bot.journal.orders_by_client_id, [key])
    assert row.status == "canceled"
    labels = {"venue": "paper", "trigger": "lost_reply", "result": "resolved"}
    assert sample(bot, "tradingbot_reconciliation_runs_total", **labels) == 1


async def test_an_order_update_before_its_fill_does_not_count_the_fill_twice(bot: PaperBot) -> None:
    """Events arrive update first (the update carries the cumulative filled quantity), then the fill it reports:
    after two partial fills the order is still working with what the venue says is filled, tracked, and the
    kill switch's cancel finds it."""
    coid = await resting_order(bot, "BTC-USD")  # 0.1
    venue = bot.paper_venue
    vid = venue.book.by_client[coid]
    events: list[VenueOrder | VenueFill] = []
    for part in ("0.04", "0.04"):
        fill = await venue.fill_without_notifying(coid, Decimal(part))
        events += [dataclasses.replace(venue.book.orders[vid]), fill]
    for event in events:
        if isinstance(event, VenueFill):
            await bot.order_engine.on_fill(event)
        else:
            await bot.order_engine.on_order(event)
    assert coid in bot.orders and bot.orders[coid].filled_quantity == Decimal("0.08")
    assert bot.book.position("BTC-USD") == Decimal("0.08")
    assert (await bot.reconcile(Trigger.COMMAND))["result"] == "clean"
    assert await bot.cancel_all() == 1 and await venue.open_orders() == []
