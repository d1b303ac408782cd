"""`exec`: run an argument list (never a shell); labels only as validated environment variables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from typing import Any

from trading_ops.reconciler.actions.base import Action, ActionContext, Refused, Result, truncate

ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# The only variables of the reconciler's own environment a command inherits.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TZ")


class ExecAction(Action):
    kind = "exec"
    default_risk = "disruptive"
    params = {"argv": (list, True), "env": (dict, False), "cwd": (str, False)}

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        argv = params["argv"]
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv: expected a non-empty list of strings")
        for name, label in (params.get("env") or {}).items():
            if not ENV_NAME_RE.match(str(name)):
                raise ValueError(f"env.{name}: not a valid environment variable name")
            if not isinstance(label, str):
                raise ValueError(f"env.{name}: expected the name of an alert label")

    def describe(self, params: dict[str, Any]) -> str:
        env = " ".join(f"{k}=<{v}>" for k, v in sorted((params.get("env") or {}).items()))
        return f"exec {env} {params['argv']!r}".replace("  ", " ")

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        # Every label value is checked against the strict pattern; one failure refuses the step.
        env.update({name: ctx.label(label) for name, label in (params.get("env") or {}).items()})
        env["TRADING_OPS_EPISODE_ID"] = str(ctx.episode_id)
        return await run_argv(
            params["argv"], env, timeout, ctx.config.reconciler.output_limit_bytes, cwd=params.get("cwd")
        )


async def run_argv(
    argv: list[str], env: dict[str, str] | None, timeout: float, limit: int, cwd: str | None = None
) -> Result:
    """Run argv in its own process group; on timeout kill the whole group. Output is truncated."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise Refused(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        _kill_group(proc.pid)
        out = b""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                out, _ = await proc.communicate()
        return Result("timeout", truncate(f"killed after {timeout:g}s\n" + out.decode(errors="replace"), limit))
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        raise
    text = out.decode(errors="replace")
    outcome = "success" if proc.returncode == 0 else "failure"
    return Result(outcome, truncate(f"exit {proc.returncode}\n{text}", limit))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


ACTION = ExecAction()
