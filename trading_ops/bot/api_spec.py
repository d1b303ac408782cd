"""The OpenAPI 3.1 description of a bot's HTTP API (GET /openapi.json, `trading-ops openapi bot`): each command of the
bot that serves it with its scope, arguments and answer; the freqtrade sidecar serves its own the same way."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import msgspec

from trading_ops.bot.control import COMMAND_SCOPES, CONTROL_EVENTS, RUNTIME_COMMANDS, STATE_COMMANDS
from trading_ops.bot.control_journal import DEFAULT_EVENTS, MAX_EVENT_ID, MAX_EVENTS
from trading_ops.bot.state import TradingState
from trading_ops.openapi import Builder, bad_request, bearer_scheme, dumps, json_content, response
from trading_ops.schema import one_of
from trading_ops.scopes import DESTRUCTIVE, OPERATE, READ

OPENAPI_PATH = "/openapi.json"
CONTROL_PREFIX = "/control/"
DESCRIPTION = (
    "A bot's HTTP API (a bot on the trading_ops runtime, or the freqtrade sidecar): metrics, health, and the control "
    "commands, each POST /control/<command> with a bearer token (bot.control_token or bot.control_tokens) whose scope "
    "covers the command's (read < operate < destructive). 401: no token or a wrong one; 403: a token without the "
    "command's scope; 404: a command this bot does not offer. The body, when given, is a JSON object of the "
    "command's arguments. A halted bot still accepts cancel_all and flatten."
)
# The security schemes of the control commands: one per scope (trading_ops.scopes), each a bearer token.
SCOPE_WORDS = {READ: " (read, operate, destructive)", OPERATE: " (operate, destructive)", DESTRUCTIVE: ""}
if TYPE_CHECKING:
    State = str
else:  # an enum in the document
    State = one_of(s.value for s in TradingState)


class Refusal(msgspec.Struct, kw_only=True):
    """A command not carried out: `error` says why in one line (with the command list on a 404, the state on a 409
    or 503)."""

    ok: Literal[False]
    error: str
    commands: list[str] = []
    state: str = ""


class StateArgs(msgspec.Struct, kw_only=True):
    """A state command's arguments: why (shown in `status` and journaled with who asked)."""

    reason: Annotated[str, msgspec.Meta(description="why, as status and the journal show it")] = ""


# What a command that widens risk carries: the reconciler's signed decision (docs/readiness.md, signed decisions).
DECISION_DESCRIPTION = (
    "the decision the reconciler signed once people other than the requester approved (<payload>.<signature>, "
    "base64url): the bot verifies its signature under bot.decision_keys, its kind, this bot's name, the stage, its "
    "expiry and that it was not acted on before; 403 in one line naming the check otherwise, with nothing changed"
)


class ClearHaltArgs(StateArgs, kw_only=True):
    """clear_halt's arguments: a halt a loss limit set clears only with a signed `clear_halt` decision; any other halt
    clears in one step without one."""

    decision: Annotated[str, msgspec.Meta(description=DECISION_DESCRIPTION + " (a loss-limit halt only)")] = ""


class RampPromoteArgs(msgspec.Struct, kw_only=True):
    """ramp_promote's arguments: the next stage, and the signed `ramp_promote` decision for it (required)."""

    stage: Annotated[str, msgspec.Meta(description="the bot's next stage (bot.ramp.stages[].name)")]
    decision: Annotated[str, msgspec.Meta(description=DECISION_DESCRIPTION)]


class ResubscribeArgs(msgspec.Struct, kw_only=True):
    symbol: Annotated[str, msgspec.Meta(description="one of the bot's symbols (default: all of them)")] = ""


class NoArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """No arguments."""


class Done(msgspec.Struct, kw_only=True):
    """A command carried out; what it did is in the command's own keys."""

    ok: Literal[True]
    command: str


class StateChanged(Done, kw_only=True):
    """A state command carried out (`changed` false: the bot was already in that state)."""

    state: State
    previous_state: State
    changed: bool


class Status(Done, kw_only=True):
    """The bot's state and what it may do next (a bot adds keys of its own: its venue, positions, faults)."""

    state: str
    state_reason: str = ""
    state_by: str = ""
    flatten_while_halted: bool = False
    heartbeat_age_seconds: float | None = None
    phase: str | None = None
    commands: list[str] = []
    allowed_transitions: list[str] = []


class Canceled(Done, kw_only=True):
    canceled: int = 0


class Reconnected(Done, kw_only=True):
    connected: dict[str, bool] = {}


class Resubscribed(Done, kw_only=True):
    resubscribed: list[str] = []


class Reconciled(Done, kw_only=True):
    """One reconciliation's summary (run_id, result and what it found)."""

    run_id: str | int | None = None
    result: str = ""


class ControlEventsArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """control_events' arguments: the page after the last event the caller has."""

    after: Annotated[int, msgspec.Meta(ge=0, le=MAX_EVENT_ID, description="the events after this id")] = 0
    limit: Annotated[int, msgspec.Meta(ge=0, le=MAX_EVENTS, description="at most this many")] = DEFAULT_EVENTS


class ControlEvent(msgspec.Struct, kw_only=True):
    """One journaled control command: who sent it (`principal`, the token that authenticated it; `source`, the label
    it was counted under; `peer`, the address), what came of it (`outcome`: ok, or `refused STATUS` with `error`),
    the state before and after a state command, and the signed decision it acted on (`decision`)."""

    id: int
    run_id: int
    at: str
    command: str = ""
    principal: str = ""
    source: str = ""
    peer: str = ""
    outcome: str = ""
    result: str = ""
    error: str = ""
    before: str = ""
    after: str = ""
    decision: dict[str, Any] = {}


