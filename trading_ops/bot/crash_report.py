"""The crash report a bot sends through apprise when it starts after a crash, retried until it is sent."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from trading_ops.bot.journal import Journal
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.clients.notify import Notifier

log = logging.getLogger(__name__)

MAX_LISTED = 20
# A report that could not be sent is tried again after this long, doubling up to MAX_RETRY_SECONDS.
RETRY_SECONDS = 5.0
MAX_RETRY_SECONDS = 600.0
# Unsent reports tried at once (the newest); older ones wait until these are through.
MAX_PENDING_REPORTS = 10


def format_report(bot: str, venue: str, detail: dict[str, Any]) -> tuple[str, str]:
    """(title, body) of the report: what the previous run left and what reconciliation did about it."""
    previous = detail.get("previous_run", {})
    recon = detail.get("reconciliation") or {}
    title = f"trading-ops: bot {bot} on {venue} restarted after a crash"
    lines = [
        f"Bot {bot} ({venue}) started after a crash of run {previous.get('run_id')} "
        f"(pid {previous.get('pid')} on {previous.get('hostname')}).",
        f"Last heartbeat: {previous.get('last_heartbeat_at')} ({detail.get('heartbeat_age_seconds', 0):.1f} s before "
        "this start); no clean-shutdown marker"
        + (f" (stopped: {previous.get('stop_reason')})." if previous.get("stopped_at") else "."),
        f"Open orders in the journal at the crash: {len(detail.get('journal_open_orders', []))}.",
        "Positions in the journal at the crash: "
        + (", ".join(f"{s} {q}" for s, q in sorted((detail.get("journal_positions") or {}).items())) or "none")
        + ".",
        f"Startup reconciliation: {recon.get('result', 'not run')} {json.dumps(recon.get('counts', {}))}.",
        f"Trading state now: {detail.get('state')}.",
    ]
    for item in (recon.get("discrepancies") or [])[:MAX_LISTED]:
        lines.append(
            f"- {item['kind']} {item['key']}: journal {item['journal']}, venue {item['venue']} -> {item['outcome']}"
        )
    extra = len(recon.get("discrepancies") or []) - MAX_LISTED
    if extra > 0:
        lines.append(f"... and {extra} more (reconciliation run {recon.get('run_id')}).")
    return title, "\n".join(lines)


class CrashReporter:
    """Sends the report of every recovery event not yet notified, and keeps trying until each is sent.

    A report that fails (the notification service is down) is retried with a doubling delay, from `retry_seconds`
    up to `max_retry_seconds`, while the bot runs; a report still unsent when it stops is sent at a later start.
    """

    def __init__(
        self,
        journal: Journal,
        store: RecoveryStore,
        urls: list[str],
        *,
        bot: str,
        venue: str,
        retry_seconds: float = RETRY_SECONDS,
        max_retry_seconds: float = MAX_RETRY_SECONDS,
    ) -> None:
        self.journal = journal
        self.store = store
        self.urls = urls
        self.bot = bot
        self.venue = venue
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.sent = 0
        self.attempts = 0
        self.failures = 0  # attempts that raised (the database), not counting reports the service refused

    async def run(self) -> None:
        """Until every pending report is sent (returns at once when there is none, or no URL to send to).

        An attempt that fails on the database (reading the pending reports, marking one sent) is logged and retried
        with the same doubling delay as a report the notification service refused: the task never dies of it.
        """
        delay = self.retry_seconds
        while True:
            try:
                unsent = await self._attempt()
            except Exception:
                self.failures += 1
                log.exception("crash reports: an attempt failed; next attempt in %g s", delay)
            else:
                if not unsent:
                    return
                log.warning("%d crash reports not sent; next attempt in %g s", unsent, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_retry_seconds)

    async def _attempt(self) -> int:
        """Send every pending report once; returns how many are left unsent (0 also when there is nowhere to send
        them)."""
        pending = await self.journal.call(self.store.unnotified_events, MAX_PENDING_REPORTS)
        if not pending:
            return 0
        if not self.urls:
            log.warning("%d crash reports not sent: no notification URLs configured (notifications.urls)", len(pending))
            return 0
        unsent = 0
        for event in pending:
            try:
                detail = json.loads(event.detail)
            except ValueError:
                log.error("recovery event %d has an unreadable detail; its report says so", event.id)
                detail = {"unreadable_detail": str(event.detail)[:500]}
            if not await self._send(event.id, detail if isinstance(detail, dict) else {"detail": detail}):
                unsent += 1
        return unsent

    async def _send(self, event_id: int, detail: dict[str, Any]) -> bool:
        self.attempts += 1
        title, body = format_report(self.bot, self.venue, detail)
        if not await Notifier(self.urls).notify(title, body, failure=True):
            return False
        await self.journal.call(self.store.mark_notified, event_id)
        self.sent += 1
        log.info("crash report of recovery event %d sent", event_id)
        return True
