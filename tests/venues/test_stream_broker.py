"""StreamingCcxtBroker on the gateway: ccxt's kraken client for calls and polls, the private WebSocket v2 for fills,
the public one (ccxt.pro's stock client) for tickers and books. A fill reaches the bot from the stream long before the
(hour-long) poll, once; a poll afterwards finds it and adds nothing; two executions messages lost (a sequence gap)
start a poll at once, which delivers the lost fill, once. The ticker's quotes reach the bot; a book that disagrees
with Kraken's checksum is counted, resynced and never traded on (the order gate's `market_data_in_sync`); a book
silent across resubscribes and reconnects is counted and heals once the venue speaks again; the
dead man's switch goes over the private socket, over REST without it. Needs only the gateway, started per test on
127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from broker_recorder import Recorder, connected
from ccxt_helpers import SYMBOLS, chaos, kraken, market, running_gateway, wait_for
from prometheus_client import CollectorRegistry
from ws_helpers import ws_urls

from trading_ops.bot.broker import Side
from trading_ops.bot.streams.fills import LOST_AFTER
from trading_ops.bot.streams.metrics import FallbackClock
from trading_ops.venues.ccxt.streaming import StreamingCcxtBroker

HOUR = 3600.0
MOVING = {"tick_interval": 0.02, "volatility": 0.001}


@contextlib.asynccontextmanager
async def book_broker(
    base: str, registry: CollectorRegistry, recorder: Recorder, **kw: Any
) -> AsyncIterator[StreamingCcxtBroker]:
    """A streaming broker with tickers and books on the gateway at `base`; its REST polls (orders, tickers) once an
    hour unless told, so every quote the recorder gets came from the ticker channel."""
    public, private = ws_urls(base)
    polls = {"poll_interval": HOUR, "quote_interval": HOUR, **kw}
    broker = StreamingCcxtBroker(
        kraken(base), SYMBOLS, private_url=private, public_url=public, registry=registry, **polls
    )
    async with connected(broker, recorder):
        yield broker


async def test_fills_stream_to_the_bot_once_and_a_gap_is_filled_by_a_poll() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    async with running_gateway() as (gateway, base):
        broker = StreamingCcxtBroker(
            kraken(base), SYMBOLS, private_url=ws_urls(base)[1], registry=registry, poll_interval=HOUR
        )
        value = registry.get_sample_value
        async with connected(broker, recorder):
            assert broker.stream is not None
            await wait_for(lambda: broker.stream is not None and broker.stream.sequences.last.get("executions") == 2)
            await broker.submit(market("s-1", "ETH-USD"))
            await wait_for(lambda: len(recorder.fills) == 1)  # the stream's: the poll runs once an hour
            assert recorder.fills[0].client_order_id == "s-1" and recorder.fills[0].symbol == "ETH-USD"
            await broker.drain_events()  # a poll finds the same fill: nothing new for the bot
            assert len(recorder.fills) == 1
            assert value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) == 1

            await chaos(base, "ws_sequence_gap", count=2)  # the next order's new and trade messages are lost
            await gateway.venue.submit(market("s-2", "ETH-USD", Side.SELL, "0.2"))
            await wait_for(lambda: len(recorder.fills) == 2)  # the gap's poll found it
            assert value("tradingbot_stream_fills_first_seen_total", {"source": "poll"}) == 1
            venue_fills = await gateway.venue.recent_fills()
            assert sorted(f.trade_id for f in recorder.fills) == sorted(f.trade_id for f in venue_fills)
            # The channel spoke after the fill it lost (the message that showed the gap): it lost a message, it is
            # not silent. Past the time a silent channel owes its fill by, it was not subscribed again for silence.
            await asyncio.sleep(LOST_AFTER + 1)
            assert not value("tradingbot_stream_resyncs_total", {"channel": "executions", "reason": "silent"})


async def test_reconnect_and_resubscribe_act_on_the_stream_and_fills_keep_streaming() -> None:
    """The bot's `reconnect` and `resubscribe` reach the stream: a new socket (counted `requested`, its subscription
    replayed) and a fresh subscription; the next fill still arrives by stream."""
    registry = CollectorRegistry()
    recorder = Recorder()
    async with running_gateway() as (gateway, base):
        broker = StreamingCcxtBroker(
            kraken(base), SYMBOLS, private_url=ws_urls(base)[1], registry=registry, poll_interval=HOUR
        )
        value = registry.get_sample_value
        async with connected(broker, recorder):
            await wait_for(lambda: broker.stream is not None and broker.stream.sequences.last.get("executions") == 2)
            await broker.resubscribe()
            assert value("tradingbot_stream_resyncs_total", {"channel": "executions", "reason": "requested"}) == 1
            await broker.reconnect()
            await wait_for(
                lambda: value("tradingbot_stream_reconnects_total", {"endpoint": "private", "reason": "requested"})
            )
            await wait_for(lambda: value("tradingbot_stream_connected", {"endpoint": "private"}) == 1)
            await gateway.venue.submit(market("s-1", "ETH-USD"))
            await wait_for(lambda: len(recorder.fills) == 1)
            assert value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) == 1


async def test_the_ticker_streams_quotes_and_a_book_out_of_sync_is_resynced_and_never_traded_on() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    async with running_gateway(**MOVING) as (gateway, base), book_broker(base, registry, recorder) as broker:
        connected = len(recorder.quotes)  # connect's one REST ticker poll
        await wait_for(lambda: len(recorder.quotes) >= connected + 20)  # the ticker channel's: REST polls hourly
        assert {q.symbol for q in recorder.quotes[connected:]} == set(SYMBOLS)
        assert all(q.bid < q.ask for q in recorder.quotes)
        assert value("tradingbot_stream_book_in_sync", {"symbol": "BTC/USD"}) == 1
        assert value("tradingbot_stream_connected", {"endpoint": "public"}) == 1
        assert value("tradingbot_stream_silence_timeout_seconds", {"channel": "book", "symbol": "BTC/USD"}) == 3
        assert value("tradingbot_stream_silence_timeout_seconds", {"channel": "ticker", "symbol": "BTC/USD"}) == 3
        assert value("tradingbot_stream_last_message_timestamp_seconds", {"channel": "ticker", "symbol": "BTC/USD"})
        assert broker.market_data_in_sync("BTC-USD")
        last = [q for q in recorder.quotes if q.symbol == "BTC-USD"][-1]
        assert abs(last.mid - gateway.venue.quote("BTC-USD").mid) / last.mid < 0.01  # the venue's market

        await chaos(base, "ws_book_checksum", mode="persistent")
        await wait_for(lambda: value("tradingbot_stream_book_in_sync", {"symbol": "BTC/USD"}) == 0)
        assert not broker.market_data_in_sync("BTC-USD")  # the bot's order gate: stale market data
        await wait_for(lambda: (value("tradingbot_stream_checksum_failures_total", {"symbol": "BTC/USD"}) or 0) >= 3)
        resyncs = {"channel": "book", "reason": "checksum"}
        await wait_for(lambda: (value("tradingbot_stream_resyncs_total", resyncs) or 0) >= 2)
        assert not broker.market_data_in_sync("ETH-USD")
        # The ticker is a channel of its own, right whatever the book says: its quotes flow on; the gate refuses new
        # risk on the symbols whose book is out of sync.
        out_of_sync = len(recorder.quotes)
        await wait_for(lambda: len(recorder.quotes) >= out_of_sync + 5)

        await chaos(base, "clear")
        await wait_for(lambda: broker.market_data_in_sync("BTC-USD") and broker.market_data_in_sync("ETH-USD"))
        healed = len(recorder.quotes)
        await wait_for(lambda: len(recorder.quotes) >= healed + 10)


async def test_a_book_silent_across_resubscribes_and_reconnects_heals_once_the_venue_speaks_again() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    async with running_gateway(**MOVING) as (gateway, base), book_broker(base, registry, recorder):
        await wait_for(lambda: value("tradingbot_stream_book_in_sync", {"symbol": "BTC/USD"}) == 1)
        answer = await chaos(base, "ws_silent_channel", channel="book", persistent=True)
        assert answer["heal"] == "clear"
        await wait_for(lambda: value("tradingbot_stream_resyncs_total", {"channel": "book", "reason": "silent"}))
        await wait_for(
            lambda: value("tradingbot_stream_reconnects_total", {"endpoint": "public", "reason": "silent"}), timeout=30
        )
        assert value("tradingbot_stream_reconnects_total", {"endpoint": "private", "reason": "silent"}) == 0
        await chaos(base, "clear")
        quiet = len(recorder.quotes)
        await wait_for(lambda: len(recorder.quotes) >= quiet + 10, timeout=30)
        await wait_for(lambda: value("tradingbot_stream_book_in_sync", {"symbol": "BTC/USD"}) == 1)
        # Every socket the reconnects replaced is closed: one private and one public left.
        await wait_for(lambda: len(gateway.websocket.connections) == 2)


async def test_a_quiet_market_is_not_a_silent_channel_and_a_move_the_channel_missed_is() -> None:
    """Kraken sends the ticker (`bbo`) only when the best bid or ask changes: on a pair that does not move it says
    nothing. The broker's REST ticker poll (every 0.5 s here) finds the market unchanged since the channel's last
    message, so the channel is current: never subscribed again, its last-message gauge kept within its timeout, though
    its last message is far older. Once the market moves and the channel stays silent, REST shows the move it missed:
    it is subscribed again, as before, and flows."""
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    ticker = {"channel": "ticker", "symbol": "BTC/USD"}
    silent = {"channel": "ticker", "reason": "silent"}
    quiet_market = {"tick_interval": 0.02, "volatility": 0.0}
    async with (
        running_gateway(**quiet_market) as (gateway, base),
        book_broker(base, registry, recorder, quote_interval=0.5) as broker,
    ):
        assert broker.public is not None
        watched = broker.public.watched[("ticker", "BTC/USD")]
        await wait_for(lambda: watched.last_top is not None)
        timeout = value("tradingbot_stream_silence_timeout_seconds", ticker)
        assert timeout == 3
        oldest_age = 0.0
        deadline = time.monotonic() + 3 * timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            oldest_age = max(
                oldest_age, time.time() - (value("tradingbot_stream_last_message_timestamp_seconds", ticker) or 0)
            )
        silent_for = time.monotonic() - watched.last_at
        print(f"quiet ticker: last message {silent_for:.1f} s ago, gauge at most {oldest_age:.2f} s old")
        assert silent_for > 2 * timeout  # no message: the market did not move
        assert oldest_age < timeout  # the gauge, kept current by REST: TradingBotStreamChannelStale stays quiet
        assert not value("tradingbot_stream_resyncs_total", silent)
        assert not value("tradingbot_stream_reconnects_total", {"endpoint": "public", "reason": "silent"})
        assert broker.public.streaming("ticker", "BTC/USD")

        await chaos(base, "ws_silent_channel", channel="ticker", symbol="BTC-USD")
        gateway.venue.volatility = 0.001  # the market moves; the channel misses it
        await wait_for(lambda: value("tradingbot_stream_resyncs_total", silent))
        moved = watched.last_at
        await wait_for(lambda: watched.last_at > moved)  # subscribed again: it flows
        assert not value("tradingbot_stream_reconnects_total", {"endpoint": "public", "reason": "silent"})


async def test_the_dead_man_switch_goes_over_the_private_socket_and_over_rest_without_it() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    async with running_gateway() as (gateway, base), book_broker(base, registry, recorder) as broker:
        assert broker.stream is not None
        await wait_for(lambda: broker.stream is not None and broker.stream.connected.is_set())
        now, trigger = await broker.cancel_all_orders_after(60)
        assert broker.switch_over == "stream"
        assert trigger is not None and 55 <= (trigger - now).total_seconds() <= 61
        assert gateway.venue.dead_man_switch_trigger() is not None
        now, trigger = await broker.cancel_all_orders_after(0)
        assert broker.switch_over == "stream" and trigger is None
        assert gateway.venue.dead_man_switch_trigger() is None

        await broker.stream.close()  # the socket gone: REST stands in
        await wait_for(lambda: broker.stream is not None and not broker.stream.connected.is_set())
        now, trigger = await broker.cancel_all_orders_after(30)
        assert broker.switch_over == "rest"
        assert trigger is not None and gateway.venue.dead_man_switch_trigger() is not None


def test_the_seconds_on_rest_fallback_count_up_to_the_scrape() -> None:
    now = [100.0]
    clock = FallbackClock(lambda: now[0])
    clock.set("private", True)
    now[0] = 104.0
    assert clock.seconds("private") == 4.0  # a fallback under way counts
    clock.set("private", False)
    now[0] = 110.0
    assert clock.seconds("private") == 4.0
    clock.set("private", True)
    now[0] = 111.5
    assert clock.seconds("private") == 5.5
    families = {s.labels["endpoint"]: s.value for f in clock.collect() for s in f.samples}
    assert families == {"public": 0.0, "private": 5.5}


async def test_a_streamed_fill_s_balance_lookup_is_the_venue_s_balances_without_a_rest_call() -> None:
    """The runtime asks for balances after every fill: for a streamed one, the last REST answer with the fills since
    applied, equal to what the venue holds, and no Balance call spent."""
    registry = CollectorRegistry()
    seen: list[dict] = []
    async with running_gateway() as (gateway, base):
        broker = StreamingCcxtBroker(
            kraken(base), SYMBOLS, private_url=ws_urls(base)[1], registry=registry, poll_interval=HOUR
        )

        async def on_fill(_fill: object) -> None:
            seen.append(await broker.balances())

        try:
            recorder = Recorder()
            await broker.connect(dataclasses.replace(recorder.events(), on_fill=on_fill))
            await wait_for(lambda: broker.stream is not None and broker.stream.sequences.last.get("executions") == 2)
            await broker.balances()  # the REST answer the fills are applied to
            answered = broker.balance_cache.answered_at
            for i, side in enumerate((Side.BUY, Side.BUY, Side.SELL)):
                await gateway.venue.submit(market(f"b-{i}", "ETH-USD", side, "0.1"))
                await wait_for(lambda n=i: len(seen) == n + 1)
                venue = await gateway.venue.balances()
                assert {a: seen[-1].get(a) for a in ("ETH", "USD")} == {a: venue.get(a) for a in ("ETH", "USD")}
            assert broker.balance_cache.answered_at == answered  # no REST balance call since
        finally:
            await broker.close()
            await broker.exchange.close()


async def test_balances_come_from_the_balances_channel_and_from_rest_when_it_is_down_or_behind() -> None:
    """While the private `balances` channel streams, the broker's balances are its own (no REST Balance call), equal
    to the venue's after each fill, but for a reconciliation's (REST: the check of the streams); a dropped socket, or
    a channel silent while fills flow, puts REST back."""
    registry = CollectorRegistry()
    async with running_gateway() as (gateway, base):
        broker = StreamingCcxtBroker(
            kraken(base), SYMBOLS, private_url=ws_urls(base)[1], registry=registry, poll_interval=HOUR
        )
        try:
            await broker.connect(Recorder().events())
            await wait_for(broker.balances_streaming)
            await broker.balances()  # the first answer is REST's (the check the stream never switches off)
            answered = broker.balance_cache.answered_at
            for i, side in enumerate((Side.BUY, Side.SELL)):
                await gateway.venue.submit(market(f"c-{i}", "ETH-USD", side, "0.1"))
                venue = await gateway.venue.balances()
                await wait_for(lambda v=venue: broker.streamed_balances is not None and all(
                    broker.streamed_balances.get(a) == v.get(a) for a in ("ETH", "USD")
                ))  # fmt: skip
                mine = await broker.balances()
                assert {a: mine.get(a) for a in ("ETH", "USD")} == {a: venue.get(a) for a in ("ETH", "USD")}
            assert broker.balance_cache.answered_at == answered  # no REST balance call since
            async with broker.reconciliation_room():  # a reconciliation checks the streams: REST, channel up or not
                assert broker.balances_streaming()
                await broker.positions()
                assert broker.balance_cache.answered_at > answered
            answered = broker.balance_cache.answered_at
            await broker.balances()
            assert broker.balance_cache.answered_at == answered  # after it, the channel's again

            await chaos(base, "ws_silent_channel", channel="balances")  # fills flow, their balances do not
            await gateway.venue.submit(market("c-2", "ETH-USD", Side.BUY, "0.1"))
            await wait_for(lambda: not broker.balances_streaming(), timeout=10)
            venue = await gateway.venue.balances()
            mine = await broker.balances()  # REST, and the channel subscribed again
            assert broker.balance_cache.answered_at > answered and mine.get("ETH") == venue.get("ETH")
            await wait_for(broker.balances_streaming)  # its fresh snapshot
            resynced = {"channel": "balances", "reason": "silent"}
            assert registry.get_sample_value("tradingbot_stream_resyncs_total", resynced)

            assert broker.stream is not None
            await broker.stream.close()  # the socket gone: REST
            await wait_for(lambda: not broker.balances_streaming())
            before = broker.balance_cache.answered_at
            await broker.balances()
            assert broker.balance_cache.answered_at > before
        finally:
            await broker.close()
            await broker.exchange.close()
