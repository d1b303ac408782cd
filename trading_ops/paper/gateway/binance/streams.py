"""The Binance dialect's market streams (`/stream/ws/<stream>`, as wss://stream.binance.com:9443/ws): a client
subscribes with `{"method": "SUBSCRIBE", "params": ["btcusd@depth@100ms"], "id": 1}` (answered `{"result": null,
"id": 1}`) and gets each stream's events raw: `depthUpdate` diffs with update ids, `trade`, `24hrTicker`, and the
`bookTicker` (which carries no event type). The symbols of each new subscription are told to `on_subscribe` (the
dialect ends their stale_market_data, as a subscription on Kraken's WebSocket does)."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from trading_ops.paper.gateway.binance.market import Event
from trading_ops.paper.gateway.binance.sockets import MAX_MESSAGE_BYTES, Socket

LOG = logging.getLogger(__name__)

# <symbol>@depth (1000 ms) and @depth@100ms carry the same diffs here (sent at each change of the book); trade,
# ticker, miniTicker (what ccxt.pro's watch_ticker subscribes), bookTicker.
STREAM_NAME = re.compile(r"^([a-z0-9]{2,20})@(depth(?:@100ms|@1000ms)?|trade|ticker|miniTicker|bookTicker)$")
MAX_STREAMS = 1024  # per connection, as Binance allows
INVALID_REQUEST = 2  # Binance's error code for a request it cannot read


def canonical(stream: str) -> str | None:
    """The event stream a subscription name receives (`btcusd@depth@100ms` -> `btcusd@depth`); None if unknown."""
    match = STREAM_NAME.match(stream)
    if match is None:
        return None
    kind = match.group(2)
    return f"{match.group(1)}@{'depth' if kind.startswith('depth') else kind}"


class MarketStreams:
    """Every market-stream socket and the streams each subscribed to."""

    def __init__(
        self, known_ids: Iterable[str], on_subscribe: Callable[[list[str]], Awaitable[None]] | None = None
    ) -> None:
        self.known = {i.lower() for i in known_ids}
        self.on_subscribe = on_subscribe  # the symbols (ids in lower case) of a new subscription's streams
        self._subs: dict[Socket, set[str]] = {}
        self._numbers = itertools.count(1)
        self.sent = 0  # events sent (what a test counts)
        # The binance_depth_silent fault: the depth streams each socket stays subscribed to and is sent nothing of,
        # and (persistent) the depth streams whose new subscriptions are silent too.
        self._silenced: dict[Socket, set[str]] = {}
        self.silence_new: set[str] = set()

    async def handle(self, request: web.Request, first: str) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        sock = Socket(ws, request, next(self._numbers))
        subs: set[str] = set()
        if (name := canonical(first)) is not None:  # /ws/<stream>: subscribed from the start
            subs.add(name)
        self._subs[sock] = subs
        sock.start()
        try:
            await self._subscribed(list(subs))
            async for message in sock.messages():
                await self._subscribed(self._answer(sock, subs, message))
        finally:
            self._subs.pop(sock, None)
            self._silenced.pop(sock, None)
            await sock.finish()
        return ws

    async def _subscribed(self, names: list[str]) -> None:
        known = sorted({name.split("@")[0] for name in names} & self.known)
        if known and self.on_subscribe is not None:
            await self.on_subscribe(known)

    def _answer(self, sock: Socket, subs: set[str], message: Any) -> list[str]:
        """Answer one request; the streams it subscribed to."""
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            sock.send(
                {"error": {"code": INVALID_REQUEST, "msg": "Invalid request: request ID must be an unsigned integer"}}
            )
            return []
        request_id = message.get("id")
        method, params = message["method"], message.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            sock.send({"result": sorted(subs), "id": request_id})
            return []
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list):
            sock.send(
                {"error": {"code": INVALID_REQUEST, "msg": "Invalid request: unknown variable"}, "id": request_id}
            )
            return []
        names = []
        for stream in params:
            name = canonical(stream) if isinstance(stream, str) else None
            if name is None or name.split("@")[0] not in self.known:
                sock.send(
                    {
                        "error": {"code": INVALID_REQUEST, "msg": f"Invalid request: invalid stream {stream!r}"},
                        "id": request_id,
                    }
                )
                return []
            names.append(name)
        if method == "SUBSCRIBE":
            if len(subs | set(names)) > MAX_STREAMS:
                sock.send(
                    {"error": {"code": INVALID_REQUEST, "msg": "Invalid request: too many streams"}, "id": request_id}
                )
                return []
            subs.update(names)
            silenced = self._silenced.setdefault(sock, set())
            for name in names:  # a new subscription heals a silent stream, unless the fault is persistent
                (silenced.add if name in self.silence_new else silenced.discard)(name)
        else:
            subs.difference_update(names)
        sock.send({"result": None, "id": request_id})
        return names if method == "SUBSCRIBE" else []

    def publish(self, events: Iterable[Event]) -> None:
        for stream, event in events:
            for sock, subs in self._subs.items():
                if stream in subs and stream not in self._silenced.get(sock, ()):
                    sock.send(event)
                    self.sent += 1

    def silence_depth(self, ids: Iterable[str], persistent: bool) -> int:
        """The depth streams of the symbols `ids` (Binance ids) stay subscribed on every socket and send nothing more
        (the other streams go on: the market still moves); a new SUBSCRIBE of one heals it, unless `persistent`, until
        `clear`. Returns how many subscriptions went silent."""
        streams = {f"{i.lower()}@depth" for i in ids}
        if persistent:
            self.silence_new |= streams
        count = 0
        for sock, subs in self._subs.items():
            hit = subs & streams
            self._silenced.setdefault(sock, set()).update(hit)
            count += len(hit)
        return count

    def clear(self) -> None:
        """Every depth stream speaks again."""
        self._silenced.clear()
        self.silence_new = set()

    def drop(self, code: int = 1006) -> None:
        """Every socket dropped (the venue's outage or dropped connections)."""
        for sock in list(self._subs):
            sock.close(code)

    def connections(self) -> int:
        return len(self._subs)
