"""An asyncio client of freqtrade's REST API (`/api/v1`): JWT login and refresh, timing and errors per endpoint."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram

from trading_ops.bot.metrics import PREFIX

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
# freqtrade answers from its own process in milliseconds; seconds mean its API thread is starved or hung.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Endpoint label values are the fixed paths the sidecar calls; a trade id never becomes a label.
TRADE_ENDPOINT = "/trades/{id}/open-order"


# A call with `connect_for` tries a refused connection again this often.
CONNECT_RETRY_SECONDS = 0.25


class FreqtradeUnavailable(Exception):
    """freqtrade did not answer (connection refused, timeout) or answered with a server error."""


class FreqtradeNotListening(FreqtradeUnavailable):
    """freqtrade's API did not accept the connection: the request never reached it (safe to send again)."""


class FreqtradeRefused(Exception):
    """freqtrade answered, and said no (a 4xx with its reason in `detail`/`error`)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ApiMetrics:
    """Requests, failures and latency of the calls to one freqtrade's API, by endpoint."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Counter(
            f"{PREFIX}_freqtrade_api_requests",
            "Requests the sidecar sent to freqtrade's REST API, by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        self.failures = Counter(
            f"{PREFIX}_freqtrade_api_request_failures",
            "Requests to freqtrade's REST API that got no answer, a server error or a refusal, by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_freqtrade_api_request_duration_seconds",
            "Time freqtrade's REST API took to answer, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class FreqtradeClient:
    """One freqtrade API server. Logs in with basic auth for a JWT pair, refreshes the access token on a 401 and
    logs in again when the refresh token is refused too. Every call is bounded by `timeout` seconds."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        timeout: float,
        metrics: ApiMetrics,
    ) -> None:
        self.base = url.rstrip("/") + API_PREFIX
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._login_headers = {"Authorization": f"Basic {basic}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._access: str | None = None
        self._refresh: str | None = None
        self._login_lock = asyncio.Lock()

    async def open(self) -> None:
        if self._session is None:
            # One connection per request, closed once answered (no keep-alive): freqtrade's reload_config stops its API
            # server (uvicorn) and waits, without a limit, until every connection has closed; a connection accepted
            # just before the server stopped listening is not among those it asks to close, and one the sidecar kept
            # alive with its poll would then hold the reload forever (freqtrade's API gone, its process up). A
            # connection that ends with its one answer cannot: the reload goes on. One more TCP handshake per request,
            # to a freqtrade that is usually on the same host, is what it costs.
            connector = aiohttp.TCPConnector(force_close=True)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(
        self,
        path: str,
        endpoint: str | None = None,
        timeout: float | None = None,
        connect_for: float = 0.0,
        **params: Any,
    ) -> Any:
        return await self.call(
            "GET", path, endpoint=endpoint, params=params or None, timeout=timeout, connect_for=connect_for
        )

    async def post(
        self, path: str, body: dict[str, Any] | None = None, timeout: float | None = None, connect_for: float = 0.0
    ) -> Any:
        return await self.call(
            "POST", path, json=body if body is not None else {}, timeout=timeout, connect_for=connect_for
        )

    async def delete(
        self, path: str, endpoint: str | None = None, timeout: float | None = None, connect_for: float = 0.0
    ) -> Any:
        return await self.call("DELETE", path, endpoint=endpoint, timeout=timeout, connect_for=connect_for)

    async def call(
        self,
        method: str,
        path: str,
        *,
        endpoint: str | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
        connect_for: float = 0.0,
    ) -> Any:
        """The decoded JSON answer of `method path` within `timeout` seconds (default: the client's).
        Raises FreqtradeUnavailable or FreqtradeRefused.

        `connect_for`: for this many seconds a connection freqtrade's API does not accept is tried again (every
        CONNECT_RETRY_SECONDS) before the call fails. freqtrade's reload_config stops its API server and starts a new
        one (a few seconds, longer on a busy host); an operator's halt sent meanwhile waits for it instead of failing.
        Safe for any method: a request whose connection was never accepted never reached freqtrade."""
        label = endpoint or path
        self._metrics.requests.labels(label).inc()
        started = time.monotonic()
        try:
            while True:
                try:
                    status, body = await self._authorized(method, path, params, json, timeout)
                    break
                except FreqtradeNotListening:
                    if time.monotonic() - started >= connect_for:
                        raise
                    await asyncio.sleep(CONNECT_RETRY_SECONDS)
        except FreqtradeUnavailable:
            self._metrics.failures.labels(label).inc()
            raise
        finally:
            self._metrics.latency.labels(label).observe(time.monotonic() - started)
        # freqtrade answers a request its trader refuses ("trader is not running") with 502 and {"error": ...}.
        refusal = status == 502 and isinstance(body, dict) and "error" in body
        if status >= 500 and not refusal:
            self._metrics.failures.labels(label).inc()
            raise FreqtradeUnavailable(f"{method} {path}: HTTP {status}: {_reason(body)}")
        if status >= 400:
            self._metrics.failures.labels(label).inc()
            raise FreqtradeRefused(status, _reason(body))
        return body

    async def _authorized(
        self, method: str, path: str, params: dict[str, Any] | None, json: Any, timeout: float | None
    ) -> tuple[int, Any]:
        if self._access is None:
            await self._login()
        status, body = await self._send(method, path, params, json, self._bearer(), timeout)
        if status == 401:
            await self._login(renew=True)
            status, body = await self._send(method, path, params, json, self._bearer(), timeout)
        return status, body

    def _bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._access}"} if self._access else {}

    async def _login(self, renew: bool = False) -> None:
        """A fresh access token: through the refresh token when `renew` and there is one, else a basic-auth login.
        Wrong credentials leave no token: the request that needed one then answers 401 (a FreqtradeRefused)."""
        stale = self._access
        async with self._login_lock:
            if self._access is not None and self._access != stale:
                return  # another request already renewed it
            if renew and self._refresh is not None:
                status, body = await self._send(
                    "POST", "/token/refresh", None, None, {"Authorization": f"Bearer {self._refresh}"}
                )
                if status == 200 and isinstance(body, dict) and body.get("access_token"):
                    self._access = str(body["access_token"])
                    return
            status, body = await self._send("POST", "/token/login", None, None, self._login_headers)
            if status == 200 and isinstance(body, dict) and body.get("access_token"):
                self._access = str(body["access_token"])
                self._refresh = str(body.get("refresh_token") or "") or None
                return
            self._access = self._refresh = None
            log.warning("freqtrade at %s refused the login: HTTP %d: %s", self.base, status, _reason(body))

    async def _send(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        json: Any,
        headers: dict[str, str] | None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        if self._session is None:
            await self.open()
        assert self._session is not None
        try:
            async with self._session.request(
                method,
                self.base + path,
                params=params,
                json=json,
                headers=headers,
                timeout=self._timeout if timeout is None else aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                return resp.status, body
        except aiohttp.ClientConnectorError as exc:
            raise FreqtradeNotListening(f"{method} {path}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise FreqtradeUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc


def _reason(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("detail", "error", "status", "result"):
            if key in body:
                return str(body[key])[:300]
    return str(body)[:300]
