"""A freqtrade strategy for trading-ops' tests: enter every whitelisted pair at once, exit after a few seconds.

It trades on any price series (no indicator), so a freqtrade running it opens trades within its first iterations on
the Kraken-compatible paper gateway. `hold_seconds` (from freqtrade's config key `trading_ops_hold_seconds`, default
3) is how long a trade stays open before the strategy exits it; a test that needs trades to stay open (to flatten
them) sets it high.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from freqtrade.persistence import Trade
from freqtrade.strategy import IStrategy
from pandas import DataFrame

DEFAULT_HOLD_SECONDS = 3.0


class TradingOpsQuick(IStrategy):
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
