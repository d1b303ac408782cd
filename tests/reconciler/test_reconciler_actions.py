"""Each action kind against something real: a bot control API, processes, a unix-socket Engine API, Alertmanager,
an apprise target. Exec never goes through a shell; label values reach it only after validation."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from alertmanager_server import Alertmanager
from fake_bot import FakeBot, bot_targets
from prometheus_client import CollectorRegistry
from reconciler_server import BOT_TOKEN, make_config
from secret_file import write_secret

from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.clients.alertmanager import AlertmanagerClient
from trading_ops.clients.notify import Notifier
from trading_ops.clients.prometheus import PrometheusClient
from trading_ops.reconciler.actions import ACTIONS
from trading_ops.reconciler.actions.base import ActionContext, Refused
from trading_ops.reconciler.actions.exec import run_argv

INJECTIONS = [
    "x; touch PWNED",
    "$(touch PWNED)",
    "`touch PWNED`",
    "a b",
    "-rf",
    "x\ntouch PWNED",
    "x|y",
    "../etc",
    "a'b",
    'a"b',
    "",
    "x&",
    "${HOME}",
]


def ctx(
    tmp_path: Path,
    session: aiohttp.ClientSession,
    labels: dict[str, str] | None = None,
    am_url: str = "http://127.0.0.1:9",
    notifier: Notifier | None = None,
    **rc: Any,
) -> ActionContext:
    config = make_config(tmp_path, "sqlite://", **rc)
    labels = {"alertname": "TradingBotBrokerDisconnected", "instance": "bot-1", **(labels or {})}
    return ActionContext(
        config=config,
        labels=labels,
        annotations={"summary": "s.", "description": "d"},
        alertname=labels["alertname"],
        target="bot-1",
        episode_id=7,
        session=session,
        alertmanager=AlertmanagerClient(session, am_url),
        notifier=notifier or Notifier([]),
        label_pattern=re.compile(config.reconciler.label_value_pattern),
    )


async def run(c: ActionContext, kind: str, params: dict[str, Any], timeout: float = 10) -> Any:
    ACTIONS[kind].validate(params)
    return await ACTIONS[kind].run(c, params, timeout)


# ---- bot -----------------------------------------------------------------------------------------------


async def test_bot_action_calls_the_control_api_with_the_token(tmp_path: Path, fake_bot: FakeBot) -> None:
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, {"symbol": "BTC-USD"}, targets=bot_targets(fake_bot, tmp_path))
        result = await run(c, "bot", {"command": "resubscribe", "body": {"symbol": "${symbol}"}})
        assert result.ok and fake_bot.calls == [("resubscribe", {"symbol": "BTC-USD"})]
        fake_bot.status["reconnect"] = 409
        result = await run(c, "bot", {"command": "reconnect"})
        assert result.outcome == "failure" and "HTTP 409" in result.output


async def test_the_bot_counts_a_bot_step_as_the_reconcilers(tmp_path: Path, aiohttp_server: Any) -> None:
    # A real bot control API (the library's server): its dashboards say who paused it.
    (tmp_path / "bot").mkdir()
    bot = Instrumentation(
        venue="paper", token=BOT_TOKEN, registry=CollectorRegistry(), data_dir=tmp_path / "bot", heartbeat_timeout=5
    )
    server = await aiohttp_server(bot.create_app())
    write_secret(tmp_path / "bot-token", BOT_TOKEN)
    targets = {"bot-1": {"url": str(server.make_url("")).rstrip("/"), "token_file": str(tmp_path / "bot-token")}}
    async with aiohttp.ClientSession() as s:
        result = await run(ctx(tmp_path, s, targets=targets), "bot", {"command": "pause"})
    assert result.ok and bot.state.state.value == "paused", result.output
    labels = {"command": "pause", "source": "reconciler"}
    assert bot.registry.get_sample_value("tradingbot_control_commands_total", labels) == 1


def one_series_per(*instances: str) -> str:
    """A PromQL query answering one series per instance (as `max by (instance) (...)` over real bots would)."""
    return " or ".join(f'label_replace(vector(1), "instance", "{i}", "", "")' for i in instances)


@pytest.mark.prometheus
async def test_a_bot_step_with_instances_acts_on_every_configured_bot_the_query_finds(
    tmp_path: Path, aiohttp_server: Any, prometheus: str
) -> None:
    """One step for a whole venue: the command goes to the bots a real Prometheus names that are configured targets,
    skipping those not in `only_state`; the undoing step resumes only what it changed (`only_reason`)."""
    bots: dict[str, Instrumentation] = {}
    targets: dict[str, Any] = {}
    write_secret(tmp_path / "bot-token", BOT_TOKEN)
    for name in ("bot-a", "bot-b", "bot-c", "bot-d"):
        (tmp_path / name).mkdir()
        bot = Instrumentation(
            venue="kx", token=BOT_TOKEN, registry=CollectorRegistry(), data_dir=tmp_path / name, heartbeat_timeout=5
        )
        server = await aiohttp_server(bot.create_app())
        bots[name] = bot
        targets[name] = {"url": str(server.make_url("")).rstrip("/"), "token_file": str(tmp_path / "bot-token")}
    bots["bot-c"].state.apply("pause", reason="a human")  # a bot someone paused stays paused
    reason = "venue ${venue} down: reduce_only by the reconciler"
    query = one_series_per("bot-a", "bot-b", "bot-c", "bot-x")  # bot-d is not found; bot-x is no configured bot
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, {"venue": "kx"}, targets=targets)
        c.prometheus = PrometheusClient(s, prometheus)
        params = {"command": "reduce_only", "instances": query, "only_state": "active", "body": {"reason": reason}}
        result = await run(c, "bot", params)
        assert result.ok, result.output
        states = {name: bot.state.state.value for name, bot in bots.items()}
        assert states == {"bot-a": "reduce_only", "bot-b": "reduce_only", "bot-c": "paused", "bot-d": "active"}
        assert bots["bot-a"].state.reason == "venue kx down: reduce_only by the reconciler"
        assert "reduce_only on 2 of 4 bots found" in result.output
        assert "bot-c: skipped: paused" in result.output and "bot-x: not a configured bot, left alone" in result.output
        bots["bot-b"].state.apply("resume", reason="a human")  # meanwhile a human took bot-b over ...
        bots["bot-b"].state.apply("reduce_only", reason="a human")  # ... and it is not the reconciler's to resume
        resume = {"command": "resume", "instances": query, "only_state": "reduce_only", "only_reason": reason}
        result = await run(c, "bot", resume)
        assert result.ok, result.output
    states = {name: bot.state.state.value for name, bot in bots.items()}
    assert states == {"bot-a": "active", "bot-b": "reduce_only", "bot-c": "paused", "bot-d": "active"}


def test_a_bot_step_takes_one_instance_or_a_query_not_both() -> None:
    with pytest.raises(ValueError, match="either instance"):
        ACTIONS["bot"].validate({"command": "pause", "instance": "a", "instances": "up"})
    with pytest.raises(ValueError, match="only with instances"):
        ACTIONS["bot"].validate({"command": "resume", "only_state": "reduce_only"})


async def test_bot_action_with_a_wrong_token_fails_and_an_unknown_instance_is_refused(
    tmp_path: Path, fake_bot: FakeBot
) -> None:
    async with aiohttp.ClientSession() as s:
        targets = bot_targets(fake_bot, tmp_path)
        (tmp_path / "wrong").write_text("nope")
        targets["bot-1"]["token_file"] = str(tmp_path / "wrong")
        c = ctx(tmp_path, s, targets=targets)
        result = await run(c, "bot", {"command": "reconnect"})
        assert result.outcome == "failure" and "HTTP 401" in result.output
        with pytest.raises(Refused, match="no reconciler.targets entry"):
            await run(ctx(tmp_path, s, {"instance": "bot-9"}, targets=targets), "bot", {"command": "reconnect"})


# ---- exec ----------------------------------------------------------------------------------------------


async def test_exec_passes_labels_only_as_validated_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = f"import os, sys; open({str(out)!r}, 'w').write(repr((sys.argv[1:], os.environ.get('BOT'))))"
    async with aiohttp.ClientSession() as s:
        result = await run(
            ctx(tmp_path, s),
            "exec",
            {
                "argv": [sys.executable, "-c", script, "$(touch PWNED)", "${instance}"],
                "env": {"BOT": "instance"},
                "cwd": str(tmp_path),
            },
        )
    assert result.ok, result.output
    # Arguments are literal (no shell, no templating); the label arrived as an environment variable.
    assert out.read_text() == repr((["$(touch PWNED)", "${instance}"], "bot-1"))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("value", INJECTIONS)
async def test_exec_refuses_label_values_outside_the_strict_pattern(tmp_path: Path, value: str) -> None:
    marker = tmp_path / "ran"
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, {"instance": value})
        with pytest.raises(Refused, match="does not match"):
            await run(c, "exec", {"argv": ["touch", str(marker)], "env": {"BOT": "instance"}, "cwd": str(tmp_path)})
    assert not marker.exists() and not (tmp_path / "PWNED").exists()


async def test_exec_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The command starts a grandchild and both would outlive a plain kill of the direct child.
    script = (
        "import os, subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(120)\n"
    )
    result = await run_argv([sys.executable, "-c", script], None, 1.0, 4096)
    assert result.outcome == "timeout"
    for pid in map(int, pids.read_text().split()):
        for _ in range(500):
            if not running(pid):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"process {pid} survived the timeout")


def running(pid: int) -> bool:
    """Whether `pid` still runs: a killed process whose parent has not reaped it yet (a zombie, state Z: the
    grandchild, reparented once its parent died, waits for the machine's reaper) has stopped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def test_exec_reports_its_process_group_and_dies_with_the_reconciler(tmp_path: Path) -> None:
    # A stand-in reconciler runs a step and reports the step's pid; then it is killed with SIGKILL (no cleanup
    # runs). PR_SET_PDEATHSIG makes the kernel kill the step's command with it.
    child_pid = tmp_path / "child"
    runner = (
        "import asyncio, sys\n"
        "from trading_ops.reconciler.actions.exec import run_argv\n"
        "async def started(pid):\n"
        f"    open({str(child_pid)!r}, 'w').write(str(pid))\n"
        "asyncio.run(run_argv([sys.executable, '-c', 'import time; time.sleep(120)'], None, 120, 100, "
        "on_start=started))\n"
    )
    reconciler = subprocess.Popen([sys.executable, "-c", runner])
    try:
        for _ in range(500):
            if child_pid.exists() and child_pid.read_text():
                break
            await asyncio.sleep(0.02)
        pid = int(child_pid.read_text())
        assert os.getpgid(pid) == pid  # its own process group, which the step records
        os.kill(reconciler.pid, signal.SIGKILL)
        reconciler.wait()
        for _ in range(250):
            if not _alive(pid):
                break
            await asyncio.sleep(0.02)
        else:
            os.killpg(pid, signal.SIGKILL)
            raise AssertionError("the step's command outlived the reconciler")
    finally:
        reconciler.kill()
        reconciler.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_exec_of_a_missing_program_is_refused(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(Refused, match="cannot start 'no-such-program-here'"):
            await run(ctx(tmp_path, s), "exec", {"argv": ["no-such-program-here"]})
        with pytest.raises(Refused, match="cannot start './missing.sh'"):
            await run(ctx(tmp_path, s), "exec", {"argv": ["./missing.sh"], "cwd": str(tmp_path)})


async def test_exec_output_is_truncated_and_exit_status_kept(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as s:
        result = await run(
            ctx(tmp_path, s, output_limit_bytes=100),
            "exec",
            {"argv": [sys.executable, "-c", "print('x' * 1000); raise SystemExit(3)"]},
        )
    assert result.outcome == "failure" and result.output.startswith("exit 3")
    assert "more characters]" in result.output and len(result.output) < 200


# ---- systemd, signal, docker ---------------------------------------------------------------------------


async def test_systemd_restarts_the_unit_with_the_configured_systemctl(tmp_path: Path) -> None:
    record = tmp_path / "argv"
    fake = tmp_path / "systemctl"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\n")
    fake.chmod(0o755)
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, {"bot": "paper-1"}, systemctl=[str(fake), "--user"])
        result = await run(c, "systemd", {"unit": "trading-ops-bot@${bot}.service"})
        assert result.ok, result.output
        assert record.read_text().split() == ["--user", "restart", "trading-ops-bot@paper-1.service"]
        with pytest.raises(Refused):
            await run(
                ctx(tmp_path, s, {"bot": "-x; reboot"}, systemctl=[str(fake)]), "systemd", {"unit": "${bot}.service"}
            )


def fake_systemctl(tmp_path: Path, show: str) -> tuple[Path, Path]:
    """A systemctl stand-in (systemd does not run here) that answers `show` with `show` and records every call."""
    record = tmp_path / "calls"
    fake = tmp_path / "systemctl"
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {record}\n'
        f"case \"$3\" in show) printf '%s\\n' {' '.join(repr(line) for line in show.splitlines())} ;; esac\n"
    )
    fake.chmod(0o755)
    return fake, record


async def test_systemd_without_a_unit_restarts_the_unit_configured_for_the_alerts_bot(tmp_path: Path) -> None:
    fake, record = fake_systemctl(tmp_path, "ActiveState=active\nSubState=running\nExecMainStartTimestamp=@1")
    targets = {
        "127.0.0.1:9101": {"url": "http://127.0.0.1:9101", "token_env": "T", "unit": "trading-ops-bot@a.service"}
    }
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, {"instance": "127.0.0.1:9101"}, systemctl=[str(fake)], targets=targets)
        c.starts_at = datetime.now(UTC)
        result = await run(c, "systemd", {})
        assert result.ok, result.output
        assert record.read_text().splitlines()[-1] == "restart trading-ops-bot@a.service"
        # An instance no bot is configured for: refused, never a unit made up from labels.
        with pytest.raises(Refused, match="no unit configured"):
            await run(ctx(tmp_path, s, {"instance": "10.0.0.9:9101"}, systemctl=[str(fake), "x"]), "systemd", {})


