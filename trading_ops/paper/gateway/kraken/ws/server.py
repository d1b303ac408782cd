"""The gateway's WebSocket endpoints (Kraken Spot WebSocket v2): the public one at PUBLIC_PATH and the private one
(a token from REST GetWebSocketsToken in every request) at PRIVATE_PATH, served on the gateway's aiohttp app.

A connection gets `status` at once, a `heartbeat` whenever it is subscribed and idle for a second, `pong` for each
`ping` (its `req_id` echoed). Every request is answered in v2's envelope; what cannot be one (not JSON, not an
object, a binary frame, nesting too deep) is answered `Malformed request`, a frame over MAX_FRAME_BYTES closes the
socket with 1009, a connection past its message rate is answered `Exceeded msg rate` (closed with 1008 when it goes
on), and an address past MAX_CONNECTIONS_PER_ADDRESS open sockets is refused (429) before the upgrade. Nothing a
client sends takes the server down or holds it up: an unexpected error is logged and answered as an internal error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

from trading_ops.bot.broker import Quote, VenueFill, VenueOrder
from trading_ops.paper.faults import FaultModel
from trading_ops.paper.gateway.kraken.account import AccountEndpoints
from trading_ops.paper.gateway.kraken.api import Pairs
from trading_ops.paper.gateway.kraken.ws.connection import Connection
from trading_ops.paper.gateway.kraken.ws.faults import MSG_RATE, StreamFaults
from trading_ops.paper.gateway.kraken.ws.messages import (
    E_CHANNEL,
    E_MALFORMED,
    E_METHOD,
    E_MSG_RATE,
    RequestError,
    answer,
    now_text,
    status,
)
from trading_ops.paper.gateway.kraken.ws.ohlc import Candles
from trading_ops.paper.gateway.kraken.ws.private import MAINTENANCE, TRADING_METHODS, PrivateChannels, Tokens
from trading_ops.paper.gateway.kraken.ws.public import PUBLIC_CHANNELS, PublicChannels
from trading_ops.paper.venue import PaperVenue
from trading_ops.tasks import stop_tasks
from trading_ops.venues.call_counter import CounterLimiter

LOG = logging.getLogger(__name__)

PUBLIC_PATH = "/ws/v2"
PRIVATE_PATH = "/ws-auth/v2"
MAX_FRAME_BYTES = 64 * 1024
MAX_CONNECTIONS_PER_ADDRESS = 256
HOUSEKEEPING_SECONDS = 0.5
E_INTERNAL = "EGeneral:Internal error"


class KrakenWebSocket:
    """Both endpoints' connections, the channels they subscribe to, and the stream faults in force."""

    def __init__(
        self,
        venue: PaperVenue,
        accounts: Mapping[str, PaperVenue],
        pairs: Pairs,
        endpoints: AccountEndpoints,
        fault_model: FaultModel,
        check_service: Callable[[str], None],
        call_counter: CounterLimiter | None = None,
        on_subscribe: Callable[[list[str]], Awaitable[None]] | None = None,
        candles: Candles | None = None,
    ) -> None:
        self.on_subscribe = on_subscribe  # a public subscription's symbols (it ends their stale_market_data)
        self.connections: set[Connection] = set()
        self._per_address: Counter[str] = Counter()
        self._ids = itertools.count(secrets.randbelow(2**40) * 1000)
        self.system = "online"
        self.model = fault_model
        self.tokens = Tokens(fault_model.now)
        self.faults = StreamFaults(fault_model, self._all, venue.symbols, self.set_system)
        self.public = PublicChannels(
            venue, accounts, pairs, self._all, self.faults.corrupt, self.faults.silenced, candles
        )
        self.private = PrivateChannels(
            self.tokens,
            pairs,
            accounts,
            endpoints,
            fault_model,
            check_service,
            self._all,
            call_counter,
            silenced=self.faults.silenced,
        )
        self._task: asyncio.Task[None] | None = None

    def _all(self) -> list[Connection]:
        return list(self.connections)

    # -- what the market and the accounts tell it -------------------------------------------------------------
    async def on_quote(self, quote: Quote) -> None:
        self.public.on_quote(quote)

    def account_events(self, account: str, venue: PaperVenue) -> tuple[Any, Any]:
        """on_order and on_fill callbacks of `account` (BrokerEvents of its paper venue)."""

        async def on_order(order: VenueOrder) -> None:
            await self.private.on_order(account, order)

        async def on_fill(fill: VenueFill) -> None:
            self.public.on_fill(fill, venue)
            await self.private.on_fill(account, fill)

        return on_order, on_fill

    def set_system(self, system: str) -> None:
        """The system's state changed (maintenance, online): every connection is told, market data paused."""
        self.system = system
        self.public.paused = system != "online"
        for conn in self._all():
            conn.send(status(system, conn.id))

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._housekeeping(), name="kraken-ws-housekeeping")

    async def _housekeeping(self) -> None:
        """Ends a timed maintenance (status online again)."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            if self.system != "online" and not self.model.active(MAINTENANCE):
                self.model.end(MAINTENANCE)
                LOG.warning("websocket: maintenance over, the system is online")
                self.set_system("online")

    async def stop(self) -> None:
        await stop_tasks([self._task])
        for conn in self._all():
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"Going away")

    # -- connections ------------------------------------------------------------------------------------------
    async def handle_public(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, private=False)

    async def handle_private(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, private=True)

    async def _serve(self, request: web.Request, private: bool) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, autoping=True)
        if not ws.can_prepare(request).ok:
            return web.json_response({"error": "a WebSocket endpoint: connect with a WebSocket client"}, status=400)
        address = request.remote or ""
        if self._per_address[address] >= MAX_CONNECTIONS_PER_ADDRESS:
            LOG.warning("websocket from %s refused: %d connections open", address, MAX_CONNECTIONS_PER_ADDRESS)
            return web.json_response({"error": "too many connections"}, status=429)
        async with self._registered(ws, request, private) as conn:
            await ws.prepare(request)
            conn.start()
            conn.send(status(self.system, conn.id))
            async for msg in ws:
                if conn.closing:
                    break
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(conn, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    conn.send(answer(None, None, now_text(), error=E_MALFORMED))
                else:
                    break
        return ws

    @contextlib.asynccontextmanager
    async def _registered(
        self, ws: web.WebSocketResponse, request: web.Request, private: bool
    ) -> AsyncIterator[Connection]:
        conn = Connection(ws, request, next(self._ids), private)
        self.connections.add(conn)
        self._per_address[conn.address] += 1
        try:
            yield conn
        finally:
            self.connections.discard(conn)
            self._per_address[conn.address] -= 1
            if self._per_address[conn.address] <= 0:
                del self._per_address[conn.address]
            await conn.stop()

    async def _on_text(self, conn: Connection, text: str) -> None:
        time_in = now_text()
        if not conn.admit():
            conn.send(answer(None, None, time_in, error=E_MSG_RATE))
            if conn.storming():
                LOG.warning("websocket %d (%s): a message storm, closing it", conn.id, conn.address)
                conn.close_soon(1008, E_MSG_RATE)
            return
        try:
            request = json.loads(text, parse_float=Decimal)
        except (ValueError, RecursionError):
            conn.send(answer(None, None, time_in, error=E_MALFORMED))
            return
        if not isinstance(request, dict):
            conn.send(answer(None, None, time_in, error=E_MALFORMED))
            return
        method = request.get("method")
        req_id = request.get("req_id")
        if isinstance(req_id, bool) or not isinstance(req_id, int):
            req_id = None
        params = request.get("params", {})
        if not isinstance(method, str) or not isinstance(params, dict):
            conn.send(answer(None, req_id, time_in, error=E_MALFORMED))
            return
        method = method[:64]
        try:
            if self.model.take(MSG_RATE):
                raise RequestError(E_MSG_RATE)
            with conn.answering():
                await self._dispatch(conn, method, params, req_id, time_in)
        except RequestError as exc:
            conn.send({**answer(method, req_id, time_in, error=exc.error), **exc.extra})
        except Exception:
            LOG.exception("websocket %d: %s failed", conn.id, method)
            conn.send(answer(method, req_id, time_in, error=E_INTERNAL))

    async def _dispatch(self, conn: Connection, method: str, params: dict[str, Any], req_id: Any, time_in: str) -> None:
        if method == "ping":
            message = {"method": "pong", "req_id": req_id, "time_in": time_in, "time_out": now_text()}
            conn.send(message if req_id is not None else {k: v for k, v in message.items() if k != "req_id"})
        elif method in ("subscribe", "unsubscribe"):
            channel = params.get("channel")
            if conn.private and channel not in PUBLIC_CHANNELS:
                if method == "subscribe":
                    await self.private.subscribe(conn, params, req_id, time_in)
                else:
                    self.private.unsubscribe(conn, params, req_id, time_in)
            elif not conn.private:
                if method == "subscribe":
                    symbols = self.public.subscribe(conn, params, req_id, time_in)
                    if symbols and self.on_subscribe is not None:
                        await self.on_subscribe(symbols)
                else:
                    self.public.unsubscribe(conn, params, req_id, time_in)
            else:
                raise RequestError(E_CHANNEL)
        elif method in TRADING_METHODS and conn.private:
            await self.private.trade(conn, method, params, req_id, time_in)
        else:
            raise RequestError(E_METHOD)
