"""docs/readiness.md's commands run as written on the local stack `make run` starts (a checkout as it leaves one, `up`
as a real process with real Prometheus and Alertmanager): the verdict over readiness.window and over `--window 7d`
(the stack's Prometheus keeps both), the banner's readiness command, the reconciler's API and the console's page for
the stack's defaults, each a verdict, never "longer than Prometheus's retention" or "unknown bot"; and section 3's
ramp promotion by two people, each with their own token, on the stack's demo ramp."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
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


def stack_block(text: str, what: str, keep: Callable[[list[str]], bool]) -> tuple[dict[str, str], list[list[str]]]:
    """`text`'s first block of stack commands: its `export`s, and the command lines `keep` takes, as argv, their
    comments dropped (`what` names the block in the failure)."""
    block = re.search(r"<!-- example: needs-stack -->\n```sh\n(.*?)\n```", text, re.S)
    assert block is not None, f"{what} has no stack commands"
    env: dict[str, str] = {}
    commands = []
    for line in block.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            env[name] = value
        elif keep(words):
            commands.append(words)
    return env, commands


def page_commands() -> tuple[dict[str, str], list[list[str]]]:
    """The page's first block of stack commands: its `export`s, and its `trading-ops readiness` lines (the stop drill
    left out: it changes the bot)."""
    return stack_block(
        PAGE.read_text(),
        "docs/readiness.md",
        lambda words: words[:2] == ["trading-ops", "readiness"] and "--stop-drill" not in words,
    )


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
    assert (answer["bot"], answer["window"]) == ("paper-1", "7d") and answer["verdict"] in ("unknown", "not ready")
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
        assert resp.status == 200 and "</span> over 7d" in resp.read().decode()


# ---- section 3: the ramp's promotion, by two people ----------------------------------------------------------------

# How long the promotion may take to be asked once the stack has run the stack's ramp window (5m on the fast profile):
# the stack's age when the module's first test ran, the window, and room for a loaded machine.
PROMOTION_DEADLINE = 600.0
# Between two `ramp promote` tries while the stack is younger than its window (a refused request creates nothing).
PROMOTE_RETRY_SECONDS = 15.0
# How long the approval, the bot's stage and its series may take to show (Alertmanager, the reconciler, a scrape).
SHOW_SECONDS = 90.0


def promotion_block() -> tuple[dict[str, str], list[list[str]]]:
    """Section 3's block of stack commands (the one that asks for the next stage): its `export`s and its `trading-ops`
    lines."""
    text = PAGE.read_text()
    section = text[text.index("## 3. Go live in stages") : text.index("## 4. ")]
    return stack_block(section, "section 3 of docs/readiness.md", lambda words: words[:1] == ["trading-ops"])


def until(what: str, check: Any, timeout: float = SHOW_SECONDS, every: float = 1.0) -> Any:
    """`check()`'s first truthy answer, polled; AssertionError naming `what` and the last answer after `timeout`."""
    end = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout:g}s (last: {answer!r})")
        time.sleep(every)


