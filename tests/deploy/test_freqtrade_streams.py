"""A REAL freqtrade (PyPI, the `freqtrade` extra) streaming its candles from the gateway's WebSocket v2 (ccxt.pro's
watch_ohlcv on the `ohlc` channel; `exchange.enable_ws`, and `_ft_has_params` because freqtrade does not mark Kraken
WebSocket-ready), and the sidecar reporting freqtrade's own stream state as the library's `tradingbot_stream_*`
families: streaming, then a dropped socket (a failed watch, a reconnect), the next candle fetched over REST (a
fallback), and the stream back a candle later. Then a silent candle channel (the gateway acks freqtrade's subscriptions
and sends nothing more, heartbeats flowing), which freqtrade's watch waits on forever: stale past its timeout as
TradingBotStreamChannelStale sees it, then healed as the reconciler's freqtrade-stream-reconnect rule heals it, by the
sidecar's `reconnect` (freqtrade's reload_config: a new ccxt.pro client, fresh watches); `resubscribe` refused (409).

Needs freqtrade installed and the gateway; waits on freqtrade's 1-minute candles (about five minutes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from freqtrade_helpers import PAIRS, PASSWORD, USERNAME, Freqtrade, broker_of, make_freqtrade
from gateway_helpers import Gateway, start_gateway
from polling import until_async
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from trading_ops.integrations.freqtrade.app import FreqtradeSidecar, create_app

# The stream test waits through candle boundaries (a minute each: about four minutes when nothing is slow); its own
# deadlines bound it, not the suite's 300 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TOKEN = "sidecar-token"
POLL_SECONDS = 0.2
CANDLE_SECONDS = 60
LAST = "tradingbot_stream_last_message_timestamp_seconds"
BUSY_START_SECONDS = 240.0
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path / "gateway")
    yield gw
    gw.stop()


@pytest.fixture
def freqtrade(gateway: Gateway, tmp_path: Path) -> Iterator[Freqtrade]:
    ft = make_freqtrade(
        tmp_path / "freqtrade", gateway.url, gateway.api_key, gateway.api_secret, hold_seconds=3600, stream=True
    )
    try:
        try:
            ft.start()
        except TimeoutError:  # a busy machine (a load of 40 on 2 cores) starts freqtrade in minutes, not seconds
            ft.wait_running(BUSY_START_SECONDS)
        yield ft
    finally:
        ft.stop()  # whatever happened, its process is ended


async def test_the_sidecar_reports_freqtrades_stream_its_reconnects_and_rest_fallbacks(
    freqtrade: Freqtrade, gateway: Gateway, aiohttp_client: Any
) -> None:
    sidecar = FreqtradeSidecar(
        name="ft",
        url=freqtrade.url,
        username=USERNAME,
        password=PASSWORD,
        token=TOKEN,
        registry=CollectorRegistry(),
        poll_interval=POLL_SECONDS,
        # the venue the sidecar checks before a reconnect (reload_config); no scheduled reconciliation
        broker=broker_of(gateway),
        reconcile_interval=0,
    )
    client = await aiohttp_client(create_app(sidecar))

    async def value(name: str, **labels: str) -> float | None:
        resp = await client.get("/metrics")
        text = await resp.text()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return None

    async def until(what: str, probe: Any, deadline: float) -> Any:
        return await until_async(what, probe, deadline, POLL_SECONDS)

    started = time.monotonic()
    await until("freqtrade up", lambda: value("tradingbot_freqtrade_up"), 120)
    # Its log's start says freqtrade streams (the ws_enabled override): the stream families are exported at once.
    await until("the stream families", lambda: _present(value("tradingbot_stream_connected", endpoint="public")), 30)
    assert await value("tradingbot_stream_rest_fallback", endpoint="public") == 0

    # A candle boundary passed with freqtrade watching: its candles came from the stream, no fallback logged.
    boundary = (time.time() // CANDLE_SECONDS + 1) * CANDLE_SECONDS
    await until("a new candle", lambda: time.time() > boundary + 10, CANDLE_SECONDS + 20)
    assert await value("tradingbot_stream_rest_fallbacks_total", endpoint="public") == 0
    # The gauges are left out while freqtrade does not answer the sidecar (a busy machine's slow answer): wait for one.
    await until("connected", lambda: _equals(value("tradingbot_stream_connected", endpoint="public"), 1), 60)
    print(f"streaming through a candle boundary: {time.monotonic() - started:.0f} s")
    # Each pair's last candle message (freqtrade's DEBUG `watch done` record): fresh, under its silence timeout.
    for pair in PAIRS:
        last = await until(
            f"{pair}'s last message", lambda p=pair: value(LAST, channel="ohlc", symbol=p), 60
        )  # fmt: skip
        timeout = await value("tradingbot_stream_silence_timeout_seconds", channel="ohlc", symbol=pair)
        assert timeout == CANDLE_SECONDS + 20
        age = time.time() - (await value(LAST, channel="ohlc", symbol=pair) or 0.0)
        print(f"{pair}: last candle message {age:.1f} s old (timeout {timeout:g} s)")
        assert last is not None and age < timeout

    # The gateway drops every public socket: freqtrade's watches fail (a reconnect, reason error), and the stream is
    # reported down until a candle passes without trouble.
    dropped = time.monotonic()
    gateway.chaos("ws_close", code=1006, endpoint="public")
    await until(
        "freqtrade's failed watch counted",
        lambda: _positive(value("tradingbot_stream_reconnects_total", endpoint="public", reason="error")),
        30,
    )
    await until("down", lambda: _equals(value("tradingbot_stream_connected", endpoint="public"), 0), 60)
    await until("on REST", lambda: _equals(value("tradingbot_stream_rest_fallback", endpoint="public"), 1), 60)
    print(f"failed watch seen {time.monotonic() - dropped:.1f} s after the drop")
    # The next candle: the stream has nothing for it, freqtrade fetches it over REST and says so.
    await until(
        "freqtrade's REST fallback counted",
        lambda: _positive(value("tradingbot_stream_rest_fallbacks_total", endpoint="public")),
        CANDLE_SECONDS + 30,
    )
    print(f"REST fallback seen {time.monotonic() - dropped:.1f} s after the drop")
    # It subscribed again at that candle: a candle and freqtrade's grace later, the stream is reported back.
    await until(
        "the stream back",
        lambda: _equals(value("tradingbot_stream_connected", endpoint="public"), 1),
        2 * CANDLE_SECONDS + 60,
    )
    await until("off REST", lambda: _equals(value("tradingbot_stream_rest_fallback", endpoint="public"), 0), 60)
    print(f"stream reported back {time.monotonic() - dropped:.1f} s after the drop")

    # Every candle subscription goes silent. freqtrade cannot renew one subscription: `resubscribe` is refused.
    gateway.chaos("ws_silent_channel", channel="ohlc")
    silenced = time.monotonic()
    resp = await client.post("/control/resubscribe", headers=AUTH)
    assert resp.status == 409, await resp.text()
    assert "reconnect" in (await resp.json())["error"]

    async def age(pair: str) -> float:
        return time.time() - (await value(LAST, channel="ohlc", symbol=pair) or 0.0)

    async def stale(pair: str) -> bool:
        """TradingBotStreamChannelStale's expression for the pair: its last message older than its silence timeout."""
        timeout = await value("tradingbot_stream_silence_timeout_seconds", channel="ohlc", symbol=pair)
        return timeout is not None and await age(pair) > timeout

    # freqtrade does not heal it: past a candle (its REST fallback, the dead watch left in place) and its grace, every
    # pair is stale as the alert sees it.
    for pair in PAIRS:
        await until(f"{pair} stale", lambda p=pair: stale(p), 2 * CANDLE_SECONDS + 30)
    print(f"every pair's candles stale {time.monotonic() - silenced:.1f} s after the fault, freqtrade still silent")
    # What freqtrade-stream-reconnect sends: reconnect, the venue checked first, freqtrade's reload_config, freqtrade
    # back and running.
    asked = time.time()
    resp = await client.post("/control/reconnect", headers=AUTH)
    answer = await resp.json()
    assert resp.status == 200, answer
    assert answer["state"] == "active"
    reloaded = time.time()
    print(f"reconnect (reload_config) answered in {reloaded - asked:.1f} s")

    async def newer(pair: str, than: float) -> bool:
        return (await value(LAST, channel="ohlc", symbol=pair) or 0.0) > than

    # New watches on a new socket: each pair's candles arrive again, the alert's expression false.
    for pair in PAIRS:
        await until(f"{pair}'s candles back", lambda p=pair: newer(p, reloaded), 90)
        assert not await stale(pair)
    print(f"every pair's candles back {time.time() - reloaded:.1f} s after freqtrade came back")


async def _present(value: Any) -> bool:
    return await value is not None


async def _positive(value: Any) -> bool:
    found = await value
    return found is not None and found > 0


async def _equals(value: Any, expected: float) -> bool:
    return bool(await value == expected)
