"""Fills from a private stream and from REST reconciliation, each delivered once: deduplicated by execution id, the
source that saw it first counted, and a REST reconciliation after every reconnect and every sequence gap. A fill REST
delivers first is a message the executions channel owes: none of it within LOST_AFTER of the fill's execution is the
evidence of a silent channel, which has no cadence to time its silence by (a quiet account is legitimate)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from trading_ops.bot.broker import VenueFill
from trading_ops.bot.streams.health import Silence, silence_timeout
from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.bot.streams.parse import execution_fill

LOG = logging.getLogger(__name__)

REMEMBERED = 10_000  # execution ids kept to deduplicate (far more than a trade snapshot or a REST page holds)
# A subscribed executions channel that has sent nothing this long after a fill executed (three heartbeats) that REST
# found first lost it: it is silent.
LOST_AFTER = silence_timeout(0.0) or 3.0


class FillFeed:
    """Hands each fill to `on_fill` once, whichever source offers it first; `reconcile` is the caller's REST
    reconciliation (it offers what it finds with `offer(fill, "poll")`)."""

    def __init__(
        self,
        on_fill: Callable[[VenueFill], Awaitable[None]],
        reconcile: Callable[[], Awaitable[None]],
        metrics: StreamMetrics,
        symbols: Mapping[str, str],
        silence: Callable[[], Silence | None] = lambda: None,
    ) -> None:
        self.on_fill = on_fill
        self.reconcile = reconcile
        self.metrics = metrics
        self.symbols = dict(symbols)  # v2 symbol (BTC/USD) -> ours (BTC-USD)
        self.silence = silence  # the private stream's clocks while it is connected (None while it is down)
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

    async def offer_polled(self, fill: VenueFill, now: datetime) -> bool:
        """Deliver a fill REST found (`now`: the venue's time as the poll knows it) unless already delivered; True
        when the executions channel owes it (`owed_by`): its clock says so, and the stream's watch finds the channel
        silent when nothing of it comes in time (subscribes it again, then replaces the connection)."""
        if not await self.offer(fill, "poll"):
            return False
        silence = self.silence()
        due = owed_by(fill, now, silence)
        if due is None or silence is None:
            return False
        LOG.debug("fill %s came by REST first: the executions channel owes a message within %.1f s", fill.trade_id, due)
        silence.owe("executions", time.monotonic() + due)
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


def owed_by(fill: VenueFill, now: datetime, silence: Silence | None) -> float | None:
    """Seconds from `now` (the venue's time) until the executions channel (its clocks `silence`, None while its
    socket is down) is late with `fill` (LOST_AFTER after it executed; 0 when already late), or None when the channel
    owes nothing for it: a fill of no order (a position drift is no stream's to lose: the bot's own reconciliation
    adopts it), one that executed before the channel was (last) subscribed, or one the channel has spoken since (it is
    not silent: a message it lost is its sequence's to tell)."""
    if fill.client_order_id is None or silence is None:
        return None
    mono = time.monotonic()
    subscribed_for = silence.subscribed_for("executions", mono)
    quiet_for = silence.quiet_for("executions", mono)
    age = (now - fill.executed_at).total_seconds()
    if subscribed_for is None or quiet_for is None or age >= subscribed_for or quiet_for < age:
        return None
    return max(0.0, LOST_AFTER - age)
