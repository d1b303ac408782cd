"""The Kraken gateway's authentication: API keys and the accounts they reach, request signatures and nonces."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import parse_qsl

from aiohttp import web

from trading_ops.paper.gateway.kraken.api import (
    E_INVALID_ARGUMENTS,
    E_INVALID_KEY,
    E_INVALID_NONCE,
    KrakenError,
    decode_secret,
    sign,
)
from trading_ops.paper.gateway.kraken.faults import GatewayFaults
from trading_ops.paper.venue import PaperVenue

# A nonce is a counter (ccxt sends milliseconds or microseconds): 30 digits is far past any, and int() stays cheap.
MAX_NONCE_DIGITS = 30


class KrakenAuth:
    """Which account each API key reaches, its decoded secret and the last nonce it used, and the check of a private
    call as Kraken makes it: a known key, an API-Sign that verifies, a nonce above the last one (a nonce fault in
    force refuses a correctly signed call first)."""

    def __init__(self, faults: GatewayFaults) -> None:
        self.faults = faults
        self.account_of_key: dict[str, PaperVenue] = {}
        self._secrets: dict[str, bytes] = {}
        self._nonces: dict[str, int] = {}

    def has_key(self, key: str) -> bool:
        return key in self._secrets

    def keys(self) -> set[str]:
        """The API keys the gateway accepts."""
        return set(self._secrets)

    def secret_of(self, key: str) -> bytes | None:
        """The decoded secret `key` signs with (None for an unknown key)."""
        return self._secrets.get(key)

    def add_keys(self, keys: Mapping[str, str], account: PaperVenue) -> None:
        """Let `keys` (API key -> base64 secret) reach `account`; ValueError for a secret that is not base64."""
        for key, secret in keys.items():
            self._secrets[key] = decode_secret(secret)
            self.account_of_key[key] = account

    def authenticate(self, request: web.Request, body: str) -> tuple[PaperVenue, dict[str, str]]:
        """The account of the key and the POST parameters of a correctly signed private call with a fresh nonce;
        KrakenError otherwise."""
        key = request.headers.get("API-Key", "")
        secret = self._secrets.get(key)
        if secret is None:
            raise KrakenError(E_INVALID_KEY)
        try:
            params = dict(parse_qsl(body, keep_blank_values=True, strict_parsing=bool(body)))
        except ValueError:
            raise KrakenError(E_INVALID_ARGUMENTS) from None
        nonce = params.get("nonce", "")
        expected = sign(secret, request.path, nonce, body)
        given = request.headers.get("API-Sign", "")
        if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
            raise KrakenError(E_INVALID_KEY)  # as Kraken answers a wrong secret
        self.faults.check_nonce()
        if not nonce.isascii() or not nonce.isdigit() or len(nonce) > MAX_NONCE_DIGITS:
            raise KrakenError(E_INVALID_NONCE)
        if int(nonce) <= self._nonces.get(key, 0):
            raise KrakenError(E_INVALID_NONCE)
        self._nonces[key] = int(nonce)
        return self.account_of_key[key], params
