"""`systemd`: restart (or reload) a unit with the configured systemctl command.

The unit is the step's `unit`, or else the unit configured for the alert's bot (`bots[].unit`): a label never names
it. Before a restart the step asks the service manager what the unit is doing (`systemctl show`): a unit that is
already (re)starting, or whose main process started after the alert began, was restarted by the service manager on
its own (Restart=on-failure, WatchdogSec); restarting it again would kill it in the middle of its startup
reconciliation, so the step leaves it and the verification decides. So does a bot that says it is starting (its
control API's `status`: phase starting, e.g. on a host that just came back and was not started by systemd's restart).

A bot configured on a host of its own (`bots[].host.address`) is acted on there, as `systemctl --host` does: over SSH
with the host's key checked against `bots[].host.known_hosts_file` (trading_ops.reconciler.remote_host). A host that
cannot be reached, or whose key changed, fails the step with one line, as soon as the `show` says so.

The step keeps its timeout end to end: the `show` and the restart share one deadline (actions.base.Deadline), and ssh
gives up connecting a second before it, so "host ... unreachable" is what the step says, not the engine's "no result
within"."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from trading_ops.config import BotHostConfig
from trading_ops.reconciler.actions.base import Action, ActionContext, Deadline, Refused, Result
from trading_ops.reconciler.actions.bot import starting
from trading_ops.reconciler.actions.exec import minimal_env, run_argv
from trading_ops.reconciler.remote_host import bot_host, connect_timeout, failure_line, systemctl_over_ssh
from trading_ops.schema import one_of

UNIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@_.:\\-]{0,250}$")
VERBS = ("restart", "reload", "try-restart", "start")
# Verbs that start a new main process: the ones the "already restarted" check applies to.
STARTING_VERBS = ("restart", "try-restart", "start")
SHOW_PROPERTIES = "ActiveState,SubState,ExecMainStartTimestamp"
SHOW_TIMEOUT_SECONDS = 10.0
# ActiveState values of a unit the service manager is busy with (auto-restart is a sub-state of activating).
BUSY_STATES = ("activating", "deactivating", "reloading")


class SystemdAction(Action):
    kind = "systemd"
    default_risk = "disruptive"
    params = {"unit": (str, False), "verb": (str, False)}
    schema = {"verb": one_of(VERBS)}

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        if params.get("verb", "restart") not in VERBS:
            raise ValueError(f"verb: expected one of {', '.join(VERBS)}")

    def describe(self, params: dict[str, Any]) -> str:
        return super().describe({"unit": "(the bot's unit)", **params})

    def unit(self, ctx: ActionContext, params: dict[str, Any]) -> str:
        unit = ctx.step_or_bot(params, "unit")
        if not UNIT_RE.match(unit):
            raise Refused(f"unit {unit[:60]!r} is not a valid unit name")
        return unit

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        unit = self.unit(ctx, params)
        verb = params.get("verb", "restart")
        host = bot_host(ctx)
        deadline = Deadline.after(timeout)
        if host is None or not host.address:  # the reconciler's own host
            # The same minimal environment as exec: systemctl needs no secret of the reconciler's.
            return await self._act(ctx, ctx.config.reconciler.systemctl, minimal_env(), unit, verb, deadline, None)
        with systemctl_over_ssh(host, timeout) as (systemctl, env):
            result = await self._act(ctx, systemctl, env, unit, verb, deadline, host)
        if not result.ok and (line := failure_line(result.output, host)):
            return Result("failure", line)
        return result

    async def _act(
        self,
        ctx: ActionContext,
        systemctl: list[str],
        env: dict[str, str],
        unit: str,
        verb: str,
        deadline: Deadline,
        host: BotHostConfig | None,
    ) -> Result:
        limit = ctx.config.reconciler.output_limit_bytes
        if verb in STARTING_VERBS:
            if await starting(ctx):
                return Result("success", f"{unit} not restarted: the bot is starting (phase starting)")
            # Long enough for ssh to say it could not connect (its ConnectTimeout, a second under the step's).
            show_for = (
                max(SHOW_TIMEOUT_SECONDS, connect_timeout(host) + 2) if host is not None else SHOW_TIMEOUT_SECONDS
            )
            busy, shown = await self._already_restarted(ctx, systemctl, env, unit, min(deadline.left(), show_for))
            if busy:
                return Result("success", f"{unit} not restarted again: {busy}")
            if host is not None and shown is not None and failure_line(shown.output, host):
                return Result("failure", shown.output)  # the host cannot be reached: no restart to try there
        left = deadline.left()
        if left <= 0:
            return Result("timeout", f"{unit}: no time left for {verb} within the step's timeout")
        return await run_argv([*systemctl, verb, unit], env, left, limit, on_start=ctx.process_started)

    async def _already_restarted(
        self, ctx: ActionContext, systemctl: list[str], env: dict[str, str], unit: str, timeout: float
    ) -> tuple[str | None, Result | None]:
        """Why the service manager is already taking care of `unit`, or None (then restart it), and what `show`
        answered. Any trouble asking (an old systemctl, no permission) is None: the restart goes ahead as it always
        did."""
        argv = [*systemctl, "--timestamp=unix", f"--property={SHOW_PROPERTIES}", "show", unit]
        try:
            shown = await run_argv(argv, env, timeout, 4096)
        except Refused:
            return None, None
        if not shown.ok:
            return None, shown
        props = dict(line.split("=", 1) for line in shown.output.splitlines() if "=" in line)
        state, sub = props.get("ActiveState", ""), props.get("SubState", "")
        if state in BUSY_STATES:
            return f"the service manager is already at it (ActiveState={state}, SubState={sub})", shown
        started = _unix_timestamp(props.get("ExecMainStartTimestamp", ""))
        if state == "active" and started is not None and ctx.starts_at is not None and started > ctx.starts_at:
            return (
                f"the service manager restarted it at {started.isoformat(timespec='seconds')}, after the alert began "
                f"({ctx.starts_at.isoformat(timespec='seconds')})"
            ), shown
        return None, shown


def _unix_timestamp(value: str) -> datetime | None:
    """`systemctl show --timestamp=unix` prints `@1700000000` (empty or n/a when the unit never started)."""
    if not value.startswith("@"):
        return None
    try:
        return datetime.fromtimestamp(float(value[1:]), UTC)
    except (ValueError, OverflowError, OSError):
        return None


ACTION = SystemdAction()
