"""The ledger's console sessions: the operator console's logins, shared by every replica and kept over a restart."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from trading_ops.reconciler.ledger.db import CONSOLE_SESSIONS as CS
from trading_ops.reconciler.ledger.db import LedgerDB, later

# Random bytes of a session id and of its CSRF token (each sent as 43 URL-safe characters).
SECRET_BYTES = 32


def id_hash(session_id: str) -> str:
    """What the ledger stores for a session id: its SHA-256 (hex). The id itself is never stored, so a copy of the
    database (a backup, a read-only replica) holds nothing a browser could present."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class StoredSession:
    """A session as the ledger holds it (its id only as `id_hash`)."""

    id_hash: str
    token_name: str
    scope: str
    token_hash: str
    csrf: str
    expires_at: datetime
    # (done|problem, message) of the last POSTs, shown once by the next page.
    flash: list[tuple[str, str]]


def stored(row: Any) -> StoredSession:
    try:
        flash = [(str(kind), str(message)) for kind, message in json.loads(row.flash)]
    except (ValueError, TypeError):
        flash = []
    return StoredSession(row.id_hash, row.token_name, row.scope, row.token_hash, row.csrf, row.expires_at, flash)


class ConsoleSessions:
    """Owns the console's sessions: created at a login (at most `keep` at once, the oldest go), found by the id a
    cookie carries until they expire (absolute, from the login), dropped at a logout, their messages kept for the
    next page; retention deletes the expired ones (Pruning)."""

    def __init__(self, db: LedgerDB) -> None:
        self.db = db

    def create_console_session(
        self, token_name: str, scope: str, token_hash: str, now: datetime, seconds: float, keep: int
    ) -> tuple[str, StoredSession]:
        """A new session for the token, lasting `seconds` from `now`: its id (for the cookie only) and the session.
        A token keeps `keep` sessions at most: its new login ends its own oldest, never another token's."""
        session_id = secrets.token_urlsafe(SECRET_BYTES)
        csrf = secrets.token_urlsafe(SECRET_BYTES)
        session = StoredSession(id_hash(session_id), token_name, scope, token_hash, csrf, later(now, seconds), [])
        with self.db.tx() as conn:
            mine = (CS.c.token_name == token_name, CS.c.token_hash == token_hash)
            live = int(conn.execute(select(func.count()).select_from(CS).where(*mine)).scalar_one())
            if live >= keep:
                oldest = select(CS.c.id_hash).where(*mine).order_by(CS.c.expires_at).limit(live - keep + 1)
                conn.execute(delete(CS).where(CS.c.id_hash.in_(oldest.scalar_subquery())))
            conn.execute(
                insert(CS).values(
                    id_hash=session.id_hash,
                    token_name=token_name,
                    scope=scope,
                    token_hash=token_hash,
                    csrf=session.csrf,
                    created_at=now,
                    expires_at=session.expires_at,
                    flash="[]",
                )
            )
        return session_id, session

    def console_session(self, session_id: str | None, now: datetime) -> StoredSession | None:
        """The live session of the id a cookie carries; None for no id, an unknown one or an expired session (which
        is deleted)."""
        if not session_id:
            return None
        key = id_hash(session_id)
        with self.db.engine.connect() as conn:
            row = conn.execute(select(CS).where(CS.c.id_hash == key)).first()
        if row is None:
            return None
        if row.expires_at <= now:
            with self.db.tx() as conn:
                conn.execute(delete(CS).where(CS.c.id_hash == key, CS.c.expires_at <= now))
            return None
        return stored(row)

    def drop_console_session(self, session_id: str | None) -> bool:
        """End the session of this id at once (logout), for every replica; whether there was one."""
        if not session_id:
            return False
        with self.db.tx() as conn:
            return bool(conn.execute(delete(CS).where(CS.c.id_hash == id_hash(session_id))).rowcount)

    def update_console_flash(self, key: str, shown: int, added: list[tuple[str, str]]) -> None:
        """The session's messages without the first `shown` (a page showed them) and with `added` (a POST's outcome)
        after the others, whatever another request of the session wrote meanwhile."""
        with self.db.tx() as conn:
            current = conn.execute(select(CS).where(CS.c.id_hash == key).with_for_update()).first()
            if current is None:
                return
            kept = stored(current).flash[shown:] + added
            conn.execute(update(CS).where(CS.c.id_hash == key).values(flash=json.dumps(kept)))
