"""The order book the Binance dialect shows for a symbol, with Binance's update ids: REST depth answers it with its
`lastUpdateId`, the diff-depth stream sends each change as a `depthUpdate` whose `U` and `u` are the first and last
update ids it covers, so a client syncs a snapshot to the stream as Binance documents (drop every event with
`u <= lastUpdateId`, the first must have `U <= lastUpdateId + 1 <= u`, each next `U` the previous `u + 1`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from trading_ops.paper.gateway.binance.symbols import Symbol, fmt

LEVELS = 20  # price levels per side around the quote
LEVEL_QUANTITY = Decimal("0.5")  # the n-th level from the top holds n times this


class DepthBook:
    """One symbol's levels (price -> quantity per side), the last update id, and the changes not yet streamed."""

    def __init__(self, symbol: Symbol) -> None:
        self.symbol = symbol
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.update_id = 0
        self.first_pending = 1  # the update id of the first change not yet streamed
        self._pending: dict[str, dict[Decimal, Decimal]] = {"b": {}, "a": {}}

    def apply(self, bid: Decimal, ask: Decimal) -> None:
        """The quote moved to `bid`/`ask`: the book's levels follow, each changed level one update id."""
        tick = self.symbol.tick
        bids = {bid - i * tick: LEVEL_QUANTITY * (i + 1) for i in range(LEVELS) if bid - i * tick > 0}
        asks = {ask + i * tick: LEVEL_QUANTITY * (i + 1) for i in range(LEVELS)}
        for side, old, new in (("b", self.bids, bids), ("a", self.asks, asks)):
            for price in sorted(set(old) | set(new)):
                quantity = new.get(price, Decimal(0))
                if old.get(price) != quantity:
                    self.update_id += 1
                    self._pending[side][price] = quantity
        self.bids, self.asks = bids, asks

    def skip(self, count: int) -> None:
        """The changes not yet streamed and `count` more update ids are never shown: the next event's `U` is past the
        last one's `u + 1` (the `binance_depth_gap` fault); the book itself stays right."""
        self._pending = {"b": {}, "a": {}}
        self.update_id += count
        self.first_pending = self.update_id + 1

    def flush(self, event_ms: int) -> dict[str, Any] | None:
        """The depthUpdate event of the changes since the last one (None when nothing changed)."""
        if not any(self._pending.values()):
            return None
        event = {
            "e": "depthUpdate",
            "E": event_ms,
            "s": self.symbol.id,
            "U": self.first_pending,
            "u": self.update_id,
            "b": [[fmt(p), fmt(q)] for p, q in sorted(self._pending["b"].items(), reverse=True)],
            "a": [[fmt(p), fmt(q)] for p, q in sorted(self._pending["a"].items())],
        }
        self._pending = {"b": {}, "a": {}}
        self.first_pending = self.update_id + 1
        return event

    def snapshot(self, limit: int) -> dict[str, Any]:
        """REST depth: the best `limit` levels per side and the last update id they include."""
        return {
            "lastUpdateId": self.update_id,
            "bids": [[fmt(p), fmt(q)] for p, q in sorted(self.bids.items(), reverse=True)[:limit]],
            "asks": [[fmt(p), fmt(q)] for p, q in sorted(self.asks.items())[:limit]],
        }
