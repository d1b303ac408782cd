"""The library a trading bot runs in-process: what a bot author needs, by name (`from trading_ops.bot import ...`).

A bot is a strategy (any object with `async def step(self, ctx: StrategyContext)`, see Strategy) and a Broker (the
venue: `trading_ops.venues.ccxt.factory.broker_from_config` for any ccxt exchange,
`trading_ops.paper.venue.PaperVenue` for the simulated one), handed to `run` (a whole program) or to `BotRuntime` (to
embed in a program of your own). Every name of __all__ lives in the module _EXPORTS says; docs/library.md ("Writing a
bot") explains each.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trading_ops.bot.broker import (
        Broker,
        BrokerError,
        BrokerEvents,
        Channel,
        OrderRequest,
        OrderStatus,
        OrderType,
        Quote,
        Side,
        VenueFill,
        VenueOrder,
    )
    from trading_ops.bot.instance_lock import AnotherInstanceRunning
    from trading_ops.bot.instrumentation import Instrumentation
    from trading_ops.bot.main import run
    from trading_ops.bot.metrics import BotMetrics
    from trading_ops.bot.risk import RiskLimits
    from trading_ops.bot.runtime import BotRuntime
    from trading_ops.bot.state import TradingState, TransitionRefused
    from trading_ops.bot.strategy import Strategy, StrategyContext, StrategyWithStart
    from trading_ops.config import Config, ConfigError, load_config

__all__ = [
    "AnotherInstanceRunning",
    "BotMetrics",
    "BotRuntime",
    "Broker",
    "BrokerError",
    "BrokerEvents",
    "Channel",
    "Config",
    "ConfigError",
    "Instrumentation",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "Quote",
    "RiskLimits",
    "Side",
    "Strategy",
    "StrategyContext",
    "StrategyWithStart",
    "TradingState",
    "TransitionRefused",
    "VenueFill",
    "VenueOrder",
    "load_config",
    "run",
]
# Where each name of __all__ is defined. It is imported on first use (PEP 562), not with the package: a process that
# needs one small module of it (upkeep cleanup reads the instance lock's file suffix) does not load the runtime
# (aiohttp, prometheus_client, the control API).
_EXPORTS = {
    "AnotherInstanceRunning": "trading_ops.bot.instance_lock",
    "BotMetrics": "trading_ops.bot.metrics",
    "BotRuntime": "trading_ops.bot.runtime",
    "Broker": "trading_ops.bot.broker",
    "BrokerError": "trading_ops.bot.broker",
    "BrokerEvents": "trading_ops.bot.broker",
    "Channel": "trading_ops.bot.broker",
    "Config": "trading_ops.config",
    "ConfigError": "trading_ops.config",
    "Instrumentation": "trading_ops.bot.instrumentation",
    "OrderRequest": "trading_ops.bot.broker",
    "OrderStatus": "trading_ops.bot.broker",
    "OrderType": "trading_ops.bot.broker",
    "Quote": "trading_ops.bot.broker",
    "RiskLimits": "trading_ops.bot.risk",
    "Side": "trading_ops.bot.broker",
    "Strategy": "trading_ops.bot.strategy",
    "StrategyContext": "trading_ops.bot.strategy",
    "StrategyWithStart": "trading_ops.bot.strategy",
    "TradingState": "trading_ops.bot.state",
    "TransitionRefused": "trading_ops.bot.state",
    "VenueFill": "trading_ops.bot.broker",
    "VenueOrder": "trading_ops.bot.broker",
    "load_config": "trading_ops.config",
    "run": "trading_ops.bot.main",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
