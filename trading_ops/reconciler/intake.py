"""Webhook intake: authenticate, bound, parse and validate Alertmanager payloads; group-commit them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from trading_ops.bearer import bearer_matches
from trading_ops.db.base import psycopg_answered, psycopg_connect_params, utcnow
from trading_ops.http_input import InputError, parse_json
from trading_ops.reconciler.ledger import (
    NOTIFICATION_INSERT,
    AlertIn,
    Ledger,
    NotificationIn,
    StoreResult,
    notification_rows,
)
from trading_ops.reconciler.playbook import Playbook
from trading_ops.schema import SchemaError, convert
from trading_ops.tasks import stop_tasks

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

SUPPORTED_VERSION = "4"
STATUSES = ("firing", "resolved")
MAX_ALERTS = 10_000
MAX_TRUNCATED = 2**63 - 1
MAX_LABELS = 100
MAX_LABEL_NAME = 256
MAX_VALUE = 16_384
FINGERPRINT_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")
# JSON's \uXXXX escapes can produce NUL and lone UTF-16 surrogates: not text a database stores.
BAD_TEXT_RE = re.compile("[\x00\ud800-\udfff]")
# A startsAt later than this past our clock is not a real alert's (a clock that far off breaks more than us): its
# wait (wait_for) would end years from now, or overflow the calendar (9999-12-31T23:59:59.999Z plus a wait).
MAX_FUTURE_SKEW = timedelta(hours=1)
# The fast path's bound on one batch (connect included), and its rest after a failure.
FAST_PATH_TIMEOUT_SECONDS = 10.0
FAST_PATH_REST_SECONDS = 30.0
TIMESTAMP_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$")


class Rejected(Exception):
    """A webhook request refused with an HTTP status, a metric reason and one line for the log."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def check_token(header: str | None, token: str) -> None:
    """Bearer authentication compared in constant time (any header bytes: a 401, never a 500)."""
    if not bearer_matches(header, token):
        raise Rejected(401, "unauthorized", "missing or wrong bearer token")


