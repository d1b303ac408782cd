"""Which Alertmanager silences are bot maintenance windows: they pause the bots' remediation; refreshed into metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError, matcher_accepts
from trading_ops.reconciler.metrics import ReconcilerMetrics

log = logging.getLogger(__name__)

# Often enough for the MaintenanceWindowOverrun alert (for: 5m) and a dashboard; rare enough to cost nothing.
REFRESH_SECONDS = 15.0
# What every trading-bot alert carries (prometheus/rules/tradingbot-*.yml and the scrape job).
BOT_ALERT_PREFIX = "TradingBot"
BOT_SERVICE = "tradingbot"
BOT_JOB = "tradingbot"


def _accepts_bot_alertname(matcher: dict[str, Any], alertnames: Iterable[str]) -> bool:
    if not matcher.get("isRegex") and matcher.get("isEqual", True):
        return str(matcher.get("value", "")).startswith(BOT_ALERT_PREFIX)
    return any(matcher_accepts(matcher, name) for name in alertnames)


def is_bot_maintenance(
    silence: dict[str, Any], created_by_reconciler: str, targets: Iterable[str], alertnames: Iterable[str]
) -> bool:
    """Whether a silence is a maintenance window of the trading bots.

    It is when it is active, was not created by the reconciler itself (its own silences let a fix settle), none of
    its matchers rules trading-bot alerts out (`service`/`job` must accept "tradingbot", `alertname` some
    TradingBot alert) and one of them selects trading-bot alerts: `service` or `job` equal to or matching
    "tradingbot", `alertname` naming or matching a TradingBot alert (`alertnames`: those of the playbook), or
    `instance` naming one of the configured bot targets. A silence of, say, `severity="info"` alone is not one."""
    if (silence.get("status") or {}).get("state") != "active" or silence.get("createdBy") == created_by_reconciler:
        return False
    names = [n for n in alertnames if n.startswith(BOT_ALERT_PREFIX)]
    selects = False
    for m in silence.get("matchers") or []:
        name, positive = m.get("name"), bool(m.get("isEqual", True))
        if name in ("service", "job"):
            if not matcher_accepts(m, BOT_SERVICE if name == "service" else BOT_JOB):
                return False
            selects = selects or positive
        elif name == "alertname":
            if not _accepts_bot_alertname(m, names):
                return False
            selects = selects or positive
        elif name == "instance" and positive:
            selects = selects or any(matcher_accepts(m, t) for t in targets)
    return selects


def _ends_at(silence: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(silence.get("endsAt", "")).replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        return 0.0


class MaintenanceWatcher:
    """Refreshes tradingops_maintenance_active and tradingops_maintenance_window_end_timestamp_seconds from
    Alertmanager's silences every `interval` seconds (not on every engine poll)."""

    def __init__(
        self,
        alertmanager: AlertmanagerClient,
        metrics: ReconcilerMetrics,
        created_by_reconciler: str,
        targets: Iterable[str],
        alertnames: Iterable[str],
        interval: float = REFRESH_SECONDS,
    ) -> None:
        self.alertmanager = alertmanager
        self.metrics = metrics
        self.created_by = created_by_reconciler
        self.targets = tuple(targets)
        self.alertnames = tuple(alertnames)
        self.interval = interval
        self.failing = False

    async def refresh(self) -> list[dict[str, Any]]:
        """Read the silences and export the state; the maintenance silences found. When Alertmanager cannot be
        reached the last state stays exported (and is logged): an unknown window is not a closed one."""
        try:
            silences = await self.alertmanager.silences()
        except AlertmanagerError as exc:
            if not self.failing:
                log.warning("cannot read silences; maintenance state kept as it was: %s", exc)
            self.failing = True
            raise
        if self.failing:
            log.info("silences readable again")
        self.failing = False
        windows = [s for s in silences if is_bot_maintenance(s, self.created_by, self.targets, self.alertnames)]
        self.metrics.maintenance_active.set(1 if windows else 0)
        self.metrics.maintenance_window_end.set(max((_ends_at(s) for s in windows), default=0.0))
        return windows

    async def run_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except AlertmanagerError:
                pass
            except Exception:
                log.exception("maintenance refresh failed")
            await asyncio.sleep(self.interval)
