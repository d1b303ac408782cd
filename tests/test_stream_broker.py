"""StreamingCcxtBroker on the gateway: ccxt's kraken client for calls and polls, the private WebSocket v2 for fills.
A fill reaches the bot from the stream long before the (hour-long) poll, once; a poll afterwards finds it and adds
nothing; two executions messages lost (a sequence gap) start a poll at once, which delivers the lost fill, once.
Needs only the gateway, started per test on 127.0.0.1."""

from __future__ import annotations

from broker_recorder import Recorder
from ccxt_helpers import SYMBOLS, chaos, kraken, market, running_gateway, wait_for
from prometheus_client import CollectorRegistry
from ws_helpers import ws_urls

from trading_ops.bot.broker import Side
from trading_ops.venues.streams.broker import StreamingCcxtBroker

HOUR = 3600.0


async def test_fills_stream_to_the_bot_once_and_a_gap_is_filled_by_a_poll() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    async with running_gateway() as (gateway, base):
        broker = StreamingCcxtBroker(
            kraken(base), SYMBOLS, private_url=ws_urls(base)[1], registry=registry, poll_interval=HOUR
        )
        value = registry.get_sample_value
        try:
            await broker.connect(recorder.events())
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
        finally:
            await broker.close()
            await broker.exchange.close()


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
        try:
            await broker.connect(recorder.events())
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
        finally:
            await broker.close()
            await broker.exchange.close()