def decode_body(body: bytes) -> str:
    """The body as text: Alertmanager sends UTF-8 (json.loads would also take UTF-16 and -32; we do not)."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(400, "invalid_json", f"body must be UTF-8 JSON ({exc.reason} at byte {exc.start})") from exc


def parse_body(body: bytes | str) -> Any:
    text = decode_body(body) if isinstance(body, bytes) else body
    try:
        # Depth: Python's own bound (a 400 past it); the schema reads only alerts of a fixed shape, and a walk of
        # every node would double the cost of a large notification.
        return parse_json(text, max_depth=None)
    except InputError as exc:
        raise Rejected(exc.status, "invalid_json", exc.message) from exc


def _printable(name: str) -> str:
    """A (label) name for an error message: shortened, with anything unprintable escaped."""
    return name[:60].encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(value: str, where: str) -> None:
    bad = BAD_TEXT_RE.search(value)
    if bad is None:
        return
    if bad.group() == "\x00":
        raise Rejected(422, "invalid_payload", f"{where}: contains a NUL character")
    raise Rejected(422, "invalid_payload", f"{where}: contains a lone UTF-16 surrogate (not valid Unicode)")


def parse_timestamp(value: Any, where: str) -> datetime:
    """RFC 3339 as Alertmanager writes it (nanoseconds included) -> an aware UTC datetime."""
    if not isinstance(value, str):
        raise Rejected(422, "invalid_payload", f"{where}: expected an RFC 3339 timestamp string")
    try:
        return _rfc3339(value)
    except ValueError as exc:
        raise Rejected(422, "invalid_payload", f"{where}: {exc}") from exc


# Timestamps already read: a resend carries its alert's startsAt again. Only valid ones are kept (a failure is not
# cached), and those are at most 36 characters.
@functools.lru_cache(maxsize=4096)
def _rfc3339(value: str) -> datetime:
    m = TIMESTAMP_RE.match(value)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {value[:40]!r}")
    frac = (m.group(3) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(4) in ("Z", "z") else m.group(4)
    try:
        return datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}.{frac}{zone}").astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(str(exc)) from exc


# ---- the payload's schema (Alertmanager's webhook, version 4), checked by msgspec ---------------------------------
# Label names and values, and annotations: bounded, so a sender cannot make one alert cost megabytes.
LabelMap = Annotated[
    dict[
        Annotated[str, msgspec.Meta(max_length=MAX_LABEL_NAME, description=f"a string (at most {MAX_LABEL_NAME})")],
        Annotated[str, msgspec.Meta(max_length=MAX_VALUE, description=f"a string (at most {MAX_VALUE})")],
    ],
    msgspec.Meta(max_length=MAX_LABELS),
]
Status = Annotated[Literal["firing", "resolved"], msgspec.Meta(description="firing or resolved")]


class WebhookPayload(msgspec.Struct, kw_only=True):
    """A notification as Alertmanager posts it (its other keys, commonLabels and the like, are not read)."""

    status: Status
    alerts: Annotated[list[Any], msgspec.Meta(max_length=MAX_ALERTS, description="list of alert objects")]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: Any = 0


class AlertPayload(msgspec.Struct, kw_only=True):
    """One alert of a notification; each is checked on its own."""

    status: Status
    labels: LabelMap
    fingerprint: Annotated[str, msgspec.Meta(pattern=FINGERPRINT_RE.pattern, description="1-64 letters or digits")]
    startsAt: Annotated[str, msgspec.Meta(description="an RFC 3339 timestamp string")]
    annotations: LabelMap | None = None
    generatorURL: str = ""
    # When a resolved alert ended (Prometheus's evaluation that found its condition gone); a firing one's is a zero
    # time or a moment ahead. Only a hint: one that cannot be read is not used, and the alert is kept.
    endsAt: Annotated[str, msgspec.Meta(description="an RFC 3339 timestamp string")] = ""


def _payload(data: Any, tp: Any, at: str) -> Any:
    """`data` as the structure `tp`, or Rejected(422) naming its first wrong key under `at`."""
    try:
        return convert(data, tp, expected_from_description=True)
    except SchemaError as exc:
        where = f"{at}.{exc.key}" if at and exc.key else at or exc.key
        shown = where.encode("utf-8", "backslashreplace").decode("utf-8")
        raise Rejected(422, "invalid_payload", f"{shown}: {exc.problem}") from None


def _text_map(value: dict[str, str], where: str) -> dict[str, str]:
    """Labels or annotations as text a database stores: no NUL, no lone surrogate."""
    search = BAD_TEXT_RE.search
    for k, v in value.items():
        # Messages are built only for what is rejected: this runs for every label of every notification.
        if search(k) or search(v):
            _check_text(k, f"{where}.{_printable(k)} (the name)")
            _check_text(v, f"{where}.{_printable(k)}")
    return value


@dataclass
class Validated:
    receiver: str
    status: str
    group_key: str
    alerts: list[dict[str, Any]]
    # One line per alert refused on its own (the others are stored).
    invalid: list[str] = field(default_factory=list)
    # Alerts Alertmanager left out of the notification (its receiver's max_alerts).
    truncated: int = 0


def validate(data: Any) -> Validated:
    """Check the webhook payload (version 4); Rejected(422) names the first wrong field. An alert that is wrong on
    its own is left out and listed in `invalid`; only when no alert is left is the whole payload refused."""
    if not isinstance(data, dict):
        raise Rejected(422, "invalid_payload", "payload: expected a JSON object")
    if "version" not in data:
        raise Rejected(422, "unsupported_version", f'version: required (expected the string "{SUPPORTED_VERSION}")')
    version = data["version"]
    if version != SUPPORTED_VERSION:
        shown = _printable(json.dumps(version)[:20])
        raise Rejected(
            422, "unsupported_version", f'version: unsupported {shown} (expected the string "{SUPPORTED_VERSION}")'
        )
    payload: WebhookPayload = _payload(data, WebhookPayload, "")
    _check_text(payload.receiver, "receiver")
    _check_text(payload.groupKey, "groupKey")
    alerts: list[dict[str, Any]] = []
    invalid: list[str] = []
    latest = datetime.now(UTC) + MAX_FUTURE_SKEW
    for i, a in enumerate(payload.alerts):
        # An alert that cannot be handled is refused on its own: the others of its notification are stored (a 422
        # for all of them would lose them, as Alertmanager does not resend after a 4xx).
        try:
            alerts.append(_alert(a, f"alerts[{i}]", latest))
        except Rejected as exc:
            invalid.append(str(exc))
    if invalid and not alerts:
        more = f" (and {len(invalid) - 1} more invalid alerts)" if len(invalid) > 1 else ""
        raise Rejected(422, "invalid_payload", invalid[0] + more)
    truncated = payload.truncatedAlerts
    # A count Alertmanager could send (an int64); anything else is no count (the notification is stored all the same).
    truncated = truncated if type(truncated) is int and 0 < truncated <= MAX_TRUNCATED else 0
    return Validated(payload.receiver, payload.status, payload.groupKey, alerts, invalid, truncated)


def _ended_at(alert: AlertPayload, starts_at: datetime) -> datetime | None:
    """A resolved alert's end as its endsAt says, or None when that cannot be read or is no end of this alert (before
    its start, or ahead of now: the ledger then takes the moment it heard of the end)."""
    try:
        ended = _rfc3339(alert.endsAt) if alert.endsAt else None
    except ValueError:
        return None
    return ended if ended is not None and starts_at <= ended <= datetime.now(UTC) else None


def _alert(a: Any, at: str, latest: datetime) -> dict[str, Any]:
    """One alert of the payload, checked; Rejected(422) names its first wrong field."""
    where = f"{at}."
    alert: AlertPayload = _payload(a, AlertPayload, at)
    labels = _text_map(alert.labels, f"{where}labels")
    if not labels.get("alertname"):
        raise Rejected(422, "invalid_payload", f"{where}labels.alertname: required")
    starts_at = parse_timestamp(alert.startsAt, f"{where}startsAt")
    if starts_at > latest:
        shown = _printable(alert.startsAt)
        raise Rejected(422, "invalid_payload", f"{where}startsAt: {shown} is in the future (not a real alert's start)")
    _check_text(alert.generatorURL, f"{where}generatorURL")
    return {
        "status": alert.status,
        "labels": labels,
        "annotations": _text_map(alert.annotations or {}, f"{where}annotations"),
        "starts_at": starts_at,
        "ended_at": _ended_at(alert, starts_at) if alert.status == "resolved" else None,
        "generator_url": alert.generatorURL,
        "fingerprint": alert.fingerprint,
    }


def plan_notification(v: Validated, payload: str, playbook: Playbook, watchdog: str) -> NotificationIn:
    """The notification with each alert's own status and the playbook rule chosen for it."""
    alerts = []
    for a in v.alerts:
        labels = a["labels"]
        if labels["alertname"] == watchdog:
            continue  # the dead man's switch consumes it; it is never an episode
        rule = playbook.match(labels)
        alerts.append(
            AlertIn(
                status=a["status"],
                fingerprint=a["fingerprint"],
                starts_at=a["starts_at"],
                ended_at=a["ended_at"],
                alertname=labels["alertname"],
                labels=labels,
                annotations=a["annotations"],
                generator_url=a["generator_url"],
                rule=rule.name if rule else None,
                target=rule.target(labels) if rule else labels.get("instance") or labels["alertname"],
                wait_for=rule.wait_for if rule else 0.0,
            )
        )
    return NotificationIn(v.receiver, v.status, v.group_key, payload, alerts)


