"""Maintenance windows against a real Alertmanager (prometheus-alertmanager) and real bot control APIs.

The Alertmanager is started by the fixture on a free loopback port; the bots are trading_ops.bot servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from alertmanager_server import Alertmanager
from ops_setup import Bot, ops_config
from ports import free_port
from prometheus_client import CollectorRegistry
from secret_file import write_secret

from trading_ops import audit
from trading_ops.cli import main
from trading_ops.clients.alertmanager import AlertmanagerClient
from trading_ops.config import Config, load_config
from trading_ops.db.base import make_engine, utcnow
from trading_ops.ops.maintenance import CREATED_BY, Maintenance, MaintenanceError, parse_matchers
from trading_ops.ops.maintenance_metrics import MaintenanceWindowsCollector, register_maintenance_metrics
from trading_ops.reconciler.actions.silence import CREATED_BY as RECONCILER_CREATED_BY
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.maintenance import is_bot_maintenance

pytestmark = pytest.mark.alertmanager


def write_config(tmp_path: Path, config_data: dict[str, Any]) -> str:
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(config_data))
    return str(path)


OPERATOR = "oncall"
# The people's tokens the reconciler knows: name, scope (OPERATOR's may also open a window of a bot's instance alone,
# which could silence the pipeline's own pages).
PEOPLE = ((OPERATOR, "destructive"), ("ops", "operate"), ("viewer", "read"))


def cli_config(tmp_path: Path, db_url: str, am_url: str, bots: dict[str, Bot]) -> str:
    """The configuration `maintenance` runs with and the reconciler it asks serves: the bots as its targets, the
    people's tokens (PEOPLE, each in tmp_path/NAME-token) as its api_tokens."""
    write_secret(tmp_path / "bot-token", "bot-token")
    write_secret(tmp_path / "webhook-token", "webhook-token")
    for name, _scope in PEOPLE:
        write_secret(tmp_path / f"{name}-token", f"{name}-token-secret")
    targets = {n: {"url": b.url, "token_file": str(tmp_path / "bot-token")} for n, b in bots.items()}
    reconciler = {
        "alertmanager_url": am_url,
        "targets": targets,
        "token_file": str(tmp_path / "webhook-token"),
        "api_tokens": [
            {"name": name, "scope": scope, "token_file": str(tmp_path / f"{name}-token")} for name, scope in PEOPLE
        ],
        "check_silences": False,
        "watchdog": {"window_seconds": 0},
    }
    return write_config(
        tmp_path, {"database": {"url": db_url}, "reconciler": reconciler, "scheduler": {"enabled": False}}
    )


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (it runs its own event loop) while the bots serve on this one."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def decide(aiohttp_client: Any, capsys: pytest.CaptureFixture[str]) -> Any:
    """`trading-ops -c PATH maintenance start|end ...` as a person runs it: with their own token (OPERATOR's unless
    `person` names another of PEOPLE), through
    the API of a reconciler serving PATH's configuration (one per configuration, on this event loop)."""
    served: dict[str, str] = {}

    async def run(path: str, *argv: str, person: str = OPERATOR) -> tuple[int, str, str]:
        if path not in served:
            app = create_app(load_config(path), registry=CollectorRegistry())
            served[path] = str((await aiohttp_client(app)).make_url("")).rstrip("/")
        token = str(Path(path).parent / f"{person}-token")
        return await cli(capsys, "-c", path, "maintenance", *argv, "--token-file", token, "--url", served[path])

    return run


@pytest.fixture(autouse=True)
def expire_windows_left_active(alertmanager: Alertmanager) -> Iterator[None]:
    """The Alertmanager is shared by the session: a test that moves time past a window's end (housekeeping with a
    later `now`) leaves its silence active in the real one; expire them so the next test starts clean."""
    yield
    for s in alertmanager.get("silences"):
        if s["createdBy"] == CREATED_BY and s["status"]["state"] == "active":
            alertmanager.expire(s["id"])


def silences_with(am: Alertmanager, reason: str) -> list[dict[str, Any]]:
    """The silences whose comment carries `reason` (unique per test: the Alertmanager is shared)."""
    return [s for s in am.get("silences") if s["comment"].startswith(reason + " (")]


