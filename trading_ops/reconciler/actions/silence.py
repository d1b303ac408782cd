"""`silence`: create an Alertmanager silence for the alert (API v2), e.g. while a slow fix settles.

With `alertname`, the silence is for that alert of the same target instead (the `labels` taken from the alert,
default `instance`): a restart the reconciler performs silences the target's TradingBotDown for the restart's
duration, so its own disruptive action does not page, while a bot still down when the silence ends does."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

import msgspec

from trading_ops.clients.alertmanager import AlertmanagerError
from trading_ops.db.base import utcnow
from trading_ops.durations import parse_duration
from trading_ops.reconciler.actions.base import Action, ActionContext, Refused, Result
from trading_ops.schema import duration_type

CREATED_BY = "trading-ops-reconciler"
ALERTNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SilenceAction(Action):
    kind = "silence"
    budgeted = False
    params = {
        "duration": ((str, int, float), False),
        "labels": (list, False),
        "comment": (str, False),
        "alertname": (str, False),
    }
    schema = {
        "duration": duration_type(),
        "labels": list[str],
        "alertname": Annotated[str, msgspec.Meta(pattern=ALERTNAME_RE.pattern)],
    }

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        try:
            parse_duration(params.get("duration", "1h"))
        except ValueError as exc:
            raise ValueError(f"duration: {exc}") from exc
        if "alertname" in params and not ALERTNAME_RE.match(params["alertname"]):
            raise ValueError("alertname: expected an alert name (letters, digits and '_')")

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        other = params.get("alertname")
        names = params.get("labels") or (["instance"] if other else ["alertname", "instance"])
        matchers = {n: ctx.labels[n] for n in names if n in ctx.labels}
        if other:
            if not matchers.keys() - {"alertname"}:  # it would silence that alert of every target
                raise Refused(f"silence of {other}: the alert has none of the labels {', '.join(names)}")
            matchers["alertname"] = other
        now = utcnow()
        end = now + timedelta(seconds=parse_duration(params.get("duration", "1h")))
        comment = params.get("comment") or f"trading-ops reconciler, episode {ctx.episode_id}"
        try:
            sid = await ctx.alertmanager.create_silence(matchers, now, end, CREATED_BY, comment)
        except AlertmanagerError as exc:
            return Result("failure", str(exc))
        return Result("success", f"silence {sid} until {end.isoformat()}")


ACTION = SilenceAction()
