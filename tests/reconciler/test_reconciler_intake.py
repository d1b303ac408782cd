"""Webhook intake over HTTP: auth, limits, validation, ack-after-durable-store, dedup and episode semantics."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from engine_runs import engine_settled
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_http import NON_ASCII_AUTH, raw_request
from reconciler_server import AUTH, ThreadedServer, make_config, write_playbook
from sqlalchemy import func, select, text
from webhook_payloads import STARTS_AT, alert, payload

from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.db.models import Episode, Notification
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.intake import Rejected, parse_timestamp

# Rules that wait ten years (startsAt is in the past): these tests look at intake only, no step runs.
IDLE_RULES = [
    {
        "name": "idle",
        "match": ['alertname=~".+"'],
        "wait_for": "3650d",
        "steps": [{"action": "bot", "command": "reconnect"}],
    }
]


def counts(db_url: str) -> tuple[int, list[tuple[str, str, str]]]:
    """What a fresh connection (another process, say) sees: notifications and (fingerprint, startsAt, state)."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            n = conn.execute(select(func.count()).select_from(Notification)).scalar_one()
            eps = conn.execute(select(Episode.fingerprint, Episode.starts_at, Episode.state).order_by(Episode.id))
            return n, [(f, s.isoformat(), st) for f, s, st in eps]
    finally:
        engine.dispose()


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str) -> Any:
    config = make_config(
        tmp_path, migrated_sqlite, playbook=str(write_playbook(tmp_path, IDLE_RULES)), max_body_bytes=4096
    )
    return await aiohttp_client(create_app(config))


async def test_ack_only_after_the_notification_is_durably_stored(client: Any, migrated_sqlite: str) -> None:
    resp = await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    assert resp.status == 200
    # The 200 came after the commit: a separate connection sees it at once.
    n, episodes = counts(migrated_sqlite)
    assert n == 1 and episodes == [("f1", STARTS_AT.isoformat(), "waiting")]


