"""Named bearer tokens and their scopes: which configured token a request carries, and whether it may do what it asks.

Scopes are a ladder with one rung beside it: `read` (status, episodes) < `operate` (pause, resume, reconnect, ...)
< `destructive` (cancel_all, flatten, halt, clear_halt); a token of a scope may do what every scope below it may.
`approve` (the reconciler's approvals) is beside the ladder: it includes `read` (an approver sees what they are asked
to approve) and nothing else, and no scope of the ladder includes it (whoever may flatten may not approve a flatten).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from trading_ops.bearer import bearer_value

READ = "read"
OPERATE = "operate"
DESTRUCTIVE = "destructive"
APPROVE = "approve"
SCOPES = (READ, OPERATE, DESTRUCTIVE, APPROVE)
# What a token of each scope may do.
GRANTS: dict[str, frozenset[str]] = {
    READ: frozenset({READ}),
    OPERATE: frozenset({READ, OPERATE}),
    DESTRUCTIVE: frozenset({READ, OPERATE, DESTRUCTIVE}),
    APPROVE: frozenset({READ, APPROVE}),
}


@dataclass(frozen=True)
class Token:
    """One configured token, known by its name (logs, journal, the `source` label), never by its value."""

    name: str
    scope: str
    # SHA-256 of the secret: every comparison is between two 32-byte strings, whatever the client sent.
    digest: bytes
    # The single token of a configuration from before named tokens (bot.control_token and the like): its callers
    # still name themselves in the X-Trading-Ops-Source header, as they did.
    legacy: bool = False

    def allows(self, scope: str) -> bool:
        return scope in GRANTS[self.scope]


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class TokenSet:
    """The tokens one API accepts. `match` compares the presented token with every configured one in constant time
    (no early exit, equal lengths), so neither a token's value nor which one matched shows in the response time."""

    def __init__(self, tokens: Iterable[tuple[str, str, str]], legacy: tuple[str, str, str] | None = None) -> None:
        """`tokens`: (name, scope, secret) of each named token; `legacy`: the same of the single older token."""
        entries = [(name, scope, secret, False) for name, scope, secret in tokens]
        if legacy is not None:
            entries.insert(0, (*legacy, True))
        self.tokens: list[Token] = []
        seen: dict[bytes, str] = {}
        for name, scope, secret, is_legacy in entries:
            if scope not in GRANTS:
                raise ValueError(f"token {name!r}: unknown scope {scope!r} (known: {', '.join(SCOPES)})")
            if not secret:
                raise ValueError(f"token {name!r} is empty")
            if any(t.name == name for t in self.tokens):
                raise ValueError(f"token name {name!r} is given twice")
            digest = _digest(secret.encode("utf-8", "surrogateescape"))
            if digest in seen:
                raise ValueError(f"tokens {seen[digest]!r} and {name!r} have the same value; give each its own")
            seen[digest] = name
            self.tokens.append(Token(name, scope, digest, is_legacy))

    @classmethod
    def single(cls, secret: str, name: str = "control_token", scope: str = DESTRUCTIVE) -> TokenSet:
        """One token with every right of its API (what a bot given a bare token string accepts)."""
        return cls([], legacy=(name, scope, secret))

    def __bool__(self) -> bool:
        return bool(self.tokens)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tokens]

    def match(self, header: str | None) -> Token | None:
        """The token `header` (`Bearer <token>`) carries, or None for a missing or unknown one."""
        given = bearer_value(header)
        if given is None:
            return None
        digest = _digest(given)
        found: Token | None = None
        for token in self.tokens:
            if hmac.compare_digest(digest, token.digest) and found is None:
                found = token
        return found


def refusal(action: str, needed: str, token: Token) -> str:
    """The one line of a 403: what was asked, the scope it needs, and what the token has."""
    return f"{action} needs the '{needed}' scope; token '{token.name}' has '{token.scope}'"
