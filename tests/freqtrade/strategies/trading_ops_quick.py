"""A freqtrade strategy for trading-ops' tests: enter every whitelisted pair at once, exit after a few seconds.

It trades on any price series (no indicator), so a freqtrade running it opens trades within its first iterations on
the Kraken-compatible paper gateway. `hold_seconds` (from freqtrade's config key `trading_ops_hold_seconds`, default
3) is how long a trade stays open before the strategy exits it; a test that needs trades to stay open (to flatten
them) sets it high.

A stalled trading loop with the API alive (a deadlock, a blocking call): while the file named by the config key
`trading_ops_stall_file` holds this process's pid, every iteration blocks at its start. freqtrade's API server (its own
thread) keeps answering, its last completed iteration does not move. A restarted freqtrade has another pid: it trades.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from freqtrade.persistence import Trade
from freqtrade.strategy import IStrategy
from pandas import DataFrame

DEFAULT_HOLD_SECONDS = 3.0
STALL_CHECK_SECONDS = 0.2


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

    def bot_loop_start(self, current_time: datetime, **kwargs: Any) -> None:
        stall = self.config.get("trading_ops_stall_file")
        while stall and _names_this_process(Path(stall)):
            time.sleep(STALL_CHECK_SECONDS)

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


def _names_this_process(path: Path) -> bool:
    try:
        return path.read_text().strip() == str(os.getpid())
    except OSError:
        return False