def errors(err: str) -> list[str]:
    """The CLI's own error lines (the in-process bots log to the same stderr)."""
    return [line for line in err.splitlines() if line.startswith("trading-ops:")]


async def test_start_silences_pauses_the_matched_bot_and_end_undoes_it(
    tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager, bots: dict[str, Bot], capsys: Any, decide: Any
) -> None:
    path = cli_config(tmp_path, migrated_sqlite, alertmanager.url, bots)
    code, out, err = await decide(
        path,
        "start",
        "--duration",
        "30m",
        "--reason",
        "venue upgrade 1",
        "--matcher",
        "instance=bot-1",
    )
    assert code == 0 and errors(err) == [], err
    assert out.startswith("maintenance window 1 open until") and "paused bot-1" in out
    assert (bots["bot-1"].state, bots["bot-2"].state) == ("paused", "active")
    (silence,) = silences_with(alertmanager, "venue upgrade 1")
    assert silence["status"]["state"] == "active" and silence["createdBy"] == CREATED_BY
    assert silence["matchers"] == [{"name": "instance", "value": "bot-1", "isRegex": False, "isEqual": True}]
    # The reconciler parks what the window matches: it is a bot maintenance window, and the alert finds it.
    assert is_bot_maintenance(silence, RECONCILER_CREATED_BY, ["bot-1", "bot-2"], ["TradingBotDown"])
    async with aiohttp.ClientSession() as session:
        client = AlertmanagerClient(session, alertmanager.url)
        labels = {"alertname": "TradingBotDown", "instance": "bot-1", "service": "tradingbot"}
        assert (await client.active_silence_for(labels, RECONCILER_CREATED_BY))["id"] == silence["id"]
        assert await client.active_silence_for({**labels, "instance": "bot-2"}, RECONCILER_CREATED_BY) is None

    code, out, err = await cli(capsys, "-c", path, "maintenance", "status")
    assert code == 0 and "window 1 [active]" in out and "silence state active" in out and "paused bot-1" in out

    code, out, err = await decide(path, "end")
    assert code == 0 and errors(err) == [], err
    assert "resumed bot-1" in out and f"silence {silence['id']} expired" in out
    assert bots["bot-1"].state == "active"
    # The bot's boards say who paused and resumed it: the maintenance window.
    registry = bots["bot-1"].instrumentation.registry
    for command in ("pause", "resume"):
        labels = {"command": command, "source": "maintenance"}
        assert registry.get_sample_value("tradingbot_control_commands_total", labels) == 1, command
    assert silences_with(alertmanager, "venue upgrade 1")[0]["status"]["state"] == "expired"
    code, out, _ = await cli(capsys, "-c", path, "maintenance", "list")
    assert code == 0 and "window 1 [ended]" in out and "paused none" in out
    code, out, _ = await cli(capsys, "-c", path, "maintenance", "status")
    assert (code, out) == (0, "no open maintenance window\n")
    # Both are audit entries under the person's token that asked (its name, its address), never the command's host.
    engine = make_engine(migrated_sqlite)
    try:
        entries = [(e.principal, e.source, e.action, e.decision) for e in reversed(audit.entries(engine))]
        who = (OPERATOR, "127.0.0.1")
        assert entries == [(*who, "maintenance_start", "maintenance:1"), (*who, "maintenance_end", "maintenance:1")]
        assert audit.verify(engine).whole
    finally:
        engine.dispose()


async def test_an_overlapping_window_for_the_same_matchers_is_refused(
    tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager, bots: dict[str, Bot], decide: Any
) -> None:
    path = cli_config(tmp_path, migrated_sqlite, alertmanager.url, bots)
    args = [
        "start",
        "--duration",
        "1h",
        "--reason",
        "overlap",
        "--matcher",
        "instance=bot-2",
    ]
    assert (await decide(path, *args))[0] == 0
    code, out, err = await decide(path, *args)
    assert code == 1 and out == ""
    (line,) = errors(err)
    assert "window 1" in line and "already open" in line and "Traceback" not in err
    assert len(silences_with(alertmanager, "overlap")) == 1  # nothing was done for the refused one
    # Other matchers are another window.
    code, _, err = await decide(path, "start", "--duration", "1h", "--reason", "r")
    assert code == 0, err
    # With two open, `end` needs an id.
    code, _, err = await decide(path, "end")
    assert code == 1 and len(errors(err)) == 1 and "give --id" in err
    assert (await decide(path, "end", "--id", "1"))[0] == 0


