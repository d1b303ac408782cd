"""Kraken's REST vocabulary as the gateway speaks it: error strings, asset and pair names, request signing, and
reading a request's parameters."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from trading_ops.http_input import MAX_NUMBER_CHARS, InputError, whole_number

# Kraken's ids for the assets it names the legacy way (X for crypto, Z for fiat): (id, altname). Others keep their
# name as both.
# The largest magnitude a decimal parameter may have (a nanosecond `since` is about 1.8e18).
MAX_DECIMAL = Decimal(10) ** 20
KRAKEN_ASSETS = {
    "BTC": ("XXBT", "XBT"),
    "ETH": ("XETH", "ETH"),
    "LTC": ("XLTC", "LTC"),
    "XRP": ("XXRP", "XRP"),
    "USD": ("ZUSD", "USD"),
    "EUR": ("ZEUR", "EUR"),
    "GBP": ("ZGBP", "GBP"),
}

# Kraken's error strings, as its REST API documents them.
E_INVALID_KEY = "EAPI:Invalid key"  # an unknown key, and a signature that does not verify
E_INVALID_NONCE = "EAPI:Invalid nonce"
E_RATE_LIMIT = "EAPI:Rate limit exceeded"
E_ORDER_RATE_LIMIT = "EOrder:Rate limit exceeded"
E_UNAVAILABLE = "EService:Unavailable"
E_BUSY = "EService:Busy"
E_INSUFFICIENT_FUNDS = "EOrder:Insufficient funds"
E_ORDER_MINIMUM = "EOrder:Order minimum not met"
E_INVALID_ORDER = "EOrder:Invalid order"
E_INVALID_PRICE = "EOrder:Invalid price:Invalid price argument"
E_PRICE_DECIMALS = "EOrder:Invalid price:{pair} price can only be specified up to {decimals} decimals."
E_UNKNOWN_ORDER = "EOrder:Unknown order"
E_UNKNOWN_PAIR = "EQuery:Unknown asset pair"
E_INVALID_ARGUMENTS = "EGeneral:Invalid arguments"
E_UNKNOWN_METHOD = "EGeneral:Unknown method"
# The order-placement calls count against Kraken's trading limiter, whose refusal says EOrder.
TRUE_VALUES = frozenset({"true", "True", "1"})


class KrakenError(Exception):
    """A request refused with one of Kraken's error strings."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class Pair:
    symbol: str  # ours: BTC-USD
    pair_id: str  # Kraken's key: XXBTZUSD
    altname: str  # XBTUSD
    wsname: str  # XBT/USD
    base_id: str
    quote_id: str


def asset_id(asset: str) -> str:
    """Kraken's id for an asset: XXBT for BTC, ZUSD for USD, SOL for SOL."""
    return KRAKEN_ASSETS.get(asset, (asset, asset))[0]


def make_pair(symbol: str, base: str, quote: str) -> Pair:
    base_id, base_alt = KRAKEN_ASSETS.get(base, (base, base))
    quote_id, quote_alt = KRAKEN_ASSETS.get(quote, (quote, quote))
    legacy = base_id != base_alt and quote_id != quote_alt  # XXBTZUSD; but SOLUSD
    pair_id = base_id + quote_id if legacy else base_alt + quote_alt
    return Pair(symbol, pair_id, base_alt + quote_alt, f"{base_alt}/{quote_alt}", base_id, quote_id)


def sign(secret: bytes, path: str, nonce: str, body: str) -> str:
    """Kraken's API-Sign: base64(HMAC-SHA512(secret, path + SHA256(nonce + body)))."""
    digest = hashlib.sha256((nonce + body).encode()).digest()
    return base64.b64encode(hmac.new(secret, path.encode() + digest, hashlib.sha512).digest()).decode()


def decode_secret(secret: str) -> bytes:
    """A Kraken API secret is base64; raises ValueError naming the problem otherwise."""
    try:
        decoded = base64.b64decode(secret.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("an API secret must be base64 (as Kraken issues them)") from None
    if not decoded:
        raise ValueError("an API secret must not be empty")
    return decoded


def num(value: Decimal) -> str:
    """A decimal as Kraken writes it: plain notation, never an exponent."""
    return format(value, "f")


def ts(at: datetime | None) -> float:
    return 0.0 if at is None else at.timestamp()


def rfc3339(at: datetime) -> str:
    """A time as Kraken's CancelAllOrdersAfter writes it: RFC 3339 in UTC, to the second (2023-03-24T17:41:56Z)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def flag(params: Mapping[str, str], name: str) -> bool:
    return params.get(name, "") in TRUE_VALUES


def decimal_param(params: Mapping[str, str], name: str) -> Decimal | None:
    """A decimal parameter (None when absent or empty); KrakenError for a malformed one."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(raw) if len(raw) <= MAX_NUMBER_CHARS else Decimal("NaN")
    except InvalidOperation:
        raise KrakenError(f"{E_INVALID_ARGUMENTS}:{name}") from None
    # Finite and of a size a price, a volume or a time can have (a nanosecond id included): `1e999999` is none.
    if not value.is_finite() or abs(value) >= MAX_DECIMAL:
        raise KrakenError(f"{E_INVALID_ARGUMENTS}:{name}")
    return value


def count_param(params: Mapping[str, str], name: str, default: int, high: int) -> int:
    """A whole-number parameter (a count, an offset, an interval) from 0 to `high`; `default` when absent or empty;
    KrakenError for anything else (no int() of thousands of digits, nor of `²`)."""
    raw = params.get(name, "")
    if not raw:
        return default
    try:
        return whole_number(raw, name, 0, high)
    except InputError:
        raise KrakenError(f"{E_INVALID_ARGUMENTS}:{name}") from None


def seconds_param(params: Mapping[str, str], name: str) -> float | None:
    value = decimal_param(params, name)
    return None if value is None else float(value)


class Pairs:
    """The pairs of the venue's symbols, found by any of Kraken's names for them (id, altname, wsname)."""

    def __init__(self, symbols: Iterable[str], base_asset: Callable[[str], str], quote_asset: str) -> None:
        self.by_symbol = {s: make_pair(s, base_asset(s), quote_asset) for s in symbols}
        self._by_name: dict[str, Pair] = {}
        for pair in self.by_symbol.values():
            self._by_name[pair.pair_id] = pair
            self._by_name[pair.altname] = pair
            self._by_name[pair.wsname] = pair

    def select(self, params: Mapping[str, str], *, required: bool = False) -> list[Pair]:
        """The pairs a request names in `pair` (every pair when it names none, unless `required`)."""
        raw = params.get("pair", "")
        if not raw:
            if required:
                raise KrakenError(f"{E_INVALID_ARGUMENTS}:pair")
            return list(self.by_symbol.values())
        found = []
        for name in raw.split(","):
            pair = self._by_name.get(name)
            if pair is None:
                raise KrakenError(E_UNKNOWN_PAIR)
            found.append(pair)
        return found

    def one(self, params: Mapping[str, str]) -> Pair:
        """The first pair a request must name."""
        return self.select(params, required=True)[0]