@pytest.mark.parametrize(
    ("show", "restarted"),
    [
        ("ActiveState=activating\nSubState=auto-restart\nExecMainStartTimestamp=@1", False),
        ("ActiveState=active\nSubState=running\nExecMainStartTimestamp=@{after}", False),
        ("ActiveState=active\nSubState=running\nExecMainStartTimestamp=@{before}", True),
        ("ActiveState=failed\nSubState=failed\nExecMainStartTimestamp=@{before}", True),
        ("", True),  # a systemctl that cannot tell: restart, as always
    ],
)
async def test_systemd_leaves_a_unit_the_service_manager_already_restarted(
    tmp_path: Path, show: str, restarted: bool
) -> None:
    # Restart=on-failure or WatchdogSec restarted the bot on their own: restarting it again would kill it in the
    # middle of its startup reconciliation. The verification then decides.
    starts_at = datetime.now(UTC) - timedelta(seconds=30)
    fake, record = fake_systemctl(
        tmp_path, show.format(after=starts_at.timestamp() + 5, before=starts_at.timestamp() - 5)
    )
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, systemctl=[str(fake)])
        c.starts_at = starts_at
        result = await run(c, "systemd", {"unit": "trading-ops-paper-bot.service"})
    assert result.ok, result.output
    calls = record.read_text().splitlines()
    assert (
        calls[0]
        == "--timestamp=unix --property=ActiveState,SubState,ExecMainStartTimestamp show trading-ops-paper-bot.service"
    )
    assert ("restart trading-ops-paper-bot.service" in calls) is restarted
    if not restarted:
        assert "not restarted again" in result.output