async def test_a_failing_ledger_gives_503_and_no_ack(client: Any, migrated_sqlite: str, monkeypatch) -> None:
    ledger = client.app[keys.LEDGER]

    def broken(batch: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(ledger, "store", broken)
    resp = await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    assert resp.status == 503  # Alertmanager retries; nothing was acknowledged
    monkeypatch.undo()
    resp = await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    assert resp.status == 200  # and the server is still up
    assert counts(migrated_sqlite)[0] == 1


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Bearer webhook-token-and-more", "Basic d2ViaG9vaw==", "Bearer "]
)
async def test_missing_or_wrong_token_is_401(client: Any, migrated_sqlite: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    resp = await client.post("/api/v1/alertmanager", json=payload(alert()), headers=headers)
    assert resp.status == 401
    assert counts(migrated_sqlite)[0] == 0


async def test_body_over_the_limit_is_413(client: Any, migrated_sqlite: str) -> None:
    big = payload(alert(description="x" * 5000))
    resp = await client.post("/api/v1/alertmanager", data=json.dumps(big), headers=AUTH)
    assert resp.status == 413

    async def chunks() -> Any:  # no Content-Length: the limit still holds while reading
        for _ in range(10):
            yield b"x" * 1000

    resp = await client.post("/api/v1/alertmanager", data=chunks(), headers=AUTH)
    assert resp.status == 413
    assert counts(migrated_sqlite)[0] == 0
    # Alertmanager does not resend after a 4xx: each refusal is counted, under its reason, for the alert on it.
    metrics = await (await client.get("/metrics")).text()
    assert 'tradingops_notifications_rejected_total{reason="too_large"} 2.0' in metrics
    assert 'tradingops_notifications_rejected_total{reason="invalid_json"} 0.0' in metrics


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not JSON"),
        (b"\xff\xfe", 400, "body must be UTF-8 JSON"),
        # json.loads alone takes UTF-16 and UTF-32; that used to pass validation and fail later with a 500.
        (json.dumps(payload(alert())).encode("utf-16"), 400, "body must be UTF-8 JSON"),
        (json.dumps(payload(alert())).encode("utf-32"), 400, "body must be UTF-8 JSON"),
        (b"[" * 2000 + b"]" * 2000, 400, "nested too deeply"),
        (json.dumps([1, 2]).encode(), 422, "payload: expected a JSON object"),
        (
            json.dumps({**payload(alert()), "version": "3"}).encode(),
            422,
            'version: unsupported "3" (expected the string',
        ),
        (
            json.dumps({**payload(alert()), "version": 4}).encode(),
            422,
            'version: unsupported 4 (expected the string "4")',
        ),
        (json.dumps({k: v for k, v in payload(alert()).items() if k != "version"}).encode(), 422, "version: required"),
        (json.dumps({**payload(alert()), "alerts": "x"}).encode(), 422, "alerts: expected list"),
        (json.dumps(payload({**alert(), "startsAt": "yesterday"})).encode(), 422, "alerts[0].startsAt"),
        (json.dumps(payload({**alert(), "labels": {"instance": "x"}})).encode(), 422, "alerts[0].labels.alertname"),
        (json.dumps(payload({**alert(), "fingerprint": "../x"})).encode(), 422, "alerts[0].fingerprint"),
        (json.dumps(payload({**alert(), "labels": {"alertname": 5}})).encode(), 422, "alerts[0].labels.alertname"),
        (json.dumps(payload({**alert(), "status": "pending"})).encode(), 422, "alerts[0].status"),
        # Lone surrogates (JSON escapes of half a UTF-16 pair) are not text: a 422 naming the field, not a 503 that
        # Alertmanager would retry forever.
        (
            json.dumps(payload(alert(instance="bot-\ud800"))).encode(),
            422,
            "alerts[0].labels.instance: contains a lone UTF-16 surrogate",
        ),
        (
            json.dumps(payload({**alert(), "labels": {"alertname": "A", "k\udfff": "v"}})).encode(),
            422,
            "alerts[0].labels.k\\udfff (the name): contains a lone UTF-16 surrogate",
        ),
        (json.dumps({**payload(alert()), "receiver": "r\udc00"}).encode(), 422, "receiver: contains a lone UTF-16"),
        (
            json.dumps(payload({**alert(), "generatorURL": "http://p/\ud83d"})).encode(),
            422,
            "alerts[0].generatorURL: contains a lone UTF-16 surrogate",
        ),
    ],
)
async def test_bad_payloads_get_one_clear_error_and_are_not_stored(
    client: Any, migrated_sqlite: str, body: bytes, status: int, message: str
) -> None:
    resp = await client.post("/api/v1/alertmanager", data=body, headers=AUTH)
    assert resp.status == status
    assert message in (await resp.json())["error"]
    assert counts(migrated_sqlite)[0] == 0
    metrics = await (await client.get("/metrics")).text()
    reason = {400: "invalid_json"}.get(status, "unsupported_version" if "version:" in message else "invalid_payload")
    assert f'tradingops_notifications_rejected_total{{reason="{reason}"}} 1.0' in metrics


async def test_resends_are_stored_but_make_one_episode(client: Any, migrated_sqlite: str) -> None:
    for _ in range(3):  # repeat_interval resends, or a retry after a timeout
        assert (await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)).status == 200
    n, episodes = counts(migrated_sqlite)
    assert n == 3 and len(episodes) == 1
    metrics = await (await client.get("/metrics")).text()
    assert "tradingops_alerts_deduplicated_total 2.0" in metrics


async def test_each_alert_of_a_group_is_handled_on_its_own_status(client: Any, migrated_sqlite: str) -> None:
    await client.post("/api/v1/alertmanager", json=payload(alert(fingerprint="a")), headers=AUTH)
    # The group is "firing" as a whole, but alert a is resolved inside it.
    mixed = payload(alert(fingerprint="a", status="resolved"), alert(fingerprint="b"), status="firing")
    assert (await client.post("/api/v1/alertmanager", json=mixed, headers=AUTH)).status == 200
    states = {f: s for f, _, s in counts(migrated_sqlite)[1]}
    assert states == {"a": "resolved", "b": "waiting"}


