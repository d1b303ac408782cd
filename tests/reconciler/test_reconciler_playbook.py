"""Playbook loading: Alertmanager's matcher operators, validation errors of one line, the default playbook."""

from __future__ import annotations

import random

import pytest

from trading_ops.reconciler.playbook import Backoff, PlaybookError, load_playbook, parse_matcher, parse_playbook

RULE = {"name": "r", "match": ['alertname="A"'], "steps": [{"action": "bot", "command": "reconnect"}]}


@pytest.mark.parametrize(
    ("matcher", "labels", "expected"),
    [
        ('alertname="A"', {"alertname": "A"}, True),
        ('alertname="A"', {"alertname": "AB"}, False),
        ('severity!="info"', {"severity": "critical"}, True),
        ('severity!="info"', {"severity": "info"}, False),
        ('alertname=~"TradingBot.*"', {"alertname": "TradingBotDown"}, True),
        ('alertname=~"Bot"', {"alertname": "TradingBotDown"}, False),  # anchored, as in Alertmanager
        ('env!~"prod|staging"', {"env": "dev"}, True),
        ('env!~"prod|staging"', {"env": "prod"}, False),
        ('missing=""', {}, True),  # an absent label is the empty string
        ("venue=paper", {"venue": "paper"}, True),
    ],
)
def test_matchers_use_alertmanager_operators(matcher: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_matcher(matcher).matches(labels) is expected


def test_first_matching_rule_wins() -> None:
    pb = parse_playbook(
        {
            "rules": [
                {**RULE, "name": "specific", "match": ['alertname="A"', 'venue="x"']},
                {**RULE, "name": "general", "match": ['alertname=~"A|B"']},
            ]
        }
    )
    assert pb.match({"alertname": "A", "venue": "x"}).name == "specific"  # type: ignore[union-attr]
    assert pb.match({"alertname": "A"}).name == "general"  # type: ignore[union-attr]
    assert pb.match({"alertname": "C"}) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": [{"action": "reboot"}]}, "rules[0].steps[0].action: unknown action 'reboot'"),
        ({"steps": [{"action": "bot", "command": "explode"}]}, "rules[0].steps[0].command: unknown bot command"),
        ({"steps": [{"action": "bot"}]}, "rules[0].steps[0].command: required"),
        ({"match": ['alertname=~"("']}, "rules[0].match[0]: invalid regular expression"),
        ({"match": ["alertname"]}, 'rules[0].match[0]: expected name="value"'),
        ({"cooldown": "soon"}, "rules[0].cooldown: expected a duration"),
        ({"max_attempts": 0}, "rules[0].max_attempts: expected an integer >= 1"),
        ({"on_failure": "panic"}, "rules[0].on_failure: expected one of escalate, none"),
        ({"colour": "red"}, "rules[0].colour: unknown key"),
        ({"steps": [{"action": "bot", "command": "flatten", "risk": "safe"}]}, "rules[0].steps[0].risk"),
        ({"steps": [{"action": "exec", "argv": "rm -rf /"}]}, "rules[0].steps[0].argv: expected a list"),
        ({"steps": [{"action": "exec", "argv": ["x"], "env": {"bad-name": "instance"}}]}, "env.bad-name"),
    ],
)
def test_validation_names_the_key_in_one_line(change: dict, message: str) -> None:
    with pytest.raises(PlaybookError) as exc:
        parse_playbook({"rules": [{**RULE, **change}]}, "pb.yml")
    assert message in str(exc.value)
    assert str(exc.value).startswith("pb.yml: ")
    assert "\n" not in str(exc.value)


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(PlaybookError, match="duplicate rule name"):
        parse_playbook({"rules": [RULE, RULE]})


def test_defaults_apply_to_every_rule() -> None:
    pb = parse_playbook({"defaults": {"cooldown": "10m", "max_attempts": 3}, "rules": [RULE]})
    assert pb.rules[0].cooldown == 600 and pb.rules[0].max_attempts == 3


def test_risk_classes_of_bot_commands() -> None:
    pb = parse_playbook(
        {
            "rules": [
                {
                    **RULE,
                    "steps": [
                        {"action": "bot", "command": "reconnect"},
                        {"action": "bot", "command": "pause"},
                        {"action": "bot", "command": "flatten"},
                    ],
                }
            ]
        }
    )
    assert [s.risk for s in pb.rules[0].steps] == ["safe", "disruptive", "destructive"]


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    b = Backoff(initial=5, max=60, multiplier=2, jitter=0.2)
    rng = random.Random(1)
    for attempt, base in ((1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (9, 60)):
        delays = [b.delay(attempt, rng) for _ in range(200)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
        assert len(set(delays)) > 1  # jittered, so replicas and targets do not retry in lockstep
    assert Backoff(initial=5, jitter=0).delay(1) == 5


def test_default_playbook_maps_the_alert_catalogue() -> None:
    pb = load_playbook(None)
    expected = {
        "TradingBotBrokerDisconnected": ("broker-reconnect", ["bot"]),
        "TradingBotMarketDataStale": ("market-data-resubscribe", ["bot"]),
        "TradingBotPositionMismatch": ("position-reconcile", ["bot"]),
        "TradingBotDailyLossBreached": ("loss-limit-flatten", ["bot", "bot", "bot"]),
        "TradingBotHeartbeatStale": ("bot-restart", ["systemd"]),
        "TradingBotDown": ("bot-restart", ["systemd"]),
        "TradingBotMemoryFillingUp": ("memory-leak-restart", ["bot", "systemd"]),
        "TradingBotDiskAlmostFull": ("disk-cleanup", ["exec"]),
    }
    for alertname, (rule_name, actions) in expected.items():
        rule = pb.match({"alertname": alertname, "instance": "127.0.0.1:9101", "severity": "critical"})
        assert rule is not None and rule.name == rule_name, alertname
        assert [s.action for s in rule.steps] == actions
    flatten = pb.match({"alertname": "TradingBotDailyLossBreached"})
    assert flatten is not None and flatten.allow_destructive
    assert pb.match({"alertname": "Watchdog"}) is None


def test_missing_playbook_file_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(PlaybookError, match="cannot read"):
        load_playbook(tmp_path / "nope.yml")
    (tmp_path / "bad.yml").write_text("rules: [\n")
    with pytest.raises(PlaybookError, match="invalid YAML at line"):
        load_playbook(tmp_path / "bad.yml")
