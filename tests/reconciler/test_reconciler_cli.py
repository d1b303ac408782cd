"""`trading-ops reconciler history|pause|resume` and `trading-ops playbook test|explain`: output and exit codes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import Alertmanager
from fake_bot import FakeBot, bot_targets
from ports import free_port
from reconciler_server import AUTH, READ_AUTH, READ_TOKEN, TOKEN, make_config, write_playbook
from secret_file import write_secret
from webhook_payloads import alert, payload, starts

from trading_ops import audit
from trading_ops.cli import main
from trading_ops.config import parse_config
from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.db.errors import NOT_MIGRATED
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.intake import validate
from trading_ops.reconciler.ledger import PAUSE_KEY, AlertIn, Ledger, NotificationIn

PLAYBOOKS = resources.files("trading_ops.reconciler").joinpath("playbooks")
REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "trading-ops"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """main() points logging at this test's captured stderr; later tests must not write to it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def config_file(tmp_path: Path, db_url: str, token: bool = True, **reconciler: Any) -> str:
    path = tmp_path / "c.yaml"
    write_secret(tmp_path / "token", TOKEN)
    write_secret(tmp_path / "read-token", READ_TOKEN)
    files = {"token_file": str(tmp_path / "token"), "read_token_file": str(tmp_path / "read-token")}
    rc = {**files, **reconciler} if token else reconciler
    path.write_text(yaml.safe_dump({"database": {"url": db_url}, "reconciler": rc}))
    return str(path)


def store_waiting(ledger: Ledger, fingerprint: str = "abc") -> None:
    """An episode of the broker-reconnect rule held back for an hour (its wait_for)."""
    v = validate(payload(alert(fingerprint=fingerprint)))
    a = v.alerts[0]
    labels = a["labels"]
    item = AlertIn(
        "firing", fingerprint, a["starts_at"], labels["alertname"], labels, {}, "", "broker-reconnect", "bot-1", 3600
    )
    ledger.store([NotificationIn("r", "firing", "g", "{}", [item])])


async def test_history_prints_attempts_and_steps_and_json_exactly_as_the_api(
    tmp_path: Path, migrated_sqlite: str, capsys: pytest.CaptureFixture, aiohttp_client: Any
) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    store_waiting(ledger)
    store_waiting(ledger, "def")
    (first, _) = sorted(e["id"] for e in ledger.list_episodes())
    attempt = ledger.start_attempt(first, "host-1:x")
    step = ledger.start_step(attempt, 0, "bot", "bot command=reconnect", "safe", "bot-1", True)
    ledger.finish_step(step, "failure", "HTTP 502 " + "x" * 200 + "\nsecond line\nthird line")
    ledger.finish_attempt(attempt, "failure", "bot command=reconnect: failure")
    cfg = config_file(tmp_path, migrated_sqlite)
    assert main(["-c", cfg, "reconciler", "history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATE", "ALERT"]
    row = next(i for i, line in enumerate(lines) if line.startswith(f"{first} "))
    assert "TradingBotBrokerDisconnected" in lines[row] and "broker-reconnect" in lines[row]
    # Under the episode: its attempt, then each step with risk, outcome and duration, then its output, cut short.
    assert lines[row + 1].split()[:3] == ["attempt", "1", "failure"] and "by host-1:x" in lines[row + 1]
    assert lines[row + 2].split()[:5] == ["1.", "bot", "command=reconnect", "[safe]", "failure"]
    assert lines[row + 2].split()[5].endswith(("ms", "s"))
    # The first line (cut) and the last one, which usually names the error, and how many lines are left out.
    assert lines[row + 3].strip().startswith("HTTP 502 xxx") and lines[row + 3].endswith("...: third line (+1 line)")
    assert len(lines[row + 3].strip()) <= 80
    assert main(["-c", cfg, "reconciler", "history", "--brief"]) == 0
    assert not any(line.strip().startswith("attempt") for line in capsys.readouterr().out.splitlines())
    assert main(["-c", cfg, "reconciler", "history", "--json"]) == 0
    from_cli = json.loads(capsys.readouterr().out)
    client = await aiohttp_client(create_app(parse_config(yaml.safe_load(Path(cfg).read_text()), base_dir=tmp_path)))
    from_api = await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json()
    assert from_cli == from_api
    steps = from_cli["episodes"][-1]["attempts"][0]["steps"]
    assert steps[0]["output"].startswith("HTTP 502") and steps[0]["duration_seconds"] >= 0


async def test_history_of_a_waiting_episode_says_what_held_it_and_why_it_waits(
    tmp_path: Path, migrated_sqlite: str, aiohttp_client: Any, fake_bot: FakeBot
) -> None:
    # Paused through the console script, then an alert: the real engine parks its episode (nothing executed) and
    # `history ID` says so, in the `waited:` record and as the reason it waits.
    cfg = config_file(tmp_path, migrated_sqlite)
    rule = {
        "name": "reconnect",
        "match": ['alertname="TradingBotBrokerDisconnected"'],
        "steps": [{"action": "bot", "command": "reconnect"}],
    }
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, [rule])),
        targets=bot_targets(fake_bot, tmp_path),
        api_tokens=operator_tokens(tmp_path),
    )
    client = await aiohttp_client(create_app(config))
    paused = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "pause", *as_operator(tmp_path, client))
    assert paused.returncode == 0, paused.stderr
    assert (await client.post("/api/v1/alertmanager", json=payload(alert()), headers=AUTH)).status == 200
    (episode,) = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
    episode = await wait_episode(client, episode["id"], lambda e: e["state"] == "waiting" and e["attempts"])
    shown = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "history", str(episode["id"]))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"episode {episode['id']}: TradingBotBrokerDisconnected on bot-1  state waiting" in lines[0]
    assert any(line.startswith("  next run     ") for line in lines), shown.stdout
    waited = lines.index("  waited:")
    assert lines[waited + 1].endswith("UTC  reconciler paused: re-checked on resume: nothing executed"), shown.stdout
    assert "  attempts: none (nothing was executed)" in lines
    assert lines[-1] == "  why it waits: reconciler paused: re-checked on resume"
    assert fake_bot.commands() == []