async def test_a_restart_leaves_a_bot_that_is_starting_alone(tmp_path: Path, aiohttp_server: Any) -> None:
    # A real bot control API (the library's server) whose runtime is mid-startup (its startup reconciliation, on a
    # host that just came back): bot-loop-restart's systemd step does not restart it; once it trades, it does.
    (tmp_path / "bot").mkdir()
    bot = Instrumentation(
        venue="paper", token=BOT_TOKEN, registry=CollectorRegistry(), data_dir=tmp_path / "bot", heartbeat_timeout=5
    )
    bot.metrics.phase("starting")
    server = await aiohttp_server(bot.create_app())
    (tmp_path / "bot-token").write_text(BOT_TOKEN)
    (tmp_path / "bot-token").chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
    targets = {
        "bot-1": {
            "url": str(server.make_url("")).rstrip("/"),
            "token_file": str(tmp_path / "bot-token"),
            "unit": "trading-ops-bot@a.service",
        }
    }
    fake, record = fake_systemctl(tmp_path, "ActiveState=active\nSubState=running\nExecMainStartTimestamp=@1")
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, systemctl=[str(fake)], targets=targets)
        c.starts_at = datetime.now(UTC)
        result = await run(c, "systemd", {})
        assert result.ok and "the bot is starting" in result.output, result.output
        assert not record.exists()  # systemctl was not even asked
        bot.metrics.phase("trading")
        result = await run(c, "systemd", {})
    assert result.ok, result.output
    assert record.read_text().splitlines()[-1] == "restart trading-ops-bot@a.service"


