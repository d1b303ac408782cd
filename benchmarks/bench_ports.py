"""Free loopback ports for the servers a benchmark's stack starts, below the kernel's ephemeral range: a port picked
there can be taken by one of the stack's own outgoing connections (a scrape, a bot's call to its venue) before the
server that was to listen on it binds it (it then fails to start with "address already in use"). Never the same port
twice in one run."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

_PICKED: set[int] = set()


def free_range(count: int, attempts: int = 1000) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1, none picked before in this run."""
    try:
        ceiling = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ceiling = 32768
    for _ in range(attempts):
        first = random.randrange(10000, max(ceiling, 10000 + 10 * count) - count)
        if not _PICKED.isdisjoint(range(first, first + count)):
            continue
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
        except OSError:
            continue
        _PICKED.update(range(first, first + count))
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def free_port() -> int:
    return free_range(1)
