"""Binance spot's numbered errors as the gateway answers them: `{"code": -1121, "msg": "Invalid symbol."}` with the
HTTP status Binance uses (4XX for the sender's mistakes, 429 past a limit, 418 for a banned IP)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The messages Binance sends with each code (developers.binance.com, spot errors), as ccxt's binance client matches
# them: its exception table is keyed by the code, and by some messages.
TOO_MANY_REQUESTS = -1003
WEIGHT_MSG = (
    "Too much request weight used; current limit is {limit} request weight per 1 MINUTE. Please use WebSocket Streams "
    "for live updates to avoid polling the API."
)
BANNED_MSG = (
    "Way too much request weight used; IP banned until {until}. Please use WebSocket Streams for live updates to "
    "avoid bans."
)
DISCONNECTED = -1001
DISCONNECTED_MSG = "Internal error; unable to process your request. Please try again."
INVALID_MESSAGE = -1013
FILTER_MSG = "Filter failure: {filter}"
TOO_MANY_ORDERS = -1015
TOO_MANY_ORDERS_MSG = "Too many new orders; current limit is {limit} orders per {interval}."
INVALID_TIMESTAMP = -1021
OUTSIDE_RECV_WINDOW_MSG = "Timestamp for this request is outside of the recvWindow."
AHEAD_MSG = "Timestamp for this request was 1000ms ahead of the server's time."
INVALID_SIGNATURE = -1022
INVALID_SIGNATURE_MSG = "Signature for this request is not valid."
ILLEGAL_CHARS = -1100
ILLEGAL_CHARS_MSG = "Illegal characters found in parameter '{name}'; legal range is '{legal}'."
MANDATORY_PARAM = -1102
MANDATORY_PARAM_MSG = "Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
UNKNOWN_PARAM = -1103
INVALID_TIF = -1115
INVALID_TIF_MSG = "Invalid timeInForce."
INVALID_ORDER_TYPE = -1116
INVALID_ORDER_TYPE_MSG = "Invalid orderType."
INVALID_SIDE = -1117
INVALID_SIDE_MSG = "Invalid side."
BAD_SYMBOL = -1121
BAD_SYMBOL_MSG = "Invalid symbol."
INVALID_LISTEN_KEY = -1125
INVALID_LISTEN_KEY_MSG = "This listenKey does not exist."
INVALID_PARAMETER = -1130
INVALID_PARAMETER_MSG = "Data sent for parameter '{name}' is not valid."
BAD_RECV_WINDOW = -1131
BAD_RECV_WINDOW_MSG = "recvWindow must be less than 60000"
NEW_ORDER_REJECTED = -2010
INSUFFICIENT_BALANCE_MSG = "Account has insufficient balance for requested action."
DUPLICATE_ORDER_MSG = "Duplicate order sent."
CANCEL_REJECTED = -2011
UNKNOWN_ORDER_MSG = "Unknown order sent."
NO_SUCH_ORDER = -2013
NO_SUCH_ORDER_MSG = "Order does not exist."
BAD_API_KEY_FMT = -2014
BAD_API_KEY_FMT_MSG = "API-key format invalid."
REJECTED_MBX_KEY = -2015
REJECTED_MBX_KEY_MSG = "Invalid API-key, IP, or permissions for action."
CANCEL_REPLACE_PARTIAL = -2021
CANCEL_REPLACE_FAILED = -2022
# What Binance answers in place of a route it does not have.
NOT_FOUND_STATUS = 404
# The HTTP status of each code other than 400 (Binance's own choice: an API key refused is a 401).
STATUS = {
    REJECTED_MBX_KEY: 401,
    BAD_API_KEY_FMT: 401,
    DISCONNECTED: 503,
}
# The legal range of a client order id (newClientOrderId, origClientOrderId, cancelNewClientOrderId).
CLIENT_ORDER_ID_PATTERN = r"^[\.A-Z\:/a-z0-9_-]{1,36}$"


class BinanceError(Exception):
    """A request refused with one of Binance's numbered errors; `status` the HTTP status it is answered with."""

    def __init__(
        self,
        code: int,
        msg: str,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        *,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        self.status = status if status is not None else STATUS.get(code, 400)
        self.headers = headers or {}
        self.data = data  # what cancelReplace did of each half, beside its error

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "msg": self.msg}
        if self.data is not None:
            body["data"] = self.data
        return body


def mandatory(name: str) -> BinanceError:
    return BinanceError(MANDATORY_PARAM, MANDATORY_PARAM_MSG.format(name=name))


def invalid(name: str) -> BinanceError:
    return BinanceError(INVALID_PARAMETER, INVALID_PARAMETER_MSG.format(name=name))


def filter_failure(name: str) -> BinanceError:
    return BinanceError(INVALID_MESSAGE, FILTER_MSG.format(filter=name))