async def test_a_bot_already_paused_stays_paused_at_the_end(
    tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager, bots: dict[str, Bot]
) -> None:
    config = ops_config(tmp_path, migrated_sqlite, alertmanager_url=alertmanager.url, bots=bots)
    await bots["bot-2"].instrumentation.control.run("pause", {"reason": "operator"})
    async with aiohttp.ClientSession() as session:
        m = Maintenance(config, make_engine(migrated_sqlite), session)
        opened = await m.start(parse_matchers([]), 600, "all bots")
        assert json.loads(opened.window.paused_bots) == ["bot-1"]
        ended = await m.end(opened.window.id)
    assert ended.problems == [] and (bots["bot-1"].state, bots["bot-2"].state) == ("active", "paused")


def gauges(migrated: str) -> tuple[CollectorRegistry, MaintenanceWindowsCollector]:
    """The maintenance gauges as a replica exports them, read from the database."""
    registry = CollectorRegistry()
    return registry, register_maintenance_metrics(registry, make_engine(migrated))


def recorded(registry: CollectorRegistry, collector: MaintenanceWindowsCollector) -> tuple[float | None, float | None]:
    collector.read()
    return (
        registry.get_sample_value("tradingops_maintenance_windows_open"),
        registry.get_sample_value("tradingops_maintenance_window_recorded_end_timestamp_seconds"),
    )


async def test_a_window_ends_by_itself_and_housekeeping_resumes_its_bots(
    tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager, bots: dict[str, Bot]
) -> None:
    config = ops_config(tmp_path, migrated_sqlite, alertmanager_url=alertmanager.url, bots=bots)
    registry, collector = gauges(migrated_sqlite)
    async with aiohttp.ClientSession() as session:
        m = Maintenance(config, make_engine(migrated_sqlite), session)
        opened = await m.start({"instance": "bot-1"}, 1800, "short")
        await m.housekeeping()
        assert recorded(registry, collector) == (1, opened.window.ends_at.timestamp())
        assert bots["bot-1"].state == "paused"
        # Half an hour later Alertmanager has expired the silence itself; housekeeping resumes the bot.
        (closed,) = await m.housekeeping(now=utcnow() + timedelta(minutes=31))
    assert closed.window.state == "expired" and closed.done == ["resumed bot-1"]
    assert bots["bot-1"].state == "active"
    assert recorded(registry, collector) == (0, 0)


async def test_a_bot_that_cannot_be_resumed_keeps_the_window_open_for_the_overrun_alert(
    tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager, bots: dict[str, Bot]
) -> None:
    config = ops_config(tmp_path, migrated_sqlite, alertmanager_url=alertmanager.url, bots=bots)
    registry, collector = gauges(migrated_sqlite)
    async with aiohttp.ClientSession() as session:
        m = Maintenance(config, make_engine(migrated_sqlite), session)
        opened = await m.start({"instance": "bot-1"}, 60, "bot goes away")
        config.reconciler.targets["bot-1"].url = f"http://127.0.0.1:{free_port()}"  # the bot is gone
        (outcome,) = await m.housekeeping(now=utcnow() + timedelta(minutes=2))
        assert "bot-1: resume failed" in outcome.problems[0]
        assert json.loads(outcome.window.paused_bots) == ["bot-1"] and "resume failed" in outcome.window.problems
        assert recorded(registry, collector) == (1, opened.window.ends_at.timestamp())
        # Back again: the next housekeeping resumes it.
        config.reconciler.targets["bot-1"].url = bots["bot-1"].url
        await m.housekeeping(now=utcnow() + timedelta(minutes=3))
    assert bots["bot-1"].state == "active" and recorded(registry, collector) == (0, 0)


