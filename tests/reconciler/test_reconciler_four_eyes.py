"""Four eyes on the real reconciler app (SQLite and PostgreSQL, a real Alertmanager): a ramp promotion asked by one
person's token needs the configured number of *other* people; every way for the requester to decide its own request
or to get past the count (the API with any token, scope or `by`; the CLI with its own token; the console with its
session and CSRF) is refused with one line and changes nothing; each approver's decision is kept and the audit chain
shows every principal. A one-person team's explicit 0 lets the requester approve, and says so."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import Alertmanager
from console_client import log_in, page
from fake_bot import FakeBot
from people_reconciler import bearer, people_config, person_token_file
from people_reconciler import token_of as secret
from reconciler_server import AUTH, READ_AUTH
from webhook_payloads import alert, payload

from trading_ops import audit
from trading_ops.cli import main
from trading_ops.config import load_config
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.console import COOKIE

pytestmark = [pytest.mark.alertmanager]

PEOPLE = {"alice": "approve", "bob": "approve", "carol": "approve", "ops": "operate", "viewer": "read"}
STAGES = [{"name": "s1", "max_position_notional": 10}, {"name": "s2", "max_position_notional": 20},
          {"name": "s3", "max_position_notional": 30}]  # fmt: skip
RULE = {
    "name": "ramp-promote",
    "match": ['alertname="TradingBotRampPromotionRequested"'],
    "allow_destructive": True,
    "approval": "required",
    "approval_timeout": "1h",
    "max_attempts": 1,
    "cooldown": 0,
    "verify": False,
    "steps": [{"action": "bot", "command": "ramp_promote", "body": {"stage": "${stage}"}}],
}


CLEAR_RULE = {
    **RULE,
    "name": "clear-halt",
    "match": ['alertname="TradingBotClearHaltRequested"'],
    "steps": [{"action": "bot", "command": "clear_halt", "body": {"reason": "approved"}}],
}


def write_config(tmp_path: Path, db: str, bot: FakeBot, am_url: str, approvals: dict[str, int]) -> Path:
    # The reconciler signs the promotion's decision with its key (what a real bot verifies; the fake bot takes it).
    path, _trusted = people_config(
        tmp_path, db, bot, am_url, people=PEOPLE, rules=[RULE, CLEAR_RULE], approvals=approvals, stages=STAGES
    )
    return path


async def poll(fetch: Any, check: Any, what: str, tries: int = 400) -> Any:
    for _ in range(tries):
        value = await fetch()
        if check(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached: {value}")


async def approvals(client: Any) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/approvals", headers=READ_AUTH)
    return list((await resp.json())["approvals"])


async def ask_and_deliver(client: Any, am: Alertmanager, person: str, stage: str) -> dict[str, Any]:
    """`person` asks for `stage` over the API; Alertmanager's notification of the request reaches the reconciler;
    the approval it asks."""
    resp = await client.post("/api/v1/ramp/paper-1/promote", json={"stage": stage}, headers=bearer(person))
    assert resp.status == 200, await resp.text()
    asked = await resp.json()
    instance = client.app[keys.CONFIG].bots[0].instance

    async def held() -> list[dict[str, Any]]:
        return list(await asyncio.to_thread(am.get, "alerts"))

    def mine(alerts: list[dict[str, Any]]) -> bool:
        wanted = {"request": str(asked["request"]), "bot": "paper-1", "instance": instance, "stage": stage}
        return any(wanted.items() <= a["labels"].items() for a in alerts)

    found = next(a for a in await poll(held, mine, "the request in Alertmanager") if mine([a]))
    fired = alert(fingerprint=found["fingerprint"], starts_at=found["startsAt"], **found["labels"])
    assert (await client.post("/api/v1/alertmanager", json=payload(fired), headers=AUTH)).status == 200
    pending = await poll(lambda: approvals(client), lambda a: a and a[0]["status"] == "pending", "the approval")
    return dict(pending[0])


async def cli_decide(config: Path, client: Any, person: str, *args: str) -> int:
    url = str(client.make_url("")).rstrip("/")
    argv = ["-c", str(config), "reconciler", *args, "--token-file", str(person_token_file(config.parent, person))]
    return await asyncio.to_thread(main, [*argv, "--url", url])


@pytest.fixture
async def setup(
    aiohttp_client: Any, tmp_path: Path, migrated_db: str, fake_bot: FakeBot, alertmanager: Alertmanager, request: Any
) -> tuple[Any, Path, FakeBot]:
    fake_bot.ramp = {"stage": 1, "name": "s1", "stages": ["s1", "s2", "s3"]}
    approvals = getattr(request, "param", {"ramp_promotion": 2})
    config = write_config(tmp_path / uuid.uuid4().hex[:6], migrated_db, fake_bot, alertmanager.url, approvals)
    client = await aiohttp_client(create_app(load_config(config)))
    return client, config, fake_bot


async def test_two_others_must_approve_and_no_way_lets_the_requester_decide(
    setup: tuple[Any, Path, FakeBot], alertmanager: Alertmanager, capsys: Any
) -> None:
    client, config, bot = setup
    # A stage that is not the next one: refused at once, nothing recorded.
    resp = await client.post("/api/v1/ramp/paper-1/promote", json={"stage": "s3"}, headers=bearer("alice"))
    assert resp.status == 409
    assert (await resp.json())["error"] == "not asked: paper-1 is at stage s1: its next stage is s2, not s3"
    resp = await client.post("/api/v1/ramp/paper-1/promote", json={"stage": "s2"}, headers=bearer("viewer"))
    assert resp.status == 403 and "'operate' or 'approve' scope" in (await resp.json())["error"]
    pending = await ask_and_deliver(client, alertmanager, "alice", "s2")
    assert (pending["kind"], pending["required"], pending["requested_by"], pending["approvers"]) == (
        "ramp_promotion",
        2,
        "alice",
        [],
    )
    # Asked again while it stands: 409, nothing created.
    resp = await client.post("/api/v1/ramp/paper-1/promote", json={"stage": "s2"}, headers=bearer("alice"))
    assert resp.status == 409 and "stands until" in (await resp.json())["error"]
    path = f"/api/v1/approvals/{pending['id']}"
    four_eyes = (
        f"approval {pending['id']}: four eyes: alice asked for it and never decides its own request "
        "(ramp_promotion needs 2 other people)"
    )

    async def unchanged() -> None:
        now = (await approvals(client))[0]
        assert (now["status"], now["approvers"], now["decisions"]) == ("pending", [], [])
        assert bot.commands() == []

    # API: the requester's own token, whatever `by` says; the webhook token; a read or operate token.
    for headers, body, status in (
        (bearer("alice"), {"decision": "approve", "reason": "mine"}, 403),
        (bearer("alice"), {"decision": "approve", "reason": "as bob", "by": "bob"}, 403),
        (bearer("alice"), {"decision": "reject", "reason": "withdraw"}, 403),
        (AUTH, {"decision": "approve", "reason": "the reconciler"}, 403),
        (bearer("viewer"), {"decision": "approve", "reason": "x"}, 403),
        (bearer("ops"), {"decision": "approve", "reason": "x", "by": "carol"}, 403),
    ):
        resp = await client.post(path, json=body, headers=headers)
        answer = await resp.json()
        assert resp.status == status and len(answer["error"].splitlines()) == 1, answer
        if headers is not AUTH and headers != bearer("viewer") and headers != bearer("ops"):
            assert answer["error"] == four_eyes
        await unchanged()
    # CLI with the requester's own token: one line, exit 1.
    assert await cli_decide(config, client, "alice", "approve", str(pending["id"]), "--reason", "x", "--as", "bob") == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops: ")]
    assert lines[-1] == f"trading-ops: reconciler approve: {four_eyes}"
    await unchanged()
    # The CLI without a token of one's own: exit 2, nothing sent.
    argv = ["-c", str(config), "reconciler", "approve", str(pending["id"]), "--reason", "x", "--as", "bob"]
    assert await asyncio.to_thread(main, argv) == 2
    await unchanged()
    # Console: the requester's session, with its CSRF token.
    alice = await log_in(client, secret("alice"))
    status, text = await page(client, "/ui/approvals", alice)
    assert status == 200 and '<dd class="requester">alice</dd>' in text
    form = await _post_decision(client, alice, pending["id"], decision="approve", reason="me", by="bob")
    assert form.status == 303
    status, text = await page(client, "/ui/approvals", alice)
    assert "four eyes: alice asked for it and never decides its own request" in text
    await unchanged()
    # A second person approves in the console: recorded, still pending (2 needed).
    bob = await log_in(client, secret("bob"))
    assert (await _post_decision(client, bob, pending["id"], decision="approve", reason="fine", by="")).status == 303
    status, text = await page(client, "/ui/approvals", bob)
    assert "1 of 2 other approvers, it waits for more" in text
    now = (await approvals(client))[0]
    assert (now["status"], now["approvers"]) == ("pending", ["bob"])
    assert now["decisions"][0]["principal"] == "bob" and now["decisions"][0]["source"].startswith("console ")
    assert bot.commands() == []
    # bob again (another surface): refused, nothing changes.
    resp = await client.post(path, json={"decision": "approve", "reason": "again"}, headers=bearer("bob"))
    assert resp.status == 403 and "bob decided it already (approve)" in (await resp.json())["error"]
    # A third person with their own token (the CLI): approved, the step runs.
    assert await cli_decide(config, client, "carol", "approve", str(pending["id"]), "--reason", "ok") == 0
    out = capsys.readouterr().out
    assert f"approval {pending['id']} approved by carol (approvers: bob, carol)" in out

    async def commands() -> list[str]:
        return bot.commands()

    await poll(commands, lambda c: c == ["ramp_promote"], "the promotion sent to the bot")
    final = (await approvals(client))[0]
    assert (final["requested_by"], final["approvers"], final["self_approved"]) == ("alice", ["bob", "carol"], False)
    # The audit chain: the request and both approvals, each under its principal, then the command the reconciler sent
    # the bot with the decision it signed from them; whole.
    engine = client.app[keys.LEDGER].engine

    async def chain() -> list[Any]:
        return list(reversed(audit.entries(engine)))

    found = await poll(chain, lambda c: c[-1].action == "ramp_promote", "the promotion's audit entry")
    entries = [(e.principal, e.action, e.decision) for e in found]
    assert entries[0][:2] == ("alice", "ramp_promotion_request")
    assert entries[1:] == [
        ("bob", "approve", f"approval:{pending['id']}"),
        ("carol", "approve", f"approval:{pending['id']}"),
        ("reconciler", "ramp_promote", f"approval:{pending['id']}"),
    ]
    assert found[-1].target == "paper-1"
    assert (
        found[-1].comment
        == "sent with the decision signed from the approval: requested by alice, approved by bob, carol"
    )
    assert audit.verify(engine).whole


async def _post_decision(client: Any, sid: str, approval_id: int, **form: str) -> Any:
    """A decision posted as the approvals page's form posts it (with the session's CSRF token from that page)."""
    status, text = await page(client, "/ui/approvals", sid)
    assert status == 200, text
    csrf = re.search(r'name="csrf" value="([^"]+)"', text)
    assert csrf is not None
    data = {"csrf": csrf.group(1), **form}
    return await client.post(
        f"/ui/approvals/{approval_id}", data=data, headers={"Cookie": f"{COOKIE}={sid}"}, allow_redirects=False
    )


@pytest.mark.parametrize("setup", [{"ramp_promotion": 0}], indirect=True)
async def test_a_one_person_team_configured_with_zero_approves_its_own_request_and_it_says_so(
    setup: tuple[Any, Path, FakeBot], alertmanager: Alertmanager
) -> None:
    client, _config, bot = setup
    pending = await ask_and_deliver(client, alertmanager, "alice", "s2")
    assert pending["required"] == 0
    resp = await client.post(
        f"/api/v1/approvals/{pending['id']}", json={"decision": "approve", "reason": "alone"}, headers=bearer("alice")
    )
    decided = await resp.json()
    assert resp.status == 200 and decided["status"] == "approved" and decided["self_approved"] is True
    assert decided["approvers"] == ["alice"] and decided["requested_by"] == "alice"
    (entry,) = audit.entries(client.app[keys.LEDGER].engine, action="approve")
    assert entry.principal == "alice" and entry.comment.startswith(
        "approved by its requester (allowed by configuration)"
    )
    assert json.dumps(entry.after["approvers"]) == '["alice"]'

    async def commands() -> list[str]:
        return bot.commands()

    await poll(commands, lambda c: c == ["ramp_promote"], "the promotion sent to the bot")


def test_the_cli_with_no_reconciler_answering_is_one_line_exit_1(tmp_path: Path, capsys: Any) -> None:
    from ports import free_port

    (tmp_path / "bob-token").write_text(secret("bob"))
    config = tmp_path / "trading-ops.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": f"sqlite:///{tmp_path / 'ledger.db'}"}}))
    argv = [
        "-c",
        str(config),
        "reconciler",
        "approve",
        "7",
        "--reason",
        "ok",
        "--token-file",
        str(tmp_path / "bob-token"),
    ]
    assert main([*argv, "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trading-ops: reconciler approve: the reconciler at http://127.0.0.1:")
    assert "did not answer" in err[0]
    # An empty token file: exit 2, one line.
    (tmp_path / "empty-token").write_text("\n")
    argv[-1] = str(tmp_path / "empty-token")
    assert main(argv) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"trading-ops: reconciler approve: the token file {tmp_path / 'empty-token'} is empty"
    )


async def test_two_approvers_at_once_are_both_counted_and_no_request_field_lowers_the_count(
    setup: tuple[Any, Path, FakeBot], alertmanager: Alertmanager
) -> None:
    client, _config, bot = setup
    pending = await ask_and_deliver(client, alertmanager, "carol", "s2")
    path = f"/api/v1/approvals/{pending['id']}"
    # Fields a request may carry that would lower the count or change the decider: ignored, the count stands.
    forged = {
        "decision": "approve",
        "reason": "x",
        "by": "alice",
        "required": 0,
        "principal": "alice",
        "approvers": ["a"],
    }
    resp = await client.post(path, json=forged, headers=bearer("carol"))
    assert resp.status == 403 and "four eyes: carol asked for it" in (await resp.json())["error"]
    now = (await approvals(client))[0]
    assert (now["status"], now["approvers"], now["required"]) == ("pending", [], 2)
    # Two other people at once (one with the forged fields, which change nothing): the decisions are taken one after
    # the other, both counted; approved once, and the step runs once.
    answers = await asyncio.gather(
        client.post(path, json={"decision": "approve", "reason": "ok"}, headers=bearer("bob")),
        client.post(path, json=forged, headers=bearer("alice")),
    )
    assert [a.status for a in answers] == [200, 200]
    assert sorted([(await a.json())["status"] for a in answers]) == ["approved", "pending"]

    async def commands() -> list[str]:
        return bot.commands()

    await poll(commands, lambda c: c == ["ramp_promote"], "the promotion sent to the bot")
    final = (await approvals(client))[0]
    assert sorted(final["approvers"]) == ["alice", "bob"] and final["status"] in ("approved", "executed")
    assert final["requested_by"] == "carol" and final["decided_by"] in ("alice", None)
    assert bot.commands() == ["ramp_promote"]


async def test_a_request_alertmanager_does_not_take_is_withdrawn_and_may_be_asked_again(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    from ports import free_port

    fake_bot.ramp = {"stage": 1, "name": "s1"}
    config = write_config(tmp_path, migrated_sqlite, fake_bot, f"http://127.0.0.1:{free_port()}", {})
    client = await aiohttp_client(create_app(load_config(config)))
    for _ in range(2):  # the first was withdrawn: the second is no duplicate
        resp = await client.post("/api/v1/ramp/paper-1/promote", json={"stage": "s2"}, headers=bearer("alice"))
        error = (await resp.json())["error"]
        assert resp.status == 503 and error.startswith("not asked: Alertmanager took no request"), error
    engine = client.app[keys.LEDGER].engine
    actions = [(e.principal, e.action) for e in reversed(audit.entries(engine))]
    assert (
        actions
        == [
            ("alice", "ramp_promotion_request"),
            ("reconciler", "ramp_promotion_request_withdrawn"),
        ]
        * 2
    )
    assert audit.verify(engine).whole
    assert await approvals(client) == []


async def test_a_loss_limit_halt_is_cleared_on_another_persons_approval_of_an_authenticated_request(
    setup: tuple[Any, Path, FakeBot], alertmanager: Alertmanager
) -> None:
    client, _config, bot = setup
    path = "/api/v1/requests/clear_halt/paper-1"
    resp = await client.post(path, json={"reason": "the loss is understood"}, headers=bearer("alice"))
    assert resp.status == 409 and "paper-1 is not halted" in (await resp.json())["error"]
    bot.state = "halted"
    resp = await client.post(path, json={"reason": "the loss is understood"}, headers=bearer("alice"))
    asked = await resp.json()
    assert resp.status == 200 and asked["requested_by"] == "alice", asked
    resp = await client.post(path, json={"reason": "again"}, headers=bearer("alice"))
    assert resp.status == 409 and "stands until" in (await resp.json())["error"]
    instance = client.app[keys.CONFIG].bots[0].instance

    async def held() -> list[dict[str, Any]]:
        return list(await asyncio.to_thread(alertmanager.get, "alerts"))

    wanted = {"alertname": "TradingBotClearHaltRequested", "instance": instance, "request": str(asked["request"])}
    found = await poll(held, lambda a: any(wanted.items() <= x["labels"].items() for x in a), "the request")
    request_alert = next(x for x in found if wanted.items() <= x["labels"].items())
    fired = alert(
        fingerprint=request_alert["fingerprint"], starts_at=request_alert["startsAt"], **request_alert["labels"]
    )
    assert (await client.post("/api/v1/alertmanager", json=payload(fired), headers=AUTH)).status == 200
    pending = (await poll(lambda: approvals(client), lambda a: a and a[0]["status"] == "pending", "the approval"))[0]
    assert (pending["kind"], pending["required"], pending["requested_by"]) == ("clear_halt", 1, "alice")
    decide = f"/api/v1/approvals/{pending['id']}"
    resp = await client.post(decide, json={"decision": "approve", "reason": "mine"}, headers=bearer("alice"))
    assert resp.status == 403 and "four eyes: alice asked for it" in (await resp.json())["error"]
    assert bot.commands() == []
    resp = await client.post(decide, json={"decision": "approve", "reason": "ok"}, headers=bearer("bob"))
    assert resp.status == 200 and (await resp.json())["status"] == "approved"

    async def commands() -> list[str]:
        return bot.commands()

    await poll(commands, lambda c: c == ["clear_halt"], "clear_halt sent to the bot")
    # Audited: the reconciler sent it, on bob's approval of alice's request.
    engine = client.app[keys.LEDGER].engine

    async def sent() -> list[Any]:
        return audit.entries(engine, action="clear_halt")

    (entry,) = await poll(sent, lambda e: len(e) == 1, "clear_halt's audit entry")
    assert (entry.principal, entry.target, entry.decision) == ("reconciler", "paper-1", f"approval:{pending['id']}")
    assert entry.comment.endswith("requested by alice, approved by bob")


async def test_a_widening_request_an_alert_names_by_hand_is_refused_to_every_approver(
    setup: tuple[Any, Path, FakeBot],
) -> None:
    """A TradingBotClearHaltRequested posted by hand, its requester a typed name (no record of the reconciler's):
    nobody may approve it, the typed name's owner least of all."""
    client, _config, bot = setup
    instance = client.app[keys.CONFIG].bots[0].instance
    labels = {
        "alertname": "TradingBotClearHaltRequested",
        "instance": instance,
        "bot": "paper-1",
        "requested_by": "eve",
    }
    fired = alert(fingerprint=uuid.uuid4().hex[:16], **labels)
    assert (await client.post("/api/v1/alertmanager", json=payload(fired), headers=AUTH)).status == 200
    pending = (await poll(lambda: approvals(client), lambda a: a and a[0]["status"] == "pending", "the approval"))[0]
    assert (pending["kind"], pending["requested_by"]) == ("clear_halt", "reconciler")
    for person in ("alice", "bob"):
        resp = await client.post(
            f"/api/v1/approvals/{pending['id']}", json={"decision": "approve", "reason": "x"}, headers=bearer(person)
        )
        assert resp.status == 403 and "has no authenticated requester" in (await resp.json())["error"]
    assert bot.commands() == [] and (await approvals(client))[0]["approvers"] == []
