"""What every HTTP server we ship reads from a request, read one way: a body under a limit whatever its framing
(Content-Length or chunked), JSON of bounded depth and numbers, a form, and ids, limits and durations from a path, a
query or a form. Anything else is an InputError: one clear 4xx, which the servers' guard (trading_ops.http_guard)
answers in the server's own format."""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from trading_ops.durations import parse_duration

# JSON a server takes: objects and arrays nested this deep at most (a control command's arguments, a decision, a
# fault; Alertmanager's webhook is 3 deep), numbers of this many characters at most (an int64 has 19 digits; a float
# Python prints has at most 24 characters). Deeper or longer is not what any client of ours sends.
MAX_JSON_DEPTH = 32
MAX_NUMBER_CHARS = 40
# A form's fields at most (the console's largest has six).
MAX_FORM_FIELDS = 32
# Ids are positive 32-bit integers (the ledger's INTEGER keys on PostgreSQL): a larger number names nothing.
MAX_ID = 2**31 - 1
# A duration typed by a person: this many characters at most (`1h30m`, `7d`).
MAX_DURATION_CHARS = 32
READ_CHUNK = 64 * 1024


class InputError(Exception):
    """A request refused for what it sent: its HTTP status (4xx) and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, at most `limit` bytes: a Content-Length over it is refused before a byte is read, a chunked body as
    soon as it passes the limit (413). A body that breaks off or is framed wrong is a 400."""
    if request.content_length is not None and request.content_length > limit:
        raise InputError(413, f"body of {request.content_length} bytes is over the {limit}-byte limit")
    if not request.body_exists:
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise InputError(413, f"body over the {limit}-byte limit")
            chunks.append(chunk)
    except (HttpProcessingError, EOFError, ConnectionError) as exc:
        raise InputError(400, f"body not read: {type(exc).__name__}") from None
    return b"".join(chunks)


def _number(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a number too large: {text}")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder (made once: json.loads with hooks builds one per call).
DECODER = json.JSONDecoder(parse_int=_number, parse_float=_number, parse_constant=_constant)


def depth_over(value: Any, limit: int) -> bool:
    """Whether `value` (parsed JSON) nests objects and arrays deeper than `limit`; iterative, so any depth is read."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json(body: bytes | str, *, max_depth: int | None = MAX_JSON_DEPTH) -> Any:
    """`body` as JSON (UTF-8): numbers at most MAX_NUMBER_CHARS long and finite, no NaN nor Infinity, nesting at
    most `max_depth` deep (None: only Python's own bound, for a caller whose schema bounds it). InputError(400)
    otherwise."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise InputError(400, f"body must be UTF-8 JSON ({exc.reason} at byte {exc.start})") from None
    try:
        value = DECODER.decode(text)
    except RecursionError:
        raise InputError(400, "body is not JSON we accept: nested too deeply") from None
    except ValueError as exc:
        raise InputError(400, f"body is not JSON we accept: {str(exc)[:200]}") from None
    if max_depth is not None and depth_over(value, max_depth):
        raise InputError(400, f"body is not JSON we accept: nested more than {max_depth} deep")
    return value


async def read_json(request: web.Request, limit: int, *, empty: Any = None) -> Any:
    """The body as JSON (parse_json) under `limit` bytes; `empty` when there is none (a blank body included)."""
    body = await read_body(request, limit)
    if not body.strip():
        return empty
    return parse_json(body)


async def read_json_object(request: web.Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; no body is an empty one."""
    value = await read_json(request, limit, empty={})
    if not isinstance(value, dict):
        raise InputError(400, "body must be a JSON object")
    return value


async def read_form(request: web.Request, limit: int) -> dict[str, str]:
    """An HTML form (application/x-www-form-urlencoded, UTF-8) of at most `limit` bytes; a field given twice keeps
    its first value."""
    body = await read_body(request, limit)
    kind = request.content_type
    if body and kind not in ("application/x-www-form-urlencoded", "application/octet-stream"):
        raise InputError(415, f"expected a form (application/x-www-form-urlencoded), got {kind[:60]}")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InputError(400, f"not a form (UTF-8 text, at most {MAX_FORM_FIELDS} fields)") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def whole_number(raw: str | None, what: str, low: int, high: int) -> int:
    """A whole number of ASCII digits from `low` to `high`; InputError(400) naming `what` for anything else (no
    int() of thousands of digits: the length is checked first)."""
    digits = raw is not None and raw.isascii() and raw.isdigit() and len(raw.lstrip("0")) <= len(str(high))
    if raw is None or not digits or not low <= int(raw) <= high:
        raise InputError(400, f"{what}: expected an integer from {low} to {high}")
    return int(raw)


def parse_limit(raw: str | None, default: int, high: int, what: str = "limit") -> int:
    """A `?limit=` (1 to `high`; `default` when absent, an empty one is refused)."""
    return default if raw is None else whole_number(raw, what, 1, high)


def parse_id(raw: str, what: str) -> int:
    """An id from a path: InputError(400) when not a positive integer, 404 (no such `what`) when past MAX_ID."""
    if not raw.isascii() or not raw.isdigit():
        raise InputError(400, "id: expected a positive integer")
    if len(raw.lstrip("0")) > len(str(MAX_ID)) or not 0 < int(raw) <= MAX_ID:
        raise InputError(404, f"no {what} {raw[:20]}{'...' if len(raw) > 20 else ''}")
    return int(raw)


def parse_bounded_duration(raw: str, what: str, high_seconds: float) -> float:
    """A duration a person typed (`30m`, `2h`): more than 0 and at most `high_seconds`; InputError(400) naming
    `what` otherwise."""
    text = raw.strip()
    try:
        if len(text) > MAX_DURATION_CHARS:
            raise ValueError(f"{len(text)} characters")
        seconds = parse_duration(text)
    except ValueError:
        raise InputError(400, f"{what}: expected a duration like 30m or 2h, got {text[:20]!r}") from None
    if not 0 < seconds <= high_seconds:
        raise InputError(400, f"{what}: must be more than 0s and at most {high_seconds / 86400:g}d")
    return seconds