async def test_with_alertmanager_down_it_says_so_and_records_it(
    tmp_path: Path, migrated_sqlite: str, bots: dict[str, Bot], capsys: Any, decide: Any
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    path = cli_config(tmp_path, migrated_sqlite, down, bots)
    code, out, err = await decide(path, "start", "--duration", "10m", "--reason", "r", "--matcher", "instance=bot-1")
    (line,) = errors(err)
    assert code == 1 and out == ""
    assert f"Alertmanager at {down} could not be reached: no silence created" in line
    assert bots["bot-1"].state == "paused"  # what it could do, it did
    code, out, _ = await cli(capsys, "-c", path, "maintenance", "status")
    assert "silence none" in out and "problem:" in out and "no silence created" in out


async def test_a_window_is_decided_only_with_a_persons_token_of_the_operate_scope(
    tmp_path: Path, migrated_sqlite: str, bots: dict[str, Bot], capsys: Any, decide: Any, monkeypatch: Any
) -> None:
    """No token: one line naming where it is read from (exit 2); a token of scope read: the reconciler's 403 in one
    line (exit 1); a window that could silence the pipeline's own pages (a bot's instance alone) needs destructive,
    and the refusal says how to keep it to the bot's alerts. Nothing opened, nothing paused, nothing audited."""
    path = cli_config(tmp_path, migrated_sqlite, "http://127.0.0.1:9", bots)
    monkeypatch.delenv("TRADING_OPS_TOKEN_FILE", raising=False)
    monkeypatch.delenv("TRADING_OPS_TOKEN", raising=False)
    code, out, err = await cli(capsys, "-c", path, "maintenance", "start", "--duration", "1h", "--reason", "r")
    assert (code, out) == (2, "") and errors(err) == [
        "trading-ops: maintenance: needs your own token of reconciler.api_tokens (--token-file FILE, "
        "$TRADING_OPS_TOKEN_FILE or $TRADING_OPS_TOKEN): the decision is recorded under that token's name"
    ], err
    argv = ("start", "--duration", "1h", "--reason", "r", "--matcher", "instance=bot-1")
    code, out, err = await decide(path, *argv, person="viewer")
    assert (code, out) == (1, "") and errors(err) == [
        "trading-ops: maintenance: opening a maintenance window needs the 'operate' scope; token 'viewer' has 'read'"
    ], err
    code, out, err = await decide(path, "end", "--id", "1", person="viewer")
    assert code == 1 and "ending a maintenance window needs the 'operate' scope" in errors(err)[0]
    code, out, err = await decide(path, *argv, person="ops")
    (line,) = errors(err)
    assert code == 1 and line.startswith("trading-ops: maintenance: this window would silence the alerting pipeline's")
    assert line.endswith(
        "that needs the 'destructive' scope; token 'ops' has 'operate' (a window of bots' alerts only matches "
        "service=tradingbot too)"
    )
    assert bots["bot-1"].state == "active"
    assert (await cli(capsys, "-c", path, "maintenance", "list"))[1] == "no maintenance windows recorded\n"
    engine = make_engine(migrated_sqlite)
    try:
        assert audit.entries(engine) == []
        # The bot's alerts only: the operate scope opens it, under that token's name.
        code, out, err = await decide(path, *argv, "--matcher", "service=tradingbot", person="ops")
        assert code == 1 and "no silence created" in errors(err)[0]  # this test's Alertmanager is not there
        assert bots["bot-1"].state == "paused"
        ((principal, action),) = [(e.principal, e.action) for e in audit.entries(engine)]
        assert (principal, action) == ("ops", "maintenance_start")
    finally:
        engine.dispose()


async def test_a_silence_alertmanager_missed_is_created_late_by_housekeeping(
    tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager, bots: dict[str, Bot], decide: Any
) -> None:
    """Alertmanager is down when the window opens: recorded without a silence; back up, the next housekeeping creates
    the silence the window should have had, for the window's own end, and records it."""
    down = f"http://127.0.0.1:{free_port()}"
    reason = f"late {tmp_path.name}"
    code, _, err = await decide(
        cli_config(tmp_path, migrated_sqlite, down, bots),
        *("start", "--duration", "20m", "--reason", reason, "--matcher", "instance=bot-2"),
    )
    assert code == 1 and "no silence created" in errors(err)[0]
    assert silences_with(alertmanager, reason) == []
    config = ops_config(tmp_path, migrated_sqlite, alertmanager_url=alertmanager.url, bots=bots)
    async with aiohttp.ClientSession() as session:
        m = Maintenance(config, make_engine(migrated_sqlite), session)
        (window,) = m.windows(open_only=True)
        assert window.silence_id is None
        (outcome,) = await m.housekeeping()
        assert outcome.done == [f"silence {outcome.window.silence_id}"] and outcome.window.silence_id
        assert "created late" in outcome.window.problems
        assert await m.housekeeping() == []  # created once: nothing left to retry
    (silence,) = silences_with(alertmanager, reason)
    assert silence["id"] == outcome.window.silence_id and silence["status"]["state"] == "active"
    assert silence["matchers"] == [{"name": "instance", "value": "bot-2", "isRegex": False, "isEqual": True}]
    ends = datetime.fromisoformat(silence["endsAt"].replace("Z", "+00:00"))
    assert abs((ends - window.ends_at.replace(tzinfo=UTC)).total_seconds()) < 1
    assert bots["bot-2"].state == "paused"  # the window is still on


async def test_end_with_alertmanager_down_resumes_the_bots_and_says_what_it_could_not_do(
    tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager, bots: dict[str, Bot], capsys: Any, decide: Any
) -> None:
    reason = f"end down {tmp_path.name}"
    up = cli_config(tmp_path, migrated_sqlite, alertmanager.url, bots)
    args = ("--duration", "10m", "--reason", reason, "--matcher", "instance=bot-1")
    assert (await decide(up, "start", *args))[0] == 0
    (silence,) = silences_with(alertmanager, reason)
    down = tmp_path / "down"
    down.mkdir()
    path = cli_config(down, migrated_sqlite, f"http://127.0.0.1:{free_port()}", bots)
    code, out, err = await decide(path, "end")
    assert code == 1 and out == ""
    (line,) = errors(err)
    assert "window 1 ended, but: silence" in line and "not expired (it ends by itself at its end)" in line
    assert bots["bot-1"].state == "active"  # what it could do, it did
    # The window is over in the record; the silence keeps its own end in Alertmanager.
    code, out, _ = await cli(capsys, "-c", path, "maintenance", "list")
    assert code == 0 and "window 1 [ended]" in out and "paused none" in out
    assert silences_with(alertmanager, reason)[0]["status"]["state"] == "active"
    assert silences_with(alertmanager, reason)[0]["endsAt"] == silence["endsAt"]
    code, out, _ = await cli(capsys, "-c", path, "maintenance", "status")
    assert (code, out) == (0, "no open maintenance window\n")


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--duration", "soon", "--reason", "r"], "expected a duration"),
        (["--duration", "0s", "--reason", "r"], "duration must be more than 0s"),
        (["--duration", "30d", "--reason", "r"], "at most 7d"),
        (["--duration", "1h", "--reason", " "], "--reason must not be empty"),
        (["--duration", "1h", "--reason", "r", "--matcher", "a b=c"], "expected label=value"),
        (["--duration", "1h", "--reason", "r", "--matcher", "instance=~bot.*"], "expected label=value"),
        (["--duration", "1h", "--reason", "r", "--matcher", "instance"], "expected label=value"),
    ],
)
async def test_bad_input_is_one_line(
    tmp_path: Path, migrated_sqlite: str, argv: list[str], problem: str, capsys: Any
) -> None:
    path = cli_config(tmp_path, migrated_sqlite, "http://127.0.0.1:9", {})
    code, out, err = await cli(capsys, "-c", path, "maintenance", "start", *argv)
    assert code in (1, 2) and out == "" and err.count("\n") == 1 and problem in errors(err)[0], err
    assert (await cli(capsys, "-c", path, "maintenance", "list"))[1] == "no maintenance windows recorded\n"