def control(up: UpProcess, command: str) -> dict[str, Any]:
    token = (Path(up.root) / "var" / "secrets" / "control-token").read_text().strip()
    request = urllib.request.Request(
        up.url("bot", f"/control/{command}"), data=b"{}", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


def ramp_series(up: UpProcess) -> float | None:
    query = urllib.parse.urlencode({"query": f'tradingbot_ramp_stage{{instance="{up.ports.address("bot")}"}}'})
    status, answer = get(up.url("prometheus", f"/api/v1/query?{query}"))
    results = answer["data"]["result"] if status == 200 else []
    return float(results[0]["value"][1]) if results else None


@pytest.mark.timeout(PROMOTION_DEADLINE + 4 * SHOW_SECONDS)
def test_the_page_s_promotion_runs_as_written_by_two_people(up: UpProcess) -> None:
    """Section 3's block on the stack's demo ramp: alice asks with her own token (the stack's bot at `five-dollars`;
    refused, naming the stage's window, while the stack is younger than it), another person sees the request, alice's
    approval of her own request is refused in one line naming the rule, bob approves with his, and the bot is at
    `seven-dollars` (its status and tradingbot_ramp_stage); the audit shows both principals."""
    env, commands = promotion_block()
    assert env == {"TRADING_OPS_CONFIG": STACK_CONFIG, "TRADING_OPS_TOKEN_FILE": "var/secrets/alice-token"}
    ask, listing, approve, audit = commands
    assert ask == ["trading-ops", "ramp", "promote", "paper-1", "--to", "seven-dollars"]
    assert listing == ["trading-ops", "reconciler", "approvals"]
    assert approve[:3] == ["trading-ops", "reconciler", "approve"] and approve[-2:] == [
        "--token-file",
        "var/secrets/bob-token",
    ]
    assert audit == ["trading-ops", "audit", "--target", "paper-1"]
    status = control(up, "status")
    assert (status["ramp"]["stage"], status["ramp"]["name"]) == (1, "five-dollars"), status["ramp"]

    # Alice asks; until the stack has run the stage's window, the criteria have no history at its start: refused,
    # nothing asked, naming the window.
    refusals = []
    started = time.monotonic()

    def asked() -> subprocess.CompletedProcess[str] | None:
        done = run(up, ask, env)
        if done.returncode == 0:
            return done
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done
        refusals.append(lines[0])
        return None

    done = until("the promotion asked", asked, PROMOTION_DEADLINE, PROMOTE_RETRY_SECONDS)
    answer = json.loads(done.stdout)
    assert (answer["bot"], answer["stage"], answer["requested_by"]) == ("paper-1", "seven-dollars", "alice"), answer
    for line in refusals:
        assert line.startswith("trading-ops: ramp: not asked: paper-1 stays at five-dollars: over 5m, "), refusals
    print(
        json.dumps(
            {
                "promotion_asked_after_seconds": round(time.monotonic() - started, 1),
                "refusals_before": len(refusals),
                "first_refusal": refusals[:1],
            }
        )
    )

    # Another person sees the request: the pending approval of the ramp-promote rule, asked by alice.
    def pending() -> str | None:
        done = run(up, listing, env)
        assert done.returncode == 0, done.stderr
        return next(
            (
                line
                for line in done.stdout.splitlines()
                if " pending " in line and "rule ramp-promote" in line and "asked by alice" in line
            ),
            None,
        )

    line = until("the approval listed", pending)
    approval = line.split()[0]
    assert approval.isdigit(), line

    # Alice may not decide her own request: one line naming the rule, nothing decided.
    own = run(up, [*approve[:3], approval, *approve[4:-2]], env)
    assert own.returncode == 1 and own.stderr.strip() == (
        f"trading-ops: reconciler approve: approval {approval}: four eyes: alice asked for it and never decides its "
        "own request (ramp_promotion needs 1 other person)"
    ), own
    assert control(up, "status")["ramp"]["stage"] == 1

    # Bob approves with his own token: the reconciler sends the bot the decision it signed, the bot takes the stage.
    bob = run(up, [*approve[:3], approval, *approve[4:]], env)
    assert bob.returncode == 0, bob.stderr
    assert bob.stdout.startswith(f"approval {approval} approved by bob (approvers: bob)"), bob.stdout
    ramp = until("the bot at seven-dollars", lambda: (r := control(up, "status")["ramp"])["stage"] == 2 and r)
    assert ramp["name"] == "seven-dollars"
    taken = ramp["history"][-1]
    assert (taken["to"], taken["requested_by"], taken["approvers"]) == ("seven-dollars", "alice", ["bob"]), taken
    assert until("tradingbot_ramp_stage 2", lambda: ramp_series(up) == 2.0)

    # The audit: alice's request, bob's approval (on the alert's instance: the bot's, which --target paper-1 finds),
    # each under the principal that authenticated it, and the promotion the reconciler sent on them.
    shown = run(up, audit, env)
    assert shown.returncode == 0, shown.stderr
    entries = shown.stdout.splitlines()
    bot = up.ports.address("bot")
    assert any(" alice from " in e and " ramp_promotion_request paper-1 " in e for e in entries), shown.stdout
    assert any(" bob from " in e and f" approve {bot} (approval:{approval})" in e for e in entries), shown.stdout
    sent = f" ramp_promote paper-1 (approval:{approval}): "
    assert any(
        " reconciler from " in e and sent in e and 'stage "five-dollars" -> "seven-dollars"' in e for e in entries
    ), shown.stdout
