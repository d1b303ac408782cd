"""Reconciliation: compare the bot's journal with the broker, classify every difference, resolve it by policy.

Classes: missing_fill (a venue fill the journal lacks), duplicate_fill (one trade id twice), unknown_order (an
open venue order the bot never placed), order_state_mismatch (status or filled quantity differ), vanished_order
(open in the journal, gone from the venue), position_mismatch and balance_mismatch (what the fills found do not
explain). Policies: adopt (the venue's state into the journal), cancel (unknown orders), alert (record and
export only), halt (the kill switch).

Resolution is idempotent: what adopt and cancel change makes the journal agree with the venue, so a second run
finds nothing. Classification is a pure function of the two snapshots, ordered deterministically.

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
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from trading_ops.bot.broker import (
    VENUE_ID_PREFIX,
    Broker,
    BrokerError,
    OrderStatus,
    OrderType,
    Side,
    VenueFill,
    VenueOrder,
)
from trading_ops.bot.journal import Journal
from trading_ops.bot.reconciliation_metrics import ReconciliationMetrics
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.config import DEFAULT_RECONCILIATION_POLICIES, RECONCILIATION_POLICIES
from trading_ops.db.base import utcnow

log = logging.getLogger(__name__)

ZERO = Decimal(0)
# Attempts at a venue snapshot during which no new fill arrived (the venue keeps trading while we look).
SNAPSHOT_ATTEMPTS = 3
# A difference found is acted on only if a second snapshot this much later finds it again: longer than an event
# takes from a venue to the journal.
CONFIRM_DELAY_SECONDS = 1.0
# Orders open in the journal but not on the venue whose final state is looked up one by one; past this many in
# one run, how each ended is inferred from the fills.
MAX_ORDER_LOOKUPS = 100
# Liquidity of a journaled position adjustment: a fill row with no venue fill and no balance change behind it.
ADJUSTMENT_LIQUIDITY = "adjust"


class Kind(enum.StrEnum):
    DUPLICATE_FILL = "duplicate_fill"
    MISSING_FILL = "missing_fill"
    UNKNOWN_ORDER = "unknown_order"
    ORDER_STATE_MISMATCH = "order_state_mismatch"
    VANISHED_ORDER = "vanished_order"
    POSITION_MISMATCH = "position_mismatch"
    BALANCE_MISMATCH = "balance_mismatch"


KIND_ORDER = {kind: index for index, kind in enumerate(Kind)}  # the order discrepancies are listed and resolved in


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


# The parts of the account a run may not see (tradingbot_reconciliation_unknown's `part`).
UNKNOWN_PARTS = ("positions", "balances")


class ReconciliationError(Exception):
    """A reconciliation that cannot run as asked (bad arguments)."""


def split_symbol(symbol: str) -> tuple[str, str]:
    """(base, quote) of a spot symbol such as BTC-USD or BTC/USDT."""
    for sep in ("-", "/", "_"):
        if sep in symbol:
            base, quote = symbol.split(sep, 1)
            return base, quote
    return symbol, ""


def balance_changes(
    fill: VenueFill | JournalFill, split: Callable[[str], tuple[str, str]] = split_symbol
) -> dict[str, Decimal]:
    """What a spot fill does to the account: the base asset by the quantity, the quote by the notional, the fee
    asset by the fee. A position adjustment (no trade behind it) changes no balance."""
    if fill.liquidity == ADJUSTMENT_LIQUIDITY:
        return {}
    base, quote = split(fill.symbol)
    sign = Side(fill.side).sign
    changes: dict[str, Decimal] = {base: sign * fill.quantity}
    if quote:
        changes[quote] = changes.get(quote, ZERO) - sign * fill.quantity * fill.price
    changes[fill.fee_asset] = changes.get(fill.fee_asset, ZERO) - fill.fee
    return changes


@dataclass(frozen=True)
class JournalOrder:
    client_order_id: str  # the order's key (`venue:<venue order id>` for an order adopted without a client id)
    venue_order_id: str | None
    symbol: str
    side: str
    order_type: str
    quantity: Decimal
    price: Decimal | None
    filled_quantity: Decimal
    status: str


@dataclass(frozen=True)
class JournalFill:
    row_id: int
    trade_id: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_asset: str
    liquidity: str = "taker"


@dataclass
class JournalSnapshot:
    """What the journal says, restricted to what the venue snapshot can be compared with."""

    orders: dict[str, JournalOrder]  # open ones, and any the venue lists as open
    trade_ids: set[str]  # those of the venue's fills that are journaled
    duplicate_fills: list[JournalFill]  # every row of a trade id journaled twice or more, oldest first
    positions: dict[str, Decimal]
    balances: dict[str, Decimal]


@dataclass
class VenueSnapshot:
    positions: dict[str, Decimal] | None  # None: the venue did not answer (unknown, never flat)
    balances: dict[str, Decimal] | None
    open_orders: list[VenueOrder]
    fills: list[VenueFill]  # oldest first
    # How the orders open in the journal and not on the venue ended, by order key (None: the venue forgot it).
    closed_orders: dict[str, VenueOrder | None] = field(default_factory=dict)

    @property
    def unknown(self) -> list[str]:
        """The parts the venue did not answer for."""
        return [part for part in UNKNOWN_PARTS if getattr(self, part) is None]


@dataclass
class Discrepancy:
    kind: Kind
    key: str
    symbol: str | None = None
    journal: str | None = None
    venue: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    policy: str = ""
    outcome: str = ""
    fill: VenueFill | None = None
    order: VenueOrder | None = None
    quantity: Decimal = ZERO  # position_mismatch: venue minus what the journal will hold after its fills
    sort_key: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "key": self.key,
            "symbol": self.symbol,
            "journal": self.journal,
            "venue": self.venue,
            "policy": self.policy,
            "outcome": self.outcome,
            "detail": self.detail,
        }


@dataclass
class _Sides:
    """The two snapshots being compared, and what more than one check derives from them."""

    journal: JournalSnapshot
    venue: VenueSnapshot
    split: Callable[[str], tuple[str, str]]
    unique_fills: dict[str, VenueFill]  # the venue's fills, once each by trade id
    missing: list[VenueFill]  # those the journal lacks
    journal_dups: dict[str, list[JournalFill]]  # the journal's rows of a trade id journaled twice or more

    @classmethod
    def of(cls, journal: JournalSnapshot, venue: VenueSnapshot, split: Callable[[str], tuple[str, str]]) -> _Sides:
        unique_fills: dict[str, VenueFill] = {}
        for fill in venue.fills:
            unique_fills.setdefault(fill.trade_id, fill)
        journal_dups: dict[str, list[JournalFill]] = {}
        for row in journal.duplicate_fills:
            journal_dups.setdefault(row.trade_id, []).append(row)
        missing = [f for f in unique_fills.values() if f.trade_id not in journal.trade_ids]
        return cls(journal, venue, split, unique_fills, missing, journal_dups)

    @functools.cached_property
    def expected(self) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
        """The journal's positions and balances as they will be once the missing fills are adopted and the
        duplicate rows removed: what the venue's are compared with."""
        positions = dict(self.journal.positions)
        balances = dict(self.journal.balances)
        for fill in self.missing:
            positions[fill.symbol] = positions.get(fill.symbol, ZERO) + fill.side.sign * fill.quantity
            for asset, change in balance_changes(fill, self.split).items():
                balances[asset] = balances.get(asset, ZERO) + change
        # A duplicate row was journaled like any fill, with its position and balance changes: both lose them again.
        for rows in self.journal_dups.values():
            for extra in rows[1:]:
                sign = Side(extra.side).sign
                positions[extra.symbol] = positions.get(extra.symbol, ZERO) - sign * extra.quantity
                for asset, change in balance_changes(extra, self.split).items():
                    balances[asset] = balances.get(asset, ZERO) - change
        return positions, balances


