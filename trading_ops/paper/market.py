"""The paper venue's market: a random walk of mid prices per symbol, quoted around the mid with a fixed spread."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any

from trading_ops.bot.broker import Quote, Side

DEFAULT_PRICES = {"BTC-USD": Decimal("65000"), "ETH-USD": Decimal("3200"), "SOL-USD": Decimal("150")}
UNKNOWN_SYMBOL_PRICE = Decimal("100")
DEFAULT_TICK_SIZE = Decimal("0.01")
DEFAULT_STEP_SIZE = Decimal("0.0001")
DEFAULT_SPREAD = Decimal("0.0002")  # bid-to-ask, relative to mid: 2 bps


class RandomWalkMarket:
    """The symbols, their tick and step sizes and mid prices, and the random generator.

    The generator is the venue's only source of chance: the matching (random rejects, partial fills) draws from it
    too, so one seed makes the whole venue deterministic, and it is saved with the venue's state.
    """

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        quote_asset: str,
        initial_prices: Mapping[str, Decimal] | None,
        tick_sizes: Mapping[str, Decimal] | None,
        step_sizes: Mapping[str, Decimal] | None,
        spread: Decimal,
        volatility: float,
        seed: int,
    ) -> None:
        self.symbols = list(dict.fromkeys(symbols))
        if not self.symbols:
            raise ValueError("a paper venue needs at least one symbol")
        self.quote_asset = quote_asset
        self.spread = Decimal(spread)
        self.volatility = volatility
        self.rng = random.Random(seed)
        self.tick_sizes = {s: Decimal((tick_sizes or {}).get(s, DEFAULT_TICK_SIZE)) for s in self.symbols}
        self.step_sizes = {s: Decimal((step_sizes or {}).get(s, DEFAULT_STEP_SIZE)) for s in self.symbols}
        prices = {**DEFAULT_PRICES, **(initial_prices or {})}
        self.mid = {s: self.round_price(s, Decimal(prices.get(s, UNKNOWN_SYMBOL_PRICE))) for s in self.symbols}

    def base_asset(self, symbol: str) -> str:
        """The asset a symbol trades: BTC for BTC-USD."""
        suffix = f"-{self.quote_asset}"
        if symbol.endswith(suffix):
            return symbol[: -len(suffix)]
        return symbol.split("-", 1)[0]

    def check_symbol(self, symbol: str) -> None:
        if symbol not in self.mid:
            raise ValueError(f"unknown symbol {symbol}")

    def round_price(self, symbol: str, price: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
        return price.quantize(self.tick_sizes[symbol], rounding=rounding)

    def round_quantity(self, symbol: str, quantity: Decimal) -> Decimal:
        return quantity.quantize(self.step_sizes[symbol], rounding=ROUND_DOWN)

    def bid_ask(self, symbol: str) -> tuple[Decimal, Decimal]:
        """The bid and ask around the mid: at least a tick apart, never below a tick."""
        mid = self.mid[symbol]
        half = mid * self.spread / 2
        tick = self.tick_sizes[symbol]
        bid = max(tick, self.round_price(symbol, mid - half, ROUND_FLOOR))
        return bid, max(bid + tick, self.round_price(symbol, mid + half, ROUND_CEILING))

    def quote(self, symbol: str, at: datetime) -> Quote:
        """The bid and ask, stamped `at`."""
        bid, ask = self.bid_ask(symbol)
        return Quote(symbol=symbol, bid=bid, ask=ask, timestamp=at)

    def step(self, at: datetime) -> dict[str, Quote]:
        """Move every price one random-walk step; the new quotes."""
        quotes: dict[str, Quote] = {}
        for symbol in self.symbols:
            change = Decimal(repr(self.rng.gauss(0.0, self.volatility)))
            self.set_mid(symbol, self.mid[symbol] * (1 + change))
            quotes[symbol] = self.quote(symbol, at)
        return quotes

    def set_mid(self, symbol: str, price: Decimal) -> None:
        """Move the mid of `symbol` to `price`, rounded to the tick and never below one tick."""
        self.mid[symbol] = max(self.tick_sizes[symbol], self.round_price(symbol, price))

    @staticmethod
    def taker_price(side: Side, quote: Quote) -> Decimal:
        return quote.ask if side is Side.BUY else quote.bid

    # -- state ------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        rng_version, rng_internal, rng_gauss = self.rng.getstate()
        return {
            "prices": {s: str(p) for s, p in self.mid.items()},
            "rng": [rng_version, list(rng_internal), rng_gauss],
        }

    def load(self, data: Mapping[str, Any]) -> None:
        """Take the prices and the generator of a saved state; symbols only the state has are added (their positions
        are real), with the default tick and step sizes."""
        for symbol in data["prices"]:
            if symbol not in self.mid:
                self.symbols.append(symbol)
                self.tick_sizes[symbol] = DEFAULT_TICK_SIZE
                self.step_sizes[symbol] = DEFAULT_STEP_SIZE
        self.mid.update({s: Decimal(p) for s, p in data["prices"].items()})
        rng_version, rng_internal, rng_gauss = data["rng"]
        self.rng.setstate((rng_version, tuple(rng_internal), rng_gauss))
