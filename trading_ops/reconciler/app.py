"""The reconciler's aiohttp application: webhook intake, episode API, /metrics, health; workers in cleanup_ctx."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import make_url, text

from trading_ops.bearer import bearer_matches
from trading_ops.clients.alertmanager import AlertmanagerClient
from trading_ops.clients.notify import Notifier
from trading_ops.config import Config, ConfigError, resolve_secret, resolve_tokens
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.revisions import schema_problem
from trading_ops.db.states import CLOSED_STATES, OPEN_STATES
from trading_ops.http_guard import guard
from trading_ops.http_input import InputError, parse_id, parse_limit, read_body, read_json, read_json_object
from trading_ops.ops.maintenance_metrics import register_maintenance_metrics
from trading_ops.ops.scheduler import Scheduler
from trading_ops.ops.state_metrics import register_ops_metrics
from trading_ops.reconciler import keys
from trading_ops.reconciler.actions.http import ACTION as HTTP_ACTION
from trading_ops.reconciler.actions.http import host_allowed
from trading_ops.reconciler.actions.silence import CREATED_BY
from trading_ops.reconciler.api_spec import (
    ACK_NOTE_MAX,
    DEFAULT_LIST,
    MAX_LIST,
    MAX_TARGET_CHARS,
    RETRY_COMMENT_MAX,
    document_bytes,
)
from trading_ops.reconciler.approvals import (
    DECIDER_MAX,
    DECISIONS,
    REASON_MAX,
    STATUSES,
    ApprovalCollector,
    Refusal,
    approval_json,
    attribution,
)
from trading_ops.reconciler.audit_api import setup_audit
from trading_ops.reconciler.auth import authorized
from trading_ops.reconciler.commit_probe import CommitProbe
from trading_ops.reconciler.console import render_error, response_headers, setup_console
from trading_ops.reconciler.console_readiness import setup_readiness
from trading_ops.reconciler.control_audit import ControlAudit
from trading_ops.reconciler.deadman import DeadMansSwitch
from trading_ops.reconciler.engine import Engine
from trading_ops.reconciler.intake import (
    GroupCommitWriter,
    Rejected,
    check_token,
    decode_body,
    parse_body,
    plan_notification,
    validate,
)
from trading_ops.reconciler.jobs import configured_jobs
from trading_ops.reconciler.ledger import (
    Ledger,
    NotificationIn,
    StoreResult,
    episode_json,
)
from trading_ops.reconciler.ledger_reading import BackgroundReading
from trading_ops.reconciler.live_start_api import PATH as LIVE_START_PATH
from trading_ops.reconciler.live_start_api import get_live_start, request_live_start
from trading_ops.reconciler.maintenance import MaintenanceWatcher
from trading_ops.reconciler.metrics import ReconcilerMetrics
from trading_ops.reconciler.operator_api import add_operator_routes
from trading_ops.reconciler.outbox import Outbox, OutboxCollector
from trading_ops.reconciler.playbook import Playbook, PlaybookError, load_configured_playbook
from trading_ops.reconciler.processes import make_owner
from trading_ops.reconciler.ramp_api import CLEAR_HALT_PATH
from trading_ops.reconciler.ramp_api import PATH as RAMP_PATH
from trading_ops.reconciler.ramp_api import clear_halt as clear_halt_request
from trading_ops.reconciler.ramp_api import promote as ramp_promote
from trading_ops.reconciler.retention import Pruner, ledger_retention
from trading_ops.scopes import APPROVE, OPERATE, READ
from trading_ops.tasks import stop_tasks
from trading_ops.webconfig import client_ssl_context, secure_app, server_web_config

log = logging.getLogger(__name__)
# GET /api/v1/episodes: `state` one of the ledger's states (its `limit`: api_spec's MAX_LIST and DEFAULT_LIST).
KNOWN_STATES = (*OPEN_STATES, *CLOSED_STATES)
# Routes that check a bearer token themselves (the webhook, the episode API): a web configuration's basic auth covers
# every other route (/metrics, /healthz, /readyz).
BEARER_ROUTES = ("/api/",)
# The ledger's attempt owner column, where a retry's token name, address and comment go.
OWNER_MAX = 128


def create_app(config: Config, *, registry: CollectorRegistry | None = None) -> web.Application:
    """Build the reconciler. Configuration problems (no token, bad playbook) raise before serving."""
    rc = config.reconciler
    token = resolve_secret(config, rc, "token", "reconciler.token")
    if not token:
        raise ConfigError(
            "reconciler.token",
            "no webhook token: set token_file or token_env (default variable TRADING_OPS_RECONCILER_TOKEN)",
        )
    # The API's tokens (read_token, and api_tokens with their scopes): none may be the webhook's (whoever can post
    # alerts need not read them, nor act).
    api_tokens = resolve_tokens(config, rc, "read_token", "api_tokens", "reconciler", legacy_scope=READ)
    if (clash := api_tokens.match(f"Bearer {token}")) is not None:
        key = "reconciler.read_token" if clash.legacy else f"reconciler.api_tokens ({clash.name})"
        raise ConfigError(key, "must differ from the webhook token (reconciler.token)")
    web_config = server_web_config(rc.listen, "reconciler.listen")
    client_tls = client_ssl_context(rc.tls, "reconciler.tls")
    app = web.Application(client_max_size=rc.max_body_bytes)
    secure_app(app, web_config, BEARER_ROUTES)
    # Every answer with its security headers (the console's on /ui/), a refused input one line, an exception a 500.
    guard(app, response_headers, render_error)
    app[keys.CONFIG] = config
    if client_tls is not None:
        app[keys.CLIENT_TLS] = client_tls
    app[keys.REGISTRY] = registry if registry is not None else CollectorRegistry()
    app[keys.METRICS] = ReconcilerMetrics(app[keys.REGISTRY])
    # Backups and upkeep run from the CLI and the schedule; their records on disk are exported here.
    register_ops_metrics(config, app[keys.REGISTRY])
    # Every configured bot has its circuit series from the start (0), not only once one opened.
    app[keys.METRICS].snapshot.known_targets.update(rc.targets)
    try:
        app[keys.PLAYBOOK] = load_configured_playbook(rc.playbook, config.path)
    except PlaybookError as exc:
        raise ConfigError("reconciler.playbook", str(exc)) from exc
    check_http_hosts(app[keys.PLAYBOOK], rc.http_allowed_hosts)
    app[keys.TOKEN] = token
    app[keys.API_TOKENS] = api_tokens
    if not api_tokens:
        log.warning(
            "no reconciler.api_tokens nor read_token (read_token_file, read_token_env or "
            "TRADING_OPS_RECONCILER_READ_TOKEN): the episode API answers 401"
        )
    app[keys.INSTANCE] = rc.instance or socket.gethostname()
    # Claims name this process (host, pid, start time): replicas sharing an instance name never take each
    # other's live runs, and a previous life of ours is recognised as dead at once after a restart.
    app[keys.OWNER] = make_owner(app[keys.INSTANCE])
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(clients_ctx)
    app.cleanup_ctx.append(workers_ctx)
    app.cleanup_ctx.append(scheduler_ctx)
    app.cleanup_ctx.append(control_audit_ctx)
    add_routes(app)
    return app


def add_routes(app: web.Application) -> None:
    """The API's routes, the operator console's (/ui/: its own login, a session cookie, CSRF tokens and scope checks),
    the readiness and audit pages, metrics and the probes."""
    app.router.add_post("/api/v1/alertmanager", webhook)
    app.router.add_get("/api/v1/episodes", list_episodes)
    app.router.add_get("/api/v1/episodes/{id}", get_episode)
    app.router.add_post("/api/v1/episodes/{id}/retry", retry_episode)
    app.router.add_post("/api/v1/episodes/{id}/ack", ack_episode)
    app.router.add_post("/api/v1/circuits/{target}/reset", reset_circuit)
    app.router.add_get("/api/v1/approvals", list_approvals)
    app.router.add_get("/api/v1/approvals/{id}", get_approval)
    app.router.add_post("/api/v1/approvals/{id}", decide_approval)
    app.router.add_post(RAMP_PATH, ramp_promote)
    app.router.add_post(CLEAR_HALT_PATH, clear_halt_request)
    app.router.add_post(LIVE_START_PATH, request_live_start)
    app.router.add_get(LIVE_START_PATH, get_live_start)
    add_operator_routes(app)
    app.router.add_get("/api/v1/openapi.json", openapi_document)
    setup_console(app)
    setup_readiness(app)
    setup_audit(app)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


async def freeze_startup_heap(_app: web.Application) -> None:
    """An on_startup hook of the reconciler's process (`serve`; appended after create_app, so after every cleanup_ctx
    has started). What is left after start (modules, the playbook, the database engine: ~90,000 objects) lives as
    long as the process: out of the garbage collector's sight (gc.freeze), a full collection pauses the event loop
    for ~10 ms instead of ~100 ms (seen under intake load on this 2-core machine: the acks waiting that long)."""
    gc.collect()
    gc.freeze()


def check_http_hosts(playbook: Playbook, allowed: list[str]) -> None:
    """Every `http` step's host is one the configuration allows: found at start, not when a page is due."""
    for rule in playbook.rules:
        for i, step in enumerate(rule.steps + rule.on_recovery):
            if step.action != HTTP_ACTION.kind:
                continue
            host, port = HTTP_ACTION.hosts(step.params)
            if not host_allowed(host, port, allowed):
                raise ConfigError(
                    "reconciler.http_allowed_hosts",
                    f"rule {rule.name} step {i + 1} sends requests to {host}:{port}, which is not listed "
                    f"({', '.join(allowed) or 'empty'})",
                )


