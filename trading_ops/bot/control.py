"""Control commands a bot accepts (pause, resume, reduce_only, flatten, halt, ...) and their dispatch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.state import TRANSITIONS, StateMachine, TradingState
from trading_ops.scopes import DESTRUCTIVE, OPERATE, READ, Token, TokenSet

log = logging.getLogger(__name__)

CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# Transitions an operator may request over the API; `flatten_done` is the bot's own.
STATE_COMMANDS = ("pause", "resume", "reduce_only", "flatten", "halt", "clear_halt")
# Commands every bot is expected to offer (DESIGN.md); a bot registers the non-state ones.
REQUIRED_COMMANDS = (*STATE_COMMANDS, "cancel_all", "reconnect", "resubscribe", "reconcile", "status")
# The journaled control commands, read back (trading_ops.bot.control_journal): what the reconciler's audit pulls.
CONTROL_EVENTS = "control_events"
# What every bot on the runtime offers: the required commands and its journal's control events.
RUNTIME_COMMANDS = (*REQUIRED_COMMANDS, CONTROL_EVENTS)
# The scope each command needs (trading_ops.scopes): reads, what pauses or mends, what closes positions or stops a bot
# until a person clears it. The reconciler's `bot` steps send a target's destructive_token with the destructive ones.
# `reload` is the freqtrade sidecar's reconnect. A command a bot registers without a scope needs `destructive`.
COMMAND_SCOPES = {
    "status": READ,
    CONTROL_EVENTS: READ,
    "pause": OPERATE,
    "resume": OPERATE,
    "reduce_only": OPERATE,
    "reconnect": OPERATE,
    "resubscribe": OPERATE,
    "reconcile": OPERATE,
    "reload": OPERATE,
    "cancel_all": DESTRUCTIVE,
    "flatten": DESTRUCTIVE,
    "halt": DESTRUCTIVE,
    "clear_halt": DESTRUCTIVE,
}

# Who a command came from: the `source` label of tradingbot_control_commands_total, so a board can say who paused or
# halted a bot. A named token (bot.control_tokens) is its name. With the single token (bot.control_token), which
# everyone shares, callers name themselves in SOURCE_HEADER (the reconciler's `bot` steps, the maintenance windows);
# a request without it (curl, `trading-ops chaos`) is a person's. The bot's own risk limits change its state in
# process. A request without a valid token is counted as unauthenticated, whatever it claims. Every value comes from
# this list or the configuration: the label set stays bounded.
SOURCE_HEADER = "X-Trading-Ops-Source"
SOURCE_OPERATOR = "operator"
SOURCE_RECONCILER = "reconciler"
SOURCE_MAINTENANCE = "maintenance"
SOURCE_RISK = "risk"
SOURCE_UNAUTHENTICATED = "unauthenticated"
# What SOURCE_HEADER may say; anything else is counted as an operator's (the label set stays bounded).
HEADER_SOURCES = (SOURCE_OPERATOR, SOURCE_RECONCILER, SOURCE_MAINTENANCE)


def command_source(header: str | None, token: Token | None) -> str:
    """The `source` label of a control API request: the name of its token, or for the single token of an older
    configuration what its SOURCE_HEADER says."""
    if token is None:
        return SOURCE_UNAUTHENTICATED
    if not token.legacy:
        return token.name
    value = (header or "").strip().lower()
    return value if value in HEADER_SOURCES else SOURCE_OPERATOR


def control_sources(tokens: TokenSet) -> tuple[str, ...]:
    """The `source` values a request with one of `tokens` can be counted under: each named token's name, and the
    header's sources when the single token is among them."""
    legacy = HEADER_SOURCES if any(t.legacy for t in tokens.tokens) else ()
    return (*legacy, *(t.name for t in tokens.tokens if not t.legacy))


@dataclass(frozen=True)
class Caller:
    """Who sent a control command: the token's name, where from (the peer address) and the `source` label."""

    token: str
    peer: str
    source: str

    def __str__(self) -> str:
        via = f" ({self.source})" if self.source != self.token else ""
        return f"token '{self.token}'{via} from {self.peer}"


# The signed decision a command acted on (its id, kind, requester, approvers, rule), set by the DecisionGate inside the
# command's request (one aiohttp task: its own context) and read by the control API when it records the command: the
# bot's record says both who sent the command (the token) and who decided it (the decision's approvers).
ACTED_ON: ContextVar[dict[str, Any] | None] = ContextVar("trading_ops_acted_on", default=None)
# Who sent the command being run (its task's context, set by ControlPlane.run): a read command answers with its
# caller's token name (control_events: the reconciler learns which journaled commands were its own).
CALLER: ContextVar[Caller | None] = ContextVar("trading_ops_caller", default=None)
# A record of one control command: (command, caller, outcome, detail); see ControlPlane.on_command.
# A recorder returns its write when it writes in the background (the control API answers once it is done).
CommandRecorder = Callable[[str, Caller, str, dict[str, Any]], Awaitable[None] | None]


class CommandError(Exception):
    """A command that cannot be carried out as asked (bad arguments, nothing to do); the API answers 400."""

    status = 400


class CommandForbidden(CommandError):
    """A command its caller may not give as asked (a widening of risk without a decision the bot verifies): 403."""

    status = 403


# A check a state command passes before it applies (the runtime's: clearing a loss-limit halt needs a signed
# decision): it raises CommandError to refuse, or returns what to call once the command applied (None: nothing).
CommandGuard = Callable[[dict[str, Any]], Awaitable[Callable[[], None] | None]]


