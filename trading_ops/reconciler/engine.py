"""The workers: claim due episodes, run their rule's steps under budgets and breakers, verify, escalate."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from trading_ops.clients.alertmanager import AlertmanagerClient
from trading_ops.clients.notify import Notifier
from trading_ops.clients.prometheus import PrometheusClient
from trading_ops.config import Config
from trading_ops.db.base import utcnow
from trading_ops.matchers import compile_pattern
from trading_ops.reconciler.actions.base import ActionContext
from trading_ops.reconciler.approval_gate import ApprovalGate
from trading_ops.reconciler.approvals import ApprovalStore
from trading_ops.reconciler.attempts import Attempts
from trading_ops.reconciler.escalation import Escalation
from trading_ops.reconciler.gates import CooledDown, Gates
from trading_ops.reconciler.ledger import Ledger, Written
from trading_ops.reconciler.ledger.rollback import CLAIM, OUTCOME
from trading_ops.reconciler.metrics import ReconcilerMetrics
from trading_ops.reconciler.outbox import OutboxStore
from trading_ops.reconciler.page_ends import PageEnds
from trading_ops.reconciler.playbook import Playbook, Rule
from trading_ops.reconciler.reopen import Reopener
from trading_ops.reconciler.resume import Leftovers, Resume, Resumption
from trading_ops.reconciler.rollback import Rollback
from trading_ops.reconciler.runs import RunHolder, ledger_unreachable
from trading_ops.reconciler.spool import OutcomeSpool
from trading_ops.reconciler.steps import Steps
from trading_ops.reconciler.verification import Verification
from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)
T = TypeVar("T")
# After the ledger came back from being away, a replica claims nothing for this many of its polls, and this long at
# least: the replicas poll at the same interval, so each has noticed the ledger back, and checked what it wrote is still
# there, before another claims an episode whose record a failover lost.
SETTLE_POLLS = 3
SETTLE_MIN_SECONDS = 1.0
# The `service` label of the alerts about a bot (prometheus/rules/tradingbot-*.yml): their `instance` is the bot's.
BOT_SERVICE = "tradingbot"


class Engine:
    """The facade the app and the tests use: the dispatch loop (sweep, leftovers, claims of due episodes up to
    `max_concurrent_runs`, one target at a time) and the order of one run (`run_episode`). Each concern is a part of
    its own: a run's claim and lease (`RunHolder`), carrying on a stopped run and killing what it left
    (`Resumption`, `Leftovers`), the gates before acting (`Gates`, `ApprovalGate`), the attempt and its steps
    (`Attempts`, `Steps`), verification (`Verification`) and escalation (`Escalation`)."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        playbook: Playbook,
        metrics: ReconcilerMetrics,
        session: aiohttp.ClientSession,
        owner: str,
        instance: str,
        notifier: Notifier,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.rc = config.reconciler
        self.ledger = ledger
        self.playbook = playbook
        self.metrics = metrics
        self.session = session
        self.owner = owner
        self.instance = instance
        self.notifier = notifier
        self.alertmanager = AlertmanagerClient(session, self.rc.alertmanager_urls)
        self.prometheus = PrometheusClient(session, self.rc.prometheus_urls)
        self.label_pattern = compile_pattern(self.rc.label_value_pattern)
        self.rng = rng or random.Random()
        self.wake = asyncio.Event()
        self.runs: dict[int, asyncio.Task[None]] = {}
        # The target of each run in progress here: busy for our claims whatever its lease says.
        self.run_targets: dict[int, str] = {}
        self.holder = RunHolder(ledger, metrics, owner, self.rc.lease_seconds, self.rc.max_concurrent_runs)
        self.resolved, self.claims = self.holder.resolved, self.holder.claims
        self.executor, self.lease_executor = self.holder.executor, self.holder.lease_executor
        # Pages owed go to the escalation outbox (trading_ops.reconciler.outbox); this wakes its sender.
        self.outbox = OutboxStore(ledger)
        self.approvals = ApprovalStore(ledger)
        # What the reconciler announced (an approval waiting, a bot paused), ended in Alertmanager when it ends.
        self.page_ends = PageEnds(ledger, config, session, self.alertmanager, self.rc.poll_interval_seconds)
        self.escalations = asyncio.Event()
        self.spool = OutcomeSpool(Path(self.rc.spool_dir))
        self.escalation = Escalation(self.holder, self.rc, self.outbox, self.escalations)
        # Claims wait this long after the ledger came back: the other replicas' polls, to check their own writes.
        self.holder.settle_seconds = max(SETTLE_MIN_SECONDS, SETTLE_POLLS * self.rc.poll_interval_seconds)
        self.rollback = Rollback(self.holder, self.rc, self.escalations)
        self.leftovers = Leftovers(self.holder)
        self.foreign_fences = self.leftovers.foreign_fences
        self.resumption = Resumption(self.holder, self.rc, self.escalation)
        self.gates = Gates(self.holder, self.rc, self.alertmanager, self.escalation)
        self.steps = Steps(self.holder, self.rc, self.spool)
        approval_gate = ApprovalGate(self.holder, self.rc, playbook, self.approvals, self.escalation, instance)
        self.verification = Verification(self.holder, self.prometheus, self.steps, self.escalation)
        self.attempts = Attempts(
            self.holder, self.rc, self.rng, self.steps, approval_gate, self.verification, self.escalation
        )
        self.reopener = Reopener(self.holder, playbook, self.alertmanager, self.prometheus, self.label_pattern)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.holder.db(fn, *args, **kwargs)

    # ---- the loop -----------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        while True:
            try:
                await self.dispatch_once()
            except Exception:
                log.exception("dispatch failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rc.poll_interval_seconds):
                    await self.wake.wait()
            self.wake.clear()

    async def dispatch_once(self) -> None:
        # Back after the ledger was away (or a run found a row of its own gone): is everything we wrote still there?
        # Before the spool's replay, which would find a lost step's row missing and drop its outcome.
        if self.holder.recheck:
            await self.rollback.check()
        # Outcomes seen but not yet in the ledger (a previous life of ours stopped while the database was away)
        # first: the sweep must not call unknown what a run saw.
        await self.db(self.spool.replay, self.ledger, ledger_unreachable)
        if self.spool.missing:
            # Outcomes a previous life of ours saw, of steps the ledger no longer has (it died with a primary whose
            # standby lacked them): paged like any write of ours a failover lost, before a sweep re-runs the episode.
            spooled, self.spool.missing = self.spool.missing, []
            lost = [Written(OUTCOME, s.episode_id, s.step_id, s.outcome) for s in spooled if s.episode_id]
            if lost:
                await self.rollback.report(lost)
        # A lapsed lease is taken for its owner's death only once we have reached the ledger for a whole lease.
        lapsed_is_dead = self.holder.lapsed_is_dead()
        # A claim of ours that no run holds (its commit landed, its answer was lost with the database) is freed at once.
        swept = await self.db(
            self.ledger.sweep,
            utcnow(),
            self.owner,
            set(self.runs),
            lapsed_is_dead=lapsed_is_dead,
            every_run_of_ours=True,
        )
        for episode_id in swept.interrupted:
            log.warning(
                "episode %s: the run was interrupted (its reconciler stopped: %s); policy decides",
                episode_id,
                swept.why.get(episode_id, "?"),
            )
        # Before any retry: what a dead run started must not run beside it (one action at a time per target). Its
        # steps' process groups fence their targets until a reconciler on their host, this one or another replica
        # there, killed them; the sweep that found the run dead may have been another host's.
        await self.leftovers.reap(utcnow())
        # Just back after the ledger was away: no claim until every replica had a poll to check its writes (a claim
        # now could run again what a failover made the ledger forget; RunHolder.settling).
        free = 0 if self.holder.settling() else self.rc.max_concurrent_runs - len(self.runs)
        if free > 0:
            await self._reopen()
        if free > 0:
            # A target of a run in progress here is busy, even when that run's lease lapsed (late renewals).
            busy_targets = set(self.run_targets.values())
            for episode_id, target in await self.db(self.ledger.due, utcnow(), free * 2):
                if len(self.runs) >= self.rc.max_concurrent_runs:
                    break
                if episode_id in self.runs or target in busy_targets:
                    continue
                busy_targets.add(target)
                # A fresh clock for each claim: the lease starts now, not when this dispatch (or its kills) began.
                episode = await self.db(
                    self.ledger.claim, episode_id, target, self.owner, utcnow(), self.rc.lease_seconds
                )
                if episode is None:
                    continue
                self.holder.wrote(Written(CLAIM, episode_id, episode_id, target, at=episode["updated_at"]))
                task = asyncio.create_task(self._guarded(episode), name=f"episode-{episode_id}")
                self.runs[episode_id] = task
                self.run_targets[episode_id] = target
                task.add_done_callback(functools.partial(self._finished, episode_id))
        await self._refresh_snapshot(utcnow())

    async def _reopen(self) -> None:
        """Recovered episodes whose alert keeps firing, reopened when their condition returned (`Reopener`): due now,
        claimed below like any other. Never in the way of the claims: a failure is logged and looked at next time."""
        try:
            await self.reopener.check()
        except Exception:
            log.exception("looking for recovered episodes to reopen failed; looked at again at the next check")

    def _finished(self, episode_id: int, _task: asyncio.Task[None] | None = None) -> None:
        self.runs.pop(episode_id, None)
        self.run_targets.pop(episode_id, None)
        self.metrics.actions_in_flight.set(len(self.runs))
        self.wake.set()

    async def _refresh_snapshot(self, now: datetime) -> None:
        counts = await self.db(self.ledger.snapshot, now)
        snap = self.metrics.snapshot
        snap.states, snap.queue_depth, snap.open_circuits = counts.states, counts.queue_depth, counts.open_circuits
        snap.known_targets.update(snap.open_circuits)
        snap.open_by_target = counts.open_by_target
        snap.known_open.update(counts.open_by_target)
        self.metrics.actions_in_flight.set(len(self.runs))
        self.metrics.paused.set(1 if counts.paused else 0)

    def notify_resolved(self, episode_ids: list[int]) -> None:
        """Intake stored a resolved notification for these episodes: stop their runs between steps."""
        for episode_id in episode_ids:
            if episode_id in self.resolved:
                self.resolved[episode_id].set()

    async def is_paused(self) -> bool:
        return await self.gates.is_paused()

    async def stop(self) -> None:
        await stop_tasks(list(self.runs.values()))
        self.holder.shutdown()

    # ---- one run ------------------------------------------------------------------------------------

    async def _guarded(self, episode: dict[str, Any]) -> None:
        """One run, under its claim (`RunHolder.hold`): an error no one expected pages a human."""
        await self.holder.hold(episode, self.run_episode, self.escalation.internal_error)

    async def run_episode(self, episode: dict[str, Any]) -> None:
        labels: dict[str, str] = json.loads(episode["labels"])
        rule = next((r for r in self.playbook.rules if r.name == episode["rule"]), None) or self.playbook.match(labels)
        now = utcnow()
        # No rule (the playbook changed), or a bot the configuration does not name: recorded, nothing done.
        skipped = "no playbook rule matches (the playbook changed)" if rule is None else self.unconfigured_bot(labels)
        if rule is None or skipped is not None:
            await self.holder.close(episode, "skipped", skipped or "")
            return
        ctx = ActionContext(
            config=self.config,
            labels=labels,
            annotations=json.loads(episode["annotations"]),
            alertname=episode["alertname"],
            target=episode["target"],
            episode_id=episode["id"],
            session=self.session,
            alertmanager=self.alertmanager,
            notifier=self.notifier,
            label_pattern=self.label_pattern,
            starts_at=episode["starts_at"],
            prometheus=self.prometheus,
            announced_pause=self.page_ends.announced_pause,
            announced_exposure=self.page_ends.announced_exposure,
            ledger=self.ledger,
        )
        # Resolved first: an alert that is over is never escalated, whatever happened to the run before.
        if episode["resolved_at"] is not None:
            await self.holder.close(episode, "resolved", "resolved before the run")
            return
        interrupted = episode["state"] == "interrupted"
        handled, resume = await self._carry_on(episode, rule, ctx, interrupted)
        if handled:
            return
        if interrupted and resume is None:
            ctx.history.append(f"attempt {episode['attempts']} interrupted (the reconciler stopped)")
            if episode["attempts"] >= rule.max_attempts:
                await self.escalation.give_up(episode, rule, ctx, "interrupted and no attempts left")
                return
        # A deferred run (wait_for, a parked or cooled-down episode) acts only if the alert still fires: its
        # resolved notification may still be on its way (group_interval), or never come (silenced meanwhile).
        if episode["state"] == "waiting" and not await self.gates.still_firing(episode, ctx):
            return
        if not await self._gated(episode, rule, ctx, now, interrupted, resume is None):
            await self.attempts.attempt(episode, rule, ctx, resume)

    async def _gated(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, now: datetime, interrupted: bool, fresh: bool
    ) -> bool:
        """Whether the gates took the run (True: parked, deferred, closed, or only its protective steps run while the
        cooldown holds the rest). A second copy of a firing an older episode has is closed first
        (`Gates.copy_of_a_firing`). A bot mid-startup is acted on by no rule but a protective one: asked then, before
        any gate or step, of a run that carries nothing on (`fresh`). Then a rule whose alert is the aftermath of a
        recovery under way or just verified on the same target (`Rule.defers_to`) waits for it, before its first
        attempt; and an episode that waited behind its own rule's verified remedy on the target, its condition gone
        since, is closed without acting (`Verification.healed_already`)."""
        first = fresh and not interrupted and episode["attempts"] == 0
        if first and await self.gates.copy_of_a_firing(episode, ctx):
            return True
        if fresh and await self.gates.bot_starting(episode, rule, ctx):
            return True
        if first and await self.gates.deferred(episode, rule, ctx, now):
            return True
        if first and not rule.protective and await self.verification.healed_already(episode, rule, ctx):
            return True
        held = await self.gates.held_back(episode, rule, ctx, now, interrupted)
        if isinstance(held, CooledDown):
            await self.attempts.protective_first(episode, rule, ctx, held.until)
            return True
        return held

    def unconfigured_bot(self, labels: dict[str, str]) -> str | None:
        """Why an alert about a bot (service="tradingbot", with an instance) is not acted on: its instance is none of
        the configured bots (`bots:`, `reconciler.targets`): the series of a bot no longer run (an earlier stack's,
        ports since changed) or one this reconciler does not manage. It is recorded, never acted on or escalated:
        Alertmanager routes the alert itself to whoever it concerns. None: a configured bot's, or no bot's."""
        instance = labels.get("instance")
        if labels.get("service") != BOT_SERVICE or not instance or not self.rc.targets:
            return None
        if instance in self.rc.targets:
            return None
        return (
            f"instance {instance} is not a bot of this reconciler's configuration (bots:, reconciler.targets): "
            "recorded, not acted on or escalated"
        )

    async def _carry_on(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, interrupted: bool
    ) -> tuple[bool, Resume | None]:
        """What is left of an earlier run of the episode that stopped before the end (`Resumption.carry_on`): whether
        this run is already handled (decided, or only the verification was left and it ran), and the plan to carry
        the earlier attempt on (None: the usual start)."""
        handled, resume = await self.resumption.carry_on(episode, rule, ctx, interrupted)
        if resume is not None and resume.verify_only:
            # Nothing is executed: no gate holds a verification back (parked, the run's record would be older than
            # the next run's look at it).
            await self.attempts.attempt(episode, rule, ctx, resume)
            return True, None
        return handled, resume
