"""Kraken v2 wire to domain: an `executions` trade event as the VenueFill a bot records."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import Side, VenueFill


def ws_time(text: str) -> datetime:
    """v2's RFC 3339 time (2023-09-21T14:36:57.428972Z), timezone-aware."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def execution_fill(item: Mapping[str, Any], symbols: Mapping[str, str]) -> VenueFill | None:
    """The fill of one executions event (exec_type trade) on a known pair (v2 symbol -> ours); None for any other
    event. KeyError or ValueError for a trade event missing what a fill needs."""
    if item.get("exec_type") != "trade" or item.get("symbol") not in symbols:
        return None
    fees = item.get("fees") or [{"asset": "", "qty": 0}]
    cid = item.get("cl_ord_id")
    return VenueFill(
        trade_id=str(item["exec_id"]),
        client_order_id=str(cid) if cid else None,
        venue_order_id=str(item["order_id"]),
        symbol=symbols[item["symbol"]],
        side=Side(item["side"]),
        quantity=Decimal(str(item["last_qty"])),
        price=Decimal(str(item["last_price"])),
        fee=Decimal(str(fees[0]["qty"])),
        fee_asset=str(fees[0]["asset"]),
        liquidity="maker" if item.get("liquidity_ind") == "m" else "taker",
        executed_at=ws_time(str(item["timestamp"])),
    )
