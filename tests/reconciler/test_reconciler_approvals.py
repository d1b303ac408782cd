"""Approvals: a step marked `approval: required` waits for a person's decision (CLI or API), pages through a real
Alertmanager while it waits, and does what the rule says when nobody answers; on SQLite and PostgreSQL, across a
restart and with two replicas. Needs the `prometheus-alertmanager` binary (the fixtures start it) and PostgreSQL on
127.0.0.1:5432."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from alertmanager_server import Alertmanager, run_alertmanager
from fake_bot import FakeBot
from paper_helpers import IdleStrategy, fast_config
from ports import free_port
from prometheus_client import CollectorRegistry
from prometheus_server import start_prometheus
from reconciler_server import AUTH, BOT_TOKEN, READ_AUTH, READ_TOKEN, TOKEN
from secret_file import write_secret
from server_process import stop, wait_http
from system_binaries import REPO_ROOT
from webhook_payloads import alert, payload

from trading_ops.cli import main
from trading_ops.config import load_config
from trading_ops.db.base import make_engine
from trading_ops.db.states import CLOSED_STATES
from trading_ops.decisions import ensure_key_files
from trading_ops.paper.bot import PaperBot
from trading_ops.reconciler import keys
from trading_ops.reconciler.actions.escalate import APPROVAL_REQUESTED, FAILED
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.console import COOKIE
from trading_ops.reconciler.ledger import Ledger

pytestmark = [pytest.mark.alertmanager]

# The desk's token (reconciler.api_tokens): the `approve` scope, which no other scope includes.
APPROVE_TOKEN = "approve-token-of-the-desk-0123456789"
APPROVE_AUTH = {"Authorization": f"Bearer {APPROVE_TOKEN}"}


FLATTEN = {
    "name": "flatten-on-request",
    "match": ['alertname="TradingBotFlattenRequested"'],
    "allow_destructive": True,
    "approval": "required",
    "approval_timeout": "30s",
    "hard_limit": ['severity="critical"'],
    "max_attempts": 1,
    "cooldown": 0,
    "verify": False,
    "steps": [{"action": "bot", "command": "cancel_all"}, {"action": "bot", "command": "flatten"}],
}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """main() points logging at this test's captured stderr; later tests must not write to it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_config(
    tmp_path: Path, db: str, bot: FakeBot, am_url: str, rule: dict[str, Any], bot_instance: str = "bot-1", **rc: Any
) -> Path:
    """A configuration file (the CLI reads it; the apps are built from it too) and its playbook file."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, value in (
        ("webhook-token", TOKEN),
        ("read-token", READ_TOKEN),
        ("bot-token", BOT_TOKEN),
        ("approve-token", APPROVE_TOKEN),
    ):
        (tmp_path / name).write_text(value)
    (tmp_path / "playbook.yml").write_text(yaml.safe_dump({"version": 1, "rules": [rule]}))
    data = {
        "database": {"url": db},
        "reconciler": {
            "token_file": str(tmp_path / "webhook-token"),
            "read_token_file": str(tmp_path / "read-token"),
            # The desk's token: the `approve` scope, which no other scope includes.
            "api_tokens": [{"name": "desk", "scope": "approve", "token_file": str(tmp_path / "approve-token")}],
            "playbook": str(tmp_path / "playbook.yml"),
            "poll_interval_seconds": 0.05,
            "lease_seconds": 10,  # half: the idle-in-transaction limit (1.5 s cut starved sessions)
            "check_silences": False,
            "prometheus_url": "http://127.0.0.1:9",
            "alertmanager_url": am_url,
            "watchdog": {"window_seconds": 0},
            "targets": {bot_instance: {"url": bot.url, "token_file": str(tmp_path / "bot-token")}},
            **rc,
        },
    }
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def poll(fetch: Any, check: Any, what: str, deadline: float = 20.0) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = await fetch()
        if check(value):
            return value
        assert time.monotonic() < end, f"{what} not reached within {deadline}s: {value}"
        await asyncio.sleep(0.05)


async def approvals(client: Any, status: str | None = None) -> list[dict[str, Any]]:
    query = f"?status={status}" if status else ""
    resp = await client.get(f"/api/v1/approvals{query}", headers=READ_AUTH)
    assert resp.status == 200
    return list((await resp.json())["approvals"])


async def one_pending(client: Any) -> dict[str, Any]:
    found = await poll(lambda: approvals(client, "pending"), lambda a: len(a) == 1, "one pending approval")
    return dict(found[0])


async def episode(client: Any, state: str) -> dict[str, Any]:
    async def fetch() -> list[dict[str, Any]]:
        return list((await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"])

    found = await poll(fetch, lambda e: len(e) == 1 and e[0]["state"] == state, f"the episode {state}")
    return dict(found[0])


async def held_page(am: Alertmanager, alertname: str, **labels: str) -> dict[str, Any]:
    """The page Alertmanager holds with these labels (posting is asynchronous: polled)."""

    async def fetch() -> list[dict[str, Any]]:
        return list(await asyncio.to_thread(am.get, "alerts"))

    def find(held: list[dict[str, Any]]) -> bool:
        return any(a["labels"]["alertname"] == alertname and labels.items() <= a["labels"].items() for a in held)

    held = await poll(fetch, find, f"a {alertname} page with {labels}")
    return next(a for a in held if a["labels"]["alertname"] == alertname and labels.items() <= a["labels"].items())


def cli(config: Path, *args: str) -> int:
    return main(["-c", str(config), "reconciler", *args])


async def cli_decide(config: Path, client: Any, *args: str, token_file: str = "approve-token") -> int:
    """`reconciler approve|reject ...` as a person runs it: with their own token, through the reconciler's API (in a
    thread: the test's server answers on this event loop)."""
    url = str(client.make_url("")).rstrip("/")
    argv = [*args, "--token-file", str(config.parent / token_file), "--url", url]
    return await asyncio.to_thread(cli, config, *argv)


def flatten_alert(am: Alertmanager, **labels: str) -> dict[str, Any]:
    """The webhook Alertmanager sends for a firing TradingBotFlattenRequested it holds (an episode that waited asks
    Alertmanager whether its alert still fires before it acts)."""
    full = {"alertname": "TradingBotFlattenRequested", "instance": "bot-1", "run": uuid.uuid4().hex[:8], **labels}
    held = am.fire(full)
    fired = alert(fingerprint=held["fingerprint"], starts_at=held["startsAt"], **full)
    return payload(fired)


