"""ccxt's unified vocabulary as ours: symbols (BTC/USD <-> BTC-USD) and order statuses."""

from __future__ import annotations

from trading_ops.bot.broker import OrderStatus

STATUSES = {
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "expired": OrderStatus.CANCELED,
    "rejected": OrderStatus.REJECTED,
}


def to_ccxt_symbol(symbol: str) -> str:
    """BTC-USD -> BTC/USD (ccxt's unified spot symbol)."""
    base, sep, quote = symbol.partition("-")
    if not sep or not base or not quote:
        raise ValueError(f"expected a BASE-QUOTE symbol such as BTC-USD, got {symbol!r}")
    return f"{base}/{quote}"


def from_ccxt_symbol(symbol: str) -> str:
    """BTC/USD (or BTC/USD:USD) -> BTC-USD."""
    return symbol.split(":", 1)[0].replace("/", "-")
