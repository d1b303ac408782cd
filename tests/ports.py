"""Free loopback ports for the servers a test starts.

Never the same port twice in one test session (the kernel may hand a just-released port out again, and two servers of
one stack on one port fail to start), and never one of the kernel's ephemeral ports: those are what every outgoing
connection (a scrape, a bot's call to its venue) takes, so a port picked there can be taken by a client between the
pick and the server's bind."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

_HANDED_OUT: set[int] = set()
# Below the ephemeral range, above the well-known and common service ports.
FLOOR = 10000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(ports: range) -> bool:
    try:
        with contextlib.ExitStack() as held:
            for port in ports:
                held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)).bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def free_ports(count: int, attempts: int = 1000) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1, none handed out before."""
    ceiling = _ephemeral_low()
    if ceiling - FLOOR < 10 * count:  # a kernel that hands out (nearly) every port: take what it gives
        ceiling = 65536
    for _ in range(attempts):
        first = random.randrange(FLOOR, ceiling - count + 1)
        ports = range(first, first + count)
        if _HANDED_OUT.isdisjoint(ports) and _bindable(ports):
            _HANDED_OUT.update(ports)
            return first
    raise AssertionError(f"no {count} consecutive free ports on 127.0.0.1")


def free_port() -> int:
    return free_ports(1)
