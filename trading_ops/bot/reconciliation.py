"""Reconciliation: compare the bot's journal with the broker, classify every difference, resolve it by policy.

Classes: missing_fill (a venue fill the journal lacks), duplicate_fill (one trade id twice), unknown_order (an
open venue order the bot never placed), order_state_mismatch (status or filled quantity differ), vanished_order
(open in the journal, gone from the venue), position_mismatch and balance_mismatch (what the fills found do not
explain). Policies: adopt (the venue's state into the journal), cancel (unknown orders), alert (record and
export only), halt (the kill switch).

Resolution is idempotent: what adopt and cancel change makes the journal agree with the venue, so a second run
finds nothing. Classification is a pure function of the two snapshots, ordered deterministically
(`trading_ops.bot.classify`); this module takes the snapshots, resolves what classify finds and records the run.

Unknown is not flat: when the venue does not answer the positions or the balances query, the run compares and resolves
what it could see (orders, fills) and ends `unknown`. What it could not see is never read as zero: no position or
balance is compared, adjusted or adopted from a missing answer, and the run does not pass (the safe-start gate stays
closed, /readyz fails, tradingbot_reconciliation_unknown says which part).

A healthy bot trades while it is reconciled, so a snapshot can catch a fill the venue made whose event is still on
its way. Before each snapshot the bot hands every event already delivered to the journal and the broker is asked
to drain what it has produced (`Broker.drain_events`); and whatever the first snapshot finds is only acted on when
a second snapshot, `confirm_delay_seconds` later, finds it again. What only the first found settled by itself.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from trading_ops.bot.broker import VENUE_ID_PREFIX, Broker, BrokerError, OrderStatus, VenueFill, VenueOrder
from trading_ops.bot.classify import (
    ZERO,
    Discrepancy,
    JournalFill,
    JournalOrder,
    JournalSnapshot,
    Kind,
    VenueSnapshot,
    balance_changes,
    classify,
    split_symbol,
)
from trading_ops.bot.journal import Journal
from trading_ops.bot.reconciliation_metrics import ReconciliationMetrics
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.config import DEFAULT_RECONCILIATION_POLICIES, RECONCILIATION_POLICIES
from trading_ops.db.base import utcnow

log = logging.getLogger(__name__)

# Attempts at a venue snapshot during which no new fill arrived (the venue keeps trading while we look).
SNAPSHOT_ATTEMPTS = 3
# A difference found is acted on only if a second snapshot this much later finds it again: longer than an event
# takes from a venue to the journal.
CONFIRM_DELAY_SECONDS = 1.0
# Orders open in the journal but not on the venue whose final state is looked up one by one; past this many in
# one run, how each ended is inferred from the fills.
MAX_ORDER_LOOKUPS = 100


class Trigger(enum.StrEnum):
    STARTUP = "startup"
    SCHEDULE = "schedule"
    RECONNECT = "reconnect"
    COMMAND = "command"
    LOST_REPLY = "lost_reply"  # a submission whose answer was lost: did the order reach the venue?
    JOURNAL = "journal"  # the journal can be written again: what happened while it could not?


class Result(enum.StrEnum):
    CLEAN = "clean"  # nothing found
    RESOLVED = "resolved"  # everything found was handled by its policy (adopted, canceled or alerted)
    FAILED = "failed"  # the run could not complete, or an action failed
    HALTED = "halted"  # a halt policy engaged the kill switch
    UNKNOWN = "unknown"  # the venue did not answer for positions or balances: those were not compared


class ReconciliationError(Exception):
    """A reconciliation that cannot run as asked (bad arguments)."""


def verdict(found: list[Discrepancy], unknown: list[str], error: str | None) -> tuple[Result, str | None]:
    """A run's result, and its error: the run's own, the actions that failed, or the parts the venue did not
    answer for."""
    if error is not None or any(d.outcome == "failed" for d in found):
        return Result.FAILED, error or "; ".join(
            f"{d.kind.value} {d.key}: {d.detail.get('error')}" for d in found if d.outcome == "failed"
        )
    if any(d.outcome == "halted" for d in found):
        return Result.HALTED, None
    if unknown:
        return Result.UNKNOWN, f"the venue did not answer for {' and '.join(unknown)}: not compared"
    return (Result.RESOLVED if found else Result.CLEAN), None


class ReconciliationHooks(Protocol):
    """What the engine asks of the bot, so its in-memory state follows what the journal adopts."""

    async def settle(self) -> None:
        """Journal every venue event the bot has received (and the broker has produced) before a snapshot."""

    async def adopt_fill(self, fill: VenueFill) -> bool:
        """Apply a fill to the book and journal it with its position and balance changes; False if known."""

    async def adopt_order(self, order: VenueOrder) -> None:
        """Journal the venue's view of an order (creating it if the bot never placed it); track it if open."""

    async def adjust_position(self, symbol: str, quantity: Decimal, reference: str) -> None:
        """Journal a position adjustment of `quantity` that no fill explains (`reference` is unique per run)."""

    async def fills_changed(self, symbols: list[str]) -> None:
        """Journal fill rows of `symbols` were removed: rebuild their positions from the journal."""

    async def halt(self, reason: str) -> None:
        """Engage the kill switch."""


