"""Binance's names for the venue's symbols (BTC-USD is BTCUSD) and their filters as `exchangeInfo` lists them and
order placement applies them: PRICE_FILTER, LOT_SIZE and NOTIONAL, each refusal a -1013 `Filter failure: <name>`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from trading_ops.paper.gateway.binance.errors import (
    BAD_SYMBOL,
    BAD_SYMBOL_MSG,
    ILLEGAL_CHARS,
    ILLEGAL_CHARS_MSG,
    BinanceError,
    filter_failure,
    mandatory,
)

MAX_PRICE = Decimal("1000000")
MAX_QTY = Decimal("9000")
MAX_NOTIONAL = Decimal("9000000")
# Binance's smallest order value on its USD(T) pairs.
DEFAULT_MIN_NOTIONAL = Decimal("5")
# What a decimal parameter may look like (Binance's own range in its -1100 message).
DECIMAL_PATTERN = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"
_DECIMAL = re.compile(DECIMAL_PATTERN)
FILTERS = ("PRICE_FILTER", "LOT_SIZE", "NOTIONAL")


def fmt(value: Decimal, places: int = 8) -> str:
    """A decimal as Binance writes it: fixed notation with 8 places ("0.01000000")."""
    return f"{value:.{places}f}"


def digits(raw: str, most: int = 19) -> bool:
    """`raw` is a whole number of at most `most` ASCII digits (an int64 has 19; `²` is a digit to str.isdigit)."""
    return 0 < len(raw) <= most and raw.isascii() and raw.isdigit()


def decimal_param(params: Mapping[str, str], name: str, *, required: bool = True) -> Decimal | None:
    """A decimal parameter: -1102 when required and missing, -1100 when not a plain decimal."""
    raw = params.get(name, "")
    if raw == "":
        if required:
            raise mandatory(name)
        return None
    if not _DECIMAL.match(raw):
        raise BinanceError(ILLEGAL_CHARS, ILLEGAL_CHARS_MSG.format(name=name, legal=DECIMAL_PATTERN))
    try:
        return Decimal(raw)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise mandatory(name) from None


@dataclass(frozen=True)
class Symbol:
    symbol: str  # ours: BTC-USD
    id: str  # Binance's: BTCUSD
    base: str
    quote: str
    tick: Decimal
    step: Decimal
    min_notional: Decimal

    def filters(self) -> list[dict[str, object]]:
        return [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": fmt(self.tick),
                "maxPrice": fmt(MAX_PRICE),
                "tickSize": fmt(self.tick),
            },
            {"filterType": "LOT_SIZE", "minQty": fmt(self.step), "maxQty": fmt(MAX_QTY), "stepSize": fmt(self.step)},
            {
                "filterType": "NOTIONAL",
                "minNotional": fmt(self.min_notional),
                "applyMinToMarket": True,
                "maxNotional": fmt(MAX_NOTIONAL),
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ]

    def info(self) -> dict[str, object]:
        """The symbol as exchangeInfo lists it."""
        return {
            "symbol": self.id,
            "status": "TRADING",
            "baseAsset": self.base,
            "baseAssetPrecision": 8,
            "quoteAsset": self.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "icebergAllowed": False,
            "ocoAllowed": False,
            "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": False,
            "allowTrailingStop": False,
            "cancelReplaceAllowed": True,
            "amendAllowed": False,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": self.filters(),
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

    def check(self, quantity: Decimal, price: Decimal | None, reference: Decimal) -> None:
        """-1013 for an order the symbol's filters refuse: a price off the tick or out of range (PRICE_FILTER), a
        quantity off the step or out of range (LOT_SIZE), a value under the minimum at `price` or, for a market
        order, at the `reference` price (NOTIONAL)."""
        if price is not None and (price < self.tick or price > MAX_PRICE or price % self.tick != 0):
            raise filter_failure("PRICE_FILTER")
        if quantity < self.step or quantity > MAX_QTY or quantity % self.step != 0:
            raise filter_failure("LOT_SIZE")
        if quantity * (price if price is not None else reference) < self.min_notional:
            raise filter_failure("NOTIONAL")


class Symbols:
    """The venue's symbols by our name and by Binance's id."""

    def __init__(
        self,
        symbols: Iterable[str],
        base_asset: Callable[[str], str],
        quote_asset: str,
        tick: Callable[[str], Decimal],
        step: Callable[[str], Decimal],
        min_notional: Decimal = DEFAULT_MIN_NOTIONAL,
    ) -> None:
        self.by_symbol: dict[str, Symbol] = {}
        for s in symbols:
            base = base_asset(s)
            self.by_symbol[s] = Symbol(s, f"{base}{quote_asset}", base, quote_asset, tick(s), step(s), min_notional)
        self.by_id = {sym.id: sym for sym in self.by_symbol.values()}

    def get(self, market_id: str) -> Symbol:
        found = self.by_id.get(market_id)
        if found is None:
            raise BinanceError(BAD_SYMBOL, BAD_SYMBOL_MSG)
        return found

    def one(self, params: Mapping[str, str]) -> Symbol:
        """The `symbol` a request must name: -1102 without one, -1121 for one the venue does not list."""
        raw = params.get("symbol", "")
        if not raw:
            raise mandatory("symbol")
        return self.get(raw)

    def select(self, params: Mapping[str, str]) -> list[Symbol] | None:
        """The symbols a request names in `symbol` or `symbols` (a JSON list); None when it names none."""
        if params.get("symbol"):
            return [self.one(params)]
        raw = params.get("symbols", "")
        if not raw:
            return None
        names = [n.strip().strip('"') for n in raw.strip("[]").split(",") if n.strip()]
        if not names:
            raise mandatory("symbols")
        return [self.get(n) for n in names]
