"""The gates an episode passes before anything is executed: pause, maintenance, cooldown, circuits, budgets."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError
from trading_ops.clients.prometheus import PrometheusError
from trading_ops.config import ReconcilerConfig
from trading_ops.db.base import utcnow
from trading_ops.reconciler.actions import ACTIONS
from trading_ops.reconciler.actions.base import ActionContext
from trading_ops.reconciler.actions.bot import starting
from trading_ops.reconciler.actions.escalate import CIRCUIT_OPEN
from trading_ops.reconciler.actions.silence import CREATED_BY
from trading_ops.reconciler.escalation import Escalation
from trading_ops.reconciler.intake import Rejected, parse_timestamp
from trading_ops.reconciler.ledger import GLOBAL_TARGET, PAUSE_KEY, PAUSED_DETAIL
from trading_ops.reconciler.playbook import Rule
from trading_ops.reconciler.runs import ENGINE_LOGGER, RunHolder, RunPart

log = logging.getLogger(ENGINE_LOGGER)
# A paused reconciler looks at its parked episodes again this often (resume wakes them at once).
PAUSE_RECHECK_SECONDS = 60.0
# A maintenance silence is re-read at its end, and at least this often (an operator may expire it early) ...
MAINTENANCE_RECHECK_SECONDS = 60.0
# ... but never sooner than this (Alertmanager's clock and ours may differ a little at the end).
MIN_RECHECK_SECONDS = 1.0
# An alert another alert inhibits (its cause: TradingBotHostDown mutes the bot's TradingBotDown) is looked at again
# this often: once the cause resolves and the alert still fires, the run acts on it.
INHIBITED_RECHECK_SECONDS = 30.0
# A bot that says it is starting (its safe start, its startup reconciliation) is looked at again this often: a rule
# that is not protective acts once it trades (or closes resolved when its alert ended meanwhile).
STARTING_RECHECK_SECONDS = 10.0
# A rule that defers to a recovery under way (Rule.defers_to) looks again this often while that episode is open.
DEFER_RECHECK_SECONDS = 2.0
# Alertmanager's API gives startsAt in milliseconds, webhooks in nanoseconds.
STARTS_AT_TOLERANCE = timedelta(milliseconds=1)
# Copies of one firing are looked for this far around an episode's startsAt (a rule's `for:` past it changes nothing:
# the copies of one firing are seconds apart).
COPIES_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class CooledDown:
    """The rule's cooldown holds its steps that are not protective until `until`; its protective steps (and its
    pages) run now."""

    until: datetime


def _has_protective(rule: Rule) -> bool:
    """Whether the rule has a step that stops trading or shrinks risk (its pages alone do not count)."""
    return any(ACTIONS[rule.steps[p].action].budgeted for p in rule.protective_positions)


class Gates(RunPart):
    """Owns the checks between a claimed episode and its first step: the reconciler's pause and an active
    maintenance silence park the episode (recorded: nothing executed), the rule's cooldown defers it, an open circuit
    or a spent action budget closes it escalated (a protective rule acts anyway, cooldown included), and a deferred
    run first asks Alertmanager whether its alert still fires. A step's own approval is not here (`ApprovalGate`)."""

    def __init__(
        self, holder: RunHolder, rc: ReconcilerConfig, alertmanager: AlertmanagerClient, escalation: Escalation
    ) -> None:
        super().__init__(holder)
        self.rc = rc
        self.alertmanager = alertmanager
        self.escalation = escalation

    async def is_paused(self) -> bool:
        return await self.db(self.ledger.get_setting, PAUSE_KEY, "0") == "1"

    async def held_back(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, now: datetime, interrupted: bool
    ) -> bool | CooledDown:
        """The gates: nothing is executed while they hold. The episode is parked (recorded) and looked at again, or
        deferred past the rule's cooldown, or closed escalated (an open circuit, a spent budget). True when one
        held; `CooledDown` when the cooldown holds only the rule's steps that are not protective."""
        if await self.is_paused():
            await self._park(episode, f"{PAUSED_DETAIL}: re-checked on resume", now + _seconds(PAUSE_RECHECK_SECONDS))
            return True
        silence = await self._maintenance(ctx.labels)
        if silence:
            ends = _silence_end(silence, now)
            why = f"maintenance silence {silence.get('id', '')} until {ends.isoformat()}"
            comment = str(silence.get("comment", ""))[:100]
            recheck = min(ends, now + _seconds(MAINTENANCE_RECHECK_SECONDS))
            await self._park(episode, f"{why} ({comment})", max(recheck, now + _seconds(MIN_RECHECK_SECONDS)))
            return True
        cooldown = await self.db(
            self.ledger.cooldown_until, rule.name, episode["target"], episode["id"], rule.cooldown, now
        )
        if cooldown is not None and not interrupted and episode["attempts"] == 0 and rule.protective:
            # A new episode of a protective rule (a host dead again, its orders resting): the cooldown damps restarts
            # that flap, never a cancel or the exposure page that follows it.
            ctx.history.append(f"cooldown of rule {rule.name} until {cooldown.isoformat()}: acted anyway (protective)")
        elif cooldown is not None and not interrupted and episode["attempts"] == 0 and _has_protective(rule):
            # Protective steps and other steps in one rule: the protective ones (and its pages) run now, the others
            # wait for the cooldown (Attempts.protective_first).
            return CooledDown(cooldown)
        elif cooldown is not None and not interrupted and episode["attempts"] == 0:
            await self.holder.defer(
                episode, "waiting", cooldown, f"cooldown of rule {rule.name} on {episode['target']} until {cooldown}"
            )
            return True
        if await self._circuit_open(episode, rule, ctx, now):
            return True
        return not self.rc.dry_run and not rule.protective and not await self._within_budget(episode, rule, ctx, now)

    async def copy_of_a_firing(self, episode: dict[str, Any], ctx: ActionContext) -> bool:
        """One firing, one episode: whether this episode is a second copy of a firing an older episode has (then it
        is closed skipped, naming that episode; nothing executed). True when it was.

        The members of a Prometheus pair start one alert up to a scrape and an evaluation apart (each fires it at its
        own evaluation); an Alertmanager holds the earliest start it has received, and the cluster's second member
        notifies its own view when the first took longer than the peer timeout to deliver. So one firing can reach
        the ledger under two startsAt, and would be acted on twice (a second cancel, a second exposure page). A slow
        member may even fire its copy after the other member's end of the firing reached the ledger (the host back
        before its `for:` ran out there).

        What tells a new firing from a copy (`PrometheusClient.alert_timing`): a firing ends at an evaluation where
        its condition no longer holds (the episode's resolved_at: the alert's endsAt), and a new one is pending from
        a later evaluation for the rule's `for:`, so it starts at least `for:` and an evaluation after that end; a
        copy of the ended firing started pending before the end, so it starts less than `for:` after it. And two
        firings' starts are at least `for:` and an evaluation apart. So an older episode of the same alert, started
        less than `for:` and an evaluation from this one, that no end parts from it (an end before this start by
        `for:` and half an evaluation, after which the older one did not start by `for:`), has this firing.
        Prometheus unreachable (the rule unknown): acted on, as before.

        Asked of an episode as the intake stored it (no detail yet), once: not of one looked at before (parked, its
        detail says why) or opened by the reopener for an alert firing on under a later start (`Reopener`: its
        own run is the point)."""
        if episode.get("detail"):
            return False
        others = await self.db(
            self.ledger.other_copies, episode["fingerprint"], episode["id"], episode["starts_at"], COPIES_WINDOW
        )
        older = [o for o in others if o["id"] < episode["id"]]
        if not older or ctx.prometheus is None:
            return False
        try:
            timing = await ctx.prometheus.alert_timing(episode["alertname"], ctx.labels)
        except PrometheusError as exc:
            log.warning("episode %s: its rule's for: unknown, acted on as a firing of its own: %s", episode["id"], exc)
            return False
        if timing is None:
            return False
        hold, interval = timing
        apart = hold + interval
        started: datetime = episode["starts_at"]
        ends = [o["resolved_at"] for o in others if o["resolved_at"] is not None]

        def parted(other: dict[str, Any]) -> bool:
            return any(
                other["starts_at"] < end + _seconds(hold) and started >= end + _seconds(hold + interval / 2)
                for end in ends
            )

        copies = [o for o in older if abs((o["starts_at"] - started).total_seconds()) < apart and not parted(o)]
        if not copies:
            return False
        # The episode that acts on the firing, rather than another copy of it, when it is among them.
        first = next((o for o in copies if o["state"] != "skipped"), copies[0])
        gap = abs((first["starts_at"] - started).total_seconds())
        why = (
            f"the same firing as episode {first['id']} ({first['state']}): its startsAt "
            f"{first['starts_at'].isoformat()} is {gap:.3f} s from this one's, less than the rule's for: and an "
            f"evaluation ({apart:g} s) that two firings of the alert are apart, and no end of it parts them (a new "
            "firing starts for: and an evaluation after the last one's end: the Prometheus pair's copies of one "
            "alert); nothing executed"
        )
        log.info("episode %s (%s on %s): %s", episode["id"], episode["alertname"], episode["target"], why)
        await self.holder.close(episode, "skipped", why)
        return True

    async def bot_starting(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext) -> bool:
        """Whether the rule waits because its bot is mid-startup (its runtime's phase `starting`): asked before any
        step, so no playbook acts on a bot that is starting (a restart would kill its startup reconciliation, a
        silence or a command would be for nothing). The episode is parked and looked at again; a protective rule acts
        anyway (a cancel or a halt is never held back). True when it waits."""
        if rule.protective or not await starting(ctx):
            return False
        why = f"bot {ctx.target} is starting (phase starting): nothing is done to a bot mid-startup; re-checked"
        await self._park(episode, why, utcnow() + _seconds(STARTING_RECHECK_SECONDS))
        return True

    async def deferred(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, now: datetime) -> bool:
        """One fault, one remedy: whether the rule's alert is taken for the aftermath of a recovery under way, or just
        verified, on the same target (an episode of a rule it `defers_to`, open or recovered within `defer_within`):
        the episode is parked, the ledger saying which episode it defers to, and looked at again while that lasts
        (its alert resolved meanwhile: closed resolved, nothing executed). A protective rule never defers. True when
        it waits."""
        if not rule.defers_to or rule.protective:
            return False
        since = now - _seconds(rule.defer_within)
        other = await self.db(self.ledger.deferred_to, rule.defers_to, episode["target"], episode["id"], since)
        if other is None:
            return False
        what = f"episode {other['id']} ({other['rule']}, {other['alertname']} on {episode['target']})"
        if other["state"] == "recovered":
            until = other["closed_at"] + _seconds(rule.defer_within)
            why = (
                f"the aftermath of {what}, recovered at {other['closed_at'].isoformat()}: rule {rule.name} defers to "
                f"it (defers_to) and acts only if its alert still fires at {until.isoformat()}"
            )
        else:
            until = now + _seconds(DEFER_RECHECK_SECONDS)
            why = (
                f"a recovery under way: {what} is {other['state']}; rule {rule.name} defers to it (defers_to) until "
                f"it ends and {rule.defer_within:g} s after a verified recovery"
            )
        await self._park(episode, why, max(until, now + _seconds(MIN_RECHECK_SECONDS)))
        return True

    async def _circuit_open(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, now: datetime) -> bool:
        """Whether the target's or the global circuit is open and holds the rule back (the episode then closed
        escalated). A protective rule acts anyway, and says so."""
        for circuit in (episode["target"], GLOBAL_TARGET):
            until = await self.db(self.ledger.circuit_open_until, circuit, now)
            if until is not None and rule.protective:
                # Stopping trading is never held back by what other alerts spent (a loss limit above all).
                ctx.history.append(f"circuit of {circuit} open until {until.isoformat()}: acted anyway (protective)")
            elif until is not None:
                # The alert is not acted on: a human must hear of it, whatever the circuit's opener already posted
                # (that page named another alert, and may have resolved since).
                why = f"circuit of {circuit} open until {until.isoformat()}"
                description = (
                    f"The reconciler did not act on {episode['alertname']} on {episode['target']} "
                    f"(episode {episode['id']}, rule {rule.name}): the {circuit} circuit is open until "
                    f"{until.isoformat()} (its action budget was spent). Nothing was executed."
                )
                await self.escalation.close_escalated(episode, CIRCUIT_OPEN, ctx, description, why)
                return True
        return False

    async def _maintenance(self, labels: dict[str, str]) -> dict[str, Any] | None:
        if not self.rc.check_silences:
            return None
        try:
            return await self.alertmanager.active_silence_for(labels, exclude_created_by=CREATED_BY)
        except AlertmanagerError as exc:
            log.warning("cannot check silences (acting anyway): %s", exc)
            return None

    async def still_firing(self, episode: dict[str, Any], ctx: ActionContext) -> bool:
        """Ask Alertmanager whether the episode's alert still fires and is not inhibited: close the episode resolved
        when it is gone; park it while another alert inhibits it (False both times).

        An inhibited alert is a consequence whose cause has an alert and a rule of its own: the bot's TradingBotDown
        on a host that is down (TradingBotHostDown), where a restart can only fail and page a second time. Alertmanager
        sends no notification of it to anyone, and a deferred run (wait_for) does not act on it either; it acts once
        the inhibition ends while the alert still fires (the host came back, the bot did not).

        Alertmanager unreachable: act anyway (and say so). The alert fired long enough for its rule's `for:`, and
        remediation must keep working when the alerting pipeline is degraded, which is when it is needed most;
        the verification after the steps still decides whether anything was fixed."""
        labels: dict[str, str] = json.loads(episode["labels"])
        try:
            alerts = await self.alertmanager.alerts_matching(labels)
        except AlertmanagerError as exc:
            log.warning("episode %s: cannot ask Alertmanager whether it still fires; acting: %s", episode["id"], exc)
            ctx.history.append("Alertmanager unreachable: could not confirm the alert still fired; acted anyway")
            return True
        for alert in alerts:
            if alert.get("fingerprint") != episode["fingerprint"]:
                continue
            try:
                started = parse_timestamp(alert.get("startsAt"), "startsAt")
            except Rejected:
                return True
            # A later startsAt is the alert firing again after it resolved: a new episode, not this one. (A difference,
            # not a sum: no startsAt, however absurd, overflows it.)
            if started - episode["starts_at"] > STARTS_AT_TOLERANCE:
                continue
            inhibitors = (alert.get("status") or {}).get("inhibitedBy") or []
            if not inhibitors:
                return True
            causes = await self._alertnames(inhibitors, labels)
            why = f"inhibited in Alertmanager by {causes}: its rule acts on the cause; re-checked while it lasts"
            await self._park(episode, why, utcnow() + _seconds(INHIBITED_RECHECK_SECONDS))
            return False
        await self.holder.close(
            episode,
            "resolved",
            "no longer firing in Alertmanager when the wait ended: nothing executed",
            resolved_at=utcnow(),
        )
        return False

    async def _alertnames(self, fingerprints: list[str], labels: dict[str, str]) -> str:
        """The names of the alerts with these fingerprints, looked for among the alerts of the same instance (an
        inhibit rule's `equal` labels; fingerprints alone where there is no instance or the lookup fails)."""
        names: dict[str, str] = {}
        if "instance" in labels:
            try:
                for alert in await self.alertmanager.alerts_matching({"instance": labels["instance"]}):
                    names[str(alert.get("fingerprint"))] = str((alert.get("labels") or {}).get("alertname", ""))
            except AlertmanagerError as exc:
                log.warning("cannot name the alerts that inhibit one: %s", exc)
        return ", ".join(sorted({names.get(fp) or str(fp) for fp in fingerprints}))

    async def _park(self, episode: dict[str, Any], why: str, until: datetime) -> None:
        """Hold the episode (state waiting) until `until`; record once per reason that nothing was executed."""
        if not (episode["state"] == "waiting" and episode["detail"] == why):
            attempt_id = await self.db(self.ledger.start_attempt, episode["id"], self.owner, counted=False)
            await self.db(self.ledger.finish_attempt, attempt_id, "skipped", f"{why}: nothing executed")
        if await self.holder.defer(episode, "waiting", until, why) == "waiting":
            log.info("episode %s (%s on %s): parked: %s", episode["id"], episode["alertname"], episode["target"], why)

    async def _within_budget(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, now: datetime) -> bool:
        needed = sum(1 for s in rule.steps if ACTIONS[s.action].budgeted)
        if not needed:
            return True
        budgets = self.rc.budgets
        checks = (
            (episode["target"], budgets.max_actions_per_target_per_hour, episode["target"]),
            (GLOBAL_TARGET, budgets.max_actions_per_hour, None),
        )
        for circuit, limit, scope in checks:
            spent = await self.db(self.ledger.actions_last_hour, now, scope)
            if spent + needed <= limit:
                continue
            until = now + timedelta(seconds=budgets.circuit_cool_off_seconds)
            why = f"action budget of {circuit} spent ({spent} of {limit} per hour); circuit open until {until}"
            if await self.db(self.ledger.open_circuit, circuit, until):
                self.metrics.snapshot.open_circuits.append(circuit)
            # Posted by every episode that ends here, not only by the one that opened the circuit (another replica
            # may have opened it a moment before, for another alert): each one's page is its own.
            description = (
                f"{why}. The reconciler did not act on {episode['alertname']} on {episode['target']} "
                f"(episode {episode['id']}, rule {rule.name}). Nothing was executed."
            )
            await self.escalation.close_escalated(episode, CIRCUIT_OPEN, ctx, description, why)
            return False
        return True


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _silence_end(silence: dict[str, Any], now: datetime) -> datetime:
    try:
        return parse_timestamp(silence.get("endsAt"), "endsAt")
    except Rejected:
        return now + _seconds(MAINTENANCE_RECHECK_SECONDS)
