"""A small client of Prometheus's HTTP API: instant queries, and the expression behind an alert."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

TIMEOUT = aiohttp.ClientTimeout(total=10)


class PrometheusError(Exception):
    """Prometheus answered with an error or could not be reached."""


class PrometheusClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """GET /api/v1/query: the instant vector (or scalar as a one-element list) for `expr`."""
        url = f"{self.base_url}/api/v1/query"
        try:
            async with self.session.get(url, params={"query": expr}, timeout=TIMEOUT) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PrometheusError(f"query {expr!r}: {exc or type(exc).__name__}") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise PrometheusError(f"query {expr!r}: {error}")
        data = body.get("data") or {}
        result = data.get("result")
        if data.get("resultType") in ("scalar", "string"):
            return [{"value": result}]
        return list(result or [])


def expr_from_generator_url(url: str) -> str | None:
    """The alert's expression from a Prometheus generatorURL (`.../graph?g0.expr=...&g0.tab=1`)."""
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("g0.expr")
    return values[0] if values and values[0].strip() else None
