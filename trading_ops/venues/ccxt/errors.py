"""ccxt's exceptions as the library's venue error classes, in one table: what a BrokerError from a ccxt call says."""

from __future__ import annotations

import re

import aiohttp
import ccxt.async_support as ccxt_async

from trading_ops.bot.broker import BrokerError

MESSAGE_LIMIT = 300  # characters of a BrokerError's message, the cause's text cut to fit

# ccxt exception class (and, where it decides, the aiohttp cause) -> our venue error class. First match wins, so
# subclasses come before their parents (ccxt/base/errors.py: NetworkError > DDoSProtection > RateLimitExceeded,
# ExchangeNotAvailable, InvalidNonce, RequestTimeout; ExchangeError > AuthenticationError, InsufficientFunds,
# InvalidOrder > OrderNotFound).
ERROR_CLASSES: tuple[tuple[type[Exception], type[BaseException] | None, str], ...] = (
    (ccxt_async.InvalidNonce, None, "nonce"),
    (ccxt_async.RateLimitExceeded, None, "rate_limit"),
    (ccxt_async.DDoSProtection, None, "rate_limit"),
    (ccxt_async.RequestTimeout, None, "network"),
    (ccxt_async.ExchangeNotAvailable, aiohttp.ClientConnectionError, "network"),  # connection refused or dropped
    (ccxt_async.ExchangeNotAvailable, None, "unavailable"),  # the venue said so (maintenance, busy)
    (ccxt_async.NetworkError, None, "network"),
    (ccxt_async.AuthenticationError, None, "auth"),
    (ccxt_async.InsufficientFunds, None, "insufficient_funds"),
    (ccxt_async.InvalidOrder, None, "invalid_order"),
    (ccxt_async.BaseError, None, "other"),
)
# A connection that could not be opened carried no request: such a failure is a definite one.
UNSENT_CAUSES: tuple[type[BaseException], ...] = (aiohttp.ClientConnectorError,)
# Venue errors the installed ccxt leaves as a bare ExchangeError; taught to it (ccxt's own `exact` and `broad` tables)
# so it raises the class they are. Kraken documents `EAPI:Invalid signature` for a wrong secret (today it answers
# `EAPI:Invalid key`, which ccxt knows, and so does the paper gateway), and words a refused price
# `EOrder:Invalid price:<why>`, of which ccxt knows only `...:Invalid price argument`
# (`...:XXBTZUSD price can only be specified up to 1 decimals.` is another).
EXTRA_ERRORS: dict[str, dict[str, dict[str, type[Exception]]]] = {
    "kraken": {
        "exact": {"EAPI:Invalid signature": ccxt_async.AuthenticationError},
        "broad": {"EOrder:Invalid price": ccxt_async.InvalidOrder},
    },
    # Binance: every filter failure (-1013) is an invalid order (ccxt names LOT_SIZE and PRICE_FILTER only, NOTIONAL
    # is a BadRequest), as is a client order id Binance refuses (-1100 on newClientOrderId); -1001 (503, "Internal
    # error; unable to process your request") is the venue unavailable, not an unknown failure. ccxt matches these
    # common messages before any code, whatever the URL's host (its spot table is chosen by api.binance.com's).
    "binance": {
        "exact": {"-1001": ccxt_async.ExchangeNotAvailable},
        "broad": {
            "Filter failure:": ccxt_async.InvalidOrder,
            "Illegal characters found in parameter 'newClientOrderId'": ccxt_async.InvalidOrder,
        },
    },
}
# The client order ids each venue takes (Binance: at most 36 of `[.A-Z:/a-z0-9_-]`): a longer or other id is refused
# before it is sent, a definite invalid_order, rather than by the venue.
CLIENT_ORDER_IDS = {"binance": re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")}


def error_class(exc: BaseException) -> str:
    """Our venue error class of a ccxt exception (ERROR_CLASSES)."""
    for cls, cause, name in ERROR_CLASSES:
        if isinstance(exc, cls) and (cause is None or isinstance(exc.__cause__, cause)):
            return name
    return "other"


def broker_error(exc: BaseException, what: str) -> BrokerError:
    unsent = isinstance(exc.__cause__, UNSENT_CAUSES)
    text = f"{what}: {type(exc).__name__}: {exc}"
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 3] + "..."
    return BrokerError(error_class(exc), text, outcome_unknown=False if unsent else None)
