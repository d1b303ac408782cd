"""freqtrade's own candle stream (ccxt.pro's watch_ohlcv, `exchange.enable_ws`), as its log tells it, under the
library's stream families: `tradingbot_stream_connected`, `tradingbot_stream_rest_fallback` and
`tradingbot_stream_reconnects_total` for the `public` endpoint, and `tradingbot_stream_rest_fallbacks_total`.

freqtrade says nothing at INFO while its stream works (each candle it takes from the stream is a DEBUG record), and
its API reports nothing of it; its log says when it stops working:
- `Couldn't reuse watch for PAIR, TF, falling back to REST api.`: at a new candle the stream had no usable candles
  for the pair, so freqtrade fetched them over REST (a fallback);
- `Exception in continuously_async_watch_ohlcv for PAIR, TF` (ERROR): the pair's watch failed (a closed socket, a
  refused subscription); freqtrade subscribes again at the pair's next candle (a reconnect, reason `error`);
- `Resetting exchange WS connections.`: freqtrade's daily reset of its sockets (a reconnect, reason `requested`).

The stream is on REST fallback while a fallback or a failed watch is more recent than one candle and freqtrade's
grace (its own `cleanup_expired` waits the timeframe plus 20 s): a candle later without either, freqtrade took its
candles from the stream again. Exported only for a freqtrade that streams: configured so (`stream`), or its log shows
its WebSocket (the `_ft_has_params` override that enables it, or any of the records above).

The age of each pair's last candle message, `tradingbot_stream_last_message_timestamp_seconds{channel="ohlc",
symbol=PAIR}`, with its `tradingbot_stream_silence_timeout_seconds` (one candle and freqtrade's 20 s grace: past it,
freqtrade itself takes the pair's candles over REST), so a silent stream meets the stream rules like any bot's: its
source is freqtrade's DEBUG record `watch done PAIR, TF, data N in S` (one per message its watch_ohlcv returned), which
freqtrade logs with its `freqtrade.exchange.exchange_ws` logger at DEBUG (its `log_config`, or `-vv`). Without it, no
age is exported (the families above still are). A pair freqtrade stops watching (`Removing (PAIR, TF, ...) from
websocket watchlist.`) is no longer exported.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from trading_ops.bot.metrics import PREFIX
from trading_ops.bot.streams.metrics import RECONNECT_REASONS
from trading_ops.integrations.freqtrade.logs import Record

ENDPOINT = "public"  # freqtrade streams candles: Kraken's public endpoint (and every venue's market data socket)
FALLBACK = re.compile(r"^Couldn't reuse watch for (?P<pair>[^,]+), (?P<timeframe>[^,]+), falling back to REST api")
WATCH_FAILED = re.compile(r"^Exception in continuously_async_watch_ohlcv for (?P<pair>[^,]+), (?P<timeframe>[^,\s]+)")
RESET = "Resetting exchange WS connections."
WS_LOGGER = "freqtrade.exchange.exchange_ws"
WS_ENABLED = re.compile(r"Overriding exchange\._ft_has with config params.*'ws_enabled': True")
WATCH_DONE = re.compile(r"^watch done (?P<pair>[^,]+), (?P<timeframe>[^,\s]+), data")
REMOVED = re.compile(r"^Removing \('(?P<pair>[^']+)', '(?P<timeframe>[^']+)'")
CHANNEL = "ohlc"  # the candle channel, as Kraken v2 names it
GRACE_SECONDS = 20.0  # freqtrade's own: a pair not asked for within its timeframe + 20 s leaves the watch list
DEFAULT_TIMEFRAME_SECONDS = 60.0


class StreamState:
    """Observes freqtrade's log records (each once; `count` false for the history found at the first poll, which
    sets the state but counts nothing) and renders the families."""

    def __init__(self, stream: bool = False) -> None:
        self.streaming = stream
        self.fallbacks = 0.0
        self.reconnects = dict.fromkeys(RECONNECT_REASONS, 0.0)
        self.trouble_at = 0.0  # the latest fallback or failed watch (Unix time of the record)
        self.fallback_at = 0.0
        self.last_message: dict[str, float] = {}  # pair -> Unix time of its last `watch done` record

    def observe(self, records: Iterable[Record], count: bool) -> None:
        for record in records:
            message = record.message
            if WS_ENABLED.search(message) or record.logger == WS_LOGGER:
                self.streaming = True
            if found := WATCH_DONE.match(message):
                pair = found.group("pair")
                self.last_message[pair] = max(self.last_message.get(pair, 0.0), record.at)
            elif found := REMOVED.match(message):
                self.last_message.pop(found.group("pair"), None)
            elif FALLBACK.match(message):
                self.streaming = True
                self.trouble_at = max(self.trouble_at, record.at)
                self.fallback_at = max(self.fallback_at, record.at)
                self.fallbacks += count
            elif WATCH_FAILED.match(message):
                self.streaming = True
                self.trouble_at = max(self.trouble_at, record.at)
                self.reconnects["error"] += count
            elif message.startswith(RESET):
                self.reconnects["requested"] += count

    def on_fallback(self, timeframe_seconds: float, now: float | None = None) -> bool:
        """Whether freqtrade takes its candles over REST now: a fallback or a failed watch within the last candle
        and freqtrade's grace."""
        now = time.time() if now is None else now
        return bool(self.trouble_at) and now - self.trouble_at <= timeframe_seconds + GRACE_SECONDS

    def families(self, timeframe_seconds: float | None, up: bool) -> Iterator[Metric]:
        """The stream families (none for a freqtrade that does not stream); the gauges only while freqtrade answers
        (a dead freqtrade streams nothing, and zeros would read as a stream down)."""
        if not self.streaming:
            return
        if up:
            fallback = self.on_fallback(timeframe_seconds or DEFAULT_TIMEFRAME_SECONDS)
            connected = GaugeMetricFamily(
                f"{PREFIX}_stream_connected", "1 while the venue's stream endpoint is connected.", labels=["endpoint"]
            )
            connected.add_metric([ENDPOINT], 0 if fallback else 1)
            yield connected
            rest = GaugeMetricFamily(
                f"{PREFIX}_stream_rest_fallback",
                "1 while the endpoint's stream is down and REST polls stand in for it.",
                labels=["endpoint"],
            )
            rest.add_metric([ENDPOINT], 1 if fallback else 0)
            yield rest
            if self.last_message:
                yield from self._age_families(timeframe_seconds or DEFAULT_TIMEFRAME_SECONDS)
        reconnects = CounterMetricFamily(
            f"{PREFIX}_stream_reconnects", "Reconnects of the stream, by reason.", labels=["endpoint", "reason"]
        )
        for reason, value in self.reconnects.items():
            reconnects.add_metric([ENDPOINT, reason], value)
        yield reconnects
        fallbacks = CounterMetricFamily(
            f"{PREFIX}_stream_rest_fallbacks",
            "Times the bot took over REST what its stream should have brought (freqtrade: a pair's candles).",
            labels=["endpoint"],
        )
        fallbacks.add_metric([ENDPOINT], self.fallbacks)
        yield fallbacks

    def _age_families(self, timeframe_seconds: float) -> Iterator[Metric]:
        last = GaugeMetricFamily(
            f"{PREFIX}_stream_last_message_timestamp_seconds",
            "When the channel last delivered a message for the symbol (its age: time() minus this).",
            labels=["channel", "symbol"],
        )
        timeout = GaugeMetricFamily(
            f"{PREFIX}_stream_silence_timeout_seconds",
            "How long the channel may stay quiet for the symbol before it is silent (only channels with a cadence).",
            labels=["channel", "symbol"],
        )
        for pair, at in sorted(self.last_message.items()):
            last.add_metric([CHANNEL, pair], at)
            timeout.add_metric([CHANNEL, pair], timeframe_seconds + GRACE_SECONDS)
        yield last
        yield timeout
