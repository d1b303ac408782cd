"""The gateway's stream faults (`POST /chaos/ws_*`, `trading-ops gateway-chaos ws_*`): a channel acked and then
silent while heartbeats flow, a whole socket silent, a socket closed with 1006 or 1001, a corrupted book checksum
(once or persistently), a gap in executions' sequence, a trade snapshot repeating fills, ESession:Invalid session,
Exceeded msg rate, and system maintenance."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from trading_ops.paper.faults import FaultModel
from trading_ops.paper.gateway.kraken.ws.connection import Connection
from trading_ops.paper.gateway.kraken.ws.private import INVALID_SESSION, MAINTENANCE, REPEAT_FILLS, SEQUENCE_GAP

MAX_SECONDS = 3600.0
MAX_COUNT = 10_000
MSG_RATE = "ws_msg_rate"
CHECKSUM = "ws_book_checksum"
CHECKSUM_MODES = ("once", "persistent")
CLOSE_CODES = (1006, 1001)
ENDPOINTS = ("public", "private", "all")
CHANNELS = ("book", "trade", "ticker", "instrument", "ohlc", "executions", "balances")
WS_FAULTS = (
    "ws_silent_channel",
    "ws_silent_socket",
    "ws_close",
    CHECKSUM,
    SEQUENCE_GAP,
    REPEAT_FILLS,
    INVALID_SESSION,
    MSG_RATE,
    MAINTENANCE,
)
COUNTED = (SEQUENCE_GAP, REPEAT_FILLS, INVALID_SESSION, MSG_RATE)


class StreamFaultError(Exception):
    """A stream fault command with bad arguments (400)."""


def _number(args: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StreamFaultError(f"{key} must be a number")
    if not low <= value <= high:
        raise StreamFaultError(f"{key} must be between {low:g} and {high:g}")
    return float(value)


def _choice(args: Mapping[str, Any], key: str, choices: tuple[Any, ...], default: Any) -> Any:
    value = args.get(key, default)
    if value not in choices:
        raise StreamFaultError(f"{key} must be one of {', '.join(str(c) for c in choices)}")
    return value


class StreamFaults:
    """Applies the stream faults to the connections the hub lists; counted ones wait in the FaultModel."""

    def __init__(
        self,
        model: FaultModel,
        connections: Callable[[], Iterable[Connection]],
        symbols: Iterable[str],
        set_system: Callable[[str], None],
    ) -> None:
        self.model = model
        self.connections = connections
        self.symbols = list(symbols)
        self.set_system = set_system
        # `ws_silent_channel persistent=true`: (channel, v2 symbol or "" for all) whose new subscriptions are silenced
        # too (acked, then nothing), until `clear`: a venue that a resubscribe or a new socket does not heal.
        self.persistent_silence: set[tuple[str, str]] = set()

    def silenced(self, channel: str, symbol: str) -> bool:
        """Whether a new subscription to `channel` of `symbol` starts silenced (a persistent silent channel)."""
        return (channel, "") in self.persistent_silence or (channel, symbol) in self.persistent_silence

    def _endpoint(self, args: Mapping[str, Any]) -> list[Connection]:
        endpoint = _choice(args, "endpoint", ENDPOINTS, "all")
        return [c for c in self.connections() if endpoint == "all" or c.private == (endpoint == "private")]

    async def inject(self, fault: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one stream fault (WS_FAULTS); StreamFaultError for bad arguments."""
        if fault in COUNTED:
            count = int(_number(args, "count", 1, 1, MAX_COUNT))
            self.model.add(fault, count)
            return {"fault": fault, "count": count}
        commands = {
            CHECKSUM: self._checksum,
            "ws_silent_channel": self._silent_channel,
            "ws_silent_socket": self._silent_socket,
            "ws_close": self._close,
            MAINTENANCE: self._maintenance,
        }
        if fault not in commands:
            raise StreamFaultError(f"unknown stream fault {fault}")
        return {"fault": fault, **commands[fault](args)}

    def _checksum(self, args: Mapping[str, Any]) -> dict[str, Any]:
        mode = _choice(args, "mode", CHECKSUM_MODES, "once")
        if mode == "once":
            self.model.add(CHECKSUM, 1)
        else:
            self.model.start(CHECKSUM, None, detail="persistent")
        return {"mode": mode}

    def _silent_channel(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The channel's subscriptions (of `symbol`, or all) get nothing more, heartbeats still flowing, until the
        client subscribes again (`persistent`: its new subscriptions too, on any socket, until `clear`)."""
        channel = _choice(args, "channel", CHANNELS, "book")
        symbol = args.get("symbol", "")
        if symbol and (not isinstance(symbol, str) or symbol.replace("/", "-") not in self.symbols):
            raise StreamFaultError(f"unknown symbol; known: {', '.join(self.symbols)}")
        wanted = symbol.replace("-", "/") if symbol else ""
        persistent = args.get("persistent", False)
        if not isinstance(persistent, bool):
            raise StreamFaultError("persistent must be true or false")
        if persistent and symbol and channel in ("executions", "balances"):
            raise StreamFaultError(f"{channel} has no symbol: a persistent silence is of the whole channel")
        if persistent:
            self.persistent_silence.add((channel, wanted))
        silenced = 0
        for conn in self.connections():
            for (name, sym), sub in conn.subs.items():
                if name == channel and (not wanted or sym == wanted):
                    sub.silenced = True
                    silenced += 1
        heal = "clear" if persistent else "subscribe again"
        return {"channel": channel, "symbol": wanted or "all", "subscriptions": silenced, "heal": heal}

    def _silent_socket(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Every open socket (of `endpoint`) sends nothing, not even heartbeats or pongs, for `seconds` (0: until the
        client reconnects: a new socket is not silent)."""
        seconds = _number(args, "seconds", 0.0, 0.0, MAX_SECONDS)
        conns = self._endpoint(args)
        until = time.monotonic() + seconds if seconds else math.inf
        for conn in conns:
            conn.silent_until = until
        return {"connections": len(conns), "seconds": seconds or "until the client reconnects"}

    def _close(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Every open socket (of `endpoint`) closed: 1001 with a close frame (going away), 1006 without (dropped)."""
        code = int(_choice(args, "code", CLOSE_CODES, 1006))
        conns = self._endpoint(args)
        for conn in conns:
            conn.close_soon(code, "Going away" if code == 1001 else "")
        return {"code": code, "connections": len(conns)}

    def _maintenance(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """`status` says maintenance on every socket, market data stops and orders are refused, for `seconds` (0:
        until cleared); then `status` says online."""
        seconds = _number(args, "seconds", 0.0, 0.0, MAX_SECONDS)
        self.model.start(MAINTENANCE, seconds or None)
        self.set_system("maintenance")
        return {"seconds": seconds or "until cleared"}

    def corrupt(self, checksum: int, snapshot: bool) -> int:
        """The checksum to send: wrong while a checksum fault is in force (`once`: one update; persistent: every
        message, snapshots included)."""
        if self.model.active(CHECKSUM) or (not snapshot and self.model.take(CHECKSUM)):
            return checksum ^ 0x5A5A5A5A
        return checksum

    def clear(self) -> None:
        self.persistent_silence.clear()
        for conn in self.connections():
            conn.silent_until = None
            for sub in conn.subs.values():
                sub.silenced = False
        if self.model.active(MAINTENANCE):
            self.model.end(MAINTENANCE)
            self.set_system("online")
        self.model.end(CHECKSUM)

    def describe(self) -> dict[str, Any]:
        conns = list(self.connections())
        maintenance = self.model.remaining(MAINTENANCE)
        return {
            "connections": len(conns),
            "silent_sockets": sum(1 for c in conns if c.silent()),
            "silent_subscriptions": sum(1 for c in conns for s in c.subs.values() if s.silenced),
            "silent_channels": sorted(f"{c}:{s or 'all'}" for c, s in self.persistent_silence),
            "book_checksum": "persistent" if self.model.active(CHECKSUM) else self.model.count(CHECKSUM),
            "maintenance": maintenance if maintenance is None or math.isfinite(maintenance) else "until cleared",
            **{name: self.model.count(name) for name in COUNTED},
        }
