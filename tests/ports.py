"""Free loopback ports for the servers a test starts: benchmarks/_shared/loopback_ports.py's, one implementation for
both (below the ephemeral range, never twice in a run, each xdist worker in a slice of its own)."""

from __future__ import annotations

from benchmarks._shared.loopback_ports import free_port, free_range

__all__ = ["free_port", "free_ports"]


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1, none handed out before."""
    return free_range(count)
