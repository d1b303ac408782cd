"""`systemd`: restart (or reload) a unit with the configured systemctl command."""

from __future__ import annotations

import re
from typing import Any

from trading_ops.reconciler.actions.base import Action, ActionContext, Refused, Result
from trading_ops.reconciler.actions.exec import minimal_env, run_argv

UNIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@_.:\\-]{0,250}$")
VERBS = ("restart", "reload", "try-restart", "start")


class SystemdAction(Action):
    kind = "systemd"
    default_risk = "disruptive"
    params = {"unit": (str, True), "verb": (str, False)}

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        if params.get("verb", "restart") not in VERBS:
            raise ValueError(f"verb: expected one of {', '.join(VERBS)}")

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        unit = ctx.render(params["unit"])
        if not UNIT_RE.match(unit):
            raise Refused(f"unit {unit[:60]!r} is not a valid unit name")
        argv = [*ctx.config.reconciler.systemctl, params.get("verb", "restart"), unit]
        # The same minimal environment as exec: systemctl needs no secret of the reconciler's.
        return await run_argv(
            argv, minimal_env(), timeout, ctx.config.reconciler.output_limit_bytes, on_start=ctx.process_started
        )


ACTION = SystemdAction()