async def test_a_label_value_with_shell_characters_is_just_a_value(
    tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager
) -> None:
    config: Config = ops_config(tmp_path, migrated_sqlite, alertmanager_url=alertmanager.url)
    value = "x; rm -rf / $(id)"
    async with aiohttp.ClientSession() as session:
        m = Maintenance(config, make_engine(migrated_sqlite), session)
        opened = await m.start(parse_matchers([f"instance={value}"]), 60, "shell characters")
        await m.end(opened.window.id)
    (silence,) = silences_with(alertmanager, "shell characters")
    assert silence["matchers"][0]["value"] == value
    with pytest.raises(MaintenanceError):
        parse_matchers(["instance=a", "instance=b"])


async def test_a_scheduled_window_opens_on_its_slot_and_closes_by_itself(
    tmp_path: Path, migrated: str, alertmanager: Alertmanager, bots: dict[str, Bot]
) -> None:
    """maintenance.windows through the scheduler: the slot (this minute, UTC) opens the window for what is left of
    its duration, once across two replicas; at its end housekeeping resumes the bot (on SQLite and PostgreSQL)."""
    from trading_ops.ops.scheduler import Scheduler
    from trading_ops.reconciler.jobs import configured_jobs

    slot = utcnow().replace(second=0, microsecond=0)
    reason = f"scheduled {tmp_path.name}"
    window = {"schedule": f"{slot.minute} {slot.hour} * * *", "duration": "30m", "reason": reason}
    window["matchers"] = {"instance": "bot-2"}  # type: ignore[assignment]
    config = ops_config(
        tmp_path, migrated, alertmanager_url=alertmanager.url, bots=bots, maintenance={"windows": {"nightly": window}}
    )
    replicas = [
        Scheduler(config, make_engine(migrated), configured_jobs(config), CollectorRegistry(), f"replica-{i}")
        for i in range(2)
    ]
    started = await asyncio.gather(*(r.tick() for r in replicas))
    runs = [t for ts in started for t in ts if t.get_name() == "job:maintenance_window:nightly"]
    assert len(runs) == 1
    await asyncio.gather(*runs)
    assert bots["bot-2"].state == "paused" and bots["bot-1"].state == "active"
    (silence,) = silences_with(alertmanager, reason)
    assert silence["status"]["state"] == "active"
    async with aiohttp.ClientSession() as session:
        m = Maintenance(config, make_engine(migrated), session)
        (opened,) = m.windows(open_only=True)
        assert (opened.created_by, opened.ends_at) == ("schedule:nightly", slot + timedelta(minutes=30))
        await m.housekeeping(now=slot + timedelta(minutes=31))
        assert m.windows(open_only=True) == []
    assert bots["bot-2"].state == "active"


