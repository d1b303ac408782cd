"""`live_start`: answer a person's approved live start request (POST /api/v1/requests/live_start/{bot}): write the bot's
readiness record with the requester's and the approvers' principals, and the live_start decision the reconciler's key
signs for that record beside it (what `trading-ops readiness BOT --decision-out FILE` fetches for the bot)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import update

from trading_ops import audit
from trading_ops.db import readiness_records as records
from trading_ops.db.base import utcnow
from trading_ops.decisions import LIVE_START, config_signer
from trading_ops.durations import parse_duration
from trading_ops.reconciler.actions.base import Action, ActionContext, Refused, Result
from trading_ops.reconciler.decision_signing import KEY, approvers_of, required_of
from trading_ops.reconciler.requests import RQ, RequestStore

ASK = "POST /api/v1/requests/live_start/{bot} (`trading-ops readiness BOT --record`)"


class LiveStartAction(Action):
    kind = "live_start"
    budgeted = False
    # A live start widens a bot's risk the most: its rule must allow it (allow_destructive) and a person approves it.
    default_risk = "destructive"
    params: dict[str, tuple[type | tuple[type, ...], bool]] = {}

    def default_approval(self, params: dict[str, Any]) -> str | None:
        return "required"

    def describe(self, params: dict[str, Any]) -> str:
        return "live_start (record the readiness verdict and sign the live_start decision)"

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        row = ctx.approval
        if row is None or not row.get("request_id"):
            raise Refused(f"live_start answers a person's request approved by others: ask with {ASK}")
        if ctx.ledger is None:
            raise Refused("live_start: no ledger to record in")
        if config_signer(ctx.config) is None:
            raise Refused(f"live_start: no key to sign the decision with ({KEY}_file)")
        return await asyncio.to_thread(self._record, ctx, row)

    def _record(self, ctx: ActionContext, row: dict[str, Any]) -> Result:
        ledger = ctx.ledger
        assert ledger is not None
        request_id = int(row["request_id"])
        request = RequestStore(ledger).get(request_id)
        if request is None or request["kind"] != LIVE_START:
            raise Refused(f"live_start: request {request_id} is no live start request")
        done = records.answering(ledger.engine, request_id)
        if done is not None:
            return Result("success", f"readiness record {done.id} answers request {request_id} already")
        key = config_signer(ctx.config)
        assert key is not None
        approvers, required = approvers_of(row), required_of(row)
        signed: dict[str, Any] = {}

        def sign(record_id: int) -> str:
            decision, token = key.issue(
                LIVE_START,
                request["bot"],
                requested_by=request["principal"],
                approvers=approvers,
                required=required,
                ttl_seconds=parse_duration(ctx.config.reconciler.live_start_decision_ttl),
                record=record_id,
            )
            signed["decision"] = decision
            return token

        try:
            verdict = json.loads(request.get("detail") or "{}")
        except ValueError:
            verdict = {}
        try:
            with ledger.tx() as conn:
                record = records.write_decided(
                    conn,
                    bot=request["bot"],
                    instance=request["instance"],
                    verdict=verdict if isinstance(verdict, dict) else {},
                    requested_by=request["principal"],
                    approvers=approvers,
                    reason=request["comment"],
                    request_id=request_id,
                    decision_for=sign,
                )
                decision = signed["decision"]
                # Answered: the request no longer stands (the bot's next live start may be asked at once).
                conn.execute(update(RQ).where(RQ.c.id == request_id).values(expires_at=utcnow()))
                audit.append(
                    conn,
                    principal="reconciler",
                    source="reconciler",
                    action="live_start_record",
                    target=record.bot,
                    before={"live_start": None},
                    after={
                        "record": record.id,
                        "verdict": record.verdict,
                        "requested_by": decision.requested_by,
                        "approvers": list(decision.approvers),
                        "decision": decision.id,
                        "expires_at": decision.expires_at,
                    },
                    decision=f"request:{request_id}",
                    comment=decision.rule,
                )
        except ValueError as exc:
            raise Refused(f"live_start: approval {row.get('id')} makes no decision: {exc}") from None
        return Result("success", f"readiness record {record.id} ({record.verdict}) and {decision.summary()}")


ACTION = LiveStartAction()
