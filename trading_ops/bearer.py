"""Bearer-token checks in constant time that hold for any bytes a client puts in the Authorization header."""

from __future__ import annotations

import hmac

SCHEME = "bearer"


def bearer_value(header: str | None) -> bytes | None:
    """The token of `Bearer <token>` as the bytes the client sent, or None for any other header. aiohttp hands over
    header bytes that are not UTF-8 as surrogate escapes (`caf\\xe9` -> 'caf\\udce9'): they are turned back into the
    bytes they were, never encoded strictly (which raised, a 500 instead of a 401)."""
    if not header:
        return None
    scheme, _, given = header.partition(" ")
    given = given.strip()
    if scheme.lower() != SCHEME or not given:
        return None
    return given.encode("utf-8", "surrogateescape")


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether `header` is `Bearer <token>`."""
    given = bearer_value(header)
    if given is None or not token:
        return False
    return hmac.compare_digest(given, token.encode("utf-8", "surrogateescape"))
