"""The OpenAPI 3.1 description of the reconciler's API (GET /api/v1/openapi.json, `trading-ops openapi reconciler`)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from trading_ops.db.states import APPROVAL_STATUSES, CLOSED_STATES, OPEN_STATES
from trading_ops.openapi import Builder, bad_request, bearer_scheme, dumps, json_content, response
from trading_ops.reconciler.approvals import DECISIONS, REASON_MAX
from trading_ops.reconciler.audit_api import DEFAULT_LIMIT as AUDIT_DEFAULT
from trading_ops.reconciler.audit_api import FILTER_MAX as AUDIT_FILTER_MAX
from trading_ops.reconciler.audit_api import FILTERS as AUDIT_FILTERS
from trading_ops.reconciler.audit_api import MAX_LIMIT as AUDIT_MAX
from trading_ops.reconciler.audit_api import PATH as AUDIT_PATH
from trading_ops.reconciler.intake import SUPPORTED_VERSION, AlertPayload, LabelMap, Status
from trading_ops.reconciler.live_start_api import PATH as LIVE_START_PATH
from trading_ops.reconciler.operator_api import (
    DURATION_MAX_CHARS,
    MAINTENANCE_END_PATH,
    MAINTENANCE_PATH,
    MATCHER_VALUE_MAX,
    MATCHERS_MAX,
    PAUSE_PATH,
    RESUME_PATH,
    STOP_DRILL_PATH,
    WINDOWS_DEFAULT,
    WINDOWS_MAX,
)
from trading_ops.reconciler.operator_api import REASON_MAX as WINDOW_REASON_MAX
from trading_ops.reconciler.ramp_api import CLEAR_HALT_PATH
from trading_ops.reconciler.ramp_api import COMMENT_MAX as RAMP_COMMENT_MAX
from trading_ops.reconciler.ramp_api import PATH as RAMP_PATH
from trading_ops.reconciler.ramp_api import REASON_MAX as CLEAR_HALT_REASON_MAX
from trading_ops.reconciler.readiness_api import MAX_WINDOW_CHARS
from trading_ops.reconciler.readiness_api import PATH as READINESS_PATH
from trading_ops.schema import one_of
from trading_ops.scopes import APPROVE, DESTRUCTIVE, OPERATE, READ

# The limits of the API's requests, which the server (trading_ops.reconciler.app) holds them to:
# GET /api/v1/episodes: `limit` between 1 and MAX_LIST (50 when not given).
MAX_LIST = 500
DEFAULT_LIST = 50
# A circuit's target is an alert's `instance` (label values are at most 128 characters; the CLI takes up to 255).
MAX_TARGET_CHARS = 255
# A retry's or an acknowledgement's comment beside the token's name (`reconciler retry|ack --by`).
RETRY_COMMENT_MAX = 80
# What an acknowledgement says the person is doing about the episode (`reconciler ack --note`).
ACK_NOTE_MAX = 500
# Where the reconciler serves this document (no token needed: it describes the API, it holds nothing of it).
OPENAPI_PATH = "/api/v1/openapi.json"
# The routes a test does not hold to the document: the operator console's HTML pages and forms.
UNDESCRIBED_PREFIXES = ("/ui",)
# Text a database stores: no NUL (nor a lone surrogate, which JSON Schema cannot say).
NO_NUL = r"^[^\x00]*$"
# The security schemes of the API's operations: one per scope (trading_ops.scopes), each a bearer token.
SCOPE_WORDS = {
    READ: " (read, operate, destructive; or read_token)",
    OPERATE: " (operate, destructive)",
    DESTRUCTIVE: " (destructive)",
    APPROVE: " (approve only: no other scope includes it)",
}
EPISODE_STATES = (*OPEN_STATES, *CLOSED_STATES)
Timestamp = Annotated[str, msgspec.Meta(description="an ISO 8601 timestamp with its UTC offset")]
if TYPE_CHECKING:
    EpisodeState = str
    ApprovalStatus = str
    Decision = str
    WebhookVersion = str
else:  # each an enum in the document
    EpisodeState, ApprovalStatus = one_of(EPISODE_STATES), one_of(APPROVAL_STATUSES)
    Decision, WebhookVersion = one_of(DECISIONS), one_of([SUPPORTED_VERSION])
DESCRIPTION = (
    "The reconciler's HTTP API: the Alertmanager webhook (the webhook token, reconciler.token), the episode ledger "
    "and approvals (a token of reconciler.api_tokens or read_token, by scope: read, operate, approve), metrics and "
    "health. A missing or wrong token is answered 401; a token without the scope an operation needs, 403 naming it. "
    "The operator console (/ui/) is HTML and not described here."
)


class Error(msgspec.Struct, kw_only=True):
    """A refusal: one line saying what is wrong."""

    error: str


class WebhookStored(msgspec.Struct, kw_only=True):
    """The notification is durably stored (Alertmanager may forget it); `invalid` lists the alerts refused on their
    own (stored with the payload, never acted on)."""

    status: Literal["stored"]
    alerts: int
    invalid: list[str] = []


class WebhookRefused(msgspec.Struct, kw_only=True):
    """The notification was refused (`rejected`: a 4xx, Alertmanager does not resend) or not stored (`error`: a 503,
    Alertmanager resends)."""

    status: Literal["rejected", "error"]
    error: str


class AlertmanagerWebhook(msgspec.Struct, kw_only=True):
    """Alertmanager's webhook notification, version 4 (its keys the reconciler does not read are allowed)."""

    version: WebhookVersion
    status: Status
    alerts: list[AlertPayload]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: Annotated[int, msgspec.Meta(ge=0)] = 0
    groupLabels: LabelMap | None = None
    commonLabels: LabelMap | None = None
    commonAnnotations: LabelMap | None = None
    externalURL: str = ""


