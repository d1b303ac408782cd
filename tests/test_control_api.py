"""The bot's HTTP server: bearer auth, unknown commands, refused transitions, bad bodies, health and readiness."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from trading_ops.bot.control import CommandError
from trading_ops.bot.instrumentation import Instrumentation

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


async def test_unknown_command_is_404_and_bounded_label(client, registry) -> None:
    for name in ("launch_missiles", "rm -rf /", "x" * 500):
        response = await client.post(f"/control/{name}", headers=AUTH)
        assert response.status in (404, 405) or name == "rm -rf /"
    response = await client.post("/control/launch_missiles", headers=AUTH)
    assert response.status == 404
    assert "pause" in (await response.json())["commands"]
    labels = {
        s.labels["command"] for f in registry.collect() if f.name == "tradingbot_control_commands" for s in f.samples
    }
    assert labels == {"unknown"}


async def test_pause_resume_and_status(client, registry) -> None:
    response = await client.post("/control/pause", headers=AUTH, json={"reason": "maintenance"})
    assert response.status == 200
    body = await response.json()
    assert body == {"ok": True, "command": "pause", "state": "paused", "previous_state": "active", "changed": True}
    status = await (await client.post("/control/status", headers=AUTH)).json()
    assert status["state"] == "paused" and status["state_reason"] == "maintenance"
    assert (await (await client.post("/control/resume", headers=AUTH)).json())["state"] == "active"
    assert registry.get_sample_value("tradingbot_control_commands_total", {"command": "pause"}) == 1


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
