"""What every response of a server we ship carries, its errors included: the server's security headers on every
response (a 500 from a handler that raised, a 404 of the router, a 401 of basic auth), an InputError answered as the
one-line 4xx it is, and an unexpected exception logged and answered as a 500 in the server's own format."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web, web_protocol

from trading_ops.db.errors import NOT_MIGRATED, UNREACHABLE, database_problem
from trading_ops.http_input import InputError

log = logging.getLogger(__name__)

# An API's answers (JSON, /metrics): nothing to sniff, frame, cache or refer from.
API_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# Retry-After of a 429 that did not say (a throttle says its own wait), in whole seconds.
DEFAULT_RETRY_AFTER = "1"
# A path is logged this long at most (an id of thousands of digits is one line of the log, not pages).
MAX_LOGGED_PATH = 200
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The headers of a request's response (they may depend on its path: the console's are stricter than the API's).
HeadersOf = Callable[[web.Request], Mapping[str, str]]
# How a server answers an error: (request, status, one line) -> its response.
Render = Callable[[web.Request, int, str], web.StreamResponse]


def json_error(_request: web.Request, status: int, message: str) -> web.StreamResponse:
    return web.json_response({"error": message}, status=status)


def guard(app: web.Application, headers_of: HeadersOf | None = None, render: Render = json_error) -> None:
    """Give `app` its guard: headers_of(request) (API_HEADERS without it) on every response, InputError and
        unexpected exceptions answered through `render`. Its middleware goes first in the chain; the headers are set as
    each response is prepared, so a response of a middleware before it (a web configuration's 401) has them too."""

    def headers(request: web.Request) -> Mapping[str, str]:
        return headers_of(request) if headers_of is not None else API_HEADERS

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except InputError as exc:
            path = request.path[:MAX_LOGGED_PATH]
            log.warning("%s %s from %s refused (%d): %s", request.method, path, request.remote, exc.status, exc)
            return render(request, exc.status, exc.message)
        except web.HTTPException as exc:
            if exc.status >= 500:
                return render(request, exc.status, exc.reason)
            raise
        except Exception as exc:
            path = request.path[:MAX_LOGGED_PATH]
            problem = database_problem(exc, None)
            # The database not answering (restarting, failing over, its host gone): a 503 to retry and one log line,
            # not an internal error a client cannot tell from a bug.
            if problem is not None and problem.message.startswith(UNREACHABLE):
                log.warning("%s %s from %s: %s", request.method, path, request.remote, problem.message)
                return render(request, 503, f"the server's {UNREACHABLE}: try again")
            log.exception("%s %s from %s failed", request.method, path, request.remote)
            # A table or column of a later migration missing (the database taken back a revision under a running
            # server): the one line to act on, not an internal error a client cannot tell from a bug.
            if problem is not None and problem.message == NOT_MIGRATED:
                return render(request, 503, f"the server's {NOT_MIGRATED}")
            return render(request, 500, "internal error (logged)")

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in headers(request).items():
            response.headers.setdefault(name, value)
        if response.status == 429:  # every 429 says when to come back (RFC 6585): its own wait, else one second
            response.headers.setdefault("Retry-After", DEFAULT_RETRY_AFTER)

    app.middlewares.insert(0, middleware)
    app.on_response_prepare.append(add_headers)
    guard_early_answers()


def guard_early_answers() -> None:
    """Give aiohttp's own answers the API's security headers: the 400 its HTTP parser writes for a request it cannot
    read (a malformed request line, a header line past its limit, broken chunk framing) never reaches an application,
    its middlewares or its on_response_prepare, so those headers are added where aiohttp builds that answer
    (RequestHandler.handle_error). Plain text from the HTTP layer: the API's headers are the strictest any server
    needs. Once per process, whatever the number of servers."""
    original = web_protocol.RequestHandler.handle_error
    if getattr(original, "guarded", False):
        return

    @functools.wraps(original)
    def handle_error(self: web_protocol.RequestHandler, *args: Any, **kwargs: Any) -> web.StreamResponse:
        response = original(self, *args, **kwargs)
        for name, value in API_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    handle_error.guarded = True  # type: ignore[attr-defined]
    web_protocol.RequestHandler.handle_error = handle_error  # type: ignore[method-assign]
