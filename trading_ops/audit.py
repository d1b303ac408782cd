"""The audit chain: every decision as one append-only entry in the ledger, hash-chained so an edit or a deletion shows.

An entry holds who decided (the authenticated principal: a named token, a console session's token, the reconciler,
a bot), from where (the source address), when, what it did to what (action, target), the state before and after
(canonical JSON), the decision it answered (e.g. ``approval:12``) and a comment (a typed name, a reason: never the
principal). Its ``hash`` is sha256 over the previous entry's hash and the canonical JSON of its own fields; the first
entry follows ``GENESIS``. The head row (``audit_head``) holds the newest entry's number and hash: every appender
locks it first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write lock, taken at ``BEGIN IMMEDIATE``), so two
reconciler replicas appending at once queue and never fork the chain (the entry's number is also its primary key),
and a deleted last entry shows against it.

``append`` is what every decision calls, inside the transaction that makes the change when it has one (pass its
Connection: the entry and the change commit together or not at all), else with an Engine (its own transaction).
``verify`` walks the whole chain and names the first entry that was edited or deleted.

What the chain does not do: whoever can rewrite every later entry and the head (the database's owner) can forge a
consistent chain. Keep the head's hash that ``trading-ops audit verify`` prints somewhere else (a log, a backup's
notes) to anchor it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from trading_ops.db.base import utcnow
from trading_ops.db.models.audit import Audit, AuditHead

AUDIT = cast(Table, Audit.__table__)
HEAD = cast(Table, AuditHead.__table__)
GENESIS = "0" * 64
HEAD_ID = 1
# Column bounds: longer text is cut (a principal or a target is a name; the comment a sentence or two).
NAME_MAX = 255
ACTION_MAX = 64
COMMENT_MAX = 2000
# An append that lost a race for an entry's number (a head row created by two appenders at once) tries again.
APPEND_TRIES = 5
# How many rows verify reads per round trip.
VERIFY_BATCH = 5000


# One encoder for every entry (json.dumps with options builds one per call: a tenth of verify's time).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical(value: Any) -> str:
    """JSON with sorted keys and no spaces (one text for one value, whichever process writes it)."""
    return _CANONICAL.encode(value)


def _at(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """sha256 (hex) over the previous entry's hash and the canonical JSON of `fields` (seq, at, principal, source,
    action, target, before, after, decision, comment; before and after as their stored JSON text)."""
    body = {**fields, "at": _at(fields["at"])}
    return hashlib.sha256((prev_hash + canonical(body)).encode("utf-8", "surrogatepass")).hexdigest()


HASHED = ("seq", "at", "principal", "source", "action", "target", "before", "after", "decision", "comment")


@dataclass(frozen=True)
class Entry:
    seq: int
    at: datetime
    principal: str
    source: str
    action: str
    target: str
    before: Any
    after: Any
    decision: str | None
    comment: str
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "principal": self.principal,
            "source": self.source,
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
            "decision": self.decision,
            "comment": self.comment,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    def line(self) -> str:
        """One line, as `trading-ops audit` and the console list it."""
        decision = f" ({self.decision})" if self.decision else ""
        comment = f" - {json.dumps(self.comment, ensure_ascii=False)}" if self.comment else ""
        return (
            f"{self.seq}  {self.at:%Y-%m-%d %H:%M:%S} UTC  {self.principal} from {self.source}  "
            f"{self.action} {self.target}{decision}: {_change(self.before, self.after)}{comment}"
        )


def _change(before: Any, after: Any) -> str:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        changed = [k for k in keys if before.get(k) != after.get(k)]
        if changed:
            return ", ".join(f"{k} {_short(before.get(k))} -> {_short(after.get(k))}" for k in changed)
    return f"{_short(before)} -> {_short(after)}"


def _short(value: Any) -> str:
    text = canonical(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _entry(row: Any) -> Entry:
    def load(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text

    return Entry(
        row.seq,
        row.at,
        row.principal,
        row.source,
        row.action,
        row.target,
        load(row.before),
        load(row.after),
        row.decision,
        row.comment,
        row.prev_hash,
        row.hash,
    )


def _cut(text: str, limit: int) -> str:
    return " ".join(str(text).split())[:limit]


def _locked_head(conn: Connection) -> tuple[int, str]:
    """The head (newest seq, its hash), locked for this transaction; created (from the chain's last entry) when a
    database made without the migration (metadata.create_all) has none."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        row = conn.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == HEAD_ID).with_for_update()).first()
    else:
        # SQLite: take the write lock now (an UPDATE that changes nothing), unless the caller's BEGIN IMMEDIATE did.
        conn.execute(update(HEAD).where(HEAD.c.id == HEAD_ID).values(seq=HEAD.c.seq))
        row = conn.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == HEAD_ID)).first()
    if row is not None:
        return int(row.seq), str(row.hash)
    last = conn.execute(select(AUDIT.c.seq, AUDIT.c.hash).order_by(AUDIT.c.seq.desc()).limit(1)).first()
    seq, digest = (int(last.seq), str(last.hash)) if last is not None else (0, GENESIS)
    conn.execute(insert(HEAD).values(id=HEAD_ID, seq=seq, hash=digest))  # a racing creator fails on the primary key
    return seq, digest


