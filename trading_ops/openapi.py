"""OpenAPI 3.1 documents of the servers' APIs, their schemas made from the msgspec types the servers check and send."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from trading_ops import __version__

OPENAPI_VERSION = "3.1.0"
# The JSON Schema dialect of OpenAPI 3.1 (JSON Schema 2020-12 with OpenAPI's vocabulary), said once for every schema.
DIALECT = "https://spec.openapis.org/oas/3.1/dialect/base"
# aiohttp's limit on a request line and on a header line: past it, its parser answers 400 in plain text.
HTTP_LINE_BYTES = 8190
PLAIN_TEXT = "text/plain"
REF_TEMPLATE = "#/components/schemas/{name}"


class Builder:
    """One document: its operations, and the msgspec types whose schemas they share (components/schemas)."""

    def __init__(self, title: str, description: str) -> None:
        self.title = title
        self.description = description
        self.paths: dict[str, dict[str, Any]] = {}
        self._types: dict[str, Any] = {}

    def ref(self, tp: Any) -> dict[str, Any]:
        """The schema of `tp`: a reference to its component for a structure, the schema itself for anything else
        (filled in by `document`, which makes the schemas of every type used at once)."""
        key = f"t{len(self._types)}"
        for known, other in self._types.items():
            if other == tp:
                key = known
                break
        self._types[key] = tp
        return {"$deferred": key}

    def operation(self, method: str, path: str, operation: dict[str, Any]) -> None:
        self.paths.setdefault(path, {})[method] = operation

    def probes(
        self,
        openapi_path: str,
        metrics: str,
        alive: tuple[str, str, Any],
        ready: tuple[str, str, Any],
    ) -> None:
        """The operations every server of the project has, open to anyone: this document at `openapi_path`, /metrics
        (`metrics` says which families), /healthz and /readyz, each of these two given as (what 200 means, what 503
        means, the msgspec type of the body)."""
        self.operation(
            "get",
            openapi_path,
            {
                "operationId": "getOpenAPI",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "The OpenAPI 3.1 document.", "content": json_content({"type": "object"})}
                },
            },
        )
        self.operation(
            "get",
            "/metrics",
            {"operationId": "getMetrics", "summary": metrics, "security": [], "responses": {"200": metrics_response()}},
        )
        for path, operation_id, (summary, failing, body) in (
            ("/healthz", "getHealth", alive),
            ("/readyz", "getReady", ready),
        ):
            self.operation(
                "get",
                path,
                {
                    "operationId": operation_id,
                    "summary": summary,
                    "security": [],
                    "responses": {
                        "200": response("Alive." if path == "/healthz" else "Ready.", self.ref(body)),
                        "503": response(failing, self.ref(body)),
                    },
                },
            )

    def document(self, security_schemes: Mapping[str, Any]) -> dict[str, Any]:
        keys = list(self._types)
        refs, components = msgspec.json.schema_components(
            [self._types[k] for k in keys], schema_hook=None, ref_template=REF_TEMPLATE
        )
        made = dict(zip(keys, refs, strict=True))
        paths = _fill(self.paths, made)
        return {
            "openapi": OPENAPI_VERSION,
            "jsonSchemaDialect": DIALECT,
            "info": {"title": self.title, "version": __version__, "description": self.description},
            "paths": paths,
            "components": {
                "schemas": dict(sorted(components.items())),
                "securitySchemes": dict(security_schemes),
            },
        }


def _fill(node: Any, made: Mapping[str, Any]) -> Any:
    if isinstance(node, list):
        return [_fill(item, made) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"$deferred"}:
        return made[node["$deferred"]]
    return {key: _fill(value, made) for key, value in node.items()}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def response(description: str, schema: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
    """A response: its words, its JSON body's schema, the headers it carries (name -> what it says)."""
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = json_content(schema)
    if headers:
        out["headers"] = {name: {"description": words, "schema": {"type": "string"}} for name, words in headers.items()}
    return out


def bad_request(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A 400: the handler's JSON, or the HTTP layer's plain text for a request it cannot parse (a request line or a
    header over aiohttp's 8,190 bytes, a malformed request) before any handler sees it."""
    out = response(
        f"{description} In plain text: a request the HTTP layer cannot read (a line over {HTTP_LINE_BYTES:,} bytes).",
        schema,
    )
    out["content"][PLAIN_TEXT] = {"schema": {"type": "string"}}
    return out


def metrics_response() -> dict[str, Any]:
    return {
        "description": "The Prometheus text exposition format (version 0.0.4).",
        "content": {PLAIN_TEXT: {"schema": {"type": "string"}}},
    }


def bearer_scheme(description: str) -> dict[str, Any]:
    return {"type": "http", "scheme": "bearer", "description": description}


def routes(app: Any, ignore: Iterable[str] = ()) -> set[tuple[str, str]]:
    """The (method, path) of every route an aiohttp app registered, paths as OpenAPI writes them ("{id}"), HEAD (which
    aiohttp adds beside each GET) left out, and those under a prefix of `ignore`."""
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix", "")
        if route.method == "HEAD" or any(path.startswith(prefix) for prefix in ignore):
            continue
        found.add((route.method.lower(), path))
    return found


def described(document: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The (method, path) of every operation `document` describes."""
    return {(method, path) for path, item in document["paths"].items() for method in item}


def dumps(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=False).encode() + b"\n"