async def test_resolved_closes_and_a_later_firing_starts_nothing(client: Any, migrated_sqlite: str) -> None:
    for status in ("firing", "resolved", "firing"):
        await client.post("/api/v1/alertmanager", json=payload(alert(status=status)), headers=AUTH)
    assert [s for _, _, s in counts(migrated_sqlite)[1]] == ["resolved"]


async def test_resolved_before_firing_also_starts_nothing(client: Any, migrated_sqlite: str) -> None:
    # Clustered Alertmanagers really send this order.
    await client.post("/api/v1/alertmanager", json=payload(alert(status="resolved")), headers=AUTH)
    await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)
    assert [s for _, _, s in counts(migrated_sqlite)[1]] == ["resolved"]


@pytest.mark.parametrize(
    ("ends_at", "kept"),
    [
        ("start+5s", True),  # the end as Prometheus found it
        ("garbage", False),  # a hint that cannot be read: when it was heard
        ("0001-01-01T00:00:00Z", False),  # a firing alert's zero end, or an end before the start
        ("9999-12-31T23:59:59Z", False),  # ahead of now: no end yet
    ],
)
async def test_a_resolved_episode_ends_when_its_alert_did_and_a_bad_end_is_only_not_used(
    client: Any, migrated_sqlite: str, ends_at: str, kept: bool
) -> None:
    """resolved_at is the resolved alert's endsAt (Gates.copy_of_a_firing tells a pair's late copy from a new firing
    by it); one that cannot be an end of this alert is not used, and the alert is stored all the same."""
    end = STARTS_AT + timedelta(seconds=5)
    resolved = alert(status="resolved")
    resolved["endsAt"] = end.isoformat().replace("+00:00", "Z") if ends_at == "start+5s" else ends_at
    for body in (payload(alert()), payload(resolved)):
        assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    engine = make_engine(migrated_sqlite)
    try:
        with engine.connect() as conn:
            (resolved_at, received_at) = conn.execute(select(Episode.resolved_at, Episode.received_at)).one()
    finally:
        engine.dispose()
    assert resolved_at == end if kept else resolved_at >= received_at, (resolved_at, received_at)


