"""The bot's HTTP server: /metrics, /healthz, /readyz and the authenticated /control/{command} API."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trading_ops.bot.broker import BrokerError
from trading_ops.bot.control import ACTED_ON, SOURCE_HEADER, Caller, CommandError, command_source
from trading_ops.bot.keys import INSTRUMENTATION
from trading_ops.bot.state import TransitionRefused
from trading_ops.http_guard import guard
from trading_ops.http_input import InputError, read_json_object
from trading_ops.scopes import refusal

log = logging.getLogger(__name__)

MAX_CONTROL_BODY_BYTES = 64 * 1024
# Commands are counted by name only when known, so a caller cannot grow the label set.
UNKNOWN_COMMAND_LABEL = "unknown"
# A command's answer in its log line: scalar fields only, each value and the whole cut to these lengths.
SUMMARY_VALUE_CHARS = 60
SUMMARY_MAX_CHARS = 200
# How long a carried-out command's answer waits for its journal write (a write stuck longer is logged, not awaited).
JOURNAL_WAIT_SECONDS = 5.0
# Routes that check a bearer token themselves: a web configuration's basic auth covers every other route.
BEARER_ROUTES = ("/control/",)


def create_app(instrumentation: Any) -> web.Application:
    """The aiohttp application of one bot, serving `instrumentation` (a trading_ops.bot.Instrumentation)."""
    app = web.Application(client_max_size=MAX_CONTROL_BODY_BYTES)
    # Every answer with its security headers; a refused input or an unexpected error in the control API's format.
    guard(app, render=render_error)
    app[INSTRUMENTATION] = instrumentation
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz_handler)
    app.router.add_get("/readyz", readyz_handler)
    app.router.add_post("/control/{command}", control_handler)
    app.router.add_get("/openapi.json", openapi_handler)
    return app


def _encode_metrics(registry: Any, use_gzip: bool) -> bytes:
    body = generate_latest(registry)
    return gzip.compress(body, compresslevel=1) if use_gzip else body


async def metrics_handler(request: web.Request) -> web.Response:
    inst = request.app[INSTRUMENTATION]
    use_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
    # Rendering thousands of series is CPU work: keep it off the event loop the trading loop runs on.
    body = await asyncio.get_running_loop().run_in_executor(None, _encode_metrics, inst.registry, use_gzip)
    response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
    if use_gzip:
        response.headers["Content-Encoding"] = "gzip"
    return response


async def healthz_handler(request: web.Request) -> web.Response:
    inst = request.app[INSTRUMENTATION]
    healthy, detail = inst.health()
    return web.json_response(detail, status=200 if healthy else 503)


async def readyz_handler(request: web.Request) -> web.Response:
    inst = request.app[INSTRUMENTATION]
    ready, checks = inst.readiness()
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


def render_error(_request: web.Request, status: int, message: str) -> web.StreamResponse:
    return _error(status, message)


async def openapi_handler(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this bot's API (trading_ops.bot.api_spec): its own commands and their scopes."""
    from trading_ops.bot.api_spec import document_bytes

    return web.Response(body=document_bytes(request.app[INSTRUMENTATION].control), content_type="application/json")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="trading-ops"'} if status == 401 else None
    return web.json_response({"ok": False, "error": message, **extra}, status=status, headers=headers)


@dataclass
class _Call:
    """One control request being answered: who asked, and how a refusal of it is counted, logged and answered."""

    inst: Any  # the bot's Instrumentation
    command: str
    label: str  # the command's metric label
    peer: str  # the caller, for the log
    fields: dict[str, str]  # a JSON log's own keys
    caller: Caller | None = None  # who asked, once the token matched: its refusals are recorded too

    def fail(
        self,
        status: int,
        reason: str,
        message: str,
        why: str,
        *args: Any,
        level: int = logging.WARNING,
        body: dict[str, Any] | None = None,
    ) -> web.Response:
        """Count the failure as `reason`, log `why % args`, record it (a known command of an authenticated caller),
        answer `status` with `message` (and `body`'s fields)."""
        self.inst.metrics.control_failure(self.label, reason)
        log.log(level, why, *args, exc_info=level >= logging.ERROR, extra=self.fields)
        if self.caller is not None and self.label != UNKNOWN_COMMAND_LABEL:
            detail = {"error": message[:SUMMARY_MAX_CHARS], **_acted_on()}
            _record(self.inst, self.command, self.caller, f"refused {status}", detail)
        return _error(status, message, **(body or {}))


def _record(inst: Any, command: str, caller: Any, outcome: str, detail: dict[str, Any]) -> Awaitable[Any] | None:
    """The command handed to the control plane's recorders: the runtime journals it, and so do the freqtrade sidecar
    and the NautilusTrader controller (trading_ops.integrations.command_journal). A control plane without `record` has
    its log line and its tradingbot_control_commands_total as its record. Returns the journal's write in progress."""
    record = getattr(inst.control, "record", None)
    return None if record is None else record(command, caller, outcome, detail)


async def _journaled(call: _Call, write: Awaitable[Any] | None) -> None:
    """Wait (JOURNAL_WAIT_SECONDS at most) for a carried-out command's journal write: a command the caller saw
    succeed is in the audit even when the process dies right after answering. A write that fails is logged by its
    recorder; one that takes longer is logged here, and the answer goes out (the command has been carried out)."""
    if write is None:
        return
    future = asyncio.ensure_future(write)
    done, _ = await asyncio.wait({future}, timeout=JOURNAL_WAIT_SECONDS)
    if not done:
        log.warning(
            "control %s by %s answered before its journal write ended (%.0f s)",
            call.command,
            call.peer,
            JOURNAL_WAIT_SECONDS,
            extra=call.fields,
        )


