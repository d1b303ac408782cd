"""ccxt's binance `urls.api` pointed at a gateway: every REST URL on the gateway's base with its path kept (/api/v3,
/sapi/v1, /fapi/v1, ...), the spot streams and the WebSocket API on the gateway's sockets; nothing else changed."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from trading_ops.paper.gateway.binance.dialect import STREAM_PATH, WS_API_PATH


def ccxt_urls(base: str, api: Mapping[str, Any]) -> dict[str, Any]:
    """`api` (a ccxt binance client's `urls["api"]`) with its URLs on the gateway at `base` (http[s]://host:port)."""
    pointed = copy.deepcopy(dict(api))
    for name, url in list(pointed.items()):
        if isinstance(url, str):
            pointed[name] = base.rstrip("/") + urlsplit(url).path
    ws_base = "ws" + base.rstrip("/").removeprefix("http")
    ws = dict(pointed.get("ws", {}))
    ws.update({"spot": ws_base + STREAM_PATH, "margin": ws_base + STREAM_PATH})
    ws["ws-api"] = {**ws.get("ws-api", {}), "spot": ws_base + WS_API_PATH}
    pointed["ws"] = ws
    return pointed