def operator_tokens(tmp_path: Path) -> list[dict[str, str]]:
    """reconciler.api_tokens of two people: `oncall` (scope operate) and `viewer` (read), in tmp_path/NAME-token."""
    tokens = []
    for name, scope in (("oncall", "operate"), ("viewer", "read")):
        write_secret(tmp_path / f"{name}-token", f"{name}-secret-token")
        tokens.append({"name": name, "scope": scope, "token_file": str(tmp_path / f"{name}-token")})
    return tokens


def as_operator(tmp_path: Path, client: Any, name: str = "oncall") -> tuple[str, ...]:
    """The options of a deciding command run by `name` with their own token, against the test's reconciler."""
    return ("--token-file", str(tmp_path / f"{name}-token"), "--url", str(client.make_url("")).rstrip("/"))


async def test_pause_and_resume_switch_every_replica_and_resume_wakes_parked_episodes(
    tmp_path: Path, migrated_sqlite: str, capsys: pytest.CaptureFixture, aiohttp_client: Any
) -> None:
    cfg = config_file(tmp_path, migrated_sqlite)
    config = make_config(tmp_path, migrated_sqlite, api_tokens=operator_tokens(tmp_path))
    client = await aiohttp_client(create_app(config))
    ledger = Ledger(make_engine(migrated_sqlite))

    def run(*argv: str, name: str = "oncall") -> int:
        return int(main(["-c", cfg, "reconciler", *argv, *as_operator(tmp_path, client, name)]))

    # A token of scope read may not: one line, the reconciler's 403 naming the scope; nothing switched.
    capsys.readouterr()
    assert await asyncio.to_thread(run, "pause", name="viewer") == 1
    # Its one line among the test server's log lines (its refusal's warning, aiohttp's access log: on the stderr the
    # command's logging set up, in either order).
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops:")]
    assert said == [
        "trading-ops: reconciler pause: pausing the reconciler needs the 'operate' scope; token 'viewer' has 'read'"
    ]
    assert ledger.get_setting(PAUSE_KEY) != "1"
    assert await asyncio.to_thread(run, "pause") == 0
    assert ledger.get_setting(PAUSE_KEY) == "1"
    store_waiting(ledger)
    (episode,) = ledger.list_episodes()
    # What a paused engine does with a due episode: park it (looked at again in a while, or on resume).
    now = datetime.now(UTC)
    ledger.set_episode(
        episode["id"], detail="reconciler paused: re-checked on resume", next_run_at=now + timedelta(hours=1)
    )
    assert ledger.due(now, 10) == []
    capsys.readouterr()
    assert await asyncio.to_thread(run, "resume") == 0
    assert ledger.get_setting(PAUSE_KEY) == "0"
    assert "1 parked episode(s) looked at again now" in capsys.readouterr().out
    # Each switch is an audit entry under the person's token that asked (from its address), before and after.
    entries = [(e.principal, e.source, e.action, e.before, e.after) for e in reversed(audit.entries(ledger.engine))]
    assert entries == [
        ("oncall", "127.0.0.1", "reconciler_pause", {"paused": False}, {"paused": True}),
        ("oncall", "127.0.0.1", "reconciler_resume", {"paused": True}, {"paused": False, "episodes_woken": 1}),
    ]
    ledger.engine.dispose()


