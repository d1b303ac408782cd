"""The library a trading bot runs in-process: metrics, collectors, trading state and the control API."""

from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.state import TradingState, TransitionRefused

__all__ = ["BotMetrics", "Instrumentation", "TradingState", "TransitionRefused"]
