"""`escalate`: post an alert to Alertmanager's API v2 so its routing pages a human."""

from __future__ import annotations

from typing import Any

from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError
from trading_ops.db.base import utcnow
from trading_ops.reconciler.actions.base import Action, ActionContext, Result, template_labels
from trading_ops.reconciler.actions.venue import FLAT

FAILED = "TradingOpsRemediationFailed"
CIRCUIT_OPEN = "TradingOpsRemediationCircuitOpen"
# A playbook stopped a bot on purpose (protective pause): nothing failed, but only a human may let it trade again.
BOT_PAUSED = "TradingOpsBotPaused"
# A playbook closed a bot's positions on a breached limit and verified it flat (loss-limit-flatten): it pages, since
# the bot stopped trading for the day and only a human lets it trade again.
BOT_FLATTENED = "TradingOpsBotFlattened"
# A step marked `approval: required` waits for a person (trading_ops.reconciler.approvals): the page says what and how
# to answer.
APPROVAL_REQUESTED = "TradingOpsApprovalRequested"
# A bot's host is down and the playbook cancelled its orders at the venue (bot-host-down): the page says what the bot
# still holds there, before a person decides about a flatten.
BOT_HOST_DOWN = "TradingOpsBotHostDown"
RUNBOOK_BASE = "https://github.com/trading-ops/trading-ops/blob/main/runbooks/"
SUMMARIES = {
    FAILED: "Automatic remediation did not recover the alert.",
    CIRCUIT_OPEN: "The reconciler spent a target's action budget and stopped acting on it.",
    BOT_PAUSED: "The reconciler paused a bot; a human decides when it trades again.",
    APPROVAL_REQUESTED: "The reconciler waits for a person to approve or reject a step.",
    BOT_FLATTENED: "A bot breached a loss limit and was flattened; a human decides when it trades again.",
    BOT_HOST_DOWN: "A bot's host is down; the reconciler cancelled its orders at the venue and says what it holds.",
}
# Every alert the reconciler posts (the escalation list), with the severity it is posted at. Alertmanager routes each
# to people only, never back to the reconciler (alertmanager.yml; tests/monitoring/test_alertmanager_config.py holds
# the two together, so a new escalation alert without its route fails there). A playbook's `escalate` step may name only
# these (trading_ops.reconciler.playbook checks it at load).
ESCALATIONS = {
    FAILED: "critical",
    CIRCUIT_OPEN: "critical",
    BOT_PAUSED: "warning",
    APPROVAL_REQUESTED: "critical",
    BOT_FLATTENED: "critical",
    BOT_HOST_DOWN: "critical",
}


class EscalateAction(Action):
    kind = "escalate"
    budgeted = False
    params = {"alertname": (str, False), "severity": (str, False), "description": (str, False)}

    def checked_labels(self, params: dict[str, Any]) -> list[str]:
        # The description is text for people, posted as JSON; its ${label}s are filled in with validated values.
        return template_labels(params.get("description", ""))

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        name = params.get("alertname", FAILED)
        if name not in ESCALATIONS:
            known = ", ".join(sorted(ESCALATIONS))
            raise ValueError(
                f"alertname: {name} is not an escalation alert (one of {known}); Alertmanager routes only those to "
                "people alone, any other would come back to the reconciler"
            )

    async def needless(self, ctx: ActionContext, params: dict[str, Any]) -> str | None:
        """The exposure page of a dead host's bot whose account is flat pages nobody: this run's last venue step left
        (or found) none of its orders open and nothing held (a failed cancel stops the run before this step and pages
        as a failure). A run without such a step (a venue step of an earlier life of the run) pages as usual."""
        if params.get("alertname") != BOT_HOST_DOWN:
            return None
        venue = [result for kind, result in ctx.results if kind == "venue"]
        if venue and venue[-1].ok and venue[-1].output.endswith(f": {FLAT}"):
            return f"nothing to page: the account is flat ({venue[-1].output})"
        return None

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        given = params.get("description")
        description = ctx.render(given) if given else "; ".join(ctx.history) or "escalated by the playbook"
        alertname = params.get("alertname", FAILED)
        # The exposure page is one per death of the host (its episode): a new death's page is a new alert, never
        # taken by Alertmanager for the previous death's (alertmanager.yml groups it by episode).
        episode = ctx.episode_id if alertname == BOT_HOST_DOWN else None
        try:
            alert = await escalate(
                ctx.alertmanager,
                alertname,
                ctx.labels,
                ctx.target,
                description,
                severity=params.get("severity", "critical"),
                episode=episode,
            )
        except AlertmanagerError as exc:
            return Result("failure", str(exc))
        if alertname == BOT_PAUSED and ctx.announced_pause is not None:
            ctx.announced_pause(alert)  # ended when the bot trades again (page_ends.py)
        if alertname == BOT_HOST_DOWN and ctx.announced_exposure is not None:
            ctx.announced_exposure(alert, ctx.episode_id)  # ended when the account is flat or the host is back
        return Result("success", "alert posted to Alertmanager")


async def escalate(
    client: AlertmanagerClient,
    alertname: str,
    original: dict[str, str],
    target: str,
    description: str,
    severity: str = "critical",
    episode: int | None = None,
) -> dict[str, Any]:
    """Post the escalation's alert (startsAt now; with `episode`, its episode label); the alert as posted."""
    alert = escalation_alert(alertname, original, target, description, severity, episode)
    alert["startsAt"] = utcnow().isoformat()
    await client.post_alerts([alert])
    return alert


def escalation_alert(
    alertname: str,
    original: dict[str, str],
    target: str,
    description: str,
    severity: str = "critical",
    episode: int | None = None,
) -> dict[str, Any]:
    """The alert an escalation posts (labels and annotations): it names the original alert and its target. An
    `episode` label (the outbox's pages) keeps one episode's page apart from another's of the same alert."""
    labels = {
        "alertname": alertname,
        "severity": severity,
        "service": "trading-ops",
        "target": target,
        "instance": original.get("instance", target),
        "original_alertname": original.get("alertname", ""),
    }
    if episode is not None:
        labels["episode"] = str(episode)
    annotations = {
        "summary": SUMMARIES.get(alertname, "The reconciler escalated an alert."),
        "description": description[:4000],
        "runbook_url": f"{RUNBOOK_BASE}{alertname}.md",
    }
    return {"labels": labels, "annotations": annotations}


ACTION = EscalateAction()
