"""`signal`: send a signal to the process whose id is in a pidfile."""

from __future__ import annotations

import os
import signal
from typing import Any

from trading_ops.reconciler.actions.base import Action, ActionContext, Refused, Result
from trading_ops.schema import one_of

SIGNALS = {
    "HUP": signal.SIGHUP,
    "INT": signal.SIGINT,
    "TERM": signal.SIGTERM,
    "KILL": signal.SIGKILL,
    "USR1": signal.SIGUSR1,
    "USR2": signal.SIGUSR2,
}


class SignalAction(Action):
    kind = "signal"
    default_risk = "disruptive"
    params = {"pidfile": (str, True), "signal": (str, False)}
    schema = {"signal": one_of(SIGNALS)}

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        if params.get("signal", "TERM") not in SIGNALS:
            raise ValueError(f"signal: expected one of {', '.join(SIGNALS)}")

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        path = ctx.config.path(ctx.render(params["pidfile"]))
        try:
            text = path.read_text().strip()
        except OSError as exc:
            return Result("failure", f"cannot read pidfile {path}: {exc.strerror}")
        if not text.isdigit() or int(text) <= 1:
            raise Refused(f"pidfile {path} does not hold a process id: {text[:40]!r}")
        name = params.get("signal", "TERM")
        try:
            os.kill(int(text), SIGNALS[name])
        except ProcessLookupError:
            return Result("failure", f"no process {text} (pidfile {path})")
        except PermissionError:
            return Result("failure", f"not allowed to signal process {text}")
        return Result("success", f"sent SIG{name} to {text}")


ACTION = SignalAction()
