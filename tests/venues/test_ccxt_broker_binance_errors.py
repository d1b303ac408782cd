"""The ccxt broker's error table on Binance (trading_ops.venues.ccxt: ERROR_CLASSES, EXTRA_ERRORS["binance"]) and its
check of Binance's client order ids: each numbered error the stock binance client raises, from the gateway's Binance
dialect, maps to our venue error class. Real parts: the gateway's aiohttp app on a free loopback port, ccxt's real
binance client (as CcxtBroker holds it)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from binance_helpers import binance, binance_gateway
from ccxt_helpers import chaos

from trading_ops.bot.broker import BrokerError, OrderRequest, OrderType, Side
from trading_ops.venues.ccxt.errors import error_class
from trading_ops.venues.ccxt.rest import CcxtBroker

LIMIT = {"side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
CASES: dict[str, tuple[str, Callable[[Any], Awaitable[Any]]]] = {
    "-2010 insufficient balance": ("insufficient_funds", lambda ex: ex.create_order("BTC/USD", "market", "sell", 1)),
    "-1013 NOTIONAL": (
        "invalid_order",
        lambda ex: ex.private_post_order({**LIMIT, "symbol": "SOLUSD", "quantity": "0.01", "price": "100"}),
    ),
    "-1013 LOT_SIZE": (
        "invalid_order",
        lambda ex: ex.private_post_order({**LIMIT, "symbol": "BTCUSD", "quantity": "0.00015", "price": "60000"}),
    ),
    "-1100 client order id": (
        "invalid_order",
        lambda ex: ex.create_order("BTC/USD", "limit", "buy", 0.01, 60000, {"clientOrderId": "x" * 37}),
    ),
    "-2011 unknown order": ("invalid_order", lambda ex: ex.cancel_order("999", "BTC/USD")),
    "-1021 clock": ("nonce", lambda ex: ex.fetch_balance()),
    "-1001 unavailable": ("unavailable", lambda ex: ex.fetch_balance()),
    "429 weight": ("rate_limit", lambda ex: ex.fetch_ticker("BTC/USD")),
    "-1022 signature": ("auth", lambda ex: ex.fetch_balance()),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_binance_errors_map_to_our_venue_error_classes(case: str) -> None:
    expected, provoke = CASES[case]
    async with binance_gateway() as (_gw, dialect, base):
        ex = binance(base, secret="not the secret") if case == "-1022 signature" else binance(base)
        CcxtBroker(ex, ["BTC-USD", "SOL-USD"])  # teaches the client the broker's extra errors
        try:
            loader = binance(base)  # the markets with a good key (a client with a wrong secret needs them too)
            try:
                ex.set_markets(list((await loader.load_markets()).values()))
            finally:
                await loader.close()
            fault = {
                "-1021 clock": ("binance_clock_drift", {"ms": -20_000}),
                "-1001 unavailable": ("unavailable", {"seconds": 0}),
                "429 weight": ("binance_weight_exhausted", {}),
            }.get(case)
            if case == "429 weight":
                # The fault spends the weight for the rest of the limiter's minute: on the wall clock, one injected in
                # that minute's last milliseconds was over before the request (a run beside other work, stop 70).
                # The limiter's minute stands still here.
                frozen = time.time()
                dialect.weights.clock = lambda: frozen
            if fault is not None:
                await chaos(base, fault[0], **fault[1])
            with pytest.raises(Exception) as raised:
                await provoke(ex)
            assert error_class(raised.value) == expected, raised.value
        finally:
            await ex.close()


async def test_a_client_order_id_binance_would_refuse_is_refused_before_it_is_sent() -> None:
    async with binance_gateway() as (_gw, dialect, base):
        ex = binance(base)
        broker = CcxtBroker(ex, ["BTC-USD"])
        try:
            for cid in ("b" * 37, "bot one-1", "bot#1"):
                request = OrderRequest(cid, "BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal(60000))
                with pytest.raises(BrokerError) as raised:
                    await broker.submit(request)
                assert raised.value.error_class == "invalid_order" and raised.value.outcome_unknown is False
            assert "api/order" not in dialect.rest.calls and dialect.rest.calls == {}  # nothing was sent
        finally:
            await ex.close()
