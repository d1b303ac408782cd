"""Matcher regexes (playbooks, the configuration, Alertmanager silences) run on RE2 with Alertmanager's anchoring.

The hostile silence runs against a real Alertmanager (needs prometheus-alertmanager; the session fixture starts
it), in a child process bounded by a generous timeout: Python's backtracking `re` never returns on it, and holds
the interpreter while it tries."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alertmanager_server import Alertmanager

from trading_ops.clients.alertmanager import matcher_accepts
from trading_ops.config import ConfigError, parse_config
from trading_ops.matchers import RegexError, regex_matches
from trading_ops.reconciler.playbook import PlaybookError, parse_matcher, parse_playbook

HOSTILE = "(.*)*(.*)*(.*)*z"
# Seconds the child may take: RE2 needs milliseconds; backtracking needs longer than the age of the universe.
GENEROUS = 60


def test_alertmanager_anchoring() -> None:
    assert regex_matches("bot-.*", "bot-1") and not regex_matches("bot", "bot-1") and not regex_matches("ot-1", "bot-1")
    assert regex_matches("a|b", "b") and not regex_matches("a|b", "ab")  # ^(?:a|b)$, not ^a|b$
    assert not regex_matches("a.b", "a\nb")  # `.` does not match a newline, as in Go
    assert regex_matches("caf.", "café")
    assert parse_matcher('instance=~"bot-[0-9]+"').matches({"instance": "bot-12"})
    assert not parse_matcher('instance=~"bot-[0-9]+"').matches({"instance": "xbot-12"})
    assert parse_matcher('instance!~"bot-.*"').matches({"instance": "db-1"})


@pytest.mark.parametrize("pattern", ["(?<=a)b", "(a)\\1", "(", "a{2,1}"])
def test_a_pattern_re2_refuses_is_one_clear_error(pattern: str, capfd: pytest.CaptureFixture[str]) -> None:
    rule = {"name": "r", "match": [f'instance=~"{pattern}"'], "steps": [{"action": "bot", "command": "pause"}]}
    with pytest.raises(PlaybookError) as caught:
        parse_playbook({"rules": [rule]})
    message = str(caught.value)
    assert message.startswith("<memory>: rules[0].match[0]: invalid regular expression") and "RE2" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="reconciler.label_value_pattern: invalid regular expression"):
        parse_config({"reconciler": {"label_value_pattern": pattern}})
    assert capfd.readouterr().err == ""  # no second line from RE2's own logging


def test_a_silence_with_a_pattern_re2_refuses_matches_nothing(caplog: pytest.LogCaptureFixture) -> None:
    bad = {"name": "instance", "value": "(?<=a)b", "isRegex": True, "isEqual": True}
    assert matcher_accepts(bad, "ab") is False
    assert matcher_accepts({**bad, "isEqual": False}, "ab") is False  # no maintenance either way: acting goes on
    assert "silence matcher instance ignored: invalid regular expression" in caplog.text
    with pytest.raises(RegexError):
        regex_matches("(?<=a)b", "ab")


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys

    import aiohttp

    from trading_ops.clients.alertmanager import AlertmanagerClient
    from trading_ops.reconciler.playbook import parse_matcher

    url, hostile = sys.argv[1], sys.argv[2]
    long_value = "a" * 5000

    async def main():
        async with aiohttp.ClientSession() as session:
            client = AlertmanagerClient(session, url)
            missed = await client.active_silence_for({"instance": long_value})
            hit = await client.active_silence_for({"instance": long_value + "z"})
        matcher = parse_matcher(f'instance=~"{hostile}"')
        return {
            "silence_for_long_value": missed and missed["id"],
            "silence_for_long_value_z": hit and hit["id"],
            "playbook_matcher": [matcher.matches({"instance": long_value}), matcher.matches({"instance": "az"})],
        }

    print(json.dumps(asyncio.run(main())))
    """
)


@pytest.mark.alertmanager
def test_a_hostile_silence_and_matcher_are_evaluated_in_linear_time(alertmanager: Alertmanager) -> None:
    url = alertmanager.url
    now = datetime.now(UTC)
    body = {
        "matchers": [{"name": "instance", "value": HOSTILE, "isRegex": True, "isEqual": True}],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "attacker",
        "comment": "freezes a backtracking matcher",
    }
    req = urllib.request.Request(
        f"{url}/api/v2/silences", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:  # Alertmanager (Go, RE2) accepts it
        silence_id = json.loads(resp.read())["silenceID"]
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, url, HOSTILE],
            capture_output=True,
            text=True,
            timeout=GENEROUS,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/v2/silence/{silence_id}", method="DELETE"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {
        "silence_for_long_value": None,
        "silence_for_long_value_z": silence_id,
        "playbook_matcher": [False, True],
    }