@dataclass
class _Pass:
    """One look at both sides: the snapshots and what differs between them."""

    journal: JournalSnapshot
    venue: VenueSnapshot
    found: list[Discrepancy]


@dataclass
class _Resolution:
    """What resolving one run's discrepancies gathers for after the last of them."""

    started: datetime
    rows: dict[int, JournalFill]  # the journal's duplicate rows, by row id
    halts: list[str] = field(default_factory=list)
    fills_removed: set[str] = field(default_factory=set)  # symbols whose duplicate fill rows were removed
    adopt_balances: bool = False


T = TypeVar("T")


class Reconciler:
    """Runs reconciliations one at a time; each is stored with its discrepancies and exported as metrics.

    `progress_at` is when the run under way last completed a step (an answer of the venue, a journal call, the
    confirming look's wait), on time.monotonic(): the trading loop, waiting meanwhile for the trade lock the run
    holds, counts those steps as its heartbeat (TradingLoop). A run that waits patiently for the venue's rate limit
    may take longer than the heartbeat timeout; one stuck on a single answer or a stalled journal makes no step."""

    def __init__(
        self,
        broker: Broker,
        journal: Journal,
        store: RecoveryStore,
        metrics: ReconciliationMetrics,
        hooks: ReconciliationHooks,
        *,
        policies: dict[str, str] | None = None,
        fills_lookback_seconds: float = 86_400.0,
        confirm_delay_seconds: float = CONFIRM_DELAY_SECONDS,
        split: Callable[[str], tuple[str, str]] = split_symbol,
    ) -> None:
        self.broker = broker
        self.journal = journal
        self.store = store
        self.metrics = metrics
        self.hooks = hooks
        self.policies = {**DEFAULT_RECONCILIATION_POLICIES, **(policies or {})}
        for kind, policy in self.policies.items():
            if policy not in RECONCILIATION_POLICIES.get(kind, ()):
                raise ValueError(f"policy {policy!r} is not allowed for {kind}")
        self.fills_lookback = fills_lookback_seconds
        self.confirm_delay = confirm_delay_seconds
        self.split = split
        self._lock = asyncio.Lock()
        self.last: dict[str, Any] | None = None
        self.last_success: dict[str, Any] | None = None
        self.progress_at: float | None = None

    @property
    def running(self) -> bool:
        return self._lock.locked()

    async def run(self, trigger: Trigger | str) -> dict[str, Any]:
        """Reconcile once; returns the run as JSON-ready data (never raises for a venue or journal problem)."""
        try:
            trigger = Trigger(trigger)
        except ValueError:
            raise ReconciliationError(
                f"unknown trigger {str(trigger)[:32]!r}; one of {', '.join(t.value for t in Trigger)}"
            ) from None
        async with self._lock:
            self.progress_at = time.monotonic()
            return await self._run(trigger)

    async def _step(self, pending: Awaitable[T]) -> T:
        """One step of the run: its end, answered or failed, is progress (`progress_at`)."""
        try:
            return await pending
        finally:
            self.progress_at = time.monotonic()

    async def _run(self, trigger: Trigger) -> dict[str, Any]:
        started = utcnow()
        found: list[Discrepancy] = []
        error: str | None = None
        mismatch: dict[str, Decimal] = {}
        unknown: list[str] = []
        settled = 0
        try:
            look, settled = await self._confirmed_look(trigger)
            found = look.found
            unknown = look.venue.unknown
            await self._resolve(found, look.journal, look.venue, started)
            if look.venue.positions is not None:
                mismatch = await self._position_mismatch(look.venue.positions)
        except Exception as exc:
            log.exception("reconciliation (%s) failed", trigger.value)
            error = f"{type(exc).__name__}: {exc}"
        result, error = verdict(found, unknown, error)
        finished = utcnow()
        items = [d.to_dict() for d in found]
        run_id = await self._step(
            self.journal.call(
                self.store.record_reconciliation, trigger.value, result.value, started, finished, items, error
            )
        )
        self.metrics.run(trigger.value, result.value, time.time())
        if error is None or result is Result.UNKNOWN:  # a run that failed early saw nothing: says nothing here
            self.metrics.unknown(unknown)
        for d in found:
            self.metrics.discrepancy(d.kind.value)
        for symbol, difference in mismatch.items():
            self.metrics.position_mismatch(symbol, float(difference))
        summary: dict[str, Any] = {
            "run_id": run_id,
            "trigger": trigger.value,
            "result": result.value,
            "clean": result is Result.CLEAN,
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
            "counts": dict(sorted(Counter(d.kind.value for d in found).items())),
            "discrepancies": items,
            "settled": settled,
            "position_mismatch": {s: str(q) for s, q in mismatch.items() if q},
            "unknown": unknown,
            "error": error,
        }
        level = logging.INFO if result in (Result.CLEAN, Result.RESOLVED) else logging.ERROR  # unknown included
        log.log(level, "reconciliation %d (%s): %s, %s", run_id, trigger.value, result.value, summary["counts"])
        self.last = summary
        if result in (Result.CLEAN, Result.RESOLVED):
            self.last_success = summary
        return summary

    async def _confirmed_look(self, trigger: Trigger) -> tuple[_Pass, int]:
        """A look at both sides whose differences a second look, `confirm_delay` later, found again; and how many
        of the first look's settled by themselves in between."""
        look = await self._look()
        if not look.found or self.confirm_delay <= 0:
            return look, 0
        # What is real is still there a moment later; an event that was on its way has landed by then.
        await self._step(asyncio.sleep(self.confirm_delay))
        first = {(d.kind, d.key) for d in look.found}
        look = await self._look()
        confirmed = [d for d in look.found if (d.kind, d.key) in first]
        settled = len(first) - len(confirmed)
        if settled or len(confirmed) < len(look.found):
            log.info(
                "reconciliation (%s): %d differences settled by themselves, %d new ones left for the next run",
                trigger.value,
                settled,
                len(look.found) - len(confirmed),
            )
        look.found = confirmed
        return look, settled

    async def _position_mismatch(self, venue_positions: dict[str, Decimal]) -> dict[str, Decimal]:
        """The venue's position minus the journal's, by symbol, after the run resolved what it found."""
        positions = await self._step(self.journal.call(self.journal.positions))
        mismatch: dict[str, Decimal] = {}
        for symbol in sorted(set(venue_positions) | set(positions)):
            ours = positions[symbol].quantity if symbol in positions else ZERO
            mismatch[symbol] = venue_positions.get(symbol, ZERO) - ours
        return mismatch

    async def _look(self) -> _Pass:
        """Settle what is in flight, then snapshot the venue (at once after the settling), the journal and how the
        orders the venue no longer lists ended; classify."""
        await self._step(self.hooks.settle())
        venue = await self._venue_snapshot(utcnow())
        journal = await self._step(self.journal.call(self._journal_snapshot, venue))
        venue.closed_orders = await self._closed_orders(journal, venue)
        return _Pass(journal, venue, classify(journal, venue, self.split))

    async def _venue_snapshot(self, now: datetime) -> VenueSnapshot:
        """Positions, balances, open orders and fills with no fill arriving in between (else look again). Positions
        or balances the venue does not answer for are None (unknown); open orders and fills it must answer."""
        since = now - timedelta(seconds=self.fills_lookback) if self.fills_lookback > 0 else None
        for _ in range(SNAPSHOT_ATTEMPTS):
            before = await self._step(self.broker.recent_fills(since))
            positions = await self._step(self._ask("positions", self.broker.positions))
            balances = await self._step(self._ask("balances", self.broker.balances))
            open_orders = await self._step(self.broker.open_orders())
            after = await self._step(self.broker.recent_fills(since))
            if [f.trade_id for f in before] == [f.trade_id for f in after]:
                return VenueSnapshot(
                    positions, balances, open_orders, after, balance_assets=self.broker.balance_assets()
                )
        raise RuntimeError(f"the venue kept filling during {SNAPSHOT_ATTEMPTS} snapshot attempts")

    @staticmethod
    async def _ask(part: str, query: Callable[[], Any]) -> dict[str, Decimal] | None:
        """The venue's answer, or None when it gave none (never an empty answer: that would read as flat)."""
        try:
            answer: dict[str, Decimal] = await query()
        except BrokerError as exc:
            log.warning(
                "reconciliation: the venue did not answer for %s (%s: %s): left unknown", part, exc.error_class, exc
            )
            return None
        return answer

    async def _closed_orders(self, journal: JournalSnapshot, venue: VenueSnapshot) -> dict[str, VenueOrder | None]:
        """Ask the venue how each order open in the journal but not listed open ended (up to MAX_ORDER_LOOKUPS)."""
        listed = {o.key for o in venue.open_orders}
        gone = [o for key, o in sorted(journal.orders.items()) if key not in listed and OrderStatus(o.status).is_open]
        found: dict[str, VenueOrder | None] = {}
        for mine in gone[:MAX_ORDER_LOOKUPS]:
            key = mine.client_order_id
            client_order_id = "" if key.startswith(VENUE_ID_PREFIX) else key
            found[key] = await self._step(
                self.broker.order_status(client_order_id, venue_order_id=mine.venue_order_id or "")
            )
        return found

    def _journal_snapshot(self, venue: VenueSnapshot) -> JournalSnapshot:
        """Runs on the journal thread."""
        j = self.journal
        orders = {o.client_order_id: o for o in j.open_orders()}
        listed = [o.key for o in venue.open_orders if o.key not in orders]
        orders.update({o.client_order_id: o for o in j.orders_by_client_id(listed)})
        return JournalSnapshot(
            orders={
                key: JournalOrder(
                    o.client_order_id,
                    o.venue_order_id,
                    o.symbol,
                    o.side,
                    o.order_type,
                    o.quantity,
                    o.price,
                    o.filled_quantity,
                    o.status,
                )
                for key, o in orders.items()
            },
            trade_ids=j.known_trade_ids(sorted({f.trade_id for f in venue.fills})),
            duplicate_fills=[
                JournalFill(f.id, f.trade_id, f.symbol, f.side, f.quantity, f.price, f.fee, f.fee_asset, f.liquidity)
                for f in j.duplicate_fills()
            ],
            positions={s: p.quantity for s, p in j.positions().items()},
            balances=j.balances(),
        )

    async def _resolve(
        self, found: list[Discrepancy], journal: JournalSnapshot, venue: VenueSnapshot, started: datetime
    ) -> None:
        run = _Resolution(started, {row.row_id: row for row in journal.duplicate_fills})
        run.adopt_balances = not journal.balances  # the baseline of a new journal
        for d in found:
            d.policy = self.policies[d.kind.value]
            try:
                d.outcome = await self._step(self._resolve_one(d, run))
            except Exception as exc:
                log.warning("reconciliation could not %s %s %s: %s", d.policy, d.kind.value, d.key, exc)
                d.outcome = "failed"
                d.detail = {**d.detail, "error": str(exc)[:200]}
        if run.fills_removed:
            await self.hooks.fills_changed(sorted(run.fills_removed))
        if run.adopt_balances and venue.balances is not None:
            await self._step(self.journal.call(self.journal.set_balances, dict(venue.balances)))
        if run.halts:
            halts = run.halts
            await self.hooks.halt("reconciliation: " + ", ".join(halts[:5]) + (" ..." if len(halts) > 5 else ""))

    async def _resolve_one(self, d: Discrepancy, run: _Resolution) -> str:
        """Apply the discrepancy's policy; its outcome."""
        if d.policy == "alert":
            return "alerted"
        if d.policy == "halt":
            run.halts.append(f"{d.kind.value} {d.key}")
            return "halted"
        resolvers: dict[Kind, Callable[[Discrepancy, _Resolution], Awaitable[str]]] = {
            Kind.DUPLICATE_FILL: self._remove_duplicates,
            Kind.MISSING_FILL: self._adopt_fill,
            Kind.UNKNOWN_ORDER: self._cancel_or_adopt_order,
            Kind.ORDER_STATE_MISMATCH: self._adopt_order,
            Kind.VANISHED_ORDER: self._adopt_order,
            Kind.POSITION_MISMATCH: self._adjust_position,
            Kind.BALANCE_MISMATCH: self._adopt_balances,
        }
        return await resolvers[d.kind](d, run)

    async def _remove_duplicates(self, d: Discrepancy, run: _Resolution) -> str:
        extra = [run.rows[i] for i in d.detail.get("extra_rows") or []]
        if extra:  # the rows go, and with them the balance changes they were journaled with
            undo: dict[str, Decimal] = {}
            for row in extra:
                for asset, change in balance_changes(row, self.split).items():
                    undo[asset] = undo.get(asset, ZERO) - change
            await self.journal.call(self.journal.remove_fill_rows, [r.row_id for r in extra], undo)
            run.fills_removed.update(row.symbol for row in extra)
        return "adopted"  # a venue duplicate is journaled once by missing_fill

    async def _adopt_fill(self, d: Discrepancy, run: _Resolution) -> str:
        assert d.fill is not None
        await self.hooks.adopt_fill(d.fill)
        return "adopted"

    async def _cancel_or_adopt_order(self, d: Discrepancy, run: _Resolution) -> str:
        if d.policy != "cancel":
            return await self._adopt_order(d, run)
        assert d.order is not None
        await self.broker.cancel(d.order.client_order_id, venue_order_id=d.order.venue_order_id)
        return "canceled"

    async def _adopt_order(self, d: Discrepancy, run: _Resolution) -> str:
        assert d.order is not None
        await self.hooks.adopt_order(d.order)
        return "adopted"

    async def _adjust_position(self, d: Discrepancy, run: _Resolution) -> str:
        reference = f"reconcile-{run.started.strftime('%Y%m%dT%H%M%S%f')}-{d.key}"
        await self.hooks.adjust_position(d.key, d.quantity, reference)
        return "adopted"

    async def _adopt_balances(self, d: Discrepancy, run: _Resolution) -> str:
        run.adopt_balances = True  # once, after every discrepancy: the venue's balances as they are
        return "adopted"
