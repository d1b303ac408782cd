"""Playbook loading: Alertmanager's matcher operators, validation errors of one line, the default playbook."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

import trading_ops
from trading_ops.config import TargetConfig
from trading_ops.durations import parse_duration
from trading_ops.reconciler.actions.base import TEMPLATE_RE
from trading_ops.reconciler.playbook import (
    MATCH_MEMO_LABEL_CHARS,
    MATCH_MEMO_MAX,
    PACKAGED_PLAYBOOKS,
    Backoff,
    PlaybookError,
    load_configured_playbook,
    load_packaged_playbook,
    load_playbook,
    parse_matcher,
    parse_playbook,
)

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.parametrize(
    ("matcher", "value"),
    [
        ('venue="Börse Zürich ✓"', "Börse Zürich ✓"),  # non-ASCII stays as written (unicode_escape garbled it)
        ('note="say \\"hi\\""', 'say "hi"'),
        ('path="C:\\\\bots"', "C:\\bots"),
        ('text="two\\nlines"', "two\nlines"),
        ('alertname=~"Disk\\d+"', "Disk\\d+"),  # a backslash before anything else is literal, as in Alertmanager
    ],
)
def test_quoted_matcher_values_are_unescaped_as_alertmanager_does(matcher: str, value: str) -> None:
    assert parse_matcher(matcher).value == value


@pytest.mark.parametrize("matcher", ['x="trailing\\"', 'x="a"b"', 'x="open'])
def test_a_broken_quote_is_refused_as_alertmanager_refuses_it(matcher: str) -> None:
    with pytest.raises(ValueError, match="double quote"):
        parse_matcher(matcher)


def test_a_regex_matcher_with_an_escape_matches_like_alertmanager() -> None:
    assert parse_matcher('alertname=~"Disk\\d+"').matches({"alertname": "Disk42"})
    assert parse_matcher('venue="Börse"').matches({"venue": "Börse"})


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
        ({"steps": [{"action": ["bot"]}]}, "rules[0].steps[0].action: expected an action name"),
        ({"steps": [{"command": "pause"}]}, "rules[0].steps[0].action: expected an action name"),
        ({"steps": [{"action": "silence", "duration": "forever"}]}, "rules[0].steps[0].duration: expected a duration"),
        ({"steps": [{"action": "bot", "command": "explode"}]}, "rules[0].steps[0].command: unknown bot command"),
        ({"steps": [{"action": "bot"}]}, "rules[0].steps[0].command: required"),
        ({"match": ['alertname=~"("']}, "rules[0].match[0]: invalid regular expression"),
        ({"match": ["alertname"]}, 'rules[0].match[0]: expected name="value"'),
        ({"cooldown": "soon"}, "rules[0].cooldown: expected a duration"),
        ({"max_attempts": 0}, "rules[0].max_attempts: expected an integer >= 1"),
        ({"on_failure": "panic"}, "rules[0].on_failure: expected one of escalate, none"),
        ({"on_unknown": "shrug"}, "rules[0].on_unknown: expected one of retry, escalate"),
        ({"colour": "red"}, "rules[0].colour: unknown key"),
        ({"steps": [{"action": "bot", "command": "flatten", "risk": "safe"}]}, "rules[0].steps[0].risk"),
        ({"steps": [{"action": "exec", "argv": "rm -rf /"}]}, "rules[0].steps[0].argv: expected a list"),
        ({"steps": [{"action": "exec", "argv": ["x"], "env": {"bad-name": "instance"}}]}, "env.bad-name"),
        # What the loader once turned into text, as the schema refuses it: a step named by a number, a mapping of
        # matchers keyed by a matcher (read as `job=~"a"`) or giving true as a label value.
        (
            {"steps": [{"action": "bot", "command": "reconnect", "name": 123}]},
            "rules[0].steps[0].name: expected a string or nothing (null), got 123",
        ),
        ({"on_recovery": [{"action": "notify", "name": True}]}, "rules[0].on_recovery[0].name: expected a string"),
        (
            {"match": {"job=~a": "x"}},
            "rules[0].match: 'job=~a' is not a label name (a mapping's keys are; =~, != and !~ take the list form)",
        ),
        ({"match": {"alertname": True}}, "rules[0].match.alertname: expected a string or a number, got True"),
        ({"hard_limit": {"severity": None}}, "rules[0].hard_limit.severity: expected a string or a number, got None"),
        ({"hard_limit": {"two\nlines": "x"}}, "rules[0].hard_limit: 'two\\nlines' is not a label name"),
        ({"reopen_when": "  "}, "rules[0].reopen_when: expected a PromQL expression"),
        ({"reopen_when": ["up"]}, "rules[0].reopen_when: expected a PromQL expression"),
    ],
)
def test_validation_names_the_key_in_one_line(change: dict, message: str) -> None:
    with pytest.raises(PlaybookError) as exc:
        parse_playbook({"rules": [{**RULE, **change}]}, "pb.yml")
    assert message in str(exc.value)
    assert str(exc.value).startswith("pb.yml: ")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("command", "on_unknown", "policy"),
    [
        ("reconnect", None, "retry"),  # safe
        ("pause", None, "escalate"),  # disruptive
        ("flatten", None, "escalate"),  # destructive
        ("pause", "retry", "retry"),
        ("reconnect", "escalate", "escalate"),
    ],
)
def test_on_unknown_defaults_to_escalate_for_disruptive_and_destructive_steps(
    command: str, on_unknown: str | None, policy: str
) -> None:
    extra = {"on_unknown": on_unknown} if on_unknown else {}
    rule = {**RULE, "steps": [{"action": "bot", "command": command}], "allow_destructive": True, **extra}
    (parsed,) = parse_playbook({"rules": [rule]}).rules
    assert parsed.unknown_policy(parsed.steps[0]) == policy


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(PlaybookError, match="duplicate rule name"):
        parse_playbook({"rules": [RULE, RULE]})


def test_defaults_apply_to_every_rule() -> None:
    pb = parse_playbook({"defaults": {"cooldown": "10m", "max_attempts": 3}, "rules": [RULE]})
    assert pb.rules[0].cooldown == 600 and pb.rules[0].max_attempts == 3


@pytest.mark.parametrize("key", ["name", "match", "steps"])
def test_defaults_refuse_a_rules_own_keys(key: str) -> None:
    """`defaults` would hand every rule one name (duplicates), one match or the same steps: each rule gives its own."""
    with pytest.raises(PlaybookError) as exc:
        parse_playbook({"defaults": {"cooldown": "1m", key: RULE[key]}, "rules": [RULE]}, "pb.yml")
    assert str(exc.value) == f"pb.yml: defaults.{key}: a rule's own key, not a default (each rule gives its own {key})"


def test_an_unknown_key_of_defaults_lists_what_defaults_may_give() -> None:
    with pytest.raises(PlaybookError) as exc:
        parse_playbook({"defaults": {"colour": "red"}, "rules": [RULE]}, "pb.yml")
    message = str(exc.value)
    assert message.startswith("pb.yml: defaults.colour: unknown key (known: wait_for, timeout, max_attempts, ")
    assert "name" not in message.split("known: ")[1].split(", ") and "steps" not in message
    with pytest.raises(PlaybookError, match=r"defaults\.backoff\.colour: unknown key \(known: initial, max, "):
        parse_playbook({"defaults": {"backoff": {"colour": "red"}}, "rules": [RULE]}, "pb.yml")


def test_a_mapping_of_matchers_takes_label_names_to_strings_and_numbers() -> None:
    (rule,) = parse_playbook({"rules": [{**RULE, "match": {"alertname": "A", "code": 500, "ratio": 0.5}}]}).rules
    assert [str(m) for m in rule.matchers] == ['alertname="A"', 'code="500"', 'ratio="0.5"']
    assert rule.matches({"alertname": "A", "code": "500", "ratio": "0.5"})
    assert not rule.matches({"alertname": "A", "code": "5000", "ratio": "0.5"})


def test_a_rules_verify_and_backoff_refine_the_defaults_key_by_key() -> None:
    defaults = {"verify": {"deadline": "60s", "interval": "1s"}, "backoff": {"initial": "2s", "max": "1m"}}
    rules = [
        {**RULE, "name": "own-expr", "verify": {"expr": "up == 0", "deadline": "30s"}, "backoff": {"max": "5m"}},
        {**RULE, "name": "plain"},
        {**RULE, "name": "explicit-true", "verify": True},
        {**RULE, "name": "off", "verify": False},
    ]
    own, plain, explicit, off = parse_playbook({"defaults": defaults, "rules": rules}).rules
    assert (own.verify.expr, own.verify.deadline, own.verify.interval) == ("up == 0", 30.0, 1.0)
    assert (own.backoff.initial, own.backoff.max) == (2.0, 300.0)
    assert (plain.verify.deadline, plain.verify.interval, plain.backoff.max) == (60.0, 1.0, 60.0)
    assert (explicit.verify.deadline, explicit.verify.interval) == (60.0, 1.0)
    assert not off.verify.enabled


def test_every_packaged_rule_polls_at_least_as_often_as_the_defaults_say_unless_it_sets_its_own() -> None:
    for name in PACKAGED_PLAYBOOKS:
        raw = yaml.safe_load(
            (ROOT / "trading_ops" / "reconciler" / "playbooks" / f"{name}.yml").read_text(encoding="utf-8")
        )
        default = raw["defaults"]["verify"]["interval"]
        for data, rule in zip(raw["rules"], load_packaged_playbook(name).rules, strict=True):
            own = (data.get("verify") or {}).get("interval") if isinstance(data.get("verify"), dict) else None
            assert rule.verify.interval == parse_duration(own or default), (name, rule.name)


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
        "TradingBotDailyLossBreached": ("loss-limit-flatten", ["bot", "bot"]),
        "TradingBotDrawdownBreached": ("drawdown-flatten", ["bot", "bot"]),
        "TradingBotHeartbeatStale": ("bot-loop-restart", ["silence", "systemd"]),
        "TradingBotReconciliationStale": ("position-reconcile", ["bot"]),
        "TradingBotReconciliationFailing": ("reconciliation-retry", ["bot"]),
        "TradingBotDown": ("bot-restart", ["systemd"]),
        "TradingBotMemoryFillingUp": ("memory-leak-restart", ["bot", "silence", "systemd"]),
        "TradingBotDiskAlmostFull": ("disk-cleanup", ["exec"]),
    }
    for alertname, (rule_name, actions) in expected.items():
        rule = pb.match({"alertname": alertname, "instance": "127.0.0.1:9101", "severity": "critical"})
        assert rule is not None and rule.name == rule_name, alertname
        assert [s.action for s in rule.steps] == actions
    for alertname in ("TradingBotDailyLossBreached", "TradingBotDrawdownBreached"):
        halted = pb.match({"alertname": alertname})
        assert halted is not None and halted.allow_destructive and halted.max_attempts == 1, alertname
    flatten = pb.match({"alertname": "TradingBotDailyLossBreached"})
    assert flatten is not None and flatten.allow_destructive
    # No pause (a halted bot refuses it); once verified flat, the page that says what was done.
    assert [s.params["command"] for s in flatten.steps] == ["cancel_all", "flatten"]
    assert [(s.action, s.params["alertname"]) for s in flatten.on_recovery] == [("escalate", "TradingOpsBotFlattened")]
    assert flatten.summary.startswith("Loss limit breached on ${instance}")
    assert pb.match({"alertname": "Watchdog"}) is None
    # The bot's own unit (bots[].unit), never a unit an alert's label names; the paper bot's default is the unit the
    # package ships (trading_ops/paper/systemd/), not a name nothing installs.
    restart = pb.match({"alertname": "TradingBotDown"})
    assert restart is not None and restart.steps[0].params == {}
    assert TargetConfig().unit == "trading-ops-paper-bot.service"
    assert (Path(trading_ops.__file__).parent / "paper" / "systemd" / TargetConfig().unit).exists()


def test_the_default_playbook_does_not_debounce_twice() -> None:
    # The alert's own `for:` already debounces a disconnect (prometheus/rules/tradingbot-availability.yml):
    # a wait_for on top only delays the recovery. bot-restart keeps one, to let systemd's own restart act first.
    pb = load_playbook(None)
    waits = {r.name: r.wait_for for r in pb.rules}
    assert waits["broker-reconnect"] == 0 and waits["memory-leak-restart"] == 0
    assert waits["bot-restart"] == waits["bot-loop-restart"] == 10
    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "tradingbot-availability.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts["TradingBotBrokerDisconnected"]["for"] == "10s"


def test_the_docker_playbook_has_the_default_rules_with_container_restarts() -> None:
    default, docker = load_packaged_playbook("default"), load_packaged_playbook("docker")
    assert [r.name for r in docker.rules] == [r.name for r in default.rules]
    for ours, theirs in zip(default.rules, docker.rules, strict=True):
        # Same matchers and policy; only the way a bot is restarted differs.
        assert (ours.matchers, ours.wait_for, ours.max_attempts, ours.cooldown, ours.verify, ours.on_failure) == (
            theirs.matchers,
            theirs.wait_for,
            theirs.max_attempts,
            theirs.cooldown,
            theirs.verify,
            theirs.on_failure,
        ), ours.name
        for a, b in zip(ours.steps, theirs.steps, strict=True):
            if a.action == "systemd":
                # The bot's own unit is its own container; freqtrade.service is the container freqtrade, and its
                # sidecar's unit the sidecar's container.
                container = {
                    "freqtrade.service": "freqtrade",
                    "trading-ops-freqtrade.service": "trading-ops-freqtrade-sidecar",
                }.get(a.params.get("unit", ""))
                expected = {"container": container} if container else {}
                assert (b.action, b.params, b.timeout) == ("docker", expected, a.timeout)
            else:
                assert a == b
    assert any(s.action == "docker" for r in docker.rules for s in r.steps)


def test_a_playbook_is_named_by_a_packaged_name_or_a_path(tmp_path: Path) -> None:
    assert "docker.yml" in load_configured_playbook("docker").source
    assert "default.yml" in load_configured_playbook("").source
    (tmp_path / "pb.yml").write_text(yaml.safe_dump({"rules": [RULE]}))
    assert load_configured_playbook("pb.yml", lambda v: tmp_path / v).rules[0].name == "r"
    with pytest.raises(PlaybookError, match="'dokcer' is neither a packaged playbook \\(default, docker\\)"):
        load_configured_playbook("dokcer")


def test_the_playbook_names_the_alerts_it_handles() -> None:
    names = load_playbook(None).alertnames()
    assert "TradingBotBrokerDisconnected" in names and "TradingBotReconciliationStale" in names
    assert all(n.startswith("TradingBot") for n in names)


def test_missing_playbook_file_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(PlaybookError, match="cannot read"):
        load_playbook(tmp_path / "nope.yml")
    (tmp_path / "bad.yml").write_text("rules: [\n")
    with pytest.raises(PlaybookError, match="invalid YAML at line"):
        load_playbook(tmp_path / "bad.yml")


@pytest.mark.prometheus
@pytest.mark.parametrize("name", sorted(PACKAGED_PLAYBOOKS))
def test_every_packaged_verify_expression_is_valid_promql(name: str, prometheus: str) -> None:
    """Needs the `prometheus` binary (the session fixture starts it): it parses every rule's verify.expr."""
    exprs = {r.name: r.verify.expr for r in load_packaged_playbook(name).rules if r.verify.expr}
    assert exprs, "the packaged playbooks verify some rules with their own expression"
    for rule, expr in exprs.items():
        rendered = TEMPLATE_RE.sub("paper-bot:9101", expr)
        url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": rendered})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                status = json.loads(resp.read())["status"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{name}: rule {rule}: {rendered}: {exc.read().decode()}") from exc
        assert status == "success", (name, rule)


