"""Bearer-token checks in constant time that hold for any bytes a client puts in the Authorization header."""

from __future__ import annotations

import hmac

SCHEME = "bearer"


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether `header` is `Bearer <token>`. aiohttp hands over header bytes that are not UTF-8 as surrogate
    escapes (`caf\\xe9` -> 'caf\\udce9'): they are compared as the bytes they were, never encoded strictly (which
    raised, a 500 instead of a 401)."""
    if not header or not token:
        return False
    scheme, _, given = header.partition(" ")
    given = given.strip()
    if scheme.lower() != SCHEME or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape"))
