"""A small client of Prometheus's HTTP API: instant queries, and the expression behind an alert."""

from __future__ import annotations

from typing import Any

import aiohttp

# Every query is bounded twice: Prometheus stops evaluating it after QUERY_TIMEOUT (its `timeout` parameter), and
# the client stops waiting a little later, whatever the server does.
QUERY_TIMEOUT_SECONDS = 10.0
TIMEOUT = aiohttp.ClientTimeout(total=QUERY_TIMEOUT_SECONDS + 2.0)


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
            params = {"query": expr, "timeout": f"{QUERY_TIMEOUT_SECONDS:g}s"}
            async with self.session.get(url, params=params, timeout=TIMEOUT) as resp:
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

    async def alert_expressions(self, alertname: str, labels: dict[str, str]) -> list[str]:
        """GET /api/v1/rules: the expressions of Prometheus's own alerting rules named `alertname` whose static labels
        agree with the alert's (a warning and a critical tier of one name are told apart by their severity).

        What a webhook says the expression is (its generatorURL) is never taken: anyone with the webhook token could
        make any query the check, one that is always empty (a "recovery") included."""
        url = f"{self.base_url}/api/v1/rules"
        try:
            async with self.session.get(url, params={"type": "alert"}, timeout=TIMEOUT) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PrometheusError(f"rules: {exc or type(exc).__name__}") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise PrometheusError(f"rules: {error}")
        found: list[str] = []
        for group in (body.get("data") or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                if rule.get("type") != "alerting" or rule.get("name") != alertname:
                    continue
                expr = rule.get("query")
                if isinstance(expr, str) and expr.strip() and _labels_agree(rule.get("labels") or {}, labels):
                    if expr not in found:
                        found.append(expr)
        return found


def _labels_agree(rule_labels: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether an alert could come from a rule with these labels (templated values, `{{ ... }}`, can be anything)."""
    return all("{{" in str(v) or labels.get(k) == v for k, v in rule_labels.items())