class Step(msgspec.Struct, kw_only=True):
    position: int
    action: str
    description: str
    risk: str
    outcome: str
    started_at: Timestamp | None
    finished_at: Timestamp | None
    duration_seconds: float | None
    output: str


class Attempt(msgspec.Struct, kw_only=True):
    number: int
    action: str
    outcome: str
    started_at: Timestamp | None
    finished_at: Timestamp | None
    detail: str
    owner: str
    steps: list[Step]


class EscalationPage(msgspec.Struct, kw_only=True):
    """A page the episode owes (the escalation outbox) and how far it got."""

    alertname: str
    labels: dict[str, str]
    starts_at: Timestamp | None
    created_at: Timestamp | None
    attempts: int
    next_attempt_at: Timestamp | None
    posted_at: Timestamp | None
    notified_at: Timestamp | None
    last_error: str


class Episode(msgspec.Struct, kw_only=True):
    """One alert's episode (fingerprint, startsAt) and every attempt at it; `escalations` in one episode's view."""

    id: int
    fingerprint: str
    starts_at: Timestamp | None
    alertname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    target: str
    rule: str | None
    state: EpisodeState
    detail: str
    received_at: Timestamp | None
    next_run_at: Timestamp | None
    resolved_at: Timestamp | None
    closed_at: Timestamp | None
    attempts: list[Attempt]
    escalations: list[EscalationPage] = []


class Episodes(msgspec.Struct, kw_only=True):
    episodes: list[Episode]


class ApproverDecision(msgspec.Struct, kw_only=True):
    """One approver's decision: the authenticated principal, when, from where, its comment and reason."""

    principal: str
    decision: Decision
    decided_at: Timestamp | None
    source: str
    comment: str
    reason: str


class RampRequest(msgspec.Struct, kw_only=True):
    """A ramp promotion asked for: the stage (the bot's next) and a comment beside the token's name."""

    stage: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    comment: Annotated[str, msgspec.Meta(max_length=RAMP_COMMENT_MAX)] = ""


class RampRequested(msgspec.Struct, kw_only=True):
    bot: str
    stage: str
    requested_by: str
    request: int
    comment: str
    criteria: list[str]
    expires_at: Timestamp


class ClearHaltRequest(msgspec.Struct, kw_only=True):
    """Why the loss is understood and the bot may trade again."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=CLEAR_HALT_REASON_MAX)]


class ClearHaltRequested(msgspec.Struct, kw_only=True):
    bot: str
    requested_by: str
    request: int
    reason: str
    expires_at: Timestamp


class LiveStartRequest(msgspec.Struct, kw_only=True):
    """Why the bot may go live (what the approvers read), and the readiness verdict's window (default:
    readiness.window)."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=CLEAR_HALT_REASON_MAX)]
    window: Annotated[str, msgspec.Meta(max_length=MAX_WINDOW_CHARS)] | None = None


