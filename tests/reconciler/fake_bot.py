"""A bot control API as the contract says (POST /control/{command}, bearer token, JSON) that records what the
reconciler asks of it and answers as a test tells it to; and the reconciler targets pointing at it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from reconciler_server import BOT_TOKEN
from secret_file import write_secret

COMMANDS = {
    "pause",
    "resume",
    "reduce_only",
    "cancel_all",
    "flatten",
    "reconnect",
    "resubscribe",
    "reconcile",
    "status",
    "halt",
    "ramp_promote",
    "clear_halt",
}

# What a state command leaves the bot in.
STATES = {"pause": "paused", "resume": "active", "halt": "halted", "reduce_only": "reduce_only"}


@dataclass
class FakeBot:
    """A bot control API as the contract says (POST /control/{command}, bearer token, JSON)."""

    url: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # command -> HTTP status to answer (default 200)
    status: dict[str, int] = field(default_factory=dict)
    delay: float = 0.0
    # When set, every answer waits for this event first (a step held in flight until the test lets it go).
    hold: asyncio.Event | None = None
    on_call: Callable[[str], None] | None = None
    # The trading state its `status` answers with: what pause, resume, halt and reduce_only made it.
    state: str = "active"
    # The runtime's phase its `status` answers with (starting: mid-startup, which no rule but a protective one acts on).
    phase: str = "trading"
    # The `status` reads the reconciler made (kept apart from `calls`, the commands that act).
    reads: list[dict[str, Any]] = field(default_factory=list)
    # The ramp its `status` reports ({"stage": 1, "name": "s1", ...}), when the test gives one.
    ramp: dict[str, Any] | None = None

    def commands(self) -> list[str]:
        return [c for c, _ in self.calls]

    def app(self) -> web.Application:
        """The control API's app: records each command, then answers with `status` once `hold` is set, after `delay`."""

        async def control(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
                return web.json_response({"error": "unauthorized"}, status=401)
            command = request.match_info["command"]
            if command not in COMMANDS:
                return web.json_response({"error": "unknown command"}, status=404)
            body = await request.json() if request.can_read_body else {}
            if command == "status":  # a read: answered at once, whatever holds the commands that act
                self.reads.append(body)
                answer_status = {"ok": True, "command": command, "state": self.state, "phase": self.phase}
                return web.json_response({**answer_status, **({"ramp": self.ramp} if self.ramp else {})})
            self.calls.append((command, body))
            if self.on_call:
                self.on_call(command)
            if self.hold is not None:
                await self.hold.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            status = self.status.get(command, 200)
            if status == 200 and command in STATES:
                self.state = STATES[command]
            answer: dict[str, Any] = {"ok": status == 200, "command": command}
            return web.json_response(answer, status=status)

        app = web.Application()
        app.router.add_post("/control/{command}", control)
        return app


def bot_targets(bot: FakeBot, tmp_path: Path, *instances: str) -> dict[str, Any]:
    """reconciler.targets mapping these bot instances (default: bot-1) to the fake bot."""
    write_secret(tmp_path / "bot-token", BOT_TOKEN)
    return {i: {"url": bot.url, "token_file": str(tmp_path / "bot-token")} for i in instances or ("bot-1",)}
