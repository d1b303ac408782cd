"""The paper venue's state file: its JSON encoding, loading it, and the autosave that writes every change."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from trading_ops.bot.broker import OrderStatus, OrderType, Side, VenueFill, VenueOrder
from trading_ops.paper.book import OrderBook
from trading_ops.paper.market import RandomWalkMarket

STATE_VERSION = 2  # 2: reduce-only and silent orders by venue order id (1: by client order id)


def order_to_json(order: VenueOrder) -> dict[str, Any]:
    return {
        "client_order_id": order.client_order_id,
        "venue_order_id": order.venue_order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "order_type": order.order_type.value,
        "quantity": str(order.quantity),
        "price": None if order.price is None else str(order.price),
        "filled_quantity": str(order.filled_quantity),
        "status": order.status.value,
        "reject_reason": order.reject_reason,
        "created_at": None if order.created_at is None else order.created_at.isoformat(),
        "closed_at": None if order.closed_at is None else order.closed_at.isoformat(),
    }


def order_from_json(data: Mapping[str, Any]) -> VenueOrder:
    return VenueOrder(
        client_order_id=data["client_order_id"],
        venue_order_id=data["venue_order_id"],
        symbol=data["symbol"],
        side=Side(data["side"]),
        order_type=OrderType(data["order_type"]),
        quantity=Decimal(data["quantity"]),
        price=None if data["price"] is None else Decimal(data["price"]),
        filled_quantity=Decimal(data["filled_quantity"]),
        status=OrderStatus(data["status"]),
        reject_reason=data["reject_reason"],
        created_at=None if data["created_at"] is None else datetime.fromisoformat(data["created_at"]),
        # State files written before closed_at was kept have none.
        closed_at=None if data.get("closed_at") is None else datetime.fromisoformat(data["closed_at"]),
    )


def fill_to_json(fill: VenueFill) -> dict[str, Any]:
    return {
        "trade_id": fill.trade_id,
        "client_order_id": fill.client_order_id,
        "venue_order_id": fill.venue_order_id,
        "symbol": fill.symbol,
        "side": fill.side.value,
        "quantity": str(fill.quantity),
        "price": str(fill.price),
        "fee": str(fill.fee),
        "fee_asset": fill.fee_asset,
        "liquidity": fill.liquidity,
        "executed_at": fill.executed_at.isoformat(),
    }


def fill_from_json(data: Mapping[str, Any]) -> VenueFill:
    return VenueFill(
        trade_id=data["trade_id"],
        client_order_id=data["client_order_id"],
        venue_order_id=data["venue_order_id"],
        symbol=data["symbol"],
        side=Side(data["side"]),
        quantity=Decimal(data["quantity"]),
        price=Decimal(data["price"]),
        fee=Decimal(data["fee"]),
        fee_asset=data["fee_asset"],
        liquidity=data["liquidity"],
        executed_at=datetime.fromisoformat(data["executed_at"]),
    )


def write_atomically(target: Path, data: str, *, durable: bool = False) -> None:
    """Write `data` to a temp file beside `target` and rename it into place: a reader (or a kill -9) sees the old or
    the new file, never half of one. The temp name is unique per thread, so writes from two threads never mix."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, target)


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


