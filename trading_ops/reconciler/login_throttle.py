"""How fast the console takes login attempts: a token bucket per client address and one for everyone, so guessing
tokens is slow from one address and from many (each replica keeps its own buckets, in memory)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# Per client: a burst of 20 attempts, then one every 6 s (10 a minute); for everyone together: 60, then one a second.
# A person who mistyped a token logs in at once; a guesser from one address gets 14,400 tries a day, from a botnet
# 86,400 in all (against tokens of at least 16 characters: trading_ops.config's MIN_TOKEN_CHARS).
CLIENT_BURST, CLIENT_INTERVAL_SECONDS = 20, 6.0
ALL_BURST, ALL_INTERVAL_SECONDS = 60, 1.0
# Client buckets remembered at most (the fullest are forgotten first: a full bucket is what a new one would be).
MAX_CLIENTS = 10_000


@dataclass
class Bucket:
    burst: int
    interval: float
    tokens: float
    at: float

    def refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) / self.interval)
        self.at = now

    def wait(self) -> float:
        """Seconds until one attempt is allowed (0: now)."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) * self.interval


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.everyone = Bucket(ALL_BURST, ALL_INTERVAL_SECONDS, float(ALL_BURST), clock())
        self.clients: dict[str, Bucket] = {}

    def _client(self, address: str, now: float) -> Bucket:
        bucket = self.clients.get(address)
        if bucket is None:
            if len(self.clients) >= MAX_CLIENTS:
                for b in self.clients.values():
                    b.refill(now)
                full = [a for a, b in self.clients.items() if b.tokens >= b.burst]
                for gone in full or list(self.clients)[: MAX_CLIENTS // 10]:
                    del self.clients[gone]
            bucket = self.clients[address] = Bucket(CLIENT_BURST, CLIENT_INTERVAL_SECONDS, float(CLIENT_BURST), now)
        return bucket

    def admit(self, address: str) -> int:
        """Take one attempt of `address`: 0 when it may go on, else the whole seconds to wait (Retry-After)."""
        now = self.clock()
        client = self._client(address, now)
        client.refill(now)
        self.everyone.refill(now)
        wait = max(client.wait(), self.everyone.wait())
        if wait > 0:
            return max(1, math.ceil(wait))
        client.tokens -= 1
        self.everyone.tokens -= 1
        return 0