async def decide(client: Any, approval_id: int, decision: str, headers: dict[str, str], **body: str) -> Any:
    return await client.post(f"/api/v1/approvals/{approval_id}", json={"decision": decision, **body}, headers=headers)


async def test_approved_by_api_the_step_runs_once_and_the_decision_is_recorded(
    aiohttp_client: Any, tmp_path: Path, migrated_db: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    instance = f"bot-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, migrated_db, fake_bot, alertmanager.url, FLATTEN, bot_instance=instance)
    client = await aiohttp_client(create_app(load_config(config)))
    assert (
        await client.post("/api/v1/alertmanager", json=flatten_alert(alertmanager, instance=instance), headers=AUTH)
    ).status == 200
    pending = await one_pending(client)
    # Asked, not acted: cancel_all and flatten (the rule's approval covers every destructive step) wait for one
    # decision, its steps listed, and the episode too.
    assert fake_bot.commands() == []
    assert pending["step"] == 1 and pending["action"] == "bot" and pending["rule"] == "flatten-on-request"
    assert pending["step_name"] == "bot command=cancel_all, then bot command=flatten"
    assert json.loads(pending["arguments"]) == {
        "steps": [
            {"action": "bot", "params": {"command": "cancel_all"}},
            {"action": "bot", "params": {"command": "flatten"}},
        ]
    }
    assert pending["playbook_version"] == client.app[keys.PLAYBOOK].version
    assert (await episode(client, "waiting"))["detail"].startswith(f"awaiting approval {pending['id']}")
    # The page says what and how to answer.
    page = await held_page(alertmanager, APPROVAL_REQUESTED, approval=str(pending["id"]), instance=instance)
    description = page["annotations"]["description"]
    assert f"trading-ops reconciler approve {pending['id']}" in description
    assert f"/api/v1/approvals/{pending['id']}" in page["annotations"]["approval_url"]
    assert (
        "steps 1 to 2 on one approval: bot command=cancel_all [destructive], then bot command=flatten [destructive]"
        in description
    )
    # The requester's own token never decides; a read token cannot (one line naming the scope); the desk's does.
    refused = await decide(client, pending["id"], "approve", AUTH, reason="me")
    assert refused.status == 403 and "requester" in (await refused.json())["error"]
    refused = await decide(client, pending["id"], "approve", READ_AUTH, reason="me too")
    assert refused.status == 403
    assert (await refused.json())[
        "error"
    ] == "deciding an approval needs the 'approve' scope; token 'read_token' has 'read'"
    assert (await decide(client, pending["id"], "maybe", APPROVE_AUTH)).status == 400
    ok = await decide(client, pending["id"], "approve", APPROVE_AUTH, reason="desk agrees", by="alice")
    assert ok.status == 200, await ok.text()
    decided = await ok.json()
    assert decided["status"] == "approved" and (decided["decided_by"], decided["decided_token"]) == ("alice", "desk")
    # One decision: both steps run, and nothing more is asked.
    done = await episode(client, "recovered")
    assert fake_bot.commands() == ["cancel_all", "flatten"]
    assert [a["outcome"] for a in done["attempts"]] == ["success"]
    listed = {a["id"]: a for a in await approvals(client)}
    assert list(listed) == [pending["id"]]
    assert listed[pending["id"]]["status"] == "executed" and listed[pending["id"]]["reason"] == "desk agrees"
    again = await decide(client, pending["id"], "reject", APPROVE_AUTH, reason="too late", by="carol")
    assert again.status == 409 and "executed" in (await again.json())["error"]
    metrics = client.app[keys.METRICS]
    assert metrics.approval_decisions.labels("approved")._value.get() == 1
    text = await (await client.get("/metrics")).text()
    assert "tradingops_approvals_pending 0.0" in text
    assert "tradingops_approval_decision_seconds_count 1.0" in text


async def test_rejected_by_cli_nothing_runs_and_a_human_is_paged(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    capsys: pytest.CaptureFixture[str],
) -> None:
    instance = f"bot-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, migrated_sqlite, fake_bot, alertmanager.url, FLATTEN)
    client = await aiohttp_client(create_app(load_config(config)))
    await client.post("/api/v1/alertmanager", json=flatten_alert(alertmanager, instance=instance), headers=AUTH)
    pending = await one_pending(client)
    assert (
        await cli_decide(config, client, "reject", str(pending["id"]), "--reason", "position is hedged", "--as", "dana")
        == 0
    )
    assert f"approval {pending['id']} rejected by desk (approvers: -)" in capsys.readouterr().out
    done = await episode(client, "escalated")
    assert fake_bot.commands() == []
    assert 'rejected by desk (as "dana")' in done["detail"]
    page = await held_page(alertmanager, FAILED, instance=instance)
    assert 'rejected by desk (as "dana")' in page["annotations"]["description"]
    assert "position is hedged" in page["annotations"]["description"]
    # Decided once: a second answer is one line, exit 1.
    assert await cli_decide(config, client, "approve", str(pending["id"]), "--reason", "oops", "--as", "erin") == 1
    # (The app's own log lines share this stderr since main() set up logging: the CLI's is the last.)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops: ")][-1]
    assert err.startswith("trading-ops: reconciler approve: approval") and 'is rejected by desk (as "dana")' in err
    # Nor may anyone decide under the requester's name.
    assert client.app[keys.METRICS].approval_decisions.labels("rejected")._value.get() == 1


async def test_a_decision_without_a_typed_name_names_its_principal_on_every_surface(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Approved with the desk's token and no --as (as the docs run it): the listing, the episode's history, the
    console and a later refusal each say the desk decided, the principal first, never an empty typed name."""
    instance = f"bot-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, migrated_sqlite, fake_bot, alertmanager.url, FLATTEN, bot_instance=instance)
    client = await aiohttp_client(create_app(load_config(config)))
    await client.post("/api/v1/alertmanager", json=flatten_alert(alertmanager, instance=instance), headers=AUTH)
    pending = await one_pending(client)
    assert await cli_decide(config, client, "approve", str(pending["id"]), "--reason", "flatten it") == 0
    assert f"approval {pending['id']} approved by desk (approvers: desk)" in capsys.readouterr().out
    done = await episode(client, "recovered")
    assert cli(config, "approvals") == 0
    listed = capsys.readouterr().out
    assert f"{pending['id']}  executed" in listed and " by desk: flatten it  asked by " in listed, listed
    assert '""' not in listed
    assert cli(config, "history", str(done["id"])) == 0
    assert "; approved by desk at " in capsys.readouterr().out
    assert await cli_decide(config, client, "reject", str(pending["id"]), "--reason", "too late") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops: ")][-1]
    assert f"approval {pending['id']} is executed by desk at " in err, err
    text = await console_page(client, READ_TOKEN, "/ui/approvals")
    assert ' by <span class="token">desk</span>: flatten it' in text, text


async def page_ended(am: Alertmanager, alertname: str, **labels: str) -> None:
    """Until Alertmanager holds no firing alert of `alertname` with these labels (an ended one is not listed)."""

    async def fetch() -> list[dict[str, Any]]:
        return list(await asyncio.to_thread(am.get, "alerts"))

    def gone(held: list[dict[str, Any]]) -> bool:
        return not any(a["labels"]["alertname"] == alertname and labels.items() <= a["labels"].items() for a in held)

    await poll(fetch, gone, f"the {alertname} page with {labels} ended")


@pytest.mark.parametrize("decision", ["approve", "reject"])
async def test_the_approval_page_ends_with_the_decision(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    decision: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A decided approval's page stops firing at once (it kept firing for Alertmanager's resolve_timeout, 5 min,
    after the decision); the page of the step asked next fires in its place, and ends with its own decision."""
    instance = f"bot-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, migrated_sqlite, fake_bot, alertmanager.url, FLATTEN, bot_instance=instance)
    client = await aiohttp_client(create_app(load_config(config)))
    await client.post("/api/v1/alertmanager", json=flatten_alert(alertmanager, instance=instance), headers=AUTH)
    pending = await one_pending(client)
    await held_page(alertmanager, APPROVAL_REQUESTED, approval=str(pending["id"]), instance=instance)
    ok = await decide(client, pending["id"], decision, APPROVE_AUTH, reason="looked at it", by="alice")
    assert ok.status == 200, await ok.text()
    await page_ended(alertmanager, APPROVAL_REQUESTED, approval=str(pending["id"]))
    if decision == "reject":
        await held_page(alertmanager, FAILED, instance=instance)  # the rejection's own page stays: it is news
        return
    await episode(client, "recovered")  # the one approval covered both steps: no other page was asked
    await page_ended(alertmanager, APPROVAL_REQUESTED, instance=instance)
    # `reconciler history ID` shows the episode's approvals, as the console does: who decided each step, and why.
    capsys.readouterr()
    assert cli(config, "history", str(pending["episode_id"])) == 0
    shown = capsys.readouterr().out.splitlines()
    at = shown.index("  approvals:")
    assert shown[at + 1].startswith(
        f"    {pending['id']}  executed   step 1: bot command=cancel_all, then bot command=flatten  asked "
    )
    assert shown[at + 1].endswith(": looked at it") and '; approved by desk (as "alice") at ' in shown[at + 1]
    assert not shown[at + 2].startswith("    "), shown  # one decision for both steps


CSRF = re.compile(r'name="csrf" value="([^"]+)"')
REFRESH = '<meta http-equiv="refresh"'


async def console_page(client: Any, token: str, path: str) -> str:
    """A console page as a person logged in with `token` sees it (a login of its own, its session cookie)."""
    form = await client.get("/ui/login")
    nonce = CSRF.search(await form.text())
    assert nonce is not None
    done = await client.post("/ui/login", data={"csrf": nonce.group(1), "token": token}, allow_redirects=False)
    assert done.status == 303, await done.text()
    sid = done.cookies[COOKIE].value
    client.session.cookie_jar.clear()
    page = await client.get(path, headers={"Cookie": f"{COOKIE}={sid}"})
    assert page.status == 200
    return str(await page.text())


async def test_the_fleet_card_says_an_approval_waits_and_pages_reload_while_something_is_pending(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    """The Fleet card of a bot says an approval waits for it (linked to the Approvals page); while something is
    pending, the console's pages reload themselves (a meta refresh, no JavaScript), except a page with a decision form
    to fill in; once it is over, none does."""
    config = write_config(tmp_path, migrated_sqlite, fake_bot, alertmanager.url, FLATTEN, bot_instance="bot-1")
    client = await aiohttp_client(create_app(load_config(config)))
    await client.post("/api/v1/alertmanager", json=flatten_alert(alertmanager, instance="bot-1"), headers=AUTH)
    pending = await one_pending(client)
    fleet = await console_page(client, APPROVE_TOKEN, "/ui/")
    assert '<dt>Approvals</dt><dd><a href="/ui/approvals">1 waiting</a></dd>' in fleet and REFRESH in fleet
    assert REFRESH not in await console_page(client, APPROVE_TOKEN, "/ui/approvals")  # the approver's form stays
    assert REFRESH in await console_page(client, READ_TOKEN, "/ui/approvals")  # a reader watches it change
    assert REFRESH in await console_page(client, READ_TOKEN, f"/ui/episodes/{pending['episode_id']}")
    ok = await decide(client, pending["id"], "approve", APPROVE_AUTH, reason="go", by="alice")
    assert ok.status == 200
    await episode(client, "recovered")
    fleet = await console_page(client, APPROVE_TOKEN, "/ui/")
    assert "<dt>Approvals</dt><dd>none waiting</dd>" in fleet and REFRESH not in fleet
    assert REFRESH not in await console_page(client, READ_TOKEN, f"/ui/episodes/{pending['episode_id']}")


async def test_the_pause_page_ends_when_the_bot_is_resumed(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    """TradingOpsBotPaused, which a protective pause posts, fires while the bot stays paused and ends once a person
    resumes it (it stayed for Alertmanager's resolve_timeout, 5 min, after the resume)."""
    instance = f"bot-{uuid.uuid4().hex[:8]}"
    rule = {
        "name": "pause-on-rejects",
        "match": ['alertname="TradingBotFlattenRequested"'],
        "max_attempts": 1,
        "cooldown": 0,
        "verify": False,
        "steps": [
            {"action": "bot", "command": "pause"},
            {
                "action": "escalate",
                "alertname": "TradingOpsBotPaused",
                "severity": "warning",
                "description": "${instance} paused: resume it once the cause is fixed",
            },
        ],
    }
    config = write_config(tmp_path, migrated_sqlite, fake_bot, alertmanager.url, rule, bot_instance=instance)
    client = await aiohttp_client(create_app(load_config(config)))
    await client.post("/api/v1/alertmanager", json=flatten_alert(alertmanager, instance=instance), headers=AUTH)
    await held_page(alertmanager, "TradingOpsBotPaused", instance=instance)
    assert fake_bot.state == "paused"
    # While the bot stays paused the page stands: the reconciler asked the bot twice, and it still fires.
    await poll(lambda: asyncio.sleep(0, len(fake_bot.reads)), lambda n: n >= 2, "two looks at the bot")
    await held_page(alertmanager, "TradingOpsBotPaused", instance=instance)
    async with aiohttp.ClientSession() as session:  # a person resumes it, on the bot's own control API
        async with session.post(
            f"{fake_bot.url}/control/resume", json={}, headers={"Authorization": f"Bearer {BOT_TOKEN}"}
        ) as resp:
            assert resp.status == 200
    await page_ended(alertmanager, "TradingOpsBotPaused", instance=instance)
    # The steps as the history and the console show them: the alert's labels filled in, as in the page itself.
    (done,) = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
    shown = await (await client.get(f"/api/v1/episodes/{done['id']}", headers=READ_AUTH)).json()
    names = [step["description"] for attempt in shown["attempts"] for step in attempt["steps"]]
    assert f"description={instance} paused: resume it once the cause is fixed" in names[1], names
    assert not any("${" in name for name in names), names


async def test_a_bot_alert_of_an_instance_not_configured_is_recorded_and_never_acted_on_or_paged(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    """A ghost: a bot alert (service="tradingbot") whose instance is none of the configured bots (an earlier stack's
    bot, since gone) is recorded as an episode skipped, and nothing is asked, done or paged for it."""
    config = write_config(tmp_path, migrated_sqlite, fake_bot, alertmanager.url, FLATTEN, bot_instance="bot-1")
    client = await aiohttp_client(create_app(load_config(config)))
    ghost = f"127.0.0.1:{free_port()}"
    body = flatten_alert(alertmanager, instance=ghost, service="tradingbot")
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    done = await episode(client, "skipped")
    assert done["detail"] == (
        f"instance {ghost} is not a bot of this reconciler's configuration (bots:, reconciler.targets): recorded, "
        "not acted on or escalated"
    )
    assert fake_bot.commands() == [] and await approvals(client) == []
    held = await asyncio.to_thread(alertmanager.get, "alerts")
    assert [a["labels"]["alertname"] for a in held if a["labels"].get("instance") == ghost] == [
        "TradingBotFlattenRequested"  # the alert itself, as Prometheus fired it: no page of the reconciler's
    ]


@pytest.mark.parametrize(
    ("on_timeout", "final", "commands"), [("escalate", "escalated", []), ("skip", "recovered", [])]
)
async def test_an_approval_nobody_answers_does_what_the_rule_says(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    on_timeout: str,
    final: str,
    commands: list[str],
) -> None:
    instance = f"bot-{uuid.uuid4().hex[:8]}"
    rule = {**FLATTEN, "approval_timeout": "1s", "on_timeout": on_timeout}
    config = write_config(tmp_path, migrated_sqlite, fake_bot, alertmanager.url, rule)
    client = await aiohttp_client(create_app(load_config(config)))
    await client.post("/api/v1/alertmanager", json=flatten_alert(alertmanager, instance=instance), headers=AUTH)
    done = await episode(client, final)
    assert fake_bot.commands() == commands
    listed = await approvals(client)
    # escalate: the approval expired and the episode ended; skip: the one approval of both steps expired, and each
    # step was skipped.
    assert [a["status"] for a in listed] == ["expired"]
    assert client.app[keys.METRICS].approval_decisions.labels("expired")._value.get() == len(listed)
    steps = done["attempts"][-1]["steps"]
    if on_timeout == "escalate":
        assert [s["outcome"] for s in steps] == ["expired"]
        page = await held_page(alertmanager, FAILED, instance=instance)
        assert "expired unanswered" in page["annotations"]["description"]
    else:
        assert [s["outcome"] for s in steps] == ["skipped", "skipped"]
    late = await decide(client, listed[0]["id"], "approve", APPROVE_AUTH, reason="late", by="frank")
    assert late.status == 409


async def test_a_hard_limit_breach_runs_its_protective_steps_without_approval(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    config = write_config(tmp_path, migrated_sqlite, fake_bot, alertmanager.url, FLATTEN)
    client = await aiohttp_client(create_app(load_config(config)))
    await client.post("/api/v1/alertmanager", json=flatten_alert(alertmanager, severity="critical"), headers=AUTH)
    await episode(client, "recovered")
    assert fake_bot.commands() == ["cancel_all", "flatten"]
    assert await approvals(client) == []


async def test_a_closed_episode_is_refused(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, migrated_sqlite, fake_bot, alertmanager.url, FLATTEN)
    client = await aiohttp_client(create_app(load_config(config)))
    body = flatten_alert(alertmanager)
    await client.post("/api/v1/alertmanager", json=body, headers=AUTH)
    pending = await one_pending(client)
    # The alert resolves: the episode closes, and its approval can no longer be decided.
    resolved = {**body["alerts"][0], "status": "resolved"}
    await client.post("/api/v1/alertmanager", json=payload(resolved), headers=AUTH)
    await episode(client, "resolved")
    refused = await decide(client, pending["id"], "approve", APPROVE_AUTH, reason="ok", by="gina")
    assert refused.status == 409 and "is resolved" in (await refused.json())["error"]
    assert await cli_decide(config, client, "approve", str(pending["id"]), "--reason", "ok", "--as", "gina") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops: ")]
    assert (
        err[-1]
        == f"trading-ops: reconciler approve: approval {pending['id']}: episode {pending['episode_id']} is resolved"
    )
    text = await (await client.get("/metrics")).text()
    assert "tradingops_approvals_pending 0.0" in text
    assert fake_bot.commands() == []
    # Retention prunes a closed episode with its approvals.
    later = datetime.now(UTC) + timedelta(days=1)
    pruned = await asyncio.to_thread(client.app[keys.LEDGER].prune_episodes, later, 100)
    assert pruned["episodes"] == 1 and await approvals(client) == []


async def test_a_pending_approval_survives_a_restart(
    aiohttp_client: Any, tmp_path: Path, migrated_db: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    config = write_config(tmp_path, migrated_db, fake_bot, alertmanager.url, FLATTEN)
    first = await aiohttp_client(create_app(load_config(config)))
    await first.post("/api/v1/alertmanager", json=flatten_alert(alertmanager), headers=AUTH)
    pending = await one_pending(first)
    await first.close()  # the reconciler stops while the approval waits
    text_before = None
    second = await aiohttp_client(create_app(load_config(config)))
    assert (await one_pending(second))["id"] == pending["id"]
    text_before = await (await second.get("/metrics")).text()
    assert "tradingops_approvals_pending 1.0" in text_before
    assert (await decide(second, pending["id"], "approve", APPROVE_AUTH, reason="go", by="hana")).status == 200
    await episode(second, "recovered")
    assert fake_bot.commands() == ["cancel_all", "flatten"]


@pytest.mark.postgres
async def test_two_replicas_one_decision_one_execution(
    aiohttp_client: Any, tmp_path: Path, postgres_url: str, fake_bot: FakeBot, alertmanager: Alertmanager
) -> None:
    from trading_ops.db import migrate

    await asyncio.to_thread(migrate.upgrade, postgres_url)
    rule = {**FLATTEN, "steps": [{"action": "bot", "command": "flatten"}]}
    fake_bot.delay = 0.3  # the run spans many polls of the other replica
    clients = []
    for name in ("replica-a", "replica-b"):
        config = write_config(tmp_path / name, postgres_url, fake_bot, alertmanager.url, rule, instance=name)
        clients.append(await aiohttp_client(create_app(load_config(config))))
    body = flatten_alert(alertmanager)
    # Alertmanager's HA pair: every notification reaches both replicas.
    for client in clients:
        assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    pending = await one_pending(clients[0])
    assert pending["requested_by_instance"] in ("replica-a", "replica-b") and pending["requested_by"] == "reconciler"
    # Two people answering at once through both replicas: one decision.
    answers = await asyncio.gather(
        decide(clients[0], pending["id"], "approve", APPROVE_AUTH, reason="one", by="ines"),
        decide(clients[1], pending["id"], "reject", APPROVE_AUTH, reason="two", by="jon"),
    )
    assert sorted(a.status for a in answers) == [200, 409]
    winner = await next(a for a in answers if a.status == 200).json()
    final = "recovered" if winner["status"] == "approved" else "escalated"
    await episode(clients[0], final)
    await episode(clients[1], final)
    assert fake_bot.commands() == (["flatten"] if final == "recovered" else [])
    ledger = Ledger(make_engine(postgres_url))
    try:
        rows = ledger.list_episodes()
        assert len(rows) == 1 and len(rows[0]["attempt_list"]) == 1
    finally:
        ledger.engine.dispose()


# ---- the whole pipeline: Alertmanager routes the alert to the reconciler, and the page to a person --------------


async def test_through_real_alertmanager_the_page_reaches_a_receiver_and_the_cli_approval_flattens(
    aiohttp_server: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    pages: list[dict[str, Any]] = []

    async def pager(request: web.Request) -> web.Response:
        pages.extend((await request.json())["alerts"])
        return web.json_response({})

    pager_app = web.Application()
    pager_app.router.add_post("/page", pager)
    pager_server = await aiohttp_server(pager_app)
    port = free_port()
    am_port = free_port()
    config = write_config(tmp_path, migrated_sqlite, fake_bot, f"http://127.0.0.1:{am_port}", FLATTEN)
    server = await aiohttp_server(create_app(load_config(config)), port=port)
    am = await asyncio.to_thread(
        start_routed_alertmanager,
        tmp_path / "am",
        am_port,
        f"{server.make_url('/api/v1/alertmanager')}",
        f"{pager_server.make_url('/page')}",
    )
    try:
        am.post_alerts([{"labels": {"alertname": "TradingBotFlattenRequested", "instance": "bot-1"}}])

        async def fetch() -> list[dict[str, Any]]:
            return list(pages)

        seen = await poll(fetch, lambda p: any(a["labels"]["alertname"] == APPROVAL_REQUESTED for a in p), "a page")
        page = next(a for a in seen if a["labels"]["alertname"] == APPROVAL_REQUESTED)
        approval_id = page["labels"]["approval"]
        assert fake_bot.commands() == []
        assert await cli_decide(config, server, "approve", approval_id, "--reason", "ok", "--as", "kim") == 0

        async def bot_calls() -> list[str]:
            return fake_bot.commands()

        await poll(bot_calls, lambda c: c == ["cancel_all", "flatten"], "the bot flattened")
    finally:
        stop(am.proc)


def start_routed_alertmanager(tmp: Path, port: int, reconciler_url: str, pager_url: str) -> Alertmanager:
    """A real Alertmanager routing trading-bot alerts to the reconciler and the reconciler's pages to a pager."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {
            "receiver": "pager",
            "group_by": ["alertname", "instance", "approval"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
            "routes": [{"receiver": "reconciler", "matchers": ['alertname=~"TradingBot.*"']}],
        },
        "receivers": [
            {"name": "pager", "webhook_configs": [{"url": pager_url}]},
            {
                "name": "reconciler",
                "webhook_configs": [
                    {
                        "url": reconciler_url,
                        "send_resolved": True,
                        "http_config": {"authorization": {"type": "Bearer", "credentials": TOKEN}},
                    }
                ],
            },
        ],
    }
    return start_alertmanager_with(tmp, port, config)


def start_alertmanager_with(tmp: Path, port: int, config: dict[str, Any]) -> Alertmanager:
    (tmp / "am.yml").write_text(yaml.safe_dump(config))
    return run_alertmanager(tmp / "am.yml", tmp / "data", port, tmp / "am.log")


# ---- the playbook's approval keys ----------------------------------------------------------------------------------


def test_the_playbook_says_which_steps_wait_and_refuses_bad_approval_keys() -> None:
    from trading_ops.reconciler.playbook import PlaybookError, parse_playbook

    rule = {
        **FLATTEN,
        "steps": [
            {"action": "bot", "command": "reconnect"},  # safe: the rule's approval does not cover it
            {"action": "bot", "command": "flatten", "approval_timeout": "2m", "on_timeout": "skip"},
            {"action": "bot", "command": "cancel_all", "approval": "none"},  # its own say wins
            {"action": "escalate", "approval": "required"},
        ],
    }
    playbook = parse_playbook({"rules": [rule]})
    (parsed,) = playbook.rules
    soft, hard = {"severity": "warning"}, {"severity": "critical"}
    assert [parsed.needs_approval(s, soft) for s in parsed.steps] == [False, True, False, True]
    assert [parsed.needs_approval(s, hard) for s in parsed.steps] == [False, False, False, False]
    assert (parsed.steps[1].approval_timeout, parsed.steps[1].on_timeout) == (120.0, "skip")
    assert (parsed.steps[3].approval_timeout, parsed.steps[3].on_timeout) == (30.0, "escalate")
    # The version follows what the playbook says, not how it is written.
    assert parse_playbook(yaml.safe_load(yaml.safe_dump({"rules": [rule]}))).version == playbook.version
    assert parse_playbook({"rules": [{**rule, "approval_timeout": "31s"}]}).version != playbook.version
    bad = [
        ({**FLATTEN, "approval": "yes"}, "rules[0].approval: expected one of required, none"),
        ({**FLATTEN, "on_timeout": "retry"}, "rules[0].on_timeout: expected one of escalate, skip"),
        ({**FLATTEN, "approval_timeout": "0s"}, "rules[0].approval_timeout: expected a duration longer than 0"),
        (
            {**FLATTEN, "on_recovery": [{"action": "notify", "title": "t", "approval": "required"}]},
            "rules[0].on_recovery[0].approval: only a rule's steps wait for an approval",
        ),
        ({**FLATTEN, "hard_limit": ["severity"]}, "rules[0].hard_limit[0]"),
    ]
    for data, message in bad:
        with pytest.raises(PlaybookError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_playbook({"rules": [data]})


async def test_a_reconciler_restarted_with_a_changed_playbook_asks_again_under_it(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    alertmanager: Alertmanager,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The first approval outlives the restart, even on a busy machine (2 s did not beside stress-ng: it expired first),
    # and its deadline comes within poll()'s 20 s.
    rule = {**FLATTEN, "approval_timeout": "8s", "steps": [{"action": "bot", "command": "flatten"}]}
    config = write_config(tmp_path, migrated_sqlite, fake_bot, alertmanager.url, rule)
    first = await aiohttp_client(create_app(load_config(config)))
    await first.post("/api/v1/alertmanager", json=flatten_alert(alertmanager), headers=AUTH)
    old = await one_pending(first)
    await first.close()
    # The playbook changes (a longer timeout) while the approval waits; the reconciler starts again under it.
    (tmp_path / "playbook.yml").write_text(
        yaml.safe_dump({"version": 1, "rules": [{**rule, "approval_timeout": "30s"}]})
    )
    second = await aiohttp_client(create_app(load_config(config)))
    refused = await decide(second, old["id"], "approve", APPROVE_AUTH, reason="ok", by="lena")
    assert refused.status == 409 and "playbook version" in (await refused.json())["error"]
    # At the old deadline the engine finds the approval bound to another playbook: superseded, and asked again.
    new = await poll(
        lambda: approvals(second, "pending"), lambda a: len(a) == 1 and a[0]["id"] != old["id"], "a new approval"
    )
    assert new[0]["playbook_version"] == second.app[keys.PLAYBOOK].version != old["playbook_version"]
    assert {a["id"]: a["status"] for a in await approvals(second)}[old["id"]] == "superseded"
    assert fake_bot.commands() == []
    assert await cli_decide(config, second, "approve", str(new[0]["id"]), "--reason", "ok", "--as", "lena") == 0
    await episode(second, "recovered")
    assert fake_bot.commands() == ["flatten"]
    assert cli(config, "approvals", "--status", "executed") == 0
    listed = capsys.readouterr().out
    assert f"{new[0]['id']}  executed" in listed and 'by desk (as "lena"): ok' in listed


# The shipped rule that takes a bot to its next ramp stage once a person approved it (trading-ops ramp promote).
RAMP_RULE = next(
    rule
    for rule in yaml.safe_load((REPO_ROOT / "trading_ops" / "reconciler" / "playbooks" / "default.yml").read_text())[
        "rules"
    ]
    if rule["name"] == "ramp-promote"
)
RAMP_STAGES = [
    {"name": "small", "max_position_notional": 1000, "symbols": ["BTC-USD"], "daily_loss_limit": 40, "min_time": "2d"},
    {"name": "bigger", "max_position_notional": 2500, "symbols": ["BTC-USD"], "daily_loss_limit": 40, "min_time": "2d"},
    {"name": "two-pairs", "max_position_notional": 2500, "symbols": ["BTC-USD", "ETH-USD"], "daily_loss_limit": 40},
]


@pytest.fixture
def scraping(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """(the bot's port, a real Prometheus scraping it every 200 ms): what the rule's verification asks."""
    port, prom_port = free_port(), free_port()
    (tmp_path / "prom").mkdir()
    scrape = {"job_name": "tradingbot", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
    (tmp_path / "prom" / "prometheus.yml").write_text(
        yaml.safe_dump({"global": {"scrape_interval": "200ms", "scrape_timeout": "150ms"}, "scrape_configs": [scrape]})
    )
    proc = start_prometheus(tmp_path / "prom" / "prometheus.yml", tmp_path / "prom" / "data", prom_port)
    try:
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", proc=proc, deadline=30)
        yield port, f"http://127.0.0.1:{prom_port}"
    finally:
        stop(proc)


async def signed_decisions_setup(
    tmp_path: Path, migrated_db: str, alertmanager: Alertmanager, scraping: tuple[int, str], rules: list[Any]
) -> tuple[Path, PaperBot, list[float]]:
    """The reconciler's configuration (`rules` its playbook, its signing key) and a paper bot with RAMP_STAGES that
    trusts the reconciler's public key only, on the scraped port; the bot's ramp clock (the test moves it)."""
    port, prometheus = scraping
    instance = f"127.0.0.1:{port}"
    for name, value in (("webhook-token", TOKEN), ("read-token", READ_TOKEN), ("bot-token", BOT_TOKEN)):
        write_secret(tmp_path / name, value)
    people = ("alice", "bob", "carol")
    for person in people:
        write_secret(tmp_path / f"{person}-token", f"approve-token-of-{person}-0123456789")
    (tmp_path / "playbook.yml").write_text(yaml.safe_dump({"version": 1, "rules": rules}))
    # The reconciler signs with its key; the bot trusts its public key only (not the tests' usual one).
    ensure_key_files(tmp_path / "secrets" / "decision-key", tmp_path / "decision-key.pub")
    data = {
        "database": {"url": migrated_db},
        "bot": {"data_dir": str(tmp_path / "bot"), "ramp": {"stages": RAMP_STAGES}},
        "bots": [
            {
                "name": "paper-1",
                "instance": instance,
                "url": f"http://{instance}",
                "token_file": str(tmp_path / "bot-token"),
            }
        ],
        "reconciler": {
            "token_file": str(tmp_path / "webhook-token"),
            "read_token_file": str(tmp_path / "read-token"),
            "api_tokens": [{"name": p, "scope": "approve", "token_file": str(tmp_path / f"{p}-token")} for p in people],
            "playbook": str(tmp_path / "playbook.yml"),
            "poll_interval_seconds": 0.05,
            "lease_seconds": 10,  # half: the idle-in-transaction limit (1.5 s cut starved sessions)
            "check_silences": False,
            "prometheus_url": prometheus,
            "alertmanager_url": alertmanager.url,
            "watchdog": {"window_seconds": 0},
            "decision_key_file": str(tmp_path / "secrets" / "decision-key"),
        },
    }
    config = tmp_path / "trading-ops.yaml"
    config.write_text(yaml.safe_dump(data))
    bot_config = fast_config(tmp_path / "paper", partial_fill_probability=0.0)
    bot_config.bot.ramp = load_config(config).bot.ramp
    bot_config.bot.decision_keys = [str(tmp_path / "decision-key.pub")]
    bot = PaperBot(bot_config, token=BOT_TOKEN, registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    clock = [time.time()]
    bot.ramp.wall = lambda: clock[0]
    bot.ramp.since = clock[0]
    await bot.start("127.0.0.1", port)
    return config, bot, clock


async def test_a_paper_bot_ramps_through_two_stages_each_on_a_persons_approval_bound_to_the_stage(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_db: str,
    alertmanager: Alertmanager,
    scraping: tuple[int, str],
    capsys: Any,
) -> None:
    """Two people, each with their own token: one asks (through the reconciler, which records the request under
    the token's name), the other approves; the requester's own approval, a stage that is not the next and a repeated
    request are refused at once with one line; the audit chain shows both principals of each promotion. Each stage
    is taken on a decision the reconciler signs from the approval, which the bot verifies."""
    port, _ = scraping
    instance = f"127.0.0.1:{port}"
    config, bot, clock = await signed_decisions_setup(tmp_path, migrated_db, alertmanager, scraping, [RAMP_RULE])
    client = await aiohttp_client(create_app(load_config(config)))
    url = str(client.make_url("")).rstrip("/")

    def ramp(person: str, stage: str) -> int:
        argv = ["-c", str(config), "ramp", "promote", "paper-1", "--to", stage, "--by", f"{person} at the desk"]
        return main([*argv, "--token-file", str(tmp_path / f"{person}-token"), "--url", url])

    def last_err() -> str:
        """The command's one line (the apps' own log lines share this stderr)."""
        return [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops: ")][-1]

    try:
        # Two stages ahead: refused at once, nothing asked.
        assert await asyncio.to_thread(ramp, "alice", "two-pairs") == 1
        assert last_err() == (
            "trading-ops: ramp: not asked: paper-1 is at stage small: its next stage is bigger, not two-pairs"
        )
        for number, (stage, asker, approver) in enumerate(
            (("bigger", "alice", "bob"), ("two-pairs", "bob", "carol")), 2
        ):
            clock[0] += 2 * 86400 + 1  # the stage's minimum time has passed
            # A person asks with their own token: the reconciler records it and posts the request to Alertmanager.
            assert await asyncio.to_thread(ramp, asker, stage) == 0
            asked = json.loads(capsys.readouterr().out.splitlines()[-1])
            assert (asked["stage"], asked["requested_by"]) == (stage, asker)
            # Asked again: refused, nothing more created.
            assert await asyncio.to_thread(ramp, asker, stage) == 1
            assert f"not asked: request {asked['request']} for paper-1 to {stage} by {asker} stands" in last_err()
            held = await held_page(alertmanager, "TradingBotRampPromotionRequested", instance=instance, stage=stage)
            assert (held["labels"]["requested_by"], held["labels"]["request"]) == (asker, str(asked["request"]))
            fired = alert(fingerprint=held["fingerprint"], starts_at=held["startsAt"], **held["labels"])
            assert (await client.post("/api/v1/alertmanager", json=payload(fired), headers=AUTH)).status == 200
            # Asked, not applied: the approval binds the step (its exact body) and knows its requester.
            pending = await one_pending(client)
            assert pending["rule"] == "ramp-promote" and bot.ramp.number == number - 1
            assert (pending["kind"], pending["required"], pending["requested_by"]) == ("ramp_promotion", 1, asker)
            bound = json.loads(pending["arguments"])
            assert (bound["params"]["command"], bound["params"]["body"]["stage"]) == ("ramp_promote", "${stage}")
            got = await client.get(f"/api/v1/episodes/{pending['episode_id']}", headers=READ_AUTH)
            assert (await got.json())["labels"]["stage"] == stage  # the episode's stage: what the step is sent
            # The requester's own token never approves it, whatever name is typed beside it.
            own = ("approve", str(pending["id"]), "--reason", "mine", "--as", approver)
            assert await cli_decide(config, client, *own, token_file=f"{asker}-token") == 1
            assert last_err() == (
                f"trading-ops: reconciler approve: approval {pending['id']}: four eyes: {asker} asked for it and "
                "never decides its own request (ramp_promotion needs 1 other person)"
            )
            assert (await approvals(client, "pending"))[0]["approvers"] == []
            # Another person decides with theirs; the bot takes the stage, and Prometheus verifies it.
            decided = ("approve", str(pending["id"]), "--reason", "criteria pass")
            assert await cli_decide(config, client, *decided, token_file=f"{approver}-token") == 0
            await poll(lambda: asyncio.sleep(0, bot.ramp.number), lambda n: n == number, f"stage {number}")
            found = await poll(
                lambda: approvals(client),
                lambda a: a[0]["status"] == "executed",
                "the approval executed",
            )
            assert (found[0]["decided_token"], found[0]["approvers"], found[0]["requested_by"]) == (
                approver,
                [approver],
                asker,
            )
            assert value_of(bot, "tradingbot_ramp_stage") == number
        # Each stage on a decision the reconciler signed and the bot verified: its history names who asked and who
        # approved, and the decision; its status and metrics say the last one it acted on.
        assert [(h["to"], h["by"], h["requested_by"], h["approvers"]) for h in bot.ramp.history] == [
            ("bigger", "bob", "alice", ["bob"]),
            ("two-pairs", "carol", "bob", ["carol"]),
        ]
        status = (await bot_status(port))["decisions"]["ramp_promote"]
        assert (status["id"], status["stage"], status["approvers"]) == (
            bot.ramp.history[-1]["decision"],
            "two-pairs",
            ["carol"],
        )
        assert (
            bot.inst.registry.get_sample_value(
                "tradingbot_decisions_total", {"venue": "paper", "strategy": "demo", "kind": "ramp_promote"}
            )
            == 2
        )

        # The audit chain: each request and each approval under its principal, each promotion the reconciler sent the
        # bot on them (written once the bot answered: the approval is spent as its step starts, the stage changes
        # before the bot's answer, so the last entry may come a moment after both), and whole.
        async def audited() -> list[dict[str, Any]]:
            resp = await client.get("/api/v1/audit", headers=READ_AUTH)
            return list((await resp.json())["entries"])

        listed = await poll(audited, lambda e: len(e) >= 6, "the second promotion audited")
        entries = [(e["principal"], e["action"]) for e in reversed(listed)]
        assert entries == [
            ("alice", "ramp_promotion_request"),
            ("bob", "approve"),
            ("reconciler", "ramp_promote"),
            ("bob", "ramp_promotion_request"),
            ("carol", "approve"),
            ("reconciler", "ramp_promote"),
        ], entries
        promoted = [e for e in listed if e["action"] == "ramp_promote"]
        assert [(e["before"]["stage"], e["after"]["stage"]) for e in reversed(promoted)] == [
            ("small", "bigger"),
            ("bigger", "two-pairs"),
        ]
        from trading_ops import audit

        assert audit.verify(client.app[keys.LEDGER].engine).whole
        # The last stage has no next: asking is refused with one line, exit 2.
        assert main(["-c", str(config), "ramp", "promote", "paper-1", "--to", "small", "--by", "alice"]) == 2
        # Asking again for the stage it is at, the last: one line that says so, exit 1, nothing asked.
        assert await asyncio.to_thread(ramp, "alice", "two-pairs") == 1
        assert last_err() == (
            "trading-ops: ramp: not asked: paper-1 is at stage two-pairs already, its last stage: none comes after it "
            "(two-pairs asked)"
        )
    finally:
        await bot.stop()


# The shipped rule that clears a loss-limit halt once another person approved (trading-ops clear-halt).
CLEAR_HALT_RULE = next(
    rule
    for rule in yaml.safe_load((REPO_ROOT / "trading_ops" / "reconciler" / "playbooks" / "default.yml").read_text())[
        "rules"
    ]
    if rule["name"] == "clear-halt"
)


async def test_a_loss_limit_halt_clears_on_a_persons_approval_with_a_signed_decision(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_db: str,
    alertmanager: Alertmanager,
    scraping: tuple[int, str],
    capsys: Any,
) -> None:
    """A person asks with their own token (`trading-ops clear-halt`), the request's page reaches the reconciler, the
    requester's own approval is refused, another person approves: the reconciler sends the bot clear_halt with a
    decision it signed, the bot verifies it and lands paused; Prometheus verifies."""
    port, _ = scraping
    instance = f"127.0.0.1:{port}"
    config, bot, _ = await signed_decisions_setup(tmp_path, migrated_db, alertmanager, scraping, [CLEAR_HALT_RULE])
    bot.inst.state.apply("halt", reason="risk limit daily_loss: the day's loss 41 reached the daily loss limit 40")
    client = await aiohttp_client(create_app(load_config(config)))
    url = str(client.make_url("")).rstrip("/")
    try:
        ask = ["-c", str(config), "clear-halt", "paper-1", "--reason", "the gap is understood"]
        ask += ["--token-file", str(tmp_path / "alice-token"), "--url", url]
        assert await asyncio.to_thread(main, ask) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["requested_by"] == "alice"
        held = await held_page(alertmanager, "TradingBotClearHaltRequested", instance=instance)
        fired = alert(fingerprint=held["fingerprint"], starts_at=held["startsAt"], **held["labels"])
        assert (await client.post("/api/v1/alertmanager", json=payload(fired), headers=AUTH)).status == 200
        pending = await one_pending(client)
        assert pending["rule"] == "clear-halt" and bot.inst.state.state.value == "halted"
        decided = ("approve", str(pending["id"]), "--reason", "ok")
        # The requester's own token decides nothing; the bot stays halted.
        assert await cli_decide(config, client, *decided, token_file="alice-token") == 1
        assert bot.inst.state.state.value == "halted"
        assert await cli_decide(config, client, *decided, token_file="bob-token") == 0
        found = await poll(lambda: approvals(client), lambda a: a[0]["status"] == "executed", "the approval executed")
        assert (found[0]["requested_by"], found[0]["approvers"]) == ("alice", ["bob"])
        await poll(lambda: asyncio.sleep(0, bot.inst.state.state.value), lambda v: v == "paused", "paused")
        seen = (await bot_status(port))["decisions"]["clear_halt"]
        assert (seen["requested_by"], seen["approvers"]) == ("alice", ["bob"])
        episode = await poll(
            lambda: episode_of(client, pending["episode_id"]),
            lambda e: e["state"] in CLOSED_STATES,
            "the episode ended",
        )
        assert episode["state"] == "recovered", episode
    finally:
        await bot.stop()


async def episode_of(client: Any, episode_id: int) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/episodes/{episode_id}", headers=READ_AUTH)
    assert resp.status == 200
    answer: dict[str, Any] = await resp.json()
    return answer


async def bot_status(port: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {BOT_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/control/status", json={}, headers=headers) as response:
            assert response.status == 200
            answer: dict[str, Any] = await response.json()
            return answer


def value_of(bot: Any, name: str) -> float:
    return bot.inst.registry.get_sample_value(name, {"venue": "paper", "strategy": "demo"}) or 0.0
