"""`bot`: a command of the bot's control API (POST /control/{command} with its bearer token).

With `instances` (a PromQL query whose series carry an `instance` label), the command goes to every bot the query
finds that is also a configured target (a label never adds a bot), concurrently: one step, one action for a whole
venue. `only_state` and `only_reason` skip the bots not in that state (and, for `only_reason`, not put there with
that reason), so a fleet-wide `reduce_only` leaves a paused bot paused and the `resume` after it resumes only the
bots the reduce_only changed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from trading_ops.bot.control import COMMAND_SCOPES, SOURCE_HEADER, SOURCE_RECONCILER
from trading_ops.clients.prometheus import PrometheusError
from trading_ops.config import Config, resolve_secret
from trading_ops.reconciler.actions.base import (
    Action,
    ActionContext,
    Deadline,
    Refused,
    Result,
    template_labels,
    truncate,
)
from trading_ops.reconciler.decision_signing import COMMAND_KINDS, sign_for
from trading_ops.schema import one_of
from trading_ops.scopes import DESTRUCTIVE

# The bot a step commands: the alert's own instance unless the step names one.
DEFAULT_INSTANCE = "${instance}"
# How long a restart step waits for the bot's answer to "are you starting?" (a bot that does not answer is restarted).
STARTING_TIMEOUT_SECONDS = 2.0

COMMAND_RISK = {
    "status": "safe",
    "reconnect": "safe",
    "resubscribe": "safe",
    "reconcile": "safe",
    "pause": "disruptive",
    "resume": "disruptive",
    "reduce_only": "disruptive",
    "halt": "disruptive",
    "cancel_all": "destructive",
    "flatten": "destructive",
    # Wider risk limits (the next stage of a bot's ramp), and a bot halted by a loss limit trading again: never without
    # a person's approval (the ramp-promote and clear-halt rules), sent with a decision signed from it.
    "ramp_promote": "destructive",
    "clear_halt": "destructive",
}

# Commands that only stop trading or shrink the book: a rule made of these acts even with its target's budget
# spent or its circuit open (a loss limit must be enforced whatever other alerts did before).
PROTECTIVE_COMMANDS = frozenset({"pause", "reduce_only", "halt", "cancel_all", "flatten"})
# Commands a bot carries out only on a signed decision, signed per bot (never a fan-out step's).
SIGNED_COMMANDS = frozenset(COMMAND_KINDS)
# A fan-out step talks to this many bots at once.
FAN_OUT_CONCURRENCY = 16


class BotAction(Action):
    kind = "bot"
    params = {
        "command": (str, True),
        "body": (dict, False),
        "instance": (str, False),
        "instances": (str, False),
        "only_state": (str, False),
        "only_reason": (str, False),
    }
    schema = {"command": one_of(COMMAND_RISK)}

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        if params["command"] not in COMMAND_RISK:
            raise ValueError(f"command: unknown bot command {params['command']!r} (known: {', '.join(COMMAND_RISK)})")
        if "instance" in params and "instances" in params:
            raise ValueError("instance: give either instance (one bot) or instances (a query), not both")
        if ("only_state" in params or "only_reason" in params) and "instances" not in params:
            raise ValueError("only_state, only_reason: only with instances")
        if params["command"] in SIGNED_COMMANDS and "instances" in params:
            raise ValueError(f"instances: {params['command']} widens one bot's risk on a decision signed for it")

    def risk(self, params: dict[str, Any]) -> str:
        return COMMAND_RISK[params["command"]]

    def protective(self, params: dict[str, Any]) -> bool:
        return params["command"] in PROTECTIVE_COMMANDS

    def checked_labels(self, params: dict[str, Any]) -> list[str]:
        if "instances" in params:
            return template_labels(params)
        return template_labels({**params, "instance": params.get("instance", DEFAULT_INSTANCE)})

    def describe(self, params: dict[str, Any]) -> str:
        if "instances" in params:
            return super().describe({k: v for k, v in params.items() if k != "body"})
        return super().describe(params)

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        body = {k: ctx.render(v) if isinstance(v, str) else v for k, v in (params.get("body") or {}).items()}
        if "instances" in params:
            return await self._fan_out(ctx, params, body, timeout)
        instance = ctx.render(params.get("instance", DEFAULT_INSTANCE))
        if instance not in ctx.config.reconciler.targets:
            raise Refused(f"no reconciler.targets entry for bot instance {instance!r}")
        signed = params["command"] in SIGNED_COMMANDS
        if signed:
            # Wider risk: the bot acts only on a decision it verifies, signed here from the approval the run spent.
            body["decision"] = sign_for(ctx, params["command"], instance, body)
        status, text = await _post(ctx, instance, params["command"], body, timeout)
        outcome = "success" if status == 200 else ("timeout" if status == 0 and "no answer" in text else "failure")
        prefix = f"HTTP {status} " if status else ""
        if signed and status == 200:
            text += await _audit_signed(ctx, params["command"], instance, text)
        return Result(outcome, truncate(prefix + text, ctx.config.reconciler.output_limit_bytes))

    async def _fan_out(
        self, ctx: ActionContext, params: dict[str, Any], body: dict[str, Any], timeout: float
    ) -> Result:
        if ctx.prometheus is None:
            raise Refused("instances: no Prometheus to ask which bots")
        query = ctx.render(params["instances"])
        try:
            series = await ctx.prometheus.query(query)
        except PrometheusError as exc:
            return Result("failure", truncate(f"instances: {exc}", ctx.config.reconciler.output_limit_bytes))
        found = sorted({str(s.get("metric", {}).get("instance", "")) for s in series} - {""})
        targets = [i for i in found if i in ctx.config.reconciler.targets]
        only_state = params.get("only_state")
        only_reason = ctx.render(params["only_reason"]) if "only_reason" in params else None
        gate = asyncio.Semaphore(FAN_OUT_CONCURRENCY)
        deadline = Deadline.after(timeout)  # one for the whole step: every bot's status and command within it

        async def one(instance: str) -> tuple[str, str]:
            async with gate:
                if deadline.left() <= 0:
                    return instance, f"failure: not reached within the step's {timeout:g}s"
                if only_state or only_reason:
                    status, text = await _post(ctx, instance, "status", {}, deadline.left())
                    if status != 200:
                        return instance, f"failure: status HTTP {status} {text[:120]}"
                    state = json.loads(text)
                    if only_state and state.get("state") != only_state:
                        return instance, f"skipped: {state.get('state')}"
                    if only_reason and state.get("state_reason") != only_reason:
                        return instance, f"skipped: {state.get('state')} for another reason"
                if deadline.left() <= 0:
                    return instance, f"failure: no time left for {params['command']} within the step's {timeout:g}s"
                status, text = await _post(ctx, instance, params["command"], body, deadline.left())
                return instance, "success" if status == 200 else f"failure: HTTP {status} {text[:120]}"

        results = await asyncio.gather(*(one(i) for i in targets))
        lines = [f"{instance}: {outcome}" for instance, outcome in results]
        lines += [f"{instance}: not a configured bot, left alone" for instance in found if instance not in targets]
        failed = [line for line in lines if ": failure" in line]
        done = sum(1 for _, outcome in results if outcome == "success")
        head = f"{params['command']} on {done} of {len(found)} bots found by {query}"
        output = truncate("\n".join([head, *lines]), ctx.config.reconciler.output_limit_bytes)
        return Result("failure" if failed else "success", output)


async def _audit_signed(ctx: ActionContext, command: str, instance: str, answer: str) -> str:
    """The audit entry of a command that widened a bot's risk on people's approval (ramp_promote, clear_halt), as the
    bot answered it: principal the reconciler (who sent it), the approval it spent as its decision, the bot's state or
    stage before and after. "" when written; else a line for the step's output (the step stands: the bot acted)."""
    from sqlalchemy.exc import SQLAlchemyError

    from trading_ops import audit
    from trading_ops.reconciler.decision_signing import approvers_of, bot_name, requester_of

    if ctx.ledger is None or ctx.approval is None:
        return ""
    try:
        got = json.loads(answer)
    except ValueError:
        got = {}
    got = got if isinstance(got, dict) else {}
    ramp = got.get("ramp") if isinstance(got.get("ramp"), dict) else None
    if ramp is not None:
        last = (ramp.get("history") or [{}])[-1]
        before, after = {"stage": last.get("from")}, {"stage": ramp.get("name"), "decision": got.get("decision")}
    else:
        before, after = {"state": got.get("previous_state")}, {"state": got.get("state")}
    row = ctx.approval
    try:
        await asyncio.to_thread(
            audit.append,
            ctx.ledger.engine,
            principal="reconciler",
            source=ctx.config.reconciler.instance or "reconciler",
            action=command,
            target=bot_name(ctx.config, instance, ctx.labels),
            before=before,
            after=after,
            decision=f"approval:{row.get('id')}",
            comment=f"sent with the decision signed from the approval: requested by {requester_of(row, ctx.labels)}, "
            f"approved by {', '.join(approvers_of(row))}",
        )
    except (SQLAlchemyError, Refused) as exc:
        return f"\n(its audit entry was not written: {exc})"
    return ""


