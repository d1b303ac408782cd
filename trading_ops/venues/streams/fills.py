"""Fills from a private stream and from REST reconciliation, each delivered once: deduplicated by execution id, the
source that saw it first counted, and a REST reconciliation after every reconnect and every sequence gap."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from trading_ops.bot.broker import VenueFill
from trading_ops.venues.streams.metrics import StreamMetrics
from trading_ops.venues.streams.parse import execution_fill

LOG = logging.getLogger(__name__)

REMEMBERED = 10_000  # execution ids kept to deduplicate (far more than a trade snapshot or a REST page holds)


class FillFeed:
    """Hands each fill to `on_fill` once, whichever source offers it first; `reconcile` is the caller's REST
    reconciliation (it offers what it finds with `offer(fill, "poll")`)."""

    def __init__(
        self,
        on_fill: Callable[[VenueFill], Awaitable[None]],
        reconcile: Callable[[], Awaitable[None]],
        metrics: StreamMetrics,
        symbols: Mapping[str, str],
    ) -> None:
        self.on_fill = on_fill
        self.reconcile = reconcile
        self.metrics = metrics
        self.symbols = dict(symbols)  # v2 symbol (BTC/USD) -> ours (BTC-USD)
        self._seen: OrderedDict[str, str] = OrderedDict()
        for source in ("stream", "poll"):
            metrics.fills_first_seen.labels(source)

    async def offer(self, fill: VenueFill, source: str) -> bool:
        """Deliver `fill` unless already delivered; True when delivered."""
        if fill.trade_id in self._seen:
            return False
        self._seen[fill.trade_id] = source
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        try:
            await self.on_fill(fill)
        except BaseException:
            self._seen.pop(fill.trade_id, None)  # not delivered: the next source to offer it (a REST poll) delivers it
            raise
        self.metrics.fills_first_seen.labels(source).inc()
        return True

    async def offer_all(self, fills: Iterable[VenueFill], source: str) -> int:
        return sum([await self.offer(fill, source) for fill in fills])

    # -- KrakenStream callbacks -------------------------------------------------------------------------------
    async def on_message(self, message: dict[str, Any]) -> None:
        """An executions message: its trade events are fills (a snapshot's repeats of fills already seen dropped)."""
        if message.get("channel") != "executions" or not isinstance(message.get("data"), list):
            return
        for item in message["data"]:
            try:
                fill = execution_fill(item, self.symbols) if isinstance(item, dict) else None
            except (KeyError, ValueError, ArithmeticError) as exc:
                LOG.warning("an executions trade event without what a fill needs (%s): %.200s", exc, item)
                continue
            if fill is not None:
                await self.offer(fill, "stream")

    async def on_gap(self, _channel: str, missing: int) -> None:
        LOG.warning("%d executions messages lost: reconciling over REST", missing)
        await self.reconcile()

    async def on_reconnect(self) -> None:
        await self.reconcile()
