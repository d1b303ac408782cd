"""Approvals: a step marked `approval: required` waits for a person's durable, attributed, expiring decision."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Table, func, insert, select, update

from trading_ops import audit
from trading_ops.db.base import utcnow
from trading_ops.db.models.ledger import Approval, ApprovalDecision, Attempt, Episode
from trading_ops.db.states import APPROVAL_STATUSES, CLOSED_STATES, OPEN_STATES
from trading_ops.reconciler.intake import BAD_TEXT_RE
from trading_ops.reconciler.ledger import Ledger
from trading_ops.reconciler.ledger_reading import BackgroundReading
from trading_ops.reconciler.metrics import APPROVAL_OUTCOMES, PREFIX
from trading_ops.reconciler.outbox import OutboxStore

log = logging.getLogger(__name__)
AP = cast(Table, Approval.__table__)
AD = cast(Table, ApprovalDecision.__table__)
E = cast(Table, Episode.__table__)
A = cast(Table, Attempt.__table__)
PENDING, APPROVED, REJECTED, EXPIRED, EXECUTED, SUPERSEDED = (
    "pending",
    "approved",
    "rejected",
    "expired",
    "executed",
    "superseded",
)
STATUSES = APPROVAL_STATUSES
# What an operator sends (`decision`), and the status it writes.
DECISIONS = {"approve": APPROVED, "reject": REJECTED}
# tradingops_approval_decisions_total{outcome}: every way an approval stops waiting.
OUTCOMES = APPROVAL_OUTCOMES
# Names no person may decide under: the reconciler is the requester, and never approves its own request.
RESERVED_DECIDERS = ("reconciler", "trading-ops", "trading-ops-reconciler", "risk", "unauthenticated")
# The principal of an approval the reconciler asked itself (a playbook step: a venue-direct flatten).
RECONCILER = "reconciler"
# The kinds of decision that widen risk (four eyes: reconciler.approvals says how many others approve each), and
# `step`: any other step a rule asks a person to approve (a venue-direct flatten: one person, never the reconciler).
KINDS = ("ramp_promotion", "live_start", "clear_halt")
STEP = "step"
# The bot commands whose step is a decision of a kind (the rest are `step`).
COMMAND_KINDS = {"ramp_promote": "ramp_promotion", "clear_halt": "clear_halt", "live_start": "live_start"}
SELF_APPROVED = "approved by its requester (allowed by configuration)"
# The kinds asked only through the reconciler with a person's token (its record names the requester): an approval
# of one whose alert names no such record (posted to Alertmanager by hand, a name typed) is refused to every approver.
AUTHENTICATED_REQUESTS = {
    "ramp_promotion": "`trading-ops ramp promote` (POST /api/v1/ramp/{bot}/promote)",
    "clear_halt": "POST /api/v1/requests/clear_halt/{bot}",
    "live_start": "`trading-ops readiness BOT --record` (POST /api/v1/requests/live_start/{bot})",
}
DECIDER_MAX = 255
REASON_MAX = 2000
# The ledger's episode detail of an episode that waits for a decision (see ApprovalGate.gate).
AWAITING = "awaiting approval"
# The outcome of an attempt handed back while one of its steps waits for a decision (carried on from that step).
AWAITING_OUTCOME = "approval"
PENDING_HELP = "Approvals waiting for a person's decision (open episodes only)."
# How a listing shows an approval still `pending` in its row whose episode closed (resolved, say) before anyone
# decided: nothing waits for it any more (deciding it is refused), so it is never listed as pending.
CLOSED_UNDECIDED = "closed"
OLDEST_HELP = "How long the oldest approval still waiting for a decision has waited (0 when none)."


def attribution(name: str | None, token: str | None) -> str:
    """Who decided, as every view shows it (the console's log lines, `reconciler history`, the CLI): the principal, the
    token that authenticated the decision, first; a name typed beside it (`--as`, "by") only as a comment after it,
    quoted (JSON's quoting: whatever it says stays inside its quotes): `desk (as "alice")` cannot pass for alice, nor
    `read (as "bob (token oncall)")` for bob of token oncall. Without a token (a decision of the CLI's old database
    access), the typed name quoted and `(CLI)`."""
    quoted = json.dumps(name or "", ensure_ascii=False)
    if not token:
        return f"{quoted} (CLI)"
    return f"{token} (as {quoted})" if name else token


def was_decided(row: dict[str, Any]) -> bool:
    """Whether a person decided the approval `row`: a principal (its token) or, on an old row, a typed name."""
    return bool(row.get("decided_token") or row.get("decided_by"))


class _DecidedMeanwhile(Exception):
    """Another decision took the approval between the read and the update (the transaction is rolled back)."""


@dataclass(frozen=True)
class Refusal:
    """Why a decision was not taken: the HTTP status that says so (400, 404, 403, 409) and one line."""

    status: int
    message: str


def kind_of(action: str, params: dict[str, Any]) -> str:
    """The kind of decision a step is (ramp_promotion, live_start, clear_halt), or `step`."""
    if action == "bot":
        return COMMAND_KINDS.get(str(params.get("command", "")), STEP)
    return "live_start" if action == "live_start" else STEP


def required_for(approvals: Any, kind: str) -> int:
    """How many people other than the requester approve `kind` (reconciler.approvals); 1 for any other step."""
    return int(getattr(approvals, kind)) if kind in KINDS else 1


def requester_of(row: dict[str, Any]) -> str:
    """The principal that asked for the approval: an authenticated person's request, else the reconciler."""
    return str(row.get("requester") or RECONCILER)


def approvers_of(row: dict[str, Any]) -> list[str]:
    """The principals that approved it, in the order they did."""
    return [d["principal"] for d in row.get("decision_list") or [] if d["decision"] == "approve"]


def self_approved(row: dict[str, Any]) -> bool:
    """Approved by its requester alone (a kind configured with 0 other approvers: a one-person team)."""
    return row["status"] in (APPROVED, EXECUTED) and approvers_of(row) == [requester_of(row)]


def approval_json(row: dict[str, Any]) -> dict[str, Any]:
    """An approval as the API and `reconciler approvals --json` show it: `requested_by` the requester's principal,
    `approvers` the principals that approved it (what the bot's signed decision names), each decision in `decisions`."""

    def ts(v: datetime | None) -> str | None:
        return v.isoformat() if v is not None else None

    return {
        "id": row["id"],
        "episode_id": row["episode_id"],
        "episode_state": row.get("episode_state"),
        "alertname": row.get("alertname"),
        "rule": row["rule"],
        "target": row["target"],
        "step": row["position"] + 1,
        "action": row["action"],
        "step_name": row["step_name"],
        "arguments": row["arguments"],
        "playbook_version": row["playbook_version"],
        "status": row["status"],
        "on_timeout": row["on_timeout"],
        "kind": row.get("kind") or STEP,
        "required": row.get("required", 1),
        "requested_by": requester_of(row),
        "requested_by_instance": row["requested_by"],
        "request_id": row.get("request_id"),
        "approvers": approvers_of(row),
        "decisions": [{**d, "decided_at": ts(d["decided_at"])} for d in row.get("decision_list") or []],
        "self_approved": self_approved(row),
        "requested_at": ts(row["requested_at"]),
        "deadline": ts(row["deadline"]),
        "decided_by": row["decided_by"],
        "decided_token": row.get("decided_token"),
        "decided_at": ts(row["decided_at"]),
        "reason": row["reason"],
        "executed_at": ts(row["executed_at"]),
    }


def _others(n: int) -> str:
    return f"{n} other {'person' if n == 1 else 'people'}"


def four_eyes_refusal(row: dict[str, Any], principal: str, decision: str) -> Refusal | None:
    """Why `principal` may not take `decision` on `row` (its decision_list loaded) under four eyes; None when it may.
    The requester never decides its own request (unless its kind is configured with 0 others: then its own approval
    counts); the reconciler and the names of no person never decide; nobody decides twice."""
    approval_id, kind, required = row["id"], row.get("kind") or STEP, int(row.get("required", 1))
    requester = requester_of(row)
    if principal.strip().lower() in RESERVED_DECIDERS:
        return Refusal(403, f"approval {approval_id}: {principal} is not a person: only a person's token decides")
    if kind in AUTHENTICATED_REQUESTS and row.get("requester") is None:
        return Refusal(
            403,
            f"approval {approval_id}: the {kind} has no authenticated requester (asked by an alert, not through the "
            f"reconciler): ask again with {AUTHENTICATED_REQUESTS[kind]} and your own token",
        )
    if principal == requester and not (decision == "approve" and required == 0 and kind in KINDS):
        return Refusal(
            403,
            f"approval {approval_id}: four eyes: {principal} asked for it and never decides its own request "
            f"({kind} needs {_others(max(required, 1))})",
        )
    earlier = next((d for d in row.get("decision_list") or [] if d["principal"] == principal), None)
    if earlier is not None:
        return Refusal(
            403,
            f"approval {approval_id}: four eyes: {principal} decided it already ({earlier['decision']}); "
            f"it needs {_others(required)} apart from the requester",
        )
    return None


def _refusal(row: dict[str, Any], who: str, version: str, now: datetime) -> Refusal | None:
    """Why `who` may not decide the approval `row` (with its episode's state) now, under playbook `version`; None
    when they may."""
    approval_id = row["id"]
    if row["status"] != PENDING:
        by = f" by {attribution(row['decided_by'], row.get('decided_token'))}" if was_decided(row) else ""
        at = f" at {row['decided_at'].isoformat()}" if row["decided_at"] else ""
        return Refusal(409, f"approval {approval_id} is {row['status']}{by}{at}: nothing to decide")
    if row["episode_state"] in CLOSED_STATES or row["episode_state"] not in OPEN_STATES:
        return Refusal(409, f"approval {approval_id}: episode {row['episode_id']} is {row['episode_state']}")
    if row["deadline"] <= now:
        return Refusal(409, f"approval {approval_id} expired at {row['deadline'].isoformat()}")
    if row["playbook_version"] != version:
        return Refusal(
            409,
            f"approval {approval_id} was asked under playbook version {row['playbook_version']}, the "
            f"reconciler now runs {version}: the step may differ; it asks again under the new one",
        )
    return None


class ApprovalStore:
    """The approvals' rows, in the ledger's database. Every change is a conditional UPDATE on the row's status: of
    two replicas (or two operators) acting at once, the second matches nothing, so an approval is decided once and
    used once."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def latest(self, episode_id: int, position: int) -> dict[str, Any] | None:
        """The newest approval of this step of the episode."""
        with self.ledger.engine.connect() as conn:
            row = (
                conn.execute(
                    select(AP)
                    .where(AP.c.episode_id == episode_id, AP.c.position == position)
                    .order_by(AP.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            found = dict(row) if row else None
            if found is not None:
                self._attach_decisions(conn, [found])
        return found

    def get(self, approval_id: int) -> dict[str, Any] | None:
        rows = shown(self._select(AP.c.id == approval_id, limit=1))
        return rows[0] if rows else None

    def recent(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first; with their episode's alert name and state. `pending`: those of open episodes only (see
        CLOSED_UNDECIDED)."""
        if status == PENDING:
            return shown(self._select((AP.c.status == PENDING) & E.c.state.in_(OPEN_STATES), limit=limit))
        return shown(self._select(AP.c.status == status if status else None, limit=limit))

    def pending_count(self) -> int:
        """How many wait for a decision, of open episodes (the operator console's navigation shows it)."""
        with self.ledger.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(AP.join(E, E.c.id == AP.c.episode_id))
                    .where(AP.c.status == PENDING, E.c.state.in_(OPEN_STATES))
                ).scalar_one()
            )

    def of_episode(self, episode_id: int, limit: int = 100) -> list[dict[str, Any]]:
        """An episode's approvals, newest first (the operator console's episode page)."""
        return shown(self._select(AP.c.episode_id == episode_id, limit=limit))

    def _select(self, where: Any, limit: int) -> list[dict[str, Any]]:
        stmt = (
            select(AP, E.c.state.label("episode_state"), E.c.alertname.label("alertname"))
            .join(E, E.c.id == AP.c.episode_id)
            .order_by(AP.c.id.desc())
            .limit(limit)
        )
        if where is not None:
            stmt = stmt.where(where)
        with self.ledger.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
            self._attach_decisions(conn, rows)
        return rows

    @staticmethod
    def _attach_decisions(conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Each row's approvers' decisions (decision_list), in the order they were taken."""
        ids = [r["id"] for r in rows]
        found: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        if ids:
            columns = (AD.c.approval_id, AD.c.principal, AD.c.decision, AD.c.decided_at, AD.c.source, AD.c.comment,
                       AD.c.reason)  # fmt: skip
            for d in conn.execute(select(*columns).where(AD.c.approval_id.in_(ids)).order_by(AD.c.id)).mappings():
                found[d["approval_id"]].append({k: v for k, v in d.items() if k != "approval_id"})
        for r in rows:
            r["decision_list"] = found[r["id"]]

    def request(
        self,
        episode_id: int,
        holder: str,
        attempt_id: int,
        values: dict[str, Any],
        page: Callable[[int], dict[str, Any]],
        why: Callable[[int], str],
        now: datetime,
    ) -> tuple[int | None, str] | None:
        """Ask: a pending approval (`values`: the step it binds, its deadline, who asks), its page (`page(id)`: the
        alert posted to Alertmanager) and the episode parked until the deadline (its attempt handed back, `why(id)`
        its detail), all in one transaction while `holder` still holds the episode: a crash leaves either nothing
        or all of it. Any earlier approval of the episode still standing is superseded. (The approval's id, the
        state written: `waiting`, or `resolved` with no approval when the alert resolved while held); None when the
        claim was lost."""
        free = {"owner": None, "lease_until": None, "updated_at": now}
        with self.ledger.tx() as conn:
            held = conn.execute(
                select(E.c.resolved_at).where(E.c.id == episode_id, E.c.owner == holder).with_for_update()
            ).first()
            if held is None:
                return None
            if held.resolved_at is not None:
                detail = "resolved while claimed; no approval asked"
                conn.execute(
                    update(E).where(E.c.id == episode_id).values(state="resolved", closed_at=now, detail=detail, **free)
                )
                return None, "resolved"
            conn.execute(
                update(AP)
                .where(AP.c.episode_id == episode_id, AP.c.status.in_((PENDING, APPROVED)))
                .values(status=SUPERSEDED, decided_at=now)
            )
            approval_id = int(
                conn.execute(
                    insert(AP)
                    .values(
                        episode_id=episode_id,
                        attempt_id=attempt_id,
                        status=PENDING,
                        requested_at=now,
                        reason="",
                        **values,
                    )
                    .returning(AP.c.id)
                ).scalar_one()
            )
            OutboxStore.owe(conn, episode_id, page(approval_id), now)
            state = self._park(
                conn, episode_id, holder, attempt_id, approval_id, values["deadline"], why(approval_id), now
            )
            if state is None:
                raise RuntimeError(f"episode {episode_id}: held a moment ago, not parked")  # rolled back
        return approval_id, state

    def decide(
        self,
        approval_id: int,
        decision: str,
        principal: str,
        reason: str,
        version: str,
        now: datetime,
        *,
        source: str = "",
        comment: str = "",
    ) -> dict[str, Any] | Refusal:
        """Record the decision (approve or reject) of `principal` (the authenticated token's name, or the console
        session's: never a typed name, which goes in `comment`), from `source` (its address), with an audit entry in
        the same transaction; wake the episode once it is decided: the row as it is now, or why not.

        Four eyes: the approval is approved once `required` principals other than its requester approved it (the
        requester's own approval counts only for a kind configured with 0: SELF_APPROVED); one rejection by anyone
        but the requester rejects it. Refused: text no database stores (400); no such approval (404); the requester
        deciding its own request, a principal deciding twice, the reconciler (403); already decided, expired,
        superseded, its episode closed, or the playbook changed since it was asked (409)."""
        if BAD_TEXT_RE.search(principal) or BAD_TEXT_RE.search(reason) or BAD_TEXT_RE.search(comment):
            # PostgreSQL refuses a NUL in text and psycopg a lone surrogate: the UPDATE would fail (a 500).
            return Refusal(
                400, f"approval {approval_id}: the name and the reason must be text without NUL or lone surrogates"
            )
        comment = " ".join(comment.split())[:DECIDER_MAX]
        try:
            with self.ledger.tx() as conn:
                return self._decide_on(conn, approval_id, decision, principal, reason, version, now, source, comment)
        except _DecidedMeanwhile:
            return Refusal(409, f"approval {approval_id} was decided meanwhile; look again")

    def _decide_on(
        self,
        conn: Connection,
        approval_id: int,
        decision: str,
        principal: str,
        reason: str,
        version: str,
        now: datetime,
        source: str,
        comment: str,
    ) -> dict[str, Any] | Refusal:
        """decide's transaction (see decide)."""
        found = conn.execute(select(AP).where(AP.c.id == approval_id)).mappings().first()
        if found is None:
            return Refusal(404, f"no approval {approval_id}")
        # The episode's row locked first (PostgreSQL): a run parking it (ApprovalStore.park) either finishes
        # before this reads its state, or waits for this decision and then sees it. No wake-up is lost between.
        state = conn.execute(select(E.c.state).where(E.c.id == found["episode_id"]).with_for_update()).scalar()
        # Read again under the lock: a decision taken meanwhile (another replica, another person) is seen whole.
        found = conn.execute(select(AP).where(AP.c.id == approval_id)).mappings().one()
        row: dict[str, Any] = {**dict(found), "episode_state": state}
        self._attach_decisions(conn, [row])
        refusal = _refusal(row, principal, version, now) or four_eyes_refusal(row, principal, decision)
        if refusal is not None:
            return refusal
        before = {"status": row["status"], "approvers": approvers_of(row)}
        conn.execute(
            insert(AD).values(
                approval_id=approval_id,
                principal=principal[:DECIDER_MAX],
                decision=decision,
                decided_at=now,
                source=source[:DECIDER_MAX],
                comment=comment,
                reason=reason[:REASON_MAX],
            )
        )
        row["decision_list"].append(
            {
                "principal": principal,
                "decision": decision,
                "decided_at": now,
                "source": source,
                "comment": comment,
                "reason": reason[:REASON_MAX],
            }  # fmt: skip
        )
        approvers = approvers_of(row)
        others = [p for p in approvers if p != requester_of(row)]
        required = int(row.get("required", 1))
        status = PENDING
        if decision == "reject":
            status = REJECTED
        elif len(others) >= required and approvers:
            status = APPROVED
        if status != PENDING:
            took = conn.execute(
                update(AP)
                .where(AP.c.id == approval_id, AP.c.status == PENDING)
                .values(
                    status=status,
                    decided_by=comment or None,
                    decided_token=principal[:DECIDER_MAX],
                    decided_at=now,
                    reason=reason[:REASON_MAX],
                )
            ).rowcount
            if not took:
                raise _DecidedMeanwhile
            row.update(
                status=status, decided_by=comment or None, decided_token=principal, decided_at=now,
                reason=reason[:REASON_MAX],
            )  # fmt: skip
        self_ok = status == APPROVED and self_approved(row)
        note = [SELF_APPROVED] if self_ok else []
        if status == PENDING:
            note.append(f"{len(others)} of {required} other approvers")
        audit.append(
            conn,
            principal=principal,
            source=source or "-",
            action=decision,
            target=row["target"],
            before=before,
            after={"status": status, "approvers": approvers, "required": required, "kind": row.get("kind")},
            decision=f"approval:{approval_id}",
            comment="; ".join([*note, *([f"as {json.dumps(comment)}"] if comment else []), reason]),
            at=now,
        )
        if status != PENDING:
            # Due now: whichever replica polls first carries the episode on (its claim makes it one run).
            conn.execute(
                update(E)
                .where(E.c.id == row["episode_id"], E.c.state == "waiting", E.c.owner.is_(None))
                .values(next_run_at=now, updated_at=now)
            )
        return row

    def park(
        self, episode_id: int, holder: str, attempt_id: int, approval_id: int, until: datetime, why: str, now: datetime
    ) -> str | None:
        """Hand the attempt and the episode back (waiting) until the approval's deadline `until` (a run woken before
        it, the approval still pending), in one transaction that cannot miss a decision (see `_park`)."""
        with self.ledger.tx() as conn:
            return self._park(conn, episode_id, holder, attempt_id, approval_id, until, why, now)

    @staticmethod
    def _park(
        conn: Connection,
        episode_id: int,
        holder: str,
        attempt_id: int,
        approval_id: int,
        until: datetime,
        why: str,
        now: datetime,
    ) -> str | None:
        """The episode is written first (on PostgreSQL a decision's wake-up then waits for this transaction and finds
        it waiting), then, should the approval have been decided already, it is made due at once. An episode whose
        alert resolved while held is closed resolved instead (as Ledger.defer). The state written, or None when
        `holder` no longer held it."""
        held = [E.c.id == episode_id, E.c.owner == holder]
        free = {"owner": None, "lease_until": None, "updated_at": now}
        conn.execute(
            update(A).where(A.c.id == attempt_id).values(outcome=AWAITING_OUTCOME, detail=why, finished_at=now)
        )
        parked = update(E).where(*held, E.c.resolved_at.is_(None))
        if conn.execute(parked.values(state="waiting", next_run_at=until, detail=why, **free)).rowcount:
            status = conn.execute(select(AP.c.status).where(AP.c.id == approval_id)).scalar()
            if status != PENDING:
                conn.execute(update(E).where(E.c.id == episode_id, E.c.owner.is_(None)).values(next_run_at=now))
            return "waiting"
        closed = update(E).where(*held).values(state="resolved", closed_at=now, detail=f"resolved: {why}", **free)
        return "resolved" if conn.execute(closed).rowcount else None

    def expire(self, approval_id: int, now: datetime) -> bool:
        """Nobody decided before the deadline: expired (True when this call did it)."""
        with self.ledger.tx() as conn:
            return bool(
                conn.execute(
                    update(AP)
                    .where(AP.c.id == approval_id, AP.c.status == PENDING, AP.c.deadline <= now)
                    .values(status=EXPIRED, decided_at=now, decided_by=None)
                ).rowcount
            )

    def use(self, approval_id: int, now: datetime) -> dict[str, Any] | None:
        """The approved step is about to run: the approval is spent. The row as it was decided, or None when it was
        no longer approved (spent or superseded meanwhile)."""
        with self.ledger.tx() as conn:
            took = conn.execute(
                update(AP)
                .where(AP.c.id == approval_id, AP.c.status == APPROVED)
                .values(status=EXECUTED, executed_at=now)
            ).rowcount
            if not took:
                return None
            row = conn.execute(select(AP).where(AP.c.id == approval_id)).mappings().one()
            used: dict[str, Any] = {**dict(row), "status": APPROVED}
            self._attach_decisions(conn, [used])
        # Who decided, as a signed decision names it: the approvers' principals and the requester's.
        used.update(approvers=approvers_of(used), requester_principal=requester_of(used))
        return used

    def supersede(self, approval_id: int, now: datetime) -> None:
        """The playbook changed since the approval was asked: it no longer stands (a new one is asked)."""
        with self.ledger.tx() as conn:
            conn.execute(
                update(AP)
                .where(AP.c.id == approval_id, AP.c.status.in_((PENDING, APPROVED)))
                .values(status=SUPERSEDED, decided_at=now)
            )

    def stats(self) -> tuple[int, datetime | None]:
        """Approvals waiting for a decision (of open episodes), and when the oldest of them was asked."""
        with self.ledger.engine.connect() as conn:
            count, oldest = conn.execute(
                select(func.count(), func.min(AP.c.requested_at))
                .select_from(AP.join(E, E.c.id == AP.c.episode_id))
                .where(AP.c.status == PENDING, E.c.state.in_(OPEN_STATES))
            ).one()
        return int(count), oldest


class ApprovalCollector(Collector):
    """tradingops_approvals_pending and tradingops_approval_oldest_pending_seconds, read from the ledger in the
    background (trading_ops.reconciler.ledger_reading: a scrape never waits on the database; every replica exports
    the same shared approvals)."""

    def __init__(
        self, stats: BackgroundReading[tuple[int, datetime | None]], now: Callable[[], datetime] = utcnow
    ) -> None:
        self.stats = stats
        self.now = now

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{PREFIX}_approvals_pending", PENDING_HELP)
        yield GaugeMetricFamily(f"{PREFIX}_approval_oldest_pending_seconds", OLDEST_HELP)

    def collect(self) -> Iterator[Metric]:
        stats = self.stats.latest()
        if stats is None:
            return  # not read yet, or the database has not answered for a while
        count, oldest = stats
        yield GaugeMetricFamily(f"{PREFIX}_approvals_pending", PENDING_HELP, value=count)
        age = 0.0 if oldest is None else max(0.0, (self.now() - oldest).total_seconds())
        yield GaugeMetricFamily(f"{PREFIX}_approval_oldest_pending_seconds", OLDEST_HELP, value=age)


def shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as listings show them: an approval still `pending` whose episode closed is CLOSED_UNDECIDED."""
    for row in rows:
        if row["status"] == PENDING and row["episode_state"] not in OPEN_STATES:
            row["status"] = CLOSED_UNDECIDED
    return rows
