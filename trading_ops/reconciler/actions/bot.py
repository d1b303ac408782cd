"""`bot`: a command of the bot's control API (POST /control/{command} with its bearer token)."""

from __future__ import annotations

from typing import Any

import aiohttp

from trading_ops.config import resolve_secret
from trading_ops.reconciler.actions.base import Action, ActionContext, Refused, Result, template_labels, truncate

# The bot a step commands: the alert's own instance unless the step names one.
DEFAULT_INSTANCE = "${instance}"

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
}


class BotAction(Action):
    kind = "bot"
    params = {"command": (str, True), "body": (dict, False), "instance": (str, False)}

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        if params["command"] not in COMMAND_RISK:
            raise ValueError(f"command: unknown bot command {params['command']!r} (known: {', '.join(COMMAND_RISK)})")

    def risk(self, params: dict[str, Any]) -> str:
        return COMMAND_RISK[params["command"]]

    def checked_labels(self, params: dict[str, Any]) -> list[str]:
        return template_labels({**params, "instance": params.get("instance", DEFAULT_INSTANCE)})

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        instance = ctx.render(params.get("instance", DEFAULT_INSTANCE))
        target = ctx.config.reconciler.targets.get(instance)
        if target is None:
            raise Refused(f"no reconciler.targets entry for bot instance {instance!r}")
        token = resolve_secret(ctx.config, target, "token", f"reconciler.targets.{instance}.token")
        body = {k: ctx.render(v) if isinstance(v, str) else v for k, v in (params.get("body") or {}).items()}
        url = f"{target.url.rstrip('/')}/control/{params['command']}"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with ctx.session.post(
                url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                text = await resp.text()
        except TimeoutError:
            return Result("timeout", f"POST {url}: no answer within {timeout:g}s")
        except aiohttp.ClientError as exc:
            return Result("failure", f"POST {url}: {exc}")
        outcome = "success" if resp.status == 200 else "failure"
        return Result(outcome, truncate(f"HTTP {resp.status} {text}", ctx.config.reconciler.output_limit_bytes))


ACTION = BotAction()