async def test_systemd_gets_the_minimal_environment_not_the_reconcilers_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADING_OPS_RECONCILER_TOKEN", "s3cret-webhook-token")
    monkeypatch.setenv("TRADING_OPS_APPRISE_URLS", "mailto://user:pass@example.com")
    record = tmp_path / "env"
    fake = tmp_path / "systemctl"
    fake.write_text(f"#!/bin/sh\nenv > {record}\n")
    fake.chmod(0o755)
    async with aiohttp.ClientSession() as s:
        result = await run(
            ctx(tmp_path, s, systemctl=[str(fake)]), "systemd", {"unit": "trading-ops-paper-bot.service"}
        )
    assert result.ok, result.output
    names = {line.split("=", 1)[0] for line in record.read_text().splitlines()}
    assert "TRADING_OPS_RECONCILER_TOKEN" not in names and "TRADING_OPS_APPRISE_URLS" not in names
    assert "PATH" in names and "s3cret" not in record.read_text()


async def test_signal_sends_to_the_pid_in_the_pidfile(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "bot.pid").write_text(f"{proc.pid}\n")
        async with aiohttp.ClientSession() as s:
            result = await run(ctx(tmp_path, s), "signal", {"pidfile": "bot.pid", "signal": "TERM"})
        assert result.ok
        assert proc.wait(10) == -signal.SIGTERM
        (tmp_path / "bad.pid").write_text("1")
        async with aiohttp.ClientSession() as s:
            with pytest.raises(Refused):
                await run(ctx(tmp_path, s), "signal", {"pidfile": "bad.pid"})
    finally:
        proc.kill()
        proc.wait()


