"""Control commands a bot accepts (pause, resume, reduce_only, flatten, halt, ...) and their dispatch."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.state import TRANSITIONS, StateMachine, TradingState

log = logging.getLogger(__name__)

CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# Transitions an operator may request over the API; `flatten_done` is the bot's own.
STATE_COMMANDS = ("pause", "resume", "reduce_only", "flatten", "halt", "clear_halt")
# Commands every bot is expected to offer (DESIGN.md); a bot registers the non-state ones.
REQUIRED_COMMANDS = (*STATE_COMMANDS, "cancel_all", "reconnect", "resubscribe", "reconcile", "status")

# Who a command came from: the `source` label of tradingbot_control_commands_total, so a board can say who paused or
# halted a bot. Callers of the control API name themselves in SOURCE_HEADER (the reconciler's `bot` steps, the
# maintenance windows); a request without it (curl, `trading-ops chaos`) is a person's. The bot's own risk limits
# change its state in process. A request without a valid token is counted as unauthenticated, whatever it claims.
SOURCE_HEADER = "X-Trading-Ops-Source"
SOURCE_OPERATOR = "operator"
SOURCE_RECONCILER = "reconciler"
SOURCE_MAINTENANCE = "maintenance"
SOURCE_RISK = "risk"
SOURCE_UNAUTHENTICATED = "unauthenticated"
# What SOURCE_HEADER may say; anything else is counted as an operator's (the label set stays bounded).
HEADER_SOURCES = (SOURCE_OPERATOR, SOURCE_RECONCILER, SOURCE_MAINTENANCE)
# The sources whose state commands are exported at 0 from the start (a refused, unauthenticated one is not news).
COUNTED_SOURCES = (*HEADER_SOURCES, SOURCE_RISK)


def command_source(header: str | None, authenticated: bool) -> str:
    """The `source` label of a control API request, from its SOURCE_HEADER."""
    if not authenticated:
        return SOURCE_UNAUTHENTICATED
    value = (header or "").strip().lower()
    return value if value in HEADER_SOURCES else SOURCE_OPERATOR


class CommandError(Exception):
    """A command that cannot be carried out as asked (bad arguments, nothing to do); the API answers 400."""


class ControlPlane:
    """Maps command names to handlers. State commands are built in; a bot adds the rest with `register`."""

    def __init__(self, state: StateMachine, metrics: BotMetrics) -> None:
        self.state = state
        self.metrics = metrics
        metrics.control_commands_known(STATE_COMMANDS, COUNTED_SOURCES)
        self._handlers: dict[str, CommandHandler] = {}
        self._on_transition: list[Callable[[str, TradingState, TradingState], Awaitable[None]]] = []
        for command in STATE_COMMANDS:
            self._handlers[command] = self._state_handler(command)
        self._status_extras: list[Callable[[], dict[str, Any]]] = []
        self._handlers["status"] = self._status

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    def register(self, name: str, handler: CommandHandler) -> None:
        if name in STATE_COMMANDS or name == "status":
            raise ValueError(f"'{name}' is built in; use on_transition to act on it")
        if not name.replace("_", "").isalnum() or not name.islower():
            raise ValueError(f"command names are lowercase words joined by underscores, got {name!r}")
        self._handlers[name] = handler

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)

    def on_transition(self, callback: Callable[[str, TradingState, TradingState], Awaitable[None]]) -> None:
        """Call `callback(command, before, after)` after each accepted state command (e.g. cancel on halt)."""
        self._on_transition.append(callback)

    def add_status(self, provider: Callable[[], dict[str, Any]]) -> None:
        self._status_extras.append(provider)

    def has(self, name: str) -> bool:
        return name in self._handlers

    async def run(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Carry out a command. Raises KeyError (unknown), TransitionRefused, CommandError."""
        handler = self._handlers[name]
        return await handler(args)

    def _state_handler(self, command: str) -> CommandHandler:
        async def handle(args: dict[str, Any]) -> dict[str, Any]:
            reason = str(args.get("reason", "")) or f"control:{command}"
            before, after = self.state.apply(command, reason=reason)
            for callback in self._on_transition:
                await callback(command, before, after)
            return {"state": after.value, "previous_state": before.value, "changed": before is not after}

        return handle

    async def _status(self, _args: dict[str, Any]) -> dict[str, Any]:
        status: dict[str, Any] = {
            "state": self.state.state.value,
            "state_reason": self.state.reason,
            # Halted, closing its positions on a flatten given while halted (the halt stays once they are closed).
            "flatten_while_halted": self.state.flatten_while_halted,
            "heartbeat_age_seconds": self.metrics.heartbeat_age(),
            "commands": self.commands,
            "allowed_transitions": [c for c in STATE_COMMANDS if c in TRANSITIONS and self.state.can(c)],
        }
        for provider in self._status_extras:
            status.update(provider())
        return status
