"""The rule pack: `trading-ops rules render` writes prometheus/rules/ from its templates and values; the defaults
render exactly the committed files, a changed value reaches the rules Prometheus runs, and bad values write nothing.

The promtool test of a changed value needs promtool of both generations (system_binaries.GENERATIONS)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from paper_process import cli
from system_binaries import GENERATIONS, REPO_ROOT, Generation, run_binary

from trading_ops.rulepack.render import DERIVED, PLACEHOLDER, defaults, templates

RULES_DIR = REPO_ROOT / "prometheus" / "rules"
NOGROUP = 65534  # a group the test (root) gives a file, as an operator gives one to Prometheus's group


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_the_defaults_render_exactly_the_committed_rule_files(tmp_path: Path) -> None:
    result = cli("rules", "render", "--output", str(tmp_path / "rules"))
    assert result.returncode == 0, result.stderr
    rendered = {path.name: path.read_text() for path in sorted((tmp_path / "rules").iterdir())}
    committed = {path.name: path.read_text() for path in sorted(RULES_DIR.glob("*.yml"))}
    assert set(rendered) == set(committed), "a rule file without a template (trading_ops/rulepack/templates/)"
    for name, text in committed.items():
        assert rendered[name] == text, (
            f"prometheus/rules/{name} differs from its template's rendering: change "
            f"trading_ops/rulepack/templates/{name} and run `trading-ops rules render`"
        )


def test_every_placeholder_is_a_value_and_every_value_is_used() -> None:
    used = {match for text in templates().values() for match in PLACEHOLDER.findall(text)}
    assert used == set(defaults()) | set(DERIVED)


def test_rule_files_are_readable_by_prometheus_and_one_replaced_keeps_its_mode_owner_and_group(
    tmp_path: Path,
) -> None:
    """Prometheus reads its rules as a user of its own (`prometheus` on Debian, `nobody` in the compose image): a new
    rule file is 0644 as a checkout's are, never a temporary file's 0600; a file replaced keeps its mode, owner and
    group (an operator's root:nogroup 0640 here), and no temporary file is left behind."""
    output = tmp_path / "rules"
    assert cli("rules", "render", "--output", str(output)).returncode == 0
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in output.iterdir()}
    assert len(modes) == len(templates()) == len(list(RULES_DIR.glob("*.yml"))) and set(modes.values()) == {0o644}, (
        modes
    )
    kept = output / "tradingbot-availability.yml"
    os.chown(kept, -1, NOGROUP)
    kept.chmod(0o640)
    result = cli("rules", "render", "--values", str(changed_values(tmp_path)), "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "tradingbot_heartbeat_timestamp_seconds > 30\n" in kept.read_text()  # replaced
    after = kept.stat()
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == (0o640, os.geteuid(), NOGROUP)
    assert sorted(path.name for path in output.iterdir()) == sorted(modes)


def changed_values(tmp_path: Path) -> Path:
    values = tmp_path / "my-rules.yml"
    values.write_text("thresholds:\n  heartbeat_stale_seconds: 30\nrunbook_url: https://wiki.example.com/runbooks/\n")
    return values


def test_a_changed_value_reaches_every_rule_that_uses_it_and_nothing_else(tmp_path: Path) -> None:
    result = cli("rules", "render", "--values", str(changed_values(tmp_path)), "--output", str(tmp_path / "rules"))
    assert result.returncode == 0, result.stderr
    assert f"wrote {len(templates())} rule files" in result.stdout
    availability = (tmp_path / "rules" / "tradingbot-availability.yml").read_text()
    assert "time() - tradingbot_heartbeat_timestamp_seconds > 30\n" in availability
    slo = (tmp_path / "rules" / "tradingbot-slo.yml").read_text()
    assert "time() - tradingbot_heartbeat_timestamp_seconds > bool 30\n" in slo
    assert slo.count("iteration for 30 s)") == 2  # the SLO alerts' descriptions say what counts as hung
    for path in (tmp_path / "rules").iterdir():
        # Alert names, labels and the summaries are the committed ones; the runbook links follow runbook_url.
        committed = yaml.safe_load((RULES_DIR / path.name).read_text())
        mine = yaml.safe_load(path.read_text())
        for group, my_group in zip(committed["groups"], mine["groups"], strict=True):
            for rule, my_rule in zip(group["rules"], my_group["rules"], strict=True):
                assert (my_rule.get("alert"), my_rule.get("labels")) == (rule.get("alert"), rule.get("labels"))
                if "alert" in rule:
                    annotations = my_rule["annotations"]
                    assert annotations["summary"] == rule["annotations"]["summary"]
                    assert annotations["runbook_url"] == f"https://wiki.example.com/runbooks/{rule['alert']}.md"


@pytest.mark.prometheus
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_a_latency_threshold_is_one_value_for_the_seven_matchers_and_the_descriptions(
    tmp_path: Path, generation: Generation
) -> None:
    values = tmp_path / "my-rules.yml"
    values.write_text("thresholds:\n  order_latency_seconds: 0.5\n")
    assert cli("rules", "render", "--values", str(values), "--output", str(tmp_path / "rules")).returncode == 0
    slo = tmp_path / "rules" / "tradingbot-slo.yml"
    text = slo.read_text()
    assert text.count('tradingbot_order_ack_latency_seconds_bucket{le=~"0\\\\.5"}') == 7
    assert text.count("than 0.5 s to be acknowledged") == 2
    assert 'le=~"1(' not in text.split("groups:", 1)[1]
    result = run_binary("promtool", "check", "rules", slo, generation=generation)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_promtool_holds_the_changed_threshold(tmp_path: Path, generation: Generation) -> None:
    # A loop hung from t=0: the heartbeat stays at 0 and is t seconds old at t. With the default 15 s the alert
    # fires from 25 s (pending from 20 s, `for: 5s`); with 30 s it is still quiet at 30 s and fires from 40 s.
    rules = tmp_path / "rules"
    assert cli("rules", "render", "--values", str(changed_values(tmp_path)), "--output", str(rules)).returncode == 0
    test_file = tmp_path / "heartbeat_test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules / "tradingbot-availability.yml")],
                "evaluation_interval": "5s",
                "tests": [
                    {
                        "name": "a heartbeat 30 s old is not stale at a 30 s threshold",
                        "interval": "5s",
                        "input_series": [
                            {"series": 'up{job="tradingbot", instance="a:9101"}', "values": "1x20"},
                            {
                                # The last iteration at 1 s (a heartbeat of 0 is "no iteration yet").
                                "series": 'tradingbot_heartbeat_timestamp_seconds{job="tradingbot", instance="a:9101"}',
                                "values": "1x20",
                            },
                        ],
                        "alert_rule_test": [
                            {"eval_time": "30s", "alertname": "TradingBotHeartbeatStale", "exp_alerts": []},
                            {
                                "eval_time": "40s",
                                "alertname": "TradingBotHeartbeatStale",
                                "exp_alerts": [
                                    {
                                        "exp_labels": {
                                            "severity": "critical",
                                            "service": "tradingbot",
                                            "job": "tradingbot",
                                            "instance": "a:9101",
                                        },
                                        "exp_annotations": {
                                            "summary": "A trading bot's loop stopped making progress.",
                                            "description": "The trading loop of a:9101 last completed an iteration "
                                            "39s ago: the process answers scrapes but the loop is hung or blocked.",
                                            "runbook_url": "https://wiki.example.com/runbooks/TradingBotHeartbeatStale.md",
                                        },
                                    }
                                ],
                            },
                        ],
                    }
                ],
            }
        )
    )
    result = run_binary("promtool", "test", "rules", test_file, generation=generation)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ("thresholds:\n  heartbeat_stale_seconds: fifteen\n", "thresholds.heartbeat_stale_seconds: expected a number"),
        ("thresholds:\n  heartbeat_stale_seconds: true\n", "thresholds.heartbeat_stale_seconds: expected a number"),
        ("thresholds:\n  availability_objective: 99.9\n", "thresholds.availability_objective: expected a number"),
        ("thresholds:\n  heartbeat_stale: 15\n", "thresholds.heartbeat_stale: unknown key"),
        ("durations:\n  bot_down: 10 seconds\n", "durations.bot_down: not a Prometheus duration"),
        ("selectors:\n  bot_jobs: job=tradingbot\n", "selectors.bot_jobs: not a PromQL selector"),
        ('selectors:\n  bot_jobs: job=~"trading(bot"\n', "selectors.bot_jobs: job=~"),
        ("runbook_url: 12\n", "runbook_url: expected a string"),
        ("thresholds:\n  order_latency_seconds: 0.7\n", "thresholds.order_latency_seconds: 0.7 is not a bucket"),
        ("thresholds: 15\n", "thresholds: expected a mapping"),
    ],
    ids=["word", "bool", "ratio", "unknown", "duration", "selector", "regex", "url", "bucket", "section"],
)
def test_bad_values_are_one_line_naming_the_key_and_write_nothing(tmp_path: Path, values: str, key: str) -> None:
    path = tmp_path / "my-rules.yml"
    path.write_text(values)
    output = tmp_path / "rules"
    line = one_line_error(cli("rules", "render", "--values", str(path), "--output", str(output)))
    assert line.startswith(f"trading-ops: rules render: {key}"), line
    assert not output.exists()