# A Docker engine of its own, and on a new machine the Debian root of its image (about 5 minutes in a lane): in
# `make test-deploy`, which builds the roots and images in the background from its start (CI runs it after make test).
@pytest.mark.deploy
@pytest.mark.timeout(900)  # the first run on a machine makes the Debian root of the image (a few minutes)
async def test_docker_restarts_a_container_through_the_engine_api_socket(tmp_path: Path, docker_engine: Any) -> None:
    """On a real Docker engine (this run's own dockerd, tests/docker_engine.py): the container is restarted (the same
    container, started anew), a missing one is the engine's own 404, and a name that is no container name never
    reaches the engine."""
    from compose_images import ensure_base_image

    image = ensure_base_image(docker_engine)
    name = f"paper-bot-{os.getpid()}"
    # Like a bot, it ends at SIGTERM.
    loop = "trap 'exit 0' TERM; while :; do sleep 0.2; done"
    docker_engine.docker("run", "-d", "--name", name, "--network", "none", image, "sh", "-c", loop)

    def state() -> dict[str, Any]:
        return dict(json.loads(docker_engine.docker("inspect", name).stdout)[0]["State"])

    try:
        before = state()
        assert before["Running"], before
        socket = str(docker_engine.socket)
        async with aiohttp.ClientSession() as s:
            c = ctx(tmp_path, s, {"container": name}, docker_socket=socket)
            result = await run(c, "docker", {"container": "${container}", "stop_timeout": 5}, timeout=60)
            assert result.ok and result.output.startswith("HTTP 204"), result.output
            after = state()
            assert after["Running"] and after["StartedAt"] != before["StartedAt"] and after["Pid"] != before["Pid"]
            missing = await run(ctx(tmp_path, s, docker_socket=socket), "docker", {"container": f"gone-{name}"})
            assert (
                missing.outcome == "failure" and "HTTP 404" in missing.output and "No such container" in missing.output
            )
            with pytest.raises(Refused):
                await run(
                    ctx(tmp_path, s, {"container": "../x"}, docker_socket=socket),
                    "docker",
                    {"container": "${container}"},
                )
            # No engine on the socket: a failure that says so, not an exception.
            nothing = await run(
                ctx(tmp_path, s, docker_socket=str(tmp_path / "none.sock")), "docker", {"container": name}
            )
            assert nothing.outcome == "failure" and f"docker restart {name}" in nothing.output
        assert state()["StartedAt"] == after["StartedAt"], "only the one restart reached the engine"
    finally:
        docker_engine.docker("rm", "-f", name, check=False)