class LiveStartRequested(msgspec.Struct, kw_only=True):
    """The request, with the readiness verdict it was asked on (what the readiness record will say), and how many
    people other than the requester approve it (reconciler.approvals.live_start)."""

    bot: str
    requested_by: str
    request: int
    reason: str
    required: int
    verdict: Literal["ready", "not ready", "unknown"]
    window: str
    failing: list[str]
    missing: list[str]
    expires_at: Timestamp


class ReadinessRecordOut(msgspec.Struct, kw_only=True):
    """A readiness record the reconciler wrote for an approved live start request: the verdict it was asked on, the
    requester (`recorded_by`) and the approvers' principals (`approved_by`, comma-separated)."""

    id: int
    bot: str
    instance: str
    verdict: str
    window: str
    failing: list[str]
    missing: list[str]
    recorded_by: str
    recorded_at: Timestamp
    approved_by: str | None
    reason: str
    request_id: int | None


class LiveStartDecided(msgspec.Struct, kw_only=True):
    """The bot's newest readiness record and the live_start decision signed for it (what bot.live_start_decision_file
    holds)."""

    bot: str
    record: ReadinessRecordOut
    decision: str


class Approval(msgspec.Struct, kw_only=True):
    """A step waiting for, or given, a person's decision, bound to the step and the playbook's version."""

    id: int
    episode_id: int
    episode_state: EpisodeState | None
    alertname: str | None
    rule: str
    target: str
    step: int
    action: str
    step_name: str
    arguments: str
    playbook_version: str
    status: ApprovalStatus
    on_timeout: str
    # Four eyes: the kind of decision, how many people other than the requester approve it (0: a one-person team's
    # configuration, the requester's own approval counts), the requester's principal (`reconciler` when it asked
    # itself), the principals that approved so far, and each approver's decision.
    kind: str
    required: int
    requested_by: str
    requested_by_instance: str
    request_id: int | None
    approvers: list[str]
    decisions: list[ApproverDecision]
    self_approved: bool
    requested_at: Timestamp | None
    deadline: Timestamp | None
    # The typed comment of the deciding decision, and the principal (token) that decided it.
    decided_by: str | None
    decided_token: str | None
    decided_at: Timestamp | None
    reason: str
    executed_at: Timestamp | None


class Approvals(msgspec.Struct, kw_only=True):
    approvals: list[Approval]


class DecisionRequest(msgspec.Struct, kw_only=True):
    """A decision on an approval: who decided is the token's name (the principal); `by` is only a comment beside it."""

    decision: Decision
    reason: Annotated[str, msgspec.Meta(max_length=REASON_MAX, pattern=NO_NUL)] = ""
    by: Annotated[str, msgspec.Meta(pattern=NO_NUL)] = ""


class RetryRequest(msgspec.Struct, kw_only=True):
    """A comment beside the token's name in the episode's history (who retried it is the token)."""

    comment: Annotated[str, msgspec.Meta(max_length=RETRY_COMMENT_MAX, pattern=NO_NUL)] = ""


class RetryQueued(msgspec.Struct, kw_only=True):
    episode: int
    retry: str
    paused: bool = False


class AckRequest(msgspec.Struct, kw_only=True):
    """Who takes the episode is the token (its name and address in the history); `comment` is only beside it."""

    note: Annotated[str, msgspec.Meta(max_length=ACK_NOTE_MAX, pattern=NO_NUL)] = ""
    comment: Annotated[str, msgspec.Meta(max_length=RETRY_COMMENT_MAX, pattern=NO_NUL)] = ""


class Acknowledged(msgspec.Struct, kw_only=True):
    episode: int
    acknowledged_by: str
    recorded_as: str


class CircuitReset(msgspec.Struct, kw_only=True):
    target: str
    was_open_until: Timestamp


class Paused(msgspec.Struct, kw_only=True):
    """The reconciler's pause as it is now (every replica), who switched it (the token's name) and, on resume, how many
    parked episodes are looked at again now."""

    paused: bool
    by: str
    episodes_woken: int = 0