def target_token(config: Config, instance: str, command: str) -> str:
    """The token to send `command` to bot `instance` with: the least scope that does it. A destructive command
    (COMMAND_SCOPES) goes with the target's destructive_token when it has one, everything else with its token (then
    an `operate` token), so a pause never travels with the right to flatten."""
    target = config.reconciler.targets[instance]
    key = f"reconciler.targets.{instance}"
    if COMMAND_SCOPES.get(command, DESTRUCTIVE) == DESTRUCTIVE:
        destructive = resolve_secret(config, target, "destructive_token", f"{key}.destructive_token")
        if destructive:
            return destructive
    return resolve_secret(config, target, "token", f"{key}.token")


async def _post(
    ctx: ActionContext, instance: str, command: str, body: dict[str, Any], timeout: float
) -> tuple[int, str]:
    """(HTTP status, body) of one control command; (0, why) when there was no answer."""
    return await _request(ctx.config, ctx.session, instance, command, body, timeout)


async def status_of(
    config: Config, session: aiohttp.ClientSession, instance: str, timeout: float
) -> dict[str, Any] | None:
    """The configured bot `instance`'s status (its control API's `status`), or None when it did not answer one."""
    status, text = await _request(config, session, instance, "status", {}, timeout)
    if status != 200:
        return None
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


