"""The paper bot's streaming broker (paper.stream) end to end in-process, on the real paper venue and its push
channel: fills, order updates and quotes streamed, REST polled beside them, and every stream fault (a dropped stream
with fills during the gap, a sequence gap, a silent channel) healed with nothing missed or counted twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from paper_helpers import TOKEN, control, counter_total, fast_config, wait_for
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from trading_ops.bot.broker import Channel
from trading_ops.db.base import make_sessionmaker
from trading_ops.db.models import Fill
from trading_ops.paper.bot import PaperBot
from trading_ops.paper.streaming import StreamingPaperBroker
from trading_ops.paper.venue import PaperVenue


async def start(tmp_path: Path, **paper: Any) -> PaperBot:
    bot = PaperBot(fast_config(tmp_path, **paper), token=TOKEN, registry=CollectorRegistry(), chaos=True)
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    return bot


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[PaperBot]:
    paper_bot = await start(tmp_path)  # streaming (the default): the REST poll every 5 s, 1 s while a stream is down
    try:
        yield paper_bot
    finally:
        await paper_bot.stop()


def sample(bot: PaperBot, name: str, **labels: str) -> float:
    return bot.inst.registry.get_sample_value(name, labels) or 0.0


def first_seen(bot: PaperBot, source: str) -> float:
    return sample(bot, "tradingbot_stream_fills_first_seen_total", source=source)


async def settle(bot: PaperBot) -> tuple[list[str], list[str]]:
    """Pause the bot, wait until the venue holds no open order and every fill it made is in the journal; the trade
    ids the venue made and those the journal holds."""
    assert (await control(bot.port, "pause"))[0] == 200  # type: ignore[attr-defined]
    async with bot._trade_lock:
        pass  # the strategy step in progress has ended; the next ones see the pause
    sessions = make_sessionmaker(bot.engine)

    def journal() -> list[str]:
        with sessions() as session:
            return list(session.scalars(select(Fill.trade_id)))

    async def agreed() -> bool:
        if await bot.cancel_all() or await bot.paper_venue.open_orders():
            return False
        await bot.broker.drain_events()
        await bot.journal.call(lambda: None)
        venue = {f.trade_id for f in await bot.paper_venue.recent_fills()}
        return venue == set(journal())

    await wait_for(agreed, timeout=20)
    return [f.trade_id for f in await bot.paper_venue.recent_fills()], journal()


def assert_each_fill_once(bot: PaperBot, venue: list[str], journal: list[str]) -> None:
    """Every fill the venue made is journaled once, counted once, and delivered once by the stream or the poll."""
    assert sorted(journal) == sorted(set(venue)) == sorted(venue)
    assert counter_total(bot, "tradingbot_fills") == len(venue)
    assert first_seen(bot, "stream") + first_seen(bot, "poll") == len(venue)
    discrepancies = "tradingbot_reconciliation_discrepancies_total"
    assert sample(bot, discrepancies, venue="paper", discrepancy="duplicate_fill") == 0


async def test_fills_orders_and_quotes_stream(bot: PaperBot) -> None:
    assert isinstance(bot.broker, StreamingPaperBroker)
    await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= 10, timeout=20)
    for endpoint in ("public", "private"):
        assert sample(bot, "tradingbot_stream_connected", endpoint=endpoint) == 1
        assert sample(bot, "tradingbot_stream_rest_fallback", endpoint=endpoint) == 0
    for symbol in bot.symbols:
        assert sample(bot, "tradingbot_stream_last_message_timestamp_seconds", channel="ticker", symbol=symbol) > 0
        assert sample(bot, "tradingbot_stream_silence_timeout_seconds", channel="ticker", symbol=symbol) == 3.0
    assert sample(bot, "tradingbot_stream_last_message_timestamp_seconds", channel="executions", symbol="") > 0
    # The market's quotes reach the bot by the stream: its market data is fresh.
    assert bot.metrics.market_data_age("BTC-USD") is not None
    venue, journal = await settle(bot)
    assert_each_fill_once(bot, venue, journal)
    print(f"first seen: {first_seen(bot, 'stream'):.0f} fills by the stream, {first_seen(bot, 'poll'):.0f} by the poll")
    # Which source sees a fill first is a race (a busy machine's stream consumer waits on the journal while the
    # poll runs): the stream delivers fills, the poll may deliver some; each is delivered once either way.
    assert first_seen(bot, "stream") >= 1
    status, body = await control(bot.port, "status")  # type: ignore[attr-defined]
    assert status == 200 and body["stream"]["private"]["connected"] is True


async def test_a_dropped_stream_with_fills_during_the_gap_misses_nothing_and_counts_nothing_twice(
    bot: PaperBot,
) -> None:
    """The private stream dropped and refused for 2 s while the bot keeps trading over REST: the fills of the gap
    reach the bot by the REST poll (the fallback), the stream reconnects by itself, reconciles over REST, and every
    fill is journaled and counted once."""
    await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= 5, timeout=20)
    status, body = await control(bot.port, "drop_stream", {"endpoint": "private", "seconds": 2})  # type: ignore[attr-defined]
    assert status == 200 and body["closed"] == 1
    made_at_drop = len(await bot.paper_venue.recent_fills())
    await wait_for(lambda: sample(bot, "tradingbot_stream_connected", endpoint="private") == 0)
    assert sample(bot, "tradingbot_stream_rest_fallback", endpoint="private") == 1
    polled_before = first_seen(bot, "poll")

    async def fills_in_the_gap() -> bool:
        return len(await bot.paper_venue.recent_fills()) >= made_at_drop + 5

    await wait_for(fills_in_the_gap, timeout=20)
    # The gap's fills reach the bot while the stream is still down: by the poll.
    await wait_for(lambda: first_seen(bot, "poll") > polled_before, timeout=10)
    await wait_for(lambda: sample(bot, "tradingbot_stream_connected", endpoint="private") == 1, timeout=20)
    assert sample(bot, "tradingbot_stream_reconnects_total", endpoint="private", reason="closed") == 1
    assert sample(bot, "tradingbot_stream_rest_fallback", endpoint="private") == 0
    assert sample(bot, "tradingbot_stream_connected", endpoint="public") == 1  # the other endpoint never dropped
    streamed = first_seen(bot, "stream")
    await wait_for(lambda: first_seen(bot, "stream") > streamed, timeout=20)  # streaming again
    venue, journal = await settle(bot)
    assert_each_fill_once(bot, venue, journal)
    assert bot.broker.is_connected(Channel.ORDERS)  # REST never went down


async def test_a_sequence_gap_is_reconciled_over_rest(bot: PaperBot) -> None:
    await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= 3, timeout=20)
    status, _ = await control(bot.port, "stream_gap", {"count": 4})  # type: ignore[attr-defined]
    assert status == 200
    await wait_for(lambda: sample(bot, "tradingbot_stream_sequence_gaps_total", channel="executions") >= 4, timeout=20)
    assert sample(bot, "tradingbot_stream_connected", endpoint="private") == 1  # a gap is no reconnect
    venue, journal = await settle(bot)
    assert_each_fill_once(bot, venue, journal)


async def test_a_silent_ticker_is_subscribed_again_by_the_bot(bot: PaperBot) -> None:
    """One symbol's ticker acked and then silent while heartbeats flow: the bot notices it past its silence timeout
    (3 s) and subscribes again; quotes flow, no reconnect."""
    await wait_for(lambda: bot.metrics.market_data_age("ETH-USD") is not None)
    status, body = await control(bot.port, "silent_stream", {"channel": "ticker", "symbol": "ETH-USD"})  # type: ignore[attr-defined]
    assert status == 200 and body["heal"] == "resubscribe"
    await wait_for(lambda: (bot.metrics.market_data_age("ETH-USD") or 0) > 1.0, timeout=10)
    await wait_for(lambda: sample(bot, "tradingbot_stream_resyncs_total", channel="ticker", reason="silent") >= 1, 10)
    await wait_for(lambda: (bot.metrics.market_data_age("ETH-USD") or 99) < 0.5, timeout=10)
    assert sample(bot, "tradingbot_stream_reconnects_total", endpoint="public", reason="silent") == 0
    assert sample(bot, "tradingbot_stream_connected", endpoint="public") == 1


async def test_a_silent_executions_channel_is_found_by_the_poll_and_subscribed_again_losing_no_fill(
    bot: PaperBot,
) -> None:
    """The private `executions` channel acked and then silent while heartbeats flow: it has no cadence to time it by,
    so the REST poll finds fills it never sent (older than three heartbeats), and the bot subscribes it again (a
    fresh snapshot, a REST reconciliation after). The resubscribe heals it (no reconnect); the fills of the silence
    reach the bot by the poll, and every fill is journaled and counted once."""
    await wait_for(lambda: first_seen(bot, "stream") >= 3, timeout=20)
    status, body = await control(bot.port, "silent_stream", {"channel": "executions"})  # type: ignore[attr-defined]
    assert status == 200 and body["heal"] == "resubscribe"
    resyncs = "tradingbot_stream_resyncs_total"
    await wait_for(lambda: sample(bot, resyncs, channel="executions", reason="silent") >= 1, timeout=30)
    assert first_seen(bot, "poll") >= 1  # what the silent channel never sent, found by REST
    streamed = first_seen(bot, "stream")
    await wait_for(lambda: first_seen(bot, "stream") > streamed, timeout=20)  # streaming again
    assert sample(bot, "tradingbot_stream_reconnects_total", endpoint="private", reason="silent") == 0
    assert sample(bot, "tradingbot_stream_connected", endpoint="private") == 1
    venue, journal = await settle(bot)
    assert_each_fill_once(bot, venue, journal)


async def test_a_persistently_silent_executions_channel_is_reconnected_and_loses_no_fill(bot: PaperBot) -> None:
    """`silent_stream channel=executions persistent=true`: neither the bot's resubscribe nor its new connection
    brings the channel back. The bot subscribes again, then replaces the connection; meanwhile its fills come by
    the REST poll, each once; once the venue speaks again (clear_chaos) the stream carries them again."""
    await wait_for(lambda: first_seen(bot, "stream") >= 3, timeout=20)
    status, body = await control(  # type: ignore[attr-defined]
        bot.port, "silent_stream", {"channel": "executions", "persistent": True}
    )
    assert status == 200 and body["heal"] == "clear_chaos" and body["persistent"] is True
    assert (await control(bot.port, "silent_stream", {"persistent": "yes"}))[0] == 400  # type: ignore[attr-defined]
    resyncs = "tradingbot_stream_resyncs_total"
    await wait_for(lambda: sample(bot, resyncs, channel="executions", reason="silent") >= 1, timeout=30)
    reconnects = "tradingbot_stream_reconnects_total"
    await wait_for(lambda: sample(bot, reconnects, endpoint="private", reason="silent") >= 1, timeout=30)
    polled = first_seen(bot, "poll")
    await wait_for(lambda: first_seen(bot, "poll") > polled, timeout=20)  # the fills keep coming, by REST
    assert (await control(bot.port, "clear_chaos"))[0] == 200  # type: ignore[attr-defined]
    streamed = first_seen(bot, "stream")
    await wait_for(lambda: first_seen(bot, "stream") > streamed, timeout=20)
    venue, journal = await settle(bot)
    assert_each_fill_once(bot, venue, journal)


async def test_a_persistently_silent_ticker_is_subscribed_again_then_reconnected(bot: PaperBot) -> None:
    """`silent_stream persistent=true`: the bot's resubscribe at the ticker's timeout (3 s) does not bring it back,
    so one timeout later it replaces the connection (which does not either, until clear_chaos)."""
    await wait_for(lambda: bot.metrics.market_data_age("ETH-USD") is not None)
    body = {"channel": "ticker", "symbol": "ETH-USD", "persistent": True}
    assert (await control(bot.port, "silent_stream", body))[0] == 200  # type: ignore[attr-defined]
    await wait_for(lambda: sample(bot, "tradingbot_stream_resyncs_total", channel="ticker", reason="silent") >= 1, 10)
    reconnects = "tradingbot_stream_reconnects_total"
    await wait_for(lambda: sample(bot, reconnects, endpoint="public", reason="silent") >= 1, timeout=10)
    assert (await control(bot.port, "clear_chaos"))[0] == 200  # type: ignore[attr-defined]
    await wait_for(lambda: (bot.metrics.market_data_age("ETH-USD") or 99) < 0.5, timeout=10)


async def test_the_reconnect_command_replaces_the_stream_and_reconciles(bot: PaperBot) -> None:
    await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= 3, timeout=20)
    assert (await control(bot.port, "reconnect"))[0] == 200  # type: ignore[attr-defined]
    await wait_for(
        lambda: sample(bot, "tradingbot_stream_reconnects_total", endpoint="private", reason="requested") == 1
    )
    await wait_for(lambda: sample(bot, "tradingbot_stream_connected", endpoint="private") == 1)
    venue, journal = await settle(bot)
    assert_each_fill_once(bot, venue, journal)


async def test_drop_connection_takes_the_stream_down_with_rest_and_reconnect_heals_both(bot: PaperBot) -> None:
    await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= 3, timeout=20)
    assert (await control(bot.port, "drop_connection"))[0] == 200  # type: ignore[attr-defined]
    await wait_for(lambda: sample(bot, "tradingbot_stream_connected", endpoint="private") == 0)
    assert sample(bot, "tradingbot_stream_connected", endpoint="public") == 0
    assert (await control(bot.port, "reconnect"))[0] == 200  # type: ignore[attr-defined]
    await wait_for(lambda: sample(bot, "tradingbot_stream_connected", endpoint="private") == 1, timeout=20)
    await wait_for(lambda: sample(bot, "tradingbot_stream_connected", endpoint="public") == 1, timeout=20)
    venue, journal = await settle(bot)
    assert_each_fill_once(bot, venue, journal)


async def test_a_flatten_whose_last_fill_streamed_ends_with_it_and_leaves_a_later_position_alone(
    tmp_path: Path,
) -> None:
    """The streamed fill that closed the last position ends a flatten given while halted, not the next step: a
    position that comes back a moment later (a fill of no order, adopted by a reconciliation) is held and asked about,
    never sold by the flatten given for the one before it (the stack's restart test read it flat after a restart)."""
    bot = await start(tmp_path, loop_interval_seconds=1.0)  # a step a second: the window a step-bound end left open
    port = bot.port  # type: ignore[attr-defined]
    drift = {"symbol": "ETH-USD", "quantity": 0.4065}
    try:
        assert (await control(port, "halt"))[0] == 200
        assert (await control(port, "position_drift", drift))[0] == 200
        assert (await control(port, "reconcile"))[1]["result"] == "resolved"
        assert (await control(port, "flatten"))[0] == 200
        await wait_for(lambda: all(bot.book.position(s) == 0 for s in bot.config.paper.symbols), timeout=20)
        orders = counter_total(bot, "tradingbot_orders_submitted")
        status, body = await control(port, "position_drift", drift)
        assert status == 200, body
        assert any(d["key"] == body["trade_id"] for d in (await control(port, "reconcile"))[1]["discrepancies"])
        loops = counter_total(bot, "tradingbot_loop_iterations")
        await wait_for(lambda: counter_total(bot, "tradingbot_loop_iterations") >= loops + 3, timeout=20)
        assert bot.book.position("ETH-USD") == Decimal("0.4065")
        assert (await bot.broker.positions())["ETH-USD"] == Decimal("0.4065")
        assert counter_total(bot, "tradingbot_orders_submitted") == orders
        status, body = await control(port, "status")
        assert body["state"] == "halted" and body["flatten_while_halted"] is False, body
    finally:
        await bot.stop()


async def test_rest_only_is_one_line(tmp_path: Path) -> None:
    """paper.stream: false, one line: the venue is the broker, its events direct calls; no stream family."""
    bot = await start(tmp_path, stream=False)
    try:
        assert isinstance(bot.broker, PaperVenue)
        await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= 3, timeout=20)
        names = {m.name for m in bot.inst.registry.collect()}
        assert not [n for n in names if n.startswith("tradingbot_stream_")]
        assert (await control(bot.port, "drop_stream"))[0] == 404  # type: ignore[attr-defined]
    finally:
        await bot.stop()