class WindowRequest(msgspec.Struct, kw_only=True):
    """A maintenance window to open now: how long (30m, 2h; 7d at most), why, and the alerts (and bots) it covers as
    label: value equality matchers (default {"service": "tradingbot"}: every bot)."""

    duration: Annotated[str, msgspec.Meta(min_length=1, max_length=DURATION_MAX_CHARS)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=WINDOW_REASON_MAX)]
    matchers: Annotated[
        dict[
            Annotated[str, msgspec.Meta(pattern="^[a-zA-Z_][a-zA-Z0-9_]*$")],
            Annotated[str, msgspec.Meta(min_length=1, max_length=MATCHER_VALUE_MAX)],
        ],
        msgspec.Meta(max_length=MATCHERS_MAX),
    ] = {}


class Window(msgspec.Struct, kw_only=True):
    """A maintenance window: its state (active, ended, expired), matchers, silence, the bots it paused and has not
    resumed, who opened it (`api: TOKEN`, `console: ...`, `schedule:NAME`) and what it could not do."""

    id: int
    state: str
    matchers: dict[str, str]
    reason: str
    created_by: str
    starts_at: Timestamp
    ends_at: Timestamp
    ended_at: Timestamp | None
    silence_id: str | None
    paused_bots: list[str]
    problems: list[str]


class Windows(msgspec.Struct, kw_only=True):
    windows: list[Window]


class WindowOutcome(msgspec.Struct, kw_only=True):
    """What opening or ending a window did (`done`) and could not do (`problems`, recorded on the window)."""

    window: Window
    done: list[str]
    problems: list[str]


class StopDrill(msgspec.Struct, kw_only=True):
    """The drill's steps, one line each, and who ran it (the token's name)."""

    bot: str
    steps: list[str]
    by: str


class ReadinessResult(msgspec.Struct, kw_only=True):
    """One criterion of the checklist: its status, value (null when unknown), how it compares with its threshold,
    over which window, and where the number comes from (the PromQL query, or the record read)."""

    name: str
    what: str
    status: Literal["pass", "fail", "unknown", "n/a"]
    value: float | None
    op: Literal[">=", "<="]
    threshold: float
    unit: str
    window: str
    source: str
    detail: str


class Readiness(msgspec.Struct, kw_only=True):
    """A bot's readiness verdict (docs/readiness.md): `ready` only when every criterion passed on real data."""

    bot: str
    instance: str
    window: str
    verdict: Literal["ready", "not ready", "unknown"]
    failing: list[str]
    missing: list[str]
    results: list[ReadinessResult]
    evaluated_at: float
    queries: int


class AuditEntry(msgspec.Struct, kw_only=True):
    """One entry of the audit chain (docs/audit.md): who decided (the authenticated principal), from where, when,
    what changed, the decision it answered; `hash` is sha256 over `prev_hash` and the entry's canonical JSON."""

    seq: int
    at: Timestamp
    principal: str
    source: str
    action: str
    target: str
    before: Any
    after: Any
    decision: str | None
    comment: str
    prev_hash: str
    hash: str


class AuditHead(msgspec.Struct, kw_only=True):
    seq: int
    hash: str


class AuditEntries(msgspec.Struct, kw_only=True):
    entries: list[AuditEntry]
    head: AuditHead


class Health(msgspec.Struct, kw_only=True):
    status: str


# The `{bot}` of a path that names one of the reconciler's bots.
BOT_PATH_PARAMETER: dict[str, Any] = {
    "name": "bot",
    "in": "path",
    "required": True,
    "description": "the bot's name (bots[].name)",
    "schema": {"type": "string", "minLength": 1},
}


def _token(scope: str, doc: Builder) -> dict[str, Any]:
    """The 401 and 403 of an operation that needs a token of reconciler.api_tokens with `scope`."""
    return {
        "401": response(
            "No token, or not one the reconciler knows.",
            doc.ref(Error),
            **{"WWW-Authenticate": "Bearer, the realm named"},
        ),
        "403": response(f"The token's scope does not include '{scope}'.", doc.ref(Error)),
    }


def _id_parameter(what: str) -> dict[str, Any]:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": f"the {what}'s id (a positive integer)",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }


def _limit_parameter() -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"how many at most, newest first (default {DEFAULT_LIST})",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": DEFAULT_LIST},
    }


