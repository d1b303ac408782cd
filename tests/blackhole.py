"""A loopback port that blackholes, as a dead host's address does: it listens but never accepts, and its accept queue
is full, so the kernel drops every new SYN (no RST, no answer) and a client's connect hangs until its own timeout.
Cheaper than a network namespace, and needs no root."""

from __future__ import annotations

import contextlib
import socket

from ports import free_port

FILL_TIMEOUT_SECONDS = 0.5
MAX_FILLERS = 8


class Blackhole:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(0)
        self.fillers: list[socket.socket] = []
        # Connections that complete fill the accept queue (nobody accepts them); the first that does not complete is
        # the proof that the port now blackholes.
        for _ in range(MAX_FILLERS):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.settimeout(FILL_TIMEOUT_SECONDS)
            try:
                filler.connect(("127.0.0.1", self.port))
            except TimeoutError:
                filler.close()
                return
            self.fillers.append(filler)
        self.close()
        raise RuntimeError(f"port {self.port} still accepts connections after {MAX_FILLERS}: no blackhole")

    def close(self) -> None:
        for sock in (*self.fillers, self.listener):
            with contextlib.suppress(OSError):
                sock.close()