def test_a_duration_past_a_century_is_a_config_error() -> None:
    # Added to an alert's start, it would overflow the calendar while storing the alert (a 503 for every resend).
    rule = {
        "name": "r",
        "match": ['alertname="A"'],
        "wait_for": "200y",
        "steps": [{"action": "bot", "command": "pause"}],
    }
    with pytest.raises(PlaybookError, match=r"rules\[0\]\.wait_for: 200y is longer than the 100 years"):
        parse_playbook({"rules": [rule]})


def test_on_recovery_steps_are_steps_checked_like_the_others() -> None:
    rule = {**RULE, "on_recovery": [{"action": "bot", "command": "resume"}]}
    assert [s.describe() for s in parse_playbook({"rules": [rule]}).rules[0].on_recovery] == ["bot command=resume"]
    with pytest.raises(PlaybookError, match=r"on_recovery\[0\].command: unknown bot command"):
        parse_playbook({"rules": [{**RULE, "on_recovery": [{"action": "bot", "command": "explode"}]}]})
    with pytest.raises(PlaybookError, match="on_recovery: expected a list of steps"):
        parse_playbook({"rules": [{**RULE, "on_recovery": "resume"}]})


def test_a_rules_summary_is_one_line_of_text() -> None:
    rule = {**RULE, "summary": "  Loss limit breached on ${instance}  "}
    assert parse_playbook({"rules": [rule]}).rules[0].summary == "Loss limit breached on ${instance}"
    for bad in ("two\nlines", 3, ["a"]):
        with pytest.raises(PlaybookError, match=r"rules\[0\]\.summary: expected one line of text"):
            parse_playbook({"rules": [{**RULE, "summary": bad}]})