def _venue_duplicate_fills(sides: _Sides) -> list[Discrepancy]:
    """A trade id the venue lists twice is a duplicate only until it is journaled once."""
    found = []
    for trade_id, count in Counter(f.trade_id for f in sides.venue.fills).items():
        if count > 1 and trade_id not in sides.journal.trade_ids:
            found.append(
                Discrepancy(
                    Kind.DUPLICATE_FILL,
                    trade_id,
                    sides.unique_fills[trade_id].symbol,
                    journal="0",
                    venue=str(count),
                    detail={"source": "venue", "times": count},
                    sort_key=(trade_id,),
                )
            )
    return found


def _journal_duplicate_fills(sides: _Sides) -> list[Discrepancy]:
    """A trade id journaled more than once: every row but the first is extra."""
    return [
        Discrepancy(
            Kind.DUPLICATE_FILL,
            trade_id,
            rows[0].symbol,
            journal=str(len(rows)),
            venue="1" if trade_id in sides.unique_fills else None,
            detail={"source": "journal", "times": len(rows), "extra_rows": [r.row_id for r in rows[1:]]},
            sort_key=(trade_id,),
        )
        for trade_id, rows in sides.journal_dups.items()
    ]


def _missing_fills(sides: _Sides) -> list[Discrepancy]:
    """A venue fill the journal lacks."""
    return [
        Discrepancy(
            Kind.MISSING_FILL,
            fill.trade_id,
            fill.symbol,
            journal=None,
            venue=f"{fill.side.value} {fill.quantity} @ {fill.price}",
            detail={"client_order_id": fill.client_order_id, "executed_at": fill.executed_at.isoformat()},
            fill=fill,
            sort_key=(fill.executed_at, fill.trade_id),
        )
        for fill in sides.missing
    ]