def _operator_operations(doc: Builder, bad: dict[str, Any]) -> None:
    """The operator's decisions (trading_ops.reconciler.operator_api), each an audit entry under the token's name."""
    for verb, path, summary in (
        ("pauseReconciler", PAUSE_PATH, "Stop acting, every replica: episodes are parked and recorded"),
        ("resumeReconciler", RESUME_PATH, "Act again after a pause: parked episodes are looked at at once"),
    ):
        doc.operation(
            "post",
            path,
            {
                "operationId": verb,
                "summary": f"{summary} (scope operate; an audit entry under the token's name)",
                "security": [{"operate": []}],
                "responses": {"200": response("Done.", doc.ref(Paused)), **_token("operate", doc)},
            },
        )
    doc.operation(
        "get",
        MAINTENANCE_PATH,
        {
            "operationId": "listMaintenanceWindows",
            "summary": "Maintenance windows, newest first (scope read)",
            "security": [{"read": []}],
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": f"how many at most, newest first (default {WINDOWS_DEFAULT})",
                    "schema": {"type": "integer", "minimum": 1, "maximum": WINDOWS_MAX, "default": WINDOWS_DEFAULT},
                },
                {
                    "name": "open",
                    "in": "query",
                    "required": False,
                    "description": "1: only open windows (active, or ended with bots not resumed yet)",
                    "schema": {"type": "string", "enum": ["0", "1"], "default": "0"},
                },
            ],
            "responses": {"200": response("The windows.", doc.ref(Windows)), "400": bad, **_token("read", doc)},
        },
    )
    doc.operation(
        "post",
        MAINTENANCE_PATH,
        {
            "operationId": "startMaintenanceWindow",
            "summary": "Open a maintenance window now: a silence, the matched bots paused, an audit entry under the "
            "token's name (scope operate; destructive for a window that would silence the alerting pipeline's own "
            "pages)",
            "security": [{"operate": []}],
            "requestBody": {"required": True, "content": json_content(doc.ref(WindowRequest))},
            "responses": {
                "200": response("Opened (what it could not do in `problems`).", doc.ref(WindowOutcome)),
                "400": bad,
                **_token("operate", doc),
                "403": response(
                    "The token's scope does not include 'operate', or the window would silence the pipeline's own "
                    "pages and it does not include 'destructive'.",
                    doc.ref(Error),
                ),
                "409": response("A window for the same matchers is open.", doc.ref(Error)),
                "413": response("Over reconciler.max_body_bytes.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "post",
        MAINTENANCE_END_PATH,
        {
            "operationId": "endMaintenanceWindow",
            "summary": "End a maintenance window now: its silence expired, the bots it paused resumed, an audit entry "
            "under the token's name (scope operate)",
            "security": [{"operate": []}],
            "parameters": [_id_parameter("window")],
            "responses": {
                "200": response("Ended (what it could not do in `problems`).", doc.ref(WindowOutcome)),
                "400": bad,
                **_token("operate", doc),
                "404": response("No such window.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "post",
        STOP_DRILL_PATH,
        {
            "operationId": "runStopDrill",
            "summary": "Exercise the emergency stop on an active paper bot: halt, flatten, wait until flat, clear the "
            "drill's own halt, resume; an audit entry under the token's name (scope destructive)",
            "security": [{"destructive": []}],
            "parameters": [BOT_PATH_PARAMETER],
            "responses": {
                "200": response("Exercised: the steps.", doc.ref(StopDrill)),
                "400": bad,
                **_token("destructive", doc),
                "404": response("No such bot.", doc.ref(Error)),
                "409": response(
                    "Refused, nothing changed: not a paper bot, not active (a halt, a pause, reduce-only it did not "
                    "set), or an approval waits for it.",
                    doc.ref(Error),
                ),
                "502": response("A step failed: the bot did not do what the drill asks (recorded).", doc.ref(Error)),
                "503": response("The drill ran but its audit entry was not written.", doc.ref(Error)),
            },
        },
    )


def reconciler_document() -> dict[str, Any]:
    """The reconciler's OpenAPI 3.1 document."""
    doc = Builder("trading-ops reconciler", DESCRIPTION)
    webhook_security: list[dict[str, list[str]]] = [{"webhook": []}]
    bad = bad_request("The request is not what the operation takes (one line saying why).", doc.ref(Error))
    doc.operation(
        "post",
        "/api/v1/alertmanager",
        {
            "operationId": "postAlertmanagerWebhook",
            "summary": "Alertmanager's webhook: the notification is stored, then acted on",
            "security": webhook_security,
            "requestBody": {"required": True, "content": json_content(doc.ref(AlertmanagerWebhook))},
            "responses": {
                "200": response("Stored.", doc.ref(WebhookStored)),
                "400": bad_request("Not UTF-8 JSON.", doc.ref(WebhookRefused)),
                "401": response("No token, or not the webhook token.", doc.ref(WebhookRefused)),
                "413": response("Over reconciler.max_body_bytes.", doc.ref(WebhookRefused)),
                "422": response("Not a version 4 notification (the first wrong key named).", doc.ref(WebhookRefused)),
                "503": response(
                    "Not stored (the ledger is unavailable): Alertmanager resends.", doc.ref(WebhookRefused)
                ),
            },
        },
    )
    doc.operation(
        "get",
        "/api/v1/episodes",
        {
            "operationId": "listEpisodes",
            "summary": "The newest episodes with their attempts (scope read)",
            "security": [{"read": []}],
            "parameters": [
                _limit_parameter(),
                {
                    "name": "state",
                    "in": "query",
                    "required": False,
                    "description": "only episodes in this state",
                    "schema": {"type": "string", "enum": list(EPISODE_STATES)},
                },
            ],
            "responses": {"200": response("The episodes.", doc.ref(Episodes)), "400": bad, **_token("read", doc)},
        },
    )
    doc.operation(
        "get",
        "/api/v1/episodes/{id}",
        {
            "operationId": "getEpisode",
            "summary": "One episode whole: attempts, steps, the pages it owes (scope read)",
            "security": [{"read": []}],
            "parameters": [_id_parameter("episode")],
            "responses": {
                "200": response("The episode.", doc.ref(Episode)),
                "400": bad,
                **_token("read", doc),
                "404": response("No such episode.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "post",
        "/api/v1/episodes/{id}/retry",
        {
            "operationId": "retryEpisode",
            "summary": "One more run of an escalated or failed episode whose alert still fires (scope operate), "
            "recorded in its history under the token's name",
            "security": [{"operate": []}],
            "parameters": [_id_parameter("episode")],
            "requestBody": {"required": False, "content": json_content(doc.ref(RetryRequest))},
            "responses": {
                "200": response("Queued (`paused`: it runs once the reconciler is resumed).", doc.ref(RetryQueued)),
                "400": bad,
                **_token("operate", doc),
                "404": response("No such episode.", doc.ref(Error)),
                "409": response("The episode cannot be retried (its state says why).", doc.ref(Error)),
                "413": response("Over reconciler.max_body_bytes.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "post",
        "/api/v1/episodes/{id}/ack",
        {
            "operationId": "ackEpisode",
            "summary": "Record that a person has taken an episode (scope operate): the token's name and address in its "
            "history, with the note; it changes nothing the reconciler does",
            "security": [{"operate": []}],
            "parameters": [_id_parameter("episode")],
            "requestBody": {"required": False, "content": json_content(doc.ref(AckRequest))},
            "responses": {
                "200": response("Recorded.", doc.ref(Acknowledged)),
                "400": bad,
                **_token("operate", doc),
                "404": response("No such episode.", doc.ref(Error)),
                "413": response("Over reconciler.max_body_bytes.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "post",
        "/api/v1/circuits/{target}/reset",
        {
            "operationId": "resetCircuit",
            "summary": "Close a target's open circuit breaker (scope operate)",
            "security": [{"operate": []}],
            "parameters": [
                {
                    "name": "target",
                    "in": "path",
                    "required": True,
                    "description": "the target (an alert's instance)",
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_TARGET_CHARS},
                }
            ],
            "responses": {
                "200": response("Closed.", doc.ref(CircuitReset)),
                "400": bad,
                **_token("operate", doc),
                "404": response("No open circuit for the target.", doc.ref(Error)),
            },
        },
    )
    _operator_operations(doc, bad)
    doc.operation(
        "get",
        "/api/v1/approvals",
        {
            "operationId": "listApprovals",
            "summary": "The newest approvals (scope read)",
            "security": [{"read": []}],
            "parameters": [
                _limit_parameter(),
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "description": "only approvals with this status",
                    "schema": {"type": "string", "enum": list(APPROVAL_STATUSES)},
                },
            ],
            "responses": {"200": response("The approvals.", doc.ref(Approvals)), "400": bad, **_token("read", doc)},
        },
    )
    doc.operation(
        "get",
        "/api/v1/approvals/{id}",
        {
            "operationId": "getApproval",
            "summary": "One approval (scope read)",
            "security": [{"read": []}],
            "parameters": [_id_parameter("approval")],
            "responses": {
                "200": response("The approval.", doc.ref(Approval)),
                "400": bad,
                **_token("read", doc),
                "404": response("No such approval.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "post",
        "/api/v1/approvals/{id}",
        {
            "operationId": "decideApproval",
            "summary": "Approve or reject a waiting step as the token's principal (scope approve; never the webhook "
            "token; never the requester's own token: four eyes)",
            "security": [{"approve": []}],
            "parameters": [_id_parameter("approval")],
            "requestBody": {"required": True, "content": json_content(doc.ref(DecisionRequest))},
            "responses": {
                "200": response("Decided: the approval as it is now.", doc.ref(Approval)),
                "400": bad,
                **_token("approve", doc),
                "403": response(
                    "The token's scope does not include 'approve', it is the webhook token, or four eyes refuse it "
                    "(the requester's own token, a principal deciding twice; one line naming the rule).",
                    doc.ref(Error),
                ),
                "404": response("No such approval.", doc.ref(Error)),
                "409": response("Already decided, expired or superseded (the error says which).", doc.ref(Error)),
                "413": response("Over reconciler.max_body_bytes.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "post",
        RAMP_PATH,
        {
            "operationId": "requestRampPromotion",
            "summary": "Ask for a bot's next ramp stage as the token's principal (scope operate or approve)",
            "description": "Refused at once when the stage is not the bot's next, when the same request stands, or "
            "when a readiness criterion of the stage before it does not pass. The request is recorded under the "
            "token's name (an audit entry) and posted to Alertmanager; its approval then needs other people.",
            "security": [{"operate": []}, {"approve": []}],
            "parameters": [BOT_PATH_PARAMETER],
            "requestBody": {"required": True, "content": json_content(doc.ref(RampRequest))},
            "responses": {
                "200": response("Asked: the request.", doc.ref(RampRequested)),
                "400": bad,
                **_token("operate", doc),
                "404": response("No such bot.", doc.ref(Error)),
                "409": response(
                    "Not the next stage, the same request stands, or a criterion does not pass.", doc.ref(Error)
                ),
                "413": response("Over reconciler.max_body_bytes.", doc.ref(Error)),
                "503": response("The bot's stage could not be read, or Alertmanager took nothing.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "post",
        CLEAR_HALT_PATH,
        {
            "operationId": "requestClearHalt",
            "summary": "Ask that a bot halted by a loss limit trade again, as the token's principal (scope operate or "
            "approve)",
            "description": "Refused when the bot is not halted or the same request stands. The request is recorded "
            "under the token's name (an audit entry) and posted to Alertmanager (TradingBotClearHaltRequested); its "
            "approval then needs reconciler.approvals.clear_halt other people.",
            "security": [{"operate": []}, {"approve": []}],
            "parameters": [BOT_PATH_PARAMETER],
            "requestBody": {"required": True, "content": json_content(doc.ref(ClearHaltRequest))},
            "responses": {
                "200": response("Asked: the request.", doc.ref(ClearHaltRequested)),
                "400": bad,
                **_token("operate", doc),
                "404": response("No such bot.", doc.ref(Error)),
                "409": response("The bot is not halted, or the same request stands.", doc.ref(Error)),
                "413": response("Over reconciler.max_body_bytes.", doc.ref(Error)),
                "503": response("The bot's state could not be read, or Alertmanager took nothing.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "post",
        LIVE_START_PATH,
        {
            "operationId": "requestLiveStart",
            "summary": "Ask that a bot go live, as the token's principal (scope operate or approve)",
            "description": "The reconciler judges the bot's readiness (the verdict is kept with the request), records "
            "the request under the token's name (an audit entry) and posts it to Alertmanager "
            "(TradingBotLiveStartRequested); its approval needs reconciler.approvals.live_start people other than the "
            "requester. Once approved, the reconciler writes the readiness record with those principals and signs "
            "the live_start decision for it (GET on this path).",
            "security": [{"operate": []}, {"approve": []}],
            "parameters": [BOT_PATH_PARAMETER],
            "requestBody": {"required": True, "content": json_content(doc.ref(LiveStartRequest))},
            "responses": {
                "200": response("Asked: the request.", doc.ref(LiveStartRequested)),
                "400": bad,
                **_token("operate", doc),
                "404": response("No such bot.", doc.ref(Error)),
                "409": response("The same request stands.", doc.ref(Error)),
                "413": response("Over reconciler.max_body_bytes.", doc.ref(Error)),
                "503": response("Alertmanager took nothing.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "get",
        LIVE_START_PATH,
        {
            "operationId": "getLiveStartDecision",
            "summary": "The live_start decision the reconciler signed for the bot's newest approved request (scope "
            "operate or approve)",
            "security": [{"operate": []}, {"approve": []}],
            "parameters": [BOT_PATH_PARAMETER],
            "responses": {
                "200": response("The readiness record and its signed decision.", doc.ref(LiveStartDecided)),
                "400": bad,
                **_token("operate", doc),
                "404": response("No such bot, or no live start decided.", doc.ref(Error)),
                "409": response("The newest request waits for its approval.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "get",
        READINESS_PATH,
        {
            "operationId": "getReadiness",
            "summary": "A bot's readiness verdict, every criterion with its value, threshold and window (scope read)",
            "security": [{"read": []}],
            "parameters": [
                BOT_PATH_PARAMETER,
                {
                    "name": "window",
                    "in": "query",
                    "required": False,
                    "description": "the Prometheus criteria's window, a duration longer than 1h (default: "
                    "readiness.window)",
                    "schema": {"type": "string", "maxLength": MAX_WINDOW_CHARS},
                },
            ],
            "responses": {
                "200": response("The verdict.", doc.ref(Readiness)),
                "400": response(
                    "The window is not a duration, is 1h or shorter, or is longer than Prometheus keeps.",
                    doc.ref(Error),
                ),
                **_token("read", doc),
                "404": response("No such bot in the configuration's bots: list.", doc.ref(Error)),
            },
        },
    )
    doc.operation(
        "get",
        AUDIT_PATH,
        {
            "operationId": "listAudit",
            "summary": "The audit chain's newest entries: every decision, its principal and what changed (scope read)",
            "security": [{"read": []}],
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": f"how many at most, newest first (default {AUDIT_DEFAULT})",
                    "schema": {"type": "integer", "minimum": 1, "maximum": AUDIT_MAX, "default": AUDIT_DEFAULT},
                },
                {
                    "name": "before",
                    "in": "query",
                    "required": False,
                    "description": "only entries older than this seq (the next page)",
                    "schema": {"type": "integer", "minimum": 1},
                },
                *(
                    {
                        "name": name,
                        "in": "query",
                        "required": False,
                        "description": f"only entries with this {name}",
                        "schema": {"type": "string", "maxLength": AUDIT_FILTER_MAX},
                    }
                    for name in AUDIT_FILTERS
                ),
            ],
            "responses": {
                "200": response("The entries, newest first, and the chain's head.", doc.ref(AuditEntries)),
                "400": bad,
                **_token("read", doc),
            },
        },
    )
    doc.probes(
        OPENAPI_PATH,
        "Prometheus metrics (tradingops_*)",
        alive=("Alive: the intake's writer and every worker run", "A worker stopped.", Health),
        ready=("Ready: the ledger's database answers", "The database does not answer.", Health),
    )
    return doc.document(
        {
            "webhook": bearer_scheme("The webhook token (reconciler.token), as Alertmanager's http_config sends it."),
            **{
                scope: bearer_scheme(f"A token of reconciler.api_tokens whose scope includes '{scope}'{words}.")
                for scope, words in SCOPE_WORDS.items()
            },
        }
    )


@functools.cache
def document_bytes() -> bytes:
    """The document as the reconciler serves it (made once per process)."""
    return dumps(reconciler_document())
