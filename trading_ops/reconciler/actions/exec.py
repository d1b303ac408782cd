"""`exec`: run an argument list (never a shell); labels only as validated environment variables."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec

from trading_ops.reconciler.actions.base import Action, ActionContext, Refused, Result, truncate

log = logging.getLogger(__name__)

ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# The only variables of the reconciler's own environment a command inherits (its secrets stay behind).
# TRADING_OPS_CONFIG (a path, set by `trading-ops --config`) lets a `trading-ops ...` step read the same configuration;
# PYTHONPATH (where the reconciler's own Python finds its modules, when set) makes it run the same code as well.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TZ", "TRADING_OPS_CONFIG", "PYTHONPATH")
PR_SET_PDEATHSIG = 1
# Started in place of the command on Linux: ask the kernel to SIGKILL us when the reconciler dies (kill -9
# included), then become the command (execv, no shell). The parent's pid guards the race with its death.
PDEATHSIG_WRAPPER = (
    "import ctypes, os, sys\n"
    f"ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, 9)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(137)\n"
    "try:\n"
    "    os.execv(sys.argv[2], sys.argv[3:])\n"
    "except OSError as exc:\n"
    "    sys.stderr.write(f'cannot execute {sys.argv[2]}: {exc.strerror}\\n')\n"
    "    os._exit(127)\n"
)


class ExecAction(Action):
    kind = "exec"
    templates = False  # argv is literal: no template is filled in
    default_risk = "disruptive"
    params = {"argv": (list, True), "env": (dict, False), "cwd": (str, False)}
    schema = {
        "argv": Annotated[list[str], msgspec.Meta(min_length=1)],
        "env": dict[Annotated[str, msgspec.Meta(pattern=ENV_NAME_RE.pattern)], str],
    }

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

    def checked_labels(self, params: dict[str, Any]) -> list[str]:
        return list((params.get("env") or {}).values())  # arguments are literal: no templates in them

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        env = minimal_env()
        # Every label value is checked against the strict pattern; one failure refuses the step.
        env.update({name: ctx.label(label) for name, label in (params.get("env") or {}).items()})
        env["TRADING_OPS_EPISODE_ID"] = str(ctx.episode_id)
        return await run_argv(
            params["argv"],
            env,
            timeout,
            ctx.config.reconciler.output_limit_bytes,
            cwd=params.get("cwd"),
            on_start=ctx.process_started,
        )


def minimal_env() -> dict[str, str]:
    """The environment a command gets from the reconciler: PATH, locale, HOME and TZ, never its secrets."""
    return {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}


def _resolve(program: str, env: dict[str, str] | None, cwd: str | None) -> str:
    """The executable `program` names, found as execvp would; Refused when there is none."""
    if os.sep in program:
        path = program if os.path.isabs(program) else os.path.join(cwd or os.curdir, program)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise Refused(f"cannot start {program!r}: no such executable")
        return program  # a relative path is resolved against the command's cwd, as execvp does
    found = shutil.which(program, path=(env if env is not None else os.environ).get("PATH", os.defpath))
    if not found:
        raise Refused(f"cannot start {program!r}: not found on PATH")
    return found


def _wrapped(argv: list[str], env: dict[str, str] | None, cwd: str | None) -> list[str]:
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-I", "-S", "-c", PDEATHSIG_WRAPPER, str(os.getpid()), _resolve(argv[0], env, cwd), *argv]


async def run_argv(
    argv: list[str],
    env: dict[str, str] | None,
    timeout: float,
    limit: int,
    cwd: str | None = None,
    on_start: Callable[[int], Awaitable[None]] | None = None,
) -> Result:
    """Run argv in its own process group; on timeout kill the whole group. Output is truncated.

    On Linux the command dies with the reconciler (PR_SET_PDEATHSIG); `on_start` gets the group's id so the
    caller can record it and kill what is left of the group after a crash."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *_wrapped(argv, env, cwd),
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
        if on_start is not None:
            try:
                await on_start(proc.pid)
            except Exception:  # the record is a safety net; the step runs without it
                log.exception("recording process group %s failed", proc.pid)
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
