"""Whether an attempt's steps recovered the alert, asked of Prometheus, and how the run ends when they did."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from trading_ops.clients.alertmanager import AlertmanagerError
from trading_ops.clients.prometheus import PrometheusClient, PrometheusError, inline_recording_rules
from trading_ops.db.base import utcnow
from trading_ops.reconciler.actions.base import ActionContext, Refused
from trading_ops.reconciler.actions.escalate import FAILED
from trading_ops.reconciler.escalation import Escalation
from trading_ops.reconciler.page_ends import ended
from trading_ops.reconciler.playbook import Rule
from trading_ops.reconciler.runs import ENGINE_LOGGER, LostClaim, RunHolder, RunPart
from trading_ops.reconciler.steps import AttemptRun, Steps
from trading_ops.reconciler.verify import UNVERIFIED, belongs_to, verify, with_source

log = logging.getLogger(ENGINE_LOGGER)
# How long ending an alert in Alertmanager may hold a closing run (a post returns once one member took it).
END_POST_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Condition:
    """What a verification queries: the expression, where it came from (`playbook` or `prometheus_rules`), and
    whether a firing of the alert outlasts its condition on purpose (its rule's `keep_firing_for`)."""

    expr: str
    source: str
    keeps_firing: bool = False

    @property
    def own(self) -> bool:
        """Whether the expression is the alert's own rule's, whose firing ends with it: when it returns nothing for
        the alert, the alert is over, not just what the playbook checks."""
        return self.source == "prometheus_rules" and not self.keeps_firing


class Verification(RunPart):
    """Owns the check after the steps: the verification expression chosen (the playbook's, else Prometheus's own
    alerting rule, never the webhook's), the episode `verifying` while `verify` polls, and what a verdict ends in: a
    recovery (or a resolution) runs the on_recovery steps and closes the episode, escalated when they fail; any other
    verdict is handed back to the attempt as its failure."""

    def __init__(self, holder: RunHolder, prometheus: PrometheusClient, steps: Steps, escalation: Escalation) -> None:
        super().__init__(holder)
        self.prometheus = prometheus
        self.steps = steps
        self.escalation = escalation

    async def verify_attempt(self, run: AttemptRun, done: frozenset[int]) -> str | None:
        """Verify what the steps did. Recovered or resolved: the on_recovery steps run and the episode is closed
        (escalated when they fail), and None is returned. Otherwise why the verification failed."""
        episode, rule, ctx = run.episode, run.rule, run.ctx
        outcome, detail, condition = await self._verify(episode, rule, ctx)
        if outcome not in ("resolved", "clear"):
            run.note(f"verification: {detail[:300]}")
            return detail
        undone = await self.steps.on_recovery(run, done)
        await self.db(
            self.ledger.finish_attempt, run.attempt_id, "resolved" if outcome == "resolved" else "success", detail
        )
        if outcome == "clear":
            self.metrics.time_to_recovery.observe(max(0.0, (utcnow() - episode["starts_at"]).total_seconds()))
            # After the attempt is recorded verified: asking a dead member costs its verification nothing.
            if condition is not None and not await self.holder.is_resolved(episode["id"]):
                detail += await self.end_unended(ctx, condition)
        if undone:
            description = (
                f"{episode['alertname']} on {episode['target']} is over (episode {episode['id']}, rule "
                f"{rule.name}), but the steps that undo what the rule did failed: {undone}. Tried: "
                + "; ".join(ctx.history)
            )
            await self.escalation.close_escalated(episode, FAILED, ctx, description, f"{detail}; on_recovery: {undone}")
            return None
        await self.holder.close(episode, "resolved" if outcome == "resolved" else "recovered", detail)
        return None

    async def healed_already(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext) -> bool:
        """One fault, one remedy, within a rule: whether an episode about to act for the first time waited behind
        another episode of its rule on the same target whose remedy was verified since this one was stored (one
        fault that fires an alert per channel: the bot's venue link dropped, `TradingBotBrokerDisconnected` for its
        orders and its market data, each a reconnect), and its own condition no longer holds in Prometheus: that
        remedy healed it too. Closed recovered, nothing executed, the ledger naming the episode whose remedy it was.
        The condition is read as the verification reads it, after the other episode's verification saw a scrape taken
        after its action. Acts as before when the condition still holds, or cannot be read."""
        if not rule.verify.enabled:
            return False
        sibling = await self.db(
            self.ledger.recovered_sibling, rule.name, episode["target"], episode["id"], episode["received_at"]
        )
        if sibling is None:
            return False
        condition = await self._expression(episode, rule, ctx)
        if isinstance(condition, str):
            return False
        try:
            result = await self.prometheus.query(condition.expr)
        except PrometheusError as exc:
            log.warning("episode %s: cannot read whether its condition still holds; acting: %s", episode["id"], exc)
            return False
        if any(belongs_to(series, ctx.labels) for series in result):
            return False
        detail = with_source(
            f"healed by the remedy of episode {sibling['id']} ({rule.name}, {sibling['alertname']} on "
            f"{episode['target']}, recovered at {sibling['closed_at'].isoformat()}), verified after this one was "
            f"stored: its condition no longer holds ({condition.expr} returned nothing for this alert); nothing "
            "executed",
            condition.source,
        )
        detail += await self.end_unended(ctx, condition)
        await self.holder.close(episode, "recovered", detail)
        return True

    async def end_unended(self, ctx: ActionContext, condition: Condition) -> str:
        """After the alert's own condition was found clear: its end posted to Alertmanager when a member of the
        Prometheus pair does not answer and none that answers fires it, and what was done, for the episode's detail
        ("" when nothing).

        A Prometheus sends the end of an alert it fired at its next evaluation. One that fired it and died before
        that never does, and Alertmanager holds the alert firing until the alert's own validity runs out, four resend
        delays after that member's last send (4 minutes as Prometheus ships): a fault healed and verified was paged
        at its group's flush (the HA topology's test, 2026-11-29: the other member's scrapes came later in the cycle
        and it never fired the alert). A member that answers has sent its end if it fired the alert, or fires it
        still and ends it itself (an end posted now would be undone by its next resend while its evaluation lags). A
        rule whose firing outlasts its condition (`keep_firing_for`) or a playbook's own check is not the alert's
        end."""
        if not condition.own:
            return ""
        states = await self.prometheus.alert_states(ctx.alertname, ctx.labels)
        answered = [state for state in states.values() if state is not None]
        silent = sorted(url for url, state in states.items() if state is None)
        if not answered or not silent or "firing" in answered:
            return ""  # no member to ask; every member's end sent; or one that fires it ends it itself
        alert: dict[str, Any] = {"labels": ctx.labels, "annotations": ctx.annotations}
        if ctx.starts_at is not None:
            starts = ctx.starts_at if ctx.starts_at.tzinfo is not None else ctx.starts_at.replace(tzinfo=UTC)
            alert["startsAt"] = starts.isoformat()
        try:
            async with asyncio.timeout(END_POST_TIMEOUT_SECONDS):
                await ctx.alertmanager.post_alerts([ended(alert, utcnow())])
        except (AlertmanagerError, TimeoutError) as exc:
            log.warning("episode %s: could not end its alert in Alertmanager: %s", ctx.episode_id, exc)
            return f"; its alert could not be ended in Alertmanager: {str(exc) or 'timed out'}"
        why = f"no Prometheus that answers fires it, {', '.join(silent)} did not answer"
        log.info("episode %s: its alert ended in Alertmanager (%s)", ctx.episode_id, why)
        return f"; its alert ended in Alertmanager ({why})"

    async def _verify(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext
    ) -> tuple[str, str, Condition | None]:
        if not rule.verify.enabled:
            return "clear", UNVERIFIED, None
        condition = await self._expression(episode, rule, ctx)
        if isinstance(condition, str):
            return "failure", condition, None  # fails safe: no expression, no "recovered"
        if not await self.db(self.ledger.set_episode, episode["id"], self.owner, state="verifying"):
            raise LostClaim
        try:
            scrapes = await self.prometheus.scrape_schedule(ctx.labels)
        except PrometheusError as exc:
            log.info(
                "episode %s: polling every %gs: the target's scrapes are unknown: %s",
                episode["id"],
                rule.verify.interval,
                exc,
            )
            scrapes = None
        verdict = await verify(
            self.prometheus,
            condition.expr,
            rule.verify.deadline,
            rule.verify.interval,
            lambda: self.holder.is_resolved(episode["id"]),
            alert_labels=ctx.labels,
            wake=self.holder.resolved.get(episode["id"]),
            scrapes=scrapes,
        )
        outcome = verdict.outcome if verdict.outcome in ("clear", "resolved") else "failure"
        return outcome, with_source(verdict.detail, condition.source), condition

    async def _expression(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext) -> Condition | str:
        """The verification query and where it came from (playbook or prometheus_rules), or why there is none.

        The playbook's `verify.expr` (its ${label}s validated), else the expression of Prometheus's own alerting
        rule of that name, read from its rules API: never the one the webhook's generatorURL carries, which
        whoever holds the webhook token writes. Either way the recording rules it names plainly are replaced by
        their expressions (`inline_recording_rules`): the raw series show a recovery an evaluation sooner."""
        expr, source = None, "playbook"
        if rule.verify.expr:
            try:
                expr = ctx.render(rule.verify.expr)
            except Refused as exc:
                return f"cannot verify: {exc}"
        try:
            rules = await self.prometheus.rules()
        except PrometheusError as exc:
            if expr is not None:
                return Condition(expr, source)  # as written
            return f"cannot verify: no verify.expr, and Prometheus's alerting rules could not be read: {exc}"
        keeps_firing = False
        if expr is None:
            own = self.prometheus.alerting_rules(episode["alertname"], ctx.labels, rules)
            exprs = list(dict.fromkeys(str(r["query"]) for r in own))
            if not exprs:
                return (
                    f"cannot verify: no verify.expr, and Prometheus has no alerting rule {episode['alertname']} "
                    "with this alert's labels"
                )
            # Several rules of one name with the same labels: still failing while any of them matches.
            expr = " or ".join(f"({e})" for e in exprs) if len(exprs) > 1 else exprs[0]
            source = "prometheus_rules"
            keeps_firing = any(float(r.get("keepFiringFor") or 0) > 0 for r in own)
        return Condition(inline_recording_rules(expr, rules), source, keeps_firing)
