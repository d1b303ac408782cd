"""The workers: claim due episodes, run their rule's steps under budgets and breakers, verify, escalate."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError
from trading_ops.clients.notify import Notifier
from trading_ops.clients.prometheus import PrometheusClient, PrometheusError, inline_recording_rules
from trading_ops.config import Config
from trading_ops.db.base import utcnow
from trading_ops.matchers import compile_pattern
from trading_ops.reconciler.actions import ACTIONS
from trading_ops.reconciler.actions.base import ActionContext, Refused, Result, truncate
from trading_ops.reconciler.actions.escalate import APPROVAL_REQUESTED, CIRCUIT_OPEN, FAILED, escalation_alert
from trading_ops.reconciler.actions.silence import CREATED_BY
from trading_ops.reconciler.approvals import (
    APPROVED,
    AWAITING,
    AWAITING_OUTCOME,
    EXPIRED,
    PENDING,
    REJECTED,
    ApprovalStore,
)
from trading_ops.reconciler.intake import Rejected, parse_timestamp
from trading_ops.reconciler.ledger import (
    GLOBAL_TARGET,
    LEFTOVER_FENCE_SECONDS,
    PAUSE_KEY,
    PAUSED_DETAIL,
    UNKNOWN,
    Ledger,
)
from trading_ops.reconciler.metrics import ReconcilerMetrics
from trading_ops.reconciler.outbox import OutboxStore
from trading_ops.reconciler.playbook import Playbook, Rule, StepSpec
from trading_ops.reconciler.processes import ProcessId, host_token, kill_leftover_group
from trading_ops.reconciler.spool import OutcomeSpool, SpooledOutcome
from trading_ops.reconciler.verify import verify
from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)
T = TypeVar("T")
# A paused reconciler looks at its parked episodes again this often (resume wakes them at once).
PAUSE_RECHECK_SECONDS = 60.0
# A maintenance silence is re-read at its end, and at least this often (an operator may expire it early) ...
MAINTENANCE_RECHECK_SECONDS = 60.0
# ... but never sooner than this (Alertmanager's clock and ours may differ a little at the end).
MIN_RECHECK_SECONDS = 1.0
# Alertmanager's API gives startsAt in milliseconds, webhooks in nanoseconds.
STARTS_AT_TOLERANCE = timedelta(milliseconds=1)
# Ledger calls of the dispatch loop (and the pruner's) beside those of the runs.
EXTRA_LEDGER_THREADS = 2
CLAIM_LOST = "claim lost"
# A step's outcome the ledger did not take (the database unreachable) is written again after these delays, doubling
# up to the last, for as long as the run holds its claim (the spool keeps it meanwhile, and past the process's end).
OUTCOME_RETRY_INITIAL_SECONDS = 0.2
OUTCOME_RETRY_MAX_SECONDS = 1.0
# Outcomes of an earlier step that a run which stopped saw (or may have seen: `interrupted` is what a sweep wrote
# before outcomes could be unknown) and which say nothing about what the step did.
UNSEEN_OUTCOMES = (UNKNOWN, "interrupted")
# How a run the database left mid-way hands itself back (its attempt's and the episode's detail).
LEDGER_AWAY = "ledger unreachable during the run"
# An attempt handed back while a step waits for a person's decision (carried on from that step once it is decided
# or expired), and the outcome of a step an expired approval skipped (on_timeout: skip): done, as a success is.
AWAITING_APPROVAL = AWAITING_OUTCOME
SKIPPED = "skipped"
DONE_OUTCOMES = ("success", SKIPPED)


def ledger_unreachable(exc: BaseException) -> bool:
    """Whether a ledger call failed because the database could not be reached (restarting, stopped, the connection
    cut), not for what the statement did: the run waits for it instead of giving up."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class LostClaim(Exception):
    """Another replica took the episode over (our lease lapsed): stop without writing more."""


@dataclass
class _Claim:
    """A run's hold on its episode and target, as its lease renewer sees it."""

    lost: bool = False
    # True while the run writes a step's outcome: a renewal finding the claim lost then does not cancel the run (the
    # outcome is written first, then the run stops).
    recording: bool = False
    # False once the run gives its claim back (closing or parking the episode): a renewal failing from then on
    # means nothing, and cancels nothing.
    active: bool = True


@dataclass(frozen=True)
class _Resume:
    """How a run carries on what a stopped run of its episode began (`Engine._resumption`)."""

    # The attempt carried on (None: a new attempt), and its number as the rule's max_attempts counts it.
    attempt_id: int | None
    number: int
    # The first step to run (the rule's steps before it succeeded), and every position that succeeded.
    start: int
    done: frozenset[int]
    # Every step had succeeded: only the verification is left, and its failure is escalated, never run again.
    verify_only: bool = False