def ledger_connect_args(url: str, lease_seconds: float) -> dict[str, Any]:
    """PostgreSQL ends a session of ours left in a transaction for half a lease: a replica cut off from the network
    between a write and its COMMIT leaves its session idle in that transaction, holding the rows it wrote (a run's
    episode and target), and the server, whose TCP keepalives wait hours, would keep them from any sweep, so a
    replica taking a lapsed lease over waited for them instead of acting (test_reconciler_partition.py). Half a
    lease (a second at least) frees them before the lease they would renew lapses. A URL's own `options` is kept."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or "options" in parsed.query:
        return {}
    return {"options": f"-c idle_in_transaction_session_timeout={max(1000, int(lease_seconds * 500))}"}


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    url = config.database_url()
    engine = make_engine(
        url,
        sqlite_synchronous=config.database.sqlite_synchronous,
        connect_args=ledger_connect_args(url, config.reconciler.lease_seconds),
    )
    try:
        # Never migrated, or behind the Alembic head (a table of a later migration missing: its requests, its audit
        # chain): refused at start in one line, as a bot and the paper venue refuse, never a 500 per request later.
        problem = await asyncio.to_thread(schema_problem, engine)
        if problem is not None:
            raise ConfigError("database.url", problem)
        app[keys.LEDGER] = Ledger(engine, retention=timedelta(days=config.reconciler.retention_days))
        yield
    finally:
        engine.dispose()


async def clients_ctx(app: web.Application) -> AsyncIterator[None]:
    """One session for every request the reconciler sends (bots, Prometheus, Alertmanager), with reconciler.tls."""
    tls = app.get(keys.CLIENT_TLS)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True)) as session:
        app[keys.SESSION] = session
        yield


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    config, metrics = app[keys.CONFIG], app[keys.METRICS]
    notifier = Notifier.from_text(resolve_secret(config, config.notifications, "urls", "notifications.urls"))
    engine = Engine(
        config,
        app[keys.LEDGER],
        app[keys.PLAYBOOK],
        metrics,
        app[keys.SESSION],
        app[keys.OWNER],
        app[keys.INSTANCE],
        notifier,
    )
    wd = config.reconciler.watchdog
    deadman = DeadMansSwitch(wd.window_seconds, wd.check_interval_seconds, notifier, metrics)

    def stored(result: StoreResult, items: list[NotificationIn]) -> None:
        for item in items:
            for alert in item.alerts:
                metrics.alerts_received.labels(alert.status).inc()
        metrics.alerts_deduplicated.inc(result.deduplicated)
        if result.deduplicated:
            engine.reopener.poke()  # a resend: its episode, if it recovered, is looked at the next dispatch
        for outcome, count in result.closed.items():
            metrics.episodes_total.labels(outcome).inc(count)
        if result.resolved_ids:
            engine.notify_resolved(result.resolved_ids)
        if result.new_episodes:
            engine.wake.set()

    writer = GroupCommitWriter(app[keys.LEDGER], config.reconciler.batch_max, stored)
    writer.start()
    app[keys.WRITER], app[keys.ENGINE], app[keys.DEADMAN] = writer, engine, deadman
    pruner = Pruner(app[keys.LEDGER], config.reconciler.retention_days, metrics)
    rc = config.reconciler
    outbox = Outbox(
        engine.outbox,
        AlertmanagerClient(app[keys.SESSION], rc.alertmanager_urls),
        notifier,
        metrics,
        app[keys.OWNER],
        rc.escalation,
        rc.lease_seconds,
        rc.poll_interval_seconds,
        wake=engine.escalations,
    )
    # Read in the background (a scrape never waits on the database), and once now: the first scrape has them.
    outbox_stats = BackgroundReading("escalation outbox", engine.outbox.stats)
    approval_stats = BackgroundReading("approvals", engine.approvals.stats)
    await asyncio.to_thread(outbox_stats.read)
    await asyncio.to_thread(approval_stats.read)
    outbox_metrics = OutboxCollector(outbox_stats)
    app[keys.REGISTRY].register(outbox_metrics)
    approval_metrics = ApprovalCollector(approval_stats)
    app[keys.REGISTRY].register(approval_metrics)
    app[keys.OUTBOX] = outbox
    probe = CommitProbe(app[keys.LEDGER], app[keys.OWNER], app[keys.REGISTRY])
    app[keys.COMMIT_PROBE] = probe
    tasks = [
        asyncio.create_task(probe.run_forever(), name="commit-probe"),
        asyncio.create_task(engine.run_forever(), name="engine"),
        asyncio.create_task(outbox.run_forever(), name="outbox"),
        asyncio.create_task(engine.page_ends.run_forever(), name="page-ends"),
        asyncio.create_task(deadman.run_forever(), name="deadman"),
        asyncio.create_task(pruner.run_forever(), name="retention"),
    ]
    if config.reconciler.check_silences:
        watcher = MaintenanceWatcher(
            AlertmanagerClient(app[keys.SESSION], config.reconciler.alertmanager_urls),
            metrics,
            CREATED_BY,
            config.reconciler.targets,
            app[keys.PLAYBOOK].alertnames(),
        )
        app[keys.MAINTENANCE] = watcher
        tasks.append(asyncio.create_task(watcher.run_forever(), name="maintenance"))
    app[keys.TASKS] = tasks
    log.info(
        "reconciler %s: playbook %s (%d rules), dry_run=%s",
        app[keys.OWNER],
        app[keys.PLAYBOOK].source,
        len(app[keys.PLAYBOOK].rules),
        config.reconciler.dry_run,
    )
    try:
        yield
    finally:
        await stop_tasks(tasks)
        await engine.stop()
        await outbox.stop()
        await engine.page_ends.stop()
        await writer.stop()
        app[keys.REGISTRY].unregister(outbox_metrics)
        app[keys.REGISTRY].unregister(approval_metrics)


async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    """Scheduled operations (trading_ops.reconciler.jobs.JOBS) run in this process, beside the engine: each slot by
    exactly one replica. Its task joins the workers /healthz watches."""
    config = app[keys.CONFIG]
    if not config.scheduler.enabled:
        yield
        return
    # The recorded windows, read from the database on every replica (not only the one whose housekeeping ran):
    # exported from the start, and right wherever Prometheus scrapes.
    windows = register_maintenance_metrics(app[keys.REGISTRY], app[keys.LEDGER].engine)
    await asyncio.to_thread(windows.read)
    # The ledger is the reconciler's: upkeep's retention task prunes it with the reconciler's own pruner.
    jobs = configured_jobs(config, upkeep_retention=(ledger_retention(config),))
    scheduler = Scheduler(config, app[keys.LEDGER].engine, jobs, app[keys.REGISTRY], app[keys.OWNER])
    app[keys.SCHEDULER] = scheduler
    task = asyncio.create_task(scheduler.run_forever(), name="scheduler")
    app[keys.TASKS].append(task)
    try:
        yield
    finally:
        await stop_tasks([task])


async def control_audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """Commands sent straight to a bot, from its journal into the audit chain (trading_ops.reconciler.control_audit):
    every replica asks, each command is appended once. Its task joins the workers /healthz watches."""
    config = app[keys.CONFIG]
    audit = app[keys.CONTROL_AUDIT] = ControlAudit(config, app[keys.LEDGER], app[keys.SESSION])
    if config.reconciler.control_audit_interval_seconds <= 0 or not config.reconciler.targets:
        yield
        return
    task = asyncio.create_task(audit.run_forever(), name="control-audit")
    app[keys.TASKS].append(task)
    try:
        yield
    finally:
        await stop_tasks([task])


async def webhook(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[keys.METRICS]
    metrics.notifications_received.inc()
    try:
        check_token(request.headers.get("Authorization"), app[keys.TOKEN])
        limit = app[keys.CONFIG].reconciler.max_body_bytes
        try:
            body = await read_body(request, limit)
        except InputError as exc:
            raise Rejected(exc.status, "too_large" if exc.status == 413 else "invalid_json", exc.message) from exc
        text = decode_body(body)
        validated = validate(parse_body(text))
        wd = app[keys.CONFIG].reconciler.watchdog.alertname
        if any(a["labels"]["alertname"] == wd and a["status"] == "firing" for a in validated.alerts):
            app[keys.DEADMAN].seen()
        item = plan_notification(validated, text, app[keys.PLAYBOOK], wd)
    except Rejected as exc:
        metrics.notifications_rejected.labels(exc.reason).inc()
        log.warning("webhook from %s rejected (%d %s): %s", request.remote, exc.status, exc.reason, exc)
        return web.json_response({"status": "rejected", "error": str(exc)}, status=exc.status)
    try:
        await app[keys.WRITER].submit(item)
    except Exception as exc:
        log.error("webhook from %s not stored: %s", request.remote, exc)
        return web.json_response({"status": "error", "error": "not stored; retry"}, status=503)
    answer: dict[str, Any] = {"status": "stored", "alerts": len(validated.alerts)}
    if validated.truncated:
        metrics.alerts_truncated.inc(validated.truncated)
        log.warning(
            "webhook from %s: Alertmanager left %d alert(s) out of the notification (its max_alerts): raise it, with "
            "reconciler.max_body_bytes",
            request.remote,
            validated.truncated,
        )
    if validated.invalid:
        # Stored with the notification's payload (nothing is lost), acted on never; Alertmanager gets its 2xx, so
        # its resends do not loop on an alert no resend can mend.
        metrics.alerts_invalid.inc(len(validated.invalid))
        for problem in validated.invalid:
            log.warning("webhook from %s: alert refused on its own (the others stored): %s", request.remote, problem)
        answer["invalid"] = validated.invalid
    return web.json_response(answer)


async def list_episodes(request: web.Request) -> web.Response:
    if isinstance(caller := authorized(request, READ, "listing episodes"), web.Response):
        return caller
    limit = parse_limit(request.query.get("limit"), DEFAULT_LIST, MAX_LIST)
    state = request.query.get("state") or None
    if state is not None and state not in KNOWN_STATES:
        return web.json_response({"error": f"state: expected one of {', '.join(KNOWN_STATES)}"}, status=400)
    rows = await asyncio.to_thread(request.app[keys.LEDGER].list_episodes, limit, state)
    return web.json_response({"episodes": [episode_json(e) for e in rows]})


def _episode_id(request: web.Request) -> int:
    """The `{id}` of the path (a 400 or 404 InputError when it names no episode)."""
    return parse_id(request.match_info["id"], "episode")


async def get_episode(request: web.Request) -> web.Response:
    if isinstance(caller := authorized(request, READ, "reading an episode"), web.Response):
        return caller
    episode_id = _episode_id(request)
    row = await asyncio.to_thread(request.app[keys.LEDGER].get_episode_full, episode_id)
    if row is None:
        return web.json_response({"error": f"no episode {episode_id}"}, status=404)
    return web.json_response(episode_json(row))


async def retry_episode(request: web.Request) -> web.Response:
    """`reconciler retry ID` over the API (the `operate` scope): one more run of an escalated or failed episode whose
    alert still fires, recorded in its history as asked by the token's name from its address."""
    if isinstance(token := authorized(request, OPERATE, "retrying an episode"), web.Response):
        return token
    episode_id = _episode_id(request)
    body = await read_json(request, request.app[keys.CONFIG].reconciler.max_body_bytes, empty={})
    comment = body.get("comment", "") if isinstance(body, dict) else None
    if not isinstance(comment, str) or len(comment) > RETRY_COMMENT_MAX or not comment.isprintable():
        return web.json_response(
            {"error": f"comment: expected printable text of {RETRY_COMMENT_MAX} characters at most"}, status=400
        )
    who = f"token '{token.name}' from {request.remote or '-'}"
    comment = " ".join(comment.split())
    owner = (f"{who} ({comment})" if comment else who)[:OWNER_MAX]
    ledger = request.app[keys.LEDGER]
    why_not = await asyncio.to_thread(ledger.retry, episode_id, owner)
    if why_not is not None:
        return web.json_response({"error": why_not}, status=404 if why_not.startswith("no episode") else 409)
    log.warning("episode %d re-queued by %s", episode_id, owner)
    request.app[keys.ENGINE].wake.set()
    paused = (await asyncio.to_thread(ledger.snapshot, utcnow())).paused
    return web.json_response(
        {"episode": episode_id, "retry": "queued: one more run if its alert still fires", "paused": paused}
    )