def _venue_open_orders(sides: _Sides) -> list[Discrepancy]:
    """An order open on the venue that the bot never placed, or whose status or filled quantity differ. Orders by
    key: the client order id, or the venue order id of one placed without a client id."""
    found = []
    for key, order in {o.key: o for o in sides.venue.open_orders}.items():
        mine = sides.journal.orders.get(key)
        if mine is None:  # never placed by the bot: known to the venue by its venue order id only
            found.append(
                Discrepancy(
                    Kind.UNKNOWN_ORDER,
                    order.venue_order_id,
                    order.symbol,
                    venue=f"{order.status.value} {order.side.value} {order.quantity} @ {order.price}",
                    detail={"client_order_id": order.client_order_id},
                    order=order,
                    sort_key=(order.venue_order_id,),
                )
            )
        elif mine.status != order.status.value or mine.filled_quantity != order.filled_quantity:
            found.append(
                Discrepancy(
                    Kind.ORDER_STATE_MISMATCH,
                    key,
                    order.symbol,
                    journal=f"{mine.status} {mine.filled_quantity}",
                    venue=f"{order.status.value} {order.filled_quantity}",
                    order=order,
                    sort_key=(key,),
                )
            )
    return found


def _ended_from_fills(key: str, mine: JournalOrder, filled_by_order: dict[str, Decimal]) -> VenueOrder:
    """How an order the venue forgot ended: what its fills say (filled in full, else canceled)."""
    filled = max(mine.filled_quantity, filled_by_order.get(key, ZERO))
    return VenueOrder(
        client_order_id="" if key.startswith(VENUE_ID_PREFIX) else key,
        venue_order_id=mine.venue_order_id or "",
        symbol=mine.symbol,
        side=Side(mine.side),
        order_type=OrderType(mine.order_type),
        quantity=mine.quantity,
        price=mine.price,
        filled_quantity=filled,
        status=OrderStatus.FILLED if filled >= mine.quantity else OrderStatus.CANCELED,
    )


def _gone_orders(sides: _Sides) -> list[Discrepancy]:
    """An order open in the journal that the venue no longer lists open: filled (a state mismatch), or vanished."""
    venue_open = {o.key for o in sides.venue.open_orders}
    filled_by_order: dict[str, Decimal] = {}
    for fill in sides.unique_fills.values():
        if fill.client_order_id:
            filled_by_order[fill.client_order_id] = filled_by_order.get(fill.client_order_id, ZERO) + fill.quantity
    found = []
    for key, mine in sides.journal.orders.items():
        if key in venue_open or not OrderStatus(mine.status).is_open:
            continue
        final = sides.venue.closed_orders.get(key)
        if final is not None and final.status.is_open:
            continue  # it is open after all (listed in between): nothing to say
        source = "venue" if final is not None else "fills"
        order = final if final is not None else _ended_from_fills(key, mine, filled_by_order)
        kind = Kind.ORDER_STATE_MISMATCH if order.status is OrderStatus.FILLED else Kind.VANISHED_ORDER
        found.append(
            Discrepancy(
                kind,
                key,
                mine.symbol,
                journal=f"{mine.status} {mine.filled_quantity}",
                venue=f"{order.status.value} {order.filled_quantity}"
                if kind is Kind.ORDER_STATE_MISMATCH
                else "not open",
                detail={"final_state": f"{order.status.value} {order.filled_quantity}", "source": source},
                order=order,
                sort_key=(key,),
            )
        )
    return found


def _unexplained(
    kind: Kind, venue: dict[str, Decimal], expected: dict[str, Decimal], journal: dict[str, Decimal]
) -> list[Discrepancy]:
    """Each symbol (positions) or asset (balances) whose amount on the venue differs from what the journal will
    hold after the fills found: `journal` is what it holds now, `expected` what it will."""
    position = kind is Kind.POSITION_MISMATCH
    found = []
    for key in sorted(set(venue) | set(expected)):
        theirs = venue.get(key, ZERO)
        ours = expected.get(key, ZERO)
        if theirs != ours:
            found.append(
                Discrepancy(
                    kind,
                    key,
                    key if position else None,
                    journal=str(journal.get(key, ZERO)),
                    venue=str(theirs),
                    detail={"expected_after_fills": str(ours), "difference": str(theirs - ours)},
                    quantity=theirs - ours if position else ZERO,
                    sort_key=(key,),
                )
            )
    return found


