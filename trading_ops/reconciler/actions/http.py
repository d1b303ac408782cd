"""`http`: one HTTP request to a host the playbook names and the configuration allows; labels only URL-encoded."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from trading_ops.reconciler.actions.base import TEMPLATE_RE, Action, ActionContext, Refused, Result, truncate
from trading_ops.schema import one_of

METHODS = ("GET", "POST", "PUT", "DELETE")
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL; ValueError when it has none (or an invalid port)."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {url[:80]!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"a URL with credentials (user@host) is not allowed: {url[:80]!r}")
    return parts.scheme, parts.hostname.lower(), parts.port or DEFAULT_PORTS[parts.scheme]


def host_allowed(host: str, port: int, allowed: list[str]) -> bool:
    """Whether reconciler.http_allowed_hosts lets requests go to host:port (an entry without a port: any port)."""
    for entry in allowed:
        parts = urlsplit(f"//{entry}")
        if parts.hostname == host and parts.port in (None, port):
            return True
    return False


def fill(value: Any, ctx: ActionContext) -> Any:
    """A JSON body with its ${label} templates filled with validated label values (strings, lists, mappings)."""
    if isinstance(value, str):
        return ctx.render(value)
    if isinstance(value, dict):
        return {k: fill(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ctx) for v in value]
    return value


class HttpAction(Action):
    kind = "http"
    default_risk = "disruptive"
    params = {"url": (str, True), "method": (str, False), "json": (dict, False), "expect_status": (list, False)}
    schema = {"method": one_of(METHODS), "expect_status": list[int]}

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        if params.get("method", "POST") not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}")
        url = params["url"]
        scheme, _, rest = url.partition("://")
        authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        if "$" in authority:
            raise ValueError(f"url: the host comes from the playbook, never from a label: {url[:80]!r}")
        try:
            origin(TEMPLATE_RE.sub("x", url))
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from exc

    def hosts(self, params: dict[str, Any]) -> tuple[str, int]:
        """The host and port the step's URL names (checked against reconciler.http_allowed_hosts)."""
        _, host, port = origin(TEMPLATE_RE.sub("x", params["url"]))
        return host, port

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        template = params["url"]
        # Label values go into the URL percent-encoded: '@', ':', '/', '?', '#' in a value cannot move the request
        # to another host, port or path.
        url = TEMPLATE_RE.sub(lambda m: quote(ctx.label(m.group(1)), safe=""), template)
        scheme, host, port = origin(url)
        if (scheme, host, port) != origin(TEMPLATE_RE.sub("x", template)):
            raise Refused(f"the URL's host changed after the labels were filled in: {url[:80]!r}")
        allowed = ctx.config.reconciler.http_allowed_hosts
        if not host_allowed(host, port, allowed):
            raise Refused(f"{host}:{port} is not in reconciler.http_allowed_hosts ({', '.join(allowed) or 'empty'})")
        method = params.get("method", "POST")
        body = fill(params["json"], ctx) if "json" in params else None
        expect = params.get("expect_status")
        try:
            async with ctx.session.request(
                method,
                URL(url, encoded=True),  # sent as encoded here: no decoding of the label values' escapes
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,  # a redirect would take the request to a host nobody allowed
            ) as resp:
                text = await resp.text(errors="replace")
        except TimeoutError:
            return Result("timeout", f"{method} {url}: no answer within {timeout:g}s")
        except aiohttp.ClientError as exc:
            return Result("failure", f"{method} {url}: {exc}")
        ok = resp.status in expect if expect else 200 <= resp.status < 300
        output = truncate(f"HTTP {resp.status} {text}", ctx.config.reconciler.output_limit_bytes)
        return Result("success" if ok else "failure", output)


ACTION = HttpAction()