def _acted_on() -> dict[str, Any]:
    """The signed decision the command acted on, as its record keeps it ({} when none)."""
    decision = ACTED_ON.get()
    return {"decision": decision} if decision else {}


async def control_handler(request: web.Request) -> web.Response:
    inst = request.app[INSTRUMENTATION]
    ACTED_ON.set(None)  # this request's own (its task's context): none acted on yet
    command = request.match_info["command"]
    known = inst.control.has(command)
    label = command if known else UNKNOWN_COMMAND_LABEL
    address = request.remote or "-"
    token = inst.tokens.match(request.headers.get("Authorization"))
    source = command_source(request.headers.get(SOURCE_HEADER), token)
    inst.metrics.control_command(label, source)
    started = time.monotonic()
    if token is None:
        inst.metrics.control_failure(label, "unauthorized")
        log.warning("control %s from %s refused: missing or wrong bearer token", label, address)
        return _error(401, "missing or wrong bearer token")
    # Who asked and from where, in every line below (and in the journal with a state command).
    caller = Caller(token.name, address, source)
    fields = {"command": label, "token": token.name, "peer": address, "source": source}
    call = _Call(inst, command, label, str(caller), fields, caller)
    refused = _refusal(call, known, token)
    if refused is not None:
        return refused
    args = await _args(call, request)
    if isinstance(args, web.Response):
        return args
    result = await _run(call, args, caller)
    if isinstance(result, web.Response):
        return result
    # Every call is logged (who did what), but the answer is the client's, not the log's: a line has its short fields
    # only (the new state, counts), never the whole JSON (`status`, which verification polls, is most of the lines).
    summary = result_summary(result)
    acted = _acted_on()
    decided = f" on decision {acted['decision']['id']}" if acted else ""
    log.info(
        "control %s by %s ok in %.1f ms%s%s",
        command,
        call.peer,
        (time.monotonic() - started) * 1000,
        decided,
        summary,
        extra=fields,
    )
    # A state command's change, as the audit shows it (the reconciler pulls these: trading_ops.bot.control_journal).
    states = {"before": result["previous_state"], "after": result["state"]} if "previous_state" in result else {}
    detail = {"result": summary.removeprefix(": "), **states, **acted}
    await _journaled(call, _record(inst, command, caller, "ok", detail))
    return web.json_response({"ok": True, "command": command, **result}, dumps=_dumps)


def _refusal(call: _Call, known: bool, token: Any) -> web.Response | None:
    """404 for an unknown command, 403 for a token without its scope; None when it may run."""
    command = call.command
    if not known:
        return call.fail(
            404,
            "unknown_command",
            f"unknown command {command[:64]!r}",
            "control by %s: unknown command %r",
            call.peer,
            command[:64],
            body={"commands": call.inst.control.commands},
        )
    needed = call.inst.control.scope(command)
    if not token.allows(needed):
        message = refusal(command, needed, token)
        return call.fail(403, "forbidden", message, "control %s by %s refused: %s", command, call.peer, message)
    return None


async def _args(call: _Call, request: web.Request) -> dict[str, Any] | web.Response:
    """The command's arguments (the JSON object of the body; none is {}), or the 4xx that answers a body that is not
    one (over MAX_CONTROL_BODY_BYTES whatever its framing, not JSON, nested too deep, absurd numbers)."""
    try:
        return await read_json_object(request, MAX_CONTROL_BODY_BYTES)
    except InputError as exc:
        return call.fail(exc.status, "bad_request", exc.message, "control %s by %s: %s", call.command, call.peer, exc)


async def _run(call: _Call, args: dict[str, Any], caller: Caller) -> dict[str, Any] | web.Response:
    """The command's result, or the error that answers it."""
    command, peer = call.command, call.peer
    try:
        result: dict[str, Any] = await call.inst.control.run(command, args, caller)
    except TransitionRefused as exc:
        why = "control %s by %s refused: %s"
        return call.fail(409, "refused", str(exc), why, command, peer, exc, body={"state": exc.state.value})
    except CommandError as exc:
        reason = "forbidden" if exc.status == 403 else "bad_request"
        return call.fail(exc.status, reason, str(exc), "control %s by %s failed: %s", command, peer, exc)
    except BrokerError as exc:
        # The command needs the venue and the venue cannot be reached: retry after `reconnect`. What the command
        # did before it needed the venue stands; the error's detail says what (a halt stays halted).
        return call.fail(
            503,
            "broker_unavailable",
            f"broker unavailable: {exc}",
            "control %s by %s: broker unavailable: %s",
            command,
            peer,
            exc,
            body={**exc.detail, "state": call.inst.state.state.value},
        )
    except Exception as exc:
        why = "control %s by %s raised"
        return call.fail(500, "error", f"{command} failed: {exc}", why, command, peer, level=logging.ERROR)
    return result


def result_summary(result: dict[str, Any]) -> str:
    """A command's answer in a log line: its scalar fields as `key=value`, a list or mapping as its length, at most
    SUMMARY_MAX_CHARS (": state=paused cancelled=3")."""
    parts = []
    for key, value in result.items():
        if isinstance(value, list | tuple | dict):
            parts.append(f"{key}=[{len(value)}]")
        elif value is None or isinstance(value, str | int | float | bool):
            shown = str(value)
            parts.append(f"{key}={shown if len(shown) <= SUMMARY_VALUE_CHARS else shown[:SUMMARY_VALUE_CHARS] + '…'}")
    text = " ".join(parts)
    if len(text) > SUMMARY_MAX_CHARS:
        text = text[: SUMMARY_MAX_CHARS - 1] + "…"
    return f": {text}" if text else ""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
