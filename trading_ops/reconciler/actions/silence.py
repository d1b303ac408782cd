"""`silence`: create an Alertmanager silence for the alert (API v2), e.g. while a slow fix settles."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from trading_ops.clients.alertmanager import AlertmanagerError
from trading_ops.db.base import utcnow
from trading_ops.durations import parse_duration
from trading_ops.reconciler.actions.base import Action, ActionContext, Result

CREATED_BY = "trading-ops-reconciler"


class SilenceAction(Action):
    kind = "silence"
    budgeted = False
    params = {"duration": ((str, int, float), False), "labels": (list, False), "comment": (str, False)}

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        parse_duration(params.get("duration", "1h"))

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        names = params.get("labels") or ["alertname", "instance"]
        matchers = {n: ctx.labels[n] for n in names if n in ctx.labels}
        now = utcnow()
        end = now + timedelta(seconds=parse_duration(params.get("duration", "1h")))
        comment = params.get("comment") or f"trading-ops reconciler, episode {ctx.episode_id}"
        try:
            sid = await ctx.alertmanager.create_silence(matchers, now, end, CREATED_BY, comment)
        except AlertmanagerError as exc:
            return Result("failure", str(exc))
        return Result("success", f"silence {sid} until {end.isoformat()}")


ACTION = SilenceAction()
