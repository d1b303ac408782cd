"""`trading-ops stackctl`: systemctl for the local stack. `up` serves its services' verbs on a unix socket
(stackctl_server.py); the reconciler's `systemd` steps run `stackctl restart UNIT` there instead of
`systemctl restart UNIT` (the stack's generated configuration sets reconciler.systemctl), so the packaged
playbook's restarts work unchanged locally. This is the client's side: one request, one answer, no event loop."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

VERBS = ("status", "show", "start", "stop", "restart", "try-restart", "reset-failed")
# `show` prints these (systemctl's names) unless --property narrows them.
SHOW_PROPERTIES = ("ActiveState", "SubState", "Result", "MainPID", "NRestarts", "ExecMainStartTimestamp")
# A verb waits for the start to complete (READY=1), as `systemctl restart` does without --no-block.
DEFAULT_TIMEOUT_SECONDS = 120.0


def socket_name(state_dir: Path) -> str:
    """The abstract socket of the stack whose state directory is `state_dir` (no path length limit, no file left
    behind; only the same user may use it, checked by the peer's credentials)."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return f"trading-ops-stack-{digest}"


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