class ControlEvents(Done, kw_only=True):
    """The journal's control commands after `after`, oldest first; `last_id` the newest one's id (0: none; below the
    caller's `after`, another journal than the one it read), `more` whether more follow, `caller` the asking token's
    name. A read: not journaled itself."""

    bot: str
    caller: str
    events: list[ControlEvent]
    last_id: int
    more: bool


class Health(msgspec.Struct, kw_only=True):
    """Alive: the trading loop makes progress (the keys say how it was judged)."""


class Readiness(msgspec.Struct, kw_only=True):
    ready: bool
    checks: dict[str, dict[str, Any]]


# A command's arguments and answer, by name; a command not here (a bot's own, chaos faults) takes any JSON object.
ARGUMENTS: dict[str, Any] = {
    **dict.fromkeys(STATE_COMMANDS, StateArgs),
    "clear_halt": ClearHaltArgs,
    "ramp_promote": RampPromoteArgs,
    "resubscribe": ResubscribeArgs,
    "reconcile": NoArgs,
    CONTROL_EVENTS: ControlEventsArgs,
}
RESULTS: dict[str, type[Done]] = {
    **dict.fromkeys(STATE_COMMANDS, StateChanged),
    "status": Status,
    "cancel_all": Canceled,
    "reconnect": Reconnected,
    "resubscribe": Resubscribed,
    "reconcile": Reconciled,
    CONTROL_EVENTS: ControlEvents,
}


class Commands(Protocol):
    """What the document needs of a bot's control plane (ControlPlane, the freqtrade sidecar's FreqtradeControl)."""

    @property
    def commands(self) -> list[str]: ...

    def scope(self, name: str) -> str: ...


class RuntimeCommands:
    """The commands every bot on the runtime offers (DESIGN.md's and its journal's control events), for the document
    printed without a bot."""

    commands = sorted(RUNTIME_COMMANDS)

    def scope(self, name: str) -> str:
        return COMMAND_SCOPES[name]


def _command_responses(doc: Builder, scope: str, result: type[Done]) -> dict[str, Any]:
    """What a command is answered with: its result, or why it was not carried out."""
    return {
        "200": response("Carried out.", doc.ref(result)),
        "400": bad_request("The body is not a JSON object of the command's arguments.", doc.ref(Refusal)),
        "401": response("No token, or not one this bot knows.", doc.ref(Refusal), **{"WWW-Authenticate": "Bearer"}),
        "403": response(f"The token's scope does not include {scope} scope.", doc.ref(Refusal)),
        "409": response("Refused in the bot's state now (the error says why).", doc.ref(Refusal)),
        "413": response("The body is too large.", doc.ref(Refusal)),
        "503": response("The venue (or freqtrade) does not answer: retry after reconnect.", doc.ref(Refusal)),
    }


def bot_document(control: Commands, title: str = "trading-ops bot") -> dict[str, Any]:
    """The OpenAPI 3.1 document of a bot whose control plane is `control`."""
    doc = Builder(title, DESCRIPTION)
    commands = control.commands
    for name in commands:
        scope = control.scope(name)
        args = ARGUMENTS.get(name)
        body = doc.ref(args) if args is not None else {"type": "object"}
        responses = _command_responses(doc, f"'{scope}'", RESULTS.get(name, Done))
        doc.operation(
            "post",
            f"{CONTROL_PREFIX}{name}",
            {
                "operationId": f"control_{name}",
                "summary": f"{name} (scope {scope})",
                "security": [{scope: []}],
                "requestBody": {"required": False, "content": json_content(body)},
                "responses": responses,
            },
        )
    doc.operation(
        "post",
        f"{CONTROL_PREFIX}{{command}}",
        {
            "operationId": "control_command",
            "summary": "Any command by name: 404 for one this bot does not offer (each of its own is described above)",
            "security": [{scheme: []} for scheme in SCOPE_WORDS],
            "parameters": [
                {
                    "name": "command",
                    "in": "path",
                    "required": True,
                    "description": f"the command ({', '.join(commands)}; 404 for any other)",
                    "schema": {"type": "string"},
                }
            ],
            "requestBody": {"required": False, "content": json_content({"type": "object"})},
            "responses": {
                **_command_responses(doc, "the command's", Done),
                "404": response("No such command (the bot's commands are listed).", doc.ref(Refusal)),
            },
        },
    )
    doc.probes(
        OPENAPI_PATH,
        "Prometheus metrics (tradingbot_*)",
        alive=("Alive: the trading loop makes progress", "The loop stopped making progress.", Health),
        ready=(
            "Ready: broker connected, market data fresh, reconciliation passed, journal writable",
            "Not ready (the failing checks say why).",
            Readiness,
        ),
    )
    return doc.document(
        {
            scope: bearer_scheme(f"A control token of the bot whose scope includes '{scope}'{words}.")
            for scope, words in SCOPE_WORDS.items()
        }
    )


class _Listed:
    """A control plane's commands and scopes as they were when the document was asked for."""

    def __init__(self, scopes: tuple[tuple[str, str], ...]) -> None:
        self.commands = [name for name, _ in scopes]
        self._scopes = dict(scopes)

    def scope(self, name: str) -> str:
        return self._scopes[name]


def document_bytes(control: Commands) -> bytes:
    """The document as a bot serves it: made again only when its commands change (chaos, a bot's own)."""
    return _document_bytes(tuple((name, control.scope(name)) for name in control.commands))


@functools.lru_cache(maxsize=8)
def _document_bytes(scopes: tuple[tuple[str, str], ...]) -> bytes:
    return dumps(bot_document(_Listed(scopes)))
