"""The ledger's side of noticing that it went back in time: which of a replica's recent writes are gone, and holding an
episode back from every run once they are (a failover to a standby that had not received the last commits)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, select, update

from trading_ops.reconciler.ledger.db import ESC, A, E, LedgerDB, S
from trading_ops.reconciler.ledger.runs import UNKNOWN
from trading_ops.reconciler.processes import owner_is_dead

# What a replica remembers having written (Written.kind): a claim on an episode, an attempt, a step's row (written
# before it acts), a step's outcome, a page owed (an outbox row).
CLAIM, ATTEMPT, STEP, OUTCOME, PAGE = "claim", "attempt", "step", "outcome", "page"
KINDS = (CLAIM, ATTEMPT, STEP, OUTCOME, PAGE)
ESCALATING = "escalating"
# How long a replica remembers a write, and how many writes at most. A standby behind by more than this when it is
# promoted loses older writes unnoticed: asynchronous replication's lag is well under a second when the standby keeps
# up, and pg_stat_replication's replay_lag says how far behind it is.
REMEMBERED_SECONDS = 600.0
REMEMBERED_MAX = 20_000


@dataclass(frozen=True)
class Written:
    """One write a replica's commit acknowledged: its kind, the episode it belongs to, the row's id (the episode's for
    a claim), the row it hangs from (a step's attempt) and what it said (a step's name, its outcome, a page's alert),
    enough to tell the row from another that took its id since (a sequence is WAL-logged ahead, and a standby that
    missed the log hands the same ids out again)."""

    kind: str
    episode_id: int
    row_id: int
    what: str
    parent: int = 0
    # A claim's time as the episode's row says it (updated_at): a row as it was before the claim is older.
    at: datetime | None = None

    def __str__(self) -> str:
        if self.kind == CLAIM:
            return f"the claim on episode {self.episode_id}"
        if self.kind == ATTEMPT:
            return f"{self.what} (id {self.row_id}) of episode {self.episode_id}"
        if self.kind == STEP:
            return f"step {self.row_id} ({self.what}) of episode {self.episode_id}"
        if self.kind == OUTCOME:
            return f"the outcome {self.what} of step {self.row_id} of episode {self.episode_id}"
        return f"page {self.row_id} ({self.what}) of episode {self.episode_id}"


class RecentWrites:
    """What this replica wrote to the ledger lately (REMEMBERED_SECONDS, REMEMBERED_MAX at most), in memory: checked
    again once the ledger answers after being away, as the only record of them outside the database."""

    def __init__(self, seconds: float = REMEMBERED_SECONDS, limit: int = REMEMBERED_MAX) -> None:
        self.seconds = seconds
        self.writes: deque[tuple[float, Written]] = deque(maxlen=limit)

    def remember(self, written: Written) -> None:
        self.writes.append((time.monotonic(), written))

    def recent(self) -> list[Written]:
        """The writes still remembered (older ones are forgotten now)."""
        oldest = time.monotonic() - self.seconds
        while self.writes and self.writes[0][0] < oldest:
            self.writes.popleft()
        return [w for _, w in self.writes]

    def forget(self, writes: Iterable[Written]) -> None:
        """Writes reported gone: not reported again."""
        gone = set(writes)
        kept = [(at, w) for at, w in self.writes if w not in gone]
        self.writes.clear()
        self.writes.extend(kept)


class Rollbacks:
    """Owns the ledger's reads and writes of a rollback: which of the writes a replica remembers are gone, and an
    affected episode held back (escalating) in the transaction that owes its page."""

    def __init__(self, db: LedgerDB) -> None:
        self.db = db

    def missing(self, writes: Sequence[Written]) -> list[Written]:
        """The writes that are not in the ledger (as written) any more. A claim is gone when its episode is, or when
        the episode's row is older than the claim (the row as it was before it); every write since, the run's own
        hand-back or another replica's takeover, is newer. The rest is immutable once written: an attempt, a step's
        row and a finished outcome, a page."""
        ids: dict[str, set[int]] = {kind: set() for kind in KINDS}
        for w in writes:
            ids[w.kind].add(w.row_id)
        with self.db.engine.connect() as conn:
            episodes = {r.id: r for r in conn.execute(select(E.c.id, E.c.updated_at).where(E.c.id.in_(ids[CLAIM])))}
            attempts = {
                r.id: r.episode_id for r in conn.execute(select(A.c.id, A.c.episode_id).where(A.c.id.in_(ids[ATTEMPT])))
            }
            step_ids = ids[STEP] | ids[OUTCOME]
            steps = {
                r.id: r for r in conn.execute(select(S.c.id, S.c.attempt_id, S.c.outcome).where(S.c.id.in_(step_ids)))
            }
            pages = {
                r.id: r.episode_id
                for r in conn.execute(select(ESC.c.id, ESC.c.episode_id).where(ESC.c.id.in_(ids[PAGE])))
            }
        gone = []
        for w in writes:
            if w.kind == CLAIM:
                row = episodes.get(w.row_id)
                lost = row is None or (w.at is not None and row.updated_at < w.at)
            elif w.kind == ATTEMPT:
                lost = attempts.get(w.row_id) != w.episode_id
            elif w.kind == PAGE:
                lost = pages.get(w.row_id) != w.episode_id
            else:
                step = steps.get(w.row_id)
                lost = step is None or step.attempt_id != w.parent or (w.kind == OUTCOME and step.outcome != w.what)
            if lost:
                gone.append(w)
        return gone

    @staticmethod
    def hold_back(conn: Connection, episode_id: int, owner: str, detail: str, now: datetime) -> bool | None:
        """In the caller's transaction (which owes the page): the episode is `escalating`, claimed by nobody and due
        never, its steps still `running` are `unknown` (they may have acted) and so are their attempts, so that no run
        acts on it again until a person has looked. An episode another live replica holds now (it claimed the episode
        as the ledger showed it after the rollback) is left to that run, whose writes it may not lose: False (a
        previous life of this replica, provably dead, holds nothing). None: the episode itself is gone."""
        row = conn.execute(select(E.c.owner, E.c.lease_until).where(E.c.id == episode_id)).first()
        if row is None:
            return None
        if (
            row.owner not in (None, owner)
            and row.lease_until is not None
            and row.lease_until >= now
            and not owner_is_dead(row.owner)
        ):
            return False
        attempt_ids = select(A.c.id).where(A.c.episode_id == episode_id).scalar_subquery()
        conn.execute(
            update(S)
            .where(and_(S.c.attempt_id.in_(attempt_ids), S.c.outcome == "running"))
            .values(outcome=UNKNOWN, finished_at=now)
        )
        conn.execute(
            update(A)
            .where(A.c.episode_id == episode_id, A.c.outcome == "running")
            .values(outcome=UNKNOWN, finished_at=now, detail=detail[:1000])
        )
        conn.execute(
            update(E)
            .where(E.c.id == episode_id)
            .values(state=ESCALATING, owner=None, lease_until=None, next_run_at=None, detail=detail, updated_at=now)
        )
        return True
