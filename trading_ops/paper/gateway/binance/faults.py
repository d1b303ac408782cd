"""The Binance dialect's faults, commands of the gateway's `POST /chaos/{fault}` (`trading-ops gateway-chaos`):

- binance_weight_exhausted: every IP's request weight spent for the rest of the minute: requests answer 429 (-1003)
  with a Retry-After; a client that keeps sending is banned (418, Retry-After until the ban ends);
- binance_listen_key_expired: every listen key lapses (`listenKeyExpired`, its socket closed) and every WebSocket API
  subscription ends (`eventStreamTerminated`): a client subscribes again;
- binance_depth_gap [symbol=BTC-USD count=N]: the next depth diff skips N update ids: a client must take a new snapshot;
- binance_depth_silent [symbol=BTC-USD persistent=true]: the depth streams (of the symbol, or all) stay subscribed and
  send no more diffs while the market moves on (trades, tickers and REST go on): a new subscription heals it
  (persistent: new ones are silent too, until clear);
- binance_user_stream_silent [persistent=true]: every user stream stays subscribed and says nothing; a new
  subscription heals it (persistent: new ones are silent too, until clear);
- binance_user_stream_refused: every new user stream subscription (and listen key) is refused with -2015, as for a key
  that lost its permission, until clear (with binance_listen_key_expired: a user stream that lapsed and cannot be
  renewed);
- binance_clock_drift [ms=N]: the server's clock moves N ms (default 10000; 0 ends it), so signed requests stamped by
  the client's clock fall outside recvWindow (-1021) until the client syncs to `/api/v3/time`;
- binance_filter_refusal [count=N filter=PRICE_FILTER|LOT_SIZE|NOTIONAL]: the next N orders answer -1013.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trading_ops.paper.gateway.binance.errors import filter_failure
from trading_ops.paper.gateway.binance.symbols import FILTERS

FAULT_NAMES = (
    "binance_weight_exhausted",
    "binance_listen_key_expired",
    "binance_depth_gap",
    "binance_depth_silent",
    "binance_user_stream_silent",
    "binance_user_stream_refused",
    "binance_clock_drift",
    "binance_filter_refusal",
)
MAX_COUNT = 10_000
MAX_DRIFT_MS = 86_400_000
DEFAULT_DRIFT_MS = 10_000


def whole(args: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    """A whole-number argument; ValueError naming it otherwise."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be a whole number from {low} to {high}")
    return value


def flag(args: Mapping[str, Any], key: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


class DialectFaults:
    """The faults the REST and order paths read: the clock's drift and the filter refusals owed."""

    def __init__(self) -> None:
        self.drift_ms = 0
        self.refusals = 0
        self.refused_filter = "NOTIONAL"

    def set_refusals(self, args: Mapping[str, Any]) -> dict[str, Any]:
        self.refusals += whole(args, "count", 1, 1, MAX_COUNT)
        name = args.get("filter", "NOTIONAL")
        if name not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(FILTERS)}")
        self.refused_filter = name
        return {"filter_refusals": self.refusals, "filter": name}

    def set_drift(self, args: Mapping[str, Any]) -> dict[str, Any]:
        self.drift_ms = whole(args, "ms", DEFAULT_DRIFT_MS, -MAX_DRIFT_MS, MAX_DRIFT_MS)
        return {"clock_drift_ms": self.drift_ms}

    def check_order(self) -> None:
        """-1013 for an order a filter refusal is owed to."""
        if self.refusals > 0:
            self.refusals -= 1
            raise filter_failure(self.refused_filter)

    def clear(self) -> None:
        self.drift_ms = 0
        self.refusals = 0

    def describe(self) -> dict[str, Any]:
        return {"clock_drift_ms": self.drift_ms, "filter_refusals": self.refusals}
