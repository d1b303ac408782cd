"""Classification: every difference between the journal's and the venue's snapshots, as a discrepancy of its class.

Owns what a reconciliation compares and finds: the two snapshots, the discrepancy classes and their order, what a
spot fill does to the balances, and `classify`, a pure function of the two snapshots run as a table of small
checks (one a class or two). Running it against a broker and a journal, and resolving what it finds, is
`trading_ops.bot.reconciliation`'s.
"""

from __future__ import annotations

import enum
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import VENUE_ID_PREFIX, OrderStatus, OrderType, Side, VenueFill, VenueOrder

ZERO = Decimal(0)
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

# The parts of the account a run may not see (tradingbot_reconciliation_unknown's `part`).
UNKNOWN_PARTS = ("positions", "balances")


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
    # The assets whose balances are the bot's alone (Broker.balance_assets), the only ones compared; None: every one.
    balance_assets: frozenset[str] | None = None

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
    empty journal takes the venue's balances as its baseline, silently. Only the bot's own assets where the venue
    snapshot names them (an account shared with other bots)."""
    if not sides.journal.balances or sides.venue.balances is None:
        return []
    _, expected = sides.expected
    venue, journal, own = sides.venue.balances, sides.journal.balances, sides.venue.balance_assets
    if own is not None:  # an account shared with other bots: its quote asset is theirs too, never compared
        venue, expected = _only(venue, own), _only(expected, own)
    return _unexplained(Kind.BALANCE_MISMATCH, venue, expected, journal)


def _only(amounts: dict[str, Decimal], assets: frozenset[str]) -> dict[str, Decimal]:
    return {asset: amount for asset, amount in amounts.items() if asset in assets}


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
