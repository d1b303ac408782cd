"""freqtrade's stream state read from its log records (the exact messages freqtrade 2026.9's exchange.py and
exchange_ws.py write), before any freqtrade runs: tests/deploy/test_freqtrade_streams.py runs the real one."""

from __future__ import annotations

from prometheus_client.core import Metric

from trading_ops.integrations.freqtrade.logs import Record
from trading_ops.integrations.freqtrade.stream_state import StreamState

NOW = 1_800_000_000.0
WS = "freqtrade.exchange.exchange_ws"
EXCHANGE = "freqtrade.exchange.exchange"
OVERRIDE = "Overriding exchange._ft_has with config params, result: {'ohlcv_candle_limit': 720, 'ws_enabled': True}"
FALLBACK = (
    "Couldn't reuse watch for BTC/USD, 1m, falling back to REST api. False, 1800000000000, 1799999940000, "
    "2027-01-15 08:00:00, 2027-01-15 07:59:00 "
)
FAILED = "Exception in continuously_async_watch_ohlcv for ETH/USD, 1m\nTraceback (most recent call last):\n..."


def samples(state: StreamState, up: bool = True) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families: list[Metric] = list(state.families(60.0, up))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_a_freqtrade_that_does_not_stream_exports_no_stream_family() -> None:
    state = StreamState()
    state.observe([Record(NOW, EXCHANGE, "INFO", 'Using Exchange "Kraken"')], count=True)
    assert samples(state) == {}


def test_the_override_that_enables_its_websocket_says_it_streams_connected_and_not_on_rest() -> None:
    state = StreamState()
    state.observe([Record(NOW - 300, EXCHANGE, "INFO", OVERRIDE)], count=False)
    got = samples(state)
    assert got[("tradingbot_stream_connected", (("endpoint", "public"),))] == 1
    assert got[("tradingbot_stream_rest_fallback", (("endpoint", "public"),))] == 0
    assert got[("tradingbot_stream_rest_fallbacks_total", (("endpoint", "public"),))] == 0


def test_a_failed_watch_and_a_fallback_are_counted_and_hold_the_stream_down_for_a_candle_and_grace() -> None:
    state = StreamState(stream=True)
    state.observe(
        [
            Record(NOW - 5, WS, "ERROR", FAILED),
            Record(NOW - 1, EXCHANGE, "INFO", FALLBACK),
            Record(NOW, WS, "INFO", "Resetting exchange WS connections."),
        ],
        count=True,
    )
    assert state.reconnects["error"] == 1 and state.reconnects["requested"] == 1 and state.fallbacks == 1
    assert state.on_fallback(60.0, now=NOW)
    assert state.on_fallback(60.0, now=NOW + 79)  # within the candle and freqtrade's 20 s grace
    assert not state.on_fallback(60.0, now=NOW + 81)  # a candle and the grace without trouble: streaming again
    got = samples(state)
    assert got[("tradingbot_stream_reconnects_total", (("endpoint", "public"), ("reason", "error")))] == 1


def test_history_sets_the_state_but_counts_nothing_and_a_dead_freqtrade_exports_no_gauge() -> None:
    state = StreamState(stream=True)
    state.observe([Record(NOW, EXCHANGE, "INFO", FALLBACK), Record(NOW, WS, "ERROR", FAILED)], count=False)
    assert state.fallbacks == 0 and state.reconnects["error"] == 0 and state.trouble_at == NOW
    names = {name for name, _ in samples(state, up=False)}
    assert names == {"tradingbot_stream_reconnects_total", "tradingbot_stream_rest_fallbacks_total"}


def test_each_pairs_last_candle_message_is_exported_with_a_candle_and_grace_as_its_timeout() -> None:
    """freqtrade's DEBUG `watch done` records (its exchange_ws logger at DEBUG) give each pair's last candle message:
    its age meets the stream rules as any bot's; a pair removed from the watch list is no longer exported; without
    those records no age is exported at all."""
    state = StreamState(stream=True)
    state.observe([Record(NOW - 30, WS, "INFO", "Resetting exchange WS connections.")], count=True)
    assert not any(name == "tradingbot_stream_last_message_timestamp_seconds" for name, _ in samples(state))
    state.observe(
        [
            Record(NOW - 3, WS, "DEBUG", "watch done BTC/USD, 1m, data 2 in 0.981s"),
            Record(NOW - 2, WS, "DEBUG", "watch done ETH/USD, 1m, data 2 in 1.002s"),
            Record(NOW - 1, WS, "DEBUG", "watch done BTC/USD, 1m, data 2 in 1.010s"),
        ],
        count=True,
    )
    got = samples(state)
    last = "tradingbot_stream_last_message_timestamp_seconds"
    assert got[(last, (("channel", "ohlc"), ("symbol", "BTC/USD")))] == NOW - 1
    assert got[(last, (("channel", "ohlc"), ("symbol", "ETH/USD")))] == NOW - 2
    timeout = ("tradingbot_stream_silence_timeout_seconds", (("channel", "ohlc"), ("symbol", "BTC/USD")))
    assert got[timeout] == 80.0  # one 1m candle and freqtrade's 20 s grace
    removed = "Removing ('ETH/USD', '1m', <CandleType.SPOT: 'spot'>) from websocket watchlist."
    state.observe([Record(NOW, WS, "INFO", removed)], count=True)
    got = samples(state)
    assert (last, (("channel", "ohlc"), ("symbol", "ETH/USD"))) not in got
    assert (last, (("channel", "ohlc"), ("symbol", "BTC/USD"))) in got
    assert not any(name == last for name, _ in samples(state, up=False))  # a dead freqtrade: no gauge
