"""The ledger's retention: old notifications, closed episodes and expired console sessions deleted in short, bounded
transactions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select

from trading_ops.db.states import CLOSED_STATES
from trading_ops.reconciler.ledger.db import APPROVALS, CONSOLE_SESSIONS, ESC, A, E, LedgerDB, N, S

# What retention deletes, by table (tradingops_ledger_pruned_rows_total{table}).
PRUNED_TABLES = ("notifications", "episodes", "attempts", "steps", "console_sessions")


class Pruning:
    """Owns deleting what retention no longer keeps; an open episode is never touched, however old."""

    def __init__(self, db: LedgerDB) -> None:
        self.db = db

    def prune_notifications(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` of the notifications received before `cutoff` (one short transaction)."""
        oldest = select(N.c.id).where(N.c.received_at < cutoff).order_by(N.c.received_at).limit(limit)
        with self.db.tx() as conn:
            return int(conn.execute(delete(N).where(N.c.id.in_(oldest))).rowcount)

    def prune_episodes(self, cutoff: datetime, limit: int) -> dict[str, int]:
        """Delete up to `limit` episodes closed before `cutoff`, with their attempts and steps (one short
        transaction); rows deleted by table. Open episodes are never touched, however old."""
        with self.db.tx() as conn:
            ids = list(
                conn.execute(
                    select(E.c.id)
                    .where(E.c.state.in_(CLOSED_STATES), E.c.closed_at < cutoff)
                    .order_by(E.c.closed_at)
                    .limit(limit)
                ).scalars()
            )
            if not ids:
                return {"episodes": 0, "attempts": 0, "steps": 0}
            attempt_ids = select(A.c.id).where(A.c.episode_id.in_(ids))
            steps = conn.execute(delete(S).where(S.c.attempt_id.in_(attempt_ids))).rowcount
            attempts = conn.execute(delete(A).where(A.c.episode_id.in_(ids))).rowcount
            conn.execute(delete(ESC).where(ESC.c.episode_id.in_(ids)))  # their pages (SQLite enforces no cascade)
            conn.execute(delete(APPROVALS).where(APPROVALS.c.episode_id.in_(ids)))  # and their approvals
            episodes = conn.execute(delete(E).where(E.c.id.in_(ids), E.c.state.in_(CLOSED_STATES))).rowcount
        return {"episodes": int(episodes), "attempts": int(attempts), "steps": int(steps)}

    def prune_console_sessions(self, now: datetime, limit: int) -> int:
        """Delete up to `limit` of the console sessions expired at `now` (one short transaction)."""
        cs = CONSOLE_SESSIONS
        expired = select(cs.c.id_hash).where(cs.c.expires_at <= now).order_by(cs.c.expires_at).limit(limit)
        with self.db.tx() as conn:
            return int(conn.execute(delete(cs).where(cs.c.id_hash.in_(expired.scalar_subquery()))).rowcount)