def lock(conn: Connection) -> int:
    """Take the chain's lock for the rest of the caller's write transaction (what every append takes first; taking
    it again is free) and return the newest entry's number: a part that reads what it appends next (how far a bot's
    journal is in the chain) reads it under this lock, so two replicas never both append it."""
    return _locked_head(conn)[0]


def _append_on(
    conn: Connection,
    *,
    principal: str,
    source: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
    decision: str | None,
    comment: str,
    at: datetime | None,
) -> Entry:
    prev_seq, prev_hash = _locked_head(conn)
    fields: dict[str, Any] = {
        "seq": prev_seq + 1,
        "at": (at or utcnow()).astimezone(UTC),
        "principal": _cut(principal, NAME_MAX) or "unknown",
        "source": _cut(source, NAME_MAX) or "unknown",
        "action": _cut(action, ACTION_MAX),
        "target": _cut(target, NAME_MAX),
        "before": canonical(before),
        "after": canonical(after),
        "decision": _cut(decision, NAME_MAX) if decision else None,
        "comment": str(comment or "").strip()[:COMMENT_MAX],
    }
    digest = entry_hash(prev_hash, fields)
    conn.execute(insert(AUDIT).values(**fields, prev_hash=prev_hash, hash=digest))
    conn.execute(update(HEAD).where(HEAD.c.id == HEAD_ID).values(seq=fields["seq"], hash=digest))
    return Entry(
        **{**fields, "before": json.loads(fields["before"]), "after": json.loads(fields["after"])},
        prev_hash=prev_hash,
        hash=digest,
    )


def append(
    engine_or_conn: Engine | Connection,
    *,
    principal: str,
    source: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
    decision: str | None = None,
    comment: str = "",
    at: datetime | None = None,
) -> Entry:
    """Append one entry and return it. With a Connection, inside the caller's transaction (which must be a write
    transaction: the ledger's `tx()`, BEGIN IMMEDIATE on SQLite), so the entry commits with the change it records;
    with an Engine, in a transaction of its own. `before`/`after`: JSON-able values (what changed); `decision`: the
    decision answered (``approval:12``); `comment`: what the person wrote (a typed name, a reason)."""
    kwargs = {
        "principal": principal,
        "source": source,
        "action": action,
        "target": target,
        "before": before,
        "after": after,
        "decision": decision,
        "comment": comment,
        "at": at,
    }
    if isinstance(engine_or_conn, Connection):
        return _append_on(engine_or_conn, **kwargs)
    for attempt in range(APPEND_TRIES):
        try:
            with engine_or_conn.connect() as conn:
                conn.info["immediate"] = True
                with conn.begin():
                    return _append_on(conn, **kwargs)
        except IntegrityError:
            if attempt == APPEND_TRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def entries(
    engine: Engine,
    *,
    limit: int = 50,
    before_seq: int | None = None,
    principal: str | None = None,
    target: str | tuple[str, ...] | None = None,
    action: str | None = None,
    decision: str | None = None,
) -> list[Entry]:
    """The newest entries first (older than `before_seq` when given), optionally of one principal, target (or any of
    several: a bot's name and its instance, `targets_of`), action or decision."""
    stmt = select(AUDIT).order_by(AUDIT.c.seq.desc()).limit(limit)
    if before_seq is not None:
        stmt = stmt.where(AUDIT.c.seq < before_seq)
    if isinstance(target, tuple):
        stmt = stmt.where(AUDIT.c.target.in_(target))
        target = None
    for column, value in (
        (AUDIT.c.principal, principal),
        (AUDIT.c.target, target),
        (AUDIT.c.action, action),
        (AUDIT.c.decision, decision),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    with engine.connect() as conn:
        return [_entry(r) for r in conn.execute(stmt)]


def targets_of(bots: Iterable[tuple[str, str]], target: str) -> str | tuple[str, ...]:
    """What `--target` / `?target=` matches: a bot of `bots` ((name, instance) pairs, the configuration's bots:) by
    its name or its instance, since a request and the reconciler's commands name the bot and an approval the alert's
    instance; any other value only itself."""
    for name, instance in bots:
        if target in (name, instance):
            return (name, instance)
    return target


def head(engine: Engine) -> tuple[int, str]:
    """The newest entry's number and hash as the head row says (0 and GENESIS for an empty chain)."""
    with engine.connect() as conn:
        row = conn.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == HEAD_ID)).first()
    return (int(row.seq), str(row.hash)) if row is not None else (0, GENESIS)


