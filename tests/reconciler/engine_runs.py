"""The reconciler engine's runs as tests see them: the owner id of a reconciler that died holding a claim, and waiting
until the engine has started (and finished) whatever it would start."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from aiohttp import web

from trading_ops.reconciler import keys
from trading_ops.reconciler.processes import ProcessId


def dead_owner(instance: str) -> str:
    """The owner id a reconciler process had, after that process died (as after kill -9)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = ProcessId.of(proc.pid)
    proc.kill()
    proc.wait()
    assert identity is not None
    return f"{instance}:{identity.token()}.deadbeef"


async def engine_settled(app: web.Application, passes: int = 3, deadline: float = 20.0) -> None:
    """Wait until the engine's loop has read the ledger `passes` more times and no run is in progress: whatever it
    would start from what is stored now has been started and has finished, so what a test then finds not done was
    not going to be done. (The first counted pass may have begun before the caller's last write: count more.)"""
    engine = app[keys.ENGINE]
    done = 0
    passed = asyncio.Event()
    dispatch = engine.dispatch_once

    async def counted() -> None:
        nonlocal done
        await dispatch()
        done += 1
        passed.set()

    engine.dispatch_once = counted  # type: ignore[method-assign]
    try:
        async with asyncio.timeout(deadline):
            while done < passes or engine.runs:
                passed.clear()
                await passed.wait()
    except TimeoutError:
        raise AssertionError(f"the engine did not settle in {deadline}s: {done} passes, runs {sorted(engine.runs)}")
    finally:
        del engine.dispatch_once  # the class's method again