async def ack_episode(request: web.Request) -> web.Response:
    """`reconciler ack ID` over the API (the `operate` scope): the token's name, from its address, takes the episode,
    in its history with the note; a comment (`--by`) only beside the name. It changes nothing the engine does."""
    if isinstance(token := authorized(request, OPERATE, "acknowledging an episode"), web.Response):
        return token
    episode_id = _episode_id(request)
    body = await read_json(request, request.app[keys.CONFIG].reconciler.max_body_bytes, empty={})
    body = body if isinstance(body, dict) else {}
    comment, note = body.get("comment", ""), body.get("note", "")
    for name, value, most in (("comment", comment, RETRY_COMMENT_MAX), ("note", note, ACK_NOTE_MAX)):
        if not isinstance(value, str) or len(value) > most or not value.isprintable():
            return web.json_response(
                {"error": f"{name}: expected printable text of {most} characters at most"}, status=400
            )
    who = f"token '{token.name}' from {request.remote or '-'}"
    comment = " ".join(comment.split())
    owner = (f"{who} ({comment})" if comment else who)[:OWNER_MAX]
    found = await asyncio.to_thread(request.app[keys.LEDGER].acknowledge, episode_id, owner, " ".join(note.split()))
    if not found:
        return web.json_response({"error": f"no episode {episode_id}"}, status=404)
    log.warning("episode %d acknowledged by %s", episode_id, owner)
    return web.json_response({"episode": episode_id, "acknowledged_by": token.name, "recorded_as": owner})


