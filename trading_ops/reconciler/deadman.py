"""Dead man's switch: when the always-firing Watchdog stops arriving, notify through apprise directly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from trading_ops.clients.notify import Notifier
from trading_ops.reconciler.metrics import ReconcilerMetrics

log = logging.getLogger(__name__)


class DeadMansSwitch:
    def __init__(
        self,
        window: float,
        check_interval: float,
        notifier: Notifier,
        metrics: ReconcilerMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.check_interval = check_interval
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        # Start-up counts as a Watchdog: the pipeline gets one window to prove itself.
        self.last = clock()
        self.triggered = False
        self._pending: set[asyncio.Task[bool]] = set()

    def seen(self) -> None:
        self.last = self.clock()
        self.metrics.watchdog_last.set(self.last)
        if self.triggered:
            self.triggered = False
            self.metrics.deadman_triggered.set(0)
            log.warning("Watchdog arrives again: the alerting pipeline is back")
            task = asyncio.ensure_future(
                self.notifier.notify(
                    "[trading-ops] alerting pipeline restored", "The Watchdog alert reaches the reconciler again."
                )
            )
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def check(self) -> bool:
        """Trigger (once) when no Watchdog arrived within the window; True while triggered."""
        if self.window <= 0:
            return False
        silent_for = self.clock() - self.last
        if silent_for > self.window and not self.triggered:
            self.triggered = True
            self.metrics.deadman_triggered.set(1)
            log.error("no Watchdog alert for %.0fs: the alerting pipeline is broken", silent_for)
            await self.notifier.notify(
                "[trading-ops] alerting pipeline broken",
                f"No Watchdog alert reached the reconciler for {silent_for:.0f}s (window {self.window:g}s). "
                "Prometheus, Alertmanager or the webhook route is down: alerts are not being delivered.",
            )
        return self.triggered

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.check()
            except Exception:
                log.exception("dead man's switch check failed")