class GroupCommitWriter:
    """One writer that stores whatever requests are waiting in one transaction, then acks them all.

    Each request waits on its future, which completes only after the commit: no 200 before durable. The writer's
    thread keeps one database connection for its transactions (no checkout and liveness ping per batch); after an
    error it is dropped, and the next transaction opens a fresh one.

    On PostgreSQL, a batch of resends only (Ledger.only_known_resends: most of what Alertmanager sends, every
    repeat_interval and from each member of an HA pair) needs nothing but its notifications' rows: those are written
    on the event loop, over a psycopg asyncio connection of the writer's, in one round trip (a pipeline: BEGIN, the
    INSERTs, COMMIT), with no hand-over to the thread and back. A failure there sends the batch the general way (and
    rests the fast path a while); a commit whose answer was lost may so add its rows twice, as Alertmanager's own
    retry would."""

    def __init__(self, ledger: Ledger, batch_max: int, on_stored: Callable[[StoreResult, list[NotificationIn]], None]):
        self.ledger = ledger
        self.batch_max = batch_max
        self.on_stored = on_stored
        self.queue: asyncio.Queue[tuple[NotificationIn, asyncio.Future[None]]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self.task: asyncio.Task[None] | None = None
        self._conn: Connection | None = None  # used in the executor's thread only
        self._aconn: psycopg.AsyncConnection[Any] | None = None  # the fast path's, on the event loop
        self._fast_after = 0.0  # loop time before which the fast path rests after a failure

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="ledger-writer")

    async def stop(self) -> None:
        await stop_tasks([self.task])
        while not self.queue.empty():
            _, fut = self.queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("reconciler shutting down"))
        self.executor.submit(self._drop_connection, invalidate=False)
        self.executor.shutdown(wait=True)
        await self._close_fast()

    def _store(self, items: list[NotificationIn]) -> StoreResult:
        """In the writer's thread: one transaction on the writer's connection; once more on a new one when the
        database had ended it (a restart: the first statement finds out). Were the transaction committed before the
        connection went, the retry adds the notifications' rows again (episodes are unique): as Alertmanager's own
        retry after a 5xx would."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self.ledger.engine.connect()
            try:
                return self.ledger.store(items, self._conn)
            except DBAPIError as exc:
                self._drop_connection(invalidate=True)
                if not exc.connection_invalidated or attempt == 2:
                    raise
                log.warning("the database ended the writer's connection; storing again on a new one: %s", exc.orig)
            except Exception:
                self._drop_connection(invalidate=True)  # in an unknown state: never reused
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop_connection(self, invalidate: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if invalidate:
                conn.invalidate()
            conn.close()
        except Exception:
            log.exception("closing the writer's database connection failed")

    async def _append_fast(self, items: list[NotificationIn]) -> bool:
        """The fast path (see the class): True once the batch's rows are committed, False when it was not taken or
        failed (the batch then goes the general way)."""
        loop = asyncio.get_running_loop()
        if self.ledger.dialect != "postgresql" or loop.time() < self._fast_after:
            return False
        if not self.ledger.only_known_resends(items):
            return False
        try:
            async with asyncio.timeout(FAST_PATH_TIMEOUT_SECONDS):
                if self._aconn is None:
                    self._aconn = await self._connect_fast()
                rows = notification_rows(items, utcnow())
                async with self._aconn.pipeline():
                    async with self._aconn.cursor() as cursor:
                        await cursor.executemany(NOTIFICATION_INSERT, rows)
                    await self._aconn.commit()
        except Exception as exc:
            log.warning(
                "appending %d notification(s) on the event loop failed (through the writer's thread instead, and "
                "for %gs): %s",
                len(items),
                FAST_PATH_REST_SECONDS,
                exc or type(exc).__name__,
            )
            self._fast_after = loop.time() + FAST_PATH_REST_SECONDS
            await self._close_fast()
            return False
        return True

    async def _connect_fast(self) -> psycopg.AsyncConnection[Any]:
        import psycopg  # the postgres extra, as the engine's own driver

        # As the engine's pool opens its own: keepalives, tcp_user_timeout, connect_timeout, the answering host first.
        args, kwargs = psycopg_connect_params(self.ledger.engine)
        conn = await psycopg.AsyncConnection.connect(*args, **kwargs)
        psycopg_answered(self.ledger.engine, conn)
        return conn

    async def _close_fast(self) -> None:
        conn, self._aconn = self._aconn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def submit(self, item: NotificationIn) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, fut))
        await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.batch_max and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            items = [item for item, _ in batch]
            if await self._append_fast(items):
                self._done(StoreResult(deduplicated=sum(len(n.alerts) for n in items)), items, [f for _, f in batch])
                continue
            try:
                result = await loop.run_in_executor(self.executor, self._store, items)
            except Exception:
                if len(batch) == 1:
                    log.exception("storing a notification failed")
                    _fail(batch[0][1])
                    continue
                # One bad notification must not fail the others: store them one by one.
                for item, fut in batch:
                    try:
                        single = await loop.run_in_executor(self.executor, self._store, [item])
                    except Exception:
                        log.exception("storing a notification failed")
                        _fail(fut)
                    else:
                        self._done(single, [item], [fut])
                continue
            self._done(result, items, [fut for _, fut in batch])

    def _done(self, result: StoreResult, items: list[NotificationIn], futures: list[asyncio.Future[None]]) -> None:
        try:
            self.on_stored(result, items)
        except Exception:  # metrics and wake-ups must never undo an ack
            log.exception("after-store hook failed")
        for fut in futures:
            if not fut.done():
                fut.set_result(None)


def _fail(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(RuntimeError("the ledger could not store the notification"))
