"""`trading-ops reconciler history|pause|resume` and `trading-ops playbook test|explain`: output and exit codes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import alert, payload

from trading_ops.cli import main
from trading_ops.db.base import make_engine
from trading_ops.reconciler.engine import PAUSE_KEY
from trading_ops.reconciler.intake import validate
from trading_ops.reconciler.ledger import AlertIn, Ledger, NotificationIn


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """main() points logging at this test's captured stderr; later tests must not write to it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def config_file(tmp_path: Path, db_url: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": db_url}}))
    return str(path)


def test_history_prints_a_table_and_json(tmp_path: Path, migrated_sqlite: str, capsys: pytest.CaptureFixture) -> None:
    ledger = Ledger(make_engine(migrated_sqlite))
    v = validate(payload(alert(fingerprint="abc")))
    a = v.alerts[0]
    ledger.store(
        [
            NotificationIn(
                "r",
                "firing",
                "g",
                "{}",
                [
                    AlertIn(
                        "firing",
                        "abc",
                        a["starts_at"],
                        "TradingBotBrokerDisconnected",
                        a["labels"],
                        {},
                        "",
                        "broker-reconnect",
                        "bot-1",
                        3600,
                    )
                ],
            )
        ]
    )
    cfg = config_file(tmp_path, migrated_sqlite)
    assert main(["-c", cfg, "reconciler", "history"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["ID", "STATE", "ALERT"]
    assert "TradingBotBrokerDisconnected" in out and "waiting" in out and "broker-reconnect" in out
    assert main(["-c", cfg, "reconciler", "history", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["episodes"][0]["fingerprint"] == "abc" and data["episodes"][0]["attempts"] == []


def test_pause_and_resume_switch_every_replica(tmp_path: Path, migrated_sqlite: str) -> None:
    cfg = config_file(tmp_path, migrated_sqlite)
    ledger = Ledger(make_engine(migrated_sqlite))
    assert main(["-c", cfg, "reconciler", "pause"]) == 0
    assert ledger.get_setting(PAUSE_KEY) == "1"
    assert main(["-c", cfg, "reconciler", "resume"]) == 0
    assert ledger.get_setting(PAUSE_KEY) == "0"


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
                "labels": {"alertname": "TradingBotDailyLossBreached"},
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
        alert(fingerprint="a", generator_url="http://p/graph?g0.expr=tradingbot_broker_connected+%3D%3D+0"),
        alert("TradingBotDailyLossBreached", fingerprint="b"),
        alert("Watchdog", fingerprint="w"),
        alert(fingerprint="c", status="resolved", starts_at="2026-01-01T00:01:00Z"),
    )
    (tmp_path / "p.json").write_text(json.dumps(body))
    assert main(["playbook", "explain", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "rule broker-reconnect on target bot-1" in out
    assert "verify until clear within 60s: tradingbot_broker_connected == 0" in out
    assert "bot command=flatten [destructive" in out and "refused" not in out
    assert "feeds the dead man's switch" in out and "closes episode" in out


def test_serving_without_a_token_exits_2(tmp_path: Path, migrated_sqlite: str, monkeypatch, capsys) -> None:
    monkeypatch.delenv("TRADING_OPS_RECONCILER_TOKEN", raising=False)
    assert main(["-c", config_file(tmp_path, migrated_sqlite), "reconciler"]) == 2
    assert "reconciler.token: no webhook token" in capsys.readouterr().err
