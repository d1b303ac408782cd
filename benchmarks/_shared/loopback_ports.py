"""Free loopback ports for the servers a test's or a benchmark's stack starts.

Below the kernel's ephemeral range: a port picked there can be taken by one of the stack's own outgoing connections (a
scrape, a bot's call to its venue) before the server that was to listen on it binds it (it then fails to start with
"address already in use"). Never the same port twice in one run (the kernel may hand a just-released port out again,
and two servers of one stack on one port fail to start). Under pytest-xdist each worker picks from a slice of its own
(PYTEST_XDIST_WORKER gwN of PYTEST_XDIST_WORKER_COUNT, inherited by the benchmarks a test runs), so two lanes never
pick the same port between one's pick and its server's bind."""

from __future__ import annotations

import contextlib
import os
import random
import socket
from pathlib import Path

# Above the well-known and common service ports.
FLOOR = 10000
_PICKED: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def port_range(count: int) -> range:
    """Where this process picks `count` consecutive ports: below the ephemeral range, in this xdist worker's slice."""
    ceiling = _ephemeral_low()
    if ceiling - FLOOR < 10 * count:  # a kernel that hands out (nearly) every port: take what it gives
        ceiling = 65536
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    if worker.startswith("gw") and worker[2:].isdigit() and workers.isdigit() and int(workers) > 1:
        width = (ceiling - FLOOR) // int(workers)
        low = FLOOR + int(worker[2:]) % int(workers) * width
        return range(low, low + width - count + 1)
    return range(FLOOR, ceiling - count + 1)


def _bindable(ports: range) -> bool:
    try:
        with contextlib.ExitStack() as held:
            for port in ports:
                held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)).bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def free_range(count: int, attempts: int = 1000) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1, none picked before in this run."""
    firsts = port_range(count)
    for _ in range(attempts):
        first = random.choice(firsts)
        ports = range(first, first + count)
        if _PICKED.isdisjoint(ports) and _bindable(ports):
            _PICKED.update(ports)
            return first
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1 in {firsts.start}-{firsts.stop + count - 1}")


def free_port() -> int:
    return free_range(1)
