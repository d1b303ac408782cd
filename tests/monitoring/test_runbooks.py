"""Runbooks: one per alert (rule-based or posted by the reconciler), each reachable from its alert's runbook_url."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from system_binaries import REPO_ROOT

from trading_ops.cli import build_parser
from trading_ops.reconciler.playbook import parse_matcher

RUNBOOKS_DIR = REPO_ROOT / "runbooks"
RULES_DIR = REPO_ROOT / "prometheus" / "rules"
RUNBOOK_URL_PREFIX = "https://github.com/trading-ops/trading-ops/blob/main/"
# Alerts the reconciler posts to Alertmanager's API itself; no rule file defines them, but on-call gets them.
RECONCILER_POSTED_ALERTS = (
    "TradingOpsRemediationFailed",
    "TradingOpsRemediationCircuitOpen",
    "TradingOpsBotPaused",
    "TradingOpsBotFlattened",
    "TradingOpsApprovalRequested",
    "TradingOpsBotHostDown",
)
SECTIONS = ("Meaning", "Impact", "Diagnosis", "Mitigation")
# Runbooks that are procedures, not an alert's (tests/deploy/test_disaster_recovery.py runs this one's commands).
PROCEDURES = {"disaster-recovery"}
PROMQL_HINT = re.compile(r"`[^`]*\b(tradingbot_|tradingops_|up\{|ALERTS|prometheus_|alertmanager_|process_|instance)")
# Inline code spans; with the lines of fenced blocks, that is where runbooks put the commands to run.
CODE_SPAN = re.compile(r"`[^`]+`")
FENCE = "```"
# `trading-ops`, its global options, then the words that select a subcommand.
COMMAND = re.compile(
    r"(?<![\w/.-])trading-ops(?![\w.-])"  # the command itself, not trading-ops-paper-bot or a path
    r"(?:[ \t]+(?:--config|-c|--log-level)[ \t]+\S+)*"
    r"((?:[ \t]+[a-z][a-z0-9_-]*)*)"
)
# Subcommands the design lists (../shared/DESIGN.md) that are not built yet; a runbook may name one only where it says
# so ("planned"), and must give what to do today.
PLANNED_COMMANDS = {"backup"}


def alert_rules() -> list[dict]:
    return [
        rule
        for path in sorted(RULES_DIR.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in alert_rules()} | set(RECONCILER_POSTED_ALERTS)


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    runbooks = {path.stem for path in RUNBOOKS_DIR.glob("*.md")} - PROCEDURES
    assert alert_names() - runbooks == set(), "alerts without a runbook"
    assert runbooks - alert_names() == set(), "runbooks for alerts that do not exist"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_runbook_url_points_at_the_alerts_runbook(rule: dict) -> None:
    url = rule["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_URL_PREFIX)
    path = REPO_ROOT / url.removeprefix(RUNBOOK_URL_PREFIX)
    assert path == RUNBOOKS_DIR / f"{rule['alert']}.md"
    assert path.is_file()


@pytest.mark.parametrize("name", sorted(alert_names()))
def test_runbook_has_the_four_sections_with_real_diagnosis(name: str) -> None:
    text = (RUNBOOKS_DIR / f"{name}.md").read_text()
    assert text.startswith(f"# {name}\n")
    found = sections(text)
    assert tuple(found) == SECTIONS
    for title in SECTIONS:
        assert len(found[title].split()) >= 15, f"{name}: section {title} is nearly empty"
    assert PROMQL_HINT.search(found["Diagnosis"]), f"{name}: Diagnosis has no PromQL"
    assert re.search(r"`trading-ops [a-z]|/control/", found["Diagnosis"]), f"{name}: Diagnosis has no command"
    assert "### What the reconciler does on its own" in found["Mitigation"]
    assert "### When that did not work" in found["Mitigation"]


# -- commands: every `trading-ops ...` a runbook cites exists --------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {
        name: subparser
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, subparser in action.choices.items()
    }


def code_by_line(text: str) -> Iterator[tuple[str, str]]:
    """(line, code) for every inline code span, and every line of a fenced block (as its own code)."""
    fenced = False
    for line in text.splitlines():
        if line.strip().startswith(FENCE):
            fenced = not fenced
        elif fenced:
            yield line, line
        else:
            yield from ((line, span) for span in CODE_SPAN.findall(line))


def unknown_commands(text: str) -> list[str]:
    """The `trading-ops ...` commands cited as code in `text` that the CLI does not have."""
    unknown = []
    for line, code in code_by_line(text):
        for found in COMMAND.finditer(code):
            parser, path_so_far = build_parser(), ["trading-ops"]
            for word in found.group(1).split():
                choices = subcommands(parser)
                if not choices:
                    break  # a positional argument (a chaos fault, a payload file)
                if word not in choices:
                    # A planned command may be named only where the runbook says, on that line, it is planned.
                    if not (len(path_so_far) == 1 and word in PLANNED_COMMANDS and "planned" in line):
                        unknown.append(" ".join([*path_so_far, word]))
                    break
                parser = choices[word]
                path_so_far.append(word)
    return unknown


def test_the_command_check_knows_the_cli() -> None:
    # Guards the walk: real commands pass, nested ones included; made-up ones and unmarked planned ones do not.
    text = """
    Run `trading-ops --config x.yaml reconciler history --brief`, `trading-ops chaos drop_connection` and
    `trading-ops playbook test cases.yml`; `systemctl restart trading-ops-paper-bot`.
    `trading-ops backup` is planned, not built yet.
    ```
    trading-ops reconciler histroy
    ```
    """
    expected = ["trading-ops reconciler histroy"]
    not_built = sorted(PLANNED_COMMANDS - set(subcommands(build_parser())))
    if not_built:
        text += f"Then `trading-ops {not_built[0]}`.\n"
        expected.append(f"trading-ops {not_built[0]}")
    assert unknown_commands(text) == expected


@pytest.mark.parametrize("path", sorted(RUNBOOKS_DIR.glob("*.md")), ids=lambda p: p.stem)
def test_runbook_cites_only_real_trading_ops_commands(path: Path) -> None:
    assert unknown_commands(path.read_text()) == [], "commands that `trading-ops --help` does not know"


# -- the reconciler section says what the packaged playbooks really do -------------------------------------------


def packaged_playbooks() -> dict[str, dict[str, Any]]:
    folder = resources.files("trading_ops.reconciler").joinpath("playbooks")
    return {
        entry.name.removesuffix(".yml"): yaml.safe_load(entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".yml") and not entry.name.endswith("-cases.yml")
    }


def playbook_rules_for(alertname: str) -> list[dict[str, Any]]:
    """The rule each packaged playbook runs for some tier of the alert (the first rule whose matchers all match)."""
    severities = {rule["labels"]["severity"] for rule in alert_rules() if rule["alert"] == alertname} or {"critical"}
    chosen = []
    for playbook in packaged_playbooks().values():
        for severity in sorted(severities):
            labels = {"alertname": alertname, "severity": severity}
            rule = next(
                (r for r in playbook["rules"] if all(parse_matcher(m).matches(labels) for m in r["match"])), None
            )
            if rule is not None:
                chosen.append(rule)
    return chosen


def test_there_are_packaged_playbooks_with_restart_steps() -> None:
    playbooks = packaged_playbooks()
    assert {"default", "docker"} <= set(playbooks)
    assert [r["name"] for r in playbook_rules_for("TradingBotDown")] == ["bot-restart", "bot-restart"]
    assert [r["name"] for r in playbook_rules_for("TradingBotHeartbeatStale")] == ["bot-loop-restart"] * 2
    assert playbook_rules_for("TradingBotEventLoopLag") == []


@pytest.mark.parametrize("name", sorted(alert_names()))
def test_runbook_says_what_the_playbook_does(name: str) -> None:
    text = sections((RUNBOOKS_DIR / f"{name}.md").read_text())["Mitigation"]
    own = text.split("### What the reconciler does on its own", 1)[1].split("### When that did not work", 1)[0]
    rules = playbook_rules_for(name)
    every_rule = {rule["name"] for playbook in packaged_playbooks().values() for rule in playbook["rules"]}
    if not rules:
        assert not {rule for rule in every_rule if f"`{rule}`" in own}, "names a playbook rule that does not apply"
        return
    expected = set()
    for rule in rules:
        expected.add(f"`{rule['name']}`")
        for step in rule["steps"]:
            if step["action"] == "bot":
                expected.add(f"`{step['command']}`")
            elif step["action"] == "systemd":
                expected.add(step.get("unit", "bots[].unit"))  # without one: the unit configured for the bot
            elif step["action"] == "docker":
                expected.add(step.get("container", "bots[].container"))
            elif step["action"] == "exec":
                expected.add(" ".join(step["argv"][:2]))
    missing = sorted(word for word in expected if word not in own)
    assert missing == [], f"the runbook does not say what the playbook does: {missing}"
