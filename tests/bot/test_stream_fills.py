"""Fills streamed from the gateway's private executions channel, each delivered once: a trade event as the VenueFill
a bot records, a trade snapshot repeating fills after a reconnect (dropped, and the reconnect's REST reconciliation
finds nothing new), a sequence gap that lost a fill (found by the REST reconciliation it starts, first seen by poll),
counted in tradingbot_stream_fills_first_seen_total. Needs only the gateway, started per test on 127.0.0.1."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from ccxt_helpers import chaos, kraken, market, running_gateway, wait_for
from prometheus_client import CollectorRegistry
from ws_helpers import ws_token, ws_urls

from trading_ops.bot.broker import Side, VenueFill
from trading_ops.bot.streams.fills import FillFeed
from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.bot.streams.parse import execution_fill, ws_time
from trading_ops.venues.ccxt.kraken_stream import KrakenStream, Subscription

SYMBOLS = {"BTC/USD": "BTC-USD", "ETH/USD": "ETH-USD", "SOL/USD": "SOL-USD"}
DEADLINE = 30.0


def test_a_trade_event_is_the_fill_a_bot_records() -> None:
    item = {
        "order_id": "O1",
        "exec_id": "T7",
        "exec_type": "trade",
        "trade_id": 7,
        "symbol": "ETH/USD",
        "side": "sell",
        "last_qty": Decimal("0.5000"),
        "last_price": Decimal("3200.32"),
        "liquidity_ind": "m",
        "fees": [{"asset": "USD", "qty": Decimal("0.32")}],
        "timestamp": "2026-11-26T22:27:42.907767Z",
        "cl_ord_id": "c-1",
    }
    fill = execution_fill(item, SYMBOLS)
    assert fill == VenueFill(
        "T7",
        "c-1",
        "O1",
        "ETH-USD",
        Side.SELL,
        Decimal("0.5"),
        Decimal("3200.32"),
        Decimal("0.32"),
        "USD",
        "maker",
        ws_time("2026-11-26T22:27:42.907767Z"),
    )
    assert execution_fill({**item, "exec_type": "filled"}, SYMBOLS) is None
    assert execution_fill({**item, "symbol": "DOGE/USD"}, SYMBOLS) is None


async def test_each_fill_once_across_repeats_reconnects_and_gaps() -> None:
    registry = CollectorRegistry()
    delivered: list[VenueFill] = []
    reconciles = [0]

    async def on_fill(fill: VenueFill) -> None:
        delivered.append(fill)

    async with running_gateway() as (gateway, base):
        rest = kraken(base)

        async def reconcile() -> None:  # the caller's REST reconciliation: the account's trades
            reconciles[0] += 1
            for trade in await rest.fetch_my_trades():
                info = trade["info"]
                fill = VenueFill(
                    trade["id"],
                    None,
                    info["ordertxid"],
                    trade["symbol"].replace("/", "-"),
                    Side(trade["side"]),
                    Decimal(info["vol"]),
                    Decimal(info["price"]),
                    Decimal(info["fee"]),
                    "USD",
                    "maker" if info["maker"] else "taker",
                    ws_time(trade["datetime"]),
                )
                await feed.offer(fill, "poll")

        feed = FillFeed(on_fill, reconcile, StreamMetrics(registry), SYMBOLS)
        subs = [Subscription("executions", params={"snap_trades": True})]
        stream = KrakenStream(
            ws_urls(base)[1],
            subs,
            feed.metrics,
            endpoint="private",
            token=lambda: ws_token(base),
            on_message=feed.on_message,
            on_gap=feed.on_gap,
            on_reconnect=feed.on_reconnect,
        )
        task = asyncio.create_task(stream.run())
        try:
            await asyncio.wait_for(stream.connected.wait(), DEADLINE)
            await wait_for(lambda: stream.sequences.last.get("executions") == 2)  # both snapshots in
            await gateway.venue.submit(market("m-1", "ETH-USD"))
            await wait_for(lambda: len(delivered) == 1)

            # A reconnect whose trade snapshot lists the fill twice: nothing new, and its REST reconciliation too.
            await chaos(base, "ws_repeat_fills")
            await chaos(base, "ws_close", code=1001)
            await wait_for(lambda: reconciles[0] == 1 and stream.sequences.last.get("executions") == 2)

            # Two messages lost (the next order's new and its trade): the gap's reconciliation finds the fill.
            await chaos(base, "ws_sequence_gap", count=2)
            await gateway.venue.submit(market("m-2", "ETH-USD", Side.SELL, "0.2"))
            await wait_for(lambda: len(delivered) == 2)
            venue_fills = await gateway.venue.recent_fills()
            assert sorted(f.trade_id for f in delivered) == sorted(f.trade_id for f in venue_fills)
            assert delivered[0] == venue_fills[0]  # the streamed fill, as the venue recorded it
            value = registry.get_sample_value
            assert value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) == 1
            assert value("tradingbot_stream_fills_first_seen_total", {"source": "poll"}) == 1
            assert value("tradingbot_stream_sequence_gaps_total", {"channel": "executions"}) == 2
        finally:
            await stream.close()
            await asyncio.wait_for(task, DEADLINE)
            await rest.close()


async def test_a_fill_the_bot_failed_to_take_is_delivered_by_the_next_source_once() -> None:
    """A bot's on_fill that raises (a REST call of its own cut by a reconnect) has not taken the fill: it is not
    counted, and the REST poll that offers it next delivers it, once."""
    registry = CollectorRegistry()
    taken: list[VenueFill] = []
    failing = [True]

    async def on_fill(fill: VenueFill) -> None:
        if failing[0]:
            raise ConnectionError("the bot's REST session was closed")
        taken.append(fill)

    async def reconcile() -> None:
        return None

    feed = FillFeed(on_fill, reconcile, StreamMetrics(registry), SYMBOLS)
    fill = VenueFill(
        "T9",
        "c-9",
        "O9",
        "BTC-USD",
        Side.BUY,
        Decimal("1"),
        Decimal("100"),
        Decimal("0"),
        "USD",
        "taker",
        ws_time("2026-11-26T22:27:42.907767Z"),
    )
    with pytest.raises(ConnectionError):  # the bot's failure reaches the stream, which logs it
        await feed.offer(fill, "stream")
    assert registry.get_sample_value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) == 0
    failing[0] = False
    assert await feed.offer(fill, "poll") is True
    assert await feed.offer(fill, "stream") is False
    assert taken == [fill]
    assert registry.get_sample_value("tradingbot_stream_fills_first_seen_total", {"source": "poll"}) == 1