def test_match_remembers_label_sets_within_bounds_and_routes_as_the_rules_do() -> None:
    """Resends are most of the intake: their label sets are routed once, then looked up. The look-up answers what the
    rules answer, and holds a bounded number of bounded label sets, whatever a sender puts in its labels."""
    steps = [{"action": "bot", "command": "reconnect"}]
    pb = parse_playbook(
        {
            "rules": [
                {"name": "regex", "match": ['alertname=~"A.*"', 'severity!="info"'], "steps": steps},
                {"name": "plain", "match": ['alertname="B"'], "steps": steps},
            ]
        }
    )
    cases = [
        ({"alertname": "Ax", "severity": "critical"}, "regex"),
        ({"alertname": "Ax", "severity": "info"}, None),
        ({"alertname": "B"}, "plain"),
        ({"alertname": "C"}, None),
    ]
    for _ in range(2):  # the second time from the memo
        assert [(r.name if (r := pb.match(dict(labels))) else None) for labels, _ in cases] == [e for _, e in cases]
    for i in range(MATCH_MEMO_MAX + 100):
        assert pb.match({"alertname": f"A{i}"}).name == "regex"  # type: ignore[union-attr]
    assert 0 < len(pb._memo) <= MATCH_MEMO_MAX
    big = {"alertname": "Ax", "description": "x" * MATCH_MEMO_LABEL_CHARS}
    assert pb.match(big).name == "regex"  # type: ignore[union-attr]
    assert frozenset(big.items()) not in pb._memo
