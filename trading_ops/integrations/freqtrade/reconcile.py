"""Compare freqtrade's open trades and open orders with what the venue holds (through the ccxt broker), and export the
result as the library's `tradingbot_reconciliation_*` and `tradingbot_position_mismatch_quantity` families."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerError
from trading_ops.bot.cardinality import LabelGuard
from trading_ops.bot.metrics import PREFIX, BotMetrics
from trading_ops.bot.reconciliation_metrics import ReconciliationMetrics
from trading_ops.integrations.freqtrade.client import FreqtradeUnavailable
from trading_ops.integrations.freqtrade.poller import FreqtradePoller, symbol_of
from trading_ops.tasks import stop_tasks
from trading_ops.venues.ccxt.rest import CcxtBroker

log = logging.getLogger(__name__)

# Amounts below this are rounding (freqtrade and the venue both round to the market's lot size, 1e-8 at the finest).
POSITION_TOLERANCE = Decimal("1e-9")
# A discrepancy must still be there this much later to count: longer than freqtrade's default iteration (5 s), so it
# has seen the fills the venue already made.
CONFIRM_SECONDS = 6.0
# A failed run is tried again this often until it passes.
RETRY_SECONDS = 2.0
# How often the watcher looks whether freqtrade came back (a new bot_start) or a scheduled run is due.
WATCH_SECONDS = 0.5


@dataclass
class _MetricsOwner:
    """What ReconciliationMetrics reads of a bot's metrics: the venue label, the registry, the cardinality guard."""

    venue: str
    registry: CollectorRegistry
    guard: LabelGuard = field(init=False)

    def __post_init__(self) -> None:
        self.guard = LabelGuard(200, self.registry, PREFIX)


