"""`trading-ops reconciler history|pause|resume` and `trading-ops playbook test|explain`: output and exit codes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import READ_AUTH, READ_TOKEN, TOKEN, alert, payload

from trading_ops.cli import main
from trading_ops.config import parse_config
from trading_ops.db.base import make_engine
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.engine import PAUSE_KEY
from trading_ops.reconciler.intake import validate
from trading_ops.reconciler.ledger import AlertIn, Ledger, NotificationIn

PLAYBOOKS = resources.files("trading_ops.reconciler").joinpath("playbooks")


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
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "read-token").write_text(READ_TOKEN)
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
    assert lines[row + 3].strip().startswith("HTTP 502 xxx") and lines[row + 3].endswith("... (+2 lines)")
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


def test_pause_and_resume_switch_every_replica_and_resume_wakes_parked_episodes(
    tmp_path: Path, migrated_sqlite: str, capsys: pytest.CaptureFixture
) -> None:
    cfg = config_file(tmp_path, migrated_sqlite)
    ledger = Ledger(make_engine(migrated_sqlite))
    assert main(["-c", cfg, "reconciler", "pause"]) == 0
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
    assert main(["-c", cfg, "reconciler", "resume"]) == 0
    assert ledger.get_setting(PAUSE_KEY) == "0"
    assert "1 parked episode(s) looked at again now" in capsys.readouterr().out
    assert [i for i, _ in ledger.due(datetime.now(UTC), 10)] == [episode["id"]]


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
                "expect": {"actions": ["bot command=pause", "bot command=cancel_all", "bot command=flatten"]},
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
    assert "1. bot command=pause (refused: label 'instance' value 'x; reboot' does not match" in out
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
    assert restart.steps[0].params == {"container": "trading-ops-paper-bot"}
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
