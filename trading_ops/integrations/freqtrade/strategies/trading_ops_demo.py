"""The freqtrade strategy `trading-ops up --bot freqtrade` runs: enter every whitelisted pair, exit after a while.

A demonstration, not a trading idea: it trades on any price series (no indicator), so the freqtrade of the local stack
holds trades within its first iterations on the paper gateway and there is something to watch, flatten and heal.
`trading_ops_hold_seconds` (a key of freqtrade's config, default DEFAULT_HOLD_SECONDS) is how long a trade stays open
before the strategy exits it; freqtrade enters again on its next iteration. freqtrade loads this file by path
(`--strategy TradingOpsDemo --strategy-path <this directory>`): it is not imported by trading_ops.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from freqtrade.persistence import Trade
from freqtrade.strategy import IStrategy
from pandas import DataFrame

DEFAULT_HOLD_SECONDS = 120.0


class TradingOpsDemo(IStrategy):  # type: ignore[misc]  # freqtrade ships no type information
    INTERFACE_VERSION = 3
    timeframe = "1m"
    # Exits come from custom_exit only: no ROI table, and a stoploss far away.
    minimal_roi = {"0": 100.0}
    stoploss = -0.99
    # Analyse on every iteration, not only on a new candle: trades start within seconds.
    process_only_new_candles = False
    startup_candle_count = 1
    use_exit_signal = True

    def populate_indicators(self, dataframe: DataFrame, metadata: dict[str, Any]) -> DataFrame:
        return dataframe

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict[str, Any]) -> DataFrame:
        dataframe["enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict[str, Any]) -> DataFrame:
        dataframe["exit_long"] = 0
        return dataframe

    def custom_exit(
        self, pair: str, trade: Trade, current_time: datetime, current_rate: float, current_profit: float, **kwargs: Any
    ) -> str | None:
        hold = float(self.config.get("trading_ops_hold_seconds", DEFAULT_HOLD_SECONDS))
        if (current_time - trade.open_date_utc).total_seconds() >= hold:
            return "held"
        return None