async def test_a_new_starts_at_is_a_new_episode(client: Any, migrated_sqlite: str) -> None:
    await client.post("/api/v1/alertmanager", json=payload(alert(status="resolved")), headers=AUTH)
    # Half a second later, written in another zone (+01:00) with one fractional digit.
    later = (STARTS_AT + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S") + ".5+01:00"
    await client.post("/api/v1/alertmanager", json=payload(alert(starts_at=later)), headers=AUTH)
    assert [(s, st) for _, s, st in counts(migrated_sqlite)[1]] == [
        (STARTS_AT.isoformat(), "resolved"),
        ((STARTS_AT + timedelta(seconds=0.5)).isoformat(), "waiting"),
    ]


async def test_unmatched_alerts_are_recorded_as_skipped_and_watchdog_makes_no_episode(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    rules = [
        {
            "name": "only-b",
            "match": ['alertname="B"'],
            "wait_for": "1h",
            "steps": [{"action": "bot", "command": "reconnect"}],
        }
    ]
    config = make_config(tmp_path, migrated_sqlite, playbook=str(write_playbook(tmp_path, rules)))
    client = await aiohttp_client(create_app(config))
    body = payload(alert("A", fingerprint="a"), alert("Watchdog", fingerprint="w"))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    assert [(f, s) for f, _, s in counts(migrated_sqlite)[1]] == [("a", "skipped")]


def test_timestamps_with_nanoseconds_and_offsets_parse() -> None:
    assert parse_timestamp("2026-01-01T00:00:00.123456789Z", "x").isoformat() == "2026-01-01T00:00:00.123456+00:00"
    assert parse_timestamp("2026-01-01T02:00:00+02:00", "x").isoformat() == "2026-01-01T00:00:00+00:00"
    with pytest.raises(Rejected, match="x: not an RFC 3339"):
        parse_timestamp("2026-01-01", "x")
    with pytest.raises(Rejected, match="x: "):
        parse_timestamp("2026-13-45T00:00:00Z", "x")


# ---- fuzzing: nothing malformed crashes the server or reaches the ledger --------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
ALERT_FIELDS = ["status", "labels", "annotations", "startsAt", "generatorURL", "fingerprint"]
TOP_FIELDS = ["version", "status", "receiver", "groupKey", "alerts"]


# Any Unicode, lone surrogates included (JSON can carry them as \\uXXXX escapes; st.text() leaves them out).
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=12)


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = payload(alert(fingerprint=draw(st.from_regex(r"[a-f0-9]{4}", fullmatch=True))))
    target = draw(st.sampled_from(["top", "alert", "labels", "surrogates", "bytes", "encoding", "raw"]))
    if target == "bytes":
        return draw(st.binary(max_size=200))
    if target == "raw":  # arbitrary text, encoded as UTF-8 where it can be
        return draw(ANY_TEXT).encode("utf-8", "surrogatepass")
    if target == "encoding":  # a valid payload in an encoding other than UTF-8
        return json.dumps(body, ensure_ascii=draw(st.booleans())).encode(
            draw(st.sampled_from(["utf-16", "utf-16-be", "utf-32", "utf-8-sig", "latin-1"])), "surrogatepass"
        ) + draw(st.sampled_from([b"", b"\xff"]))
    if target == "top":
        body[draw(st.sampled_from(TOP_FIELDS))] = draw(JSON)
    elif target == "alert":
        body["alerts"][0][draw(st.sampled_from(ALERT_FIELDS))] = draw(JSON)
    elif target == "surrogates":  # any string field of the payload, names and values of labels included
        where = draw(st.sampled_from(["label value", "label name", "annotation", "receiver", "groupKey", "url"]))
        text = draw(ANY_TEXT)
        a = body["alerts"][0]
        if where == "label value":
            a["labels"][draw(st.sampled_from(["alertname", "instance", "extra"]))] = text
        elif where == "label name":
            a["labels"][text] = "v"
        elif where == "annotation":
            a["annotations"]["description"] = text
        elif where == "url":
            a["generatorURL"] = text
        else:
            body[where] = text
    else:
        body["alerts"][0]["labels"][draw(st.text(max_size=8))] = draw(JSON)
    return json.dumps(body).encode()


@pytest.fixture
def threaded(tmp_path: Path, migrated_sqlite: str) -> Any:
    config = make_config(tmp_path, migrated_sqlite, playbook=str(write_playbook(tmp_path, IDLE_RULES)))
    server = ThreadedServer(config)
    yield server
    server.stop()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=mutated_payloads())
def test_fuzzed_payloads_never_crash_and_never_reach_the_ledger(threaded: ThreadedServer, body: bytes) -> None:
    before = counts(threaded.config.database_url())[0]
    status, text = threaded.post(body)
    assert status in (200, 400, 413, 422), text  # a 4xx for anything malformed, never a 5xx
    after = counts(threaded.config.database_url())[0]
    assert after == before + (1 if status == 200 else 0)
    if status == 200:  # whatever was accepted is a well-formed version 4 payload
        data = json.loads(body)
        assert data["version"] == "4"
        assert all(isinstance(v, str) for a in data["alerts"] for v in a["labels"].values())
    assert threaded.post(json.dumps(payload(alert(fingerprint="ok"))).encode())[0] == 200  # still serving


async def test_a_wake_up_racing_the_shutdown_does_not_keep_the_engine_alive(client: Any) -> None:
    # Python 3.11's asyncio.wait_for returned normally when its event fired in the same tick as the
    # cancellation: the engine's loop went on forever and the reconciler never finished shutting down.
    engine_task = client.app[keys.TASKS][0]
    await engine_settled(client.app, passes=1)  # the engine is idle, waiting for a wake-up
    client.app[keys.ENGINE].wake.set()
    engine_task.cancel()
    await asyncio.wait([engine_task], timeout=5)
    assert engine_task.cancelled()


