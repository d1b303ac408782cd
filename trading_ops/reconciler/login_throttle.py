"""How the console takes failed logins: failures are charged per client and for everyone together, a valid token is
never throttled, and a flood is one log line and a few metrics (each replica keeps its own buckets, in memory)."""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Only failed attempts spend a bucket; a login with a valid token spends nothing and is never refused for others'
# failures. Per client: a burst of 20 failures, then one every 6 s (10 a minute): a person who mistyped a token tries
# again at once, a guesser from one address gets 14,400 tries a day.
CLIENT_BURST, CLIENT_INTERVAL_SECONDS = 20, 6.0
# For everyone together: 60 failures, then one a second. Past it a flood is on: a client has 3 failed tries left at
# most (a person mistyping a token at 3 a.m.), then one per 6 s, so a botnet of N addresses guesses 3N, then N/6 a
# second at most, while a client that has not spent its tries (the on-call person's laptop) still logs in with a valid
# token at once.
ALL_BURST, ALL_INTERVAL_SECONDS = 60, 1.0
FLOOD_CLIENT_BURST = 3
# A flood is over once everyone's bucket is full again (60 s without failures beyond the refill).
# Client buckets remembered at most (the fullest are forgotten first: a full bucket is what a new one would be).
MAX_CLIENTS = 10_000
# IPv6 clients are counted per /64: one host holds a whole /64, its addresses are one client.
IPV6_CLIENT_PREFIX = 64


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
        """Seconds until one more failure is allowed (0: now)."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) * self.interval


def parse_networks(values: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Trusted proxies as networks (an address alone is its /32 or /128); ValueError names a bad one."""
    return [ipaddress.ip_network(value.strip(), strict=False) for value in values]


def client_of(
    peer: str | None,
    forwarded_for: Iterable[str],
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str:
    """The client a login counts against: the connection's address, or behind trusted proxies the address the last of
    them was connected from (X-Forwarded-For read from the right, skipping trusted hops: what a client writes itself
    is left of what its proxies append, and is never believed). IPv6 counts per /64."""
    hops = [h.strip() for header in forwarded_for for h in header.split(",") if h.strip()]
    address = _address(peer)
    while address is not None and hops and any(address in net for net in trusted):
        address = _address(hops.pop())
    if address is None:
        return peer or "-"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.strip().strip("[]").split("%")[0])
    except ValueError:
        return None