class VenueState:
    """Encodes the market and the account as the venue's state file, loads one, and keeps the autosave file up to
    date. `head` gives what the venue itself adds (its name, quote asset, clock and skew)."""

    def __init__(
        self,
        market: RandomWalkMarket,
        book: OrderBook,
        head: Callable[[], dict[str, Any]],
        autosave_path: Path | None,
    ) -> None:
        self.market = market
        self.book = book
        self.head = head
        self.autosave_path = autosave_path
        # What never changes is encoded once: closed orders by venue order id, fills by trade id.
        self._closed_json: dict[str, str] = {}
        self._fill_json: dict[str, str] = {}
        # Autosave progress: changes made, changes in the file, the newest change a write put there.
        self._changes = 0
        self._saved = 0
        self._written = 0
        self._save_lock = asyncio.Lock()
        self._write_lock = threading.Lock()

    # -- encoding ---------------------------------------------------------------------------------------------
    def _without_history(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self.head(), **self.market.state(), **self.book.state()}

    def state_dict(self) -> dict[str, Any]:
        state = self._without_history()
        state["orders"] = [order_to_json(o) for o in self.book.orders.values()]
        state["fills"] = [fill_to_json(f) for f in self.book.fills]
        return state

    def encode(self) -> str:
        """state_dict() as JSON, with what never changes (fills, closed orders) encoded only once."""
        head = _compact(self._without_history())
        orders = ",".join(self._order_json(o) for o in self.book.orders.values())
        fills = ",".join(self._one_fill_json(f) for f in self.book.fills)
        self._forget_encoded()
        return f'{head[:-1]},"orders":[{orders}],"fills":[{fills}]}}'

    def _order_json(self, order: VenueOrder) -> str:
        vid = order.venue_order_id
        if vid in self.book.open:
            return _compact(order_to_json(order))
        encoded = self._closed_json.get(vid)
        if encoded is None:
            encoded = self._closed_json[vid] = _compact(order_to_json(order))
        return encoded

    def _one_fill_json(self, fill: VenueFill) -> str:
        encoded = self._fill_json.get(fill.trade_id)
        if encoded is None:
            encoded = self._fill_json[fill.trade_id] = _compact(fill_to_json(fill))
        return encoded

    def _forget_encoded(self) -> None:
        """Drop what the account no longer keeps (pruned history)."""
        if len(self._closed_json) > len(self.book.orders):
            self._closed_json = {v: s for v, s in self._closed_json.items() if v in self.book.orders}
        if len(self._fill_json) > len(self.book.fills):
            kept = {f.trade_id for f in self.book.fills}
            self._fill_json = {t: s for t, s in self._fill_json.items() if t in kept}

    # -- files ------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, durable: bool = False) -> None:
        write_atomically(Path(path), self.encode(), durable=durable)

    def load(self, path: str | os.PathLike[str], quote_asset: str) -> dict[str, Any]:
        """Replace the market's and the account's state with the one saved at `path`; the whole saved state."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        version = data.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"{path}: unsupported paper venue state version {version!r}")
        if data["quote_asset"] != quote_asset:
            raise ValueError(f"{path}: state is in {data['quote_asset']}, this venue in {quote_asset}")
        self.market.load(data)
        orders = [order_from_json(o) for o in data["orders"]]
        fills = [fill_from_json(f) for f in data["fills"]]
        self.book.load(data, orders, fills, version)
        self._closed_json.clear()
        self._fill_json = {f["trade_id"]: _compact(f) for f in data["fills"]}
        self._saved = self._changes  # the file holds this state: nothing to write until it changes
        return dict(data)

    # -- autosave ---------------------------------------------------------------------------------------------
    def changed(self) -> None:
        """The state changed: the next `persist` writes it to the autosave file."""
        self._changes += 1

    async def save_change(self) -> None:
        """The state changed: return once the autosave file holds it (`changed`, then `persist`)."""
        self.changed()
        await self.persist()

    async def persist(self) -> None:
        """Return once the autosave file holds every change made so far. Called before anyone hears of a change (an
        event delivered, a request answered), so a kill -9 never leaves a bot knowing of a fill or an order the
        venue's file lacks (the restarted venue would reuse its ids).

        Off the event loop: the state is encoded on the loop (cheap: fills and closed orders are encoded once each),
        then written and renamed into place on a worker thread. Writes never overlap; the changes made while one is
        under way all go out in the next, so a burst of events costs one or two writes, not one each.
        """
        if self.autosave_path is None or self._saved >= self._changes:
            return
        wanted = self._changes
        async with self._save_lock:
            if self._saved >= wanted:
                return  # a write that started after that change took it along
            generation, data = self._changes, self.encode()
            await asyncio.to_thread(self.write, self.autosave_path, data, generation)
            self._saved = max(self._saved, generation)

    def save_now(self) -> None:
        """Write the autosave file synchronously (once at a start, before trading begins)."""
        if self.autosave_path is not None:
            generation = self._changes
            self.write(self.autosave_path, self.encode(), generation)
            self._saved = max(self._saved, generation)

    def write(self, target: Path, data: str, generation: int) -> None:
        """On any thread: replace the file, unless a newer state is there already (writes may finish in any
        order)."""
        with self._write_lock:
            if generation <= self._written:
                return
            write_atomically(target, data)
            self._written = generation