@pytest.mark.parametrize("header", NON_ASCII_AUTH)
async def test_a_non_ascii_token_is_401_and_counted(client: Any, migrated_sqlite: str, header: bytes) -> None:
    body = json.dumps(payload(alert())).encode()
    status, answer = await raw_request(client.server.port, "POST", "/api/v1/alertmanager", [header], body)
    assert status == 401, answer
    assert counts(migrated_sqlite)[0] == 0
    metrics = await (await client.get("/metrics")).text()
    assert 'tradingops_notifications_rejected_total{reason="unauthorized"} 1.0' in metrics


# startsAt values no alert really has: past the calendar's end once the rule's wait is added, in the future, or past
# what a datetime holds once turned to UTC.
ABSURD_STARTS_AT = (
    "9999-12-31T23:59:59.999Z",
    "9999-12-31T23:59:59.999-23:59",
    "0001-01-01T00:00:00+01:00",
    "+10000-01-01T00:00:00Z",
    "2999-01-01T00:00:00Z",
    "not a time",
)


@pytest.mark.parametrize("starts_at", ABSURD_STARTS_AT)
async def test_an_absurd_start_is_refused_on_its_own_and_the_others_are_stored(
    client: Any, migrated_sqlite: str, starts_at: str
) -> None:
    # The rule waits (wait_for): 9999-12-31 plus the wait used to raise OverflowError while storing, a 503 that
    # Alertmanager retried forever with the valid alert beside it never stored.
    body = payload(alert(fingerprint="bad", starts_at=starts_at), alert(fingerprint="good"))
    for _ in range(2):  # Alertmanager's resend gets the same 2xx: nothing loops
        resp = await client.post("/api/v1/alertmanager", json=body, headers=AUTH)
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        assert answer["alerts"] == 1 and "alerts[0].startsAt" in answer["invalid"][0]
    n, episodes = counts(migrated_sqlite)
    assert n == 2 and episodes == [("good", STARTS_AT.isoformat(), "waiting")]
    metrics = await (await client.get("/metrics")).text()
    assert "tradingops_alerts_invalid_total 2.0" in metrics
    # Alone, the alert is refused with a 422 (Alertmanager does not resend a 4xx either).
    resp = await client.post("/api/v1/alertmanager", json=payload(alert(starts_at=starts_at)), headers=AUTH)
    assert resp.status == 422 and "alerts[0].startsAt" in (await resp.json())["error"]


async def test_the_writer_opens_new_connections_when_postgresql_ended_its_own(
    aiohttp_client: Any, tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The intake's writer keeps its connections (the thread's, and the event loop's for resends of known episodes).
    PostgreSQL ending them (a restart, an administrator's pg_terminate_backend) costs no notification: the one that
    found them dead is stored on a fresh connection, and its ack waits for that."""
    migrate.upgrade(postgres_url)
    config = make_config(tmp_path, postgres_url, playbook=str(write_playbook(tmp_path, IDLE_RULES)))
    client = await aiohttp_client(create_app(config))

    async def post(fingerprint: str) -> None:
        resp = await client.post("/api/v1/alertmanager", json=payload(alert(fingerprint=fingerprint)), headers=AUTH)
        assert resp.status == 200, await resp.text()

    def end_sessions() -> int:
        admin = make_engine(postgres_url)
        try:
            with admin.connect() as conn:
                return int(
                    conn.execute(
                        text(
                            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    ).scalar_one()
                )
        finally:
            admin.dispose()

    await post("f1")  # a new episode: the thread's connection
    await post("f1")  # a resend: the event loop's
    assert end_sessions() >= 2
    caplog.clear()
    await post("f1")  # the event loop's connection is gone: through the thread, whose connection is gone too
    said = [r.getMessage() for r in caplog.records]
    assert any("on the event loop failed" in m for m in said), said
    assert any("storing again on a new one" in m for m in said), said
    await post("f2")
    n, episodes = counts(postgres_url)
    assert n == 4 and [e[0] for e in episodes] == ["f1", "f2"]
    assert end_sessions() >= 1
    await post("f3")
    await post("f3")
    assert counts(postgres_url)[0] == 6
