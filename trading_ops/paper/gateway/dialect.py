"""What a second dialect of the paper gateway implements to serve the gateway's accounts beside the Kraken one: the
market's quotes and every account's orders and fills as they happen, its routes on the gateway's app, its faults
among the gateway's fault commands, started and stopped with the gateway."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from trading_ops.bot.broker import Quote, VenueFill, VenueOrder


class Dialect(Protocol):
    """A venue's API over the gateway's paper venue and accounts (trading_ops.paper.gateway.binance)."""

    name: str
    fault_names: tuple[str, ...]

    def mount(self, app: web.Application) -> None:
        """Add the dialect's routes to the gateway's app."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def on_quote(self, quote: Quote) -> None:
        """The market's feed published a quote (the main venue's)."""

    async def on_order(self, account: str, order: VenueOrder) -> None:
        """An order of `account` changed."""

    async def on_fill(self, account: str, fill: VenueFill) -> None:
        """An order of `account` filled."""

    async def inject(self, fault: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """One of `fault_names`; ValueError for bad arguments (the gateway answers 400)."""

    def clear(self) -> None:
        """Every fault of the dialect ends (the gateway's `clear`)."""

    async def drop_sockets(self) -> None:
        """The venue dropped its connections (the gateway's outage and drop_connection)."""

    def describe(self) -> dict[str, Any]:
        """The dialect's faults in force (the gateway's `GET /chaos`)."""
