"""The Binance dialect's user data stream, both ways Binance offers it:

- the WebSocket API (`/ws-api/v3`, as wss://ws-api.binance.com:443/ws-api/v3), which ccxt.pro's stock binance client
  uses for spot: a signed `userDataStream.subscribe.signature` request answered `{"subscriptionId": n}`, then each
  event as `{"subscriptionId": n, "event": {...}}` on that connection;
- a listen key (`POST/PUT/DELETE /api/v3/userDataStream`, a 60-minute life that each PUT renews) and its stream
  `/stream/ws/<listenKey>`, each event raw; a key that lapses sends `listenKeyExpired` and closes.

Events: `executionReport` (NEW, TRADE, CANCELED), `outboundAccountPosition` after each change of the account's
balances, `balanceUpdate` for a change no order made; `eventStreamTerminated` on the WebSocket API when the
subscription ends from the server's side."""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from trading_ops.paper.gateway.binance.auth import BinanceAuth, sign
from trading_ops.paper.gateway.binance.errors import (
    INVALID_LISTEN_KEY,
    INVALID_LISTEN_KEY_MSG,
    INVALID_SIGNATURE,
    INVALID_SIGNATURE_MSG,
    REJECTED_MBX_KEY,
    REJECTED_MBX_KEY_MSG,
    BinanceError,
    mandatory,
)
from trading_ops.paper.gateway.binance.sockets import MAX_MESSAGE_BYTES, Socket
from trading_ops.paper.gateway.binance.weights import WeightLimiter

LOG = logging.getLogger(__name__)

LISTEN_KEY_SECONDS = 3600.0  # a listen key's life without a keepalive (Binance's 60 minutes)
LISTEN_KEY_LENGTH = 60
SUBSCRIBE_WEIGHT = 2
UNSUPPORTED = -1020
UNSUPPORTED_MSG = "This operation is not supported."


@dataclass
class Subscriber:
    """One user stream: a WebSocket API subscription (`subscription_id`) or a listen key's socket (`listen_key`)."""

    sock: Socket
    account: str
    subscription_id: int | None = None
    listen_key: str = ""
    silenced: bool = False  # acked, then silent (the binance_user_stream_silent fault)


@dataclass
class ListenKey:
    key: str
    account: str
    api_key: str
    expires: float
    subscribers: list[Subscriber] = field(default_factory=list)