class LoginThrottle:
    """`locked(client)` before a login is looked at (a client past its failures waits, whatever it sends: no guess is
    tried for it), `failed(client)` after one that failed. A valid token's login calls neither of the two after
    `locked`: it spends nothing."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, trusted_proxies: Iterable[str] = ()) -> None:
        self.clock = clock
        self.trusted = parse_networks(trusted_proxies)
        self.everyone = Bucket(ALL_BURST, ALL_INTERVAL_SECONDS, float(ALL_BURST), clock())
        self.clients: dict[str, Bucket] = {}
        self.failures = 0
        self.refused = 0
        self.lockouts = 0
        self.floods = 0
        # The flood going on: when it began, its failures and refusals, the clients it came from (at most MAX_CLIENTS).
        self.flood_started: float | None = None
        self.flood_failures = 0
        self.flood_refused = 0
        self.flood_clients: set[str] = set()

    def client(self, peer: str | None, forwarded_for: Iterable[str]) -> str:
        """The client of a request from `peer` with these X-Forwarded-For headers (client_of)."""
        return client_of(peer, forwarded_for if self.trusted else (), self.trusted)

    # ---- buckets ---------------------------------------------------------------------------------------------------

    def _client(self, client: str, now: float) -> Bucket:
        bucket = self.clients.get(client)
        if bucket is None:
            if len(self.clients) >= MAX_CLIENTS:
                for b in self.clients.values():
                    b.refill(now)
                full = [a for a, b in self.clients.items() if b.tokens >= b.burst]
                for gone in full or list(self.clients)[: MAX_CLIENTS // 10]:
                    del self.clients[gone]
            bucket = self.clients[client] = Bucket(CLIENT_BURST, CLIENT_INTERVAL_SECONDS, float(CLIENT_BURST), now)
        bucket.refill(now)
        return bucket

    def _flood_check(self, now: float) -> None:
        """End the flood once everyone's bucket is full again: one line with what it was."""
        self.everyone.refill(now)
        if self.flood_started is not None and self.everyone.tokens >= self.everyone.burst:
            log.warning(
                "console logins: the flood of failed attempts is over after %.0f s: %d failed and %d refused "
                "attempts from %d client(s)",
                now - self.flood_started,
                self.flood_failures,
                self.flood_refused,
                len(self.flood_clients),
            )
            self.flood_started = None

    @property
    def flooding(self) -> bool:
        self._flood_check(self.clock())
        return self.flood_started is not None

    # ---- the login's two questions ---------------------------------------------------------------------------------

    def locked(self, client: str) -> int:
        """0 when `client` may try a login now, else the whole seconds until it may (Retry-After). Spends nothing."""
        now = self.clock()
        self._flood_check(now)
        bucket = self.clients.get(client)
        if bucket is None:
            return 0
        bucket.refill(now)
        wait = bucket.wait()
        if wait <= 0:
            return 0
        self.refused += 1
        if self.flood_started is not None:
            self.flood_refused += 1
        return max(1, math.ceil(wait))

    def failed(self, client: str) -> None:
        """Charge a failed login (unknown token, a missing CSRF token) to `client` and to everyone."""
        now = self.clock()
        self._flood_check(now)
        bucket = self._client(client, now)
        self.failures += 1
        if self.everyone.tokens >= 1:
            self.everyone.tokens -= 1
        elif self.flood_started is None:
            self.flood_started, self.flood_failures, self.flood_refused = now, 0, 0
            self.flood_clients = set()
            self.floods += 1
            log.warning(
                "console logins: a flood of failed attempts (more than %d, then one a second, from all clients): "
                "each client now gets %d failed tries, then one per %g s; valid tokens still log in",
                ALL_BURST,
                FLOOD_CLIENT_BURST,
                CLIENT_INTERVAL_SECONDS,
            )
        # During a flood a client has FLOOD_CLIENT_BURST failed tries at most.
        was_open = bucket.tokens >= 1
        if self.flood_started is not None:
            bucket.tokens = min(bucket.tokens, float(FLOOD_CLIENT_BURST))
        bucket.tokens -= 1
        if self.flood_started is not None:
            self.flood_failures += 1
            if len(self.flood_clients) < MAX_CLIENTS:
                self.flood_clients.add(client)
        if was_open and bucket.tokens < 1:
            self.lockouts += 1
            if self.flood_started is None:  # during a flood its own line counts them all
                log.warning(
                    "console logins from %s locked out: %d failed attempts; one more every %g s",
                    client,
                    CLIENT_BURST,
                    CLIENT_INTERVAL_SECONDS,
                )


class LoginThrottleCollector(Collector):
    """The throttle's counts as `tradingops_console_login_*` families, fresh on every scrape."""

    def __init__(self, throttle: LoginThrottle) -> None:
        self.throttle = throttle

    def collect(self) -> Iterator[Metric]:
        t = self.throttle
        flooding = t.flooding
        yield CounterMetricFamily(
            "tradingops_console_login_failures", "Console logins that failed (unknown token, CSRF).", t.failures
        )
        yield CounterMetricFamily(
            "tradingops_console_login_throttled",
            "Console logins refused unread (429): their client had failed too often.",
            t.refused,
        )
        yield CounterMetricFamily(
            "tradingops_console_login_lockouts", "Times a client's failed logins locked it out for a while.", t.lockouts
        )
        yield CounterMetricFamily(
            "tradingops_console_login_floods",
            "Floods of failed console logins (past the bound for all clients).",
            t.floods,
        )
        yield GaugeMetricFamily(
            "tradingops_console_login_flood", "1 while a flood of failed console logins is on.", 1 if flooding else 0
        )
