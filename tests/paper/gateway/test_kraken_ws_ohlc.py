"""The gateway's `ohlc` channel (Kraken v2 "Candles (OHLC)") read by ccxt.pro's stock kraken client, unmodified
(`watch_ohlcv`, what freqtrade streams candles through): a snapshot of the candles REST OHLC serves, then updates of
the running candle; a bad interval refused in Kraken's words. Needs nothing but the gateway, on 127.0.0.1."""

from __future__ import annotations

import asyncio

import aiohttp
from ccxt_helpers import running_gateway
from ws_helpers import pro_kraken, ws_urls

MOVING = {"tick_interval": 0.02, "volatility": 0.001}
DEADLINE = 20.0


async def test_ccxt_pro_watches_candles_that_rest_ohlc_agrees_with() -> None:
    async with running_gateway(**MOVING) as (gateway, base):
        ex = pro_kraken(base)
        try:
            async with asyncio.timeout(DEADLINE):
                candles = await ex.watch_ohlcv("BTC/USD", "1m")
                assert len(candles) >= 2  # the flat minute before the first quote, and the running one
                rest = await ex.fetch_ohlcv("BTC/USD", "1m")
                assert [c[0] for c in candles][-2:] == [c[0] for c in rest][-2:]
                assert candles[-2][1:5] == rest[-2][1:5]  # the closed candle, as REST serves it
                running = list(candles[-1])
                updates = 0
                while updates < 2:  # the running candle moves with the market (at most once a second)
                    candles = await ex.watch_ohlcv("BTC/USD", "1m")
                    updates += 1
                assert candles[-1][0] >= running[0]
                quote = gateway.venue.quote("BTC-USD")
                assert abs(candles[-1][4] - float(quote.mid)) < float(quote.mid) * 0.01
                five = await ex.watch_ohlcv("ETH/USD", "5m")
                assert five and all(c[0] % 300_000 == 0 for c in five)
        finally:
            await ex.close()


async def test_an_interval_kraken_does_not_have_is_refused_in_its_words() -> None:
    """A raw client: the refusal is Kraken's envelope. (ccxt.pro's watch_ohlcv never sees it: it waits on the pair's
    candles, not on the request, so a refused subscription leaves it waiting; its caller's timeout must end it.)"""
    async with running_gateway() as (_gateway, base):
        public, _ = ws_urls(base)
        async with aiohttp.ClientSession() as session, session.ws_connect(public) as ws:
            async with asyncio.timeout(DEADLINE):
                await ws.send_json(
                    {
                        "method": "subscribe",
                        "params": {"channel": "ohlc", "symbol": ["BTC/USD"], "interval": 2},
                        "req_id": 7,
                    }
                )
                while True:
                    message = await ws.receive_json()
                    if message.get("method") == "subscribe":
                        break
        assert message["success"] is False and message["req_id"] == 7
        assert message["error"] == "Subscription ohlc interval not supported"
