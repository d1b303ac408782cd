"""The crash report a bot sends through apprise when it starts after a crash."""

from __future__ import annotations

import json
import logging
from typing import Any

import apprise

log = logging.getLogger(__name__)

MAX_LISTED = 20


def format_report(bot: str, venue: str, detail: dict[str, Any]) -> tuple[str, str]:
    """(title, body) of the report: what the previous run left and what reconciliation did about it."""
    previous = detail.get("previous_run", {})
    recon = detail.get("reconciliation") or {}
    title = f"trading-ops: bot {bot} on {venue} restarted after a crash"
    lines = [
        f"Bot {bot} ({venue}) started after a crash of run {previous.get('run_id')} "
        f"(pid {previous.get('pid')} on {previous.get('hostname')}).",
        f"Last heartbeat: {previous.get('last_heartbeat_at')} ({detail.get('heartbeat_age_seconds', 0):.1f} s before "
        "this start); no clean-shutdown marker.",
        f"Open orders in the journal at the crash: {len(detail.get('journal_open_orders', []))}.",
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


async def send_report(urls: list[str], title: str, body: str) -> bool:
    """Notify every URL; False when there is none or any of them failed (logged, never raised)."""
    if not urls:
        log.warning("no notification URLs configured (notifications.urls): crash report not sent")
        return False
    notifier = apprise.Apprise()
    for url in urls:
        if not notifier.add(url):
            log.error("notification URL %s... is not one apprise understands", url.split(":", 1)[0])
    if len(notifier) == 0:
        return False
    try:
        ok = bool(await notifier.async_notify(title=title, body=body, notify_type=apprise.NotifyType.FAILURE))
    except Exception:
        log.exception("crash report could not be sent")
        return False
    if not ok:
        log.error("crash report: at least one notification failed")
    return ok