class Engine:
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
        self.prometheus = PrometheusClient(session, self.rc.prometheus_url)
        self.label_pattern = compile_pattern(self.rc.label_value_pattern)
        self.rng = rng or random.Random()
        self.wake = asyncio.Event()
        self.runs: dict[int, asyncio.Task[None]] = {}
        # The target of each run in progress here: busy for our claims whatever its lease says.
        self.run_targets: dict[int, str] = {}
        # Running episode -> set when intake stored a resolved notification for it (wakes its verification).
        self.resolved: dict[int, asyncio.Event] = {}
        self.claims: dict[int, _Claim] = {}
        # Pages owed go to the escalation outbox (trading_ops.reconciler.outbox); this wakes its sender.
        self.outbox = OutboxStore(ledger)
        self.approvals = ApprovalStore(ledger)
        self.escalations = asyncio.Event()
        # Fenced steps of another host, logged once each (nothing here can see their processes).
        self.foreign_fences: set[int] = set()
        # The ledger's own threads, not asyncio's default pool: apprise notifications (blocking, possibly slow)
        # and leftover kills run there and must never delay a write, least of all a lease renewal, which has
        # its own threads (one per possible run) so no run's renewal waits behind another run's work.
        runs = self.rc.max_concurrent_runs
        self.executor = ThreadPoolExecutor(runs + EXTRA_LEDGER_THREADS, thread_name_prefix="reconciler-ledger")
        self.lease_executor = ThreadPoolExecutor(runs, thread_name_prefix="reconciler-lease")
        self.spool = OutcomeSpool(Path(self.rc.spool_dir))

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

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
        # Outcomes seen but not yet in the ledger (a previous life of ours stopped while the database was away)
        # first: the sweep must not call unknown what a run saw.
        await self.db(self.spool.replay, self.ledger, ledger_unreachable)
        swept = await self.db(self.ledger.sweep, utcnow(), self.owner, set(self.runs))
        for episode_id in swept.interrupted:
            log.warning("episode %s: the run was interrupted (its reconciler stopped); policy decides", episode_id)
        # Before any retry: what a dead run started must not run beside it (one action at a time per target). Its
        # steps' process groups fence their targets until a reconciler on their host, this one or another replica
        # there, killed them; the sweep that found the run dead may have been another host's.
        await self._reap_leftovers(utcnow())
        free = self.rc.max_concurrent_runs - len(self.runs)
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
                task = asyncio.create_task(self._guarded(episode), name=f"episode-{episode_id}")
                self.runs[episode_id] = task
                self.run_targets[episode_id] = target
                task.add_done_callback(functools.partial(self._finished, episode_id))
        await self._refresh_snapshot(utcnow())

    async def _reap_leftovers(self, now: datetime) -> None:
        fenced = await self.db(self.ledger.fenced_steps, now)
        self.foreign_fences &= {step_id for step_id, _ in fenced}
        here = host_token()
        for step_id, token in fenced:
            process = ProcessId.parse(token)
            if process is not None and process.host != here:
                if step_id not in self.foreign_fences:
                    self.foreign_fences.add(step_id)
                    log.warning(
                        "step %s: its process group %s ran on another host or pid namespace: its target stays "
                        "fenced until a reconciler there kills it, or for %gs at most",
                        step_id,
                        token,
                        LEFTOVER_FENCE_SECONDS,
                    )
                continue
            await self._kill_leftover(step_id, process)

    async def _kill_leftover(self, step_id: int, process: ProcessId | None) -> None:
        if process is None:
            note = "[the run was interrupted; its process group is unknown]"
        else:
            try:
                killed = await asyncio.to_thread(kill_leftover_group, process)
            except Exception:
                log.exception("step %s: killing what is left of process group %s failed", step_id, process.pid)
                return  # still fenced: tried again on the next poll
            if killed:
                self.metrics.leftover_processes_killed.inc(killed)
                note = f"[the reconciler restarted; {killed} process(es) of group {process.pid} still ran: killed]"
                log.warning("step %s: %s", step_id, note)
            else:
                note = f"[the run was interrupted; nothing of process group {process.pid} still ran]"
        await self.db(self.ledger.unfence, step_id, note)

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
        self.metrics.actions_in_flight.set(len(self.runs))
        self.metrics.paused.set(1 if counts.paused else 0)

    def notify_resolved(self, episode_ids: list[int]) -> None:
        """Intake stored a resolved notification for these episodes: stop their runs between steps."""
        for episode_id in episode_ids:
            if episode_id in self.resolved:
                self.resolved[episode_id].set()

    async def is_paused(self) -> bool:
        return await self.db(self.ledger.get_setting, PAUSE_KEY, "0") == "1"

    async def stop(self) -> None:
        await stop_tasks(list(self.runs.values()))
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.lease_executor.shutdown(wait=False, cancel_futures=True)

    # ---- one run ------------------------------------------------------------------------------------

    async def _guarded(self, episode: dict[str, Any]) -> None:
        episode_id, target = episode["id"], episode["target"]
        claim = self.claims[episode_id] = _Claim()
        renewer = asyncio.create_task(self._renew(episode_id, target, asyncio.current_task(), claim))
        self.resolved[episode_id] = asyncio.Event()
        try:
            await self.run_episode(episode)
        except LostClaim:
            claim.lost = True
            log.warning("episode %s: claim lost to another replica; stopped", episode_id)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Shutting down: leave the run to the sweep after restart (marked interrupted there) ...
            if not claim.lost or task is None or task.cancelling() > 1:
                raise
            # ... but this cancellation is the renewer's alone: the claim is gone, so the run stops here.
            task.uncancel()
            log.warning("episode %s: lease renewal found the claim lost; run stopped", episode_id)
        except Exception as exc:
            if ledger_unreachable(exc):
                await self._interrupt_when_reachable(episode, claim, exc)
            else:
                log.exception("episode %s: run failed", episode_id)
                with contextlib.suppress(Exception):
                    await self._internal_error(episode, exc)
        finally:
            claim.active = False
            renewer.cancel()
            self.resolved.pop(episode_id, None)
            self.claims.pop(episode_id, None)
            if claim.lost:
                # Whoever took the claim over may not close what this run left `running` (an attempt and steps
                # that count against the budgets): this run does.
                with contextlib.suppress(Exception):
                    await self.db(self.ledger.abandon_run, episode_id, self.owner, f"{CLAIM_LOST}: run stopped")
            with contextlib.suppress(Exception):
                await self.db(self.ledger.release_target, target, self.owner)

    async def _interrupt_when_reachable(self, episode: dict[str, Any], claim: _Claim, exc: Exception) -> None:
        """The database went away mid-run: not an internal error (nobody is paged for it). What the run's steps did
        is recorded (`_record_outcome`); once the ledger answers again the run is handed back `interrupted`, due at
        once, and its next run carries on from there (`_resumption`): nothing done is done again. The lease is
        renewed meanwhile; a replica that takes it over after all has the same record to carry on from."""
        log.warning(
            "episode %s: the ledger is unreachable; the run is handed back once it answers: %s", episode["id"], exc
        )
        delay = OUTCOME_RETRY_INITIAL_SECONDS
        while not claim.lost:
            try:
                await self.db(self.ledger.abandon_run, episode["id"], self.owner, LEDGER_AWAY)
                return
            except Exception as again:
                if not ledger_unreachable(again):
                    log.exception("episode %s: handing the run back failed", episode["id"])
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, OUTCOME_RETRY_MAX_SECONDS)

    async def _internal_error(self, episode: dict[str, Any], exc: Exception) -> None:
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
        await self._owe_page(episode, FAILED, labels, episode["target"], description, f"internal error: {error}")

    async def _renew(self, episode_id: int, target: str, run: asyncio.Task[Any] | None, claim: _Claim) -> None:
        loop = asyncio.get_running_loop()
        lease = self.rc.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                renew = functools.partial(self.ledger.renew, episode_id, target, self.owner, lease)
                ok = await loop.run_in_executor(self.lease_executor, renew)
            except Exception:
                log.exception("episode %s: lease renewal failed", episode_id)
                continue
            if not ok:
                if claim.active:
                    claim.lost = True
                    if run is not None and not claim.recording:
                        run.cancel(msg=CLAIM_LOST)
                return

    async def _is_resolved(self, episode_id: int) -> bool:
        event = self.resolved.get(episode_id)
        if event is not None and event.is_set():
            return True
        row = await self.db(self.ledger.episode, episode_id)
        if row is None or row["owner"] != self.owner:
            raise LostClaim
        return row["resolved_at"] is not None

    async def _hand_back(self, episode: dict[str, Any], **values: Any) -> bool:
        """The run's last write: the episode closed, parked or due again later, its claim given back (False when
        it was no longer ours)."""
        self._end_claim(episode)
        return await self.db(self.ledger.set_episode, episode["id"], self.owner, **values)

    def _end_claim(self, episode: dict[str, Any]) -> None:
        """The run is about to give its claim back: stop renewing its lease."""
        claim = self.claims.get(episode["id"])
        if claim is not None:
            claim.active = False

    async def _defer(self, episode: dict[str, Any], state: str, until: datetime, detail: str) -> str:
        """Hand the episode back to run again at `until`, unless its alert resolved while we held it: then it is
        closed resolved (Ledger.defer). The state written."""
        self._end_claim(episode)
        written: str | None = await self.db(self.ledger.defer, episode["id"], self.owner, state, until, detail)
        if written is None:
            raise LostClaim
        if written == "resolved":
            self.metrics.episodes_total.labels("resolved").inc()
            log.info(
                "episode %s (%s on %s): resolved while held: not deferred (%s)",
                episode["id"],
                episode["alertname"],
                episode["target"],
                detail,
            )
        return written

    async def _close(self, episode: dict[str, Any], state: str, detail: str, **values: Any) -> None:
        if not await self._hand_back(episode, state=state, detail=detail, **values):
            raise LostClaim
        self.metrics.episodes_total.labels(state).inc()
        log.info("episode %s (%s on %s): %s: %s", episode["id"], episode["alertname"], episode["target"], state, detail)

    async def run_episode(self, episode: dict[str, Any]) -> None:
        labels: dict[str, str] = json.loads(episode["labels"])
        rule = next((r for r in self.playbook.rules if r.name == episode["rule"]), None) or self.playbook.match(labels)
        now = utcnow()
        if rule is None:
            await self._close(episode, "skipped", "no playbook rule matches (the playbook changed)")
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
        )
        # Resolved first: an alert that is over is never escalated, whatever happened to the run before.
        if episode["resolved_at"] is not None:
            await self._close(episode, "resolved", "resolved before the run")
            return
        interrupted = episode["state"] == "interrupted"
        handled, resume = await self._carry_on(episode, rule, ctx, interrupted)
        if handled:
            return
        if interrupted and resume is None:
            ctx.history.append(f"attempt {episode['attempts']} interrupted (the reconciler stopped)")
            if episode["attempts"] >= rule.max_attempts:
                await self._give_up(episode, rule, ctx, "interrupted and no attempts left")
                return
        # A deferred run (wait_for, a parked or cooled-down episode) acts only if the alert still fires: its
        # resolved notification may still be on its way (group_interval), or never come (silenced meanwhile).
        if episode["state"] == "waiting" and not await self._still_firing(episode, ctx):
            return
        if await self._held_back(episode, rule, ctx, now, interrupted):
            return
        await self._attempt(episode, rule, ctx, resume)

    async def _carry_on(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, interrupted: bool
    ) -> tuple[bool, _Resume | None]:
        """What is left of an earlier run of the episode that stopped before the end (`_resumption`): whether this
        run is already handled (decided, or only the verification was left and it ran), and the plan to carry the
        earlier attempt on (None: the usual start)."""
        if not episode["attempts"] or self.rc.dry_run:
            return False, None
        last = await self.db(self.ledger.last_run, episode["id"])
        carried = (*UNSEEN_OUTCOMES, AWAITING_APPROVAL)
        if last is None or not (interrupted or last["outcome"] in carried):
            return False, None
        found = await self._resumption(episode, rule, ctx, last)
        if found is None:
            return True, None  # decided (escalated): nothing is run again
        if isinstance(found, _Resume) and found.verify_only:
            # Nothing is executed: no gate holds a verification back (parked, the run's record would be older than
            # the next run's look at it).
            await self._attempt(episode, rule, ctx, found)
            return True, None
        return False, found if isinstance(found, _Resume) else None

    async def _held_back(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, now: datetime, interrupted: bool
    ) -> bool:
        """The gates: nothing is executed while they hold. The episode is parked (recorded) and looked at again, or
        deferred past the rule's cooldown, or closed escalated (an open circuit, a spent budget). True when one
        held."""
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
        if cooldown is not None and not interrupted and episode["attempts"] == 0:
            await self._defer(
                episode, "waiting", cooldown, f"cooldown of rule {rule.name} on {episode['target']} until {cooldown}"
            )
            return True
        if await self._circuit_open(episode, rule, ctx, now):
            return True
        return not self.rc.dry_run and not rule.protective and not await self._within_budget(episode, rule, ctx, now)

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
                await self._close_escalated(episode, CIRCUIT_OPEN, ctx, description, why)
                return True
        return False

    async def _resumption(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, last: dict[str, Any]
    ) -> _Resume | bool | None:
        """What a run does after a run of its episode stopped before the end (the reconciler died, or the ledger
        went away): what its steps did is in `last` (the last attempt that ran steps), and none of it is done again.

        A step whose outcome is unknown (it was running when its run stopped): the rule's on_unknown decides, run
        it again (a new attempt from that step) or escalate. Every step succeeded: only the verification is left,
        and its failure escalates. Some steps succeeded, the rest never started: the same attempt carries on with
        the next. Returns that plan; None when it decided alone (the episode is closed); False when the usual retry
        policy applies (a step failed, or nothing ran)."""
        steps = {s["position"]: s for s in last["steps"]}
        if last["outcome"] not in (*UNSEEN_OUTCOMES, "success", "resolved", AWAITING_APPROVAL):
            return False
        if not steps:
            # Nothing ran. A run that handed itself back for the database, or to wait for an approval of its first
            # step, carries on its attempt (costing no attempt); one that died is retried or escalated by
            # max_attempts, as always.
            handed_back = last["outcome"] == AWAITING_APPROVAL or (
                last["outcome"] == "interrupted" and last["detail"] == LEDGER_AWAY
            )
            return _Resume(last["id"], episode["attempts"], 0, frozenset()) if handed_back else False
        done = frozenset(p for p, s in steps.items() if s["outcome"] in DONE_OUTCOMES)
        unseen = sorted(p for p, s in steps.items() if s["outcome"] in UNSEEN_OUTCOMES)
        number, count = last["number"], len(rule.steps)
        if unseen and unseen[0] < len(rule.steps + rule.on_recovery):
            return await self._resume_unknown(episode, rule, ctx, last, unseen[0], done)
        if any(s["outcome"] not in DONE_OUTCOMES for p, s in steps.items() if p < count):
            return False  # a step failed: the rule's retry policy, as after any failed attempt
        if all(p in done for p in range(count)):
            ctx.history.append(
                f"attempt {number}: every step succeeded before the run stopped: verified, not run again"
            )
            return _Resume(last["id"], episode["attempts"], count, done, verify_only=True)
        start = min(p for p in range(count) if p not in done)
        ctx.history.append(f"attempt {number}: carried on from step {start + 1} (the steps before it succeeded)")
        return _Resume(last["id"], episode["attempts"], start, done)

    async def _resume_unknown(
        self,
        episode: dict[str, Any],
        rule: Rule,
        ctx: ActionContext,
        last: dict[str, Any],
        position: int,
        done: frozenset[int],
    ) -> _Resume | None:
        """The step at `position` was running when its run stopped: its rule's on_unknown runs it again (a new attempt
        from that step; an on_recovery step: the recovery verified again) or escalates. None when the episode was
        closed escalated."""
        spec = (rule.steps + rule.on_recovery)[position]
        number, count = last["number"], len(rule.steps)
        policy = rule.unknown_policy(spec)
        what = f"the outcome of step {position + 1} ({spec.name}) of attempt {number} is unknown"
        ctx.history.append(f"attempt {number}: {what} (the reconciler stopped while it ran); on_unknown: {policy}")
        log.warning("episode %s: %s; on_unknown: %s", episode["id"], what, policy)
        if policy == "escalate":
            await self._give_up(episode, rule, ctx, f"{what}: not run again (on_unknown: escalate)")
            return None
        if position >= count:  # an on_recovery step: the recovery is verified again, then it runs again
            return _Resume(last["id"], episode["attempts"], count, done)
        if episode["attempts"] >= rule.max_attempts:
            await self._give_up(episode, rule, ctx, f"{what} and no attempts left (on_unknown: retry)")
            return None
        return _Resume(None, episode["attempts"] + 1, position, done)

    async def _maintenance(self, labels: dict[str, str]) -> dict[str, Any] | None:
        if not self.rc.check_silences:
            return None
        try:
            return await self.alertmanager.active_silence_for(labels, exclude_created_by=CREATED_BY)
        except AlertmanagerError as exc:
            log.warning("cannot check silences (acting anyway): %s", exc)
            return None

    async def _still_firing(self, episode: dict[str, Any], ctx: ActionContext) -> bool:
        """Ask Alertmanager whether the episode's alert is still active; close the episode resolved when not.

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
            if started - episode["starts_at"] <= STARTS_AT_TOLERANCE:
                return True
        await self._close(
            episode,
            "resolved",
            "no longer firing in Alertmanager when the wait ended: nothing executed",
            resolved_at=utcnow(),
        )
        return False

    async def _park(self, episode: dict[str, Any], why: str, until: datetime) -> None:
        """Hold the episode (state waiting) until `until`; record once per reason that nothing was executed."""
        if not (episode["state"] == "waiting" and episode["detail"] == why):
            attempt_id = await self.db(self.ledger.start_attempt, episode["id"], self.owner, counted=False)
            await self.db(self.ledger.finish_attempt, attempt_id, "skipped", f"{why}: nothing executed")
        if await self._defer(episode, "waiting", until, why) == "waiting":
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
            await self._close_escalated(episode, CIRCUIT_OPEN, ctx, description, why)
            return False
        return True

    async def _attempt(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, resume: _Resume | None = None
    ) -> None:
        start, done = (resume.start, resume.done) if resume is not None else (0, frozenset[int]())
        number, attempt_id = await self._open_attempt(episode, resume, start)
        ran = await self._run_steps(episode, rule, ctx, attempt_id, number, start)
        if ran is None:
            return
        failure, refused = ran
        if self.rc.dry_run:
            await self.db(self.ledger.finish_attempt, attempt_id, "dry_run", "dry run: nothing executed")
            await self._close(episode, "dry_run", f"dry run: would run {len(rule.steps)} step(s) of {rule.name}")
            return
        if not failure:
            verified = await self._verify_attempt(episode, rule, ctx, attempt_id, number, done)
            if verified is None:
                return
            failure = verified
        await self.db(self.ledger.finish_attempt, attempt_id, "failure", failure)
        # A refused step would be refused again: no retry, straight to the failure policy. Nor when every step had
        # succeeded in a run that stopped: its verification failing is escalated, the steps are never run again.
        verify_only = resume is not None and resume.verify_only
        if number < rule.max_attempts and not refused and not verify_only:
            delay = rule.backoff.delay(number, self.rng)
            retry_at = utcnow() + timedelta(seconds=delay)
            await self._defer(
                episode, "pending", retry_at, f"attempt {number} failed ({failure[:200]}); retry at {retry_at}"
            )
            return
        await self._give_up(episode, rule, ctx, failure)

    async def _open_attempt(self, episode: dict[str, Any], resume: _Resume | None, start: int) -> tuple[int, int]:
        """The attempt this run makes, carried on or new: its number and id."""
        if resume is not None and resume.attempt_id is not None:
            number, attempt_id = resume.number, resume.attempt_id
            await self.db(self.ledger.resume_attempt, attempt_id, self.owner, f"carried on from step {start + 1}")
        else:
            number = episode["attempts"] + 1
            attempt_id = await self.db(self.ledger.start_attempt, episode["id"], self.owner)
        if number == 1 and not episode["first_action_at"]:
            self.metrics.time_to_first_action.observe(max(0.0, (utcnow() - episode["starts_at"]).total_seconds()))
        return number, attempt_id

    async def _run_steps(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, attempt_id: int, number: int, start: int
    ) -> tuple[str, bool] | None:
        """Run the rule's steps from `start`, in order, until one fails: returns the failure ("" when none did) and
        whether the step was refused (it would be again: no retry). None when the run ended on the way (the alert
        resolved between steps; a step waits for an approval, or its approval was rejected or expired)."""
        for position, step in enumerate(rule.steps):
            if position < start:
                continue  # succeeded in the run that stopped: never run twice
            if await self._is_resolved(episode["id"]):
                await self.db(self.ledger.finish_attempt, attempt_id, "resolved", "resolved between steps")
                await self._close(episode, "resolved", "resolved during the run; remaining steps cancelled")
                return None
            record = _step_record(episode, attempt_id, position, step)
            if step.risk == "destructive" and not rule.allow_destructive:
                reason = f"refused: {step.name} is destructive and rule {rule.name} does not allow_destructive"
                await self.db(self.ledger.start_step, *record, outcome="refused", output=reason)
                self.metrics.actions.labels(step.action, "refused").inc()
                ctx.history.append(f"attempt {number}: {reason}")  # the page says why nothing was done
                return reason, True
            if self.rc.dry_run:
                after = " (after an approval)" if rule.needs_approval(step, ctx.labels) else ""
                await self.db(
                    self.ledger.start_step, *record, outcome="dry_run", output=f"would run: {step.name}{after}"
                )
                self.metrics.actions.labels(step.action, "dry_run").inc()
                continue
            if rule.needs_approval(step, ctx.labels):
                gate = await self._approval_gate(episode, rule, ctx, attempt_id, number, position, step)
                if gate is None:
                    return None  # waits for the decision (the episode parked), or ended (rejected, expired: escalated)
                if gate == SKIPPED:
                    continue
                await self._spend_approval(gate)
            result = await self._run_step(episode, ctx, record, number, step)
            if not result.ok:
                return f"{step.name}: {result.outcome}: {result.output[:300]}", result.outcome == "refused"
        return "", False

    async def _spend_approval(self, approval_id: int | str) -> None:
        """Spent before the step starts: an approval runs its step once, whatever happens next."""
        approval = await self.db(self.approvals.use, approval_id, utcnow())
        if approval is None:
            raise LostClaim
        self._count_decision(approval)

    async def _run_step(
        self, episode: dict[str, Any], ctx: ActionContext, record: tuple[Any, ...], number: int, step: StepSpec
    ) -> Result:
        """Execute one step, recorded in the ledger (its process too, for a reconciler that restarts) and counted."""
        step_id = await self.db(self.ledger.start_step, *record)
        ctx.process_started = functools.partial(self._record_process, step_id)
        started = time.monotonic()
        result = await self._execute(ctx, step.action, step.params, step.timeout)
        self.metrics.action_duration.labels(step.action).observe(time.monotonic() - started)
        self.metrics.actions.labels(step.action, result.outcome).inc()
        await self._record_outcome(episode["id"], step_id, result)
        ctx.history.append(f"attempt {number}: {step.name} -> {result.outcome} ({result.output[:200]})")
        return result

    async def _verify_attempt(
        self,
        episode: dict[str, Any],
        rule: Rule,
        ctx: ActionContext,
        attempt_id: int,
        number: int,
        done: frozenset[int],
    ) -> str | None:
        """Verify what the steps did. Recovered or resolved: the on_recovery steps run and the episode is closed
        (escalated when they fail), and None is returned. Otherwise why the verification failed."""
        outcome, detail = await self._verify(episode, rule, ctx)
        if outcome not in ("resolved", "clear"):
            ctx.history.append(f"attempt {number}: verification: {detail[:300]}")
            return detail
        undone = await self._on_recovery(episode, rule, ctx, attempt_id, number, done)
        await self.db(
            self.ledger.finish_attempt, attempt_id, "resolved" if outcome == "resolved" else "success", detail
        )
        if outcome == "clear":
            self.metrics.time_to_recovery.observe(max(0.0, (utcnow() - episode["starts_at"]).total_seconds()))
        if undone:
            description = (
                f"{episode['alertname']} on {episode['target']} is over (episode {episode['id']}, rule "
                f"{rule.name}), but the steps that undo what the rule did failed: {undone}. Tried: "
                + "; ".join(ctx.history)
            )
            await self._close_escalated(episode, FAILED, ctx, description, f"{detail}; on_recovery: {undone}")
            return None
        await self._close(episode, "resolved" if outcome == "resolved" else "recovered", detail)
        return None

    async def _approval_gate(
        self,
        episode: dict[str, Any],
        rule: Rule,
        ctx: ActionContext,
        attempt_id: int,
        number: int,
        position: int,
        step: StepSpec,
    ) -> int | str | None:
        """A step that needs a person's decision: the approval's id when approved (the step runs), SKIPPED when it
        expired and the step says on_timeout: skip, None when the run ends here (the episode parked until the
        decision or the deadline, or closed escalated: rejected, expired with on_timeout: escalate).

        The approval is bound to this attempt, the step's position, its exact arguments and the playbook's version:
        one asked under another playbook (the reconciler restarted with a changed one) no longer stands, and the
        step is asked for again."""
        now = utcnow()
        row = await self._standing_approval(episode, ctx, attempt_id, number, position, step, now)
        if row is None or row["status"] not in (PENDING, APPROVED, REJECTED, EXPIRED):
            await self._ask(episode, rule, ctx, attempt_id, number, position, step, now)
            return None
        approval_id = row["id"]
        if row["status"] == PENDING and row["deadline"] > now:
            await self._await_decision(episode, attempt_id, row, step)  # woken early (a resume): wait on
            return None
        if row["status"] == PENDING:
            if not await self.db(self.approvals.expire, approval_id, now):
                row = await self.db(self.approvals.latest, episode["id"], position)  # decided this very moment
                if row is None or row["id"] != approval_id:
                    raise LostClaim
            else:
                self.metrics.approval_decisions.labels("expired").inc()
                row = {**row, "status": EXPIRED}
        record = _step_record(episode, attempt_id, position, step)
        if row["status"] == APPROVED:
            ctx.history.append(
                f"attempt {number}: {step.name} approved by {row['decided_by']} (approval {approval_id}: "
                f"{row['reason'] or 'no reason given'})"
            )
            return int(approval_id)
        if row["status"] == EXPIRED and step.on_timeout == "skip":
            why = f"approval {approval_id} expired unanswered at {row['deadline'].isoformat()}: skipped (on_timeout)"
            await self.db(self.ledger.start_step, *record, outcome=SKIPPED, output=why)
            ctx.history.append(f"attempt {number}: {step.name}: {why}")
            log.info("episode %s: step %s (%s): %s", episode["id"], position + 1, step.name, why)
            return SKIPPED
        if row["status"] == REJECTED:
            self._count_decision(row)
            outcome = "refused"
            why = f"{step.name} rejected by {row['decided_by']} (approval {approval_id}): {row['reason'] or '-'}"
        else:
            outcome = EXPIRED
            why = (
                f"{step.name}: approval {approval_id} expired unanswered at {row['deadline'].isoformat()} "
                "(on_timeout: escalate)"
            )
        await self.db(self.ledger.start_step, *record, outcome=outcome, output=why)
        await self.db(self.ledger.finish_attempt, attempt_id, "failure", why)
        ctx.history.append(f"attempt {number}: {why}")
        description = (
            f"Rule {rule.name} did not act on {episode['alertname']} on {episode['target']} (episode {episode['id']}): "
            f"{why}. Nothing more is done automatically. Tried: " + "; ".join(ctx.history)
        )
        await self._close_escalated(episode, FAILED, ctx, description, why)
        return None

    async def _standing_approval(
        self,
        episode: dict[str, Any],
        ctx: ActionContext,
        attempt_id: int,
        number: int,
        position: int,
        step: StepSpec,
        now: datetime,
    ) -> dict[str, Any] | None:
        """The latest approval of the step that still stands for this attempt (None: none does, ask again): one asked
        for an earlier attempt, or under another playbook or other arguments while undecided or approved, is
        superseded."""
        row = await self.db(self.approvals.latest, episode["id"], position)
        if row is not None and row["attempt_id"] != attempt_id:
            if row["status"] in (PENDING, APPROVED):
                await self.db(self.approvals.supersede, row["id"], now)
            return None  # asked for an earlier attempt: this one asks again (an approval runs its step once)
        if row is not None and (row["playbook_version"], row["arguments"]) != (self.playbook.version, step.arguments()):
            if row["status"] in (PENDING, APPROVED):
                await self.db(self.approvals.supersede, row["id"], now)
                ctx.history.append(f"attempt {number}: approval {row['id']} superseded (the playbook changed)")
                return None
        return row

    def _count_decision(self, row: dict[str, Any]) -> None:
        """A person's decision, counted when the reconciler acts on it (once: the run holding the episode does, by the
        CLI or the API, on whichever replica), with how long the approval waited for it."""
        self.metrics.approval_decisions.labels(row["status"]).inc()
        waited = (row["decided_at"] - row["requested_at"]).total_seconds()
        self.metrics.approval_decision_seconds.observe(max(0.0, waited))

    async def _ask(
        self,
        episode: dict[str, Any],
        rule: Rule,
        ctx: ActionContext,
        attempt_id: int,
        number: int,
        position: int,
        step: StepSpec,
        now: datetime,
    ) -> None:
        """Store a pending approval for the step, its page and the episode parked until the deadline, in one
        transaction: the run's claim and its target are given back, so nothing else waits for the person."""
        deadline = now + _seconds(step.approval_timeout)
        values = {
            "position": position,
            "action": step.action,
            "step_name": step.name,
            "arguments": step.arguments(),
            "playbook_version": self.playbook.version,
            "rule": rule.name,
            "target": episode["target"],
            "on_timeout": step.on_timeout,
            "requested_by": self.instance,
            "deadline": deadline,
        }
        page = functools.partial(self._approval_page, episode, rule, ctx, position, step, deadline)

        def why(approval_id: int) -> str:
            return f"{AWAITING} {approval_id} for {step.name} until {deadline.isoformat()}"

        self._end_claim(episode)
        asked = await self.db(self.approvals.request, episode["id"], self.owner, attempt_id, values, page, why, now)
        if asked is None:
            raise LostClaim
        approval_id, state = asked
        if state == "resolved":
            self.metrics.episodes_total.labels("resolved").inc()
            log.info("episode %s: resolved while held: no approval asked", episode["id"])
            return
        self.escalations.set()
        log.info(
            "episode %s (%s on %s): step %s (%s) waits for approval %s until %s",
            episode["id"],
            episode["alertname"],
            episode["target"],
            position + 1,
            step.name,
            approval_id,
            deadline.isoformat(),
        )

    async def _await_decision(
        self, episode: dict[str, Any], attempt_id: int, row: dict[str, Any], step: StepSpec
    ) -> None:
        """Hand the attempt and the episode back (waiting) until the approval's deadline; a decision makes it due at
        once (ApprovalStore.decide), and the next run carries the attempt on from this step."""
        why = f"{AWAITING} {row['id']} for {step.name} until {row['deadline'].isoformat()}"
        self._end_claim(episode)
        now = utcnow()
        written = await self.db(
            self.approvals.park, episode["id"], self.owner, attempt_id, row["id"], row["deadline"], why, now
        )
        if written is None:
            raise LostClaim
        if written == "resolved":
            self.metrics.episodes_total.labels("resolved").inc()

    def _approval_page(
        self,
        episode: dict[str, Any],
        rule: Rule,
        ctx: ActionContext,
        position: int,
        step: StepSpec,
        deadline: datetime,
        approval_id: int,
    ) -> dict[str, Any]:
        """The page an approval posts: what the reconciler wants to do, until when, and how to answer."""
        listen = self.rc.listen
        url = f"http://{listen.host}:{listen.port}/api/v1/approvals/{approval_id}"
        then = "the episode is escalated" if step.on_timeout == "escalate" else "the step is skipped"
        description = (
            f"Rule {rule.name} wants to run step {position + 1}, {step.name} [{step.risk}], on {episode['target']} "
            f"for {episode['alertname']} (episode {episode['id']}). Approve: trading-ops reconciler approve "
            f"{approval_id} --reason '...'; reject: trading-ops reconciler reject {approval_id} --reason '...'; or "
            f'POST {url} {{"decision": "approve"|"reject", "reason": "..."}}. Unanswered by '
            f"{deadline.isoformat()}: {then}."
        )
        alert = escalation_alert(APPROVAL_REQUESTED, ctx.labels, ctx.target, description, episode=episode["id"])
        alert["labels"]["approval"] = str(approval_id)
        alert["annotations"]["approve_command"] = f"trading-ops reconciler approve {approval_id} --reason '...'"
        alert["annotations"]["reject_command"] = f"trading-ops reconciler reject {approval_id} --reason '...'"
        alert["annotations"]["approval_url"] = url
        if self.rc.external_url:
            alert["annotations"]["console_url"] = (
                f"{self.rc.external_url.rstrip('/')}/ui/approvals#approval-{approval_id}"
            )
        return alert

    async def _on_recovery(
        self,
        episode: dict[str, Any],
        rule: Rule,
        ctx: ActionContext,
        attempt_id: int,
        number: int,
        done: frozenset[int] = frozenset(),
    ) -> str:
        """Run the rule's on_recovery steps (recorded after its steps, in the same attempt; those in `done` succeeded
        in a run that stopped, and are not run again); what failed, or ""."""
        for position, step in enumerate(rule.on_recovery, start=len(rule.steps)):
            if position in done:
                continue
            record = _step_record(episode, attempt_id, position, step)
            if step.risk == "destructive" and not rule.allow_destructive:
                reason = f"refused: {step.name} is destructive and rule {rule.name} does not allow_destructive"
                await self.db(self.ledger.start_step, *record, outcome="refused", output=reason)
                return reason
            step_id = await self.db(self.ledger.start_step, *record)
            ctx.process_started = functools.partial(self._record_process, step_id)
            result = await self._execute(ctx, step.action, step.params, step.timeout)
            self.metrics.actions.labels(step.action, result.outcome).inc()
            await self._record_outcome(episode["id"], step_id, result)
            ctx.history.append(
                f"attempt {number}: on recovery: {step.name} -> {result.outcome} ({result.output[:200]})"
            )
            if not result.ok:
                return f"{step.name}: {result.outcome}: {result.output[:300]}"
        return ""

    async def _record_outcome(self, episode_id: int, step_id: int, result: Result) -> None:
        """What a step did, written before anything else, and never given up on: first to the local spool (it
        survives the process), then to the ledger, tried again with backoff while the database is away and the run
        holds its claim (the lease renewer keeps renewing it meanwhile). A claim lost meanwhile does not stop the
        write (the outcome is a fact, whoever runs the episode next), only the run after it. Should the process stop
        first, the spool is replayed at its next start, before any sweep."""
        spooled = SpooledOutcome(step_id, result.outcome, result.output, utcnow())
        try:
            await self.db(self.spool.put, spooled)  # the ledger's threads: asyncio's default pool may be stuck
        except OSError as exc:  # the ledger is the record; the spool only outlives the process when it is away
            log.error("step %s: its outcome could not be spooled (%s): %s", step_id, self.spool.directory, exc)
        claim = self.claims.get(episode_id)
        if claim is not None:
            claim.recording = True
        delay = OUTCOME_RETRY_INITIAL_SECONDS
        try:
            while True:
                try:
                    await self.db(self.ledger.finish_step, step_id, result.outcome, result.output, spooled.finished_at)
                    break
                except Exception as exc:
                    if not ledger_unreachable(exc) or claim is None or claim.lost:
                        raise  # left in the spool: replayed before the next sweep
                    log.warning(
                        "step %s: its outcome (%s) is not in the ledger yet; written again in %gs: %s",
                        step_id,
                        result.outcome,
                        delay,
                        exc,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, OUTCOME_RETRY_MAX_SECONDS)
        finally:
            if claim is not None:
                claim.recording = False
        await self.db(self.spool.remove, step_id)
        if claim is not None and claim.lost:
            raise LostClaim

    async def _execute(self, ctx: ActionContext, kind: str, params: dict[str, Any], timeout: float) -> Result:
        try:
            async with asyncio.timeout(timeout + 5):
                return await ACTIONS[kind].run(ctx, params, timeout)
        except Refused as exc:
            return Result("refused", str(exc))
        except TimeoutError:
            return Result("timeout", f"no result within {timeout:g}s")
        except Exception as exc:
            log.exception("action %s failed", kind)
            return Result("failure", truncate(f"{type(exc).__name__}: {exc}", self.rc.output_limit_bytes))

    async def _verify(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext) -> tuple[str, str]:
        if not rule.verify.enabled:
            return "clear", "steps succeeded (verification disabled by the rule)"
        found = await self._verify_expr(episode, rule, ctx)
        if isinstance(found, str):
            return "failure", found  # fails safe: no expression, no "recovered"
        expr, source = found
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
            expr,
            rule.verify.deadline,
            rule.verify.interval,
            lambda: self._is_resolved(episode["id"]),
            alert_labels=ctx.labels,
            wake=self.resolved.get(episode["id"]),
            scrapes=scrapes,
        )
        outcome = verdict.outcome if verdict.outcome in ("clear", "resolved") else "failure"
        return outcome, f"{verdict.detail} [expression from {source}]"

    async def _verify_expr(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext) -> tuple[str, str] | str:
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
                return expr, source  # as written
            return f"cannot verify: no verify.expr, and Prometheus's alerting rules could not be read: {exc}"
        if expr is None:
            exprs = await self.prometheus.alert_expressions(episode["alertname"], ctx.labels, rules)
            if not exprs:
                return (
                    f"cannot verify: no verify.expr, and Prometheus has no alerting rule {episode['alertname']} "
                    "with this alert's labels"
                )
            # Several rules of one name with the same labels: still failing while any of them matches.
            expr = " or ".join(f"({e})" for e in exprs) if len(exprs) > 1 else exprs[0]
            source = "prometheus_rules"
        return inline_recording_rules(expr, rules), source

    async def _record_process(self, step_id: int, pid: int) -> None:
        """A step started a process group: recorded so that a crash of ours never leaves it running unseen."""
        process = await asyncio.to_thread(ProcessId.of, pid)
        if process is not None:
            await self.db(self.ledger.set_step_process, step_id, process.token())

    async def _give_up(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, failure: str) -> None:
        if rule.on_failure == "none":
            await self._close(episode, "failed", failure)
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
        await self._close_escalated(episode, FAILED, ctx, description, failure)

    async def _close_escalated(
        self, episode: dict[str, Any], alertname: str, ctx: ActionContext, description: str, detail: str
    ) -> None:
        """End the run by paging a human. Every run that ends escalated ends here (the internal-error path, which
        must not raise, goes to `_owe_page` itself): a page is never lost."""
        await self._owe_page(episode, alertname, ctx.labels, ctx.target, description, detail)

    async def _owe_page(
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
        self._end_claim(episode)
        if not await self.db(self.outbox.enqueue, episode["id"], self.owner, alert, detail, utcnow()):
            raise LostClaim
        self.escalations.set()
        log.info(
            "episode %s (%s on %s): escalating (%s): %s",
            episode["id"],
            episode["alertname"],
            episode["target"],
            alertname,
            detail,
        )


def _step_record(episode: dict[str, Any], attempt_id: int, position: int, step: StepSpec) -> tuple[Any, ...]:
    """What the ledger records of a step when it starts (Ledger.start_step's arguments)."""
    return (attempt_id, position, step.action, step.name, step.risk, episode["target"], ACTIONS[step.action].budgeted)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _silence_end(silence: dict[str, Any], now: datetime) -> datetime:
    try:
        return parse_timestamp(silence.get("endsAt"), "endsAt")
    except Rejected:
        return now + _seconds(MAINTENANCE_RECHECK_SECONDS)