# ---- silence, notify -----------------------------------------------------------------------------------


async def test_silence_creates_an_alertmanager_silence(tmp_path: Path, alertmanager: Alertmanager) -> None:
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, {"instance": "bot-silenced"}, am_url=alertmanager.url)
        result = await run(c, "silence", {"duration": "10m", "comment": "settling after restart"})
    assert result.ok, result.output
    ours = [x for x in alertmanager.get("silences") if x["comment"] == "settling after restart"]
    assert ours and ours[0]["createdBy"] == "trading-ops-reconciler" and ours[0]["status"]["state"] == "active"
    assert {m["name"]: m["value"] for m in ours[0]["matchers"]} == {
        "alertname": "TradingBotBrokerDisconnected",
        "instance": "bot-silenced",
    }


async def test_a_restart_silences_the_targets_down_alert_not_every_target(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    """`silence alertname=TradingBotDown` (before the packaged restarts): that alert of this target only, so the
    reconciler's own restart does not page; an alert without the target label is refused, never a silence of all."""
    async with aiohttp.ClientSession() as s:
        labels = {"alertname": "TradingBotHeartbeatStale", "instance": "bot-restarted:9101"}
        c = ctx(tmp_path, s, labels, am_url=alertmanager.url)
        params = {"alertname": "TradingBotDown", "duration": "3m", "comment": "restarted by the reconciler (test)"}
        result = await run(c, "silence", params)
        assert result.ok, result.output
        ours = [x for x in alertmanager.get("silences") if x["comment"] == "restarted by the reconciler (test)"]
        assert len(ours) == 1 and ours[0]["status"]["state"] == "active"
        assert {m["name"]: m["value"] for m in ours[0]["matchers"]} == {
            "alertname": "TradingBotDown",
            "instance": "bot-restarted:9101",
        }
        with pytest.raises(Refused, match="none of the labels instance"):
            venue = ctx(tmp_path, s, {"alertname": "TradingBotVenueDown"}, am_url=alertmanager.url)
            del venue.labels["instance"]  # a venue's alert: no instance label
            await run(venue, "silence", params)
    with pytest.raises(ValueError, match="alertname"):
        ACTIONS["silence"].validate({"alertname": "Trading Bot Down"})


async def test_notify_sends_through_apprise(tmp_path: Path, aiohttp_server: Any) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    notifier = Notifier([f"json://127.0.0.1:{server.port}/hook"])
    async with aiohttp.ClientSession() as s:
        result = await run(ctx(tmp_path, s, notifier=notifier), "notify", {"title": "${alertname} on ${instance}"})
    assert result.ok
    assert received[0]["title"] == "TradingBotBrokerDisconnected on bot-1" and received[0]["message"] == "d"


# ---- http ------------------------------------------------------------------------------------------------


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A real HTTP server on 127.0.0.1 recording each request (path as sent, query, body); /moved redirects."""
    seen: list[dict[str, Any]] = []

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        seen.append({"method": request.method, "path": request.raw_path, "body": body})
        if request.path == "/moved":
            raise web.HTTPFound("http://127.0.0.2:9/elsewhere")
        return web.json_response({"ok": True}, status=int(request.query.get("status", "200")))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return await aiohttp_server(app), seen


async def test_http_fills_label_values_url_encoded_and_the_json_body(tmp_path: Path, receiver: Any) -> None:
    server, seen = receiver
    labels = {"instance": "127.0.0.1:9101", "symbol": "BTC-USD"}
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, labels, http_allowed_hosts=["127.0.0.1"])
        params = {
            "url": f"http://127.0.0.1:{server.port}/hooks/${{instance}}/restart?symbol=${{symbol}}",
            "json": {"instance": "${instance}", "symbols": ["${symbol}"], "nested": {"n": 1, "s": "x-${symbol}"}},
        }
        result = await run(c, "http", params)
    assert result.ok and result.output.startswith("HTTP 200")
    assert seen == [
        {
            "method": "POST",
            "path": "/hooks/127.0.0.1%3A9101/restart?symbol=BTC-USD",
            "body": {"instance": "127.0.0.1:9101", "symbols": ["BTC-USD"], "nested": {"n": 1, "s": "x-BTC-USD"}},
        }
    ]


async def test_a_label_cannot_choose_the_host(tmp_path: Path, receiver: Any, aiohttp_server: Any) -> None:
    # The default label pattern allows '@' and ':' (instance is host:port; systemd template units have '@'):
    # spliced in unencoded, `user@127.0.0.1:PORT` sent the request to the host and port the label named.
    server, seen = receiver
    other, other_seen = await receiver_server(aiohttp_server)
    evil = f"user@127.0.0.1:{other.port}"
    async with aiohttp.ClientSession() as s:
        c = ctx(
            tmp_path, s, {"instance": evil}, http_allowed_hosts=[f"127.0.0.1:{server.port}", f"127.0.0.1:{other.port}"]
        )
        # A playbook that put the label where the host goes is refused when loaded (below); run as it is, the
        # step refuses too, and nothing is sent anywhere.
        with pytest.raises(Refused, match="host changed"):
            await ACTIONS["http"].run(c, {"url": "http://${instance}/x", "method": "GET"}, 10)
        result = await run(c, "http", {"url": f"http://127.0.0.1:{server.port}/x${{instance}}", "method": "GET"})
    assert result.ok
    assert other_seen == [] and [r["path"] for r in seen] == [f"/xuser%40127.0.0.1%3A{other.port}"]
    for template in ("http://${instance}/x", f"http://${{instance}}:{server.port}/x", "http://a${instance}.b/x"):
        with pytest.raises(ValueError, match="the host comes from the playbook, never from a label"):
            ACTIONS["http"].validate({"url": template})


async def receiver_server(aiohttp_server: Any) -> tuple[Any, list[str]]:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return await aiohttp_server(app), seen


async def test_http_goes_only_to_allowed_hosts_and_follows_no_redirect(tmp_path: Path, receiver: Any) -> None:
    server, seen = receiver
    url = f"http://127.0.0.1:{server.port}/x"
    async with aiohttp.ClientSession() as s:
        for allowed in ([], ["localhost"], [f"127.0.0.1:{server.port + 1}"]):
            with pytest.raises(Refused, match="not in reconciler.http_allowed_hosts"):
                await run(ctx(tmp_path, s, http_allowed_hosts=allowed), "http", {"url": url})
        assert seen == []
        c = ctx(tmp_path, s, http_allowed_hosts=[f"127.0.0.1:{server.port}"])
        moved = await run(c, "http", {"url": f"http://127.0.0.1:{server.port}/moved", "method": "GET"})
        assert not moved.ok and moved.output.startswith("HTTP 302")  # not followed to 127.0.0.2
        teapot = await run(c, "http", {"url": f"{url}?status=418", "expect_status": [418]})
        assert teapot.ok
        failed = await run(c, "http", {"url": f"{url}?status=500"})
        assert not failed.ok and failed.output.startswith("HTTP 500")
    assert [r["path"] for r in seen] == ["/moved", "/x?status=418", "/x?status=500"]


async def test_http_refuses_a_label_outside_the_strict_pattern(tmp_path: Path, receiver: Any) -> None:
    server, seen = receiver
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, {"instance": "x/../../admin"}, http_allowed_hosts=["127.0.0.1"])
        with pytest.raises(Refused, match="label 'instance'"):
            await run(c, "http", {"url": f"http://127.0.0.1:{server.port}/${{instance}}"})
        with pytest.raises(Refused, match="label 'instance'"):
            await run(c, "http", {"url": f"http://127.0.0.1:{server.port}/", "json": {"i": "${instance}"}})
    assert seen == []


def test_a_playbook_http_step_to_a_host_not_allowed_stops_the_start(tmp_path: Path, sqlite_url: str) -> None:
    from reconciler_server import write_playbook

    from trading_ops.config import ConfigError
    from trading_ops.reconciler.app import create_app

    rule = {"name": "hook", "match": ['alertname="A"'], "steps": [{"action": "http", "url": "http://10.0.0.1:8080/h"}]}
    playbook = str(write_playbook(tmp_path, [rule]))
    with pytest.raises(ConfigError, match=r"http_allowed_hosts: rule hook step 1 sends requests to 10\.0\.0\.1:8080"):
        create_app(make_config(tmp_path, sqlite_url, playbook=playbook))
    create_app(make_config(tmp_path, sqlite_url, playbook=playbook, http_allowed_hosts=["10.0.0.1:8080"]))


# ---- escalate ----------------------------------------------------------------------------------------------


async def test_escalate_posts_the_alert_to_alertmanager(tmp_path: Path, alertmanager: Alertmanager) -> None:
    instance = f"bot-esc-{os.getpid()}-{id(tmp_path) % 10000}"
    async with aiohttp.ClientSession() as s:
        c = ctx(tmp_path, s, {"instance": instance}, am_url=alertmanager.url)
        c.history.append("attempt 1: bot command=reconnect -> failure")
        params = {"alertname": "TradingOpsBotPaused", "severity": "warning"}
        # Only an alert of the escalation list: Alertmanager routes those to people alone; any other name would
        # follow the severity routes back to the reconciler.
        with pytest.raises(ValueError, match="not an escalation alert"):
            await run(c, "escalate", {"alertname": "TradingOpsPlaybookEscalation"})
        result = await run(c, "escalate", params)
        assert result.ok and result.output == "alert posted to Alertmanager"
        held = [a for a in alertmanager.get("alerts") if a["labels"].get("instance") == instance]
        assert len(held) == 1
        labels, annotations = held[0]["labels"], held[0]["annotations"]
        assert labels["alertname"] == "TradingOpsBotPaused" and labels["severity"] == "warning"
        assert labels["original_alertname"] == "TradingBotBrokerDisconnected" and labels["target"] == "bot-1"
        assert annotations["description"] == "attempt 1: bot command=reconnect -> failure"
        # Alertmanager away: the step fails (the run's own escalation then takes the apprise path).
        down = ctx(tmp_path, s, {"instance": instance}, am_url="http://127.0.0.1:9")
        failed = await run(down, "escalate", {"description": "x"})
        assert not failed.ok and "127.0.0.1:9" in failed.output