def test_playbook_test_passes_and_fails_like_amtool(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = {
        "cases": [
            {
                "name": "disconnect reconnects",
                "labels": {"alertname": "TradingBotBrokerDisconnected", "instance": "b"},
                "expect": {"rule": "broker-reconnect", "actions": ["bot command=reconnect"], "target": "b"},
            },
            {
                "name": "loss limit flattens",
                "labels": {"alertname": "TradingBotDailyLossBreached", "instance": "b"},
                "expect": {"actions": ["bot command=cancel_all", "bot command=flatten"]},
            },
            {"name": "watchdog has no rule", "labels": {"alertname": "Watchdog"}, "expect": {"rule": None}},
        ]
    }
    (tmp_path / "cases.yml").write_text(yaml.safe_dump(cases))
    assert main(["playbook", "test", str(tmp_path / "cases.yml")]) == 0
    assert "3/3 cases passed" in capsys.readouterr().out
    cases["cases"][0]["expect"]["actions"] = ["bot command=flatten"]
    (tmp_path / "cases.yml").write_text(yaml.safe_dump(cases))
    assert main(["playbook", "test", str(tmp_path / "cases.yml")]) == 1
    assert "FAIL  disconnect reconnects: actions" in capsys.readouterr().out


def test_playbook_test_with_a_refusing_playbook_shows_the_refusal(tmp_path: Path, capsys) -> None:
    (tmp_path / "pb.yml").write_text(
        yaml.safe_dump(
            {"rules": [{"name": "r", "match": ['alertname="A"'], "steps": [{"action": "bot", "command": "flatten"}]}]}
        )
    )
    (tmp_path / "cases.yml").write_text(
        yaml.safe_dump(
            {
                "playbook": "pb.yml",
                "cases": [
                    {
                        "name": "refused",
                        "labels": {"alertname": "A"},
                        "expect": {"actions": ["bot command=flatten (refused: destructive not allowed)"]},
                    }
                ],
            }
        )
    )
    assert main(["playbook", "test", str(tmp_path / "cases.yml")]) == 0


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "pb.yml").write_text("rules: [{name: r, match: ['a'], steps: []}]\n")
    (tmp_path / "cases.yml").write_text("cases: []\n")
    assert main(["playbook", "test", str(tmp_path / "cases.yml"), "--playbook", str(tmp_path / "pb.yml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trading-ops: playbook: ") and "rules[0].match[0]" in err and "\n" not in err
    (tmp_path / "p.json").write_text(json.dumps({"version": "3"}))
    assert main(["playbook", "explain", str(tmp_path / "p.json")]) == 2
    assert "version: unsupported" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("playbook", "message"),
    [
        (
            "rules: [{name: r, match: ['alertname=\"A\"'], steps: [{action: bot, command: reconnect, name: 123}]}]",
            "rules[0].steps[0].name: expected a string or nothing (null), got 123",
        ),
        (
            "rules: [{name: r, match: {job=~a: x}, steps: [{action: bot, command: reconnect}]}]",
            "rules[0].match: 'job=~a' is not a label name (a mapping's keys are; =~, != and !~ take the list form)",
        ),
        (
            "rules: [{name: r, match: {alertname: true}, steps: [{action: bot, command: reconnect}]}]",
            "rules[0].match.alertname: expected a string or a number, got True",
        ),
        (
            "defaults: {match: ['alertname=\"A\"']}\nrules: [{name: r, steps: [{action: bot, command: reconnect}]}]",
            "defaults.match: a rule's own key, not a default (each rule gives its own match)",
        ),
    ],
)
def test_a_playbook_the_schema_refuses_is_refused_in_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, playbook: str, message: str
) -> None:
    """What the loader once read as text (a step named 123, `job=~a` read as a regex matcher, true as "True", a rule's
    own key in defaults) is refused by `playbook test` as `playbook schema` refuses it."""
    (tmp_path / "pb.yml").write_text(playbook + "\n")
    (tmp_path / "cases.yml").write_text("cases: []\n")
    assert main(["playbook", "test", str(tmp_path / "cases.yml"), "--playbook", str(tmp_path / "pb.yml")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"trading-ops: playbook: {tmp_path / 'pb.yml'}: {message}\n"
    assert captured.out == ""


def test_explain_prints_the_plan_of_a_recorded_webhook(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    body = payload(
        # What a webhook says the expression is counts for nothing: the engine reads Prometheus's rule of that name.
        alert(fingerprint="a", generator_url="http://p/graph?g0.expr=count%28up%29+%3E+1e12"),
        alert("TradingBotDailyLossBreached", fingerprint="b"),
        alert("Watchdog", fingerprint="w"),
        alert(fingerprint="c", status="resolved", starts_at="2026-01-01T00:01:00Z"),
        alert(fingerprint="d", starts_at="9999-12-31T23:59:59.999Z"),
    )
    (tmp_path / "p.json").write_text(json.dumps(body))
    assert main(["playbook", "explain", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "rule broker-reconnect on target bot-1" in out
    assert (
        "verify until clear within 60s: the expression of Prometheus's alerting rule TradingBotBrokerDisconnected"
        in out
    )
    assert "1e12" not in out
    assert (
        "- invalid alert, no episode (the others are stored): "
        "alerts[4].startsAt: 9999-12-31T23:59:59.999Z is in the future" in out
    )
    assert "bot command=flatten [destructive" in out and "refused" not in out
    assert "feeds the dead man's switch" in out and "closes episode" in out
    # What a run does after the reconciler died while a step ran (the playbook's on_unknown, or the step's risk).
    assert "bot command=reconnect [safe, timeout 15s, if its outcome is unknown: retry]" in out
    assert "bot command=flatten [destructive, timeout 15s, if its outcome is unknown: escalate]" in out


def test_serving_without_a_token_exits_2(tmp_path: Path, migrated_sqlite: str, monkeypatch, capsys) -> None:
    monkeypatch.delenv("TRADING_OPS_RECONCILER_TOKEN", raising=False)
    assert main(["-c", config_file(tmp_path, migrated_sqlite, token=False), "reconciler"]) == 2
    assert "reconciler.token: no webhook token" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["default", "docker"])
def test_the_packaged_playbooks_pass_their_cases(name: str, capsys: pytest.CaptureFixture) -> None:
    cases = PLAYBOOKS.joinpath(f"{name}-cases.yml")
    assert main(["playbook", "test", str(cases)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.strip().endswith(f"({PLAYBOOKS.joinpath(f'{name}.yml')})")


def test_explain_validates_label_values_as_the_engine_does(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    body = payload(alert("TradingBotDailyLossBreached", fingerprint="a", instance="x; reboot"))
    (tmp_path / "p.json").write_text(json.dumps(body))
    assert main(["playbook", "explain", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "1. bot command=cancel_all (refused: label 'instance' value 'x; reboot' does not match" in out
    # The page's ${instance} too: no text for people is filled in with a value that failed validation.
    assert "once recovered: escalate alertname=TradingOpsBotFlattened" in out
    assert "(refused: label 'instance' value 'x; reboot' does not match" in out.split("once recovered:", 1)[1]
    # The verification query is not rendered with a value that failed validation.
    assert "verify until clear within 60s: refused (label 'instance' value 'x; reboot'" in out
    assert 'instance="x; reboot"' not in out


def test_reconciler_playbook_takes_a_packaged_name_or_a_file(tmp_path: Path, migrated_sqlite: str) -> None:
    def app_for(playbook: str) -> Any:
        data = yaml.safe_load(Path(config_file(tmp_path, migrated_sqlite, playbook=playbook)).read_text())
        return create_app(parse_config(data, base_dir=tmp_path))

    docker = app_for("docker")[keys.PLAYBOOK]
    restart = docker.match({"alertname": "TradingBotDown", "instance": "paper-bot:9101"})
    assert restart is not None and [s.action for s in restart.steps] == ["docker"]
    assert restart.steps[0].params == {}  # the bot's own container (bots[].container), never a label's
    assert "default.yml" in app_for("default")[keys.PLAYBOOK].source
    (tmp_path / "mine.yml").write_text(
        yaml.safe_dump({"rules": [{"name": "r", "match": ['alertname="A"'], "steps": [{"action": "notify"}]}]})
    )
    assert [r.name for r in app_for("mine.yml")[keys.PLAYBOOK].rules] == ["r"]  # relative to the config file


@pytest.mark.parametrize(
    ("playbook", "message"),
    [
        ("nope", "reconciler.playbook: 'nope' is neither a packaged playbook (default, docker) nor a playbook file"),
        ("broken.yml", "reconciler.playbook: "),
    ],
)
def test_a_wrong_playbook_is_one_config_error_and_exit_2(
    tmp_path: Path, migrated_sqlite: str, capsys: pytest.CaptureFixture, playbook: str, message: str
) -> None:
    (tmp_path / "broken.yml").write_text("rules: [{name: r, match: ['a'], steps: []}]\n")
    assert main(["-c", config_file(tmp_path, migrated_sqlite, playbook=playbook), "reconciler"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"trading-ops: config: {message}") and "\n" not in err


# ---- an operator's commands: history ID, --payload, retry, ack, playbook route (through the console script) ---


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The `trading-ops` console script a user runs (beside this Python), on this checkout's code."""
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


async def wait_episode(client: Any, episode_id: int, done: Any, deadline: float = 20.0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while True:
        episode = await (await client.get(f"/api/v1/episodes/{episode_id}", headers=READ_AUTH)).json()
        if done(episode):
            return episode  # type: ignore[no-any-return]
        if time.monotonic() > end:
            raise AssertionError(f"episode {episode_id} never got there: {episode}")
        await asyncio.sleep(0.05)


def ran(episode: dict[str, Any]) -> list[str]:
    """The outcomes of the attempts that executed steps (not a gate's record, not an operator's)."""
    return [a["outcome"] for a in episode["attempts"] if a["outcome"] not in ("skipped", "acknowledged", "retry")]


@pytest.mark.alertmanager
async def test_retry_runs_an_escalated_episode_once_more_only_while_its_alert_fires(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    """Needs the real Alertmanager (the fixture starts it): the retried run asks it whether the alert still fires."""
    instance = f"bot-retry-{uuid.uuid4().hex[:6]}"
    rule = {
        "name": "reconnect",
        "match": ['alertname="TradingBotBrokerDisconnected"'],
        "cooldown": 0,
        "max_attempts": 1,
        "verify": False,
        "steps": [{"action": "bot", "command": "reconnect"}],
    }
    fake_bot.status["reconnect"] = 500
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, [rule])),
        targets=bot_targets(fake_bot, tmp_path, instance),
        alertmanager_url=alertmanager.url,
        api_tokens=operator_tokens(tmp_path),
    )
    client = await aiohttp_client(create_app(config))
    oncall = as_operator(tmp_path, client)
    held = await asyncio.to_thread(
        alertmanager.fire, {"alertname": "TradingBotBrokerDisconnected", "instance": instance}
    )
    body = payload(
        alert(
            "TradingBotBrokerDisconnected",
            fingerprint=held["fingerprint"],
            starts_at=held["startsAt"],
            instance=instance,
        )
    )
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    (episode,) = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
    episode = await wait_episode(client, episode["id"], lambda e: e["state"] == "escalated")
    eid = str(episode["id"])
    cfg = config_file(tmp_path, migrated_sqlite)

    # The whole episode: its step's output, and why it escalated.
    whole = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "history", eid)
    assert whole.returncode == 0, whole.stderr
    assert f"episode {eid}: TradingBotBrokerDisconnected on {instance}  state escalated" in whole.stdout
    assert "1. bot command=reconnect  [safe]  failure" in whole.stdout and "| HTTP 500" in whole.stdout
    assert "why it escalated: bot command=reconnect: failure: HTTP 500" in whole.stdout
    # Its page, from the escalation outbox: Alertmanager took it at the first post.
    assert "pages (escalation outbox):" in whole.stdout
    assert (
        "TradingOpsRemediationFailed  owed " in whole.stdout
        and "0 failed post(s)  taken by Alertmanager" in whole.stdout
    )

    as_json = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "history", eid, "--json")
    assert json.loads(as_json.stdout) == await (await client.get(f"/api/v1/episodes/{eid}", headers=READ_AUTH)).json()

    # The notification as received, ready for `playbook explain`.
    saved = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "history", eid, "--payload")
    assert saved.returncode == 0 and json.loads(saved.stdout) == body
    (tmp_path / "payload.json").write_text(saved.stdout)
    playbook = str(tmp_path / "playbook.yml")
    explained = await asyncio.to_thread(
        run_cli, "-c", cfg, "playbook", "explain", str(tmp_path / "payload.json"), "--playbook", playbook
    )
    assert explained.returncode == 0 and f"rule reconnect on target {instance}" in explained.stdout

    # Retry while it still fires: one more run, which fails and escalates again.
    # A token of scope read may not: the reconciler's 403 in one line, nothing re-queued.
    viewer = as_operator(tmp_path, client, "viewer")
    refused = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "retry", eid, *viewer)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "trading-ops: reconciler retry: retrying an episode needs the 'operate' scope; token 'viewer' has 'read'"
    )
    retried = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "retry", eid, "--by", "alice", *oncall)
    assert retried.returncode == 0 and retried.stdout.startswith(f"episode {eid} re-queued"), retried.stderr
    episode = await wait_episode(client, int(eid), lambda e: e["state"] == "escalated" and len(ran(e)) == 2)
    assert fake_bot.commands() == ["reconnect", "reconnect"]
    assert [a["outcome"] for a in episode["attempts"]] == ["failure", "retry", "failure"]
    # Who retried it is the token that asked; --by is a comment beside it.
    assert episode["attempts"][1]["owner"] == "token 'oncall' from 127.0.0.1 (alice)"

    # Acknowledged: recorded and shown, nothing run. Who took it is the token that asked, never a typed name: --by is
    # a comment beside it, and a token of scope read may not (the reconciler's 403 in one line, nothing recorded).
    refused = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "ack", eid, "--by", "oncall", *viewer)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "trading-ops: reconciler ack: acknowledging an episode needs the 'operate' scope; token 'viewer' has 'read'"
    )
    acked = await asyncio.to_thread(
        run_cli, "-c", cfg, "reconciler", "ack", eid, "--by", "bob", "--note", "on it", *oncall
    )
    assert acked.returncode == 0 and acked.stdout.strip() == (
        f"episode {eid} acknowledged by token 'oncall' from 127.0.0.1 (bob)"
    ), acked.stderr
    whole = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "history", eid)
    assert "acknowledged by token 'oncall' from 127.0.0.1 (bob): on it" in whole.stdout
    episode = await (await client.get(f"/api/v1/episodes/{eid}", headers=READ_AUTH)).json()
    assert [a["owner"] for a in episode["attempts"] if a["outcome"] == "acknowledged"] == [
        "token 'oncall' from 127.0.0.1 (bob)"
    ]
    assert "retry by token 'oncall' from 127.0.0.1 (alice)" in whole.stdout

    # Resolved in Alertmanager meanwhile: the retry closes it resolved, nothing executed; then it is over.
    await asyncio.to_thread(alertmanager.resolve, held)
    retried = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "retry", eid, *oncall)
    assert retried.returncode == 0, retried.stderr
    episode = await wait_episode(client, int(eid), lambda e: e["state"] == "resolved")
    assert "no longer firing in Alertmanager" in episode["detail"]
    assert fake_bot.commands() == ["reconnect", "reconnect"]
    over = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "retry", eid, *oncall)
    assert over.returncode == 1 and over.stderr.strip().startswith(
        f"trading-ops: reconciler retry: episode {eid} is over"
    )


