"""The Binance dialect's authentication: API keys and the accounts they reach, and the check of a signed (USER_DATA,
TRADE) request as Binance makes it: `X-MBX-APIKEY` a known key, `signature` the hex HMAC-SHA256 of the request's
parameters (the query string followed by the body, less the signature) keyed with the secret, and `timestamp` within
`recvWindow` of the server's time."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl

from trading_ops.paper.gateway.binance.errors import (
    AHEAD_MSG,
    BAD_API_KEY_FMT,
    BAD_API_KEY_FMT_MSG,
    BAD_RECV_WINDOW,
    BAD_RECV_WINDOW_MSG,
    INVALID_SIGNATURE,
    INVALID_SIGNATURE_MSG,
    INVALID_TIMESTAMP,
    OUTSIDE_RECV_WINDOW_MSG,
    REJECTED_MBX_KEY,
    REJECTED_MBX_KEY_MSG,
    BinanceError,
    invalid,
    mandatory,
)

DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60000
# A request signed this far in the server's future is refused (Binance's 1000 ms).
MAX_AHEAD_MS = 1000
# What an API key may look like (Binance's are 64 letters and digits; the gateway's keys are the operator's choice).
API_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
MAX_DIGITS = 15  # a millisecond timestamp or recvWindow has at most this many digits


def sign(secret: str, payload: str) -> str:
    """Binance's HMAC signature: hex HMAC-SHA256 of `payload` keyed with the secret."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def _whole(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name, "")
    if raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_DIGITS:
        raise invalid(name)
    return int(raw)


class BinanceAuth:
    """Which account each API key reaches and its secret; `now_ms` the server's clock in milliseconds."""

    def __init__(self, keys: Mapping[str, tuple[str, str]], now_ms: Callable[[], int]) -> None:
        self._keys = dict(keys)  # API key -> (secret, account)
        self.now_ms = now_ms

    def keys(self) -> set[str]:
        return set(self._keys)

    def account_of(self, api_key: str) -> str:
        """The account of a key (-2014 for a malformed key, -2015 for one the venue does not know)."""
        if not api_key or not API_KEY_PATTERN.match(api_key):
            raise BinanceError(BAD_API_KEY_FMT, BAD_API_KEY_FMT_MSG)
        found = self._keys.get(api_key)
        if found is None:
            raise BinanceError(REJECTED_MBX_KEY, REJECTED_MBX_KEY_MSG)
        return found[1]

    def secret_of(self, api_key: str) -> str:
        return self._keys[api_key][0]

    def verify(self, api_key: str, query: str, body: str) -> tuple[str, dict[str, str]]:
        """The account and the parameters of a signed request whose raw query string and body are given; a
        BinanceError naming what is wrong otherwise."""
        account = self.account_of(api_key)
        signature = ""
        parts = []
        for raw in (query, body):
            kept = []
            for piece in raw.split("&") if raw else []:
                if piece.startswith("signature="):
                    signature = piece.removeprefix("signature=")
                else:
                    kept.append(piece)
            parts.append("&".join(kept))
        payload = parts[0] + parts[1]  # Binance's totalParams: the query string, then the body
        params = {**self.parse(parts[0]), **self.parse(parts[1])}
        if not signature:
            raise mandatory("signature")
        expected = sign(self.secret_of(api_key), payload)
        if not hmac.compare_digest(expected, signature.lower()):
            raise BinanceError(INVALID_SIGNATURE, INVALID_SIGNATURE_MSG)
        self.check_time(params)
        return account, params

    def check_time(self, params: Mapping[str, str]) -> None:
        """-1021 for a `timestamp` outside `recvWindow` of the server's time (or more than a second ahead of it)."""
        timestamp = _whole(params, "timestamp")
        if timestamp is None:
            raise mandatory("timestamp")
        window = _whole(params, "recvWindow")
        window = DEFAULT_RECV_WINDOW_MS if window is None else window
        if window > MAX_RECV_WINDOW_MS:
            raise BinanceError(BAD_RECV_WINDOW, BAD_RECV_WINDOW_MSG)
        now = self.now_ms()
        if timestamp > now + MAX_AHEAD_MS:
            raise BinanceError(INVALID_TIMESTAMP, AHEAD_MSG)
        if now - timestamp > window:
            raise BinanceError(INVALID_TIMESTAMP, OUTSIDE_RECV_WINDOW_MSG)

    @staticmethod
    def parse(text: str) -> dict[str, str]:
        try:
            return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)))
        except ValueError:
            raise mandatory("signature") from None