class UserStreams:
    """The listen keys, the WebSocket API connections and every account's user streams."""

    def __init__(
        self,
        auth: BinanceAuth,
        weights: WeightLimiter,
        now_ms: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.auth = auth
        self.weights = weights
        self.now_ms = now_ms
        self.clock = clock
        self.listen_keys: dict[str, ListenKey] = {}
        self.subscribers: list[Subscriber] = []
        self.sockets: set[Socket] = set()  # every open socket, subscribed or not (an outage drops them all)
        self._numbers = itertools.count(1)
        self._subscription_ids = itertools.count(0)
        self.silence_new = False  # the silent fault with `persistent`: new subscriptions are silent too
        self.refuse_new = False  # the refused fault: new subscriptions and listen keys answer -2015
        self.sent = 0

    # -- listen keys (REST) -----------------------------------------------------------------------------------
    def create_listen_key(self, api_key: str, account: str) -> dict[str, str]:
        """POST userDataStream: the account's live key (renewed), or a new one."""
        if self.refuse_new:
            raise BinanceError(REJECTED_MBX_KEY, REJECTED_MBX_KEY_MSG)
        for lk in self.listen_keys.values():
            if lk.api_key == api_key and lk.expires > self.clock():
                lk.expires = self.clock() + LISTEN_KEY_SECONDS
                return {"listenKey": lk.key}
        key = secrets.token_urlsafe(48)[:LISTEN_KEY_LENGTH].replace("-", "A").replace("_", "b")
        self.listen_keys[key] = ListenKey(key, account, api_key, self.clock() + LISTEN_KEY_SECONDS)
        return {"listenKey": key}

    def _live(self, params: Mapping[str, str], account: str) -> ListenKey:
        key = params.get("listenKey", "")
        if not key:
            raise mandatory("listenKey")
        lk = self.listen_keys.get(key)
        if lk is None or lk.account != account or lk.expires <= self.clock():
            raise BinanceError(INVALID_LISTEN_KEY, INVALID_LISTEN_KEY_MSG)
        return lk

    def keepalive(self, params: Mapping[str, str], account: str) -> dict[str, Any]:
        self._live(params, account).expires = self.clock() + LISTEN_KEY_SECONDS
        return {}

    def close_listen_key(self, params: Mapping[str, str], account: str) -> dict[str, Any]:
        lk = self._live(params, account)
        self.listen_keys.pop(lk.key, None)
        for sub in lk.subscribers:
            sub.sock.close(1000)
        return {}

    def is_listen_key(self, name: str) -> bool:
        return name in self.listen_keys

    def expire(self, now: float | None = None, *, every: bool = False) -> list[str]:
        """The keys whose life ran out (all with `every`): each socket told `listenKeyExpired` and closed."""
        now = self.clock() if now is None else now
        gone = [k for k, lk in self.listen_keys.items() if every or lk.expires <= now]
        for key in gone:
            lk = self.listen_keys.pop(key)
            for sub in lk.subscribers:
                sub.sock.send({"e": "listenKeyExpired", "E": self.now_ms(), "listenKey": key})
                sub.sock.close(1000)
        return gone

    async def handle_listen_key(self, request: web.Request, key: str) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        sock = Socket(ws, request, next(self._numbers))
        lk = self.listen_keys.get(key)
        sock.start()
        if lk is None:
            sock.close(1000)
            await sock.finish()
            return ws
        self.sockets.add(sock)
        sub = Subscriber(sock, lk.account, listen_key=key, silenced=self.silence_new)
        lk.subscribers.append(sub)
        self.subscribers.append(sub)
        try:
            async for _ in sock.messages():
                pass
        finally:
            self._forget(sock)
            self.sockets.discard(sock)
            await sock.finish()
        return ws

    # -- the WebSocket API ------------------------------------------------------------------------------------
    async def handle_ws_api(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        sock = Socket(ws, request, next(self._numbers))
        sock.start()
        self.sockets.add(sock)
        try:
            async for message in sock.messages():
                sock.send(self._ws_api_answer(sock, message))
        finally:
            self._forget(sock)
            self.sockets.discard(sock)
            await sock.finish()
        return ws

    def _forget(self, sock: Socket) -> None:
        self.subscribers = [s for s in self.subscribers if s.sock is not sock]
        for lk in self.listen_keys.values():
            lk.subscribers = [s for s in lk.subscribers if s.sock is not sock]

    def _ws_api_answer(self, sock: Socket, message: Any) -> dict[str, Any]:
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            return {"id": None, "status": 400, "error": {"code": -1000, "msg": "Malformed request."}}
        request_id = message.get("id")
        params = message.get("params") or {}
        try:
            if not isinstance(params, dict):
                raise mandatory("params")
            method = message["method"]
            headers = self.weights.charge(sock.address, SUBSCRIBE_WEIGHT if method.startswith("userDataStream") else 1)
            if method == "ping":
                result: dict[str, Any] = {}
            elif method == "time":
                result = {"serverTime": self.now_ms()}
            elif method == "userDataStream.subscribe.signature":
                result = {"subscriptionId": self._subscribe(sock, {str(k): str(v) for k, v in params.items()})}
            elif method == "userDataStream.unsubscribe":
                result = self._unsubscribe(sock, params.get("subscriptionId"))
            else:
                raise BinanceError(UNSUPPORTED, UNSUPPORTED_MSG)
        except BinanceError as exc:
            return {"id": request_id, "status": exc.status, "error": exc.body()}
        used = int(headers.get("X-MBX-USED-WEIGHT-1M", "0"))
        limits = [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": self.weights.limit,
                "count": used,
            }
        ]
        return {"id": request_id, "status": 200, "result": result, "rateLimits": limits}

    def _subscribe(self, sock: Socket, params: dict[str, str]) -> int:
        """A signed subscription: the parameters but `signature`, sorted by name, joined as a query string and signed
        with the key's secret (Binance's WebSocket API signature)."""
        api_key = params.get("apiKey", "")
        account = self.auth.account_of(api_key)
        signature = params.get("signature", "")
        if not signature:
            raise mandatory("signature")
        payload = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "signature")
        if sign(self.auth.secret_of(api_key), payload) != signature.lower():
            raise BinanceError(INVALID_SIGNATURE, INVALID_SIGNATURE_MSG)
        self.auth.check_time(params)
        if self.refuse_new:
            raise BinanceError(REJECTED_MBX_KEY, REJECTED_MBX_KEY_MSG)
        number = next(self._subscription_ids)
        self.subscribers.append(Subscriber(sock, account, subscription_id=number, silenced=self.silence_new))
        return number

    def _unsubscribe(self, sock: Socket, number: Any) -> dict[str, Any]:
        self.subscribers = [
            s for s in self.subscribers if not (s.sock is sock and (number is None or s.subscription_id == number))
        ]
        return {}

    # -- events -----------------------------------------------------------------------------------------------
    def publish(self, account: str, event: dict[str, Any]) -> None:
        for sub in self.subscribers:
            if sub.account != account or sub.silenced:
                continue
            if sub.subscription_id is not None:
                sub.sock.send({"subscriptionId": sub.subscription_id, "event": event})
            else:
                sub.sock.send(event)
            self.sent += 1

    def silence(self, persistent: bool) -> int:
        """Every user stream stays open and subscribed, and says nothing more; `persistent`: new ones too."""
        for sub in self.subscribers:
            sub.silenced = True
        self.silence_new = persistent
        return len(self.subscribers)

    def terminate(self) -> int:
        """The WebSocket API's subscriptions end from the server's side (`eventStreamTerminated`)."""
        ended = [s for s in self.subscribers if s.subscription_id is not None]
        for sub in ended:
            sub.sock.send(
                {"subscriptionId": sub.subscription_id, "event": {"e": "eventStreamTerminated", "E": self.now_ms()}}
            )
        self.subscribers = [s for s in self.subscribers if s.subscription_id is None]
        return len(ended)

    def clear(self) -> None:
        self.silence_new = False
        self.refuse_new = False
        for sub in self.subscribers:
            sub.silenced = False

    def drop(self, code: int = 1006) -> None:
        for sock in list(self.sockets):
            sock.close(code)


def account_position(balances: list[dict[str, str]], now: int) -> dict[str, Any]:
    return {
        "e": "outboundAccountPosition",
        "E": now,
        "u": now,
        "B": [{"a": b["asset"], "f": b["free"], "l": b["locked"]} for b in balances],
    }


def balance_update(asset: str, delta: Decimal, now: int) -> dict[str, Any]:
    return {"e": "balanceUpdate", "E": now, "a": asset, "d": f"{delta:.8f}", "T": now}
