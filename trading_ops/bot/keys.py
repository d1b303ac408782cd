"""Typed aiohttp application keys of the bot's server."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# The trading_ops.bot.instrumentation.Instrumentation the app serves (Any: avoids an import cycle).
INSTRUMENTATION: web.AppKey[Any] = web.AppKey("instrumentation", object)
