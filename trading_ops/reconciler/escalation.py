"""How a run that cannot end well ends: a page owed to a human, in the same write as the episode's end."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from trading_ops.config import ReconcilerConfig
from trading_ops.db.base import utcnow
from trading_ops.reconciler.actions.base import ActionContext, Refused, truncate
from trading_ops.reconciler.actions.escalate import FAILED, escalation_alert
from trading_ops.reconciler.ledger import Written
from trading_ops.reconciler.ledger.rollback import PAGE
from trading_ops.reconciler.outbox import OutboxStore
from trading_ops.reconciler.playbook import Rule
from trading_ops.reconciler.runs import ENGINE_LOGGER, LostClaim, RunHolder, RunPart

log = logging.getLogger(ENGINE_LOGGER)


class Escalation(RunPart):
    """Owns the end of every run that pages a human: the rule's failure policy once nothing more is tried
    (`give_up`), the page of a gate or a step that ends the run (`close_escalated`), an internal error, and the page
    itself, an outbox row written with the episode's `escalating` (`owe_page`) so that a page is never lost. Sending
    it is the outbox's job (trading_ops.reconciler.outbox)."""

    def __init__(
        self, holder: RunHolder, rc: ReconcilerConfig, outbox: OutboxStore, escalations: asyncio.Event
    ) -> None:
        super().__init__(holder)
        self.rc = rc
        self.outbox = outbox
        # Pages owed go to the escalation outbox; this wakes its sender.
        self.escalations = escalations

    async def give_up(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, failure: str) -> None:
        if rule.on_failure == "none":
            await self.holder.close(episode, "failed", failure)
            return
        description = (
            f"Rule {rule.name} did not recover {episode['alertname']} on {episode['target']} "
            f"(episode {episode['id']}). Tried: " + "; ".join(ctx.history or ["nothing"])
        )
        if rule.summary:  # the page leads with what the alert means and what was not done, and why
            try:
                summary = ctx.render(rule.summary)
            except Refused:
                summary = rule.summary
            description = f"{summary}: {failure[:300]}. {description}"
        await self.close_escalated(episode, FAILED, ctx, description, failure)

    async def close_escalated(
        self, episode: dict[str, Any], alertname: str, ctx: ActionContext, description: str, detail: str
    ) -> None:
        """End the run by paging a human. Every run that ends escalated ends here (the internal-error path, which
        must not raise, goes to `owe_page` itself): a page is never lost."""
        await self.owe_page(episode, alertname, ctx.labels, ctx.target, description, detail)

    async def internal_error(self, episode: dict[str, Any], exc: Exception) -> None:
        """A bug or a broken database stopped the run: nothing more is tried automatically, so a human is paged
        (unless another replica has taken the episode over meanwhile: its run goes on, and decides)."""
        error = truncate(f"{type(exc).__name__}: {exc}", 500)
        await self.db(self.ledger.fail_running, episode["id"], self.owner, f"internal error: {error}")
        current = await self.db(self.ledger.episode, episode["id"])
        if current is None or current["owner"] != self.owner:
            log.warning("episode %s: internal error after the claim was lost; left to its new holder", episode["id"])
            return
        description = (
            f"The reconciler hit an internal error while handling {episode['alertname']} on {episode['target']} "
            f"(episode {episode['id']}, rule {episode['rule']}): {error}. Nothing more is tried automatically."
        )
        labels = json.loads(episode["labels"])
        await self.owe_page(episode, FAILED, labels, episode["target"], description, f"internal error: {error}")

    async def owe_page(
        self,
        episode: dict[str, Any],
        alertname: str,
        labels: dict[str, str],
        target: str,
        description: str,
        detail: str,
    ) -> None:
        """The episode becomes `escalating` and its page an outbox row, in one write; the outbox posts it until
        Alertmanager takes it (the apprise notifications too after a while), and the episode is `escalated` once
        the page was delivered somewhere."""
        alert = escalation_alert(alertname, labels, target, description, episode=episode["id"])
        if self.rc.external_url:
            alert["annotations"]["console_url"] = f"{self.rc.external_url.rstrip('/')}/ui/episodes/{episode['id']}"
        self.holder.end_claim(episode)
        page_id = await self.db(self.outbox.enqueue, episode["id"], self.owner, alert, detail, utcnow())
        if page_id is None:
            raise LostClaim
        self.holder.wrote(Written(PAGE, episode["id"], page_id, alertname))
        self.escalations.set()
        log.info(
            "episode %s (%s on %s): escalating (%s): %s",
            episode["id"],
            episode["alertname"],
            episode["target"],
            alertname,
            detail,
        )
