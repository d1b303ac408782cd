"""The bot's HTTP server: bearer auth, unknown commands, refused transitions, bad bodies, health and readiness."""

from __future__ import annotations

import logging
import sys
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client import CollectorRegistry
from raw_http import NON_ASCII_AUTH, raw_request

from trading_ops.bot.control import CommandError
from trading_ops.bot.instrumentation import GIL_SWITCH_INTERVAL_SECONDS, Instrumentation
from trading_ops.config import parse_config

TOKEN = "correct horse battery staple"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def inst(registry: CollectorRegistry, tmp_path) -> Instrumentation:
    instrumentation = Instrumentation(
        venue="paper", token=TOKEN, registry=registry, data_dir=tmp_path, heartbeat_timeout=5
    )

    async def echo(args: dict[str, Any]) -> dict[str, Any]:
        if "fail" in args:
            raise CommandError("asked to fail")
        if "explode" in args:
            raise RuntimeError("boom")
        return {"echo": args}

    instrumentation.control.register("reconnect", echo)
    return instrumentation


@pytest.fixture
async def client(aiohttp_client, inst: Instrumentation):
    return await aiohttp_client(inst.create_app())


def failures(registry: CollectorRegistry, command: str, reason: str) -> float:
    return (
        registry.get_sample_value("tradingbot_control_command_failures_total", {"command": command, "reason": reason})
        or 0.0
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
async def test_wrong_or_missing_token_is_401(client, registry, headers) -> None:
    response = await client.post("/control/pause", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.json()
    assert body["ok"] is False and "token" in body["error"]
    assert failures(registry, "pause", "unauthorized") == 1


async def test_unauthorized_unknown_command_is_401_not_404(client) -> None:
    response = await client.post("/control/launch_missiles")
    assert response.status == 401


UNKNOWN_NAMES = ("launch_missiles", "rm -rf /", "$(reboot)", "a;b", "../../etc/passwd", "x" * 500)


async def test_unknown_command_is_404_and_bounded_label(client, registry, inst) -> None:
    for name in UNKNOWN_NAMES:
        # Quoted, so the whole name (slashes included) reaches the handler as one path segment.
        response = await client.post(f"/control/{quote(name, safe='')}", headers=AUTH)
        assert response.status == 404, name
        body = await response.json()
        assert body["ok"] is False and body["error"].startswith("unknown command"), body
        assert "pause" in body["commands"]
    # Unquoted, `rm -rf /` is two path segments: no route, a plain 404, nothing run or counted.
    assert (await client.post("/control/rm -rf /", headers=AUTH)).status == 404
    labels = {
        s.labels["command"]: s.value
        for f in registry.collect()
        if f.name == "tradingbot_control_commands"
        for s in f.samples
        if s.name.endswith("_total") and s.value  # the state commands are exported at 0 from the start
    }
    assert labels == {"unknown": len(UNKNOWN_NAMES)}
    assert failures(registry, "unknown", "unknown_command") == len(UNKNOWN_NAMES)
    assert inst.state.state.value == "active"


async def test_pause_resume_and_status(client, registry) -> None:
    response = await client.post("/control/pause", headers=AUTH, json={"reason": "maintenance"})
    assert response.status == 200
    body = await response.json()
    assert body == {"ok": True, "command": "pause", "state": "paused", "previous_state": "active", "changed": True}
    status = await (await client.post("/control/status", headers=AUTH)).json()
    assert status["state"] == "paused" and status["state_reason"] == "maintenance"
    assert (await (await client.post("/control/resume", headers=AUTH)).json())["state"] == "active"
    assert (
        registry.get_sample_value("tradingbot_control_commands_total", {"command": "pause", "source": "operator"}) == 1
    )


async def test_refused_transition_is_409(client, registry, inst) -> None:
    assert (await client.post("/control/halt", headers=AUTH)).status == 200
    response = await client.post("/control/resume", headers=AUTH)
    assert response.status == 409
    body = await response.json()
    assert body["state"] == "halted" and "clear_halt" in body["error"]
    assert failures(registry, "resume", "refused") == 1
    assert inst.state.state.value == "halted"
    assert (await client.post("/control/clear_halt", headers=AUTH)).status == 200
    assert inst.state.state.value == "paused"


async def test_bad_bodies_are_400_or_413(client, registry) -> None:
    assert (await client.post("/control/reconnect", headers=AUTH, data=b"{not json")).status == 400
    assert (await client.post("/control/reconnect", headers=AUTH, json=[1, 2])).status == 400
    response = await client.post("/control/reconnect", headers=AUTH, data=b"x" * (128 * 1024))
    assert response.status == 413
    assert failures(registry, "reconnect", "bad_request") == 3


async def test_command_errors_are_400_and_crashes_500_without_taking_the_server_down(client, registry) -> None:
    assert (await client.post("/control/reconnect", headers=AUTH, json={"fail": 1})).status == 400
    response = await client.post("/control/reconnect", headers=AUTH, json={"explode": 1})
    assert response.status == 500 and "boom" in (await response.json())["error"]
    assert failures(registry, "reconnect", "error") == 1
    ok = await client.post("/control/reconnect", headers=AUTH, json={"a": "$(rm -rf /)"})
    assert (await ok.json())["echo"] == {"a": "$(rm -rf /)"}


async def test_healthz_follows_the_heartbeat(client, inst, monkeypatch) -> None:
    assert (await client.get("/healthz")).status == 200  # starting, within the timeout
    inst.metrics.loop_iteration(0.001)
    body = await (await client.get("/healthz")).json()
    assert body["status"] == "ok"
    assert inst.metrics.last_heartbeat_monotonic is not None
    inst.metrics.last_heartbeat_monotonic -= 60  # the loop stopped a minute ago
    response = await client.get("/healthz")
    assert response.status == 503 and (await response.json())["status"] == "trading loop stalled"


async def test_readyz_reports_every_check(client, inst, registry) -> None:
    flags = {"broker": True}
    inst.add_readiness_check("broker", lambda: (flags["broker"], "connected" if flags["broker"] else "down"))
    assert (await client.get("/readyz")).status == 200
    flags["broker"] = False
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["checks"]["broker"] == {"ok": False, "detail": "down"}
    assert registry.get_sample_value("tradingbot_ready") == 0


async def test_metrics_endpoint_plain_and_gzip(client) -> None:
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert plain.status == 200 and plain.headers["Content-Type"].startswith("text/plain")
    text = await plain.text()
    for name in (
        "tradingbot_build_info",
        "tradingbot_state{",
        "process_cpu_seconds_total",
        "python_gc_",
        "tradingbot_disk_free_bytes",
        "tradingbot_process_open_fds",
        "tradingbot_event_loop_lag_seconds",
        "tradingbot_memory_limit_bytes",
    ):
        assert name in text, name
    zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.status == 200 and "tradingbot_build_info" in await zipped.text()


def test_empty_token_is_refused(registry) -> None:
    with pytest.raises(ValueError, match="token"):
        Instrumentation(venue="paper", token="", registry=registry)


def commands_total(registry: CollectorRegistry, command: str) -> float:
    """tradingbot_control_commands_total of `command`, whoever sent it."""
    return sum(
        s.value
        for f in registry.collect()
        if f.name == "tradingbot_control_commands"
        for s in f.samples
        if s.name.endswith("_total") and s.labels["command"] == command
    )


def test_the_state_commands_of_each_source_are_exported_from_the_start(registry, inst) -> None:
    # increase() over a series that appears at 1 is 0: the first pause would be missing from the boards.
    for command in ("pause", "resume", "reduce_only", "flatten", "halt", "clear_halt"):
        for source in ("operator", "reconciler", "maintenance", "risk"):
            labels = {"command": command, "source": source}
            assert registry.get_sample_value("tradingbot_control_commands_total", labels) == 0, labels


@pytest.mark.parametrize(
    ("headers", "source"),
    [
        (AUTH, "operator"),  # curl, `trading-ops chaos`: a person
        ({**AUTH, "X-Trading-Ops-Source": "reconciler"}, "reconciler"),
        ({**AUTH, "X-Trading-Ops-Source": "Maintenance"}, "maintenance"),
        ({**AUTH, "X-Trading-Ops-Source": "risk"}, "operator"),  # only the bot itself changes state for its limits
        ({**AUTH, "X-Trading-Ops-Source": "x" * 300}, "operator"),  # anything else: the label set stays bounded
        ({"Authorization": "Bearer wrong", "X-Trading-Ops-Source": "reconciler"}, "unauthenticated"),
    ],
)
async def test_each_command_is_counted_with_who_sent_it(client, registry, headers, source) -> None:
    await client.post("/control/pause", headers=headers)
    samples = {
        (s.labels["command"], s.labels["source"]): s.value
        for f in registry.collect()
        if f.name == "tradingbot_control_commands"
        for s in f.samples
        if s.name.endswith("_total") and s.value
    }
    assert samples == {("pause", source): 1.0}


@pytest.mark.parametrize(
    ("command", "headers", "body", "status", "label", "reason"),
    [
        ("pause", AUTH, None, 200, "pause", None),
        ("status", AUTH, None, 200, "status", None),
        ("pause", {}, None, 401, "pause", "unauthorized"),
        ("pause", {"Authorization": "Bearer wrong"}, None, 401, "pause", "unauthorized"),
        ("launch_missiles", AUTH, None, 404, "unknown", "unknown_command"),
        ("reconnect", AUTH, b"{not json", 400, "reconnect", "bad_request"),
        ("reconnect", AUTH, b'{"fail": 1}', 400, "reconnect", "bad_request"),
        ("reconnect", AUTH, b"x" * (128 * 1024), 413, "reconnect", "bad_request"),
        ("clear_halt", AUTH, None, 409, "clear_halt", "refused"),
        ("reconnect", AUTH, b'{"explode": 1}', 500, "reconnect", "error"),
    ],
)
async def test_every_control_call_is_logged_and_counted(
    client, registry, caplog, command, headers, body, status, label, reason
) -> None:
    caplog.set_level(logging.INFO, logger="trading_ops.bot.server")
    response = await client.post(f"/control/{command}", headers=headers, data=body)
    assert response.status == status
    records = [r for r in caplog.records if r.name == "trading_ops.bot.server" and r.getMessage().startswith("control")]
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert command in message and "127.0.0.1" in message  # what was asked, and by whom
    assert records[0].levelno == (
        logging.INFO if reason is None else logging.ERROR if status == 500 else logging.WARNING
    )
    assert commands_total(registry, label) == 1
    if reason is not None:
        assert failures(registry, label, reason) == 1


async def test_server_binds_loopback_by_default(inst) -> None:
    port = await inst.start(port=0)
    try:
        assert port > 0
        hosts = {address[0] for address in inst._runner.addresses}
        assert hosts == {"127.0.0.1"}, hosts
    finally:
        await inst.stop()


def test_configured_listen_addresses_default_to_loopback() -> None:
    config = parse_config({})
    assert config.bot.listen.host == "127.0.0.1"
    assert config.reconciler.listen.host == "127.0.0.1"


async def test_switch_interval_is_left_alone_unless_the_bot_opts_in(registry, tmp_path) -> None:
    original = sys.getswitchinterval()
    try:
        plain = Instrumentation(venue="paper", token=TOKEN, registry=registry, data_dir=tmp_path)
        await plain.start(port=0)
        assert sys.getswitchinterval() == original
        await plain.stop()
        tuned = Instrumentation(
            venue="paper", token=TOKEN, registry=CollectorRegistry(), data_dir=tmp_path, tune_switch_interval=True
        )
        await tuned.start(port=0)
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_SECONDS)
        await tuned.stop()
        assert sys.getswitchinterval() == original  # restored on stop
    finally:
        sys.setswitchinterval(original)


@pytest.mark.parametrize("header", NON_ASCII_AUTH)
async def test_a_non_ascii_token_is_401_not_500(client, registry, header: bytes) -> None:
    status, body = await raw_request(client.server.port, "POST", "/control/pause", [header])
    assert status == 401, body
    assert failures(registry, "pause", "unauthorized") == 1
    assert (await client.post("/control/status", headers=AUTH)).status == 200  # still serving