async def test_the_reconciler_acts_on_nothing_a_window_matches(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager, bots: dict[str, Bot]
) -> None:
    """A real reconciler (silences checked against the real Alertmanager) parks the episode of a bot in a window
    opened by `maintenance start`, executes nothing, and acts on a bot outside it."""
    from reconciler_server import AUTH, READ_AUTH, make_config, write_playbook
    from webhook_payloads import alert, payload

    from trading_ops.reconciler.app import create_app

    rule = {
        "name": "status",
        "match": ['alertname="TradingBotBrokerDisconnected"'],
        "verify": False,
        "cooldown": 0,
        "steps": [{"action": "bot", "command": "status"}],
    }
    write_secret(tmp_path / "bot-token", "bot-token")
    targets = {n: {"url": b.url, "token_file": str(tmp_path / "bot-token")} for n, b in bots.items()}
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, [rule])),
        alertmanager_url=alertmanager.url,
        check_silences=True,
        targets=targets,
    )
    async with aiohttp.ClientSession() as session:
        m = Maintenance(config, make_engine(migrated_sqlite), session)
        opened = await m.start({"instance": "bot-1"}, 600, f"parks {tmp_path.name}")
        try:
            client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
            body = payload(alert(instance="bot-1", fingerprint="in"), alert(instance="bot-2", fingerprint="out"))
            assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
            episodes: dict[str, Any] = {}
            deadline = asyncio.get_running_loop().time() + 30
            while {episodes.get("bot-1", {}).get("state"), episodes.get("bot-2", {}).get("state")} != {
                "waiting",
                "recovered",
            }:
                assert asyncio.get_running_loop().time() < deadline, episodes
                await asyncio.sleep(0.05)
                listed = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
                episodes = {e["target"]: e for e in listed}
            parked = episodes["bot-1"]
            assert parked["detail"].startswith(f"maintenance silence {opened.window.silence_id} until ")
            assert parked["attempts"][0]["outcome"] == "skipped" and parked["attempts"][0]["steps"] == []
        finally:
            await m.end(opened.window.id)