async def test_retry_refuses_an_open_or_recovered_episode_and_ack_does_not_count_as_a_run(
    tmp_path: Path, migrated_db: str, aiohttp_client: Any
) -> None:
    ledger = Ledger(make_engine(migrated_db))
    store_waiting(ledger)
    (episode,) = ledger.list_episodes()
    cfg = config_file(tmp_path, migrated_db)
    app = create_app(make_config(tmp_path, migrated_db, api_tokens=operator_tokens(tmp_path)))
    oncall = as_operator(tmp_path, await aiohttp_client(app))
    refused = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "retry", str(episode["id"]), *oncall)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"trading-ops: reconciler retry: episode {episode['id']} is waiting; only escalated or failed episodes "
        "are retried"
    )
    acked = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "ack", str(episode["id"]), *oncall)
    assert acked.returncode == 0, acked.stderr
    # An acknowledgement is no run of the rule: it starts no cooldown for the next episode on the target.
    later = datetime.now(UTC)
    assert ledger.cooldown_until("broker-reconnect", "bot-1", episode["id"] + 1, 3600, later) is None
    (row,) = ledger.list_episodes()
    assert row["state"] == "waiting" and [a["outcome"] for a in row["attempt_list"]] == ["acknowledged"]
    missing = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "ack", "999", *oncall)
    assert missing.returncode == 1 and missing.stderr.strip() == "trading-ops: reconciler ack: no episode 999"
    ledger.set_episode(episode["id"], state="recovered")
    recovered = await asyncio.to_thread(run_cli, "-c", cfg, "reconciler", "retry", str(episode["id"]), *oncall)
    assert recovered.returncode == 1 and "is recovered; only escalated or failed" in recovered.stderr
    ledger.engine.dispose()