async def starting(ctx: ActionContext, timeout: float = STARTING_TIMEOUT_SECONDS) -> bool:
    """Whether the alert's bot (a configured target) says it is starting (its runtime's phase: the safe start, the
    startup reconciliation): restarting it then would only kill it mid-start. A bot that does not answer, or has no
    phase (no runtime, an older bot), is not starting."""
    if ctx.target not in ctx.config.reconciler.targets:
        return False
    status = await status_of(ctx.config, ctx.session, ctx.target, timeout)
    return status is not None and status.get("phase") == "starting"


async def _request(
    config: Config, session: aiohttp.ClientSession, instance: str, command: str, body: dict[str, Any], timeout: float
) -> tuple[int, str]:
    target = config.reconciler.targets[instance]
    token = target_token(config, instance, command)
    url = f"{target.url.rstrip('/')}/control/{command}"
    # A bot given named tokens counts the command under the token's name; with its single token, as the reconciler's
    # (tradingbot_control_commands_total{source}).
    headers = {"Authorization": f"Bearer {token}", SOURCE_HEADER: SOURCE_RECONCILER}
    try:
        async with session.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.text()
    except TimeoutError:
        return 0, f"POST {url}: no answer within {timeout:g}s"
    except aiohttp.ClientError as exc:
        return 0, f"POST {url}: {exc}"


ACTION = BotAction()
