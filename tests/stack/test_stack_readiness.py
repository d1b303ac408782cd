"""docs/readiness.md's commands run as written on the local stack `make run` starts (a checkout as it leaves one, `up`
as a real process with real Prometheus and Alertmanager): the verdict over readiness.window and over `--window 7d`
(the stack's Prometheus keeps both), the banner's readiness command, the reconciler's API and the console's page for
the stack's defaults, each a verdict, never "longer than Prometheus's retention" or "unknown bot"."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from make_run_checkout import make_checkout
from system_binaries import REPO_ROOT, require_binary
from up_process import UpProcess

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

PAGE = REPO_ROOT / "docs" / "readiness.md"
STACK_CONFIG = "var/stack/trading-ops.yaml"
TIMEOUT = 120


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    require_binary("prometheus")
    root = make_checkout(tmp_path_factory.mktemp("readiness-stack"))
    process = UpProcess(root, checkout=True)
    try:
        process.wait_up()
        yield process
        assert process.stop(signal.SIGINT) == 0, process.output
    finally:
        process.close()


def page_commands() -> tuple[dict[str, str], list[list[str]]]:
    """The page's first block of stack commands: its `export`s, and its `trading-ops readiness` lines (the stop drill
    left out: it changes the bot) as argv, their comments dropped."""
    text = PAGE.read_text()
    block = re.search(r"<!-- example: needs-stack -->\n```sh\n(.*?)\n```", text, re.S)
    assert block is not None, "docs/readiness.md has no stack commands"
    env: dict[str, str] = {}
    commands = []
    for line in block.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            env[name] = value
        elif words[:2] == ["trading-ops", "readiness"] and "--stop-drill" not in words:
            commands.append(words)
    return env, commands


def run(up: UpProcess, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A `trading-ops` command line as a user types it in the checkout (the console script run by this Python)."""
    assert argv[0] == "trading-ops", argv
    return subprocess.run(
        [sys.executable, "-m", "trading_ops", *argv[1:]],
        cwd=up.root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_the_page_names_the_stack_s_configuration_and_its_commands_give_a_verdict(up: UpProcess) -> None:
    env, commands = page_commands()
    assert env == {"TRADING_OPS_CONFIG": STACK_CONFIG}
    assert [c[2:] for c in commands] == [["paper-1"], ["paper-1", "--window", "7d", "--json"]]
    bot = up.ports.address("bot")
    verdict = run(up, commands[0], env)
    # A verdict (exit 1: not ready or unknown on a stack minutes old), never a usage error (exit 2).
    assert verdict.returncode == 1, verdict.stderr
    assert re.match(rf"paper-1 \({re.escape(bot)}\): (UNKNOWN|NOT READY) over 5d\n", verdict.stdout), verdict.stdout
    assert "UNKNOWN uptime" in verdict.stdout  # minutes of history, judged over 5 days: unknown, never PASS
    week = run(up, commands[1], env)
    assert week.returncode == 1, week.stderr
    (answer,) = json.loads(week.stdout)
    assert (answer["bot"], answer["window"]) == ("paper-1", "1w") and answer["verdict"] in ("unknown", "not ready")
    assert "uptime" in answer["missing"]


def test_bare_readiness_beside_make_run_says_where_the_stack_s_configuration_is(up: UpProcess) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRADING_OPS_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "trading_ops", "readiness", "paper-1"],
        cwd=up.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done
    hint = f"the local stack's configuration, with its bots, is {STACK_CONFIG}: pass --config {STACK_CONFIG}"
    assert lines[0].endswith(hint), lines


def test_prometheus_keeps_what_the_page_judges_and_the_banner_says_so(up: UpProcess) -> None:
    status, flags = get(up.url("prometheus", "/api/v1/status/flags"))
    assert status == 200 and flags["data"]["storage.tsdb.retention.time"] == "8d"
    line = next(line for line in up.lines if line.startswith("readiness: "))
    assert line.endswith("readiness paper-1  (docs/readiness.md; Prometheus keeps 8d)"), line
    command = shlex.split(line.removeprefix("readiness: ").split("  (")[0])
    done = subprocess.run(command, cwd=up.root, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 1 and done.stdout.startswith("paper-1 ("), done


def test_the_reconciler_s_api_and_console_give_the_verdict_for_the_stack_s_defaults(up: UpProcess) -> None:
    read = (Path(up.root) / "var" / "secrets" / "reconciler-read-token").read_text().strip()
    status, answer = get(up.url("reconciler", "/api/v1/readiness/paper-1"), read)
    assert status == 200 and (answer["bot"], answer["window"]) == ("paper-1", "5d"), answer
    assert answer["verdict"] in ("unknown", "not ready")
    # The console: logged in with the read token, the readiness list's link answers the verdict and a window field.
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(up.url("reconciler", "/ui/login"), timeout=TIMEOUT) as resp:
        csrf = re.search(r'name="csrf" value="([^"]+)"', resp.read().decode())
    assert csrf is not None
    body = urllib.parse.urlencode({"csrf": csrf.group(1), "token": read}).encode()
    opener.open(up.url("reconciler", "/ui/login"), data=body, timeout=TIMEOUT).close()
    with opener.open(up.url("reconciler", "/ui/readiness"), timeout=TIMEOUT) as resp:
        assert 'href="/ui/readiness/paper-1"' in resp.read().decode()
    with opener.open(up.url("reconciler", "/ui/readiness/paper-1"), timeout=TIMEOUT) as resp:
        html = resp.read().decode()
        assert resp.status == 200
    assert re.search(r'<span class="badge s-\w+">(unknown|not ready)</span> over 5d', html), html[:2000]
    assert '<input name="window" value="" placeholder="5d"' in html
    with opener.open(up.url("reconciler", "/ui/readiness/paper-1?window=7d"), timeout=TIMEOUT) as resp:
        assert resp.status == 200 and "</span> over 1w" in resp.read().decode()