def _positions(sides: _Sides) -> list[Discrepancy]:
    """A position that the fills found do not explain; none compared when the venue did not answer for them."""
    if sides.venue.positions is None:
        return []
    expected, _ = sides.expected
    return _unexplained(Kind.POSITION_MISMATCH, sides.venue.positions, expected, sides.journal.positions)


def _balances(sides: _Sides) -> list[Discrepancy]:
    """A balance that the fills found do not explain; none compared when the venue did not answer for them, and an
    empty journal takes the venue's balances as its baseline, silently."""
    if not sides.journal.balances or sides.venue.balances is None:
        return []
    _, expected = sides.expected
    return _unexplained(Kind.BALANCE_MISMATCH, sides.venue.balances, expected, sides.journal.balances)


# What classify compares, one check each; each returns its discrepancies (classify orders them).
CHECKS: tuple[Callable[[_Sides], list[Discrepancy]], ...] = (
    _venue_duplicate_fills,
    _journal_duplicate_fills,
    _missing_fills,
    _venue_open_orders,
    _gone_orders,
    _positions,
    _balances,
)


def classify(
    journal: JournalSnapshot, venue: VenueSnapshot, split: Callable[[str], tuple[str, str]] = split_symbol
) -> list[Discrepancy]:
    """Every difference between the two snapshots, in a deterministic order (class, then time or key). Positions or
    balances the venue did not answer for (None) are not compared at all."""
    sides = _Sides.of(journal, venue, split)
    found = [d for check in CHECKS for d in check(sides)]
    found.sort(key=lambda d: (KIND_ORDER[d.kind], d.sort_key))
    return found


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


class Reconciler:
    """Runs reconciliations one at a time; each is stored with its discrepancies and exported as metrics."""

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
            return await self._run(trigger)

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
        run_id = await self.journal.call(
            self.store.record_reconciliation, trigger.value, result.value, started, finished, items, error
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
        await asyncio.sleep(self.confirm_delay)
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
        positions = await self.journal.call(self.journal.positions)
        mismatch: dict[str, Decimal] = {}
        for symbol in sorted(set(venue_positions) | set(positions)):
            ours = positions[symbol].quantity if symbol in positions else ZERO
            mismatch[symbol] = venue_positions.get(symbol, ZERO) - ours
        return mismatch

    async def _look(self) -> _Pass:
        """Settle what is in flight, then snapshot the venue (at once after the settling), the journal and how the
        orders the venue no longer lists ended; classify."""
        await self.hooks.settle()
        venue = await self._venue_snapshot(utcnow())
        journal = await self.journal.call(self._journal_snapshot, venue)
        venue.closed_orders = await self._closed_orders(journal, venue)
        return _Pass(journal, venue, classify(journal, venue, self.split))

    async def _venue_snapshot(self, now: datetime) -> VenueSnapshot:
        """Positions, balances, open orders and fills with no fill arriving in between (else look again). Positions
        or balances the venue does not answer for are None (unknown); open orders and fills it must answer."""
        since = now - timedelta(seconds=self.fills_lookback) if self.fills_lookback > 0 else None
        for _ in range(SNAPSHOT_ATTEMPTS):
            before = await self.broker.recent_fills(since)
            positions = await self._ask("positions", self.broker.positions)
            balances = await self._ask("balances", self.broker.balances)
            open_orders = await self.broker.open_orders()
            after = await self.broker.recent_fills(since)
            if [f.trade_id for f in before] == [f.trade_id for f in after]:
                return VenueSnapshot(positions, balances, open_orders, after)
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
            found[key] = await self.broker.order_status(client_order_id, venue_order_id=mine.venue_order_id or "")
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
                d.outcome = await self._resolve_one(d, run)
            except Exception as exc:
                log.warning("reconciliation could not %s %s %s: %s", d.policy, d.kind.value, d.key, exc)
                d.outcome = "failed"
                d.detail = {**d.detail, "error": str(exc)[:200]}
        if run.fills_removed:
            await self.hooks.fills_changed(sorted(run.fills_removed))
        if run.adopt_balances and venue.balances is not None:
            await self.journal.call(self.journal.set_balances, dict(venue.balances))
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