def test_a_values_file_that_is_missing_or_not_yaml_is_one_line(tmp_path: Path) -> None:
    missing = one_line_error(cli("rules", "render", "--values", str(tmp_path / "none.yml"), "-o", str(tmp_path / "r")))
    assert "none.yml: cannot read it" in missing
    (tmp_path / "bad.yml").write_text("thresholds: [\n")
    assert "bad.yml: not YAML" in one_line_error(
        cli("rules", "render", "--values", str(tmp_path / "bad.yml"), "-o", str(tmp_path / "r"))
    )
    assert not (tmp_path / "r").exists()


def test_render_beside_a_local_stack_says_to_restart_it(tmp_path: Path) -> None:
    """`make run`'s Prometheus reads its own copies of the rules (var/stack/prometheus/rules/, written at its start
    with the profile's `for:`): a render in that checkout says the stack must be restarted to take them."""
    stack_rules = tmp_path / "var" / "stack" / "prometheus" / "rules"
    stack_rules.mkdir(parents=True)
    argv = [sys.executable, "-m", "trading_ops", "rules", "render", "--output", "rules"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "reads its own copies in var/stack/prometheus/rules/" in done.stdout, done.stdout
    assert "restart it (Ctrl-C, then make run)" in done.stdout
    assert not list(stack_rules.iterdir())  # not written behind the stack's back
    (tmp_path / "var" / "stack").rename(tmp_path / "var" / "elsewhere")  # no local stack here
    again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and "local stack" not in again.stdout, again.stdout