def test_the_notification_of_an_episode_is_found_among_others(migrated_db: str) -> None:
    ledger = Ledger(make_engine(migrated_db))
    mine = payload(alert(fingerprint="aaa1"), alert(fingerprint="bbb2", instance="bot-2"))
    later = payload(alert(fingerprint="aaa1", starts_at=starts(60)))  # the same alert firing again: not this one
    for body in (payload(alert(fingerprint="ccc3")), mine, later):
        item = validate(body).alerts[0]
        labels = item["labels"]
        alert_in = AlertIn(
            "firing", item["fingerprint"], item["starts_at"], labels["alertname"], labels, {}, "", None, "bot-1"
        )
        ledger.store([NotificationIn("r", "firing", "g", json.dumps(body), [alert_in])])
    starts_at = validate(mine).alerts[0]["starts_at"]
    assert json.loads(ledger.notification_for("bbb2", starts_at) or "{}") == mine
    assert json.loads(ledger.notification_for("aaa1", starts_at) or "{}") == mine
    assert ledger.notification_for("aaa1", starts_at + timedelta(seconds=30)) is None
    assert ledger.notification_for("zzz9", starts_at) is None
    ledger.engine.dispose()


def test_the_history_table_shows_the_reason_that_matters(tmp_path: Path, migrated_sqlite: str) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    store_waiting(ledger)
    (episode,) = ledger.list_episodes()
    until = datetime(2026, 11, 23, 1, 16, 42, 123456, tzinfo=UTC)
    ledger.set_episode(episode["id"], detail=f"cooldown of rule broker-reconnect on bot-1 until {until}")
    attempt = ledger.start_attempt(episode["id"], "host-1:x")
    step = ledger.start_step(attempt, 0, "exec", "exec restart.sh", "safe", "bot-1", True)
    ledger.finish_step(step, "failure", "exit 1\nrestarting bot-1\nrestart.sh: unit bot-1.service not found")
    step = ledger.start_step(attempt, 1, "exec", "exec notify.sh", "safe", "bot-1", True)
    ledger.finish_step(step, "failure", "exit 2\none\ntwo\nnotify.sh: no route")
    table = run_cli("-c", config_file(tmp_path, migrated_sqlite), "reconciler", "history")
    assert table.returncode == 0, table.stderr
    assert "cooldown of rule broker-reconnect on bot-1 until 01:16:42" in table.stdout
    assert "exit 1: restart.sh: unit bot-1.service not found (+1 line)\n" in table.stdout
    assert "exit 2: notify.sh: no route (+2 lines)\n" in table.stdout
    ledger.engine.dispose()