class FreqtradeReconciler:
    """The sidecar owns nothing, so it adopts and cancels nothing: every discrepancy is recorded, counted and exported
    (the library's `alert` policy), and a human or freqtrade's own startup reconciliation settles it.

    Runs on the `reconcile` command, every `interval` seconds (0: never on its own), and once each time freqtrade
    (re)starts: the first run of a new freqtrade process is `startup`, a return after it was down `reconnect`.
    """

    def __init__(
        self,
        poller: FreqtradePoller,
        broker: CcxtBroker,
        registry: CollectorRegistry,
        interval: float = 60.0,
        confirm: float = CONFIRM_SECONDS,
    ) -> None:
        self.poller = poller
        self.broker = broker
        self.interval = interval
        self.confirm = confirm
        # ReconciliationMetrics is typed for a bot's metrics and reads only these three attributes of them.
        self.metrics = ReconciliationMetrics(cast(BotMetrics, _MetricsOwner(broker.venue, registry)))
        self.last: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="freqtrade-reconciler")

    async def stop(self) -> None:
        await stop_tasks([self._task])
        self._task = None
        await self.broker.exchange.close()

    async def command(self, _args: dict[str, Any]) -> dict[str, Any]:
        return await self.run("command")

    async def _watch(self) -> None:
        """Runs `startup` for a new freqtrade process, `reconnect` when it answers again, `schedule` every interval;
        a run that fails (the venue or freqtrade did not answer) is tried again every RETRY_SECONDS until it passes."""
        seen_start: float | None = None
        was_up = True
        pending: str | None = None
        retry_at = 0.0
        next_run = time.monotonic() + self.interval
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            snap = self.poller.snapshot
            if not snap.up:
                was_up = False
                continue
            if snap.bot_start is not None and snap.bot_start != seen_start:
                pending = "startup" if seen_start is None or was_up else "reconnect"
                seen_start = snap.bot_start
            elif not was_up:
                pending = "reconnect"
            elif pending is None and self.interval > 0 and time.monotonic() >= next_run:
                pending = "schedule"
            was_up = True
            if pending is None or time.monotonic() < retry_at:
                continue
            next_run = time.monotonic() + self.interval
            try:
                await self.run(pending)
            except (BrokerError, FreqtradeUnavailable) as exc:
                log.warning("freqtrade reconciliation (%s) failed, retrying in %gs: %s", pending, RETRY_SECONDS, exc)
                retry_at = time.monotonic() + RETRY_SECONDS
            except Exception:  # a bug must not end the watcher: logged, counted as failed by run(), retried
                log.exception("freqtrade reconciliation (%s) raised", pending)
                retry_at = time.monotonic() + RETRY_SECONDS
            else:
                pending = None

    async def run(self, trigger: str) -> dict[str, Any]:
        """One comparison. Raises BrokerError (the venue) or FreqtradeUnavailable; either counts as a failed run.

        freqtrade learns of a fill on its next iteration, so a difference seen once may be an order in flight: what
        is found is looked at again `confirm` seconds later, and only what is still there both times counts."""
        async with self._lock:
            try:
                report = self._compare(*await self._fetch())
                if report["discrepancies"] and self.confirm > 0:
                    await asyncio.sleep(self.confirm)
                    first = {_key(d) for d in report["discrepancies"]}
                    report = self._compare(*await self._fetch())
                    report["discrepancies"] = [d for d in report["discrepancies"] if _key(d) in first]
            except Exception:
                self.metrics.run(trigger, "failed", time.time())
                raise
            return self._record(trigger, report)

    async def _fetch(self) -> tuple[Any, ...]:
        snap = await self.poller.poll()
        if not snap.up:
            raise FreqtradeUnavailable(snap.error)
        venue_orders = await self.broker.open_orders()
        positions = await self.broker.positions()
        return snap, venue_orders, positions

    @staticmethod
    def _compare(snap: Any, venue_orders: list[Any], positions: dict[str, Decimal]) -> dict[str, Any]:
        found: list[dict[str, Any]] = []
        held: dict[str, Decimal] = {}
        for trade in snap.trades:
            symbol = symbol_of(str(trade.get("pair", "")))
            sign = -1 if trade.get("is_short") else 1
            held[symbol] = held.get(symbol, Decimal(0)) + sign * Decimal(str(trade.get("amount") or 0))
        differences: dict[str, Decimal] = {}
        for symbol in sorted(set(held) | set(positions)):
            venue, bot = positions.get(symbol), held.get(symbol, Decimal(0))
            if venue is None:
                continue  # a pair the broker was not told to watch (ccxt.symbols of this target)
            differences[symbol] = venue - bot
            if abs(venue - bot) > POSITION_TOLERANCE:
                found.append(
                    {"kind": "position_mismatch", "symbol": symbol, "venue": str(venue), "freqtrade": str(bot)}
                )
        ft_orders = {str(order.get("order_id")): trade for trade, order in snap.open_orders()}
        open_on_venue = {o.venue_order_id: o for o in venue_orders if o.status.is_open}
        for order_id, order in sorted(open_on_venue.items()):
            if order_id not in ft_orders:
                found.append({"kind": "unknown_order", "order_id": order_id, "symbol": order.symbol})
        for order_id, trade in sorted(ft_orders.items()):
            if order_id not in open_on_venue:
                found.append({"kind": "vanished_order", "order_id": order_id, "trade_id": trade.get("trade_id")})
        return {
            "discrepancies": found,
            "differences": differences,
            "venue_positions": {s: str(q) for s, q in sorted(positions.items())},
            "freqtrade_positions": {s: str(q) for s, q in sorted(held.items())},
            "venue_open_orders": sorted(open_on_venue),
            "freqtrade_open_orders": sorted(ft_orders),
        }

    def _record(self, trigger: str, report: dict[str, Any]) -> dict[str, Any]:
        found = report["discrepancies"]
        confirmed = {d["symbol"] for d in found if d["kind"] == "position_mismatch"}
        for symbol, difference in report.pop("differences").items():
            self.metrics.position_mismatch(symbol, float(difference) if symbol in confirmed else 0.0)
        for item in found:
            self.metrics.discrepancy(item["kind"])
        # As the library's `alert` policy: every discrepancy recorded and exported counts as handled.
        result = "resolved" if found else "clean"
        self.metrics.run(trigger, result, time.time())
        level = logging.WARNING if found else logging.INFO
        log.log(level, "freqtrade reconciliation (%s): %s, %d discrepancies", trigger, result, len(found))
        self.last = {"trigger": trigger, "result": result, "clean": not found, **report}
        return dict(self.last)


def _key(discrepancy: dict[str, Any]) -> tuple[str, str]:
    return discrepancy["kind"], str(discrepancy.get("symbol") or discrepancy.get("order_id"))
