"""ProStreamingCcxtBroker on the gateway: the account's fills through ccxt.pro's stock kraken client's own
`watch_my_trades` (Kraken v2 `executions`, which the gateway serves), the path a venue takes whose ccxt.pro client
streams fills and whose stream this package does not speak itself (`ccxt.stream_executions: ccxt.pro`). A fill
reaches the bot from the stream long before the (hour-long) poll, once, with its client order id; a poll afterwards
adds nothing; a dropped private socket is a new one, counted, and reconciled over REST; a channel acked and then
silent (persistently) is found from the poll's fills, subscribed again, then its socket replaced, no fill lost or
counted twice. And which path `ccxt.stream_executions` picks for which exchange. Needs only the gateway, started per
test on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from broker_recorder import Recorder, connected
from ccxt_helpers import SYMBOLS, chaos, kraken, market, running_gateway, wait_for
from prometheus_client import CollectorRegistry
from ws_helpers import pro_kraken

from trading_ops.bot.broker import Side
from trading_ops.config import parse_config
from trading_ops.venues.ccxt.factory import broker_from_config, executions_client
from trading_ops.venues.ccxt.pro_broker import ProStreamingCcxtBroker
from trading_ops.venues.ccxt.rest import CcxtBroker
from trading_ops.venues.ccxt.streaming import StreamingCcxtBroker

HOUR = 3600.0


@contextlib.asynccontextmanager
async def pro_broker(
    base: str, registry: CollectorRegistry, recorder: Recorder, poll_interval: float = HOUR
) -> AsyncIterator[ProStreamingCcxtBroker]:
    broker = ProStreamingCcxtBroker(
        kraken(base), SYMBOLS, pro=pro_kraken(base), registry=registry, poll_interval=poll_interval, quote_interval=HOUR
    )
    async with connected(broker, recorder):
        yield broker


async def test_fills_stream_through_ccxt_pro_once_and_a_new_socket_is_reconciled() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    async with running_gateway() as (gateway, base), pro_broker(base, registry, recorder) as broker:
        await wait_for(lambda: value("tradingbot_stream_connected", {"endpoint": "private"}) == 1)
        await broker.submit(market("s-1", "ETH-USD"))
        await wait_for(lambda: len(recorder.fills) == 1)  # the stream's: the poll runs once an hour
        assert recorder.fills[0].client_order_id == "s-1" and recorder.fills[0].symbol == "ETH-USD"
        await broker.drain_events()  # a poll finds the same fill: nothing new for the bot
        assert len(recorder.fills) == 1
        assert value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) == 1

        await chaos(base, "ws_close", code=1006, endpoint="private")
        await wait_for(
            lambda: (
                (value("tradingbot_stream_reconnects_total", {"endpoint": "private", "reason": "closed"}) or 0)
                + (value("tradingbot_stream_reconnects_total", {"endpoint": "private", "reason": "error"}) or 0)
                >= 1
            )
        )
        await gateway.venue.submit(market("s-2", "ETH-USD", Side.SELL, "0.2"))
        await wait_for(lambda: len(recorder.fills) == 2)
        venue_fills = await gateway.venue.recent_fills()
        assert sorted(f.trade_id for f in recorder.fills) == sorted(f.trade_id for f in venue_fills)


async def test_a_silent_channel_is_found_from_the_poll_resubscribed_then_reconnected_losing_nothing() -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    value = registry.get_sample_value
    async with running_gateway() as (gateway, base), pro_broker(base, registry, recorder, poll_interval=0.5) as broker:
        await wait_for(lambda: value("tradingbot_stream_connected", {"endpoint": "private"}) == 1)
        await broker.submit(market("s-1", "ETH-USD"))
        await wait_for(lambda: len(recorder.fills) == 1)
        await chaos(base, "ws_silent_channel", channel="executions", persistent=True)
        for n in range(2, 6):  # fills the silent channel never sends: the poll's
            await broker.submit(market(f"s-{n}", "ETH-USD", Side.SELL if n % 2 else Side.BUY, "0.1"))
            await wait_for(lambda n=n: len(recorder.fills) == n, timeout=30)
            if value("tradingbot_stream_reconnects_total", {"endpoint": "private", "reason": "silent"}):
                break
        silent = {"channel": "executions", "reason": "silent"}
        assert (value("tradingbot_stream_resyncs_total", silent) or 0) >= 1
        await wait_for(
            lambda: (value("tradingbot_stream_reconnects_total", {"endpoint": "private", "reason": "silent"}) or 0) >= 1
        )
        await chaos(base, "clear")
        await broker.resubscribe()  # a fresh subscription the venue speaks on again
        streamed = value("tradingbot_stream_fills_first_seen_total", {"source": "stream"})
        await broker.submit(market("s-9", "ETH-USD", Side.BUY, "0.1"))
        await wait_for(lambda: value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) > streamed)
        venue_fills = await gateway.venue.recent_fills()
        assert sorted(f.trade_id for f in recorder.fills) == sorted(f.trade_id for f in venue_fills)


@pytest.mark.parametrize(
    ("exchange", "choice", "expected"),
    [
        ("kraken", "auto", "kraken-v2"),  # our own v2 client: it sees the sequence ccxt.pro ignores
        ("kraken", "ccxt.pro", "ccxt.pro"),
        ("binance", "auto", "ccxt.pro"),  # ccxt.pro's binance has watchMyTrades; we speak no binance stream
        ("coinbase", "auto", None),  # ccxt.pro's coinbase does not watch the account's trades: REST polls
        ("binance", "kraken-v2", None),  # Kraken's stream on another venue: nothing to speak to
    ],
)
def test_the_executions_path_is_chosen_by_one_key_and_the_exchanges_has(
    exchange: str, choice: str, expected: str | None
) -> None:
    assert executions_client(exchange, choice) == expected


@pytest.mark.parametrize(
    ("exchange", "choice", "built"),
    [
        ("kraken", "auto", StreamingCcxtBroker),
        ("kraken", "ccxt.pro", ProStreamingCcxtBroker),
        ("binance", "auto", ProStreamingCcxtBroker),
        ("coinbase", "auto", CcxtBroker),
    ],
)
async def test_one_key_builds_the_broker_of_the_path_it_names(
    exchange: str, choice: str, built: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ccxt.stream_executions` in a configuration: the broker built, nothing fetched; ccxt.pro's client on the REST
    client's keys and, on Kraken, its v2 URL on the configured host (a gateway's /ws-auth/v2)."""
    gateway = "http://127.0.0.1:1"
    monkeypatch.setenv("TRADING_OPS_CCXT_API_KEY", "k1")
    monkeypatch.setenv("TRADING_OPS_CCXT_API_SECRET", "c2VjcmV0")
    ccxt = {"exchange": exchange, "stream_executions": choice}
    if exchange == "kraken":
        ccxt |= {"urls": {"public": gateway, "private": gateway}, "kraken_tier": "off"}
    broker = broker_from_config(parse_config({"ccxt": ccxt}))
    try:
        assert type(broker) is built
        if isinstance(broker, ProStreamingCcxtBroker):
            assert (broker.pro.apiKey, broker.pro.secret) == ("k1", "c2VjcmV0")
            if exchange == "kraken":
                assert broker.pro.urls["api"]["ws"]["privateV2"] == "ws://127.0.0.1:1/ws-auth/v2"
            await broker.pro.close()
    finally:
        await broker.exchange.close()