class ControlPlane:
    """Maps command names to handlers. State commands are built in; a bot adds the rest with `register`."""

    def __init__(self, state: StateMachine, metrics: BotMetrics, sources: tuple[str, ...] = HEADER_SOURCES) -> None:
        """`sources`: who may ask (control_sources of the API's tokens); their state commands are counted from 0."""
        self.state = state
        self.metrics = metrics
        metrics.control_commands_known(STATE_COMMANDS, (*sources, SOURCE_RISK))
        self._handlers: dict[str, CommandHandler] = {}
        self._scopes: dict[str, str] = dict(COMMAND_SCOPES)
        self._on_transition: list[Callable[[str, TradingState, TradingState], Awaitable[None]]] = []
        for command in STATE_COMMANDS:
            self._handlers[command] = self._state_handler(command)
        self._status_extras: list[Callable[[], dict[str, Any]]] = []
        self._handlers["status"] = self._status
        self._guards: dict[str, CommandGuard] = {}
        self._recorders: list[CommandRecorder] = []

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    def register(self, name: str, handler: CommandHandler, scope: str | None = None) -> None:
        """Offer command `name`. `scope`: what a token needs to send it; by default COMMAND_SCOPES's, and for a
        command not in it `destructive` (what a command does is its author's to say; until then, the most)."""
        if name in STATE_COMMANDS or name == "status":
            raise ValueError(f"'{name}' is built in; use on_transition to act on it")
        if not name.replace("_", "").isalnum() or not name.islower():
            raise ValueError(f"command names are lowercase words joined by underscores, got {name!r}")
        if scope is not None and scope not in (READ, OPERATE, DESTRUCTIVE):
            raise ValueError(f"scope of {name!r}: expected read, operate or destructive, got {scope!r}")
        self._handlers[name] = handler
        self._scopes[name] = scope or COMMAND_SCOPES.get(name, DESTRUCTIVE)

    def scope(self, name: str) -> str:
        """The scope a token needs to send command `name`."""
        return self._scopes.get(name, DESTRUCTIVE)

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)

    def guard(self, command: str, check: CommandGuard) -> None:
        """Run `check` before state command `command` applies (one per command)."""
        if command not in STATE_COMMANDS:
            raise ValueError(f"{command!r} is not a state command")
        self._guards[command] = check

    def on_transition(self, callback: Callable[[str, TradingState, TradingState], Awaitable[None]]) -> None:
        """Call `callback(command, before, after)` after each accepted state command (e.g. cancel on halt)."""
        self._on_transition.append(callback)

    def on_command(self, recorder: CommandRecorder) -> None:
        """Call `recorder(command, caller, outcome, detail)` for every command an authenticated caller sent, carried
        out (`ok`) or refused (`refused 403: ...`), the reads (`read` scope: `status`, polled every second by
        verifications, and `control_events`) aside: no read decides anything. The runtime journals each one
        (trading_ops.bot.journal_writes.journal_commands)."""
        self._recorders.append(recorder)

    def record(self, command: str, caller: Caller, outcome: str, detail: dict[str, Any]) -> Awaitable[Any] | None:
        """Hand one command to the recorders (a recorder that fails is logged; the command stands). A read is none.
        Returns the recorders' background writes, together (None: nothing left to wait for)."""
        if self.scope(command) == READ:
            return None
        pending: list[Awaitable[None]] = []
        for recorder in self._recorders:
            try:
                write = recorder(command, caller, outcome, detail)
            except Exception:
                log.exception("recording the control command %s by %s failed", command, caller)
                continue
            if write is not None:
                pending.append(write)
        return asyncio.gather(*pending) if pending else None

    def add_status(self, provider: Callable[[], dict[str, Any]]) -> None:
        self._status_extras.append(provider)

    def has(self, name: str) -> bool:
        return name in self._handlers

    async def run(self, name: str, args: dict[str, Any], caller: Caller | None = None) -> dict[str, Any]:
        """Carry out a command. Raises KeyError (unknown), TransitionRefused, CommandError. A state command's
        `caller` is journaled with the transition, and a command's handler finds it in CALLER."""
        handler = self._handlers[name]
        CALLER.set(caller)
        if name in STATE_COMMANDS:
            return await self._apply_state(name, args, caller)
        return await handler(args)

    def _state_handler(self, command: str) -> CommandHandler:
        async def handle(args: dict[str, Any]) -> dict[str, Any]:
            return await self._apply_state(command, args, None)

        return handle

    async def _apply_state(self, command: str, args: dict[str, Any], caller: Caller | None) -> dict[str, Any]:
        reason = str(args.get("reason", "")) or f"control:{command}"
        check = self._guards.get(command)
        applied = await check(args) if check is not None else None
        before, after = self.state.apply(command, reason=reason, by=str(caller) if caller else "")
        if applied is not None:
            applied()
        for callback in self._on_transition:
            await callback(command, before, after)
        return {"state": after.value, "previous_state": before.value, "changed": before is not after}

    async def _status(self, _args: dict[str, Any]) -> dict[str, Any]:
        status: dict[str, Any] = {
            "state": self.state.state.value,
            "state_reason": self.state.reason,
            # Who asked for the current state over this API ("" when the bot changed it itself).
            "state_by": self.state.by,
            # Halted, closing its positions on a flatten given while halted (the halt stays once they are closed).
            "flatten_while_halted": self.state.flatten_while_halted,
            "heartbeat_age_seconds": self.metrics.heartbeat_age(),
            # The runtime's lifecycle phase (starting, trading, stopping; None for a bot without the runtime): the
            # reconciler leaves a bot that is starting alone (trading_ops.reconciler.actions.systemd).
            "phase": self.metrics.current_phase,
            "commands": self.commands,
            "allowed_transitions": [c for c in STATE_COMMANDS if c in TRANSITIONS and self.state.can(c)],
        }
        for provider in self._status_extras:
            status.update(provider())
        return status
