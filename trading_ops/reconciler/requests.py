"""Authenticated requests for a decision that widens risk (a ramp promotion, a live start, clearing a loss-limit
halt): recorded by the reconciler with the
principal that asked (its token, or its console session's), before the alert that carries the request is posted.
The approval the request leads to takes its requester from here (the alert's `request` label names the row), never
from a name typed into the alert."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, insert, select

from trading_ops import audit
from trading_ops.db.models.ledger import Request
from trading_ops.reconciler.ledger import Ledger

RQ = cast(Table, Request.__table__)
RAMP_PROMOTION = "ramp_promotion"
# The alert label that names the request (its id) the approval answers.
REQUEST_LABEL = "request"


@dataclass(frozen=True)
class Duplicate:
    """An identical request still stands: nothing was created (409)."""

    message: str


class RequestStore:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def create(
        self,
        *,
        kind: str,
        bot: str,
        instance: str,
        stage: str,
        principal: str,
        source: str,
        comment: str,
        now: datetime,
        hours: float,
        before: dict[str, Any],
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any] | Duplicate:
        """A new request (with its audit entry, in one transaction), or Duplicate when the same kind, bot and stage
        was asked and still stands (not expired)."""
        with self.ledger.tx() as conn:
            standing = (
                conn.execute(
                    select(RQ)
                    .where(RQ.c.kind == kind, RQ.c.bot == bot, RQ.c.stage == stage, RQ.c.expires_at > now)
                    .order_by(RQ.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if standing is not None:
                return Duplicate(
                    f"request {standing['id']} for {bot}{f' to {stage}' if stage else ''} by {standing['principal']} "
                    f"stands until {standing['expires_at'].isoformat()}: nothing asked again"
                )
            values = {
                "kind": kind,
                "bot": bot[:128],
                "instance": instance[:255],
                "stage": stage[:64],
                "principal": principal[:255],
                "source": source[:255],
                "comment": comment[:2000],
                "requested_at": now,
                "expires_at": now + timedelta(hours=hours),
                "detail": json.dumps(detail or {}, sort_keys=True),
            }
            request_id = int(conn.execute(insert(RQ).values(**values).returning(RQ.c.id)).scalar_one())
            audit.append(
                conn,
                principal=principal,
                source=source,
                action=f"{kind}_request",
                target=bot,
                before=before,
                after={**before, "requested": stage},
                decision=f"request:{request_id}",
                comment=comment,
                at=now,
            )
        return {"id": request_id, **values}

    def withdraw(self, request_id: int, now: datetime, why: str) -> None:
        """The request's alert could not be posted: it no longer stands (asking again is not a duplicate), and the
        audit chain says so."""
        from sqlalchemy import update

        with self.ledger.tx() as conn:
            row = conn.execute(select(RQ).where(RQ.c.id == request_id)).mappings().first()
            if row is None:
                return
            conn.execute(update(RQ).where(RQ.c.id == request_id).values(expires_at=now))
            audit.append(
                conn,
                principal="reconciler",
                source="reconciler",
                action=f"{row['kind']}_request_withdrawn",
                target=row["bot"],
                before={"requested": row["stage"], "by": row["principal"]},
                after={"requested": None},
                decision=f"request:{request_id}",
                comment=why,
                at=now,
            )

    def newest(self, kind: str, bot: str) -> dict[str, Any] | None:
        """The bot's newest request of `kind`, or None."""
        with self.ledger.engine.connect() as conn:
            row = (
                conn.execute(select(RQ).where(RQ.c.kind == kind, RQ.c.bot == bot).order_by(RQ.c.id.desc()).limit(1))
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    def get(self, request_id: int) -> dict[str, Any] | None:
        with self.ledger.engine.connect() as conn:
            row = conn.execute(select(RQ).where(RQ.c.id == request_id)).mappings().first()
        return dict(row) if row is not None else None
