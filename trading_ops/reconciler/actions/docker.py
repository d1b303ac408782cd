"""`docker`: restart a container through the Docker Engine API on its unix socket.

The container is the step's `container`, or else the one configured for the alert's bot (`bots[].container`)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from trading_ops.reconciler.actions.base import Action, ActionContext, Refused, Result, truncate

CONTAINER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class DockerAction(Action):
    kind = "docker"
    default_risk = "disruptive"
    params = {"container": (str, False), "stop_timeout": (int, False)}

    def describe(self, params: dict[str, Any]) -> str:
        return super().describe({"container": "(the bot's container)", **params})

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        name = ctx.step_or_bot(params, "container")
        if not CONTAINER_RE.match(name):
            raise Refused(f"container {name[:60]!r} is not a valid container name")
        url = f"http://docker/containers/{name}/restart"
        connector = aiohttp.UnixConnector(path=ctx.config.reconciler.docker_socket)
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.post(
                    url, params={"t": str(params.get("stop_timeout", 10))}, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as resp,
            ):
                text = await resp.text()
        except TimeoutError:
            return Result("timeout", f"docker restart {name}: no answer within {timeout:g}s")
        except aiohttp.ClientError as exc:
            return Result("failure", f"docker restart {name}: {exc}")
        outcome = "success" if resp.status == 204 else "failure"
        return Result(outcome, truncate(f"HTTP {resp.status} {text}", ctx.config.reconciler.output_limit_bytes))


ACTION = DockerAction()