def test_playbook_route_prints_the_rule_and_steps_for_an_alert_name() -> None:
    routed = run_cli("playbook", "route", "--alertname", "TradingBotDailyLossBreached", "--label", "instance=b:9101")
    assert routed.returncode == 0, routed.stderr
    out = routed.stdout
    assert "alert {alertname=TradingBotDailyLossBreached, instance=b:9101}" in out
    assert "1. bot command=cancel_all [destructive" in out and "2. bot command=flatten [destructive" in out
    assert "once recovered: escalate alertname=TradingOpsBotFlattened" in out
    unknown = run_cli("playbook", "route", "--alertname", "NoSuchAlert")
    assert unknown.returncode == 0 and "no rule matches: recorded as skipped" in unknown.stdout
    bad = run_cli("playbook", "route", "--alertname", "X", "--label", "novalue")
    assert bad.returncode == 2 and bad.stderr.strip() == "trading-ops: --label 'novalue' is not KEY=VALUE"


# ---- Type=notify: READY=1 once the ledger answers and the socket listens, never before --------------------------


def serve_under_notify(tmp_path: Path, db_url: str, port: int) -> tuple[subprocess.Popen[str], socket.socket]:
    """`trading-ops reconciler` as its systemd unit runs it: NOTIFY_SOCKET names a datagram socket of the test's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.1)
    config = config_file(tmp_path, db_url, listen={"host": "127.0.0.1", "port": port}, check_silences=False)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    proc = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "--config", config, "reconciler"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return proc, sock


def notifications(sock: socket.socket) -> list[str]:
    received = []
    while True:
        try:
            received.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return received


def test_the_reconciler_tells_systemd_it_is_ready_only_once_its_ledger_answers(
    tmp_path: Path, migrated_sqlite: str
) -> None:
    port = free_port()
    proc, sock = serve_under_notify(tmp_path, migrated_sqlite, port)
    try:
        received: list[str] = []
        end = time.monotonic() + 60
        while not any(m.startswith("READY=1") for m in received):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < end, "no READY=1 within 60 s"
            received += notifications(sock)
        # Ready means serving: the port answers at once, and the ledger too.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert response.status == 200
        ready = next(m for m in received if m.startswith("READY=1")).splitlines()
        assert f"STATUS=listening on 127.0.0.1:{port}" in ready and f"MAINPID={proc.pid}" in ready
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert any(m.startswith("STOPPING=1") for m in notifications(sock))
        assert f"reconciler listening on http://127.0.0.1:{port}" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


@pytest.mark.parametrize("problem", ["unreachable", "not-migrated", "behind"])
def test_a_reconciler_whose_database_does_not_answer_never_says_ready(
    tmp_path: Path, sqlite_url: str, problem: str
) -> None:
    """What left the unit `active` (Type=exec) for a second before it failed: no READY=1, no "listening" line, the
    one-line error, exit 1 (2 for a ledger never migrated or behind the head: a step of the install or upgrade is
    missing). Behind: at 0018, without the requests and audit tables, it served, and `readiness --record` got
    "internal error (logged)" from a `no such table` (issue 55)."""
    # A PostgreSQL that is not there (nothing listens on port 1): refused at once.
    url = "postgresql+psycopg://trading@127.0.0.1:1/trading" if problem == "unreachable" else sqlite_url
    if problem == "behind":
        migrate.upgrade(sqlite_url, "0018")
    proc, sock = serve_under_notify(tmp_path, url, free_port())
    try:
        _, stderr = proc.communicate(timeout=60)
        assert notifications(sock) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    assert "reconciler listening" not in stderr
    last = stderr.strip().splitlines()[-1]
    if problem == "unreachable":
        assert proc.returncode == 1 and "database unreachable" in last, stderr
    else:
        assert proc.returncode == 2, stderr
        assert last == f"trading-ops: config: database.url: {NOT_MIGRATED}", stderr
