"""`trading-ops stackctl`: systemctl for the local stack. `up` serves its services' verbs on a unix socket; the
reconciler's `systemd` steps run `stackctl restart UNIT` there instead of `systemctl restart UNIT` (the stack's
generated configuration sets reconciler.systemctl), so the packaged playbook's restarts work unchanged locally."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from trading_ops.stack.service import Service, ServiceError

log = logging.getLogger(__name__)

VERBS = ("status", "show", "start", "stop", "restart", "try-restart", "reset-failed")
# `show` prints these (systemctl's names) unless --property narrows them.
SHOW_PROPERTIES = ("ActiveState", "SubState", "Result", "MainPID", "NRestarts", "ExecMainStartTimestamp")
# A verb waits for the start to complete (READY=1), as `systemctl restart` does without --no-block.
DEFAULT_TIMEOUT_SECONDS = 120.0
REQUEST_BYTES = 4096
PEERCRED = struct.Struct("3i")


def socket_name(state_dir: Path) -> str:
    """The abstract socket of the stack whose state directory is `state_dir` (no path length limit, no file left
    behind; only the same user may use it, checked by the peer's credentials)."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return f"trading-ops-stack-{digest}"


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


def call(state_dir: Path, verb: str, units: Sequence[str], timeout: float = DEFAULT_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Send one request to the stack of `state_dir`; raises OSError when no stack runs there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect("\0" + socket_name(state_dir))
        except (FileNotFoundError, ConnectionRefusedError):
            raise OSError(f"no `trading-ops up` runs with state directory {state_dir}") from None
        sock.sendall(json.dumps({"verb": verb, "units": list(units)}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data or b"{}")
    return dict(answer) if isinstance(answer, dict) else {}


def format_status(service: dict[str, Any]) -> str:
    state = str(service.get("state"))
    if service.get("result") not in (None, "success"):
        state += f" (result: {service['result']})"
    pid = f"pid {service['pid']}" if service.get("pid") else "no process"
    status = f"  {service['status']}" if service.get("status") else ""
    return f"{service['unit']:<36} {state:<34} {pid}, {service.get('restarts', 0)} restarts{status}"


def format_show(service: dict[str, Any], properties: Sequence[str], unix_timestamps: bool) -> list[str]:
    """`systemctl show` lines (KEY=VALUE); timestamps as `@EPOCH` with --timestamp=unix, as systemd prints them."""
    lines = []
    for name in properties or SHOW_PROPERTIES:
        value = service.get(name)
        if name.endswith("Timestamp"):
            if value is None:
                text = ""
            elif unix_timestamps:
                text = f"@{int(float(value))}"
            else:
                text = datetime.fromtimestamp(float(value)).astimezone().strftime("%a %Y-%m-%d %H:%M:%S %Z")
        else:
            text = "" if value is None else str(value)
        lines.append(f"{name}={text}")
    return lines