async def reset_circuit(request: web.Request) -> web.Response:
    """`reconciler circuits reset TARGET` over the API (the `operate` scope), audited as the token's name."""
    if isinstance(token := authorized(request, OPERATE, "resetting a circuit"), web.Response):
        return token
    target = request.match_info["target"]
    if len(target) > MAX_TARGET_CHARS or not target.isprintable():
        return web.json_response({"error": "target: not a target name"}, status=400)
    who = f"token '{token.name}' from {request.remote or '-'}"
    until = await asyncio.to_thread(request.app[keys.LEDGER].reset_circuit, target, who, utcnow())
    if until is None:
        return web.json_response({"error": f"no open circuit for {target!r}"}, status=404)
    log.warning("circuit of %s closed by %s (was open until %s)", target, who, until.isoformat())
    return web.json_response({"target": target, "was_open_until": until.isoformat()})


async def openapi_document(request: web.Request) -> web.Response:
    """The API's OpenAPI 3.1 description (trading_ops.reconciler.api_spec), made once per process."""
    return web.Response(body=document_bytes(), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    # In a thread: a scrape of every family takes milliseconds the event loop need not wait for. Nothing of it reads
    # the ledger (trading_ops.reconciler.ledger_reading), so a database that does not answer never holds it.
    body = await asyncio.to_thread(generate_latest, request.app[keys.REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    tasks = request.app[keys.TASKS]
    alive = request.app[keys.WRITER].alive and all(not t.done() for t in tasks)
    return web.json_response({"status": "ok" if alive else "workers stopped"}, status=200 if alive else 503)


async def readyz(request: web.Request) -> web.Response:
    ledger = request.app[keys.LEDGER]

    def ping() -> bool:
        """Whether the ledger takes writes: a PostgreSQL standby (a URL naming it without
        target_session_attrs=read-write, or one never promoted) answers reads and refuses every write."""
        with ledger.engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                conn.execute(text("SELECT 1"))
                return True
            return conn.execute(text("SELECT current_setting('transaction_read_only')")).scalar() != "on"

    try:
        writable = await asyncio.to_thread(ping)
    except Exception as exc:
        return web.json_response({"status": f"database unavailable: {type(exc).__name__}"}, status=503)
    if not writable:
        return web.json_response({"status": "database read-only (a standby): nothing can be stored"}, status=503)
    probe = request.app.get(keys.COMMIT_PROBE)
    held = probe.held() if probe is not None else None
    if held is not None:
        # A read answers, a commit does not land: PostgreSQL waits for a synchronous standby that is gone.
        return web.json_response(
            {
                "status": f"database holds commits: the probe commit has waited {held:.0f} s (a synchronous standby "
                "lost?): nothing can be stored"
            },
            status=503,
        )
    engine = request.app.get(keys.ENGINE)
    if engine is not None and (left := engine.holder.settling_left()) > 0:
        # Stored, not acted on: back after being away (a failover may have lost the last commits), this replica
        # claims nothing until every replica had a poll to check its own writes survived (RunHolder.settling).
        return web.json_response(
            {
                "status": f"ledger back after being away: no episode is claimed for {left:.1f} s more, until every "
                "replica has checked that its writes survived"
            },
            status=503,
        )
    return web.json_response({"status": "ready"})


# ---- approvals: GET /api/v1/approvals[/{id}] (read token), POST /api/v1/approvals/{id} (a decision) ------------------


def _approval_id(request: web.Request) -> int:
    return parse_id(request.match_info["id"], "approval")


async def list_approvals(request: web.Request) -> web.Response:
    if isinstance(refused := authorized(request, READ, "reading approvals"), web.Response):
        return refused
    limit = parse_limit(request.query.get("limit"), DEFAULT_LIST, MAX_LIST)
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        return web.json_response({"error": f"status: expected one of {', '.join(STATUSES)}"}, status=400)
    rows = await asyncio.to_thread(request.app[keys.ENGINE].approvals.recent, status, limit)
    return web.json_response({"approvals": [approval_json(r) for r in rows]})


async def get_approval(request: web.Request) -> web.Response:
    if isinstance(refused := authorized(request, READ, "reading approvals"), web.Response):
        return refused
    approval_id = _approval_id(request)
    row = await asyncio.to_thread(request.app[keys.ENGINE].approvals.get, approval_id)
    if row is None:
        return web.json_response({"error": f"no approval {approval_id}"}, status=404)
    return web.json_response(approval_json(row))


def authorize_decision(request: web.Request) -> str | web.Response:
    """Who may decide an approval: the one check every decision through the API passes (the CLI writes the ledger
    under the database's own access). Returns the deciding token's name, or the refusal.

    A token of reconciler.api_tokens with the `approve` scope (which no other scope includes: whoever may flatten may
    not approve a flatten). Never the webhook token (reconciler.token): that is the reconciler's own side of the
    pipeline (what Alertmanager posts with), and the requester never approves its own request."""
    header = request.headers.get("Authorization")
    if bearer_matches(header, request.app[keys.TOKEN]):
        log.warning("approval decision from %s refused: the webhook token is the requester's own", request.remote)
        return web.json_response(
            {"error": "the reconciler's own (webhook) token cannot decide an approval: the requester never approves"},
            status=403,
        )
    token = authorized(request, APPROVE, "deciding an approval")
    return token if isinstance(token, web.Response) else token.name


async def _decision_body(request: web.Request) -> tuple[str, str, str] | web.Response:
    """A decision's body, checked: the decision, its reason and who decided (as given), or the 400 that says what is
    wrong with it."""
    body = await read_json_object(request, request.app[keys.CONFIG].reconciler.max_body_bytes)
    if body.get("decision") not in DECISIONS:
        return web.json_response({"error": "decision: expected approve or reject"}, status=400)
    reason, by = body.get("reason", ""), body.get("by", "")
    if not isinstance(reason, str) or not isinstance(by, str) or len(reason) > REASON_MAX:
        return web.json_response({"error": f"reason and by: expected text (reason {REASON_MAX} at most)"}, status=400)
    return body["decision"], reason, by


async def decide_approval(request: web.Request) -> web.Response:
    """POST /api/v1/approvals/{id} {"decision": "approve"|"reject", "reason": "...", "by": "comment"}: decided by the
    token's principal (its name); `by` is only a comment beside it. Four eyes: ApprovalStore.decide."""
    credential = authorize_decision(request)
    if isinstance(credential, web.Response):
        return credential
    approval_id = _approval_id(request)
    body = await _decision_body(request)
    if isinstance(body, web.Response):
        return body
    decision, reason, by = body
    comment = " ".join(by.split())[: DECIDER_MAX - 80]
    app = request.app
    engine = app[keys.ENGINE]
    result = await asyncio.to_thread(
        functools.partial(
            engine.approvals.decide,
            approval_id,
            decision,
            credential,
            " ".join(reason.split()),
            app[keys.PLAYBOOK].version,
            utcnow(),
            source=request.remote or "-",
            comment=comment,
        )
    )
    if isinstance(result, Refusal):
        log.warning(
            "approval %s: %s by %s refused (%s): %s", approval_id, decision, credential, request.remote, result.message
        )
        return web.json_response({"error": result.message}, status=result.status)
    engine.wake.set()
    log.info(
        "approval %s %s by %s: %s", approval_id, result["status"], attribution(comment, credential), result["reason"]
    )
    return web.json_response(approval_json(result))
