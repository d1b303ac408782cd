"""The Binance user data stream's health, as operators need it, on the gateway's Binance dialect with ccxt.pro's
stock binance client (its user-stream hooks only: trading_ops.venues.ccxt.binance_pro) under ProStreamingCcxtBroker,
the REST poll an hour apart so that only the stream and the broker's reconciliations deliver a fill:

- a user stream the venue ends (`binance_listen_key_expired`: the listen key lapsed, the WebSocket API's subscription
  terminated) is counted, subscribed again at once, and what the venue filled meanwhile reaches the bot over REST;
- a user stream acked then silent (`binance_user_stream_silent`, persistently) is found at the next order the venue
  takes (its executionReport owed), exported silent, subscribed again, then its socket replaced; once the venue speaks
  again a resubscribe (the reconciler's remedy) brings it back, and no fill is lost or delivered twice;
- a fill that reaches the client while the bot is still taking the one before streams to the bot at once, where stock
  ccxt.pro hands it over only with the next trade (shown on the stock client), and a burst streams every fill.

Needs only the gateway, served by the test on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

from binance_helpers import BINANCE_KEY, BINANCE_SECRET, binance, binance_gateway, binance_pro, binance_urls
from broker_recorder import Recorder, connected
from ccxt_helpers import chaos, market, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import Side, VenueFill
from trading_ops.venues.ccxt.binance_pro import UserStreamBinance
from trading_ops.venues.ccxt.pro_broker import ProStreamingCcxtBroker

HOUR = 3600.0
SYMBOLS = ["BTC-USD", "ETH-USD"]
BURST = 8  # market orders placed one after the other


def pro_binance(base: str) -> UserStreamBinance:
    return UserStreamBinance(
        {
            "apiKey": BINANCE_KEY,
            "secret": BINANCE_SECRET,
            "enableRateLimit": False,
            "timeout": 5000,
            "urls": {"api": binance_urls(base)},
        }
    )


@contextlib.asynccontextmanager
async def binance_broker(
    base: str, registry: CollectorRegistry, recorder: Recorder
) -> AsyncIterator[ProStreamingCcxtBroker]:
    broker = ProStreamingCcxtBroker(
        binance(base), SYMBOLS, pro=pro_binance(base), registry=registry, poll_interval=HOUR, quote_interval=HOUR
    )
    async with connected(broker, recorder):
        yield broker


async def test_a_user_stream_the_venue_ends_is_subscribed_again_at_once_and_reconciled() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    executions = {"channel": "executions"}
    async with binance_gateway() as (gateway, dialect, base), binance_broker(base, registry, recorder) as broker:
        await wait_for(lambda: value("tradingbot_stream_subscribed", executions) == 1)
        await broker.submit(market("u-1"))
        await wait_for(lambda: len(recorder.fills) == 1)  # the stream's: the poll runs once an hour
        assert value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) == 1

        started = time.monotonic()
        ended = await chaos(base, "binance_listen_key_expired")
        assert ended["subscriptions_terminated"] == 1
        # A fill at the venue while the bot holds no subscription: no stream carries it, the reconciliation does.
        await gateway.venue.submit(market("u-2", side=Side.SELL, quantity="0.2"))
        await wait_for(lambda: value("tradingbot_stream_subscription_ends_total", executions) == 1)
        await wait_for(
            lambda: value("tradingbot_stream_subscribed", executions) == 1 and len(dialect.users.subscribers) == 1
        )
        healed = time.monotonic() - started
        await wait_for(lambda: len(recorder.fills) == 2)
        print(f"user stream ended by the venue -> subscribed again: {healed * 1000:.0f} ms")

        streamed = value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) or 0
        await broker.submit(market("u-3"))  # the new subscription carries the next fill
        await wait_for(lambda: value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) > streamed)
        venue_fills = await gateway.venue.recent_fills()
        assert sorted(f.trade_id for f in recorder.fills) == sorted(f.trade_id.removeprefix("T") for f in venue_fills)
        assert value("tradingbot_stream_channel_silent", executions) == 0


async def test_a_user_stream_whose_renewal_is_refused_stays_unsubscribed_and_renews_once_allowed() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    executions = {"channel": "executions"}
    async with binance_gateway() as (gateway, dialect, base), binance_broker(base, registry, recorder) as broker:
        await wait_for(lambda: value("tradingbot_stream_subscribed", executions) == 1)
        await chaos(base, "binance_user_stream_refused")
        await chaos(base, "binance_listen_key_expired")
        await wait_for(lambda: value("tradingbot_stream_subscription_ends_total", executions) == 1)
        await gateway.venue.submit(market("r-1"))  # filled while the venue refuses the user stream
        assert value("tradingbot_stream_subscribed", executions) == 0  # what TradingBotStreamUnsubscribed reads
        assert value("tradingbot_stream_connected", {"endpoint": "private"}) == 1  # its socket is up
        assert dialect.users.subscribers == []

        await chaos(base, "clear")
        # The bot's own next attempt (its backoff, at most 5 s) subscribes on the same socket, then reconciles.
        await wait_for(
            lambda: value("tradingbot_stream_subscribed", executions) == 1 and len(dialect.users.subscribers) == 1
        )
        await wait_for(lambda: len(recorder.fills) == 1)  # the fill made while refused: the reconciliation's
        await broker.submit(market("r-2", side=Side.SELL, quantity="0.1"))
        await wait_for(lambda: (value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) or 0) >= 1)
        venue_fills = await gateway.venue.recent_fills()
        assert sorted(f.trade_id for f in recorder.fills) == sorted(f.trade_id.removeprefix("T") for f in venue_fills)


async def test_a_silent_user_stream_is_found_at_the_next_order_healed_and_loses_no_fill() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    executions = {"channel": "executions"}
    async with binance_gateway() as (gateway, _dialect, base), binance_broker(base, registry, recorder) as broker:
        await wait_for(lambda: value("tradingbot_stream_subscribed", executions) == 1)
        await broker.submit(market("s-1"))
        await wait_for(lambda: len(recorder.fills) == 1)
        assert value("tradingbot_stream_channel_silent", executions) == 0

        await chaos(base, "binance_user_stream_silent", persistent=True)
        started = time.monotonic()
        await broker.submit(market("s-2", side=Side.SELL, quantity="0.1"))  # its executionReport never comes
        await wait_for(lambda: value("tradingbot_stream_channel_silent", executions) == 1)
        detected = time.monotonic() - started
        assert (value("tradingbot_stream_resyncs_total", {"channel": "executions", "reason": "silent"}) or 0) >= 1
        await wait_for(lambda: len(recorder.fills) == 2)  # the reconciliation after the resubscribe found it
        for n in range(3, 8):  # each new subscription is silent too: subscribed again, then the socket replaced
            await broker.submit(market(f"s-{n}", side=Side.SELL if n % 2 else Side.BUY, quantity="0.1"))
            await wait_for(lambda n=n: len(recorder.fills) == n, timeout=30)
            if value("tradingbot_stream_reconnects_total", {"endpoint": "private", "reason": "silent"}):
                break
        await wait_for(
            lambda: (value("tradingbot_stream_reconnects_total", {"endpoint": "private", "reason": "silent"}) or 0) >= 1
        )
        assert value("tradingbot_stream_channel_silent", executions) == 1  # still: nothing heard yet

        await chaos(base, "clear")
        healing = time.monotonic()
        await broker.resubscribe()  # the reconciler's remedy: a fresh subscription the venue speaks on again
        before = len(recorder.fills)
        await broker.submit(market("s-9"))  # while it subscribes again: the stream or the reconciliation after it
        await wait_for(lambda: len(recorder.fills) == before + 1)
        streamed = value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) or 0
        await broker.submit(market("s-10", side=Side.SELL, quantity="0.1"))  # held again: the stream's
        await wait_for(lambda: value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) > streamed)
        await wait_for(lambda: value("tradingbot_stream_channel_silent", executions) == 0)
        healed = time.monotonic() - healing
        print(f"silent user stream: detected {detected * 1000:.0f} ms after the order, healed {healed * 1000:.0f} ms")
        venue_fills = await gateway.venue.recent_fills()
        assert sorted(f.trade_id for f in recorder.fills) == sorted(f.trade_id.removeprefix("T") for f in venue_fills)


async def test_the_venue_ending_a_replaced_silent_subscription_and_the_new_one_leaves_the_stream_read() -> None:
    """A silent user stream subscribed again on the same socket leaves the silent subscription held at the venue too;
    the venue then ends both (`eventStreamTerminated` twice): the second names nothing the client still holds, where
    stock ccxt.pro 4.5.90 raised KeyError inside the socket's receive callback and read nothing more (the user stream
    dead for good, the bot never subscribed again). The bot subscribes again once and its fills stream again."""
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    executions = {"channel": "executions"}
    async with binance_gateway() as (_gateway, dialect, base), binance_broker(base, registry, recorder) as broker:
        await wait_for(lambda: value("tradingbot_stream_subscribed", executions) == 1)
        await chaos(base, "binance_user_stream_silent")
        await broker.submit(market("t-1"))  # its executionReport never comes: subscribed again on the same socket
        await wait_for(lambda: value("tradingbot_stream_resyncs_total", {"channel": "executions", "reason": "silent"}))
        held = lambda: value("tradingbot_stream_subscribed", executions) == 1  # noqa: E731
        await wait_for(lambda: len(dialect.users.subscribers) == 2 and held())
        await chaos(base, "clear")
        ended = await chaos(base, "binance_listen_key_expired")
        assert ended["subscriptions_terminated"] == 2
        await wait_for(lambda: value("tradingbot_stream_subscription_ends_total", executions) == 1)
        await wait_for(lambda: held() and dialect.users.subscribers)
        first_seen = {"source": "stream"}
        streamed = value("tradingbot_stream_fills_first_seen_total", first_seen) or 0
        # A fill the REST poll happens to see first (a busy machine) proves nothing either way: up to three orders, one
        # of them seen first on the stream (a dead stream sees none).
        for n in range(3):
            await broker.submit(market(f"t-{2 + n}", side=Side.SELL, quantity="0.1"))
            with contextlib.suppress(AssertionError):
                await wait_for(lambda: (value("tradingbot_stream_fills_first_seen_total", first_seen) or 0) > streamed)
                break
        assert (value("tradingbot_stream_fills_first_seen_total", first_seen) or 0) > streamed, "no fill streamed"


async def test_stock_ccxt_pro_hands_a_trade_that_came_between_two_watches_only_with_the_next_trade() -> None:
    """Why ProFills looks at ccxt.pro's trade cache before each watch (trading_ops.venues.ccxt.pro_fills): stock
    ccxt.pro 4.5.90 wakes `watch_my_trades` only for a trade that arrives while it waits. A trade that arrives while the
    caller is busy with the last answer is taken into the client's `myTrades` and wakes nobody; the next watch then
    waits for the next trade and hands over both. The gateway sent it on time: the client holds it."""
    async with binance_gateway() as (_gateway, dialect, base):
        pro, rest = binance_pro(base), binance(base)  # stock ccxt.pro, no hook of ours
        try:

            def waiting() -> bool:  # a watch of the account's trades is waiting on the client (subscribed, acked)
                return any("myTrades" in client.futures for client in pro.clients.values())

            await pro.load_markets()
            first = asyncio.ensure_future(pro.watch_my_trades())
            await wait_for(lambda: len(dialect.users.subscribers) == 1 and waiting())
            a = await rest.create_order("ETH/USD", "market", "buy", 0.1)
            assert [t["order"] for t in await asyncio.wait_for(first, 10)] == [a["id"]]
            b = await rest.create_order("ETH/USD", "market", "buy", 0.1)  # while no watch waits
            await wait_for(lambda: len(pro.myTrades) == 2)  # the client has it
            second = asyncio.ensure_future(pro.watch_my_trades())
            await wait_for(waiting)
            await rest.fetch_time()  # a whole round trip later, the watch still waits, trade b in the cache
            assert not second.done()
            c = await rest.create_order("ETH/USD", "market", "buy", 0.1)
            assert [t["order"] for t in await asyncio.wait_for(second, 10)] == [b["id"], c["id"]]  # b only with c
        finally:
            await rest.close()
            await pro.close()


async def test_a_fill_that_comes_while_the_bot_is_busy_with_the_last_streams_without_waiting_for_another() -> None:
    """A fill that reaches the client while the bot is still taking the one before (its journal, its P&L) streams to it
    all the same, without waiting for another fill: stock ccxt.pro would hand it over only with the next trade (the test
    above), leaving the last fill of a burst to the REST poll (an hour away here) and the channel judged silent. Then a
    burst, every fill by the stream, none twice."""
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    first_seen = {"source": "stream"}
    busy = asyncio.Event()
    events = recorder.events()
    record = events.on_fill
    assert record is not None

    async def slow_on_fill(fill: VenueFill) -> None:
        await record(fill)
        if len(recorder.fills) == 1:
            await busy.wait()  # the bot busy with the first fill until the second has reached the client

    async with binance_gateway() as (gateway, _dialect, base):
        pro = pro_binance(base)
        broker = ProStreamingCcxtBroker(
            binance(base), SYMBOLS, pro=pro, registry=registry, poll_interval=HOUR, quote_interval=HOUR
        )
        try:
            await broker.connect(dataclasses.replace(events, on_fill=slow_on_fill))
            await wait_for(lambda: value("tradingbot_stream_subscribed", {"channel": "executions"}) == 1)
            await broker.submit(market("b-1"))
            await wait_for(lambda: len(recorder.fills) == 1)
            await broker.submit(market("b-2", side=Side.SELL, quantity="0.1"))
            await wait_for(lambda: len(pro.myTrades) == 2)  # in the client, while the bot is busy: no watch waits
            busy.set()
            await wait_for(lambda: len(recorder.fills) == 2)  # no further trade needed, the poll an hour away
            assert value("tradingbot_stream_fills_first_seen_total", first_seen) == 2

            for n in range(3, 3 + BURST):
                await broker.submit(market(f"b-{n}", side=Side.SELL if n % 2 else Side.BUY, quantity="0.1"))
            await wait_for(lambda: len(recorder.fills) == 2 + BURST)
            assert value("tradingbot_stream_fills_first_seen_total", first_seen) == 2 + BURST
            venue_fills = await gateway.venue.recent_fills()
            assert [f.trade_id for f in recorder.fills] == [f.trade_id.removeprefix("T") for f in venue_fills]
        finally:
            busy.set()
            await broker.close()
            await broker.exchange.close()
