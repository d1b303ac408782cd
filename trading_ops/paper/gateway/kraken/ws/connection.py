"""One WebSocket connection of the gateway: its subscriptions, its outgoing queue and writer (a heartbeat when idle),
its message-rate bucket, and how a fault silences or closes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from trading_ops.paper.gateway.kraken.ws.messages import HEARTBEAT, dumps

LOG = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0  # a subscribed connection idle this long gets a heartbeat
MAX_QUEUED = 10_000  # messages waiting for a slow reader; past it the connection is closed (1008)
MESSAGES_PER_SECOND = 50.0  # requests a connection may send per second on average (Kraken publishes no number)
MESSAGE_BURST = 100.0
# A connection refused this many requests for its rate is closed (1008): a storm never ties the server up.
MAX_REFUSED = 500
HEARTBEAT_TEXT = dumps(HEARTBEAT)
CLOSE_FLUSH_SECONDS = 5.0  # how long a closing connection's queued messages may take to go out


@dataclass
class Subscription:
    """One channel (and symbol) a connection subscribed to; `silenced` by a fault until subscribed again."""

    channel: str
    symbol: str = ""
    depth: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    silenced: bool = False
    sequence: int = 0  # the private channels' message sequence

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence


class Connection:
    """A client's socket on the public or the private endpoint."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, connection_id: int, private: bool) -> None:
        self.ws = ws
        self.request = request
        self.id = connection_id
        self.private = private
        self.address = request.remote or ""
        self.subs: dict[tuple[str, str], Subscription] = {}
        self.silent_until: float | None = None  # a whole-socket silence: nothing is sent until then (inf: never)
        self.account = ""  # the account of the token its private requests carry
        self._queue: asyncio.Queue[str | tuple[int, str]] = asyncio.Queue(MAX_QUEUED)
        self.closing = False  # a close is on its way: nothing more is read
        self._tokens = MESSAGE_BURST
        self._refilled = time.monotonic()
        self._refused = 0
        self._writer: asyncio.Task[None] | None = None
        self._held: list[Any] | None = None  # channel messages held back while a request is being answered

    # -- sending ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"kraken-ws-writer-{self.id}")

    def send(self, message: Any) -> None:
        """Queue one message; a reader too slow to keep up is disconnected rather than held in memory."""
        if self.ws.closed or self.closing:
            return
        if self._held is not None and "channel" in message:
            self._held.append(message)
            return
        try:
            self._queue.put_nowait(dumps(message))
        except asyncio.QueueFull:
            LOG.warning("websocket %d (%s): %d messages unread, closing", self.id, self.address, MAX_QUEUED)
            self.close_soon(1008, "slow reader")

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """While a request is answered, its channel events wait: the answer goes first (an order's ack before its
        executions), then what the request caused, in order."""
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            for message in held:
                self.send(message)

    def silent(self) -> bool:
        return self.silent_until is not None and time.monotonic() < self.silent_until

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not self.ws.closed:
                try:
                    async with asyncio.timeout(HEARTBEAT_SECONDS):
                        text = await self._queue.get()
                except TimeoutError:
                    if not self.subs:
                        continue
                    text = HEARTBEAT_TEXT
                if isinstance(text, tuple):  # a close, after everything queued before it
                    await self.ws.close(code=text[0], message=text[1].encode())
                    return
                if self.silent():
                    continue
                await self.ws.send_str(text)

    async def stop(self) -> None:
        """Stop writing; a close on its way is sent first (what was queued before it included), for a while."""
        if self._writer is not None:
            if self.closing and not self.ws.closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_FLUSH_SECONDS)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    # -- closing ----------------------------------------------------------------------------------------------
    def close_soon(self, code: int, reason: str) -> None:
        """Close with `code`: 1006 is no close frame at all (the connection just drops), any other a close frame
        sent after what is already queued."""
        if code == 1006:
            if self.request.transport is not None:
                self.request.transport.abort()
            return
        if self.closing:
            return
        self.closing = True
        try:
            self._queue.put_nowait((code, reason))
        except asyncio.QueueFull:
            task = asyncio.create_task(self.ws.close(code=code, message=reason.encode()), name=f"ws-close-{self.id}")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def storming(self) -> bool:
        """Refused MAX_REFUSED requests for its rate: a storm, to be closed."""
        return self._refused >= MAX_REFUSED

    # -- rate -------------------------------------------------------------------------------------------------
    def admit(self) -> bool:
        """Count one request against the connection's message rate; False when past it."""
        now = time.monotonic()
        self._tokens = min(MESSAGE_BURST, self._tokens + (now - self._refilled) * MESSAGES_PER_SECOND)
        self._refilled = now
        if self._tokens < 1:
            self._refused += 1
            return False
        self._tokens -= 1
        return True
