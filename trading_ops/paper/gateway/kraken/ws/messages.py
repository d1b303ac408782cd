"""Kraken Spot WebSocket v2's wire vocabulary as the gateway speaks it: the envelope of acks and errors, the error
strings, times in RFC 3339 to the microsecond, and JSON whose numbers are Decimals written at their precision."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

# Kraken's error strings on the WebSocket (v2 answers them in an envelope's `error`).
E_MALFORMED = "Malformed request"
E_METHOD = "Method not found"
E_CHANNEL = "Channel not found"
E_PAIR = "Currency pair not supported"
E_DEPTH = "Subscription depth not supported"
E_ALREADY = "Already subscribed"
E_NOT_SUBSCRIBED = "Subscription Not Found"
E_SESSION = "ESession:Invalid session"
E_MSG_RATE = "Exceeded msg rate"
E_ARGUMENTS = "EGeneral:Invalid arguments"
E_UNAVAILABLE = "EService:Unavailable"
API_VERSION = "v2"
VERSION = "2.0.10"


def now_text(at: datetime | None = None) -> str:
    """A time as Kraken's v2 writes it: RFC 3339 in UTC, to the microsecond (2023-09-21T14:36:57.428972Z)."""
    at = datetime.now(UTC) if at is None else at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(value: Any) -> str:
    """JSON text with every Decimal written as a plain number at its own precision ("0.10000000" stays eight
    places): the book's checksum is computed over the numbers as they are on the wire."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def answer(
    method: str | None, req_id: Any, time_in: str, result: Any = None, error: str | None = None
) -> dict[str, Any]:
    """The v2 answer to a request: `success`, then `result` or `error`, `time_in` and `time_out`, `req_id` echoed
    (no `method` for a request that names none)."""
    message: dict[str, Any] = {} if method is None else {"method": method}
    if error is None:
        if result is not None:
            message["result"] = result
        message["success"] = True
    else:
        message["error"] = error
        message["success"] = False
    message["time_in"] = time_in
    message["time_out"] = now_text()
    if req_id is not None:
        message["req_id"] = req_id
    return message


def status(system: str, connection_id: int) -> dict[str, Any]:
    """The `status` channel's update: sent on connect, and when the system's state changes."""
    return {
        "channel": "status",
        "type": "update",
        "data": [{"version": VERSION, "system": system, "api_version": API_VERSION, "connection_id": connection_id}],
    }


HEARTBEAT = {"channel": "heartbeat"}


class RequestError(Exception):
    """A request refused with one of Kraken's error strings (answered in the v2 envelope)."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra
