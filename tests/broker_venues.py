"""The gateway in each of its dialects as a broker test meets it: `open_venue("kraken" | "binance")` yields the
gateway, its URL, a factory of ccxt's stock client of that exchange on it and what differs between the dialects (keys,
call names, how an id of the paper venue reads on the wire), so that one test runs on both
(`@pytest.mark.parametrize("venue_name", VENUES)`, ids `[kraken]` and `[binance]`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import ccxt.async_support as ccxt
from binance_helpers import (
    BINANCE_KEY,
    BINANCE_RECONCILER_KEY,
    BINANCE_RECONCILER_SECRET,
    BINANCE_SECRET,
    BINANCE_SUB_KEY,
    BINANCE_SUB_SECRET,
    binance,
    binance_gateway,
)
from ccxt_helpers import API_KEY, API_SECRET, OTHER_KEY, OTHER_SECRET, SUB_KEY, SUB_SECRET, kraken, running_gateway

from trading_ops.paper.gateway.binance.market import trade_number
from trading_ops.paper.gateway.kraken.gateway import KrakenGateway

VENUES = ["kraken", "binance"]
# Each dialect's keys: the main account's (the broker's), another key of the main account (a person's, placing orders
# by hand), the sub-account's, and a secret that is not the main key's.
KEYS = {
    "kraken": {
        "main": (API_KEY, API_SECRET),
        "other": (OTHER_KEY, OTHER_SECRET),
        "sub": (SUB_KEY, SUB_SECRET),
        "wrong_secret": OTHER_SECRET,
    },
    "binance": {
        "main": (BINANCE_KEY, BINANCE_SECRET),
        "other": (BINANCE_RECONCILER_KEY, BINANCE_RECONCILER_SECRET),
        "sub": (BINANCE_SUB_KEY, BINANCE_SUB_SECRET),
        "wrong_secret": "not the secret of the main account",
    },
}
# The calls a test counts, by what they do, as each dialect's gateway counts them (KrakenGateway.calls: by method;
# the Binance dialect's rest.calls: by route, whatever its HTTP method, and by method and route).
CALLS = {
    "kraken": {"status": "SystemStatus", "balances": "BalanceEx", "tickers": "Ticker", "orders": "AddOrder"},
    "binance": {
        "status": "sapi/system/status",
        "balances": "api/account",
        "tickers": "api/ticker/24hr",
        "orders": "POST api/order",
    },
}
# An order id no order of the venue has, in the dialect's own form (Binance's are numbers).
UNKNOWN_ORDER_ID = {"kraken": "P999", "binance": "987654"}
# How an order or trade id of the paper venue (P12, T34) reads in the dialect's answers.
WIRE_IDS: dict[str, Callable[[str], str]] = {"kraken": str, "binance": lambda paper: str(trade_number(paper))}


@dataclass(frozen=True)
class Venue:
    """One dialect of a running gateway: `client()` is ccxt's stock client of that exchange on it (the main account's
    key unless told), `calls` the gateway's count of answered calls of the dialect."""

    name: str
    gateway: KrakenGateway
    base: str
    calls: dict[str, int]

    def client(self, key: str = "", secret: str = "", **options: Any) -> ccxt.Exchange:
        main_key, main_secret = KEYS[self.name]["main"]
        make = kraken if self.name == "kraken" else binance
        return make(self.base, key or main_key, secret or main_secret, **options)

    def key(self, which: str) -> tuple[str, str]:
        """("other" | "sub"): that key and its secret."""
        key, secret = KEYS[self.name][which]
        return str(key), str(secret)

    @property
    def wrong_secret(self) -> str:
        return str(KEYS[self.name]["wrong_secret"])

    def called(self, what: str) -> int:
        """How many calls of `what` ("status", "balances", "tickers", "orders": placed) the gateway answered."""
        return self.calls.get(CALLS[self.name][what], 0)

    def wire_id(self, paper_id: str) -> str:
        return WIRE_IDS[self.name](paper_id)

    @property
    def unknown_order_id(self) -> str:
        return UNKNOWN_ORDER_ID[self.name]


@contextlib.asynccontextmanager
async def open_venue(name: str, *, sub_account: bool = False, **venue_args: Any) -> AsyncIterator[Venue]:
    """The gateway over a fresh paper venue (quiet unless told otherwise) speaking `name`'s dialect to the test:
    Kraken's (ccxt_helpers.running_gateway, with its sub-account if asked) or Binance's
    (binance_helpers.binance_gateway, whose sub-account is always there)."""
    if name == "kraken":
        async with running_gateway(sub_account, **venue_args) as (gateway, base):
            yield Venue(name, gateway, base, gateway.calls)
    elif name == "binance":
        async with binance_gateway(**venue_args) as (gateway, dialect, base):
            yield Venue(name, gateway, base, dialect.rest.calls)
    else:
        raise ValueError(f"no dialect {name}")
