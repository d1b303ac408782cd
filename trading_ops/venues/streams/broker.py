"""A ccxt broker whose fills stream: CcxtBroker for every call and its polls (REST stays the fallback and the
reconciliation), with Kraken v2's private `executions` channel delivering fills as they happen; each fill reaches
the bot once, whichever of the stream and the poll saw it first (FillFeed), and every reconnect or sequence gap of
the stream runs a poll at once."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerEvents, Channel, VenueFill
from trading_ops.tasks import stop_tasks
from trading_ops.venues.ccxt import CcxtBroker, to_ccxt_symbol
from trading_ops.venues.streams.client import KrakenStream, Subscription
from trading_ops.venues.streams.fills import FillFeed
from trading_ops.venues.streams.metrics import StreamMetrics


class StreamingCcxtBroker(CcxtBroker):
    """CcxtBroker plus the private stream at `private_url` (a token from the exchange's GetWebSocketsToken). Only
    connect and close differ: the bot's on_fill is fed by both sources through one FillFeed."""

    def __init__(
        self,
        exchange: Any,
        symbols: list[str],
        *,
        private_url: str,
        registry: CollectorRegistry | None = None,
        **kw: Any,
    ):
        super().__init__(exchange, symbols, **kw)
        self.private_url = private_url
        self._bot_on_fill: Any = None
        self.stream: KrakenStream | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self.stream_metrics: StreamMetrics | None = None
        self.fills: FillFeed | None = None
        if registry is not None:
            self.register_metrics(registry)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """The stream's metrics on the bot's registry (a registry of its own when the bot gave none by `connect`)."""
        if self.stream_metrics is not None:
            return
        self.stream_metrics = StreamMetrics(registry)
        self.fills = FillFeed(
            self._to_bot, self.drain_events, self.stream_metrics, {to_ccxt_symbol(s): s for s in self.symbols}
        )

    async def _to_bot(self, fill: VenueFill) -> None:
        if self._bot_on_fill is not None:
            await self._bot_on_fill(fill)

    async def _from_poll(self, fill: VenueFill) -> None:
        assert self.fills is not None  # connect registered it
        await self.fills.offer(fill, "poll")

    async def _token(self) -> str:
        # Through CcxtBroker's call: its errors mapped, a nonce refused (a private call of the bot's beside it) retried.
        answer = await self._call(Channel.ORDERS, "websocket token", self.exchange.privatePostGetWebSocketsToken)
        return str(answer["result"]["token"])

    async def connect(self, events: BrokerEvents) -> None:
        self._bot_on_fill = events.on_fill
        if self.stream_metrics is None:  # a broker used without a bot runtime
            self.register_metrics(CollectorRegistry())
        assert self.fills is not None and self.stream_metrics is not None
        await super().connect(dataclasses.replace(events, on_fill=self._from_poll))
        if self._stream_task is None:
            self.stream = KrakenStream(
                self.private_url,
                [Subscription("executions", params={"snap_trades": True})],
                self.stream_metrics,
                endpoint="private",
                token=self._token,
                on_message=self.fills.on_message,
                on_gap=self.fills.on_gap,
                on_reconnect=self.fills.on_reconnect,
            )
            self._stream_task = asyncio.create_task(self.stream.run(), name=f"{self.venue}-executions")

    async def reconnect(self) -> None:
        """CcxtBroker's new REST session, and a new socket (its subscriptions replayed, a REST reconciliation)."""
        await super().reconnect()
        if self.stream is not None:
            await self.stream.reconnect()

    async def resubscribe(self, symbols: list[str] | None = None) -> None:
        """CcxtBroker's fresh markets and quotes, and the stream's channels subscribed again (a fresh snapshot)."""
        await super().resubscribe(symbols)
        if self.stream is not None:
            await self.stream.resubscribe([to_ccxt_symbol(s) for s in symbols] if symbols is not None else None)

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()
        await stop_tasks([self._stream_task])
        self._stream_task = None
        self.stream = None
        await super().close()
