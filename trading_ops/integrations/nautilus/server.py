"""The bot server (/metrics, /healthz, /readyz, /control) in a thread of its own, off the NautilusTrader node's loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from trading_ops.bot import server
from trading_ops.webconfig import app_ssl_context, describe, load_web_config, secure_app

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0


class ServerThread:
    """Serves `instrumentation` (what trading_ops.bot.server reads: registry, token, control, metrics, state, health,
    readiness) on host:port from a daemon thread with its own event loop. A slow scrape or a command waiting on the
    node never holds up the node's loop, and the node's loop being busy never stops /metrics from answering (a
    stale heartbeat then says so)."""

    def __init__(self, instrumentation: Any, host: str, port: int, web_config_file: str | None = None) -> None:
        self._inst = instrumentation
        self._host = host
        self._port = port
        self._web_config = load_web_config(Path(web_config_file)) if web_config_file else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self) -> None:
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="trading-ops-server", daemon=True)
        self._thread.start()
        self.port = started.result(timeout=START_TIMEOUT_SECONDS)
        log.info(
            "trading-ops server on %s:%s (/metrics, /healthz, /readyz, /control; %s)",
            self._host,
            self.port,
            describe(self._web_config),
        )

    def _run(self, started: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            port = loop.run_until_complete(self._serve())
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(port)
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _serve(self) -> int:
        app = server.create_app(self._inst)
        secure_app(app, self._web_config, server.BEARER_ROUTES)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=app_ssl_context(app))
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT_SECONDS)


async def on_loop(loop: asyncio.AbstractEventLoop, call: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    """Run the coroutine `call()` on `loop` (the node's) from another loop's thread and wait for its result there."""
    future = asyncio.run_coroutine_threadsafe(_call(call), loop)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError:
        future.cancel()
        raise


async def _call(call: Callable[[], Awaitable[Any]]) -> Any:
    return await call()
