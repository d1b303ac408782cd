"""The library a trading bot runs in-process: metrics, collectors, trading state and the control API."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trading_ops.bot.instrumentation import Instrumentation
    from trading_ops.bot.metrics import BotMetrics
    from trading_ops.bot.state import TradingState, TransitionRefused

__all__ = ["BotMetrics", "Instrumentation", "TradingState", "TransitionRefused"]
# Where each name of __all__ is defined. It is imported on first use (PEP 562), not with the package: a process that
# needs one small module of it (upkeep cleanup reads the instance lock's file suffix) does not load the runtime
# (aiohttp, prometheus_client, the control API).
_EXPORTS = {
    "BotMetrics": "trading_ops.bot.metrics",
    "Instrumentation": "trading_ops.bot.instrumentation",
    "TradingState": "trading_ops.bot.state",
    "TransitionRefused": "trading_ops.bot.state",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
