"""One WebSocket client of the Binance dialect: its outgoing queue and writer, so a slow reader never holds up the
market, and its close."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

LOG = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # messages waiting for a slow reader; past it the socket is closed (1008)
MAX_MESSAGE_BYTES = 64 * 1024  # a client's request: far more than any takes
CLOSE_FLUSH_SECONDS = 2.0


def dumps(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"))


class Socket:
    """A client's socket: `send` queues, a writer task sends in order; `close` ends it from the server's side."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, number: int) -> None:
        self.ws = ws
        self.request = request
        self.number = number
        self.address = request.remote or ""
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(MAX_QUEUED)
        self._writer: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"binance-ws-writer-{self.number}")

    def send(self, message: Any) -> None:
        if self.ws.closed or self.close_code is not None:
            return
        try:
            self._queue.put_nowait(dumps(message))
        except asyncio.QueueFull:
            LOG.warning("binance websocket %d (%s): %d messages unread, closing", self.number, self.address, MAX_QUEUED)
            self.close(1008)

    def close(self, code: int = 1000) -> None:
        """Close after what is queued (1006: at once, as a dropped connection)."""
        if self.close_code is not None:
            return
        self.close_code = code
        if code == 1006 and self.request.transport is not None:
            self.request.transport.abort()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def _write(self) -> None:
        while True:
            text = await self._queue.get()
            if text is None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(code=self.close_code or 1000), CLOSE_FLUSH_SECONDS)
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def messages(self) -> Any:
        """The client's JSON requests until it leaves (None for one that is not JSON)."""
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                yield json.loads(msg.data)
            except ValueError:
                yield None

    async def finish(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        if not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.close()
