"""The `up` side of `trading-ops stackctl`: the unix socket on which a running stack answers systemctl's verbs
(stackctl.py is the client) with its services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trading_ops.stack.service import Service, ServiceError
from trading_ops.stack.stackctl import VERBS, socket_name

log = logging.getLogger(__name__)

REQUEST_BYTES = 4096
PEERCRED = struct.Struct("3i")


def find(services: Sequence[Service], name: str) -> Service:
    """A service by unit name (`x.service` or `x`) or by child name."""
    for service in services:
        unit = service.unit
        if name in (unit, unit.removesuffix(".service"), service.child.name):
            return service
    known = ", ".join(s.unit for s in services)
    raise ServiceError(f"unit {name[:80]} not found (units of this stack: {known})")


async def execute(services: Sequence[Service], verb: str, units: Sequence[str]) -> list[dict[str, Any]]:
    if verb not in VERBS:
        raise ServiceError(f"unknown verb {verb[:40]!r} (known: {', '.join(VERBS)})")
    targets = [find(services, u) for u in units] if units else []
    if not targets:
        if verb not in ("status", "show", "reset-failed"):
            raise ServiceError(f"{verb}: name a unit")
        targets = list(services)
    for service in targets:
        if verb == "start":
            await service.start()
        elif verb == "stop":
            await service.stop()
        elif verb == "restart":
            await service.restart()
        elif verb == "try-restart":
            await service.try_restart()
        elif verb == "reset-failed":
            service.reset_failed()
    return [s.describe() for s in targets]


class Server:
    """Answers one JSON request per connection: {"verb": ..., "units": [...]} -> {"ok": ..., "services"|"error"}."""

    def __init__(
        self, services: Sequence[Service], state_dir: Path, on_request: Callable[[str], None] | None = None
    ) -> None:
        self.services = list(services)
        self.on_request = on_request or (lambda _line: None)
        self.name = socket_name(state_dir)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path="\0" + self.name)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            _pid, uid, _gid = PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
            if uid != os.getuid():
                answer: dict[str, Any] = {"ok": False, "error": "permission denied (another user)"}
            else:
                answer = await self._answer(await reader.readline())
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.debug("stackctl connection: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line[:REQUEST_BYTES])
            verb = str(request["verb"])
            units = [str(u) for u in request.get("units", [])]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request"}
        asks = f"stackctl {verb} {' '.join(units)}".strip()
        if verb not in ("status", "show"):  # what changes something is told; what only looks is not
            self.on_request(asks)
        try:
            answer = {"ok": True, "services": await execute(self.services, verb, units)}
        except ServiceError as exc:
            answer = {"ok": False, "error": str(exc)}
        if verb not in ("status", "show"):
            self.on_request(f"{asks}: {'done' if answer['ok'] else answer['error']}")
        return answer