@dataclass(frozen=True)
class Verdict:
    """What verify found: how many entries it checked, the head's hash, and the first problem (None: whole)."""

    checked: int
    head_seq: int
    head_hash: str
    problem: str | None
    # The entry the problem names (the first edited one, or the first number missing).
    seq: int | None = None

    @property
    def whole(self) -> bool:
        return self.problem is None


def _rows(conn: Connection) -> Iterator[Any]:
    """Every entry in order, read in batches by key (no server-side cursor needed, the same on both databases)."""
    last = 0
    while True:
        batch = conn.execute(
            select(*(AUDIT.c[name] for name in (*HASHED, "prev_hash", "hash")))
            .where(AUDIT.c.seq > last)
            .order_by(AUDIT.c.seq)
            .limit(VERIFY_BATCH)
        ).all()
        if not batch:
            return
        yield from batch
        last = int(batch[-1].seq)


def verify(engine: Engine) -> Verdict:
    """Walk the chain from its first entry: each number one more than the last, each entry's prev_hash the previous
    entry's hash, each hash the one its fields give, and the head naming the last entry. The first entry that fails
    is named: edited (its fields no longer give its hash, or its hash is not what the next entry followed) or
    deleted (a number missing, or entries missing after the last one the head counts)."""
    sha256, encode = hashlib.sha256, _CANONICAL.encode
    expected_prev, expected_seq, checked = GENESIS, 1, 0
    with engine.connect() as conn, conn.begin():
        head_row = conn.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == HEAD_ID)).first()
        head_seq, head_hash = (int(head_row.seq), str(head_row.hash)) if head_row is not None else (0, GENESIS)

        def found(problem: str, seq: int) -> Verdict:
            return Verdict(checked, head_seq, head_hash, problem, seq)

        for row in _rows(conn):
            seq = int(row.seq)
            if seq != expected_seq:
                missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq} to {seq - 1}"
                return found(f"entry {missing} deleted: entry {seq} follows entry {expected_seq - 1}", expected_seq)
            body = encode(
                {
                    "seq": seq,
                    "at": _at(row.at),
                    "principal": row.principal,
                    "source": row.source,
                    "action": row.action,
                    "target": row.target,
                    "before": row.before,
                    "after": row.after,
                    "decision": row.decision,
                    "comment": row.comment,
                }
            )
            if row.prev_hash != expected_prev:
                return found(
                    f"entry {seq - 1} edited or replaced: entry {seq} follows a hash it no longer has"
                    if seq > 1
                    else "entry 1 edited: it does not start the chain",
                    seq - 1 if seq > 1 else 1,
                )
            digest = sha256((expected_prev + body).encode("utf-8", "surrogatepass")).hexdigest()
            if digest != row.hash:
                return found(f"entry {seq} edited: its content no longer gives its hash", seq)
            expected_prev, expected_seq = digest, seq + 1
            checked += 1
        last = expected_seq - 1
        if head_seq > last:
            missing = f"{last + 1}" if head_seq == last + 1 else f"{last + 1} to {head_seq}"
            return found(f"entry {missing} deleted: the chain ends at {last}, its head at {head_seq}", last + 1)
        if head_seq < last or head_hash != expected_prev:
            return found(
                f"the head does not name entry {last} (head: {head_seq}): the head or the chain was edited", last
            )
    return Verdict(checked, head_seq, head_hash, None)
